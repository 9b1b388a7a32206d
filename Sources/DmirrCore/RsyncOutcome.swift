/// How an rsync process ended, classified from its exit status and stderr (docs/architecture.md §3, "rsync facts").
public enum RsyncOutcome: Sendable, Equatable {
    case success
    /// Exit 24: some source files vanished during the transfer. Benign: the token re-check catches a moving upstream.
    case vanished
    case failure(RsyncFailure)

    /// How the process ended.
    public enum Termination: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
    }

    /// Classifies a finished rsync. `stderr` is the process's error output, one element per line.
    public static func classify(_ termination: Termination, stderr: [String]) -> RsyncOutcome {
        let code: Int32
        switch termination {
        case .signaled(let signal):
            return .failure(RsyncFailure(kind: .killed, exitCode: nil, detail: "rsync was killed by signal \(signal)"))
        case .exited(let c):
            code = c
        }
        if code == 0 { return .success }
        if code == 24 { return .vanished }
        let text = stderr.joined(separator: "\n")
        let lowered = text.lowercased()
        func has(_ s: String) -> Bool { lowered.contains(s.lowercased()) }
        let lastError = stderr.last(where: { $0.hasPrefix("@ERROR") || $0.hasPrefix("rsync:") || $0.hasPrefix("rsync error") })

        let kind: RsyncFailure.Kind
        if has("max connections") {
            kind = .busy(limit: Self.maxConnections(in: text))
        } else if has("Unknown module") {
            kind = .unknownModule
        } else if has("auth failed") || has("password") && code == 5 {
            kind = .authFailed
        } else if has("Connection refused") {
            kind = .refused
        } else if code == 35 || has("timeout waiting for daemon connection") {
            kind = .connectTimeout
        } else if code == 30 || has("io timeout") || has("timeout in data send/receive") {
            kind = .timeout
        } else if has("No such file or directory") && code == 23 {
            kind = .missingSource
        } else if code == 20 {
            kind = .killed
        } else if code == 23 {
            kind = .partial
        } else if code == 10 {
            kind = .socket
        } else if code == 11 {
            kind = .fileIO
        } else if code == 12 || code == 2 || code == 4 || code == 5 {
            kind = .protocolError
        } else if code == 1 {
            kind = .usage
        } else {
            kind = .other
        }
        return .failure(RsyncFailure(kind: kind, exitCode: code, detail: lastError))
    }

    /// The N in "@ERROR: max connections (N) reached".
    static func maxConnections(in text: String) -> Int? {
        guard let r = text.firstRange(of: "max connections (") else { return nil }
        let digits = text[r.upperBound...].prefix { $0.isNumber }
        return Int(digits)
    }
}

/// Why an rsync run failed.
public struct RsyncFailure: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The daemon's `max connections` was reached: temporary, retry later.
        case busy(limit: Int?)
        case unknownModule
        case authFailed
        case refused
        case connectTimeout
        /// No data for `--timeout` seconds.
        case timeout
        /// The requested file or directory does not exist on the source.
        case missingSource
        /// Exit 23: some files could not be transferred.
        case partial
        /// Exit 20 or a signal.
        case killed
        case socket
        case fileIO
        case protocolError
        case usage
        case other
    }

    public var kind: Kind
    /// rsync's exit code; nil when it died of a signal.
    public var exitCode: Int32?
    /// rsync's own last error line, when it printed one.
    public var detail: String?

    /// True when retrying later is the right answer (the exit code 75 class).
    public var isTemporary: Bool {
        if case .busy = kind { return true }
        return false
    }

    /// A short machine-friendly name, stored in the run history.
    public var name: String {
        switch kind {
        case .busy: "busy"
        case .unknownModule: "unknown-module"
        case .authFailed: "auth-failed"
        case .refused: "refused"
        case .connectTimeout: "connect-timeout"
        case .timeout: "timeout"
        case .missingSource: "missing-source"
        case .partial: "partial"
        case .killed: "killed"
        case .socket: "socket-error"
        case .fileIO: "file-io-error"
        case .protocolError: "protocol-error"
        case .usage: "usage-error"
        case .other: "rsync-error"
        }
    }

    /// What happened, in words an operator can act on.
    public var summary: String {
        switch kind {
        case .busy(let limit):
            "source busy (max connections\(limit.map { " \($0)" } ?? "") reached), retry later"
        case .unknownModule: "the rsync daemon does not have that module; check the URL"
        case .authFailed: "the rsync daemon refused the credentials; check [upstream] password_file and the user in the URL"
        case .refused: "connection refused; is the rsync daemon running on that host and port?"
        case .connectTimeout: "timed out connecting to the rsync daemon"
        case .timeout: "the transfer stalled longer than [upstream] timeout"
        case .missingSource: "the source does not have the requested file or directory"
        case .partial: "some files could not be transferred (rsync exit 23)"
        case .killed: "rsync was interrupted"
        case .socket: "network error talking to the source (rsync exit 10)"
        case .fileIO: "file I/O error on this mirror (rsync exit 11); check disk space and permissions"
        case .protocolError: "rsync protocol error\(exitCode.map { " (exit \($0))" } ?? "")"
        case .usage: "rsync rejected its arguments (check [mirror] rsync_args)"
        case .other: "rsync failed\(exitCode.map { " with exit code \($0)" } ?? "")"
        }
    }

    public var description: String {
        if let detail { return "\(summary): \(detail)" }
        return summary
    }
}

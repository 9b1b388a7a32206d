import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A real `rsync --daemon` on a loopback port (or, for the namespaced test fleet, on a namespace's own address), for the
/// demo, tests and benchmarks. Stop it with ``stop()``.
public final class RsyncDaemon: Sendable {
    /// One module the daemon serves.
    public struct Module: Sendable {
        public var name: String
        public var path: String
        /// The daemon's `max connections` for this module (0 = unlimited).
        public var maxConnections: Int
        /// `auth users` entries as `user:password`; empty for an open module.
        public var users: [(user: String, password: String)]
        /// A file the daemon appends each session's start and end to, with sub-second times (its log's stamps are
        /// whole seconds, too coarse to tell whether two short pulls overlapped): `start PID UNIX-SECONDS REQUEST` from
        /// `pre-xfer exec`, `end PID UNIX-SECONDS` from `post-xfer exec`, which also runs when the client was killed.
        /// Nil: no hooks.
        public var sessionTimes: String?

        public init(
            name: String, path: String, maxConnections: Int = 0, users: [(user: String, password: String)] = [],
            sessionTimes: String? = nil
        ) {
            self.name = name
            self.path = path
            self.maxConnections = maxConnections
            self.users = users
            self.sessionTimes = sessionTimes
        }
    }

    public let port: Int
    /// The address it listens on: 127.0.0.1 unless it was started inside a network namespace.
    public let address: String
    public let directory: String
    /// The daemon's log (`transfer logging = yes`): one line per file sent, plus connects and refusals.
    public var logPath: String { directory + "/rsyncd.log" }
    /// Foundation's `Process` is not Sendable: every use goes through the lock (`stop()` may race `deinit` otherwise).
    private let process: Mutex<Process>

    /// The `rsync://ADDRESS:PORT/NAME` URL of a module.
    public func url(_ module: String) -> String { "rsync://\(address):\(port)/\(module)" }

    /// Writes a config into `directory`, starts the daemon on a free loopback port and waits until it accepts.
    ///
    /// - Parameter namespace: run it inside this network namespace (`ip netns exec`), listening on `address` at port
    ///   873, which is free in a namespace of its own; readiness is then read from its log, which says when it listens.
    public init(directory: String, modules: [Module], timeoutSeconds: Int = 5, namespace: (name: String, address: String)? = nil) throws {
        self.directory = directory
        address = namespace?.address ?? "127.0.0.1"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var config = """
            use chroot = no
            pid file = \(directory)/rsyncd.pid
            lock file = \(directory)/rsyncd.lock
            log file = \(directory)/rsyncd.log
            transfer logging = yes
            reverse lookup = no
            timeout = \(timeoutSeconds)

            """
        if getuid() == 0 { config += "uid = root\ngid = root\n" }
        for module in modules {
            config += "[\(module.name)]\n    path = \(module.path)\n    read only = yes\n"
            config += "    max connections = \(module.maxConnections)\n"
            if let times = module.sessionTimes {
                // Run by /bin/sh; a line this short is appended in one write, so concurrent sessions do not interleave.
                // The path is quoted for the shell (a quote in it would end the quoting: refused).
                guard !times.contains("'") else { throw FixtureError("session times path \(times) contains a quote") }
                config += "    pre-xfer exec = echo \"start $RSYNC_PID $(date +%s.%N) $RSYNC_REQUEST\" >> '\(times)'\n"
                config += "    post-xfer exec = echo \"end $RSYNC_PID $(date +%s.%N)\" >> '\(times)'\n"
            }
            if !module.users.isEmpty {
                let secrets = directory + "/\(module.name).secrets"
                try module.users.map { "\($0.user):\($0.password)\n" }.joined().write(toFile: secrets, atomically: true, encoding: .utf8)
                chmod(secrets, 0o600)
                config += "    auth users = \(module.users.map(\.user).joined(separator: ", "))\n    secrets file = \(secrets)\n"
            }
        }
        let configPath = directory + "/rsyncd.conf"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)

        // Bind-then-release picks a free port; retry if another process grabs it before rsync binds.
        var lastError: any Error = FixtureError("rsync --daemon did not start")
        for _ in 0..<5 {
            let port = namespace == nil ? try FreePort.pick() : 873
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            let daemon = ["rsync", "--daemon", "--no-detach", "--config=\(configPath)", "--address=\(address)", "--port=\(port)"]
            process.arguments = namespace.map { ["ip", "netns", "exec", $0.name] + daemon } ?? daemon
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let ready = namespace == nil
                ? FreePort.waitUntilAccepting(port: port, seconds: 5) : Self.waitUntilLogged("listening on port \(port)", in: directory + "/rsyncd.log", seconds: 5)
            if ready, process.isRunning {
                self.port = port
                self.process = Mutex(process)
                return
            }
            process.terminate()
            process.waitUntilExit()
            lastError = FixtureError("rsync --daemon did not accept connections on port \(port); see \(directory)/rsyncd.log")
        }
        throw lastError
    }

    private static func waitUntilLogged(_ text: String, in path: String, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let log = try? String(contentsOfFile: path, encoding: .utf8), log.contains(text) { return true }
            usleep(20_000)
        }
        return false
    }

    /// Starts the daemon again after ``stop()``, on the same address, port and config (upstream coming back).
    public func restart() throws {
        try process.withLock { process in
            guard !process.isRunning else { return }
            let next = Process()
            next.executableURL = process.executableURL
            next.arguments = process.arguments
            next.standardInput = FileHandle.nullDevice
            next.standardOutput = FileHandle.nullDevice
            next.standardError = FileHandle.nullDevice
            try next.run()
            let ready = address == "127.0.0.1"
                ? FreePort.waitUntilAccepting(port: port, seconds: 5) : Self.waitUntilLogged("listening on port \(port)", in: directory + "/rsyncd.log", seconds: 5)
            process = next
            guard ready, next.isRunning else {
                throw FixtureError("rsync --daemon did not accept connections again on port \(port); see \(directory)/rsyncd.log")
            }
        }
    }

    /// The daemon's process id.
    public var pid: Int32 { process.withLock { $0.processIdentifier } }

    /// Stops the daemon (SIGTERM, then SIGKILL) and waits for it.
    public func stop() {
        process.withLock { process in
            guard process.isRunning else { return }
            process.terminate()
            for _ in 0..<50 where process.isRunning { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

/// Errors of the fixtures, with what went wrong.
public struct FixtureError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Loopback ports for fixtures.
public enum FreePort {
    /// Ports handed out by this process: never twice.
    private static let handedOut = Mutex<Set<Int>>([])

    /// A loopback port that is free now, below the kernel's ephemeral range (32768 and up): no outgoing connection
    /// of any process can take it before the server it is for binds it (with ports bound to 0 and released, an
    /// agent's own dial sometimes did), and this process never hands it out twice.
    public static func pick() throws -> Int {
        for _ in 0..<500 {
            let port = Int.random(in: 20_000...32_000)
            guard handedOut.withLock({ $0.insert(port).inserted }) else { continue }
            if canBind(port) { return port }
        }
        throw FixtureError("no free loopback port between 20000 and 32000")
    }

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Polls until something accepts TCP connections on 127.0.0.1:port, for at most `seconds`.
    public static func waitUntilAccepting(port: Int, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(port).bigEndian
            let connected = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            close(fd)
            if connected { return true }
            usleep(20_000)
        }
        return false
    }
}

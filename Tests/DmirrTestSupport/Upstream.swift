import DmirrFixtures
import Foundation

/// A real upstream for live tests: a yum repo built with rpmbuild + createrepo_c, served by `rsync --daemon`.
///
/// By default a push changes the served tree in place, as most upstreams do: new packages, then new metadata, then the
/// token. For a moment before the token is written, that tree can be sound under the *old* token, and a mirror that
/// pulls then faithfully copies it under that name. A test that must know exactly which trees upstream served under
/// which token (a broken push must never become sound under its own name) uses an `atomic` upstream: its served path is
/// a symlink to one version directory, and every push builds the next version beside it and swaps the link, so each
/// daemon session sees one whole version.
public final class Upstream: @unchecked Sendable {
    /// The path the daemon serves: the tree itself, or (atomic) the symlink to the current version.
    public let servedPath: String
    public let atomic: Bool
    public let daemon: RsyncDaemon
    public var url: String { daemon.url("repo") }
    /// The current tree (for an atomic upstream, the version directory the served symlink names).
    public var tree: String {
        guard atomic, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: servedPath) else { return servedPath }
        return target.hasPrefix("/") ? target : (servedPath as NSString).deletingLastPathComponent + "/" + target
    }
    private var version = 0

    public init(
        in directory: TestDirectory, packages: [YumRepo.Package], token: String, maxConnections: Int = 0,
        users: [(user: String, password: String)] = [], extraModules: [RsyncDaemon.Module] = [], host: NetLab.Host? = nil,
        atomic: Bool = false
    ) throws {
        servedPath = directory.sub("upstream")
        self.atomic = atomic
        if atomic {
            let first = servedPath + ".v0"
            try YumRepo.make(at: first, packages: packages, token: token)
            try FileManager.default.createSymbolicLink(atPath: servedPath, withDestinationPath: first)
        } else {
            try YumRepo.make(at: servedPath, packages: packages, token: token)
        }
        daemon = try RsyncDaemon(
            directory: directory.sub("rsyncd"),
            modules: [.init(name: "repo", path: servedPath, maxConnections: maxConnections, users: users)] + extraModules,
            namespace: host.map { ($0.namespace, $0.address) })
    }

    /// An upstream push: adds packages, removes others, regenerates the metadata, runs `beforeToken` on the new tree
    /// (a test breaks the push there, so it is never sound under its token), then writes the new token. An atomic
    /// upstream does all of it in the next version directory and then swaps the served link.
    public func push(add: [YumRepo.Package] = [], remove: [String] = [], token: String,
                     beforeToken: (String) throws -> Void = { _ in }) throws {
        try change(token: token) { tree in
            try YumRepo.buildRPMs(add, into: tree + "/Packages")
            for name in remove { try FileManager.default.removeItem(atPath: tree + "/Packages/" + name) }
            try YumRepo.createrepo(tree)
            try beforeToken(tree)
        }
    }

    /// Serves a copy of `reference` (a tree kept earlier) again, with the token it holds: a rollback. An atomic upstream
    /// swaps to it in one step; otherwise it is copied over the tree in place.
    public func serveCopy(of reference: String) throws {
        guard atomic else {
            try Self.copy(reference + "/", to: tree + "/", delete: true)
            return
        }
        let next = nextVersion()
        try Self.copy(reference + "/", to: next, delete: false)
        try swap(to: next)
    }

    private func change(token: String, _ edit: (String) throws -> Void) throws {
        guard atomic else {
            try edit(tree)
            try setToken(token)
            return
        }
        let next = nextVersion()
        try Self.copy(tree + "/", to: next, delete: false)
        try edit(next)
        try (token + "\n").write(toFile: next + "/CURRENT", atomically: true, encoding: .utf8)
        try swap(to: next)
    }

    private func nextVersion() -> String {
        version += 1
        return servedPath + ".v\(version)"
    }

    /// Points the served link at `next` in one rename; sessions already running keep the version they started in.
    private func swap(to next: String) throws {
        let link = servedPath + ".link"
        try? FileManager.default.removeItem(atPath: link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: next)
        guard rename(link, servedPath) == 0 else {
            throw TestFailure("cannot swap \(servedPath) to \(next): errno \(errno)")
        }
    }

    /// A real copy (not hard links: a test may truncate a file of one version in place).
    private static func copy(_ from: String, to: String, delete: Bool) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/rsync")
        process.arguments = ["-a"] + (delete ? ["--delete"] : []) + [from, to]
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("rsync \(from) to \(to) failed: \(String(decoding: message, as: UTF8.self))")
        }
    }

    public func setToken(_ token: String) throws {
        try (token + "\n").write(toFile: tree + "/CURRENT", atomically: true, encoding: .utf8)
    }

    /// Paths of the files the daemon sent, from its transfer log.
    public func sentFiles() throws -> [String] {
        let log = try String(contentsOfFile: daemon.logPath, encoding: .utf8)
        // "... [pid] send 127.0.0.1 (127.0.0.1) repo () Packages/a.rpm 1234"
        return log.split(separator: "\n").compactMap { line in
            guard let r = line.range(of: " repo () ") , line.contains("] send ") else { return nil }
            let rest = line[r.upperBound...]
            guard let space = rest.lastIndex(of: " ") else { return nil }
            return String(rest[..<space])
        }
    }

    public func stop() { daemon.stop() }

    /// One client session from the daemon's log: what it asked for, and when it started and ended (the log has whole
    /// seconds).
    public struct Session: Sendable {
        public var pid: String
        public var request: String
        public var started: Date
        public var ended: Date
        /// Anything beyond the token file: a pull of (part of) the tree.
        public var isTreePull: Bool { request.split(separator: " ").contains { !$0.hasSuffix("/CURRENT") } }
    }

    /// The daemon's finished sessions ("rsync on REQUEST from …" to "sent … bytes" or the error that ended it), and when it refused a connection
    /// at `max connections`.
    public func sessions() throws -> (sessions: [Session], refused: [Date]) {
        let log = try String(contentsOfFile: daemon.logPath, encoding: .utf8)
        let stamp = DateFormatter()
        stamp.locale = Locale(identifier: "en_US_POSIX")
        stamp.timeZone = TimeZone.current
        stamp.dateFormat = "yyyy/MM/dd HH:mm:ss"
        var open: [String: (request: String, at: Date)] = [:]
        var done: [Session] = []
        var refused: [Date] = []
        for line in log.split(separator: "\n") {
            // "2026/11/26 21:40:01 [1234] rsync on repo/ from UNDETERMINED (127.0.0.1)"
            guard line.count > 21, let at = stamp.date(from: String(line.prefix(19))),
                let close = line.firstIndex(of: "]"), let openBracket = line.firstIndex(of: "[")
            else { continue }
            let pid = String(line[line.index(after: openBracket)..<close])
            let text = line[line.index(close, offsetBy: 2)...]
            if text.contains("max connections") {
                refused.append(at)
            } else if text.hasPrefix("rsync on "), let from = text.range(of: " from ") {
                open[pid] = (String(text[text.index(text.startIndex, offsetBy: 9)..<from.lowerBound]), at)
            } else if text.hasPrefix("sent ") || text.hasPrefix("rsync error"),
                let started = open.removeValue(forKey: pid)
            {
                // A session ends with its byte count, or with the error that ended it (a client killed or cut off,
                // the daemon's own timeout): those held a connection too.
                done.append(Session(pid: pid, request: started.request, started: started.at, ended: at))
            }
        }
        return (done, refused)
    }
}

/// A mirror config file for live tests.
public enum MirrorConfig {
    public static func write(
        to path: String, upstream: String, mirror: String, state: String, publish: String = "in-place",
        verify: String = "metadata", extra: String = ""
    ) throws {
        let text = """
            node = "mirror-test"
            fleet = "test"

            [upstream]
            url = "\(upstream)"
            timeout = "20s"
            connect_timeout = "5s"

            [mirror]
            path = "\(mirror)"
            publish = "\(publish)"
            verify = "\(verify)"
            \(extra)

            [state]
            dir = "\(state)"

            """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }
}

/// The most of `intervals` that were open at one moment. An interval that ends at the instant another starts is counted
/// as over first: back-to-back runs do not overlap, and whole-second log stamps never report an overlap that only
/// rounding made.
public func peakOverlap(_ intervals: [(start: Date, end: Date)]) -> Int {
    var edges: [(at: Date, delta: Int)] = []
    for interval in intervals {
        edges.append((interval.start, 1))
        edges.append((interval.end, -1))
    }
    edges.sort { a, b in a.at != b.at ? a.at < b.at : a.delta < b.delta }
    var current = 0
    var peak = 0
    for edge in edges {
        current += edge.delta
        peak = max(peak, current)
    }
    return peak
}

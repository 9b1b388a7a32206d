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
    /// Where the daemon's transfer hooks append each session's start and end (``sessions()`` reads it).
    public let sessionTimesPath: String
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
        sessionTimesPath = directory.sub("rsyncd") + "/session-times"
        daemon = try RsyncDaemon(
            directory: directory.sub("rsyncd"),
            modules: [.init(name: "repo", path: servedPath, maxConnections: maxConnections, users: users,
                            sessionTimes: sessionTimesPath)] + extraModules,
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

    /// One client session of the served module: what it asked for, and when it started and ended (to the millisecond,
    /// from the daemon's transfer hooks).
    public struct Session: Sendable {
        public var pid: String
        public var request: String
        public var started: Date
        public var ended: Date
        /// Anything beyond the token file: a pull of (part of) the tree.
        public var isTreePull: Bool { request.split(separator: " ").contains { !$0.hasSuffix("/CURRENT") } }
    }

    /// The served module's finished sessions, timed by the daemon's `pre-xfer`/`post-xfer exec` hooks (a session a
    /// killed or cut-off client held ends when the daemon gives it up), and when the daemon refused a connection at
    /// `max connections` (from its log: a refused session never reaches the hooks).
    ///
    /// The log alone is not enough for the upstream bound: it stamps whole seconds, and a pull of a test tree takes
    /// well under one, so two pulls in the same second could not be told apart from back-to-back ones.
    public func sessions() throws -> (sessions: [Session], refused: [Date]) {
        let times = FileManager.default.fileExists(atPath: sessionTimesPath)
            ? try String(contentsOfFile: sessionTimesPath, encoding: .utf8) : ""
        var open: [String: (request: String, at: Date)] = [:]
        var done: [Session] = []
        for line in times.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 3)
            guard fields.count >= 3, let seconds = Double(fields[2]) else { continue }
            let pid = String(fields[1])
            let at = Date(timeIntervalSince1970: seconds)
            if fields[0] == "start", fields.count == 4 {
                open[pid] = (String(fields[3]), at)
            } else if fields[0] == "end", let started = open.removeValue(forKey: pid) {
                done.append(Session(pid: pid, request: started.request, started: started.at, ended: at))
            }
        }
        return (done, try refusals())
    }

    /// When the daemon refused a connection at `max connections`, from its log.
    private func refusals() throws -> [Date] {
        let log = try String(contentsOfFile: daemon.logPath, encoding: .utf8)
        let stamp = DateFormatter()
        stamp.locale = Locale(identifier: "en_US_POSIX")
        stamp.timeZone = TimeZone.current
        stamp.dateFormat = "yyyy/MM/dd HH:mm:ss"
        var refused: [Date] = []
        for line in log.split(separator: "\n") where line.contains("max connections") {
            // "2026/11/26 21:40:01 [1234] @ERROR: max connections (2) reached -- try again later"
            if line.count > 19, let at = stamp.date(from: String(line.prefix(19))) { refused.append(at) }
        }
        return refused
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
/// as over first, so back-to-back runs do not overlap. That is only sound for stamps much finer than the intervals
/// (the members' histories and upstream's session hooks stamp milliseconds or better): with whole-second stamps a
/// sub-second session would start and end at one instant and count for nothing.
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

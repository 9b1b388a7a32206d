import DmirrFixtures
import Foundation

/// A real upstream for live tests: a yum repo built with rpmbuild + createrepo_c, served by `rsync --daemon`.
public final class Upstream: @unchecked Sendable {
    public let tree: String
    public let daemon: RsyncDaemon
    public var url: String { daemon.url("repo") }

    public init(
        in directory: TestDirectory, packages: [YumRepo.Package], token: String, maxConnections: Int = 0,
        users: [(user: String, password: String)] = []
    ) throws {
        tree = directory.sub("upstream")
        try YumRepo.make(at: tree, packages: packages, token: token)
        daemon = try RsyncDaemon(
            directory: directory.sub("rsyncd"),
            modules: [.init(name: "repo", path: tree, maxConnections: maxConnections, users: users)])
    }

    /// An upstream push: adds packages, removes others, regenerates the metadata, then writes the new token.
    public func push(add: [YumRepo.Package] = [], remove: [String] = [], token: String) throws {
        try YumRepo.buildRPMs(add, into: tree + "/Packages")
        for name in remove { try FileManager.default.removeItem(atPath: tree + "/Packages/" + name) }
        try YumRepo.createrepo(tree)
        try setToken(token)
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

import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The state-database campaign (docs/reliability.md): the SQLite file damaged in its header or in its pages, locked
/// by another process, or on a filesystem remounted read-only. Each time, with a new push waiting upstream, `dmirr
/// sync` and `dmirr agent` must stop with an error naming the file and saying what to do, publish nothing (the tree
/// stays exactly as it was) and, once the operator follows the documented recovery, the next run takes the push.
@Suite(.serialized) struct StateDatabaseCampaignTests {
    enum Fault: String, CaseIterable {
        case damagedHeader = "damaged header"
        case damagedPages = "damaged pages"
        case locked = "locked by another process"
        case readOnly = "read-only filesystem"
    }

    @Test(arguments: Fault.allCases) func aDamagedLockedOrReadOnlyStateStopsTheRunAndRecovers(fault: Fault) throws {
        let dir = try TestDirectory("state-fault")
        defer { dir.remove() }
        let upstream = try Upstream(in: dir, packages: [.init("base", "1.0")], token: "push-1")
        defer { upstream.stop() }
        let mirror = dir.sub("mirror")
        let state = dir.sub("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        // A small filesystem of its own for the state, so that it can be remounted read-only.
        var mounted = false
        if fault == .readOnly {
            let mount = try CLI.run("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", state])
            guard mount.exitCode == 0 else { throw TestFailure("cannot mount a tmpfs for the state: \(mount.stderr)") }
            mounted = true
        }
        defer { if mounted { _ = try? CLI.run("/usr/bin/umount", ["-l", state]) } }
        let config = dir.sub("mirror.toml")
        try MirrorConfig.write(to: config, upstream: upstream.url, mirror: mirror, state: state)
        let first = try CLI.dmirr(["sync", "-c", config])
        #expect(first.exitCode == 0, "\(first.stderr)")
        try upstream.push(add: [.init("next", "1.0")], token: "push-2")
        let before = dir.sub("before")
        #expect(try CLI.run("/bin/cp", ["-a", mirror, before]).exitCode == 0)
        let database = state + "/state.sqlite"

        // The fault.
        var locker: (process: Process, input: Pipe)?
        switch fault {
        case .damagedHeader:
            let handle = try #require(FileHandle(forWritingAtPath: database))
            try handle.write(contentsOf: Data("this is not SQLite".utf8))
            try handle.close()
        case .damagedPages:
            // The digest cache's page overwritten: a table a run reads only after its transfer, so only a check at
            // the start keeps a run from changing the tree before it trips over the damage.
            let root = try CLI.run("/usr/bin/sqlite3", [database, "SELECT rootpage FROM sqlite_master WHERE name = 'file_digest'"])
            let page = try #require(UInt64(root.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "\(root)")
            let handle = try #require(FileHandle(forWritingAtPath: database))
            try handle.seek(toOffset: (page - 1) * 4096)
            try handle.write(contentsOf: Data(repeating: 0xA5, count: 4096))
            try handle.close()
        case .locked:
            // sqlite3 takes the write lock and keeps it while its stdin stays open.
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
            process.arguments = [database]
            let input = Pipe()
            process.standardInput = input
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            try input.fileHandleForWriting.write(contentsOf: Data("BEGIN EXCLUSIVE;\nDELETE FROM sync_run WHERE id < 0;\n".utf8))
            locker = (process, input)
            usleep(500_000)
        case .readOnly:
            let remount = try CLI.run("/usr/bin/mount", ["-o", "remount,ro", state])
            #expect(remount.exitCode == 0, "\(remount.stderr)")
        }

        // dmirr sync: stops, names the file, says what to do; publishes nothing.
        let sync = try CLI.dmirr(["sync", "-c", config], timeout: 60)
        let expectedExit: Int32 = fault == .locked ? 75 : (fault == .readOnly ? 2 : 1)
        #expect(sync.exitCode == expectedExit, "\(fault.rawValue): exit \(sync.exitCode): \(sync.stderr)")
        #expect(sync.stderr.contains(state), "\(fault.rawValue): the error does not name the state: \(sync.stderr)")
        let hint: String = switch fault {
        case .damagedHeader, .damagedPages: "is damaged"
        case .locked: "fuser"
        case .readOnly: "Read-only file system"
        }
        #expect(sync.stderr.contains(hint), "\(fault.rawValue): \(sync.stderr)")
        #expect(TreeComparison.differences(before, mirror) == [], "\(fault.rawValue): the tree changed")

        // The agent too: it exits (systemd restarts it) with the same kind of message, before touching anything.
        do {
            let agentConfig = try String(contentsOfFile: config, encoding: .utf8) + agentTables(dir)
            try agentConfig.write(toFile: dir.sub("agent.toml"), atomically: true, encoding: .utf8)
            let agent = try CLI.dmirr(["agent", "-c", dir.sub("agent.toml")], timeout: 60)
            #expect(agent.exitCode != 0, "\(fault.rawValue): the agent ran on: \(agent.stderr.suffix(1000))")
            #expect(agent.stderr.contains(database) && agent.stderr.contains(hint), "\(fault.rawValue): \(agent.stderr.suffix(2000))")
            #expect(TreeComparison.differences(before, mirror) == [], "\(fault.rawValue): the agent changed the tree")
        }

        // The documented recovery (docs/operator-guide.md, "The state database"), then the push goes through.
        switch fault {
        case .damagedHeader, .damagedPages:
            for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: database + suffix) {
                try FileManager.default.moveItem(atPath: database + suffix, toPath: database + ".damaged" + suffix)
            }
        case .locked:
            // End of its input: sqlite3 ends the transaction and exits (the test's threads block SIGTERM, and its
            // children inherit that mask).
            try locker?.input.fileHandleForWriting.close()
            locker?.process.waitUntilExit()
        case .readOnly:
            let remount = try CLI.run("/usr/bin/mount", ["-o", "remount,rw", state])
            #expect(remount.exitCode == 0, "\(remount.stderr)")
        }
        let recovered = try CLI.dmirr(["sync", "-c", config])
        #expect(recovered.exitCode == 0, "\(fault.rawValue): after recovery: \(recovered.stderr)")
        #expect(TreeComparison.differences(upstream.tree, mirror) == [], "\(fault.rawValue): after recovery")
        let history = try CLI.dmirr(["history", "-c", config])
        #expect(history.stdout.contains("push-2"), "\(fault.rawValue): \(history.stdout)")
        print("state database campaign: \(fault.rawValue): dmirr sync exit \(sync.exitCode): \(sync.stderr.split(separator: "\n").last ?? "")")
    }

    /// The agent needs TLS and a peer listener: a CA and a certificate for this one member.
    func agentTables(_ dir: TestDirectory) throws -> String {
        let ca = try CLI.dmirr(["cert", "ca", "--fleet", "test", "--out", dir.sub("ca")])
        guard ca.exitCode == 0 else { throw TestFailure(ca.stderr) }
        let issued = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "mirror-test", "--ip", "127.0.0.1", "--out", dir.sub("certs")])
        guard issued.exitCode == 0 else { throw TestFailure(issued.stderr) }
        return """

            [listen]
            peer = "127.0.0.1:\(try FreePort.pick())"
            [tls]
            ca = "\(dir.sub("ca/ca.pem"))"
            cert = "\(dir.sub("certs/mirror-test.pem"))"
            key = "\(dir.sub("certs/mirror-test.key"))"

            """
    }
}

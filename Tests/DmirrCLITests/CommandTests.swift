import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

@Suite(.serialized) struct CommandTests {
    @Test func checkHistoryAndBusyThroughTheBinary() throws {
        let dir = try TestDirectory("cmd")
        defer { dir.remove() }
        let upstream = try Upstream(in: dir, packages: [.init("alpha", "1.0")], token: "push-1")
        defer { upstream.stop() }
        let config = dir.sub("m.toml")
        try MirrorConfig.write(to: config, upstream: upstream.url, mirror: dir.sub("mirror"), state: dir.sub("state"))

        let check = try CLI.dmirr(["check", "-c", config])
        #expect(check.exitCode == 0, "\(check.stderr)")
        #expect(check.stdout.contains("verify         = \"metadata\""))
        #expect(check.stdout.contains("poll            = \"5m00s\""))
        #expect(check.stdout.contains("has CURRENT = push-1"))

        let empty = try CLI.dmirr(["history", "-c", config])
        #expect(empty.stdout.contains("no sync runs recorded yet"))

        let sync = try CLI.dmirr(["sync", "-c", config])
        #expect(sync.exitCode == 0)
        #expect(sync.stdout.contains("synced CURRENT (none) → push-1"), "\(sync.stdout)")
        let noop = try CLI.dmirr(["sync", "-c", config])
        #expect(noop.exitCode == 0)
        #expect(noop.stdout.contains("up to date"))

        let table = try CLI.dmirr(["history", "-c", config])
        let lines = table.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("STARTED") == true)
        #expect(lines.count == 3)
        #expect(lines[1].contains("up-to-date") && lines[2].contains("synced"))

        let json = try CLI.dmirr(["history", "-c", config, "--json", "--limit", "1"])
        let runs = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(runs.count == 1)
        #expect(runs[0]["outcome"] as? String == "up-to-date")
        #expect(runs[0]["token"] as? String == "push-1")
        #expect((runs[0]["started_at"] as? String)?.hasSuffix("Z") == true)

        // check reports an unreachable source as a problem (exit 1), not a config error.
        upstream.stop()
        let down = try CLI.dmirr(["check", "-c", config])
        #expect(down.exitCode == 1)
        #expect(down.stderr.contains("problem: upstream.url"), "\(down.stderr)")
        let offline = try CLI.dmirr(["check", "-c", config, "--offline"])
        #expect(offline.exitCode == 0)
    }

    @Test func theDemoRunsAFleetAndCleansUpItsProcesses() throws {
        let dir = try TestDirectory("demo")
        defer { dir.remove() }
        let work = dir.sub("work")
        let demo = try CLI.dmirr(["demo", "--mirrors", "3", "--dir", work], timeout: 300)
        #expect(demo.exitCode == 0, "\(demo.stdout)\n\(demo.stderr)")
        #expect(demo.stdout.contains("demo done: all 3 mirrors hold push-2"), "\(demo.stdout)")
        #expect(demo.stdout.contains("pulling push-2 from mirror-"), "no peer pull shown:\n\(demo.stdout)")
        // The closing status table shows the fleet converged: every row in sync on push-2, none still syncing.
        let table = demo.stdout.components(separatedBy: "-- dmirr status").last ?? ""
        let rows = table.split(separator: "\n").filter { $0.contains("mirror-") && !$0.contains("/") && !$0.contains("fleet ") && !$0.contains("==") }
        #expect(rows.count == 3 && rows.allSatisfy { $0.contains("in_sync") && $0.contains("push-2") }, "\(table)")
        for name in ["mirror-a", "mirror-b", "mirror-c"] {
            #expect(try String(contentsOfFile: work + "/mirror-\(name)/CURRENT", encoding: .utf8) == "push-2\n")
        }
        // Nothing it started is left running: no agent, no rsync daemon with a config under the work directory.
        let left = try CLI.run("/usr/bin/pgrep", ["-f", work])
        #expect(left.stdout.isEmpty, "still running: \(left.stdout)")
    }

    @Test func aPeerSourceWithoutTLSIsAConfigError() throws {
        // The fleet's records of a peer are signed; with no [tls] there is nothing to check them against.
        let dir = try TestDirectory("src")
        defer { dir.remove() }
        let config = dir.sub("m.toml")
        try MirrorConfig.write(to: config, upstream: "rsync://127.0.0.1:1/x", mirror: dir.sub("m"), state: dir.sub("s"))
        let r = try CLI.dmirr(["sync", "-c", config, "--source", "mirror-b"])
        #expect(r.exitCode == 2)
        #expect(r.stderr.contains("--source mirror-b: pulling from a peer needs [tls]"), "\(r.stderr)")
    }
}

@Suite(.serialized) struct ProgressOutputTests {
    /// On a terminal `dmirr sync` draws a progress line; off a terminal it writes log lines only.
    @Test func progressLineOnlyOnATerminal() throws {
        let dir = try TestDirectory("tty")
        defer { dir.remove() }
        let upstream = try Upstream(in: dir, packages: [.init("alpha", "1.0", sizeKB: 512), .init("beta", "1.0", sizeKB: 512)], token: "push-1")
        defer { upstream.stop() }
        let config = dir.sub("m.toml")
        try MirrorConfig.write(to: config, upstream: upstream.url, mirror: dir.sub("mirror"), state: dir.sub("state"))

        // script(1) gives dmirr a pseudo-terminal as stdin, stdout and stderr.
        let tty = try CLI.run("script", ["-q", "-e", "-c", "\(CLI.dmirrPath) sync -c \(config) --force", "/dev/null"])
        #expect(tty.exitCode == 0, "\(tty.stdout)")
        #expect(tty.stdout.contains("\r\u{1B}[Kcontent: starting"), "\(tty.stdout.debugDescription)")
        #expect(tty.stdout.contains("metadata:") && tty.stdout.contains("deletions:"), "\(tty.stdout.debugDescription)")

        let plain = try CLI.dmirr(["sync", "-c", config, "--force"])
        #expect(plain.exitCode == 0)
        #expect(!plain.stderr.contains("\r"))
        #expect(plain.stderr.contains("stage done"))
    }
}

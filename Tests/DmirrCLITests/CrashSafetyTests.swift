import DmirrCore
import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

/// `kill -9` of `dmirr sync` and its rsync (the whole process group) at each step: the published token never
/// advances, the next run cleans up and completes; in snapshot mode the live symlink always points at a complete tree.
@Suite(.serialized) struct CrashSafetyTests {
    enum Step: String, CaseIterable {
        case stage1, stage2, beforePublish
    }

    /// Upstream at push-1 mirrored, then a push-2 whose transfer is slow (rsync --bwlimit) so the kill lands mid-step.
    struct Rig {
        let dir: TestDirectory
        let upstream: Upstream
        let mirror: String
        let config: String
        let pushOne: String

        init(label: String, publish: String) throws {
            dir = try TestDirectory(label)
            upstream = try Upstream(in: dir, packages: [.init("alpha", "1.0"), .init("beta", "1.0")], token: "push-1")
            mirror = dir.sub("mirror")
            config = dir.sub("mirror.toml")
            try MirrorConfig.write(
                to: config, upstream: upstream.url, mirror: mirror, state: dir.sub("state"), publish: publish,
                extra: "rsync_args = [\"--bwlimit=400\"]")
            let first = try CLI.dmirr(["sync", "-c", config])
            guard first.exitCode == 0 else { throw TestFailure("first sync failed: \(first.stderr)") }
            // Keep a copy of upstream at push-1 to compare the live tree against after the kill.
            pushOne = dir.sub("push-1-copy")
            _ = try CLI.run("cp", ["-a", upstream.tree, pushOne])
            // push-2: ~2 MiB of new packages (stage 1 takes seconds) and ~1 MiB extra metadata (stage 2 too).
            try upstream.push(add: [.init("big1", "1.0", sizeKB: 1024), .init("big2", "1.0", sizeKB: 1024)], remove: ["beta-1.0-1.noarch.rpm"], token: "push-2")
            _ = try CLI.run("dd", ["if=/dev/urandom", "of=\(upstream.tree)/repodata/zz-extra.bin", "bs=1024", "count=1024", "status=none"])
        }

        var live: String { realPath(mirror) }
        func token() -> String? {
            (try? String(contentsOfFile: mirror + "/CURRENT", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        func cleanup() {
            upstream.stop()
            dir.remove()
        }
    }

    /// What a client could not get from `tree` right now: the packages of `reference` (the tree of the token the
    /// tree's CURRENT names) missing or different, and the files its repomd.xml lists missing or with another
    /// SHA-256. Empty when the served tree is consistent.
    static func clientProblems(_ tree: String, reference: String) throws -> [String] {
        var problems: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: reference + "/Packages") where name.hasSuffix(".rpm") {
            let want = FileManager.default.contents(atPath: reference + "/Packages/" + name)
            if FileManager.default.contents(atPath: tree + "/Packages/" + name) != want { problems.append("Packages/\(name) missing or different") }
        }
        let repomd = (try? String(contentsOfFile: tree + "/repodata/repomd.xml", encoding: .utf8)) ?? ""
        for block in repomd.components(separatedBy: "<data ").dropFirst() {
            guard let sum = block.components(separatedBy: "<checksum type=\"sha256\">").dropFirst().first?.components(separatedBy: "<").first,
                let href = block.components(separatedBy: "<location href=\"").dropFirst().first?.components(separatedBy: "\"").first
            else { continue }
            let have = try CLI.run("sha256sum", [tree + "/" + href]).stdout.prefix(64)
            if have != sum { problems.append("\(href) listed in repomd.xml: missing or another checksum") }
        }
        return problems
    }

    static func hasFiles(_ dir: String) -> Bool {
        !((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).isEmpty
    }

    static func run(step: Step, publish: String) throws {
        let rig = try Rig(label: "kill-\(step.rawValue)-\(publish)", publish: publish)
        defer { rig.cleanup() }
        let tree = publish == "snapshot" ? rig.dir.sub(".dmirr/mirror/staging") : rig.mirror
        let env = step == .beforePublish ? ["DMIRR_TEST_PAUSE_AT": "before-publish"] : [:]
        let victim = try SpawnedDmirr(["sync", "-c", rig.config], environment: env, logDirectory: rig.dir.path)
        let reached: Bool
        switch step {
        case .stage1:
            // rsync is writing a new package into the temp dir.
            reached = victim.wait(upTo: 30) { hasFiles(tree + "/.dmirr-tmp") }
        case .stage2:
            if publish == "snapshot" {
                // One stage only in snapshot mode: wait until part of it is done and the extra metadata is arriving.
                reached = victim.wait(upTo: 30) { FileManager.default.fileExists(atPath: tree + "/Packages/big1-1.0-1.noarch.rpm") && hasFiles(tree + "/.dmirr-tmp") }
            } else {
                reached = victim.wait(upTo: 30) { victim.stderr.contains("sync.stage=content") && hasFiles(tree + "/.dmirr-tmp") }
            }
        case .beforePublish:
            reached = victim.wait(upTo: 60) { victim.stderr.contains("paused at before-publish") }
        }
        #expect(reached, "\(step): never reached the kill point; dmirr said: \(victim.stderr)")
        victim.killGroup()

        // Before any next run: history already shows the killed run as interrupted (nothing holds the lock), with the
        // token it was syncing; the database still says `running` until a run or an agent's start records it.
        let shown = try JSONSerialization.jsonObject(with: Data(try CLI.dmirr(["history", "-c", rig.config, "--json"]).stdout.utf8)) as? [[String: Any]] ?? []
        #expect(shown.first?["outcome"] as? String == "interrupted" && shown.first?["token"] as? String == "push-2", "\(step): \(shown.first ?? [:])")
        let raw = try CLI.run("sqlite3", [rig.dir.sub("state/state.sqlite"), "SELECT outcome, token FROM sync_run ORDER BY id DESC LIMIT 1"])
        #expect(raw.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "running|push-2", "\(step): \(raw.stdout)\(raw.stderr)")

        // The published token did not advance, and the live tree is push-1 (snapshot) or push-1's token (in place).
        #expect(rig.token() == "push-1", "\(step)")
        // And a client can use it: every package of push-1 (which CURRENT names) is there, push-2 removes beta, and
        // whatever repomd.xml is served lists only files that are there. (In place, stage 2 swaps in push-2's
        // metadata before the token; until 2026-12 it also deleted beta then, leaving push-1 without it.)
        #expect(try Self.clientProblems(rig.live, reference: rig.pushOne) == [], "\(step)")
        if publish == "snapshot" {
            #expect(TreeComparison.differences(rig.pushOne, rig.live) == [], "\(step): live snapshot changed")
        }

        // The next run cleans up and completes.
        let next = try CLI.dmirr(["sync", "-c", rig.config])
        #expect(next.exitCode == 0, "\(step): \(next.stderr)")
        #expect(rig.token() == "push-2")
        #expect(TreeComparison.differences(rig.upstream.tree, rig.live) == [], "\(step)")
        #expect(!FileManager.default.fileExists(atPath: rig.live + "/.dmirr-tmp"))
        let leftovers = (FileManager.default.enumerator(atPath: rig.live)?.allObjects as? [String] ?? []).filter {
            $0.hasSuffix(".~tmp~") || $0.contains(".dmirr-new")
        }
        #expect(leftovers == [], "\(step)")
        let history = try CLI.dmirr(["history", "-c", rig.config, "--json"])
        let runs = try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(runs.compactMap { $0["outcome"] as? String } == ["synced", "interrupted", "synced"], "\(step)")
        #expect(runs.compactMap { $0["token"] as? String } == ["push-2", "push-2", "push-1"], "\(step): the interrupted run keeps its token")
    }

    @Test(arguments: Step.allCases) func inPlace(step: Step) throws {
        try Self.run(step: step, publish: "in-place")
    }

    /// Killed after the publish, before the files push-2 dropped are removed (in place): the tree names push-2 and
    /// holds all of it (beta, which push-2 dropped, is still there); the next run's start removes beta from the list
    /// recorded with the publish, and finds the tree up to date.
    @Test func inPlaceKilledAfterThePublish() throws {
        let rig = try Rig(label: "kill-after-publish", publish: "in-place")
        defer { rig.cleanup() }
        let victim = try SpawnedDmirr(["sync", "-c", rig.config], environment: ["DMIRR_TEST_PAUSE_AT": "after-publish"], logDirectory: rig.dir.path)
        #expect(victim.wait(upTo: 60) { victim.stderr.contains("paused at after-publish") }, "\(victim.stderr)")
        victim.killGroup()
        #expect(rig.token() == "push-2")
        #expect(try Self.clientProblems(rig.live, reference: rig.upstream.tree) == [])
        #expect(FileManager.default.fileExists(atPath: rig.live + "/Packages/beta-1.0-1.noarch.rpm"), "removed before the publish")
        // Recorded with the publish: beta and push-1's metadata files, nothing that push-2 has.
        let pending = try CLI.run("sqlite3", [rig.dir.sub("state/state.sqlite"), "SELECT token || ' ' || path FROM pending_deletion"])
        let rows = pending.stdout.split(separator: "\n").map(String.init)
        #expect(rows.contains("push-2 Packages/beta-1.0-1.noarch.rpm"), "\(pending.stdout)\(pending.stderr)")
        #expect(rows.allSatisfy { $0.hasPrefix("push-2 ") && !FileManager.default.fileExists(atPath: rig.upstream.tree + "/" + $0.dropFirst(7)) }, "\(rows)")

        let next = try CLI.dmirr(["sync", "-c", rig.config])
        #expect(next.exitCode == 0, "\(next.stderr)")
        #expect(next.stdout.contains("up to date"), "\(next.stdout)")
        #expect(TreeComparison.differences(rig.upstream.tree, rig.live) == [])
        let left = try CLI.run("sqlite3", [rig.dir.sub("state/state.sqlite"), "SELECT count(*) FROM pending_deletion"])
        #expect(left.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test(arguments: [Step.stage1, .beforePublish]) func snapshot(step: Step) throws {
        try Self.run(step: step, publish: "snapshot")
    }

    @Test func secondRunExits75NamingTheFirst() throws {
        let rig = try Rig(label: "lock", publish: "in-place")
        defer { rig.cleanup() }
        let first = try SpawnedDmirr(["sync", "-c", rig.config], environment: ["DMIRR_TEST_PAUSE_AT": "before-publish"], logDirectory: rig.dir.path)
        #expect(first.wait(upTo: 60) { first.stderr.contains("paused at before-publish") })
        let second = try CLI.dmirr(["sync", "-c", rig.config])
        #expect(second.exitCode == 75)
        #expect(second.stderr.contains("another dmirr run holds the lock"), "\(second.stderr)")
        #expect(second.stderr.contains("pid \(first.pid)"), "\(second.stderr)")
        first.killGroup()
    }

    @Test func sigtermCancelsCleanly() throws {
        let rig = try Rig(label: "term", publish: "in-place")
        defer { rig.cleanup() }
        let victim = try SpawnedDmirr(["sync", "-c", rig.config], logDirectory: rig.dir.path)
        #expect(victim.wait(upTo: 30) { Self.hasFiles(rig.mirror + "/.dmirr-tmp") })
        kill(victim.pid, SIGTERM)
        let code = victim.waitForExit(seconds: 20)
        #expect(code == 1, "\(victim.stderr)")
        #expect(victim.stderr.contains("cancelled"), "\(victim.stderr)")
        #expect(rig.token() == "push-1")
        let history = try CLI.dmirr(["history", "-c", rig.config, "--json"])
        let runs = try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(runs.first?["outcome"] as? String == "cancelled")
    }
}

import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The crash campaign (docs/reliability.md): `dmirr sync` and its rsync killed with SIGKILL at random moments of a
/// push's run, in both publish modes, while a sampler reads the served tree every 100 ms the way a client does. Every
/// sample must be consistent (the packages of the token `CURRENT` names, and the files `repomd.xml` lists, present with
/// their checksums), and after each kill the next run cleans up and finishes with the tree equal to upstream's.
///
/// The suite kills `DMIRR_CRASH_KILLS` times per mode (6 by default); the campaign is
/// `DMIRR_CRASH_KILLS=100 swift test --skip-build --filter CrashCampaignTests`. The moments come from a seeded generator
/// (`DMIRR_CRASH_SEED`, 1 by default), so a failing run replays with the seed it prints.
@Suite(.serialized) struct CrashCampaignTests {
    /// The same seed, the same kill moments.
    typealias Moments = SeededRandom

    /// Reads the served tree every 100 ms until stopped; keeps what was inconsistent. A sample whose `CURRENT` or
    /// `repomd.xml` changed while it was being checked is discarded (a client would have re-read them too).
    final class Sampler: @unchecked Sendable {
        let tree: String
        let references: [String: String]
        private let lock = NSLock()
        private var stopped = false
        private(set) var samples = 0
        private(set) var discarded = 0
        private(set) var problems: [String] = []
        private var thread: Thread?

        init(tree: String, references: [String: String]) {
            self.tree = tree
            self.references = references
        }

        func start() {
            let thread = Thread { [self] in
                while !lock.withLock({ stopped }) {
                    sample()
                    usleep(100_000)
                }
            }
            self.thread = thread
            thread.start()
        }

        func stop() {
            lock.withLock { stopped = true }
            while thread?.isFinished == false { usleep(10_000) }
        }

        private func read(_ path: String) -> Data? { FileManager.default.contents(atPath: tree + "/" + path) }

        private func sample() {
            let token = read("CURRENT")
            let repomd = read("repodata/repomd.xml")
            guard let token, let name = String(data: token, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines),
                let reference = references[name]
            else {
                lock.withLock { problems.append("CURRENT names no known token: \(String(decoding: token ?? Data(), as: UTF8.self))") }
                return
            }
            let found = (try? CrashSafetyTests.clientProblems(tree, reference: reference)) ?? ["cannot read the tree"]
            let stable = read("CURRENT") == token && read("repodata/repomd.xml") == repomd
            lock.withLock {
                guard stable else {
                    discarded += 1
                    return
                }
                samples += 1
                problems += found.map { "\(name): \($0)" }
            }
        }
    }

    /// The last step a run's log shows it reached (each line is logged when a step ends).
    static func step(_ log: String, publish: String) -> String {
        if log.contains("removed what the source no longer has") || log.contains("snapshot published") { return "after publish" }
        if log.contains("manifest.root=") { return "publish" }
        if log.contains("verified") { return "manifest" }
        if log.contains("sync.stage=deletions") || log.contains("sync.stage=snapshot") { return "verify" }
        if log.contains("sync.stage=metadata") { return "listing deletions" }
        if log.contains("sync.stage=content") { return "stage 2" }
        return publish == "snapshot" ? "transfer" : "stage 1"
    }

    @Test(arguments: ["in-place", "snapshot"]) func killedAtRandomMoments(publish: String) throws {
        let kills = Int(ProcessInfo.processInfo.environment["DMIRR_CRASH_KILLS"] ?? "") ?? 6
        let seed = UInt64(ProcessInfo.processInfo.environment["DMIRR_CRASH_SEED"] ?? "") ?? 1
        let replay = "DMIRR_CRASH_SEED=\(seed) DMIRR_CRASH_KILLS=\(kills) swift test --skip-build --filter 'CrashCampaignTests/killedAtRandomMoments'"
        var moments = Moments(state: seed &+ (publish == "snapshot" ? 1 : 0))
        let dir = try TestDirectory("crash-campaign-\(publish)")
        defer { dir.remove() }
        let upstream = try Upstream(in: dir, packages: [.init("base", "1.0", sizeKB: 256)], token: "push-0")
        defer { upstream.stop() }
        let mirror = dir.sub("mirror")
        let config = dir.sub("mirror.toml")
        // 2 MB/s: a push of 1.5 MB takes a second or so of transfer, so the kills spread over the stages.
        try MirrorConfig.write(to: config, upstream: upstream.url, mirror: mirror, state: dir.sub("state"), publish: publish,
                               extra: "rsync_args = [\"--bwlimit=2000\"]")
        var references: [String: String] = [:]
        func keep(_ token: String) throws {
            references[token] = dir.sub("ref-\(token)")
            let copy = try CLI.run("/bin/cp", ["-a", upstream.tree, references[token]!])
            guard copy.exitCode == 0 else { throw TestFailure(copy.stderr) }
        }
        try keep("push-0")
        let first = try CLI.dmirr(["sync", "-c", config])
        #expect(first.exitCode == 0, "\(first.stderr)")

        var landed: [String: Int] = [:]
        var killedRuns = 0
        // Push 1's run is not killed: it measures how long a run takes, and the kills spread over that.
        var fullRun = 0.0
        for k in 1...(kills + 1) {
            // Each push adds a package of 1.5 MB and drops the one the previous push added (so every push deletes).
            let token = "push-\(k)"
            try upstream.push(add: [.init("p\(k)", "1.0", sizeKB: 1536)], remove: k > 1 ? ["p\(k - 1)-1.0-1.noarch.rpm"] : [], token: token)
            try keep(token)
            let sampling = Sampler(tree: mirror, references: references)
            sampling.start()
            let at = k == 1 ? 600 : 0.05 + moments.next() * fullRun
            let started = Date()
            let victim = try SpawnedDmirr(["sync", "-c", config], logDirectory: dir.path)
            while victim.process.isRunning, Date().timeIntervalSince(started) < at { usleep(10_000) }
            let finishedFirst = !victim.process.isRunning
            let log = victim.stderr
            if k == 1 {
                fullRun = Date().timeIntervalSince(started)
            } else if finishedFirst {
                landed["after the run ended", default: 0] += 1
            } else {
                victim.killGroup()
                killedRuns += 1
                landed[Self.step(log, publish: publish), default: 0] += 1
            }
            // The next run cleans up and finishes; the tree is upstream's.
            let next = try CLI.dmirr(["sync", "-c", config])
            sampling.stop()
            #expect(next.exitCode == 0, "kill \(k) at \(at) s: \(next.stderr)\nreplay: \(replay)")
            #expect(TreeComparison.differences(upstream.tree, realPath(mirror)) == [],
                    "kill \(k) at \(at) s\nreplay: \(replay)")
            let leftovers = (FileManager.default.enumerator(atPath: realPath(mirror))?.allObjects as? [String] ?? []).filter {
                $0.hasSuffix(".~tmp~") || $0.contains(".dmirr-new") || $0.hasPrefix(".dmirr-tmp/")
            }
            #expect(leftovers == [], "kill \(k)\nreplay: \(replay)")
            #expect(sampling.problems.isEmpty, "kill \(k) at \(String(format: "%.2f", at)) s (\(publish)): \(sampling.problems.prefix(10))\nreplay: \(replay)")
            print("killedAtRandomMoments(\(publish)): kill \(k) at \(String(format: "%.2f", at)) s: \(sampling.samples) samples, "
                  + "\(sampling.discarded) discarded, \(sampling.problems.count) inconsistent")
        }
        print("killedAtRandomMoments(\(publish)): a run takes \(String(format: "%.2f", fullRun)) s; \(killedRuns) of \(kills) runs killed, "
              + "by step \(landed.sorted { $0.key < $1.key }); seed \(seed)")
        #expect(killedRuns > 0, "no run was killed: the moments fell after every run ended")
    }
}

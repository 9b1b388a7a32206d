import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

/// The broken-upstream campaign: a fleet of four agents follows an upstream that publishes metadata naming a package
/// it does not have, a truncated `primary.xml.gz`, goes back to an older tree (a rollback), is down for a while, and
/// changes its token every few seconds. Checked throughout, with a sampler on every mirror reading it as a client
/// does: no mirror ever serves a tree that fails a client's checks or a token whose tree it does not hold; each
/// broken push is refused by every member and shown in its history; a rollback is refused until the operator allows
/// it; the fleet does not amplify the failure (at most `slots` tree pulls at upstream at once, and each member's
/// retries bounded by the upstream backoff); and it converges once upstream is sound again.
///
/// The outage lasts `DMIRR_UPSTREAM_DOWN_SECONDS` (20 in CI; the full form is 600) and the flapping phase makes
/// `DMIRR_FLAP_PUSHES` pushes (6; full form 40).
@Suite(.serialized) struct BrokenUpstreamCampaignTests {
    /// How long a member avoids upstream after a failed pull or fetch: the larger of 5 s and `[upstream] poll` (1 s in
    /// the test fleet; 5 minutes by default).
    static let backoff = 5.0
    /// How long each broken push is watched: long enough for every member to try it at least twice (the backoff is 5 s).
    static let watch = 12.0

    /// The publish modes to run (`DMIRR_BROKEN_PUBLISH`, default both).
    static let modes = (ProcessInfo.processInfo.environment["DMIRR_BROKEN_PUBLISH"] ?? "snapshot,in-place").split(separator: ",").map(String.init)

    @Test(arguments: modes) func aBrokenUpstreamIsNeverPublishedNorAmplifiedAndTheFleetConverges(publish: String) throws {
        let downSeconds = Double(FaultCampaignTests.setting("DMIRR_UPSTREAM_DOWN_SECONDS", 20))
        let flapPushes = FaultCampaignTests.setting("DMIRR_FLAP_PUSHES", 6)
        let slots = 2
        // Upstream swaps whole versions (see `Upstream`): built in place, a broken push could be sound for a moment under
        // its own token or the one before, and a mirror would rightly copy that moment.
        let fleet = try FleetTests.Fleet(size: 4, mirrorExtra: "publish = \"\(publish)\"", serving: true, upstreamSlots: slots,
                                         atomicUpstream: true)
        defer { fleet.stop(); fleet.dir.remove() }
        var references: [String: String] = [:]
        try FaultCampaignTests.keep(fleet, "push-1", into: &references)
        for name in fleet.names { try fleet.start(name) }
        let formed = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }
        try #require(formed, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")

        /// Every mirror's published token.
        func published() -> [String: String] {
            Dictionary(uniqueKeysWithValues: fleet.names.map { ($0, FaultCampaignTests.published(fleet, $0) ?? "-") })
        }
        /// Upstream's tree pulls that started at or after `since`, and the most at once.
        func treePulls(since: Date) throws -> (count: Int, peak: Int) {
            let pulls = try fleet.upstream.sessions().sessions.filter { $0.isTreePull && $0.started >= since.addingTimeInterval(-1) }
            return (pulls.count, peakOverlap(pulls.map { ($0.started, $0.ended) }))
        }
        /// Watches a broken push for `seconds`: nobody publishes it, every member records why.
        func refusedByAll(_ token: String, for seconds: Double, because: String, keeping: String) throws -> String {
            let since = Date()
            var moved: [String: String] = [:]
            let until = since.addingTimeInterval(seconds)
            while Date() < until {
                for (name, t) in published() where t != keeping { moved[name] = t }
                usleep(250_000)
            }
            #expect(moved.isEmpty, "\(token): published \(moved)")
            // What every mirror serves between refused runs is exactly the tree of the token it names: in place, the
            // metadata a refused run had swapped in has been put back. Members keep retrying (every backoff), and in place
            // a retry shows its metadata for a moment between stage 2 and the put-back (the pullers of one agreed plan
            // start together, so two can be in that moment at once); so this waits, boundedly, for a moment when no
            // member is in one. Metadata that stayed would keep it from ever coming.
            let named = FileManager.default.contents(atPath: references[keeping]! + "/repodata/repomd.xml")
            func serving() -> [String] {
                fleet.names.filter { FileManager.default.contents(atPath: fleet.mirror($0) + "/repodata/repomd.xml") != named }
            }
            let putBack = fleet.waitUntil(seconds: 3 * Self.backoff) { serving().isEmpty }
            #expect(putBack, "\(token): \(serving()) serve another repomd.xml than \(keeping)'s for \(Int(3 * Self.backoff)) s")
            let runs = try fleet.runs().filter { $0.token == token && $0.started >= since.addingTimeInterval(-1) }
            let refusals: Set<String> = ["failed", "verify-failed"]
            let failedBy = Set(runs.filter { refusals.contains($0.outcome) }.map(\.node))
            #expect(runs.allSatisfy { refusals.contains($0.outcome) || $0.outcome == "running" }, "\(token): \(runs.map { "\($0.node) \($0.outcome)" })")
            // Each member tried (a watcher or a planned puller) and recorded the reason.
            let tried = fleet.waitUntil(seconds: 30) {
                Set(((try? fleet.runs()) ?? []).filter { $0.token == token && refusals.contains($0.outcome) }.map(\.node)) == Set(fleet.names)
            }
            #expect(tried, "\(token): failed runs only on \(failedBy.sorted())")
            let history = try CLI.dmirr(["history", "-c", fleet.configPath("m0"), "--json", "--limit", "100"]).stdout
            #expect(history.contains(because), "\(token): m0's history does not say '\(because)': \(history.prefix(3000))")
            let sessions = try treePulls(since: since)
            // Bounded retries: a member avoids upstream for the backoff after each failure, so in this window each runs
            // at most once per backoff (plus the first), and never more than `slots` run at upstream at once.
            let window = Date().timeIntervalSince(since)
            let attempts = try fleet.runs().filter { $0.token == token && $0.source == "upstream" && $0.started >= since.addingTimeInterval(-1) }.count
            let bound = fleet.names.count * (Int(window / Self.backoff) + 1)
            #expect(attempts <= bound, "\(token): \(attempts) runs from upstream in \(Int(window)) s (bound \(bound))")
            #expect(sessions.peak <= slots, "\(token): \(sessions.peak) tree pulls at upstream at once")
            return "\(token): refused by all (\(because)); \(attempts) runs from upstream in \(Int(window)) s (bound \(bound)), "
                + "\(sessions.count) tree sessions at upstream, peak \(sessions.peak)"
        }

        let samplers = FaultCampaignTests.sample(fleet, references)
        var report: [String] = []

        // 1. Metadata naming a package upstream does not have.
        try fleet.upstream.push(add: [.init("ghost", "1.0")], token: "push-2") { tree in
            try FileManager.default.removeItem(atPath: tree + "/Packages/ghost-1.0-1.noarch.rpm")
        }
        report.append(try refusedByAll("push-2", for: Self.watch, because: "missing", keeping: "push-1"))

        // 2. A truncated primary.xml.gz (the package is back, the metadata cut short).
        try fleet.upstream.push(add: [.init("ghost", "1.0")], token: "push-3") { tree in
            let primary = try #require(try FileManager.default.contentsOfDirectory(atPath: tree + "/repodata")
                .first { $0.hasSuffix("primary.xml.gz") })
            let primaryPath = tree + "/repodata/" + primary
            let whole = try #require(FileManager.default.contents(atPath: primaryPath))
            try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: primaryPath))
        }
        report.append(try refusedByAll("push-3", for: Self.watch, because: "primary", keeping: "push-1"))

        // Sound again.
        try fleet.upstream.push(add: [.init("sound", "1.0")], token: "push-4")
        try FaultCampaignTests.keep(fleet, "push-4", into: &references)
        samplers.values.forEach { $0.stop() }
        var checked = samplers.values.reduce(0) { $0 + $1.samples }
        var problems = samplers.flatMap { name, s in s.problems.map { "\(name): \($0)" } }
        var samplers2 = FaultCampaignTests.sample(fleet, references)
        let healed = fleet.waitUntil(seconds: 90) { fleet.allInSync("push-4", among: fleet.names) }
        #expect(healed, "push-4: \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")

        // 3. A rollback: upstream serves push-1's tree again.
        try fleet.upstream.serveCopy(of: references["push-1"]!)
        report.append(try refusedByAll("push-1", for: Self.watch, because: "refusing to go back", keeping: "push-4"))
        let shown = (fleet.status("m0")?["members"] as? [[String: Any]] ?? []).compactMap { $0["last_error"] as? String }
        #expect(shown.contains { $0.contains("refusing to go back") }, "m0's status shows \(shown)")
        // The operator allows it: every member takes the older tree.
        for name in fleet.names {
            fleet.agents[name]!.killGroup()
            let config = try String(contentsOfFile: fleet.configPath(name), encoding: .utf8)
            try config.replacingOccurrences(of: "\nslots = \(slots)\n", with: "\nslots = \(slots)\nallow_rollback = true\n")
                .write(toFile: fleet.configPath(name), atomically: true, encoding: .utf8)
            try fleet.start(name)
        }
        let rolledBack = fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(rolledBack, "allowed rollback: \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        report.append("push-1 again: taken by all once allowed (`[upstream] allow_rollback = true`)")

        // 4. Upstream down: its port answers and closes at once; every connection is counted.
        fleet.upstream.stop()
        let counter = try ClosingListener(port: fleet.upstream.daemon.port)
        let downSince = Date()
        var movedWhileDown: [String: String] = [:]
        while Date().timeIntervalSince(downSince) < downSeconds {
            for (name, t) in published() where t != "push-1" { movedWhileDown[name] = t }
            usleep(500_000)
        }
        let attempts = counter.stop()
        #expect(movedWhileDown.isEmpty, "published while upstream was down: \(movedWhileDown)")
        // Watchers poll every second while upstream answers; once it fails, each member fetches only every backoff.
        let attemptBound = fleet.names.count * (Int(downSeconds / Self.backoff) + 3)
        #expect(attempts <= attemptBound, "\(attempts) connections to a down upstream in \(Int(downSeconds)) s (bound \(attemptBound))")
        let lastErrors = (fleet.status("m0")?["members"] as? [[String: Any]] ?? []).compactMap { $0["last_error"] as? String }
        try fleet.upstream.daemon.restart()
        try fleet.upstream.push(add: [.init("after-outage", "1.0")], token: "push-5")
        try FaultCampaignTests.keep(fleet, "push-5", into: &references)
        samplers2.values.forEach { $0.stop() }
        checked += samplers2.values.reduce(0) { $0 + $1.samples }
        problems += samplers2.flatMap { name, s in s.problems.map { "\(name): \($0)" } }
        let backAt = Date()
        let recovered = fleet.waitUntil(seconds: Self.backoff + 60) { fleet.allInSync("push-5", among: fleet.names) }
        #expect(recovered, "after the outage: \(fleet.names.map { "\($0): \(fleet.view($0))" })")
        report.append("down \(Int(downSeconds)) s: \(attempts) connection attempts (bound \(attemptBound)), nothing published; "
                      + "m0's status showed \(lastErrors.prefix(2)); all on push-5 \(String(format: "%.1f", Date().timeIntervalSince(backAt))) s after it came back")

        // 5. A token that changes every few seconds.
        let flapSince = Date()
        var last = "push-5"
        for i in 0..<flapPushes {
            last = "flap-\(i)"
            try fleet.upstream.push(add: [.init("flap\(i)", "1.0")], token: last)
            try FaultCampaignTests.keep(fleet, last, into: &references)
            usleep(3_000_000)
        }
        // The samplers of this phase start late (they need every reference); the flapping tokens' trees are judged by
        // what each mirror serves from now on, and the histories say what was published meanwhile.
        samplers2 = FaultCampaignTests.sample(fleet, references)
        let settled = fleet.waitUntil(seconds: 90) { fleet.allInSync(last, among: fleet.names) }
        #expect(settled, "after flapping: \(fleet.names.map { "\($0): \(fleet.view($0))" })")
        let flap = try treePulls(since: flapSince)
        #expect(flap.peak <= slots, "flapping: \(flap.peak) tree pulls at upstream at once")
        let publishedTokens = Set(try fleet.runs().filter { $0.outcome == "synced" }.map(\.token))
        #expect(publishedTokens.isSubset(of: Set(references.keys)), "published tokens: \(publishedTokens.sorted())")
        report.append("flapping (\(flapPushes) pushes 3 s apart): \(flap.count) tree pulls at upstream, peak \(flap.peak); all on \(last) after")
        samplers2.values.forEach { $0.stop() }
        checked += samplers2.values.reduce(0) { $0 + $1.samples }
        problems += samplers2.flatMap { name, s in s.problems.map { "\(name): \($0)" } }
        // Snapshot mode never serves a tree it has not verified. In place, stage 2 swaps the new metadata in before it is
        // verified, and a refused run puts it back (checked above after each broken push): the samples that fall in
        // between are counted and reported, not allowed to last.
        if publish == "snapshot" {
            #expect(problems.isEmpty, "\(problems.prefix(20))")
        }
        for name in fleet.names {
            let served = URL(fileURLWithPath: fleet.mirror(name)).resolvingSymlinksInPath().path
            #expect(TreeComparison.differences(fleet.upstream.tree, served) == [], "\(name)")
        }
        for line in report { print("broken upstream (\(publish)): \(line)") }
        print("broken upstream (\(publish)): \(checked) client samples, \(problems.count) inconsistent"
              + (problems.isEmpty ? "" : " (in the moments between stage 2 and the put-back: \(Array(Set(problems.map { String($0.prefix(60)) })).sorted().prefix(3)))"))
    }
}

/// Stands in for a down upstream on its port: accepts each connection and closes it at once, counting them, so a test
/// sees how often the fleet tries.
final class ClosingListener: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    private var accepted = 0
    private var stopped = false
    private var thread: Thread?

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = RawSocket.bind(fd, "127.0.0.1", port: port)
        guard bound, listen(fd, 64) == 0 else {
            close(fd)
            throw TestFailure("cannot listen on 127.0.0.1:\(port) in place of upstream: errno \(errno)")
        }
        let thread = Thread { [self] in
            while !lock.withLock({ stopped }) {
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&poller, 1, 100) > 0 else { continue }
                let client = accept(fd, nil, nil)
                if client >= 0 {
                    close(client)
                    lock.withLock { accepted += 1 }
                }
            }
        }
        self.thread = thread
        thread.start()
    }

    /// Stops listening; returns how many connections it took.
    func stop() -> Int {
        lock.withLock { stopped = true }
        while thread?.isFinished == false { usleep(10_000) }
        close(fd)
        return lock.withLock { accepted }
    }
}

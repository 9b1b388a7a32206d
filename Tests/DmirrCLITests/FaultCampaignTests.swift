import DmirrFixtures
import DmirrTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The fault campaigns that need separate hosts (docs/reliability.md): a fleet of real agents, each in a network
/// namespace of its own with its own rsync daemon, and upstream in another, through cut links, frozen hosts and a member
/// killed while it holds the upstream slot. Each campaign runs a short form in the suite and a full form with the
/// environment variable its doc comment names; its rounds come from a seeded generator, and a failure prints the
/// command that replays it.
@Suite(.serialized) struct FaultCampaignTests {
    static func setting(_ key: String, _ fallback: Int) -> Int { Int(ProcessInfo.processInfo.environment[key] ?? "") ?? fallback }

    /// The token a mirror publishes now (its `CURRENT`), or nil.
    static func published(_ fleet: FleetTests.Fleet, _ name: String) -> String? {
        (try? String(contentsOfFile: fleet.mirror(name) + "/CURRENT", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Keeps a copy of upstream's tree as it is now, the reference the samplers check a token against.
    static func keep(_ fleet: FleetTests.Fleet, _ token: String, into references: inout [String: String]) throws {
        let copy = fleet.dir.sub("ref-\(token)")
        let r = try CLI.run("/bin/cp", ["-a", fleet.upstream.tree, copy])
        guard r.exitCode == 0 else { throw TestFailure(r.stderr) }
        references[token] = copy
    }

    /// One sampler per mirror, reading it the way a client does (see `CrashCampaignTests.Sampler`).
    static func sample(_ fleet: FleetTests.Fleet, _ references: [String: String]) -> [String: CrashCampaignTests.Sampler] {
        var samplers: [String: CrashCampaignTests.Sampler] = [:]
        for name in fleet.names {
            let sampler = CrashCampaignTests.Sampler(tree: fleet.mirror(name), references: references)
            sampler.start()
            samplers[name] = sampler
        }
        return samplers
    }

    /// The harness itself: a host reaches another's rsync daemon; a cut link drops its packets and a healed one carries
    /// them again; a bandwidth limit slows a transfer; closing the lab removes every namespace it made.
    @Test func theLabCutsHealsAndLimitsLinksAndLeavesNothingBehind() throws {
        let lab = try NetLab(tag: "lab")
        defer { lab.close() }
        let dir = try TestDirectory("netlab")
        defer { dir.remove() }
        let client = try lab.add("a")
        let server = try lab.add("b")
        try FileManager.default.createDirectory(atPath: dir.sub("served"), withIntermediateDirectories: true)
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        try Data(bytes).write(to: URL(fileURLWithPath: dir.sub("served/blob")))
        let daemon = try RsyncDaemon(directory: dir.sub("rsyncd"), modules: [.init(name: "m", path: dir.sub("served"))],
                                     namespace: (server.namespace, server.address))
        defer { daemon.stop() }
        #expect(daemon.url("m") == "rsync://\(server.address):873/m")

        var fetches = 0
        func fetch() throws -> (ok: Bool, seconds: Double) {
            fetches += 1
            let started = Date()
            let r = try CLI.run("/usr/sbin/ip", ["netns", "exec", client.namespace, "rsync", "--contimeout=2", "--timeout=3",
                                                 daemon.url("m") + "/blob", dir.sub("got-\(fetches)")], timeout: 30)
            return (r.exitCode == 0, Date().timeIntervalSince(started))
        }
        let open = try fetch()
        #expect(open.ok, "host a cannot fetch from host b's daemon")
        #expect(FileManager.default.contentsEqual(atPath: dir.sub("got-1"), andPath: dir.sub("served/blob")))

        try lab.cut("a", "b")
        #expect(!lab.linked("a", "b") && !lab.linked("b", "a"))
        let cut = try fetch()
        #expect(!cut.ok, "a fetch crossed a cut link")
        try lab.heal("a", "b")
        #expect(try fetch().ok, "a healed link carries nothing")

        // 1 MiB at 2 Mbit/s takes about 4 s; unlimited, it took `open.seconds`.
        try lab.limit("b", kbit: 2000)
        let slow = try fetch()
        try lab.limit("b", kbit: nil)
        #expect(slow.ok && slow.seconds > 3 && slow.seconds > 3 * open.seconds,
                "1 MiB through a 2 Mbit/s limit took \(slow.seconds) s (unlimited: \(open.seconds) s)")

        daemon.stop()
        lab.close()
        let left = try CLI.run("/usr/sbin/ip", ["netns", "list"]).stdout
        #expect(!left.contains(lab.prefix), "namespaces left behind: \(left)")
    }

    /// The partition campaign: six agents, each round a fault drawn in turn from four kinds (the hosts shuffled by the
    /// seed), a push during the fault, then healing. Kinds: random halves (both reach upstream), one member cut off from
    /// everyone (upstream too), a member bridging two halves that cannot reach each other, and upstream reachable from
    /// one half only. Checked every round: a sampler on every mirror reads the served tree every 100 ms and finds it
    /// consistent; who can reach upstream takes the push during the fault; each side of a split pulls from upstream at
    /// most `[upstream] slots` at once (the fleet-wide bound, C × sides, is what upstream sees); after healing, everyone
    /// converges on the token and holds upstream's tree.
    ///
    /// `DMIRR_PARTITION_ROUNDS` (4 in the suite: one of each kind) and `DMIRR_PARTITION_SEED` (1).
    @Test func partitionsKeepEverySideConsistentAndHeal() throws {
        let rounds = Self.setting("DMIRR_PARTITION_ROUNDS", 4)
        let seed = UInt64(Self.setting("DMIRR_PARTITION_SEED", 1))
        let replay = "DMIRR_PARTITION_SEED=\(seed) DMIRR_PARTITION_ROUNDS=\(rounds) swift test --skip-build --filter 'FaultCampaignTests/partitions'"
        var rng = CrashCampaignTests.Moments(state: seed)
        let slots = 2
        let lab = try NetLab(tag: "par")
        // Pulls of a push's 1 MB package take about 2 s (--bwlimit=500), long enough for pulls to overlap.
        let fleet = try FleetTests.Fleet(size: 6, mirrorExtra: "rsync_args = [\"--bwlimit=500\"]", serving: true,
                                         upstreamSlots: slots, lab: lab)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        var references: [String: String] = [:]
        try Self.keep(fleet, "push-1", into: &references)
        let first = fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }

        var summary: [String] = []
        for round in 1...rounds {
            let kind = ["halves", "isolated", "bridge", "upstream-one-half"][(round - 1) % 4]
            var order = fleet.names
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() * Double(i + 1))) }
            // The groups of members that can reach each other during the fault (a bridge member is in none of the two
            // halves: it reaches both), and who can reach upstream.
            var sides: [[String]]
            var reachUpstream = Set(fleet.names)
            switch kind {
            case "halves":
                sides = [Array(order[..<3]), Array(order[3...])]
                try lab.split(sides)
            case "isolated":
                sides = [[order[0]], Array(order[1...])]
                try lab.isolate(order[0])
                reachUpstream.remove(order[0])
            case "bridge":
                sides = [Array(order[1..<3]), Array(order[3...])]
                try lab.split(sides)
                sides = [fleet.names]  // one fleet still: records cross through the bridge
            default:
                sides = [fleet.names]
                for name in order[3...] { try lab.cut("upstream", name); reachUpstream.remove(name) }
            }
            let describe = "round \(round) (\(kind), order \(order))"
            sleep(1)  // the session filter below looks a second back: keep the previous round's sessions out of it
            let token = "push-\(round + 1)"
            let faultAt = Date()
            try fleet.upstream.push(add: [.init("r\(round)", "1.0", sizeKB: 1024)], remove: round > 1 ? ["r\(round - 1)-1.0-1.noarch.rpm"] : [],
                                    token: token)
            try Self.keep(fleet, token, into: &references)
            let samplers = Self.sample(fleet, references)

            // During the fault: whoever can get the push (from upstream, or from a peer its side can reach) takes it.
            let expected = fleet.names.filter { name in
                sides.first { $0.contains(name) }!.contains { reachUpstream.contains($0) }
            }
            let tookIt = fleet.waitUntil(seconds: 60) { expected.allSatisfy { Self.published(fleet, $0) == token } }
            #expect(tookIt, "\(describe): \(expected.map { "\($0)=\(Self.published(fleet, $0) ?? "-")" }) during the fault\nreplay: \(replay)")
            let during = Date().timeIntervalSince(faultAt)
            for name in fleet.names where !expected.contains(name) {
                #expect(Self.published(fleet, name) == "push-\(round)", "\(describe): \(name) cannot reach the push yet publishes \(Self.published(fleet, name) ?? "-")")
            }
            sleep(2)  // the fault lasts a little past the push: gossip across the cut would show now
            try lab.healAll()
            let healed = Date()
            let converged = fleet.waitUntil(seconds: 90) { fleet.allInSync(token, among: fleet.names) }
            #expect(converged, "\(describe): not converged after healing: \(fleet.names.map { "\($0): \(fleet.view($0))" })\nreplay: \(replay)")
            let after = Date().timeIntervalSince(healed)
            for sampler in samplers.values { sampler.stop() }
            for (name, sampler) in samplers.sorted(by: { $0.key < $1.key }) {
                #expect(sampler.problems.isEmpty, "\(describe): \(name) served \(sampler.problems.prefix(5))\nreplay: \(replay)")
                #expect(sampler.samples > 0, "\(describe): no sample of \(name)")
            }
            for name in fleet.names {
                #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(describe): \(name)\nreplay: \(replay)")
            }

            // Upstream's load: per side from the agents' histories, in all from the daemon's own log.
            let runs = try fleet.runs().filter { $0.token == token && $0.source == "upstream" && $0.started >= faultAt }
            for side in sides {
                let peak = peakOverlap(runs.filter { side.contains($0.node) }.map { ($0.started, $0.finished) })
                #expect(peak <= slots, "\(describe): side \(side) pulled \(peak) at once from upstream\nreplay: \(replay)")
            }
            let log = try fleet.upstream.sessions()
            let pulls = log.sessions.filter { $0.isTreePull && $0.started >= faultAt.addingTimeInterval(-1) }
            let peak = peakOverlap(pulls.map { ($0.started, $0.ended) })
            #expect(peak <= slots * sides.count, "\(describe): upstream served \(peak) tree pulls at once\nreplay: \(replay)")
            let line = "\(describe): the push reached \(expected.count) of 6 during the fault in \(String(format: "%.1f", during)) s; "
                + "all in sync \(String(format: "%.1f", after)) s after healing; \(runs.count) upstream pulls, peak \(peak) at upstream; "
                + "\(samplers.values.map(\.samples).reduce(0, +)) samples"
            print("partitions: " + line)
            summary.append(line)
        }
        print("partitions: \(rounds) rounds, seed \(seed)")
    }

    /// Who says of itself that it is pulling from upstream now.
    static func pullingFromUpstream(_ fleet: FleetTests.Fleet, among names: [String]) -> String? {
        names.first { name in
            let me = (fleet.status(name)?["members"] as? [[String: Any]] ?? []).first { $0["node"] as? String == name }
            return me?["state"] as? String == "syncing" && me?["source"] as? String == "upstream"
        }
    }

    /// Every agent's log lines about liveness, links and its clock: what a wrong suspicion needs to be read.
    static func livenessLines(_ fleet: FleetTests.Fleet) -> String {
        let topics = ["liveness", "suspect", "silent", "clock", "peer connection", "peer link", "second connection", "forgot a member", "ran late"]
        return fleet.agents.sorted { $0.key < $1.key }.map { name, agent in
            "--- \(name)\n" + agent.stderr.split(separator: "\n").filter { line in topics.contains { line.contains($0) } }
                .suffix(60).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// Members that `viewer` shows as suspect or down, among `healthy`.
    static func wronglySuspected(_ fleet: FleetTests.Fleet, by viewer: String, among healthy: [String]) -> [String] {
        let view = fleet.view(viewer)
        return healthy.filter { ["suspect", "down"].contains(view[$0]?.state ?? "") }
    }

    /// The slot campaign: `[upstream] slots = 1`, no member serves (so every pull is an upstream pull and the slot is
    /// the only way to upstream), and each round kills (SIGKILL to its process group: the agent and its rsync) the
    /// member pulling from upstream in mid-transfer. The slot must be used again within rsync's `timeout` (20 s) plus
    /// the failure-detection bound (`down_after`, 5 s here), and upstream's log must never show two tree pulls at once.
    /// The killed member restarts and catches up.
    ///
    /// `DMIRR_SLOT_ROUNDS` (1 in the suite, 10 for the full campaign).
    @Test func aMemberKilledHoldingTheUpstreamSlotFreesItInBoundAndNeverTwice() throws {
        let rounds = Self.setting("DMIRR_SLOT_ROUNDS", 1)
        let replay = "DMIRR_SLOT_ROUNDS=\(rounds) swift test --skip-build --filter 'FaultCampaignTests/aMemberKilled'"
        let lab = try NetLab(tag: "slt")
        // 1 MB at 300 KB/s: each pull holds the slot for about 3.5 s, long enough to be killed in.
        let fleet = try FleetTests.Fleet(size: 4, mirrorExtra: "rsync_args = [\"--bwlimit=300\"]", upstreamSlots: 1, lab: lab)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        let first = fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }
        let bound = 20.0 + 5.0
        var gaps: [Double] = []
        for round in 1...rounds {
            sleep(1)
            let token = "push-\(round + 1)"
            let pushed = Date()
            try fleet.upstream.push(add: [.init("s\(round)", "1.0", sizeKB: 1024)], remove: round > 1 ? ["s\(round - 1)-1.0-1.noarch.rpm"] : [],
                                    token: token)
            var victim: String?
            _ = fleet.waitUntil(seconds: 30) {
                victim = Self.pullingFromUpstream(fleet, among: fleet.names)
                return victim != nil
            }
            guard let victim else {
                Issue.record("round \(round): nobody pulled from upstream within 30 s of the push\n\(fleet.logs())")
                return
            }
            fleet.agents[victim]!.killGroup()
            let killed = Date()
            let others = fleet.names.filter { $0 != victim }
            let othersTookIt = fleet.waitUntil(seconds: 90) { others.allSatisfy { Self.published(fleet, $0) == token } }
            #expect(othersTookIt, "round \(round): after \(victim) was killed: \(others.map { "\($0)=\(Self.published(fleet, $0) ?? "-")" })\nreplay: \(replay)")
            let next = try fleet.runs().filter { $0.token == token && $0.source == "upstream" && $0.node != victim && $0.started >= killed }
                .map(\.started).min()
            let gap = next.map { $0.timeIntervalSince(killed) }
            #expect(gap.map { $0 <= bound } == true, "round \(round): the slot \(victim) held was next used \(gap.map { "\($0) s" } ?? "never") after the kill (bound \(bound) s)\nreplay: \(replay)")
            if let gap { gaps.append(gap) }
            try fleet.start(victim)
            let all = fleet.waitUntil(seconds: 60) { fleet.allInSync(token, among: fleet.names) }
            #expect(all, "round \(round): \(victim) did not catch up after its restart: \(fleet.view(victim))\nreplay: \(replay)")
            let log = try fleet.upstream.sessions()
            let pulls = log.sessions.filter { $0.isTreePull && $0.started >= pushed.addingTimeInterval(-1) }
            let peak = peakOverlap(pulls.map { ($0.started, $0.ended) })
            #expect(peak == 1, "round \(round): upstream served \(peak) tree pulls at once: \(pulls.map { "\($0.request) \($0.started.timeIntervalSince(pushed))…\($0.ended.timeIntervalSince(pushed))" })\nreplay: \(replay)")
            print("slot: round \(round): killed \(victim) pulling from upstream; the slot was used again after \(gap.map { String(format: "%.1f", $0) } ?? "never") s; "
                  + "\(pulls.count) upstream tree sessions, peak \(peak)")
        }
        print("slot: \(rounds) rounds, slot reused after \(gaps.map { String(format: "%.1f", $0) }.joined(separator: ", ")) s (bound \(bound) s)")
    }

    /// The stall campaign: a member frozen (SIGSTOP to its process group: the agent and any rsync it runs) for each of
    /// the durations, once while idle with a push arriving during the freeze and once in the middle of its own pull.
    /// Checked: no member other than the frozen one is ever shown suspect or down, by anyone, including by the frozen
    /// one once it runs again (it heard nothing for the whole freeze, and logs that it was paused); upstream never
    /// serves more than `[upstream] slots` tree pulls at once; the frozen member catches up after SIGCONT.
    ///
    /// `DMIRR_STALL_SECONDS` (a comma-separated list; "5,15" in the suite, "5,30,120" for the full campaign).
    @Test func aFrozenMemberCatchesUpAndNoHealthyOneIsSuspected() throws {
        let durations = (ProcessInfo.processInfo.environment["DMIRR_STALL_SECONDS"] ?? "5,15").split(separator: ",").compactMap { Int($0) }
        let replay = "DMIRR_STALL_SECONDS=\(durations.map(String.init).joined(separator: ",")) swift test --skip-build --filter 'FaultCampaignTests/aFrozenMember'"
        let lab = try NetLab(tag: "stl")
        let victim = "m4"
        // The victim pulls slowly (1 MB at 150 KB/s, about 7 s), so it can be frozen mid-pull.
        let fleet = try FleetTests.Fleet(size: 5, serving: true, upstreamSlots: 2,
                                         mirrorExtraFor: [victim: "rsync_args = [\"--bwlimit=150\"]"], lab: lab)
        defer { fleet.stop(); fleet.dir.remove() }
        for name in fleet.names { try fleet.start(name) }
        let first = fleet.waitUntil(seconds: 90) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }
        let healthy = fleet.names.filter { $0 != victim }
        var round = 0
        for seconds in durations {
            for midPull in [false, true] {
                round += 1
                let describe = "freeze of \(seconds) s \(midPull ? "mid-pull" : "while idle")"
                sleep(1)
                let token = "push-\(round + 1)"
                let pushed = Date()
                func push() throws {
                    try fleet.upstream.push(add: [.init("f\(round)", "1.0", sizeKB: 1024)], remove: round > 1 ? ["f\(round - 1)-1.0-1.noarch.rpm"] : [],
                                            token: token)
                }
                if midPull {
                    try push()
                    let pulling = fleet.waitUntil(seconds: 30) { fleet.view(victim)[victim]?.state == "syncing" }
                    #expect(pulling, "\(describe): \(victim) never started its pull: \(fleet.view(victim))")
                }
                let pid = fleet.agents[victim]!.pid
                kill(-pid, SIGSTOP)
                let frozen = Date()
                if !midPull { try push() }
                var wrong: Set<String> = []
                while Date().timeIntervalSince(frozen) < Double(seconds) {
                    for viewer in healthy { wrong.formUnion(Self.wronglySuspected(fleet, by: viewer, among: healthy).map { "\($0) by \(viewer)" }) }
                    usleep(300_000)
                }
                kill(-pid, SIGCONT)
                // The frozen one's own view, as soon as it answers again and for a few seconds after.
                let resumed = Date()
                while Date().timeIntervalSince(resumed) < 5 {
                    wrong.formUnion(Self.wronglySuspected(fleet, by: victim, among: healthy).map { "\($0) by \(victim) after SIGCONT" })
                    for viewer in healthy { wrong.formUnion(Self.wronglySuspected(fleet, by: viewer, among: healthy).map { "\($0) by \(viewer)" }) }
                    usleep(200_000)
                }
                #expect(wrong.isEmpty, "\(describe): healthy members shown suspect or down: \(wrong.sorted())\nreplay: \(replay)\n\(Self.livenessLines(fleet))")
                // It knows it was the one stopped (a round late by the freeze) and says so, once per freeze.
                let pausesLogged = fleet.agents[victim]!.stderr.components(separatedBy: "gossip round ran late").count - 1
                #expect(pausesLogged >= round, "\(describe): \(victim) logged \(pausesLogged) pauses in \(round) freezes: \(fleet.agents[victim]!.stderr.suffix(1500))")
                // A freeze longer than the record lifetime (10 s here) makes the others forget the frozen member; it is
                // heard again through gossip, which took up to 65 s on a loaded CI machine (docs/reliability.md).
                let caughtUp = fleet.waitUntil(seconds: 120) { fleet.allInSync(token, among: fleet.names) }
                #expect(caughtUp, "\(describe): \(fleet.names.map { "\($0): \(fleet.view($0))" })\nreplay: \(replay)")
                let after = Date().timeIntervalSince(resumed)
                let log = try fleet.upstream.sessions()
                let pulls = log.sessions.filter { $0.isTreePull && $0.started >= pushed.addingTimeInterval(-1) }
                let peak = peakOverlap(pulls.map { ($0.started, $0.ended) })
                #expect(peak <= 2, "\(describe): upstream served \(peak) tree pulls at once: \(pulls.map { "\($0.request) \($0.started.timeIntervalSince(pushed))…\($0.ended.timeIntervalSince(pushed))" })\nreplay: \(replay)")
                for name in fleet.names {
                    #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(describe): \(name)")
                }
                print("stalls: \(describe): \(wrong.count) wrong suspicions; all in sync \(String(format: "%.1f", after)) s after SIGCONT (5 s of it watching for suspicions); "
                      + "upstream peak \(peak) (\(pulls.count) tree sessions)")
            }
        }
    }

    /// The clock campaign: one member of four runs with its clock 10 minutes ahead of the others, then 10 minutes
    /// behind them (`faketime`; the fleet's certificates were issued an hour earlier, as real ones are). Behind is made
    /// by setting the other three 10 minutes ahead: under libfaketime a negative offset stalls every Swift
    /// `ContinuousClock.sleep` for good (checked with a three-line program; a positive one does not), which no real
    /// host's clock does, and what the members compare is only their clocks' difference. Checked each time: the fleet
    /// converges with it; nobody is ever shown suspect or down; a push reaches every member, it included, with only
    /// upstream's tokens in anyone's history; the odd member logs how far off its clock is, and no other member logs a
    /// correction.
    @Test func aMemberTenMinutesOffIsNeitherSuspectedNorLeftBehind() throws {
        // suspect_after 5 s rather than the fleet tests' 2 s: a wrong suspicion here must come from the clocks, not
        // from a CI machine too busy to gossip for 2 s (which happened once).
        let fleet = try FleetTests.Fleet(size: 4, serving: true, http: true, suspectAfter: "5s", downAfter: "15s",
                                         certificatesIssuedAgo: "1h")
        defer { fleet.stop(); fleet.dir.remove() }
        let odd = "m3"
        // Only the wall clock: with a shifted monotonic clock too, Swift's sleeps wait for the shift, and with shifted
        // stat() times rsync would copy files' mtimes shifted; no real host does either.
        func start(_ name: String, ahead: Bool) throws {
            if ahead {
                try fleet.start(name, environment: ["DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"], wrapper: ["/usr/bin/faketime", "-f", "+10m"])
            } else {
                try fleet.start(name)
            }
        }
        var token = "push-1"
        for (round, oddAhead) in [true, false].enumerated() {
            for name in fleet.names { try start(name, ahead: (name == odd) == oddAhead) }
            let describe = "\(odd) 10 min \(oddAhead ? "ahead of" : "behind") the others"
            let joined = fleet.waitUntil(seconds: 60) { fleet.allInSync(token, among: fleet.names) }
            #expect(joined, "\(describe): \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
            var wrong: Set<String> = []
            let watchUntil = Date().addingTimeInterval(10)
            while Date() < watchUntil {
                for viewer in fleet.names { wrong.formUnion(Self.wronglySuspected(fleet, by: viewer, among: fleet.names).map { "\($0) by \(viewer)" }) }
                usleep(300_000)
            }
            token = "push-\(round + 2)"
            try fleet.upstream.push(add: [.init("k\(round)", "1.0")], token: token)
            let followed = fleet.waitUntil(seconds: 60) {
                for viewer in fleet.names { wrong.formUnion(Self.wronglySuspected(fleet, by: viewer, among: fleet.names).map { "\($0) by \(viewer)" }) }
                return fleet.allInSync(token, among: fleet.names)
            }
            #expect(followed, "\(describe): the push did not reach everyone: \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
            #expect(wrong.isEmpty, "\(describe): shown suspect or down: \(wrong.sorted())\n\(Self.livenessLines(fleet))")
            for name in fleet.names {
                #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(describe): \(name)")
            }
            let tokens = Set(try fleet.runs().map(\.token).filter { !$0.isEmpty })
            #expect(tokens.isSubset(of: ["push-1", "push-2", "push-3"]), "\(describe): histories name \(tokens.sorted())")
            let log = fleet.agents[odd]!.stderr
            let direction = oddAhead ? "ahead of" : "behind"
            let said = log.components(separatedBy: "this host's clock is ").dropFirst().compactMap { rest -> Double? in
                rest.contains("s \(direction) its peers'") ? Double(rest.prefix { $0.isNumber || $0 == "." }) : nil
            }
            #expect(said.contains { abs($0 - 600) < 5 }, "\(describe): the log says \(said): \(log.suffix(2000))")
            for name in fleet.names where name != odd {
                #expect(!fleet.agents[name]!.stderr.contains("this host's clock is"), "\(name) corrected its clock: \(fleet.agents[name]!.stderr.suffix(1500))")
            }
            // And its metrics say so (what an operator's alert reads): minus when its clock is ahead, zero elsewhere.
            for name in fleet.names {
                let metrics = try HTTPListenerTests.get("http://127.0.0.1:\(fleet.httpPorts[name]!)/metrics").body
                let correction = HTTPListenerTests.sample(metrics, "dmirr_clock_correction_seconds")
                let expected: Double = name != odd ? 0 : oddAhead ? -600 : 600
                #expect(correction.map { abs($0 - expected) < 5 } == true, "\(describe): \(name)'s correction \(String(describing: correction)) s")
            }
            // Records refused for their times, by kind: only the odd member's first ones, signed before its first peer
            // showed it how far off it is, and the others' first ones at it.
            var refused: [String: Int] = [:]
            for name in fleet.names {
                for line in fleet.agents[name]!.stderr.split(separator: "\n") where line.contains("record.problem=") {
                    let problem = line.split(separator: "record.problem=")[1].prefix { !$0.isNumber }
                    refused[String(problem), default: 0] += 1
                }
            }
            print("clocks: \(describe): \(wrong.count) wrong suspicions; push \(token) reached all; records refused: \(refused)")
            for agent in fleet.agents.values { agent.killGroup() }
        }
    }

    /// The full-disk campaign: one member of three keeps its mirror on a small filesystem of its own (tmpfs), filled so
    /// that a push's new package does not fit. Checked: its live tree stays exactly as it was (push-1), its status and
    /// history show the error, no member pulls push-2 from it, and once space is freed it takes the push by itself.
    @Test func aFullDiskLeavesTheTreeAsItWasAndRecovers() throws {
        let full = "m2"
        let fleet = try FleetTests.Fleet(size: 3, serving: true, peersExtra: "attestations = 1")
        defer { fleet.stop(); fleet.dir.remove() }
        // A 16 MiB filesystem; the mirror is a directory of it bound at the mirror's path, so that the file filling the
        // disk lies outside the tree (inside, a sync would rightly delete it).
        let volume = fleet.dir.sub("volume")
        try FileManager.default.createDirectory(atPath: volume, withIntermediateDirectories: true)
        let mount = try CLI.run("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", volume])
        guard mount.exitCode == 0 else { throw TestFailure("cannot mount a tmpfs for \(full)'s mirror: \(mount.stderr)") }
        defer { _ = try? CLI.run("/usr/bin/umount", ["-l", volume]) }
        try FileManager.default.createDirectory(atPath: volume + "/tree", withIntermediateDirectories: true)
        let bind = try CLI.run("/usr/bin/mount", ["--bind", volume + "/tree", fleet.mirror(full)])
        guard bind.exitCode == 0 else { throw TestFailure("cannot bind the tmpfs at \(full)'s mirror: \(bind.stderr)") }
        defer { _ = try? CLI.run("/usr/bin/umount", ["-l", fleet.mirror(full)]) }
        // The daemon serving it was started before the mount: it resolves the path at each connection, so it serves
        // the tmpfs from now on.
        for name in fleet.names { try fleet.start(name) }
        let first = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-1", among: fleet.names) }
        #expect(first, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        guard first else { return }
        let before = fleet.dir.sub("before")
        #expect(try CLI.run("/bin/cp", ["-a", fleet.mirror(full), before]).exitCode == 0)
        // Leave 1 MiB free; the push brings a 3 MiB package.
        let free = try #require(try FileManager.default.attributesOfFileSystem(forPath: fleet.mirror(full))[.systemFreeSize] as? Int)
        let filler = volume + "/filler"
        #expect(try CLI.run("/usr/bin/fallocate", ["-l", "\(free - (1 << 20))", filler]).exitCode == 0)
        let pushed = Date()
        try fleet.upstream.push(add: [.init("big", "1.0", sizeKB: 3072)], token: "push-2")
        let others = fleet.names.filter { $0 != full }
        let othersTookIt = fleet.waitUntil(seconds: 60) { others.allSatisfy { Self.published(fleet, $0) == "push-2" } }
        #expect(othersTookIt, "\(fleet.names.map { "\($0): \(fleet.view($0))" })")
        // Its own runs fail for lack of space; its status and history say so.
        let failed = fleet.waitUntil(seconds: 60) {
            ((try? fleet.runs()) ?? []).contains { $0.node == full && $0.token == "push-2" && $0.outcome == "failed" }
        }
        #expect(failed, "\(full) never recorded a failed run: \(fleet.agents[full]!.stderr.suffix(2000))")
        let history = try CLI.dmirr(["history", "-c", fleet.configPath(full)])
        #expect(history.stdout.contains("No space left on device") || history.stdout.contains("space"), "\(history.stdout)")
        let status = (fleet.status("m0")?["members"] as? [[String: Any]] ?? []).first { $0["node"] as? String == full }
        let lastError = status?["last_error"] as? String ?? ""
        #expect(lastError.contains("space"), "m0 shows \(full) as \(status ?? [:])")
        #expect(Self.published(fleet, full) == "push-1")
        try FileManager.default.removeItem(atPath: filler)
        // dmirr's own working directory may stay (empty: what the failed transfer wrote there is gone); it is never
        // transferred or served as part of the tree.
        let working = (FileManager.default.enumerator(atPath: fleet.mirror(full) + "/.dmirr-tmp")?.allObjects as? [String]) ?? []
        #expect(working == [], "the failed run left \(working) in .dmirr-tmp")
        #expect(TreeComparison.differences(before, fleet.mirror(full)).filter { !$0.hasSuffix(": .dmirr-tmp") } == [],
                "the live tree changed while the disk was full")
        // Nobody took push-2 from the member that could not hold it.
        let fromFull = try fleet.runs().filter { $0.token == "push-2" && $0.source == full && $0.started >= pushed }
        #expect(fromFull.isEmpty, "\(fromFull.map(\.node)) pulled push-2 from \(full)")
        // Space freed: it recovers by itself.
        let recovered = fleet.waitUntil(seconds: 120) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(recovered, "\(full) did not recover once space was freed: \(fleet.view(full))\n\(fleet.agents[full]!.stderr.suffix(2000))")
        #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(full)) == [])
        print("full disk: \(full) refused push-2 with '\(lastError.prefix(120))'; recovered after space was freed")
    }

    /// The certificate campaign: one member's certificate expires while the fleet runs, then the operator rotates it,
    /// moving the fleet to a second CA on the way (a bundle of the old and the new CA). Checked: the member drops out
    /// with a clear line in its own log and in its peers' and with `certificate.expired` in its status; the others
    /// carry on and take a push; a rotated certificate and bundle are taken on SIGHUP by the same processes (no
    /// restart), so the member rejoins with its state; a reload of a damaged file keeps the old certificate in force.
    @Test func anExpiredCertificateDropsItsMemberAndARotatedOneIsTakenOnSIGHUP() throws {
        let fleet = try FleetTests.Fleet(size: 3, serving: true)
        defer { fleet.stop(); fleet.dir.remove() }
        let expiring = "m2"
        // Valid for one day, issued a day less 50 s ago: it expires 50 s from now.
        let lifetime = 50.0
        let issued = try CLI.run("/usr/bin/faketime", ["-f", "-\(86_400 - Int(lifetime))s", CLI.dmirrPath, "cert", "issue", "--ca", fleet.dir.sub("ca"),
                                                      "--node", expiring, "--ip", "127.0.0.1", "--days", "1", "--out", fleet.dir.sub("certs"), "--force"])
        try #require(issued.exitCode == 0, "\(issued.stderr)")
        let expiresAt = Date().addingTimeInterval(lifetime)
        for name in fleet.names { try fleet.start(name) }
        let joined = fleet.waitUntil(seconds: lifetime - 10) { fleet.allInSync("push-1", among: fleet.names) }
        try #require(joined, "the fleet did not form before the certificate expired: \(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        let runsBefore = try fleet.runs().filter { $0.node == expiring }.count
        let pids = fleet.agents.mapValues(\.pid)

        // Expiry: the member leaves the fleet.
        let others = fleet.names.filter { $0 != expiring }
        func out(of viewer: String) -> Bool {
            guard let state = fleet.view(viewer)[expiring]?.state else { return true }
            return state == "suspect" || state == "down"
        }
        let dropped = fleet.waitUntil(seconds: Date().timeIntervalSince(expiresAt) * -1 + 30) { Date() > expiresAt && others.allSatisfy(out(of:)) }
        #expect(dropped, "\(expiring) still in the fleet after its certificate expired: \(others.map { "\($0): \(fleet.view($0))" })")
        let droppedAfter = Date().timeIntervalSince(expiresAt)
        #expect(fleet.agents[expiring]!.stderr.contains("this agent's certificate has expired"), "\(fleet.agents[expiring]!.stderr.suffix(2000))")
        let peerLines = others.filter { fleet.agents[$0]!.stderr.contains("closed the link to a peer whose certificate has expired") }
        // Both held a link to it from before the expiry (three members, each dials up to four): both close it, naming it.
        #expect(peerLines == others, "peers that logged the expiry: \(peerLines)")
        let status = try #require(fleet.status(expiring))
        let certificate = status["certificate"] as? [String: Any]
        #expect(certificate?["expired"] as? Bool == true, "\(expiring)'s status: \(status)")
        let table = try CLI.dmirr(["status", "-c", fleet.configPath(expiring)])
        #expect(table.stdout.contains("certificate of \(expiring) EXPIRED"), "\(table.stdout)")
        // The others carry on.
        try fleet.upstream.push(add: [.init("after-expiry", "1.0")], token: "push-2")
        let carried = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: others) }
        #expect(carried, "\(others.map { "\($0): \(fleet.view($0))" })")

        // Rotation to a second CA: every member's bundle holds both, the member's new certificate is from the new one.
        let ca2 = try CLI.dmirr(["cert", "ca", "--fleet", "test", "--out", fleet.dir.sub("ca2")])
        try #require(ca2.exitCode == 0, "\(ca2.stderr)")
        let bundle = try String(contentsOfFile: fleet.dir.sub("ca/ca.pem"), encoding: .utf8) + String(contentsOfFile: fleet.dir.sub("ca2/ca.pem"), encoding: .utf8)
        try bundle.write(toFile: fleet.dir.sub("ca/ca.pem"), atomically: true, encoding: .utf8)
        let renewed = try CLI.dmirr(["cert", "issue", "--ca", fleet.dir.sub("ca2"), "--node", expiring, "--ip", "127.0.0.1",
                                     "--out", fleet.dir.sub("certs"), "--force"])
        try #require(renewed.exitCode == 0, "\(renewed.stderr)")
        // Only the member reloads first: the others still trust the old CA alone, so it stays out.
        kill(fleet.agents[expiring]!.pid, SIGHUP)
        let reloaded = fleet.agents[expiring]!.wait(upTo: 10) { fleet.agents[expiring]!.stderr.contains("SIGHUP: reloaded the certificate") }
        #expect(reloaded, "\(fleet.agents[expiring]!.stderr.split(separator: "\n").filter { $0.contains("SIGHUP") || $0.contains("error") && !$0.contains("handshake") })")
        var admittedEarly = false
        let watchUntil = Date().addingTimeInterval(6)
        while Date() < watchUntil {
            if others.contains(where: { fleet.view($0)[expiring]?.state == "in_sync" || fleet.view($0)[expiring]?.state == "behind" }) { admittedEarly = true }
            usleep(300_000)
        }
        #expect(!admittedEarly, "a member that had not reloaded the bundle admitted a certificate of the new CA")
        // A damaged file on a reload: the old certificate stays in force and the member stays in the fleet.
        let goodCert = try String(contentsOfFile: fleet.dir.sub("certs/m1.pem"), encoding: .utf8)
        try "not a certificate\n".write(toFile: fleet.dir.sub("certs/m1.pem"), atomically: true, encoding: .utf8)
        kill(fleet.agents["m1"]!.pid, SIGHUP)
        let kept = fleet.agents["m1"]!.wait(upTo: 10) { fleet.agents["m1"]!.stderr.contains("SIGHUP: kept the certificate in force") }
        #expect(kept, "\(fleet.agents["m1"]!.stderr.suffix(2000))")
        try goodCert.write(toFile: fleet.dir.sub("certs/m1.pem"), atomically: true, encoding: .utf8)
        #expect(fleet.view("m0")["m1"]?.state == "in_sync", "m1 after a failed reload: \(fleet.view("m0"))")
        // Now the others reload the bundle: the member rejoins and catches up, its state intact.
        let rotated = Date()
        for name in others { kill(fleet.agents[name]!.pid, SIGHUP) }
        let rejoined = fleet.waitUntil(seconds: 60) { fleet.allInSync("push-2", among: fleet.names) }
        #expect(rejoined, "\(fleet.names.map { "\($0): \(fleet.view($0))" })\n\(fleet.logs())")
        let rejoinedAfter = Date().timeIntervalSince(rotated)
        #expect(fleet.agents.mapValues(\.pid) == pids, "an agent was restarted")
        #expect(try fleet.runs().filter { $0.node == expiring }.count >= runsBefore, "the member's history lost runs")
        let after = try #require(fleet.status(expiring))
        #expect((after["certificate"] as? [String: Any])?["expired"] as? Bool == false, "\(after)")
        for name in fleet.names {
            #expect(TreeComparison.differences(fleet.upstream.tree, fleet.mirror(name)) == [], "\(name)")
        }
        print("certificates: \(expiring) out of every view \(String(format: "%.1f", droppedAfter)) s after its certificate expired "
              + "(peers logging the expiry: \(peerLines)); rejoined with a certificate of a second CA \(String(format: "%.1f", rejoinedAfter)) s "
              + "after its peers' SIGHUP; a damaged file on SIGHUP kept the old certificate")
    }
}

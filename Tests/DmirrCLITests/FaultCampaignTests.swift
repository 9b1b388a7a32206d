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
            sleep(1)  // the daemon's log has whole seconds: keep the previous round's sessions apart
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
}

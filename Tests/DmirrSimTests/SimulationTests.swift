import DmirrTestSupport
import Foundation
import Synchronization
import Testing

@testable import DmirrSim

@Suite struct SimulationTests {
    static func scenario(n: Int, seed: UInt64 = 1) -> Scenario {
        var s = Scenario()
        s.nodes = n
        s.seed = seed
        s.delta = 25e6  // 2 s per sync at 12.5 MB/s: short runs
        s.poll = 10
        s.pushAt = 10
        s.horizon = 2 * 3600
        return s
    }

    @Test func aRunIsExactlyReplayableFromItsSeed() {
        var s = Self.scenario(n: 30, seed: 42)
        s.failures.kill = 0.1
        s.failures.liars = 0.1
        let a = Simulation.run(s)
        let b = Simulation.run(s)
        #expect(a.t100 == b.t100 && a.t50 == b.t50)
        #expect(a.pullsFromPeers == b.pullsFromPeers && a.upstreamCopies == b.upstreamCopies)
        #expect(a.messagesPerNodeSecond == b.messagesPerNodeSecond)
        #expect(a.frames == b.frames && a.signings == b.signings && a.violations == b.violations)
        // A third run in between other work: nothing may depend on dictionary order or other per-process state.
        _ = Simulation.run(Self.scenario(n: 12, seed: 7))
        let again = Simulation.run(s)
        #expect(again.upstreamCopies == a.upstreamCopies && again.peerCopies == a.peerCopies && again.t100 == a.t100)
        s.seed = 43
        let c = Simulation.run(s)
        #expect(c.t100 != a.t100 || c.messagesPerNodeSecond != a.messagesPerNodeSecond, "another seed, the same run")
    }

    @Test func aHealthyFleetSpreadsInWavesAndSparesUpstream() {
        let s = Self.scenario(n: 60)
        let r = Simulation.run(s)
        #expect(r.violations.isEmpty, "\(r.violations)")
        #expect(r.peakUpstreamConcurrency <= s.upstreamSlots)
        // Waves: ⌈log_3(60/2)⌉ = 4, so t100 ≤ detect (a poll, 30 s, plus gossip) + (4 + 2) syncs of 2 s.
        let bound = s.poll + 10 + 6 * (s.delta / s.mirrorBandwidth)
        #expect((r.t100 ?? .infinity) <= bound, "t100 \(r.t100 ?? -1) s > \(bound) s")
        #expect(r.upstreamCopies <= Double(s.upstreamSlots) * 4 + 0.01, "upstream served \(r.upstreamCopies) copies")
        #expect(r.pullsFromPeers >= 50, "only \(r.pullsFromPeers) of 60 pulls from peers")
        // The cron baseline on the same inputs takes most of an hour.
        let cron = Baseline.run(s)
        #expect((cron.t100 ?? .infinity) > 10 * (r.t100 ?? .infinity), "cron \(cron.t100 ?? -1) s vs dmirr \(r.t100 ?? -1) s")
        #expect(cron.upstreamCopies >= 59.9)
    }

    /// A member whose host clock is 10 minutes off stamps its records in the fleet's time once its peers' `Hello`s
    /// have corrected it: nobody refuses them. Without the correction the same run breaks (records "in the future"
    /// refused), which shows the check can fail.
    @Test func skewedClocksAreCorrectedAndNoRecordIsRefused() {
        var s = Self.scenario(n: 40, seed: 3)
        s.failures.skew = 0.2
        s.failures.skewBy = 600
        let r = Simulation.run(s)
        #expect(r.violations.isEmpty, "\(r.violations.prefix(3))")
        #expect(r.t100 != nil)
        #expect(r.largestCorrection > 60_000, "the skew drawn was within the rule's minute: \(r.largestCorrection) ms")
        s.correctClocks = false
        let uncorrected = Simulation.run(s)
        #expect(uncorrected.violations.contains { $0.contains("in the future") }, "\(uncorrected.violations.prefix(3))")
    }

    /// Seeds of the simulation campaign that broke an invariant before the clock rule took the largest agreeing group
    /// (docs/reliability.md, "Simulation"): a skewed member whose peers included other skewed ones found no majority,
    /// stayed uncorrected and refused honest records (or had its own refused) as dated in the future.
    @Test(arguments: [42, 311] as [UInt64]) func aSkewedMemberAmongOtherSkewedOnesIsCorrected(seed: UInt64) {
        var s = Self.scenario(n: 100, seed: seed)
        s.drawFailures()
        let r = Simulation.run(s)
        #expect(r.violations.count == 0, "seed \(seed): \(r.violations.prefix(3))")
        #expect(r.largestCorrection > 250_000, "\(r.largestCorrection) ms")
    }

    /// Seed 7662 of the campaign's fourth pass: m98, 332 s behind, had four links, one honest and three off by their
    /// own amounts; no two offsets agreed, so its clock stayed uncorrected and it refused honest records as dated in
    /// the future (11,873 times) for the whole run. A member whose peers' clocks say nothing now links to more
    /// (`ClockOffset.determined`, the agent's dialer), and one more honest peer decides.
    @Test func aMemberWhosePeersClocksAllDifferLinksToMoreAndIsCorrected() {
        var s = Self.scenario(n: 100, seed: 7662)
        s.drawFailures()
        let r = Simulation.run(s)
        #expect(r.violations.isEmpty, "\(r.violations.prefix(3))")
        #expect(r.linksForClock > 0)
        #expect(r.largestCorrection > 300_000, "\(r.largestCorrection) ms")
        #expect(r.t100 != nil)
    }

    /// Seeds of the simulation campaign that reported more agreed upstream pulls than slots (docs/reliability.md,
    /// "Simulation"). 1682 and 1824: a member back from avoiding upstream started on a majority that had not heard it
    /// left, beside the member given its slot meanwhile (fixed in `SyncCoordinator`; before the fix both fail here).
    /// 723: a member cut off from every peer started on the view it had before the cut, beside pulls it could not
    /// have heard of; the check now counts such a start apart (`unseenStarts`) instead of as a breach. Since the
    /// coordinator's fix, seed 723's run no longer has that start; seed 5564 (below) has one. From the fourth pass
    /// (fixed in `SyncCoordinator`, each with its test in SyncCoordinatorTests): 7405, a suspect's upstream pull of an
    /// older token lost its slot; 8526, a member whose peer pull failed counted a majority from before that pull.
    @Test(arguments: [723, 1682, 1824, 7405, 8526] as [UInt64]) func theSeedsThatBrokeTheSlotsBoundRunClean(seed: UInt64) {
        var s = Self.scenario(n: 100, seed: seed)
        s.drawFailures()
        let r = Simulation.run(s)
        #expect(r.violations.count == 0, "seed \(seed): \(r.violations.prefix(3))")
        #expect(r.t100 != nil)
    }

    /// Seed 3307 of the campaign's fourth pass: five pulls at upstream at once with C = 2, no invariant broken. Its
    /// log of upstream starts says why, and this test checks the log says it: during a split with upstream reachable
    /// from both halves, two members of side A pulled on their agreed plan, two of side B on the deadline (half the
    /// fleet is no majority), and one member cut off from every peer on its own deadline. Neither side put more than C
    /// at upstream; the fifth was the member alone (docs/architecture.md: the bound holds among members that hear
    /// each other).
    @Test func anUpstreamPeakAboveTwiceTheSlotsIsTwoSidesAndAMemberCutOff() throws {
        var s = Self.scenario(n: 100, seed: 3307)
        s.drawFailures()
        let r = Simulation.run(s)
        #expect(r.violations.isEmpty, "\(r.violations.prefix(3))")
        #expect(r.peakUpstreamConcurrency == 2 * s.upstreamSlots + 1)
        // The log holds transfers, the counters pulls started: equal here because no start of this seed was turned
        // away (upstream busy, unreachable, or the tree already up to date), which a start in another seed can be.
        #expect(r.upstreamLog.count == r.upstreamStarts)
        #expect(r.upstreamLog.filter(\.agreed).count == r.agreedUpstreamStarts)
        let peak = try #require(r.upstreamLog.firstIndex { $0.atUpstream.count == r.peakUpstreamConcurrency })
        // Each member at upstream then, as its latest start up to that moment.
        let latest = Dictionary(r.upstreamLog[...peak].map { ($0.node, $0) }, uniquingKeysWith: { _, later in later })
        let pulling = try r.upstreamLog[peak].atUpstream.map { try #require(latest[$0]) }
        let description = pulling.map(\.description).joined(separator: "\n")
        for side in ["A", "B"] {
            let together = pulling.filter { $0.side == side && !$0.cutOff }
            #expect(together.count == s.upstreamSlots, "side \(side):\n\(description)")
        }
        #expect(pulling.filter(\.cutOff).count == 1, "\(description)")
        #expect(r.upstreamLog[peak].description.contains("beside"), "\(r.upstreamLog[peak])")
    }

    /// Seed 5564 of the campaign's fourth pass, the first seed since the coordinator's fix to have an agreed upstream
    /// start the check counts apart ("unseen", the rule seed 723 first needed): m0, cut off from every peer, started
    /// on the plan it heard before the cut, beside m25 and m33, whose agreed pulls of the second push it could not
    /// have heard of. Without that rule the check reports "m0 started an upstream pull in an agreed plan beside 2
    /// others started on agreed plans"; with it the run breaks no invariant.
    @Test func anAgreedStartBesidePullsItsMemberCouldNotHaveHeardOfIsCountedApart() {
        var s = Self.scenario(n: 100, seed: 5564)
        s.drawFailures()
        let r = Simulation.run(s)
        let log = r.upstreamLog.map(\.description).joined(separator: "\n")
        #expect(r.violations.isEmpty, "\(r.violations.prefix(3))\n\(log)")
        #expect(r.unseenStarts == 1, "\(log)")
        // The start set apart: agreed, by a member cut off, with more than C members at upstream counting itself.
        #expect(r.upstreamLog.contains { $0.agreed && $0.cutOff && $0.atUpstream.count > s.upstreamSlots }, "\(log)")
        #expect(r.t100 != nil)
    }

    /// The fleet split in two halves, upstream reachable from one only: no agreed plan puts more than C pulls at
    /// upstream (a violation otherwise), and everyone converges after the split heals.
    @Test func aSplitFleetKeepsTheBoundAndConvergesAfterHealing() throws {
        var s = Self.scenario(n: 40, seed: 5)
        s.failures.split = true
        s.failures.upstreamOneSide = true
        s.failures.window = 0.001  // the split starts with the push
        let r = Simulation.run(s)
        #expect(r.violations.isEmpty, "\(r.violations.prefix(3))")
        #expect(r.peakUpstreamConcurrency <= s.upstreamSlots)
        // The half without upstream has no way to the new tree until the split heals (no link crosses it), then
        // everyone converges.
        let t100 = try #require(r.t100, "not converged")
        #expect(t100 >= s.failures.splitFor, "converged \(t100) s after the push, inside the \(s.failures.splitFor) s split")
        #expect(t100 < 3600)
    }

    /// Upstream pushes again while the first push spreads, at every moment of it in turn: pulls started for T1 read
    /// upstream's token file and find T2, and every member ends on T2. (Before the coordinator took such a token as
    /// upstream's answer, a member that found T2 pulled T1 again for ever, and nobody polled again.)
    @Test(arguments: [false, true]) func aSecondPushWhileTheFirstSpreadsIsFollowedByEveryone(brokenFirst: Bool) {
        for after in stride(from: 2.0, through: 30.0, by: 2.0) {
            var s = Self.scenario(n: 30, seed: 11)
            s.failures.repushAfter = after
            // A first push nobody can verify (the broken-upstream campaign's case): its pulls are retried, so one is
            // under way when the second push lands, and no peer holds T1 to take it from instead.
            s.failures.brokenFirstPush = brokenFirst
            let r = Simulation.run(s)
            #expect(r.violations.isEmpty, "second push \(after) s after the first (broken first: \(brokenFirst)): \(r.violations.prefix(2))")
            #expect(r.t100 != nil && r.t100! >= after, "second push \(after) s after the first: t100 \(r.t100 ?? -1)")
        }
    }

    /// The command a failing seed prints runs exactly that seed again: the built `dmirr-sim` given
    /// `replayArguments` prints the figures this process computed for it.
    @Test func aSeedReplaysExactlyFromItsPrintedCommand() throws {
        // The first seed whose drawn mix has both a split and skewed clocks, so the replay covers every kind.
        var s = Self.scenario(n: 30)
        repeat {
            s.seed += 1
            s.drawFailures()
        } while !(s.failures.split && s.failures.skew > 0 && s.failures.kill > 0)
        let r = Simulation.run(s)
        let sim = (CLI.dmirrPath as NSString).deletingLastPathComponent + "/dmirr-sim"
        let out = try CLI.run(sim, s.replayArguments, timeout: 600)
        #expect(out.exitCode == (r.violations.isEmpty ? 0 : 1), "\(out.stderr)")
        let line = try #require(out.stdout.split(separator: "\n").first { $0.hasPrefix("\(s.seed) ") }, "\(out.stdout)")
        let fields = line.split(separator: " ").map(String.init)
        // seed detect t50 t90 t100 up-peak up-copies peer-pulls msg/node/s B/node/s
        let expected = [r.t100.map { String(format: "%.0f", $0) } ?? "never", "\(r.peakUpstreamConcurrency)", String(format: "%.1f", r.upstreamCopies),
                        "\(r.pullsFromPeers)", String(format: "%.2f", r.messagesPerNodeSecond)]
        #expect(Array(fields[4...8]) == expected, "replayed: \(line)\nhere: \(expected) (\(s.replayArguments.joined(separator: " ")))")
    }

    @Test func failuresDoNotStopConvergenceOrLetABadTreeThrough() {
        // Seeds × failures at N = 100: kills, stops, isolated members, a split in halves, slow sources, skewed clocks and
        // lying peers at once, each seed with its own mix: the short form of the simulation campaign (its full form,
        // 10,000 seeds of dmirr-sim, is in docs/reliability.md). DMIRR_SIM_SEEDS raises the count here.
        // The seeds run on every core (each run is a value; nothing is shared); `.ci/run` runs the suites one at a time.
        let seeds = ProcessInfo.processInfo.environment["DMIRR_SIM_SEEDS"].flatMap(Int.init) ?? 20
        let runs = Mutex([UInt64: RunResult]())
        DispatchQueue.concurrentPerform(iterations: seeds) { k in
            var s = Self.scenario(n: 100, seed: UInt64(k + 1))
            s.drawFailures()
            let r = Simulation.run(s)
            runs.withLock { $0[s.seed] = r }
        }
        let all = runs.withLock { $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
        #expect(all.count == seeds)
        for (seed, r) in all.sorted(by: { $0.0 < $1.0 }) {
            var replay = Self.scenario(n: 100, seed: seed)
            replay.drawFailures()
            #expect(r.violations.isEmpty, "seed \(seed): \(r.violations.prefix(3)); replay: dmirr-sim \(replay.replayArguments.joined(separator: " "))")
        }
        let worst = all.map { $0.1.t100 ?? .infinity }.max() ?? .infinity
        #expect(worst < 3600, "a seed took \(worst) s")
        // Failures were really injected: across the seeds some pulls had to be retried from another source.
        #expect(all.contains { $0.1.pullsFromPeers + $0.1.pullsFromUpstream > 100 }, "no seed needed a second pull")
    }
}

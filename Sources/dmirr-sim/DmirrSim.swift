import ArgumentParser
import DmirrSim
import Foundation
import Synchronization

/// `dmirr-sim`: runs the real membership and sync-plan state machines for N mirrors in virtual time, seeded and exactly
/// replayable, and prints what a push costs and how fast it spreads, beside the cron baseline on the same inputs.
@main
struct DmirrSimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmirr-sim",
        abstract: "Simulate a dmirr fleet taking one upstream push, beside the cron + sleep $RANDOM%3000 baseline.",
        discussion: """
            Times are seconds after the push; bandwidths are MB/s (10^6 bytes); the delta is MB each mirror must fetch. \
            One line per seed, then the medians. Exit 1 when any run broke an invariant (not converged by the horizon, \
            a tree published that failed verification, more than --slots upstream pulls at once in an agreed plan).
            """
    )

    @Option(name: .customShort("n"), help: "Mirrors.") var nodes = 100
    @Option(help: "First seed.") var seed: UInt64 = 1
    @Option(help: "How many seeds (seed, seed+1, …).") var seeds = 1
    @Option(name: .customShort("c"), help: "[upstream] slots: fleet-wide upstream pulls at once (C).") var slots = 2
    @Option(name: .customShort("f"), help: "[mirror] serve_slots: pulls each in-sync mirror serves at once (F).") var serveSlots = 2
    @Option(name: .customShort("k"), help: "[peers] attestations: upstream pullers that must attest a token before peers serve it.")
    var attestations = 2
    @Option(help: "The upstream daemon's max connections.") var upstreamMax = 8
    @Option(help: "One-way link latency, ms.") var latency = 20.0
    @Option(help: "Each mirror's bandwidth, MB/s.") var mirrorBw = 12.5
    @Option(help: "Upstream's bandwidth, MB/s.") var upstreamBw = 125.0
    @Option(help: "Delta per push, MB.") var delta = 100.0
    @Option(help: "Gossip round, s.") var gossip = 1.0
    @Option(help: "Watchers' upstream poll, s.") var poll = 60.0
    @Option(help: "Fraction of mirrors killed in the 2 minutes after the push.") var kill = 0.0
    @Option(help: "Fraction stopped (SIGSTOP) for 30 s in that window.") var stop = 0.0
    @Option(help: "Fraction cut off from all peers for 60 s in that window.") var partition = 0.0
    @Option(help: "Fraction of slow sources (1/20 of the bandwidth).") var slow = 0.0
    @Option(help: "Fraction of lying peers (serve a tampered tree).") var liars = 0.0
    @Option(help: "Fraction of mirrors whose clock is off (each corrects from its peers' Hellos, as the agent does).") var skew = 0.0
    @Option(help: "How far off a skewed clock may be, s (drawn either way).") var skewBy = 600.0
    @Flag(help: "Split the fleet into two random halves for 90 s in that window.") var split = false
    @Flag(help: "During the split, upstream answers one half only.") var splitUpstreamOneSide = false
    @Option(help: "Upstream pushes again this many s after the first push.") var repushAfter: Double?
    @Flag(help: "With --repush-after: the first push is broken (no mirror can verify it).") var brokenFirstPush = false
    @Option(help: "Seeds run at once (threads); the lines still come out in seed order.") var jobs = 1
    @Option(help: "Virtual hours before a run gives up.") var horizonHours = 4.0
    @Flag(help: "Skip the cron baseline.") var noBaseline = false
    @Flag(help: "Draw each seed's own mix of every failure kind (what the simulator tests run), instead of the fractions above.")
    var randomFailures = false
    @Option(help: "When upstream pushes, s of virtual time after start.") var pushAt = 30.0
    @Flag(name: .shortAndLong, help: "Print gossip frames by kind for each run, and every upstream start (agreed or on the deadline, cut off, side of a split, who else was at upstream).") var verbose = false
    @Option(help: "Measure an idle fleet: no push; gossip is counted for this many seconds after --push-at.") var idle: Double?
    @Option(help: "[peers] down_after, s (an unchanged record is re-signed every half of it or 2 s per member, whichever is longer, unless --refresh says otherwise).")
    var downAfter = 60.0
    @Option(help: "Re-sign an unchanged record this often, s.") var refresh: Double?
    @Option(help: "Re-sign a change to fields the plan does not depend on (progress, plan digest…) at most this often, s.") var lazyResign: Double?

    func run() throws {
        var base = Scenario()
        base.nodes = nodes
        base.upstreamSlots = slots
        base.serveSlots = serveSlots
        base.attestations = attestations
        base.upstreamMaxConnections = upstreamMax
        base.latency = latency / 1000
        base.mirrorBandwidth = mirrorBw * 1e6
        base.upstreamBandwidth = upstreamBw * 1e6
        base.delta = delta * 1e6
        base.gossip = gossip
        base.poll = poll
        base.horizon = horizonHours * 3600
        base.pushAt = pushAt
        base.idleWindow = idle
        base.downAfter = downAfter
        base.refresh = refresh
        base.lazyResign = lazyResign
        base.failures.kill = kill
        base.failures.stop = stop
        base.failures.partition = partition
        base.failures.slow = slow
        base.failures.liars = liars
        base.failures.skew = skew
        base.failures.skewBy = skewBy
        base.failures.split = split || splitUpstreamOneSide
        base.failures.upstreamOneSide = splitUpstreamOneSide
        base.failures.repushAfter = repushAfter
        base.failures.brokenFirstPush = brokenFirstPush && repushAfter != nil
        let syncSeconds = base.delta / min(base.mirrorBandwidth, base.upstreamBandwidth)
        print("dmirr-sim: N=\(nodes) C=\(slots) F=\(serveSlots) upstream max connections \(upstreamMax), delta \(fmt(delta)) MB, "
              + "mirror \(fmt(mirrorBw)) MB/s, upstream \(fmt(upstreamBw)) MB/s (one sync ≈ \(fmt(syncSeconds)) s), latency \(fmt(latency)) ms, "
              + "gossip \(fmt(gossip)) s, poll \(fmt(poll)) s")
        print("seed   detect     t50     t90    t100  up-peak  up-copies  peer-pulls  msg/node/s  B/node/s | cron t50    t90   t100  up-peak  refused")
        var dmirr: [RunResult] = []
        var cron: [Baseline.Result] = []
        var broken = 0
        let clock = ContinuousClock()
        let started = clock.now
        var replays: [String] = []
        // Seeds in batches of `jobs`, each on its own thread (a run is a value: nothing is shared), printed in seed order.
        let all = Array(seed..<(seed + UInt64(seeds)))
        let width = max(1, jobs)
        for first in stride(from: 0, to: all.count, by: width) {
            let scenarios = all[first..<min(first + width, all.count)].map { s in
                var scenario = base
                scenario.seed = s
                if randomFailures { scenario.drawFailures() }
                return scenario
            }
            for (scenario, r, b) in Self.runConcurrently(scenarios, baseline: !noBaseline) {
                dmirr.append(r)
                if let b { cron.append(b) }
                if let replay = report(scenario, r, b) {
                    replays.append(replay)
                    broken += 1
                }
            }
            fflush(nil)  // every open stream: the lines of a long run show as they come, even into a file
        }
        func median(_ xs: [Double?]) -> Double? {
            let v = xs.compactMap { $0 }.sorted()
            return v.count == xs.count && !v.isEmpty ? v[v.count / 2] : nil
        }
        print("median " + pad(t(median(dmirr.map(\.detect))), 7) + " " + pad(t(median(dmirr.map(\.t50))), 7) + " " + pad(t(median(dmirr.map(\.t90))), 7) + " "
              + pad(t(median(dmirr.map(\.t100))), 7)
              + String(format: " %8d %10.1f", dmirr.map(\.peakUpstreamConcurrency).max() ?? 0, median(dmirr.map { $0.upstreamCopies }) ?? 0)
              + (cron.isEmpty ? "" : "   (cron: t100 \(t(median(cron.map(\.t100)))), up-peak \(cron.map(\.peakUpstreamConcurrency).max() ?? 0))"))
        let unseen = dmirr.filter { $0.unseenStarts > 0 }.count
        if unseen > 0 { print("\(unseen) of \(seeds) runs had an upstream pull start beside one its member could not have heard of (see above)") }
        let waves = ceil(log(Double(nodes) / Double(slots)) / log(1 + Double(serveSlots)))
        let refused = dmirr.map(\.refusedRecords).reduce(0, +)
        let corrected = dmirr.map(\.largestCorrection).max() ?? 0
        if refused > 0 || corrected > 0 {
            print("member records refused at receipt (expired relays after a split or cut): \(refused); largest clock correction \(fmt(Double(corrected) / 1000)) s")
        }
        let linked = dmirr.filter { $0.linksForClock > 0 }
        if !linked.isEmpty {
            print("\(linked.count) of \(seeds) runs had members link to more peers because their peers' clocks disagreed "
                  + "(\(linked.map(\.linksForClock).reduce(0, +)) in all)")
        }
        for replay in replays.prefix(20) { print("replay: \(replay)") }
        print("goal: t100 ≤ detect + (⌈log_(1+F)(N/C)⌉ + 2) syncs = detect + \(Int(waves) + 2) × \(fmt(syncSeconds)) s; "
              + "\(broken) of \(seeds) runs broke an invariant; \(fmt(Double((clock.now - started).components.seconds))) s wall")
        if broken > 0 { throw ExitCode(1) }
    }

    /// Prints one seed's line (and its violations); returns the replay command when it broke an invariant.
    func report(_ scenario: Scenario, _ r: RunResult, _ b: Baseline.Result?) -> String? {
        let s = scenario.seed
        var line = pad("\(s)", -6) + " " + pad(t(r.detect), 7) + " " + pad(t(r.t50), 7) + " " + pad(t(r.t90), 7) + " " + pad(t(r.t100), 7)
            + String(format: " %8d %10.1f %11d %11.2f %9.0f", r.peakUpstreamConcurrency, r.upstreamCopies, r.pullsFromPeers,
                     r.messagesPerNodeSecond, r.bytesPerNodeSecond)
        if let b {
            line += " | " + pad(t(b.t50), 7) + " " + pad(t(b.t90), 7) + " " + pad(t(b.t100), 7)
                + String(format: " %8d %8d", b.peakUpstreamConcurrency, b.refusals)
        }
        print(line)
        if verbose {
            let kinds = r.frames.keys.sorted().map { "\($0) \(r.frames[$0]!) (\(Int(r.frameBytes[$0] ?? 0)) B)" }
            print("   frames: \(kinds.joined(separator: ", ")); own-record signings \(r.signings) (\(r.digestOnlySignings) for a new plan digest alone); upstream starts "
                  + "\(r.upstreamStarts), \(r.agreedUpstreamStarts) of them agreed")
            for line in r.upstreamLog { print("   \(line)") }
        }
        if r.unseenStarts > 0 {
            print("   note seed \(s): \(r.unseenStarts) upstream pull(s) started beside one the starter could not have heard of (one of the two members cut off or stopped)")
        }
        guard !r.violations.isEmpty else { return nil }
        for v in r.violations.prefix(5) { print("   VIOLATION seed \(s): \(v)") }
        if r.violations.count > 5 {
            // Five show the kind; the count shows whether it was a moment or the whole run.
            print("   seed \(s): \(r.violations.count - 5) more violations not shown (\(r.violations.count) in all)")
        }
        let replay = "dmirr-sim " + scenario.replayArguments.joined(separator: " ")
        print("   replay: \(replay)")
        return replay
    }

    /// Runs each scenario (and its cron baseline) on its own thread; results in the scenarios' order.
    static func runConcurrently(_ scenarios: [Scenario], baseline: Bool) -> [(Scenario, RunResult, Baseline.Result?)] {
        let results = Mutex([Int: (RunResult, Baseline.Result?)]())
        DispatchQueue.concurrentPerform(iterations: scenarios.count) { k in
            let r = Simulation.run(scenarios[k])
            let b = baseline ? Baseline.run(scenarios[k]) : nil
            results.withLock { $0[k] = (r, b) }
        }
        return results.withLock { done in scenarios.indices.map { (scenarios[$0], done[$0]!.0, done[$0]!.1) } }
    }

    /// Right-aligns (width > 0) or left-aligns (width < 0) text.
    func pad(_ s: String, _ width: Int) -> String {
        let fill = String(repeating: " ", count: max(0, abs(width) - s.count))
        return width > 0 ? fill + s : s + fill
    }

    func t(_ x: Double?) -> String { x.map { String(format: "%.0f", $0) } ?? "never" }
    func fmt(_ x: Double) -> String { x == x.rounded() ? String(Int(x)) : String(format: "%.2g", x) }
}

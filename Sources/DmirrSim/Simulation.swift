import DmirrCore

/// What one simulated run is made of. Times are seconds of virtual time, sizes bytes, bandwidths bytes per second.
public struct Scenario: Sendable, Equatable {
    public var nodes = 100
    public var seed: UInt64 = 1
    /// `[upstream] slots` (C): fleet-wide upstream pulls at once.
    public var upstreamSlots = 2
    /// `[mirror] serve_slots` (F), also each peer daemon's `max connections`.
    public var serveSlots = 2
    /// `[peers] attestations`: distinct upstream pullers that must attest a manifest root before peers serve a token.
    public var attestations = 2
    /// The upstream daemon's own `max connections` (the hard backstop).
    public var upstreamMaxConnections = 8
    /// One-way latency of every link and of every rsync connection setup.
    public var latency = 0.02
    public var mirrorBandwidth = 12.5e6
    public var upstreamBandwidth = 125e6
    /// Bytes a push changes (what each mirror must fetch).
    public var delta = 100e6
    public var gossip = 1.0
    public var poll = 60.0
    public var fanout = 4
    public var suspectAfter = 10.0
    public var downAfter = 60.0
    /// How often an unchanged record is re-signed (nil: half of `downAfter`, the agent's default).
    public var refresh: Double?
    /// Membership's `lazyResign` (seconds); nil keeps its default.
    public var lazyResign: Double?
    /// Measure an idle fleet instead: no push happens, and gossip is counted for this long from `pushAt`.
    public var idleWindow: Double?
    /// When upstream's token changes.
    public var pushAt = 30.0
    /// The run stops here whether or not everyone converged.
    public var horizon = 4 * 3600.0
    public var failures = Failures()

    public struct Failures: Sendable, Equatable {
        /// Fraction of mirrors killed (kill -9) at a random moment in the first `window` seconds after the push.
        public var kill = 0.0
        /// Fraction of mirrors that stop for a while (SIGSTOP) in that window, then continue.
        public var stop = 0.0
        public var stopFor = 30.0
        /// Fraction whose outgoing bandwidth is a twentieth of the rest (slow sources).
        public var slow = 0.0
        /// Fraction that serve a tampered tree (a lying peer: in sync by its record, bad packages on disk).
        public var liars = 0.0
        /// Fraction cut off from the others (all their links) for `partitionFor` seconds in the window.
        public var partition = 0.0
        public var partitionFor = 60.0
        /// Fraction of mirrors whose host clock is off, from the start, by up to `skewBy` seconds either way. Each
        /// corrects to the fleet's time from its peers' `Hello` stamps (``ClockOffset``), as the agent does.
        public var skew = 0.0
        public var skewBy = 600.0
        /// The fleet splits into two random halves for `splitFor` seconds at a random moment in the window: no link
        /// between the halves; running pulls across the split fail.
        public var split = false
        public var splitFor = 90.0
        /// During the split upstream answers one half only: the other half's polls and upstream pulls fail.
        public var upstreamOneSide = false
        /// Upstream pushes again this many seconds after the first push (token T2): a pull started for T1 reads
        /// upstream's token file and finds T2, as the agent's pipeline would.
        public var repushAfter: Double?
        /// The first push is broken (no mirror can verify it; every pull of T1 fails), so only the second can be taken.
        public var brokenFirstPush = false
        public var window = 120.0
        public init() {}
    }

    /// Whether members correct their clocks from their peers' `Hello` stamps (the agent always does; a test turns it
    /// off to show what the correction prevents).
    public var correctClocks = true
    /// Whether ``drawFailures()`` chose the failures (`dmirr-sim --random-failures` replays them from the seed).
    public var failuresDrawn = false

    public init() {}

    /// A mix of every failure kind drawn from the seed: up to 10 % killed, 5 % stopped for 30 s, 5 % cut off for
    /// 60 s, 10 % slow sources, 5 % lying peers, 10 % with a host clock up to 10 minutes off, in half the runs a
    /// split into two halves for 90 s (in half of those, upstream reachable from one half only), and in half a second
    /// push 1–30 s after the first (in half of those, the first one broken: nobody can verify it). The simulator tests
    /// and `dmirr-sim --random-failures` use it.
    public mutating func drawFailures() {
        var rng = SeededRandom(seed: seed)
        failures.kill = Double(Int.random(in: 0...10, using: &rng)) / 100
        failures.stop = Double(Int.random(in: 0...5, using: &rng)) / 100
        failures.partition = Double(Int.random(in: 0...5, using: &rng)) / 100
        failures.slow = Double(Int.random(in: 0...10, using: &rng)) / 100
        failures.liars = Double(Int.random(in: 0...5, using: &rng)) / 100
        failures.skew = Double(Int.random(in: 0...10, using: &rng)) / 100
        failures.split = Bool.random(using: &rng)
        failures.upstreamOneSide = failures.split && Bool.random(using: &rng)
        failures.repushAfter = Bool.random(using: &rng) ? Double(Int.random(in: 1...30, using: &rng)) : nil
        failures.brokenFirstPush = failures.repushAfter != nil && Bool.random(using: &rng)
        failuresDrawn = true
    }

    /// The `dmirr-sim` arguments that run exactly this scenario again (what a failing seed prints).
    public var replayArguments: [String] {
        let d = Scenario()
        var out = ["-n", "\(nodes)", "--seed", "\(seed)", "--seeds", "1", "--no-baseline"]
        func add(_ flag: String, _ value: Double, _ base: Double, scale: Double = 1) {
            if value != base { out += [flag, Self.number(value * scale)] }
        }
        if upstreamSlots != d.upstreamSlots { out += ["-c", "\(upstreamSlots)"] }
        if serveSlots != d.serveSlots { out += ["-f", "\(serveSlots)"] }
        if attestations != d.attestations { out += ["-k", "\(attestations)"] }
        if upstreamMaxConnections != d.upstreamMaxConnections { out += ["--upstream-max", "\(upstreamMaxConnections)"] }
        add("--latency", latency, d.latency, scale: 1000)
        add("--mirror-bw", mirrorBandwidth, d.mirrorBandwidth, scale: 1e-6)
        add("--upstream-bw", upstreamBandwidth, d.upstreamBandwidth, scale: 1e-6)
        add("--delta", delta, d.delta, scale: 1e-6)
        add("--gossip", gossip, d.gossip)
        add("--poll", poll, d.poll)
        add("--down-after", downAfter, d.downAfter)
        add("--push-at", pushAt, d.pushAt)
        add("--horizon-hours", horizon, d.horizon, scale: 1 / 3600)
        if let refresh { out += ["--refresh", Self.number(refresh)] }
        if let lazyResign { out += ["--lazy-resign", Self.number(lazyResign)] }
        if let idleWindow { out += ["--idle", Self.number(idleWindow)] }
        if failuresDrawn {
            out.append("--random-failures")
        } else {
            let f = failures
            let base = Failures()
            add("--kill", f.kill, base.kill)
            add("--stop", f.stop, base.stop)
            add("--partition", f.partition, base.partition)
            add("--slow", f.slow, base.slow)
            add("--liars", f.liars, base.liars)
            add("--skew", f.skew, base.skew)
            add("--skew-by", f.skewBy, base.skewBy)
            if f.split { out.append("--split") }
            if f.upstreamOneSide { out.append("--split-upstream-one-side") }
            if let after = f.repushAfter { out += ["--repush-after", Self.number(after)] }
            if f.brokenFirstPush { out.append("--broken-first-push") }
        }
        return out
    }

    /// The shortest text that reads back as `x`.
    static func number(_ x: Double) -> String { x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : "\(x)" }
}

/// What a run measured.
public struct RunResult: Sendable {
    /// Seconds after the push until 50, 90 and 100 % of the surviving honest mirrors held the new token (nil: never).
    public var t50: Double?
    public var t90: Double?
    public var t100: Double?
    /// Seconds after the push until the first member read the new token from upstream (a watcher's poll).
    public var detect: Double?
    public var peakUpstreamConcurrency = 0
    /// In units of one delta.
    public var upstreamCopies = 0.0
    public var peerCopies = 0.0
    public var pullsFromPeers = 0
    public var pullsFromUpstream = 0
    public var messagesPerNodeSecond = 0.0
    public var bytesPerNodeSecond = 0.0
    /// Gossip frames by kind, and own-record signings, over the measured window (all nodes).
    public var frames: [String: Int] = [:]
    /// Gossip bytes by the same kinds.
    public var frameBytes: [String: Double] = [:]
    public var signings = 0
    /// Of those, the ones whose only change the plan cares about was the plan digest (progress and the like aside).
    public var digestOnlySignings = 0
    /// Upstream pulls started, and how many of them on an agreed plan (the rest on the agreement deadline).
    public var upstreamStarts = 0
    public var agreedUpstreamStarts = 0
    /// Upstream pulls started on an agreed plan beside C others, one of which the fleet could not know of: its member was
    /// cut off or stopped before the record saying it had started left it.
    public var unseenStarts = 0
    /// Every upstream transfer as it started, in order (what `dmirr-sim --verbose` prints to explain a run's peak).
    public var upstreamLog: [UpstreamStart] = []
    /// Member records dropped at receipt by the protocol's rules (``RecordPolicy``): expired ones relayed late after a
    /// partition are expected; one dated in the future from an honest member is a violation (its clock was not
    /// corrected to the fleet's).
    public var refusedRecords = 0
    /// The largest clock correction any member applied, ms.
    public var largestCorrection: Int64 = 0
    /// Links made beyond the topology because a member's peers' clocks did not say the fleet's time (``ClockOffset``).
    public var linksForClock = 0
    /// Invariant violations (empty when the run was clean).
    public var violations: [String] = []
}

/// An upstream transfer as it started.
public struct UpstreamStart: Sendable, Equatable, CustomStringConvertible {
    /// Seconds after the push.
    public var at: Double
    /// When the push was, in seconds of simulated time (the clock violations are reported on).
    public var pushAt: Double
    public var node: String
    public var token: String
    /// Started on an agreed plan; false: on the agreement deadline.
    public var agreed: Bool
    /// The starter was cut off from every peer.
    public var cutOff: Bool
    /// Its half ("A" or "B") while the fleet was split; nil when it was whole.
    public var side: String?
    /// Every member pulling from upstream at that moment, this one included, by name.
    public var atUpstream: [String]

    public var description: String {
        var state = [agreed ? "agreed" : "on the deadline"]
        if cutOff { state.append("cut off") }
        if let side { state.append("split side \(side)") }
        let others = atUpstream.filter { $0 != node }
        // Both clocks: the simulation's, which violations are reported on, and the push's, which t100 is.
        let tenths = { (x: Double) in (x * 10).rounded() / 10 }
        return "t=\(tenths(pushAt + at)) s (push +\(tenths(at)) s): \(node) pulls \(token) from upstream (\(state.joined(separator: ", ")))"
            + (others.isEmpty ? "" : " beside \(others.joined(separator: ", "))")
    }
}

/// Runs the real ``Membership`` and ``SyncCoordinator`` of every mirror in virtual time: gossip over a sparse random
/// topology with latency, upstream token polls, and rsync pulls as fluid transfers that share bandwidth, with the
/// upstream's and every peer's `max connections` enforced. Deterministic for a given scenario (seed included).
public struct Simulation {
    enum Event {
        case tick(Int)
        case deliver(to: Int, from: Int, Message)
        case pollAnswer(Int, polledAt: Double)
        case pullConnect(Int, pull: Int)
        case transferCheck(generation: Int)
        case pullFinished(Int, pull: Int, SyncCoordinator.PullOutcome)
        case push
        case kill(Int)
        case stop(Int, resumeAt: Double)
        case resume(Int)
        case cut(Int, healAt: Double)
        case heal(Int)
        case split(healAt: Double)
        case unsplit
        case repush

        /// Whether the fleet can have converged after this event: only a finished pull or a death changes who holds the
        /// token (checking after every event would cost a pass over all mirrors per gossip frame).
        var mayConverge: Bool {
            switch self {
            case .pullFinished, .kill, .push: true
            default: false
            }
        }
    }

    enum Message {
        case summary(Membership.Summary)
        case digest([Membership.DigestEntry], Membership.DigestScope)
        case records([(MemberRecord, [UInt8])])
    }

    struct Node {
        var name: String
        var membership: Membership
        var coordinator: SyncCoordinator
        var links: Set<Int> = []
        var alive = true
        var stopped = false
        var cut = false
        var liar = false
        var published = "T0"
        /// The membership revision the coordinator last saw.
        var viewRevision: UInt64 = .max
        var tampered = false
        /// This host's clock minus true time (ms), and its correction to the fleet's time from its peers' Hellos.
        var clockError: Int64 = 0
        var clock = ClockOffset()
        /// The correction the coordinator's stamped times were made with.
        var stampedCorrection: Int64 = 0
        /// Its half while the fleet is split.
        var side = false
        /// The running pull: its number (to ignore stale events), source, token, transfer id once flowing.
        var pull: (number: Int, source: PlanSource, token: String, transfer: Int?)?
    }

    public let scenario: Scenario
    var nodes: [Node] = []
    var index: [String: Int] = [:]
    var queue = EventQueue<Event>()
    var network: FluidNetwork
    var rng: SeededRandom
    var now = 0.0
    var upstreamToken = "T0"
    var pullNumber = 0
    var transferGeneration = 0
    var messages = 0
    var messageBytes = 0.0
    var result = RunResult()
    var reachedAt: [Int: Double] = [:]
    /// Upstream pulls (by number) and their transfers (by id) that started on an agreed plan.
    var agreedPulls: Set<Int> = []
    var agreedTransfers: Set<Int> = []
    var splitActive = false

    public init(_ scenario: Scenario) {
        self.scenario = scenario
        rng = SeededRandom(seed: scenario.seed)
        let n = scenario.nodes
        var membership = Membership.Configuration()
        membership.gossipInterval = .seconds(scenario.gossip)
        membership.suspectAfter = .seconds(scenario.suspectAfter)
        membership.downAfter = .seconds(scenario.downAfter)
        membership.refreshInterval = scenario.refresh.map { .seconds($0) }
        if let lazy = scenario.lazyResign { membership.lazyResign = .seconds(lazy) }
        var coordination = SyncCoordinator.Configuration()
        coordination.upstreamSlots = scenario.upstreamSlots
        coordination.serveSlots = scenario.serveSlots
        coordination.poll = .seconds(scenario.poll)
        coordination.fallbackPoll = .seconds(scenario.poll * 10)
        coordination.agreementDeadline = .seconds(max(2, scenario.gossip * 5))
        coordination.stallAfter = .seconds(120)
        coordination.busyBackoff = .seconds(max(5, scenario.poll / 4))
        coordination.attestations = scenario.attestations
        var send = Array(repeating: scenario.mirrorBandwidth, count: n)
        for i in 0..<n {
            let name = "m\(i)"
            index[name] = i
            var node = Node(name: name, membership: Membership(me: name, generation: 1, configuration: membership),
                            coordinator: SyncCoordinator(me: name, publishedToken: "T0", configuration: coordination))
            node.membership.updateOwn {
                $0.publishedToken = "T0"
                $0.targetToken = "T0"
                $0.syncState = .inSync
                $0.rsyncURL = "rsync://\(name)/repo"
                $0.serveSlots = scenario.serveSlots
            }
            nodes.append(node)
        }
        network = FluidNetwork(sendBandwidth: send, receiveBandwidth: Array(repeating: scenario.mirrorBandwidth, count: n),
                               upstreamBandwidth: scenario.upstreamBandwidth)
        // A sparse random topology: each mirror links to `fanout` others (so about 2·fanout links each).
        for i in 0..<n where n > 1 {
            var picked = 0
            var attempts = 0
            while picked < min(scenario.fanout, n - 1), attempts < 100 {
                attempts += 1
                let j = Int.random(in: 0..<n, using: &rng)
                guard j != i, !nodes[i].links.contains(j) else { continue }
                nodes[i].links.insert(j)
                nodes[j].links.insert(i)
                picked += 1
            }
        }
        for i in 0..<n {
            for j in nodes[i].links.sorted() { nodes[i].membership.onConnected(nodes[j].name, now: .zero) }
        }
        // Failures, chosen up front from the seed.
        let f = scenario.failures
        var order = Array(0..<n)
        order.shuffle(using: &rng)
        var cursor = 0
        func take(_ fraction: Double) -> ArraySlice<Int> {
            let k = min(n - cursor, Int((fraction * Double(n)).rounded()))
            defer { cursor += k }
            return order[cursor..<(cursor + k)]
        }
        for i in take(f.slow) { send[i] = scenario.mirrorBandwidth / 20 }
        network.sendBandwidth = send
        for i in take(f.liars) { nodes[i].liar = true }
        for i in take(f.kill) { queue.push(.kill(i), at: scenario.pushAt + Double.random(in: 0..<f.window, using: &rng)) }
        for i in take(f.stop) {
            let at = scenario.pushAt + Double.random(in: 0..<f.window, using: &rng)
            queue.push(.stop(i, resumeAt: at + f.stopFor), at: at)
        }
        for i in take(f.partition) {
            let at = scenario.pushAt + Double.random(in: 0..<f.window, using: &rng)
            queue.push(.cut(i, healAt: at + f.partitionFor), at: at)
        }
        // Skewed clocks may fall on any member, failing or not.
        var clocks = Array(0..<n)
        clocks.shuffle(using: &rng)
        let skewBy = Int64(f.skewBy * 1000)
        for i in clocks.prefix(Int((f.skew * Double(n)).rounded())) where skewBy > 0 {
            nodes[i].clockError = Int64.random(in: -skewBy...skewBy, using: &rng)
        }
        if f.split {
            for i in 0..<n { nodes[i].side = Bool.random(using: &rng) }
            let at = scenario.pushAt + Double.random(in: 0..<f.window, using: &rng)
            queue.push(.split(healAt: at + f.splitFor), at: at)
        }
        // Every link starts with a Hello each way: the clocks are compared before any record is signed. A member whose
        // peers' clocks say nothing (``ClockOffset/determined``) links to more, as the agent's dialer does, one a
        // round; here they come up with the first links, before any record (the agent may refuse records for the
        // seconds in between, which are sent again).
        for i in 0..<n {
            for j in nodes[i].links.sorted() where i < j { hello(i, j) }
        }
        for i in 0..<n {
            while linkForClock(i) {}
        }
        for i in 0..<n { queue.push(.tick(i), at: Double.random(in: 0..<scenario.gossip, using: &rng)) }
        queue.push(.push, at: scenario.pushAt)
        if let after = f.repushAfter, scenario.idleWindow == nil { queue.push(.repush, at: scenario.pushAt + after) }
    }

    // MARK: Running

    public static func run(_ scenario: Scenario) -> RunResult {
        var sim = Simulation(scenario)
        return sim.run()
    }

    mutating func run() -> RunResult {
        while let (at, event) = queue.pop(), at <= scenario.horizon {
            now = at
            handle(event)
            if let idle = scenario.idleWindow {
                if now >= scenario.pushAt + idle { break }
            } else if now > scenario.pushAt, event.mayConverge, !repushPending, everyoneHasTheToken { break }
        }
        return finish()
    }

    /// A second push is still to come: converging on the first is not the end.
    var repushPending: Bool { scenario.failures.repushAfter != nil && upstreamToken != "T2" }

    var honestSurvivors: [Int] { nodes.indices.filter { nodes[$0].alive && !nodes[$0].liar } }

    var everyoneHasTheToken: Bool {
        upstreamToken != "T0" && honestSurvivors.allSatisfy { nodes[$0].published == upstreamToken }
    }

    var d: Duration { .nanoseconds(Int64(now * 1e9)) }
    /// Member `i`'s host clock (Unix ms): true time plus its error.
    func hostMillis(_ i: Int) -> Int64 { 1_800_000_000_000 + Int64(now * 1000) + nodes[i].clockError }
    /// Member `i`'s wall clock in the fleet's time (its host clock corrected), what its services stamp and judge with.
    func wallMillis(_ i: Int) -> Int64 { hostMillis(i) + nodes[i].clock.correctionMillis }

    func canTalk(_ a: Int, _ b: Int) -> Bool {
        nodes[a].alive && nodes[b].alive && !nodes[a].stopped && !nodes[b].stopped && !nodes[a].cut && !nodes[b].cut
            && !(splitActive && nodes[a].side != nodes[b].side)
    }

    /// Whether upstream answers member `i` (during a split that leaves it on one side only, the other side's fail).
    func reachesUpstream(_ i: Int) -> Bool {
        !(splitActive && scenario.failures.upstreamOneSide && !nodes[i].side)
    }

    /// A link (re)opens: each side takes the other's `Hello` clock into its correction (``ClockOffset``), and a
    /// member whose correction moved re-signs its record and moves the times it stamped, as the agent does.
    mutating func hello(_ a: Int, _ b: Int) {
        for (me, peer) in [(a, b), (b, a)] where scenario.correctClocks {
            guard nodes[me].clock.observe(peer: nodes[peer].name, peerWallMillis: hostMillis(peer), localWallMillis: hostMillis(me)) else {
                continue
            }
            result.largestCorrection = max(result.largestCorrection, abs(nodes[me].clock.correctionMillis))
            nodes[me].membership.resignOwn()
            let moved = nodes[me].clock.correctionMillis - nodes[me].stampedCorrection
            nodes[me].stampedCorrection = nodes[me].clock.correctionMillis
            coordinate(me, nodes[me].coordinator.wallClockCorrected(by: moved))
        }
    }

    /// While member `i`'s peers' clocks say nothing of the fleet's time, one more link to a random member it can reach
    /// (up to four times the fanout), as the agent's dialer makes. Returns whether it made one.
    mutating func linkForClock(_ i: Int) -> Bool {
        guard scenario.correctClocks, !nodes[i].clock.determined, !nodes[i].cut, nodes[i].links.count < 4 * scenario.fanout else { return false }
        for _ in 0..<100 {
            let j = Int.random(in: 0..<nodes.count, using: &rng)
            guard j != i, !nodes[i].links.contains(j), canTalk(i, j) else { continue }
            nodes[i].links.insert(j)
            nodes[j].links.insert(i)
            nodes[i].membership.onConnected(nodes[j].name, now: d)
            nodes[j].membership.onConnected(nodes[i].name, now: d)
            hello(i, j)
            result.linksForClock += 1
            return true
        }
        return false
    }

    mutating func handle(_ event: Event) {
        switch event {
        case .tick(let i):
            guard nodes[i].alive else { return }
            queue.push(.tick(i), at: now + scenario.gossip)
            guard !nodes[i].stopped else { return }
            _ = linkForClock(i)
            // Members whose record expired are forgotten (the agent's FleetNode does this every round).
            for member in nodes[i].membership.expired(atWallMillis: wallMillis(i)) { nodes[i].membership.forget(member) }
            perform(i, nodes[i].membership.onTick(now: d))
            // The coordinator needs the view again only when membership changed (as the agent, which hands it over
            // every round, it would find nothing new otherwise).
            var directives: [SyncCoordinator.Directive] = []
            if nodes[i].viewRevision != nodes[i].membership.revision {
                nodes[i].viewRevision = nodes[i].membership.revision
                let m = nodes[i].membership
                let view = m.nodes.compactMap { n in m.entries[n].flatMap { $0.liveness == .alive && n != m.me ? $0.record : nil } }
                let suspects = m.nodes.compactMap { n in m.entries[n].flatMap { $0.liveness == .suspect ? $0.record : nil } }
                directives += nodes[i].coordinator.onView(view, suspects: suspects, wallMillis: wallMillis(i), now: d)
            }
            directives += nodes[i].coordinator.onTick(now: d)
            if let t = nodes[i].pull?.transfer, let moved = network.transferred(t, at: now) {
                nodes[i].coordinator.onPullProgress(now: d, fraction: moved / scenario.delta)
            }
            coordinate(i, directives)
        case .deliver(let to, let from, let message):
            guard canTalk(to, from), nodes[to].links.contains(from) else { return }
            let peer = nodes[from].name
            switch message {
            case .summary(let summary): perform(to, nodes[to].membership.onSummary(from: peer, summary, now: d))
            case .digest(let entries, let scope):
                perform(to, nodes[to].membership.onDigest(from: peer, entries: entries, scope: scope, now: d))
            case .records(let records):
                for (record, signed) in records {
                    // The receiver's checks, with its own clock (the agent's FleetNode does the same before believing one).
                    if let problem = RecordPolicy.problem(with: record, nowMillis: wallMillis(to)) {
                        result.refusedRecords += 1
                        if problem.contains("in the future"), let k = index[record.node], !nodes[k].liar {
                            result.violations.append("t=\(Int(now)) s: \(nodes[to].name) refused \(record.node)'s record: \(problem)")
                        }
                        continue
                    }
                    perform(to, nodes[to].membership.onRecord(record, signed: signed, from: peer, now: d))
                }
            }
        case .pollAnswer(let i, let polledAt):
            guard nodes[i].alive else { return }
            // A stopped agent reads the answer when it continues.
            guard !nodes[i].stopped else { return queue.push(.pollAnswer(i, polledAt: polledAt), at: now + 1) }
            guard reachesUpstream(i) else {
                return coordinate(i, nodes[i].coordinator.onUpstreamUnreachable(now: d, polledAt: .nanoseconds(Int64(polledAt * 1e9))))
            }
            if upstreamToken != "T0", result.detect == nil { result.detect = now - scenario.pushAt }
            coordinate(i, nodes[i].coordinator.onUpstreamToken(upstreamToken, wallMillis: wallMillis(i), now: d, polledAt: .nanoseconds(Int64(polledAt * 1e9))))
        case .pullConnect(let i, let number):
            guard nodes[i].alive, let pull = nodes[i].pull, pull.number == number else { return }
            connect(i, pull: pull)
        case .transferCheck(let generation):
            guard generation == transferGeneration else { return }
            network.advance(to: now)
            if let next = network.nextCompletion(), next.at <= now + 1e-9 { complete(next.id) }
            scheduleTransferCheck()
        case .pullFinished(let i, let number, let outcome):
            guard nodes[i].alive, let pull = nodes[i].pull, pull.number == number else { return }
            finishPull(i, outcome)
        case .push:
            if scenario.idleWindow == nil { upstreamToken = "T1" }
        case .repush:
            // Times to converge are measured to the final token, from the first push.
            upstreamToken = "T2"
            reachedAt = [:]
        case .kill(let i):
            nodes[i].alive = false
            abortTransfers(touching: i)
        case .stop(let i, let resumeAt):
            nodes[i].stopped = true
            queue.push(.resume(i), at: resumeAt)
        case .resume(let i):
            nodes[i].stopped = false
            relink(i)
        case .cut(let i, let healAt):
            nodes[i].cut = true
            queue.push(.heal(i), at: healAt)
        case .heal(let i):
            nodes[i].cut = false
            relink(i)
        case .split(let healAt):
            splitActive = true
            queue.push(.unsplit, at: healAt)
            // Pulls across the split (or from an upstream the member no longer reaches) fail as their connection breaks.
            for t in network.active.values.sorted(by: { $0.id < $1.id }) {
                let k = t.destination
                guard t.source >= 0 ? !canTalk(k, t.source) : !reachesUpstream(k) else { continue }
                network.stop(t.id, now: now)
                if let pull = nodes[k].pull, pull.transfer == t.id {
                    queue.push(.pullFinished(k, pull: pull.number, .failed("connection reset")), at: now + scenario.latency)
                }
            }
            scheduleTransferCheck()
        case .unsplit:
            splitActive = false
            for i in nodes.indices where nodes[i].side { relink(i) }
        }
    }

    /// A member is reachable again: its links come back on both ends.
    mutating func relink(_ i: Int) {
        for j in nodes[i].links.sorted() where canTalk(i, j) {
            hello(i, j)
            nodes[i].membership.onConnected(nodes[j].name, now: d)
            nodes[j].membership.onConnected(nodes[i].name, now: d)
        }
    }

    // MARK: Membership directives

    mutating func perform(_ i: Int, _ directives: [Membership.Directive]) {
        for directive in directives {
            switch directive {
            case .signOwnRecord(var record):
                // Valid for two refreshes plus down_after, stamped with this member's clock (the agent's rule).
                let m = nodes[i].membership
                let lifetime = m.configuration.refresh(members: m.entries.count) * 2 + m.configuration.downAfter
                record.expiresMillis = wallMillis(i) + lifetime.components.seconds * 1000
                if now >= scenario.pushAt {
                    result.signings += 1
                    if let previous = nodes[i].membership.entries[nodes[i].name]?.record, !Membership.matters(from: previous, to: record),
                        previous.planDigest != record.planDigest
                    {
                        result.digestOnlySignings += 1
                    }
                }
                perform(i, nodes[i].membership.onOwnRecordSigned(record, signed: [], now: d))
            case .sendSummary(let peer, let summary):
                send(from: i, to: peer, .summary(summary), bytes: 40 + 8 * Double(summary.hashes.count))
            case .sendDigest(let peer, let entries, let scope):
                send(from: i, to: peer, .digest(entries, scope), bytes: 40 + 14 * Double(entries.count))
            case .sendRecords(let peer, let names):
                let records = names.compactMap { n in nodes[i].membership.entries[n].map { ($0.record, $0.signed) } }
                send(from: i, to: peer, .records(records), bytes: 30 + 260 * Double(records.count))
            case .closeLink(let peer):
                // The machine already counts it gone; a link to a live, reachable peer is dialed again at once (the
                // dialer's job). Dead, stopped or cut-off peers stay unlinked until they come back.
                if let j = index[peer], canTalk(i, j), nodes[i].links.contains(j) {
                    nodes[i].membership.onConnected(peer, now: d)
                }
            case .persist, .livenessChanged, .distrusted, .wake, .resumedAfterPause:
                break
            }
        }
    }

    mutating func send(from i: Int, to peer: String, _ message: Message, bytes: Double) {
        guard let j = index[peer] else { return }
        if now >= scenario.pushAt {
            messages += 1
            messageBytes += bytes
            let kind = switch message {
            case .summary(let s): s.hashes.count > 1 ? "summary(all buckets)" : "summary"
            case .digest(_, .full): "digest(full)"
            case .digest(_, .buckets): "digest(buckets)"
            case .digest(_, .announce): "announce"
            case .digest(_, .reply): "reply"
            case .records: "records"
            }
            result.frames[kind, default: 0] += 1
            result.frameBytes[kind, default: 0] += bytes
        }
        queue.push(.deliver(to: j, from: i, message), at: now + scenario.latency)
    }

    // MARK: Coordinator directives

    mutating func coordinate(_ i: Int, _ directives: [SyncCoordinator.Directive]) {
        for directive in directives {
            switch directive {
            case .pollUpstream:
                queue.push(.pollAnswer(i, polledAt: now), at: now + 4 * scenario.latency)
            case .startPull(let source, let token):
                pullNumber += 1
                if source == .upstream {
                    result.upstreamStarts += 1
                    if nodes[i].coordinator.agreed {
                        agreedPulls.insert(pullNumber)
                        result.agreedUpstreamStarts += 1
                    }
                }
                nodes[i].pull = (pullNumber, source, token, nil)
                nodes[i].membership.updateOwn {
                    $0.syncState = .syncing
                    $0.source = source.recordValue
                }
                queue.push(.pullConnect(i, pull: pullNumber), at: now + 2 * scenario.latency)
            case .cancelPull:
                guard let pull = nodes[i].pull else { break }
                if let t = pull.transfer { network.stop(t, now: now) ; scheduleTransferCheck() }
                queue.push(.pullFinished(i, pull: pull.number, .cancelled), at: now + scenario.latency)
            case .advertise(let a):
                let published = nodes[i].published
                nodes[i].membership.updateOwn {
                    $0.targetToken = a.targetToken
                    $0.targetSeenMillis = a.targetSeenMillis
                    $0.avoid = a.avoid
                    $0.planDigest = a.planDigest
                    $0.serveSlots = a.serveSlots
                    $0.attestToken = a.attestToken
                    $0.attestRoot = a.attestRoot
                    if $0.syncState != .syncing { $0.syncState = published == a.targetToken ? .inSync : .waiting }
                }
            case .wake:
                break
            }
        }
    }

    mutating func connect(_ i: Int, pull: (number: Int, source: PlanSource, token: String, transfer: Int?)) {
        switch pull.source {
        case .upstream:
            guard reachesUpstream(i) else {
                queue.push(.pullFinished(i, pull: pull.number, .failed("connection refused")), at: now + scenario.latency)
                return
            }
            guard network.count(from: -1) < scenario.upstreamMaxConnections else {
                queue.push(.pullFinished(i, pull: pull.number, .busy), at: now + scenario.latency)
                return
            }
            // The pipeline reads upstream's token file first and syncs whatever it names: a push since our poll is
            // what this pull takes (and reports), and a tree that already holds it is up to date at once.
            nodes[i].pull?.token = upstreamToken
            if nodes[i].published == upstreamToken {
                queue.push(.pullFinished(i, pull: pull.number, .synced(token: upstreamToken)), at: now + scenario.latency)
                return
            }
            // The bound holds among pulls started on agreed plans. A member that started on the agreement deadline
            // (views that would not agree, or a member cut off from most of the fleet) is outside it by design, and
            // shows in the peak-concurrency column instead.
            let others = network.active.values.filter { $0.source == -1 && agreedTransfers.contains($0.id) }
            if agreedPulls.contains(pull.number), others.count + 1 > scenario.upstreamSlots {
                // Pulls whose start never reached the fleet (their member was cut off or stopped before its record
                // left), and pulls started after this member was cut off itself (its view, agreement included, is
                // what it heard before the cut: seed 723 of the campaign), cannot be counted by any plan; they are
                // reported apart from violations of the plan's bound.
                let unseen = others.filter { t in
                    let k = t.destination
                    let seen = nodes[i].membership.entries[nodes[k].name]?.record
                    return (nodes[k].cut || nodes[k].stopped || nodes[i].cut) && !(seen?.syncState == .syncing && seen?.source == "upstream")
                }
                if others.count - unseen.count + 1 > scenario.upstreamSlots {
                    result.violations.append("t=\(Int(now)) s: \(nodes[i].name) started an upstream pull in an agreed plan beside "
                                             + "\(others.count) others started on agreed plans")
                } else {
                    result.unseenStarts += 1
                }
            }
            startTransfer(i, source: -1, pull: pull)
        case .peer(let name):
            guard let j = index[name], canTalk(i, j) else {
                queue.push(.pullFinished(i, pull: pull.number, .failed("connection refused")), at: now + scenario.latency)
                return
            }
            guard network.count(from: j) < scenario.serveSlots else {
                queue.push(.pullFinished(i, pull: pull.number, .busy), at: now + scenario.latency)
                return
            }
            guard nodes[j].published == pull.token else {
                queue.push(.pullFinished(i, pull: pull.number, .tokenMismatch(found: nodes[j].published)), at: now + 2 * scenario.latency)
                return
            }
            startTransfer(i, source: j, pull: pull)
        }
    }

    mutating func startTransfer(_ i: Int, source: Int, pull: (number: Int, source: PlanSource, token: String, transfer: Int?)) {
        let id = network.start(source: source, destination: i, bytes: scenario.delta, now: now)
        nodes[i].pull?.transfer = id
        if agreedPulls.contains(pull.number) { agreedTransfers.insert(id) }
        if source < 0 {
            result.pullsFromUpstream += 1
            result.peakUpstreamConcurrency = max(result.peakUpstreamConcurrency, network.count(from: -1))
            let pulling = network.active.values.filter { $0.source == -1 }.map { nodes[$0.destination].name }.sorted()
            result.upstreamLog.append(UpstreamStart(at: now - scenario.pushAt, pushAt: scenario.pushAt, node: nodes[i].name,
                                                    token: nodes[i].pull?.token ?? pull.token,
                                                    agreed: agreedPulls.contains(pull.number), cutOff: nodes[i].cut,
                                                    side: splitActive ? (nodes[i].side ? "A" : "B") : nil, atUpstream: pulling))
        } else {
            result.pullsFromPeers += 1
        }
        scheduleTransferCheck()
    }

    mutating func scheduleTransferCheck() {
        transferGeneration += 1
        if let next = network.nextCompletion() { queue.push(.transferCheck(generation: transferGeneration), at: max(now, next.at)) }
    }

    mutating func complete(_ id: Int) {
        guard let transfer = network.stop(id, now: now) else { return }
        let i = transfer.destination
        guard let pull = nodes[i].pull, pull.transfer == id else { return }
        // Verification: a tree from a lying peer fails the packages check; anything else is the genuine tree.
        let bad = transfer.source >= 0 && nodes[transfer.source].tampered
        let broken = scenario.failures.brokenFirstPush && pull.token == "T1"
        let outcome: SyncCoordinator.PullOutcome = bad || broken ? .failed("verification failed") : .synced(token: pull.token)
        queue.push(.pullFinished(i, pull: pull.number, outcome), at: now)
    }

    mutating func finishPull(_ i: Int, _ outcome: SyncCoordinator.PullOutcome) {
        if let t = nodes[i].pull?.transfer, network.active[t] != nil {
            network.stop(t, now: now)
            scheduleTransferCheck()
        }
        let source = nodes[i].pull?.source
        nodes[i].pull = nil
        if case .synced(let token) = outcome, source == .upstream {
            // What it attests stands for its manifest's root: a liar attests a forged one.
            nodes[i].coordinator.attest(token: token, root: TreeManifest.root(of: Array(((nodes[i].liar ? "forged-" : "root-") + token).utf8)))
        }
        if case .synced(let token) = outcome {
            nodes[i].published = token
            // A liar's own copy is what it serves: bad packages behind a good token.
            nodes[i].tampered = nodes[i].liar
            if token == upstreamToken, reachedAt[i] == nil, !nodes[i].liar { reachedAt[i] = now - scenario.pushAt }
        }
        let published = nodes[i].published
        nodes[i].membership.updateOwn {
            $0.publishedToken = published
            $0.source = ""
            $0.syncState = published == $0.targetToken ? .inSync : .waiting
        }
        coordinate(i, nodes[i].coordinator.onPullFinished(outcome, now: d, wallMillis: wallMillis(i)))
    }

    mutating func abortTransfers(touching i: Int) {
        for t in network.active.values.sorted(by: { $0.id < $1.id }) where t.source == i || t.destination == i {
            network.stop(t.id, now: now)
            let dest = t.destination
            if dest != i, let pull = nodes[dest].pull, pull.transfer == t.id {
                queue.push(.pullFinished(dest, pull: pull.number, .failed("source died")), at: now + scenario.latency)
            }
        }
        scheduleTransferCheck()
    }

    mutating func finish() -> RunResult {
        network.advance(to: now)
        let honest = honestSurvivors
        let times = honest.compactMap { reachedAt[$0] }.sorted()
        func quantile(_ q: Double) -> Double? {
            let needed = Int((q * Double(honest.count)).rounded(.up))
            return needed <= times.count && needed > 0 ? times[needed - 1] : (honest.isEmpty ? 0 : nil)
        }
        result.t50 = quantile(0.5)
        result.t90 = quantile(0.9)
        result.t100 = quantile(1.0)
        result.upstreamCopies = network.upstreamBytes / scenario.delta
        result.peerCopies = network.peerBytes / scenario.delta
        let seconds = max(1, now - scenario.pushAt)
        result.messagesPerNodeSecond = Double(messages) / Double(scenario.nodes) / seconds
        result.bytesPerNodeSecond = messageBytes / Double(scenario.nodes) / seconds
        if result.t100 == nil, scenario.idleWindow == nil {
            let missing = honest.filter { nodes[$0].published != upstreamToken }.map { nodes[$0].name }
            result.violations.append("not converged by the horizon: \(missing.prefix(10).joined(separator: ", "))\(missing.count > 10 ? ", …" : "")")
        }
        for i in honest where nodes[i].tampered {
            result.violations.append("\(nodes[i].name) published a tree that failed verification")
        }
        return result
    }
}

import Testing

@testable import DmirrCore

/// A small deterministic generator, so that the property test's views are the same on every run (and a failure names
/// the seed that reproduces it).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct SyncPlanTests {
    static func fleet(_ n: Int, inSync: Set<String> = [], token: String = "T2", serveSlots: Int = 2) -> [SyncPlan.Member] {
        (0..<n).map { i in
            let node = "m\(i)"
            return SyncPlan.Member(node: node, publishedToken: inSync.contains(node) ? token : "T1", serveSlots: serveSlots)
        }
    }

    @Test func everyMemberComputesTheSamePlanFromTheSameView() {
        var members = Self.fleet(12, inSync: ["m3", "m8"])
        members[5].pulling = .upstream
        members[6].avoid = [.peer("m3")]
        let reference = SyncPlan(token: "T2", members: members, upstreamSlots: 2)
        var rng = SplitMix64(seed: 7)
        for _ in 0..<20 {
            // Views arrive in any order; the plan and its digest do not depend on it.
            let shuffled = SyncPlan(token: "T2", members: members.shuffled(using: &rng), upstreamSlots: 2)
            #expect(shuffled == reference)
        }
        // The digest covers who pulls from upstream: a view that changes only peer assignments keeps it, one that
        // changes an upstream pull does not.
        var peerOnly = members
        let peerPuller = reference.order.first { if case .pull(.peer)? = reference.assignments[$0] { true } else { false } }!
        peerOnly[Int(peerPuller.dropFirst())!].pulling = reference.assignments[peerPuller].flatMap { if case .pull(let s) = $0 { s } else { nil } }
        let samePulls = SyncPlan(token: "T2", members: peerOnly, upstreamSlots: 2)
        #expect(samePulls.digest == reference.digest)
        var upstreamChanged = members
        for i in upstreamChanged.indices where reference.assignments[upstreamChanged[i].node] == .pull(.upstream) {
            upstreamChanged[i].publishedToken = "T2"  // its upstream pull finished
        }
        #expect(SyncPlan(token: "T2", members: upstreamChanged, upstreamSlots: 2).digest != reference.digest)
    }

    @Test func atMostCMembersPullFromUpstreamAndTheRestWaitInSlotOrder() {
        let plan = SyncPlan(token: "T2", members: Self.fleet(10), upstreamSlots: 2)
        #expect(plan.upstreamPulls == Array(plan.order.prefix(2)))
        #expect(plan.order.dropFirst(2).allSatisfy { plan.assignments[$0] == .wait })
    }

    @Test func inSyncPeersServeTheNextWaveAndUpstreamTakesTheOnesAfter() {
        // The first wave finished: its two members now serve two pulls each; upstream takes the next two.
        let first = SyncPlan(token: "T2", members: Self.fleet(10), upstreamSlots: 2)
        let wave1 = Set(first.upstreamPulls)
        let plan = SyncPlan(token: "T2", members: Self.fleet(10, inSync: wave1), upstreamSlots: 2)
        let waiting = plan.order.filter { !wave1.contains($0) }
        for source in wave1 { #expect(plan.pulls(from: source).count == 2) }
        #expect(Set(waiting.prefix(4)) == Set(wave1.flatMap { plan.pulls(from: $0) }), "the first four in slot order take the peer slots")
        #expect(plan.upstreamPulls == Array(waiting.dropFirst(4).prefix(2)))
        #expect(waiting.dropFirst(6).allSatisfy { plan.assignments[$0] == .wait })
    }

    @Test func theSlotOrderRotatesWithEveryToken() {
        let nodes = (0..<10).map { "m\($0)" }
        #expect(SyncPlan.slotOrder(token: "T1", nodes: nodes) != SyncPlan.slotOrder(token: "T2", nodes: nodes))
        var firsts: [String: Int] = [:]
        var lasts: [String: Int] = [:]
        for push in 0..<300 {
            let order = SyncPlan.slotOrder(token: "push-\(push)", nodes: nodes)
            firsts[order.first!, default: 0] += 1
            lasts[order.last!, default: 0] += 1
        }
        // Nobody is always first or always last: over 300 pushes every member leads and trails some of them.
        #expect(nodes.allSatisfy { (firsts[$0] ?? 0) >= 10 && (lasts[$0] ?? 0) >= 10 }, "\(firsts) \(lasts)")
    }

    @Test func runningPullsStayAndAGoneSourceFreesItsPullers() {
        var members = Self.fleet(8, inSync: ["m0"], serveSlots: 1)
        // m1..m3 are already pulling from m0 (over its one slot: views lagged); the plan keeps all three running.
        for i in 1...3 { members[i].pulling = .peer("m0") }
        members[4].pulling = .upstream
        members[5].pulling = .upstream
        members[6].pulling = .upstream  // three from upstream with two slots: kept, but nobody new goes there
        let plan = SyncPlan(token: "T2", members: members, upstreamSlots: 2)
        #expect(plan.pulls(from: "m0") == plan.order.filter { ["m1", "m2", "m3"].contains($0) })
        #expect(plan.upstreamPulls.count == 3)
        #expect(plan.assignments["m7"] == .wait)

        // m0 goes down: it leaves the view, its pullers are planned afresh (upstream is full, so they wait).
        let withoutM0 = members.filter { $0.node != "m0" }
        let after = SyncPlan(token: "T2", members: withoutM0, upstreamSlots: 2)
        #expect(["m1", "m2", "m3", "m7"].allSatisfy { after.assignments[$0] == .wait })
        // …and once those upstream pulls finish, their three serving slots go to the first three in slot order, and
        // the fourth takes a now free upstream slot.
        var done = withoutM0
        for i in done.indices where ["m4", "m5", "m6"].contains(done[i].node) {
            done[i].pulling = nil
            done[i].publishedToken = "T2"
        }
        let next = SyncPlan(token: "T2", members: done, upstreamSlots: 2)
        let waiters = next.order.filter { ["m1", "m2", "m3", "m7"].contains($0) }
        #expect(waiters.prefix(3).allSatisfy { if case .pull(.peer)? = next.assignments[$0] { true } else { false } })
        #expect(next.assignments[waiters[3]] == .pull(.upstream))
    }

    @Test func avoidedSourcesAreNotOfferedAgain() {
        var members = Self.fleet(3, inSync: ["m0"], serveSlots: 4)
        members[1].avoid = [.peer("m0")]
        members[2].avoid = [.peer("m0"), .upstream]
        let plan = SyncPlan(token: "T2", members: members, upstreamSlots: 2)
        #expect(plan.assignments["m1"] == .pull(.upstream))
        #expect(plan.assignments["m2"] == .wait)
    }

    @Test func aNewTokenIsANewPlan() {
        // Members that published T2 are not in sync for T3; pulls reported for T2 do not count for T3 (the agent
        // only reports a pull under the token it is pulling), so T3's plan starts from upstream again.
        let t2 = SyncPlan(token: "T2", members: Self.fleet(6, inSync: ["m0", "m1", "m2"]), upstreamSlots: 2)
        let t3members = Self.fleet(6, inSync: ["m0", "m1", "m2"]).map { m -> SyncPlan.Member in
            var m = m
            m.publishedToken = m.publishedToken == "T2" ? "T2" : "T1"
            return m
        }
        let t3 = SyncPlan(token: "T3", members: t3members, upstreamSlots: 2)
        #expect(t2.upstreamPulls.isEmpty)
        #expect(t3.upstreamPulls.count == 2)
        #expect(t3.order != t2.order)
    }

    @Test func propertiesHoldOverRandomViews() {
        for seed in UInt64(1)...2_000 {
            var rng = SplitMix64(seed: seed)
            let n = Int.random(in: 1...40, using: &rng)
            let c = Int.random(in: 1...4, using: &rng)
            var members: [SyncPlan.Member] = []
            for i in 0..<n {
                var m = SyncPlan.Member(node: "n\(i)", publishedToken: Bool.random(using: &rng) ? "T" : "old",
                                        serveSlots: Int.random(in: 0...4, using: &rng))
                if m.publishedToken != "T" {
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 0: m.pulling = .upstream
                    case 1: m.pulling = .peer("n\(Int.random(in: 0..<n, using: &rng))")  // maybe stale or bogus
                    default: break
                    }
                    if Int.random(in: 0..<4, using: &rng) == 0 { m.avoid.insert(.upstream) }
                    if Int.random(in: 0..<3, using: &rng) == 0 { m.avoid.insert(.peer("n\(Int.random(in: 0..<n, using: &rng))")) }
                }
                members.append(m)
            }
            let plan = SyncPlan(token: "T", members: members, upstreamSlots: c)
            let byNode = Dictionary(uniqueKeysWithValues: members.map { ($0.node, $0) })
            let runningUpstream = members.filter { $0.publishedToken != "T" && $0.pulling == .upstream }.count
            // Upstream: never more than C, unless pulls already running exceed it; then nothing new is added.
            #expect(plan.upstreamPulls.count <= max(c, runningUpstream), "seed \(seed)")
            var newPeerPulls: [String: Int] = [:]
            for (node, assignment) in plan.assignments {
                let m = byNode[node]!
                switch assignment {
                case .inSync:
                    #expect(m.publishedToken == "T", "seed \(seed)")
                case .pull(.peer(let source)):
                    #expect(byNode[source]?.publishedToken == "T" && source != node, "seed \(seed): \(node) pulls from \(source)")
                    if m.pulling != .peer(source) {
                        #expect(!m.avoid.contains(.peer(source)), "seed \(seed)")
                        newPeerPulls[source, default: 0] += 1
                    }
                case .pull(.upstream):
                    if m.pulling != .upstream { #expect(!m.avoid.contains(.upstream), "seed \(seed)") }
                case .wait:
                    #expect(m.publishedToken != "T", "seed \(seed)")
                }
            }
            // No source serves more than its slots, running pulls included (unless they alone exceed them).
            for (source, count) in newPeerPulls {
                let running = plan.pulls(from: source).count - count
                #expect(running + count <= max(byNode[source]!.serveSlots, running), "seed \(seed): \(source) over its slots")
            }
            // Work-conserving: nobody waits while a slot it could take is free.
            for node in plan.order where plan.assignments[node] == .wait {
                let m = byNode[node]!
                let freePeer = members.contains { s in
                    s.publishedToken == "T" && !m.avoid.contains(.peer(s.node)) && plan.pulls(from: s.node).count < s.serveSlots
                }
                #expect(!freePeer, "seed \(seed): \(node) waits beside a free peer slot")
                #expect(plan.upstreamPulls.count >= c || m.avoid.contains(.upstream), "seed \(seed): \(node) waits beside a free upstream slot")
            }
            // Same view in another order: same plan.
            #expect(SyncPlan(token: "T", members: members.reversed(), upstreamSlots: c) == plan, "seed \(seed)")
            // The plan's choice of peer is rule 4 as written, checked against a plain quadratic reading of it.
            #expect(plan.assignments == Self.rule4(members, token: "T", upstreamSlots: c), "seed \(seed)")
            // A slot order handed in (the coordinator keeps it between plans) gives the same plan.
            #expect(SyncPlan(token: "T", members: members, upstreamSlots: c, order: plan.order) == plan, "seed \(seed)")
        }
    }

    /// SyncPlan's rules 2–4 the slow, obvious way: every waiting member scans every in-sync peer.
    static func rule4(_ members: [SyncPlan.Member], token: String, upstreamSlots: Int) -> [String: SyncPlan.Assignment] {
        let order = SyncPlan.slotOrder(token: token, nodes: members.map(\.node))
        let byNode = Dictionary(uniqueKeysWithValues: members.map { ($0.node, $0) })
        var out: [String: SyncPlan.Assignment] = [:]
        var free: [String: Int] = [:]
        for node in order where byNode[node]!.publishedToken == token {
            out[node] = .inSync
            free[node] = max(0, byNode[node]!.serveSlots)
        }
        var upstream = 0
        for node in order where out[node] == nil {
            switch byNode[node]!.pulling {
            case .upstream?:
                out[node] = .pull(.upstream)
                upstream += 1
            case .peer(let s)? where free[s] != nil && s != node:
                out[node] = .pull(.peer(s))
                free[s]! -= 1
            default: break
            }
        }
        for node in order where out[node] == nil {
            let avoid = byNode[node]!.avoid
            var best: String?
            for peer in order where (free[peer] ?? 0) > 0 && !avoid.contains(.peer(peer)) {
                if best == nil || free[peer]! > free[best!]! { best = peer }
            }
            if let best {
                out[node] = .pull(.peer(best))
                free[best]! -= 1
            } else if upstream < upstreamSlots, !avoid.contains(.upstream) {
                out[node] = .pull(.upstream)
                upstream += 1
            } else {
                out[node] = .wait
            }
        }
        return out
    }
}

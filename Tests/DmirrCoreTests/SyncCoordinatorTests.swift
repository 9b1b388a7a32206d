import Testing

@testable import DmirrCore

@Suite struct SyncCoordinatorTests {
    static func record(_ node: String, published: String = "T1", target: String = "", seen: Int64 = 0, syncing source: String = "",
                       digest: String = "", serveSlots: Int = 2, attest: String? = nil) -> MemberRecord {
        var r = MemberRecord(node: node, generation: 1)
        r.publishedToken = published
        r.targetToken = target
        r.targetSeenMillis = seen
        r.source = source
        r.syncState = source.isEmpty ? (published == target ? .inSync : .waiting) : .syncing
        r.planDigest = digest
        r.serveSlots = serveSlots
        // An in-sync member attests its token by default (as one that pulled it from upstream would), with root "R".
        r.attestToken = attest.map { _ in published } ?? (published == target && !target.isEmpty ? published : "")
        r.attestRoot = attest ?? (r.attestToken.isEmpty ? "" : "R")
        return r
    }

    static func config(slots: Int = 2) -> SyncCoordinator.Configuration {
        var c = SyncCoordinator.Configuration()
        c.upstreamSlots = slots
        c.serveSlots = 2
        c.poll = .seconds(10)
        c.fallbackPoll = .seconds(100)
        c.agreementDeadline = .seconds(5)
        c.stallAfter = .seconds(30)
        c.busyBackoff = .seconds(20)
        return c
    }

    static func pulls(_ directives: [SyncCoordinator.Directive]) -> [PlanSource] {
        directives.compactMap { if case .startPull(let s, _) = $0 { s } else { nil } }
    }

    @Test func exactlyTheWatchersPollOftenAndEveryonePollsFirstThing() {
        let names = (0..<10).map { "m\($0)" }
        var watchers = 0
        for name in names {
            var c = SyncCoordinator(me: name, publishedToken: "T1", configuration: Self.config())
            _ = c.onView(names.map { Self.record($0) }, wallMillis: 0, now: .zero)
            #expect(c.onTick(now: .zero).contains(.pollUpstream))
            _ = c.onUpstreamToken("T1", wallMillis: 0, now: .zero)
            let polledAt10 = c.onTick(now: .seconds(10)).contains(.pollUpstream)
            if c.isWatcher { watchers += 1 }
            #expect(polledAt10 == c.isWatcher)
        }
        #expect(watchers == 2)
    }

    @Test func aGossipedTokenIsConfirmedBeforeAnythingIsPulled() {
        // Three upstream slots for three members: whatever the slot order, a is planned upstream.
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config(slots: 3))
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        // b saw T2 at upstream later than we saw T1.
        let view = [Self.record("b", target: "T2", seen: 2_000), Self.record("c")]
        let first = c.onView(view, wallMillis: 3_000, now: .seconds(1))
        #expect(first.contains(.pollUpstream))
        #expect(Self.pulls(first).isEmpty, "pulled an unconfirmed token")
        #expect(Self.pulls(c.onTick(now: .seconds(7))).isEmpty, "pulled before its own fetch confirmed the token")
        // Upstream confirms it: nobody else advertises our digest, so it waits for the agreement deadline (5 s).
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 3_100, now: .seconds(8))).isEmpty)
        #expect(c.plan?.assignments["a"] == .pull(.upstream))
        #expect(Self.pulls(c.onTick(now: .seconds(12))).isEmpty)
        #expect(Self.pulls(c.onTick(now: .seconds(13))) == [.upstream])
    }

    @Test func aLateAnswerToAPollGivenUpAsLostDoesNotTurnTheTargetBack() {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([Self.record("b"), Self.record("c")], wallMillis: 0, now: .zero)
        #expect(c.onTick(now: .zero).contains(.pollUpstream))  // poll 1 goes out and hangs
        // Given up as lost after stall_after (30 s); poll 2 goes out at the next interval and reads T2.
        let second = Duration.seconds(100)
        #expect(c.onTick(now: second).contains(.pollUpstream))
        _ = c.onUpstreamToken("T2", wallMillis: 9_000, now: second + .seconds(1), polledAt: second)
        #expect(c.target?.token == "T2")
        // Poll 1's answer, from before the push, arrives last: it is old news.
        #expect(c.onUpstreamToken("T1", wallMillis: 9_500, now: second + .seconds(2), polledAt: .zero) == [])
        #expect(c.target?.token == "T2" && c.target?.confirmed == true)
        _ = c.onUpstreamUnreachable(now: second + .seconds(3), polledAt: .zero)
        #expect(c.vouchedBy == nil)
        // A newer poll's answer still counts.
        let third = second + .seconds(100)
        _ = c.onUpstreamToken("T3", wallMillis: 20_000, now: third + .seconds(1), polledAt: third)
        #expect(c.target?.token == "T3")
    }

    @Test func aLyingPeerCannotSendTheFleetAfterATokenUpstreamDoesNotServe() {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config())
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        _ = c.onView([Self.record("liar", target: "FAKE", seen: 2_000)], wallMillis: 3_000, now: .seconds(1))
        // Upstream still serves T1: that is the target again, and a has it.
        let after = c.onUpstreamToken("T1", wallMillis: 3_000, now: .seconds(2))
        #expect(c.target?.token == "T1")
        #expect(Self.pulls(after).isEmpty)
        // A claim from the far future is not even adopted.
        _ = c.onView([Self.record("liar", target: "FUTURE", seen: 10_000_000)], wallMillis: 4_000, now: .seconds(3))
        #expect(c.target?.token == "T1")
    }

    @Test func aMemberUpstreamRefusesFollowsATokenOnlyOnKAttestations() {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config(slots: 3))
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        // b saw T2 upstream and is pulling it; our own fetch is refused as busy.
        let first = c.onView([Self.record("b", target: "T2", seen: 2_000, syncing: "upstream"), Self.record("c")], wallMillis: 3_000, now: .seconds(1))
        #expect(first.contains(.pollUpstream))
        #expect(Self.pulls(c.onUpstreamUnreachable(now: .seconds(2))).isEmpty, "nobody holds T2 yet: nothing to follow")
        #expect(c.target?.confirmed == false && c.vouchedBy == nil)
        // Until a fetch answers, the plan must not count on us for upstream. We would fetch again after the busy backoff
        // (the last fetch went out at 1 s; 20 s applies to a watcher too, whose poll interval is 10 s), but not while b
        // pulls from upstream: b's pull reads upstream's token, and our fetch would only meet the same full daemon.
        #expect(c.plan?.assignments["a"] != .pull(.upstream), "\(String(describing: c.plan?.assignments))")
        #expect(!c.onTick(now: .seconds(20)).contains(.pollUpstream))
        #expect(!c.onTick(now: .seconds(21)).contains(.pollUpstream))
        _ = c.onView([Self.record("b", target: "T2", seen: 2_000, syncing: "c"), Self.record("c")], wallMillis: 3_000, now: .seconds(21))
        #expect(c.onTick(now: .seconds(22)).contains(.pollUpstream))
        _ = c.onUpstreamUnreachable(now: .seconds(22))
        // b publishes T2 from upstream and attests it: one member's word is not enough (k = 2), so nothing is pulled.
        let b = Self.record("b", published: "T2", target: "T2", seen: 2_000)
        #expect(Self.pulls(c.onView([b, Self.record("c")], wallMillis: 4_000, now: .seconds(23))).isEmpty)
        #expect(c.target?.confirmed == false && c.vouchedBy == nil && c.attestedRoots(for: "T2").isEmpty)
        // A second member attesting another root is a dispute, not a second vote.
        let liar = Self.record("x", published: "T2", target: "T2", seen: 2_000, attest: "FORGED")
        #expect(Self.pulls(c.onView([b, liar, Self.record("c")], wallMillis: 4_000, now: .seconds(23))).isEmpty)
        // e attests the same root as b: two distinct authors stand in for the fetch we could not make, and b serves us.
        let e = Self.record("e", published: "T2", target: "T2", seen: 2_000)
        let pulls = Self.pulls(c.onView([b, e, Self.record("c")], wallMillis: 4_000, now: .seconds(23)))
        #expect(pulls.count == 1 && [.peer("b"), .peer("e")].contains(pulls[0]), "\(String(describing: c.plan?.assignments))")
        #expect(c.target?.confirmed == true && c.vouchedBy == "b, e" && c.attestedRoots(for: "T2") == ["R"])

        // Without a failed fetch, a published token alone confirms nothing: the member waits for its own fetch.
        var d = SyncCoordinator(me: "d", publishedToken: "T1", configuration: Self.config(slots: 3))
        _ = d.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        let seen = d.onView([b, e, Self.record("c")], wallMillis: 4_000, now: .seconds(1))
        #expect(seen.contains(.pollUpstream) && Self.pulls(seen).isEmpty)
        #expect(Self.pulls(d.onTick(now: .seconds(2))).isEmpty && d.vouchedBy == nil)
        // And a fetch that answers puts our own reading of upstream first again: T1 here, so nothing to pull.
        _ = d.onUpstreamUnreachable(now: .seconds(3))
        #expect(d.target?.confirmed == true && d.vouchedBy == "b, e")
        _ = d.onUpstreamToken("T1", wallMillis: 5_000, now: .seconds(4))
        #expect(d.target?.token == "T1" && d.vouchedBy == nil)
    }

    @Test func anUpstreamPullWaitsForAMajorityOrTheDeadlineAndAPeerPullDoesNot() {
        // Five members, nobody in sync: two will be planned upstream.
        let names = ["a", "b", "c", "d", "e"]
        let plan = SyncPlan(token: "T2", members: names.map { SyncPlan.Member(node: $0, publishedToken: "T1", serveSlots: 2) }, upstreamSlots: 2)
        let upstreamer = plan.upstreamPulls[0]
        var c = SyncCoordinator(me: upstreamer, publishedToken: "T1", configuration: Self.config())
        let others = names.filter { $0 != upstreamer }
        _ = c.onView(others.map { Self.record($0, target: "T2", seen: 5) }, wallMillis: 10, now: .zero)
        let confirmed = c.onUpstreamToken("T2", wallMillis: 10, now: .zero)
        #expect(Self.pulls(confirmed).isEmpty, "started before anyone agreed")
        #expect(c.plan?.digest == plan.digest)
        // Two others advertise the same plan: three of five agree, so it starts.
        let agreeing = others.enumerated().map { i, n in Self.record(n, target: "T2", seen: 5, digest: i < 2 ? plan.digest : "other") }
        #expect(Self.pulls(c.onView(agreeing, wallMillis: 10, now: .seconds(1))).isEmpty, "started before membership settled")
        #expect(c.agreed)
        #expect(Self.pulls(c.onView(agreeing, wallMillis: 10, now: .seconds(3))).isEmpty)
        // With the majority it need not wait for its own deadline: membership settles 5 s after the first view.
        var early = SyncCoordinator(me: upstreamer, publishedToken: "T1", configuration: Self.config())
        _ = early.onView(others.map { Self.record($0, target: "T2", seen: 5) }, wallMillis: 10, now: .zero)
        _ = early.onTick(now: .seconds(5))  // settled, no token yet
        _ = early.onUpstreamToken("T2", wallMillis: 10, now: .seconds(6))
        #expect(Self.pulls(early.onView(agreeing, wallMillis: 10, now: .seconds(7))) == [.upstream])

        // Without agreement the deadline starts it.
        var lonely = SyncCoordinator(me: upstreamer, publishedToken: "T1", configuration: Self.config())
        _ = lonely.onView(others.map { Self.record($0, target: "T2", seen: 5) }, wallMillis: 10, now: .zero)
        _ = lonely.onUpstreamToken("T2", wallMillis: 10, now: .zero)
        #expect(Self.pulls(lonely.onTick(now: .seconds(4))).isEmpty)
        #expect(Self.pulls(lonely.onTick(now: .seconds(5))) == [.upstream])

        // A member planned onto an in-sync peer starts at once, agreement or not.
        var follower = SyncCoordinator(me: "z", publishedToken: "T1", configuration: Self.config())
        _ = follower.onView([Self.record("s", published: "T2", target: "T2", seen: 5),
                             Self.record("t", published: "T2", target: "T2", seen: 5, serveSlots: 0)], wallMillis: 10, now: .zero)
        #expect(Self.pulls(follower.onUpstreamToken("T2", wallMillis: 10, now: .zero)) == [.peer("s")])
    }

    @Test func aStalledPeerIsAbandonedAndAnotherSourceTaken() {
        var c = SyncCoordinator(me: "z", publishedToken: "T1", configuration: Self.config(slots: 1))
        let view = [Self.record("s1", published: "T2", target: "T2", seen: 5), Self.record("s2", published: "T2", target: "T2", seen: 5)]
        _ = c.onView(view, wallMillis: 10, now: .zero)
        let first = Self.pulls(c.onUpstreamToken("T2", wallMillis: 10, now: .zero))
        #expect(first.count == 1)
        c.onPullProgress(now: .seconds(20))
        #expect(!c.onTick(now: .seconds(49)).contains { if case .cancelPull = $0 { true } else { false } })
        let stalled = c.onTick(now: .seconds(50))
        #expect(stalled.contains { if case .cancelPull = $0 { true } else { false } })
        let after = c.onPullFinished(.cancelled, now: .seconds(51))
        let next = Self.pulls(after)
        #expect(next.count == 1 && next != first, "\(next) after abandoning \(first)")
        // The avoided source is advertised, so every member's plan leaves it out for us.
        let advertised = after.compactMap { if case .advertise(let a) = $0 { a } else { nil } }.last
        #expect(advertised?.avoid == first.map(\.recordValue), "\(after)")
    }

    @Test(arguments: [0.05, 0.95]) func aPeerThatOthersOvertakeIsAbandonedAsTooSlowOncePerToken(done: Double) {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config())
        _ = c.onUpstreamToken("T2", wallMillis: 1_000, now: .zero)
        // s1 and s2 hold T2 (one serving slot each); w1…w4 wait.
        let waiting = ["w1", "w2", "w3", "w4"]
        var view = [Self.record("s1", published: "T2", target: "T2", seen: 1_000, serveSlots: 1),
                    Self.record("s2", published: "T2", target: "T2", seen: 1_000, serveSlots: 1)]
        view += waiting.map { Self.record($0, target: "T2", seen: 1_000) }
        let started = Self.pulls(c.onView(view, wallMillis: 2_000, now: .seconds(1)))
        guard case .peer(let slow)? = started.first else {
            Issue.record("no peer pull: \(started)")
            return
        }
        func publish(_ nodes: [String]) {
            view = view.map { r in nodes.contains(r.node) ? Self.record(r.node, published: "T2", target: "T2", seen: 1_000, serveSlots: 1) : r }
        }
        func cancelled(_ directives: [SyncCoordinator.Directive]) -> Bool {
            directives.contains { if case .cancelPull(let reason) = $0 { reason.contains("too slow") } else { false } }
        }
        c.onPullProgress(now: .seconds(20), fraction: done)
        // Two of the waiting members finish first: not yet enough to call our source slow.
        publish(["w1", "w2"])
        _ = c.onView(view, wallMillis: 3_000, now: .seconds(20))
        #expect(!cancelled(c.onTick(now: .seconds(20))))
        // A third overtakes us. At 5 % after 24 s the rest would take minutes (> stall_after, 30 s): the pull is
        // cancelled and its source avoided for the rest of the token. At 95 % it is nearly done and goes on.
        publish(["w3"])
        _ = c.onView(view, wallMillis: 4_000, now: .seconds(25))
        let tick = c.onTick(now: .seconds(25))
        guard done < 0.5 else {
            #expect(!cancelled(tick), "\(tick)")
            return
        }
        #expect(cancelled(tick), "\(tick)")
        let next = Self.pulls(c.onPullFinished(.cancelled, now: .seconds(25)))
        #expect(next.count == 1 && next.first != .peer(slow), "\(next)")
        #expect(c.advertised?.avoid == [slow])
        // Patience is spent for this token: a slow second source is not abandoned as well.
        c.onPullProgress(now: .seconds(60), fraction: 0.01)
        publish(["w4"])
        _ = c.onView(view, wallMillis: 5_000, now: .seconds(60))
        #expect(!cancelled(c.onTick(now: .seconds(60))))
    }

    /// Seed 1682 of the simulation campaign: a member whose upstream pull was refused avoids upstream for the backoff,
    /// and the fleet gives its slot to the next member in slot order. When the backoff runs out, members that have not
    /// yet heard of its absence still advertise the plan that has it pulling: counted at once, that stale majority let
    /// it start beside the member that took its slot (three agreed pulls, two slots). Back from avoiding upstream, it
    /// now lets the agreement deadline pass first, and then sees who pulls.
    @Test func aMemberBackFromAvoidingUpstreamWaitsForTheFleetToHearIt() throws {
        let names = ["a", "b", "c", "d", "e"]
        let members = { (avoiding: String?) in
            names.map { SyncPlan.Member(node: $0, publishedToken: "T1", serveSlots: 2, avoid: $0 == avoiding ? [.upstream] : []) }
        }
        let before = SyncPlan(token: "T2", members: members(nil), upstreamSlots: 1)
        let me = before.upstreamPulls[0]
        let others = names.filter { $0 != me }
        let stale = others.map { Self.record($0, target: "T2", seen: 5, digest: before.digest) }
        let replacement = try #require(SyncPlan(token: "T2", members: members(me), upstreamSlots: 1).upstreamPulls.first)
        func coordinator() -> SyncCoordinator {
            var c = SyncCoordinator(me: me, publishedToken: "T1", configuration: Self.config(slots: 1))
            _ = c.onView(stale, wallMillis: 10, now: .zero)
            #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 10, now: .seconds(6))) == [.upstream])
            #expect(Self.pulls(c.onPullFinished(.busy, now: .seconds(7))).isEmpty)
            return c
        }
        // The backoff (20 s) ends at 27 s; the others still advertise the plan that has us pulling.
        var c = coordinator()
        #expect(Self.pulls(c.onTick(now: .seconds(27))).isEmpty, "started on a majority that never heard we had left")
        #expect(c.agreed)
        // By the deadline the member that took our slot shows it pulls: the plan keeps it there, and we wait.
        let taken = others.map { Self.record($0, target: "T2", seen: 5, syncing: $0 == replacement ? "upstream" : "") }
        #expect(Self.pulls(c.onView(taken, wallMillis: 10, now: .seconds(32))).isEmpty)
        #expect(c.plan?.upstreamPulls == [replacement])
        // Nobody took it meanwhile: the deadline passed, we start.
        var d = coordinator()
        #expect(Self.pulls(d.onTick(now: .seconds(27))).isEmpty)
        #expect(Self.pulls(d.onTick(now: .seconds(32))) == [.upstream])
    }

    @Test func busyUpstreamIsRetriedAfterTheBackoffAndAFailedPeerNotAtAll() {
        var c = SyncCoordinator(me: "solo", publishedToken: "T1", configuration: Self.config(slots: 1))
        _ = c.onView([], wallMillis: 0, now: .zero)
        // Alone, it agrees with itself, but only once membership had the agreement deadline (5 s) to form.
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 0, now: .seconds(1))).isEmpty)
        #expect(Self.pulls(c.onTick(now: .seconds(5))) == [.upstream])
        #expect(Self.pulls(c.onPullFinished(.busy, now: .seconds(6))).isEmpty)
        #expect(Self.pulls(c.onTick(now: .seconds(25))).isEmpty)
        #expect(Self.pulls(c.onTick(now: .seconds(26))) == [.upstream])
        #expect(Self.pulls(c.onPullFinished(.synced(token: "T2"), now: .seconds(30))).isEmpty)
        #expect(c.publishedToken == "T2")

        var f = SyncCoordinator(me: "f", publishedToken: "T1", configuration: Self.config(slots: 0))
        _ = f.onView([Self.record("s", published: "T2", target: "T2", seen: 5),
                      Self.record("t", published: "T2", target: "T2", seen: 5, serveSlots: 0)], wallMillis: 10, now: .zero)
        #expect(Self.pulls(f.onUpstreamToken("T2", wallMillis: 10, now: .zero)) == [.peer("s")])
        #expect(Self.pulls(f.onPullFinished(.tokenMismatch(found: "T1"), now: .seconds(1))).isEmpty)
        #expect(Self.pulls(f.onTick(now: .seconds(500))).isEmpty, "went back to a peer that held the wrong token")
    }

    @Test func aNewTokenMidPullCancelsIt() {
        var c = SyncCoordinator(me: "solo", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([], wallMillis: 0, now: .zero)
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 0, now: .seconds(5))) == [.upstream])
        let moved = c.onUpstreamToken("T3", wallMillis: 100, now: .seconds(8))
        #expect(moved.contains { if case .cancelPull = $0 { true } else { false } })
        // Once the old pull is down, the new token is pulled (alone and settled, it agrees with itself at once).
        #expect(Self.pulls(c.onPullFinished(.cancelled, now: .seconds(9))) == [.upstream])
        #expect(c.running?.token == "T3")
    }

    /// A push lands between our poll (T2) and our upstream pull, which then takes T3 (or finds it already here): T3 is
    /// upstream's word, as a poll's answer. Before, T2 stayed the target and was pulled again at once, for ever, each
    /// pull finding T3 "up to date"; the record, syncing from upstream each round, kept every member from polling (the
    /// broken-upstream campaign saw a fleet of four stuck so).
    @Test func anUpstreamPullThatFindsANewerTokenTakesItAsUpstreamsAnswer() {
        var c = SyncCoordinator(me: "solo", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([], wallMillis: 0, now: .zero)
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 1_000, now: .seconds(5))) == [.upstream])
        let after = c.onPullFinished(.synced(token: "T3"), now: .seconds(8), wallMillis: 4_000)
        #expect(Self.pulls(after).isEmpty, "pulled again: \(after)")
        #expect(c.target?.token == "T3" && c.target?.confirmed == true && c.target?.seenMillis == 4_000)
        #expect(c.running == nil)
        // In sync: the watchers' poll goes on as usual (nobody is pulling from upstream).
        #expect(c.onTick(now: .seconds(20)).contains(.pollUpstream))
        // A peer pull is pinned to the peer's token: its outcome names that token, and nothing else moves the target.
        var p = SyncCoordinator(me: "z", publishedToken: "T1", configuration: Self.config())
        _ = p.onView([Self.record("s", published: "T2", target: "T2", seen: 5),
                      Self.record("t", published: "T2", target: "T2", seen: 5, serveSlots: 0)], wallMillis: 10, now: .zero)
        #expect(Self.pulls(p.onUpstreamToken("T2", wallMillis: 10, now: .zero)) == [.peer("s")])
        _ = p.onPullFinished(.synced(token: "T2"), now: .seconds(3), wallMillis: 20)
        #expect(p.target?.token == "T2" && p.target?.seenMillis == 5)
    }

    @Test func peersServeOnlyATokenWhoseManifestIsAttested() {
        // One upstream slot, taken by u; s holds T2 but nobody attests it (it got T2 from a peer, say).
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config(slots: 1))
        let u = Self.record("u", target: "T2", seen: 5, syncing: "upstream")
        let s = Self.record("s", published: "T2", target: "T2", seen: 5, attest: "")
        _ = c.onView([u, s], wallMillis: 10, now: .zero)
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 10, now: .seconds(1))).isEmpty)
        #expect(c.plan?.assignments["a"] == .wait, "\(String(describing: c.plan?.assignments))")
        // u finishes and attests: one attestation (k = 2) still serves nobody.
        let u2 = Self.record("u", published: "T2", target: "T2", seen: 5)
        #expect(Self.pulls(c.onView([u2, s], wallMillis: 10, now: .seconds(2))).allSatisfy { $0 == .upstream })
        // With k = 1 the same view serves us from a peer.
        var config = Self.config(slots: 0)
        config.attestations = 1
        var k1 = SyncCoordinator(me: "a", publishedToken: "T1", configuration: config)
        _ = k1.onView([u2, s], wallMillis: 10, now: .zero)
        let pulls = Self.pulls(k1.onUpstreamToken("T2", wallMillis: 10, now: .seconds(1)))
        #expect(pulls.count == 1 && pulls.allSatisfy { $0 != .upstream }, "\(String(describing: k1.plan?.assignments))")
        #expect(k1.attestedRoots(for: "T2") == ["R"])
    }

    @Test func anUnconfirmedTokenFromGossipNeverCancelsARunningPull() {
        var c = SyncCoordinator(me: "solo", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([], wallMillis: 0, now: .zero)
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 1_000, now: .seconds(5))) == [.upstream])
        // A member claims a newer token, stamped 59 s in the future: adopted as a rumour to confirm, nothing cancelled.
        let out = c.onView([Self.record("liar", target: "FAKE", seen: 60_000)], wallMillis: 1_000, now: .seconds(6))
        #expect(!out.contains { if case .cancelPull = $0 { true } else { false } }, "\(out)")
        #expect(c.running?.token == "T2")
        // Upstream itself moving on does cancel it.
        let moved = c.onUpstreamToken("T3", wallMillis: 2_000, now: .seconds(7))
        #expect(moved.contains { if case .cancelPull = $0 { true } else { false } }, "\(moved)")
    }

    /// `dmirr sync --force` / `--source` beside the agent: the pull starts at once, outside the plan; the plan (which
    /// would have cancelled a moot pull of a token we hold) leaves it alone, only a stall ends it, and a second
    /// request while it runs is refused.
    @Test func aRequestedPullRunsOutsideThePlanUntilItEnds() {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config())
        let view = [Self.record("b", target: "T1"), Self.record("c", target: "T1")]
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        _ = c.onView(view, wallMillis: 1_000, now: .zero)
        #expect(c.running == nil, "in sync: nothing to pull")
        let started = c.onRequestedPull(.peer("b"), token: "T1", now: .seconds(1))
        #expect(started.map(Self.pulls) == [.peer("b")])
        #expect(c.advertised?.source == "b", "others see whom we pull from")
        #expect(c.onRequestedPull(.upstream, token: "T1", now: .seconds(2)) == nil, "one pull at a time")
        for second in 2...20 {
            let out = c.onView(view, wallMillis: 1_000, now: .seconds(Int64(second))) + c.onTick(now: .seconds(Int64(second)))
            #expect(!out.contains { if case .cancelPull = $0 { true } else { false } }, "cancelled at \(second) s: \(out)")
            c.onPullProgress(now: .seconds(Int64(second)), fraction: Double(second) / 40)
        }
        // Silence past stallAfter (30 s) still ends it.
        let stalled = c.onTick(now: .seconds(51))
        #expect(stalled.contains { if case .cancelPull = $0 { true } else { false } })
        _ = c.onPullFinished(.cancelled, now: .seconds(51))
        #expect(c.running == nil && c.mode == .idle)
        // Finished, the next request starts.
        #expect(c.onRequestedPull(.upstream, token: "T1", now: .seconds(60)).map(Self.pulls) == [.upstream])
    }

    @Test func aRumourIsNeverRepeatedInOurOwnRecordUntilConfirmedOrAttested() {
        // Measured before: a member's made-up token, stamped 59 s ahead, was advertised by every honest member that
        // heard it (under their own signatures), and showed them "waiting" on it for seconds.
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([], wallMillis: 0, now: .zero)
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .seconds(1))
        #expect(c.advertised?.targetToken == "T1")
        _ = c.onView([Self.record("liar", target: "FAKE", seen: 60_000)], wallMillis: 1_000, now: .seconds(2))
        #expect(c.target?.token == "FAKE", "adopted inside, to be confirmed")
        #expect(c.advertised?.targetToken == "T1", "but not advertised on one member's word")
        // Our own fetch refutes it; the advertised target never moved.
        _ = c.onUpstreamToken("T1", wallMillis: 3_000, now: .seconds(3))
        #expect(c.advertised?.targetToken == "T1")
        // A real push: advertised once confirmed by our fetch…
        _ = c.onUpstreamToken("T2", wallMillis: 4_000, now: .seconds(4))
        #expect(c.advertised?.targetToken == "T2")
        // …or once enough members attest a tree of it, while our own fetch is refused.
        var config = Self.config()
        config.attestations = 2
        var d = SyncCoordinator(me: "d", publishedToken: "T1", configuration: config)
        var b = Self.record("b", published: "T2", target: "T2", seen: 5_000)
        var e = Self.record("e", published: "T2", target: "T2", seen: 5_000)
        _ = d.onView([b], wallMillis: 6_000, now: .zero)
        #expect(d.advertised?.targetToken != "T2")
        b.attestToken = "T2"; b.attestRoot = String(repeating: "a", count: 64)
        e.attestToken = "T2"; e.attestRoot = String(repeating: "a", count: 64)
        _ = d.onView([b, e], wallMillis: 6_000, now: .seconds(1))
        #expect(d.advertised?.targetToken == "T2")
    }

    @Test func aRestartedMirrorNeverAdoptsAnOlderTokenAPeerStillHolds() {
        // We published T2 at 5,000 ms and restart; b still holds T1, seen at upstream at 1,000 ms, and upstream refuses
        // our fetch. Before, the peer's token was followed and the mirror went back to T1.
        var config = Self.config(slots: 2)
        config.attestations = 1
        var c = SyncCoordinator(me: "a", publishedToken: "T2", publishedSeenMillis: 5_000, configuration: config)
        let b = Self.record("b", published: "T1", target: "T1", seen: 1_000)
        let first = c.onView([b], wallMillis: 9_000, now: .zero)
        #expect(Self.pulls(first).isEmpty)
        _ = c.onUpstreamUnreachable(now: .seconds(1))
        #expect(Self.pulls(c.onTick(now: .seconds(2))).isEmpty)
        #expect(c.target?.token == "T2" && c.plan?.assignments["a"] == .inSync)
        // b, for its part, sees our T2 as news and follows it once it is confirmed.
        var other = SyncCoordinator(me: "b", publishedToken: "T1", publishedSeenMillis: 1_000, configuration: config)
        var a = Self.record("a", published: "T2", target: "T2", seen: 5_000)
        a.attestToken = "T2"
        _ = other.onView([a], wallMillis: 9_000, now: .zero)
        #expect(other.target?.token == "T2")
    }

    @Test func anUpstreamPullThatPublishesAttestsItsManifest() {
        var c = SyncCoordinator(me: "solo", publishedToken: "T1", configuration: Self.config())
        _ = c.onView([], wallMillis: 0, now: .zero)
        #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 0, now: .seconds(5))) == [.upstream])
        c.attest(token: "T2", root: "ROOT2")
        let out = c.onPullFinished(.synced(token: "T2"), now: .seconds(9))
        let advertised = out.compactMap { if case .advertise(let a) = $0 { a } else { nil } }.last
        #expect(advertised?.attestToken == "T2" && advertised?.attestRoot == "ROOT2")
    }

    @Test func aTokenUpstreamContradictedIsNeverTakenFromGossipAgain() {
        var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config(slots: 3))
        _ = c.onUpstreamToken("T1", wallMillis: 1_000, now: .zero)
        // A liar claims FAKE, stamped 59 s ahead: adopted as a rumour to confirm.
        let liar = Self.record("liar", target: "FAKE", seen: 60_000)
        let first = c.onView([liar, Self.record("b")], wallMillis: 1_000, now: .seconds(1))
        #expect(c.target?.token == "FAKE" && c.target?.confirmed == false && first.contains(.pollUpstream))
        // Upstream says T1: the rumour is refuted, and the same record does not bring it back.
        _ = c.onUpstreamToken("T1", wallMillis: 2_000, now: .seconds(2))
        #expect(c.target?.token == "T1" && c.target?.confirmed == true)
        let again = c.onView([liar, Self.record("b")], wallMillis: 3_000, now: .seconds(3))
        #expect(c.target?.token == "T1" && !again.contains(.pollUpstream), "\(again)")
        // A genuinely new token from gossip is still taken (and confirmed by a fetch).
        _ = c.onView([liar, Self.record("b", target: "T2", seen: 4_000)], wallMillis: 5_000, now: .seconds(4))
        #expect(c.target?.token == "T2")
    }

    /// Seed 7405 of the simulation campaign's fourth pass: m41, cut off from its peers while its record said it pulled
    /// T1 from upstream, pulled T2 from upstream meanwhile, and m7 and m13 took both slots of the T2 plan beside it:
    /// their plan left m41 out because its record named the older token. A suspect's reported upstream pull now keeps
    /// its slot whatever token it named, until the suspect is heard again or judged down.
    @Test func aSuspectsUpstreamPullKeepsItsSlotWhateverTokenItNamed() throws {
        var c = SyncCoordinator(me: "a", publishedToken: "T0", configuration: Self.config(slots: 2))
        let others = ["b", "c"].map { Self.record($0, published: "T0", target: "T2", seen: 5) }
        let cutOff = Self.record("s", published: "T0", target: "T1", seen: 2, syncing: "upstream")
        _ = c.onView(others, suspects: [cutOff], wallMillis: 10, now: .zero)
        _ = c.onUpstreamToken("T2", wallMillis: 10, now: .seconds(6))
        let plan = try #require(c.plan)
        #expect(plan.upstreamPulls.count == 2 && plan.upstreamPulls.contains("s"), "\(plan.upstreamPulls)")
        // Judged down (no longer among the suspects), it frees the slot.
        _ = c.onView(others, suspects: [], wallMillis: 10, now: .seconds(7))
        let freed = try #require(c.plan)
        #expect(freed.upstreamPulls.count == 2 && !freed.upstreamPulls.contains("s"), "\(freed.upstreamPulls)")
    }

    /// Seed 8526 of the simulation campaign's fourth pass: m30's pull from a lying peer failed, and the plan it made
    /// next, upstream for m30, was the plan from before that pull, which 51 of 100 records still advertised (their
    /// authors had not heard of the pull). It started at once, beside m92, which the members that had heard gave that
    /// slot, and beside m18: three agreed upstream pulls with two slots. After a failed pull, as after avoiding
    /// upstream, the agreement we count waits the agreement deadline for the fleet to hear where we are.
    @Test func aMemberWhosePeerPullFailedWaitsForTheFleetToHearIt() throws {
        let others = ["b", "c", "d", "e"]
        // s and t hold T2 (two attest it, so peers may serve it); s serves everyone, t nobody. Whoever avoids s is
        // planned upstream, the one slot.
        let liar = [Self.record("s", published: "T2", target: "T2", seen: 5, serveSlots: 10),
                    Self.record("t", published: "T2", target: "T2", seen: 5, serveSlots: 0)]
        let members = (["a"] + others).map { SyncPlan.Member(node: $0, publishedToken: "T1", serveSlots: 2, avoid: $0 == "a" ? [.peer("s")] : []) }
        let holders = [SyncPlan.Member(node: "s", publishedToken: "T2", serveSlots: 10), SyncPlan.Member(node: "t", publishedToken: "T2", serveSlots: 0)]
        let after = SyncPlan(token: "T2", members: members + holders, upstreamSlots: 1)
        #expect(after.upstreamPulls == ["a"])
        // The others advertise that plan (from before they heard of a's pull from s).
        let stale = others.map { Self.record($0, target: "T2", seen: 5, digest: after.digest) }
        func failedOnce() -> SyncCoordinator {
            var c = SyncCoordinator(me: "a", publishedToken: "T1", configuration: Self.config(slots: 1))
            _ = c.onView(stale + liar, wallMillis: 10, now: .zero)
            #expect(Self.pulls(c.onUpstreamToken("T2", wallMillis: 10, now: .seconds(6))) == [.peer("s")])
            #expect(Self.pulls(c.onPullFinished(.failed("verification failed"), now: .seconds(7))).isEmpty,
                    "started upstream on a majority that never heard of the pull from s")
            #expect(c.plan?.digest == after.digest && c.agreed)
            return c
        }
        // By the deadline b shows it pulls from upstream: the plan keeps it there, and a waits.
        var c = failedOnce()
        let taken = others.map { Self.record($0, target: "T2", seen: 5, syncing: $0 == "b" ? "upstream" : "", digest: after.digest) }
        #expect(Self.pulls(c.onView(taken + liar, wallMillis: 10, now: .seconds(9))).isEmpty)
        #expect(Self.pulls(c.onTick(now: .seconds(12))).isEmpty)
        #expect(c.plan?.upstreamPulls == ["b"])
        // Nobody took it: at the deadline it starts.
        var d = failedOnce()
        #expect(Self.pulls(d.onTick(now: .seconds(11))).isEmpty)
        #expect(Self.pulls(d.onTick(now: .seconds(12))) == [.upstream])
    }
}

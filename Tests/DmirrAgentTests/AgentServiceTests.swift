import DmirrCore
import DmirrFixtures
import DmirrNet
import DmirrStore
import DmirrTestSupport
import DmirrWire
import Foundation
import Logging
import Testing

@testable import DmirrAgent

/// The agent's services on a manual clock: their timing (gossip rounds, liveness verdicts, record expiry, the systemd
/// watchdog, the upstream poll and the agreement deadline) checked in virtual time, with real certificates, a real
/// SQLite file and, for the sync service, a real rsync daemon. Only time is simulated.
@Suite struct AgentServiceTests {
    /// A fleet CA with members m1 and m2, and m1's node (its signer, its state database) on a manual clock.
    struct Harness {
        let dir: TestDirectory
        let clock = ManualClock()
        let store: StateStore
        let node: FleetNode
        let membership: Membership.Configuration

        init(suspectAfter: Duration = .seconds(10), downAfter: Duration = .seconds(60)) async throws {
            dir = try TestDirectory("agent")
            let ca = try FleetPKI.makeCA(fleet: "ius")
            try FleetPKI.write(ca.certificatePEM, to: dir.sub("ca.pem"), secret: false, force: true)
            for name in ["m1", "m2"] {
                let issued = try FleetPKI.issue(caCertificatePEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM,
                                                identity: PeerIdentity(fleet: "ius", role: .node, name: name), ips: ["127.0.0.1"])
                try FleetPKI.write(issued.certificatePEM, to: dir.sub("\(name).pem"), secret: false, force: true)
                try FleetPKI.write(issued.privateKeyPEM, to: dir.sub("\(name).key"), secret: true, force: true)
            }
            try FileManager.default.createDirectory(atPath: dir.sub("state"), withIntermediateDirectories: true)
            store = try StateStore(directory: dir.sub("state"))
            var membership = Membership.Configuration()
            membership.gossipInterval = .seconds(1)
            membership.suspectAfter = suspectAfter
            membership.downAfter = downAfter
            self.membership = membership
            node = FleetNode(
                identity: PeerIdentity(fleet: "ius", role: .node, name: "m1"), generation: UInt64(clock.wallMillis),
                configuration: membership, signer: try Self.signer("m1", in: dir), store: store,
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), clock: clock)
        }

        func signer(_ name: String) throws -> RecordSigner { try Self.signer(name, in: dir) }

        static func signer(_ name: String, in dir: TestDirectory) throws -> RecordSigner {
            try RecordSigner(caPath: dir.sub("ca.pem"), certPath: dir.sub("\(name).pem"), keyPath: dir.sub("\(name).key"))
        }

        /// m1's sync service on the harness's clock and store, for an upstream at `url` (`upstreamExtra` and
        /// `peersExtra`: more lines for those tables).
        func syncService(upstream url: String, upstreamExtra: String = "", peersExtra: String = "") throws -> SyncService {
            let text = """
                node = "m1"
                fleet = "ius"
                [upstream]
                url = "\(url)"
                \(upstreamExtra)
                [mirror]
                path = "\(dir.sub("mirror"))"
                [listen]
                peer = "127.0.0.1:0"
                [tls]
                ca = "\(dir.sub("ca.pem"))"
                cert = "\(dir.sub("m1.pem"))"
                key = "\(dir.sub("m1.key"))"
                [peers]
                \(peersExtra)
                [state]
                dir = "\(dir.sub("state"))"
                """
            let config = try ConfigLoader.load(text: text, file: "m1.toml", purpose: .agent).get()
            let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            return SyncService(config: config, node: node, store: store, clock: clock, metrics: AgentMetrics(), logger: logger)
        }

        func liveness(of member: String) async -> String? {
            await node.status().members.first { $0.record.node == member }?.liveness
        }
    }

    @Test func gossipRoundsFollowTheInjectedClock() async throws {
        let h = try await Harness()
        defer { h.dir.remove() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await GossipService(interval: .seconds(1), node: h.node, clock: h.clock).run() }
            try await h.clock.waitForSleepers(1)
            #expect(await h.node.sinceLastTick() == .zero, "the first round runs at once")
            h.clock.advance(by: .milliseconds(600))
            // A sleeper woken by the advance leaves the list at once and is back only after its round.
            try await h.clock.waitForSleepers(1)
            #expect(await h.node.sinceLastTick() == .milliseconds(600), "no round before the interval has passed")
            h.clock.advance(by: .milliseconds(400))
            try await eventually("the second round, one interval after the first") { await h.node.sinceLastTick() == .zero }
            for round in 3...10 {
                try await h.clock.waitForSleepers(1)
                h.clock.advance(by: .seconds(1))
                try await eventually("round \(round)") { await h.node.sinceLastTick() == .zero }
            }
            // Our own record is signed on the wall clock the agent was given: it expires two refreshes plus
            // down_after after the manual clock's start, not after the host's time.
            let own = try #require(try h.store.members().first { $0.node == "m1" })
            let record = try #require(try await h.signer("m2").verify(WireSignedRecord(serializedBytes: own.signedRecord)).get())
            let lifetime = h.membership.refresh(members: 1) * 2 + h.membership.downAfter
            let expected = h.clock.wallMillis + lifetime.components.seconds * 1000
            #expect(abs(record.expiresMillis - expected) <= 10_000, "expires \(record.expiresMillis), about \(expected) expected")
            group.cancelAll()
        }
    }

    /// A member restored from the state database and never heard from again: suspect, then down, after the silences
    /// the membership rules give (with a refresh and a half of slack for a member nobody reports on), and forgotten,
    /// in memory and in SQLite, once its signed record has expired by more than the clock skew receipt allows (after
    /// that, receipt would refuse it too). Minutes of agent time, in milliseconds.
    @Test func aSilentMemberIsSuspectedDownAndForgottenOnTime() async throws {
        let h = try await Harness(suspectAfter: .seconds(10), downAfter: .seconds(60))
        defer { h.dir.remove() }
        var record = MemberRecord(node: "m2", generation: 1)
        record.heartbeat = 1
        record.expiresMillis = h.clock.wallMillis + 150_000
        let signed: [UInt8] = try h.signer("m2").sign(record).serializedBytes()
        try h.store.saveMembers([.init(node: "m2", signedRecord: signed, generation: 1, heartbeat: 1)], at: h.clock.wallNow)
        await h.node.restore()

        // Restored as if silent for suspect_after; nobody reports on m2, so the slack is 1.5 refreshes (45 s here).
        let slack = h.membership.refresh(members: 2) * 3 / 2
        let suspectAt = h.membership.suspectAfter + slack - h.membership.suspectAfter
        let downAt = h.membership.downAfter + slack - h.membership.suspectAfter
        #expect(suspectAt == .seconds(45) && downAt == .seconds(95))
        var verdicts: [(Duration, String)] = []
        var forgottenAt: Duration?
        for _ in 0..<220 {
            await h.node.tick()
            let liveness = await h.liveness(of: "m2") ?? "forgotten"
            if verdicts.last?.1 != liveness { verdicts.append((h.clock.now, liveness)) }
            if liveness == "forgotten", forgottenAt == nil { forgottenAt = h.clock.now }
            h.clock.advance(by: .seconds(1))
        }
        let timeline = verdicts.map { "\($0.1) at \($0.0)" }.joined(separator: ", ")
        #expect(verdicts.map(\.1) == ["alive", "suspect", "down", "forgotten"], "\(timeline)")
        #expect(verdicts.count == 4 && verdicts[1].0 == suspectAt && verdicts[2].0 == downAt, "\(timeline)")
        // Expired means past `expiresMillis` by more than receipt's skew (60 s): the first round after 210 s.
        #expect(forgottenAt == .seconds(150) + .milliseconds(RecordPolicy.Limit.skewMillis) + .seconds(1), "\(timeline)")
        #expect(try h.store.members().map(\.node) == ["m1"], "m2's row is deleted with it")
        // Its certificate stays known: a peer that sent it on our link sends m2's next records without it, and m2 may
        // well come back (a long freeze). Without it those records were dropped as "came without a certificate".
        #expect(await h.node.authors.certificate(of: "m2") != nil, "m2's certificate was forgotten with its record")
        var back = record
        back.generation = 2
        back.expiresMillis = h.clock.wallMillis + 150_000
        var stripped = try h.signer("m2").sign(back)
        stripped.authorCertificate = Data()
        stripped.authorIntermediates = []
        let (results, _) = await (try h.signer("m1")).verify(batch: [stripped], known: await h.node.authors, now: h.clock.wallNow)
        #expect((try? results[0].get())?.record.generation == 2, "m2's record without its certificate: \(results)")
    }

    /// The systemd watchdog in virtual time: a keep-alive every half of WATCHDOG_USEC while gossip ticks, none once
    /// the gossip loop has not ticked for three rounds (a wedged agent is restarted), and again once it ticks.
    @Test func theWatchdogIsWithheldWhileGossipIsWedged() async throws {
        let h = try await Harness()
        defer { h.dir.remove() }
        let notify = try NotifySocket(path: h.dir.sub("notify.sock"))
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"])
        #expect(notifier.watchdogInterval == .seconds(1))
        let readiness = Readiness()
        let service = ReadinessService(readiness: readiness, node: h.node, notifier: notifier, gossipInterval: .seconds(1),
                                       clock: h.clock, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            await h.node.tick()
            readiness.listening(at: "127.0.0.1:7873")
            let ready = await notify.next(within: 120)
            #expect(ready?.hasPrefix("READY=1\nSTATUS=target unknown;") == true, "\(ready ?? "nothing")")
            /// Advances one second and returns the keep-alive it brought, if any (other lines are STATUS= updates).
            func second() async throws -> Bool {
                try await h.clock.waitForSleepers(1)
                h.clock.advance(by: .seconds(1))
                // Back asleep means this second's notifications were sent.
                try await h.clock.waitForSleepers(1)
                return notify.pending().contains("WATCHDOG=1")
            }
            var sent: [Bool] = []
            for _ in 1...6 { sent.append(try await second()) }
            // Ticked at 0: alive while less than 3 rounds + 1 s have passed, i.e. at 1, 2 and 3 s.
            #expect(sent == [true, true, true, false, false, false], "keep-alives at 1…6 s: \(sent)")
            await h.node.tick()
            #expect(try await second(), "the keep-alive resumes with the next gossip round")
            group.cancelAll()
        }
    }

    /// A run killed before the agent started (a `dmirr sync`, or the agent's own pull before a crash) is recorded as
    /// interrupted, with its token, and its leftovers removed when the agent starts, not at the next pull.
    @Test func theAgentRecordsAKilledRunWhenItStarts() async throws {
        let h = try await Harness()
        defer { h.dir.remove() }
        let mirror = h.dir.sub("mirror")
        try FileManager.default.createDirectory(atPath: mirror + "/.dmirr-tmp", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: mirror + "/.dmirr-tmp/half-a-package.rpm", contents: Data(count: 100))
        var killed = SyncRun(token: nil, source: "upstream", startedAt: Date(timeIntervalSinceNow: -60))
        killed.id = try h.store.beginRun(killed)
        try h.store.setRunToken(killed.id!, token: "push-7")
        let service = try h.syncService(upstream: "rsync://127.0.0.1:1/nothing")
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            try await eventually("the killed run recorded") { try h.store.recentRuns(limit: 5).first?.outcome == "interrupted" }
            group.cancelAll()
        }
        let run = try #require(try h.store.recentRuns(limit: 5).first)
        #expect(run.token == "push-7" && run.error?.contains("killed or crashed") == true, "\(run)")
        #expect(!FileManager.default.fileExists(atPath: mirror + "/.dmirr-tmp/half-a-package.rpm"))
    }

    /// The sync service on the manual clock against a real upstream (rsync daemon, yum repo): a member alone polls at
    /// once, starts its upstream pull only when the agreement deadline (5 gossip rounds here) has passed, and, with
    /// `poll = 60s`, fetches upstream's token again only once 60 s of agent time have gone by.
    @Test func theSyncServicePollsAndPullsOnTheInjectedClock() async throws {
        let h = try await Harness()
        defer { h.dir.remove() }
        let upstream = try Upstream(in: h.dir, packages: [.init("alpha", "1.0"), .init("beta", "1.0")], token: "push-1")
        defer { upstream.stop() }
        let service = try h.syncService(upstream: upstream.url, upstreamExtra: "poll = \"60s\"\ntimeout = \"20s\"", peersExtra: "gossip = \"1s\"")
        /// Token fetches upstream's daemon logged (the pull's own read of the token file counts as one).
        func tokenFetches() throws -> Int { try upstream.sessions().sessions.filter { !$0.isTreePull }.count }
        func treePulls() throws -> Int { try upstream.sessions().sessions.filter(\.isTreePull).count }
        /// One gossip round of agent time, handed to the service's ticker.
        func round() async throws {
            try await h.clock.waitForSleepers(1)
            h.clock.advance(by: .seconds(1))
            try await h.clock.waitForSleepers(1)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await service.run() }
            do {
                try await eventually("the first token fetch") { try tokenFetches() >= 1 }
            } catch {
                let log = (try? String(contentsOfFile: upstream.daemon.logPath, encoding: .utf8)) ?? "(no daemon log)"
                Issue.record("\(error); upstream's sessions: \(try upstream.sessions().sessions); its log ends:\n\(log.suffix(3000))")
                throw error
            }
            let sessions = try upstream.sessions().sessions
            #expect(sessions.filter { !$0.isTreePull }.count == 1, "one poll, one fetch: \(sessions)")
            // Alone, the plan is agreed at once; the pull still waits for the agreement deadline (5 s).
            for _ in 1...4 { try await round() }
            try await Task.sleep(for: .milliseconds(500))
            #expect(try treePulls() == 0 && h.store.published() == nil, "no pull before the agreement deadline")
            #expect(await h.node.own.syncState != .syncing)
            try await round()
            try await eventually("push-1 published from upstream") { try h.store.published()?.token == "push-1" }
            // The three stages of the one pull (content, metadata, the listing of what the source no longer has).
            let pulls = try treePulls()
            #expect(pulls == 3, "\(pulls) tree sessions")
            try await eventually("the record says in sync") { await h.node.own.syncState == .inSync }
            let fetches = try tokenFetches()
            // The last poll was at 0 s: the next is due at 60 s of agent time, not before.
            while h.clock.now < .seconds(59) { try await round() }
            try await Task.sleep(for: .milliseconds(500))
            #expect(try tokenFetches() == fetches, "no token fetch before poll has passed (at \(h.clock.now))")
            try await round()
            try await eventually("the token fetch due at 60 s") { try tokenFetches() == fetches + 1 }
            #expect(try treePulls() == pulls, "the token did not change: nothing more is pulled")
            group.cancelAll()
        }
    }
}

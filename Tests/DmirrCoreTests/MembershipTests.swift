import Testing

@testable import DmirrCore

/// A tiny in-memory network that carries out Membership directives instantly: the same core code the agent runs,
/// under a virtual clock.
struct MiniFleet {
    var members: [String: Membership] = [:]
    var down: Set<String> = []
    var now: Duration = .zero
    var messages = 0

    init(_ names: [String], links: [(String, String)], configuration: Membership.Configuration = .init()) {
        for (i, name) in names.enumerated() {
            members[name] = Membership(me: name, generation: UInt64(100 + i), configuration: configuration)
        }
        for (a, b) in links {
            members[a]!.onConnected(b)
            members[b]!.onConnected(a)
        }
    }

    enum Message { case digest(from: String, to: String, [Membership.DigestEntry], isReply: Bool), records(from: String, to: String, [String]) }

    mutating func round() {
        now += .seconds(1)
        var queue: [Message] = []
        for name in members.keys.sorted() where !down.contains(name) {
            let directives = members[name]!.onTick(now: now)
            queue += carryOut(name, directives)
        }
        var steps = 0
        while !queue.isEmpty {
            steps += 1
            precondition(steps < 100_000, "gossip did not quiesce")
            let message = queue.removeFirst()
            messages += 1
            switch message {
            case .digest(let from, let to, let entries, let isReply):
                guard !down.contains(to) else { continue }
                queue += carryOut(to, members[to]!.onDigest(from: from, entries: entries, isReply: isReply, now: now))
            case .records(let from, let to, let nodes):
                guard !down.contains(to) else { continue }
                for node in nodes {
                    let entry = members[from]!.entries[node]!
                    queue += carryOut(to, members[to]!.onRecord(entry.record, signed: entry.signed, from: from, now: now))
                }
            }
        }
    }

    mutating func carryOut(_ name: String, _ directives: [Membership.Directive]) -> [Message] {
        var out: [Message] = []
        for d in directives {
            switch d {
            case .signOwnRecord(let r):
                out += carryOut(name, members[name]!.onOwnRecordSigned(r, signed: Array("\(r.node)@\(r.version)".utf8), now: now))
            case .sendDigest(let to, let entries, let isReply): out.append(.digest(from: name, to: to, entries, isReply: isReply))
            case .sendRecords(let to, let nodes): out.append(.records(from: name, to: to, nodes))
            case .persist, .livenessChanged, .wake: break
            }
        }
        return out
    }

    /// Every live member holds a record of every live member.
    var everyoneKnowsEveryone: Bool {
        let live = members.keys.filter { !down.contains($0) }
        return live.allSatisfy { a in live.allSatisfy { b in members[a]!.entries[b] != nil } }
    }

    /// Every live member holds every live member's newest record.
    var converged: Bool {
        let live = members.keys.filter { !down.contains($0) }
        return live.allSatisfy { a in
            live.allSatisfy { b in members[a]!.entries[b]?.record.version == members[b]!.entries[b]?.record.version }
        }
    }
}

@Suite struct MembershipTests {
    static func ring(_ n: Int) -> ([String], [(String, String)]) {
        let names = (0..<n).map { "m\($0)" }
        // A ring plus chords: each member connects to a few others, not a full mesh.
        var links: [(String, String)] = []
        for i in 0..<n { links.append((names[i], names[(i + 1) % n])); links.append((names[i], names[(i + n / 2) % n])) }
        return (names, links)
    }

    @Test func aFleetConvergesWithoutAFullMesh() {
        let (names, links) = Self.ring(20)
        var config = Membership.Configuration()
        config.heartbeatInterval = .seconds(1000)  // only the first records and the change below move
        var fleet = MiniFleet(names, links: links, configuration: config)
        var rounds = 0
        repeat {
            fleet.round()
            rounds += 1
        } while !fleet.converged && rounds < 50
        #expect(fleet.converged)
        #expect(rounds <= 8, "took \(rounds) rounds")
        #expect(fleet.members.values.allSatisfy { $0.aliveMembers.count == 20 })

        // A change of one member's state spreads to all within the fleet's diameter in rounds.
        fleet.members["m7"]!.updateOwn { $0.publishedToken = "T2" }
        var spread = 0
        repeat {
            fleet.round()
            spread += 1
        } while !fleet.members.values.allSatisfy({ $0.entries["m7"]?.record.publishedToken == "T2" }) && spread < 50
        #expect(spread <= 7, "took \(spread) rounds")
        let quiet = fleet.messages
        fleet.round()
        // With nothing new, a round is one digest per link direction and nothing else.
        let directedLinks = fleet.members.values.map(\.connected.count).reduce(0, +)
        #expect(fleet.messages - quiet == directedLinks)
    }

    @Test func silentMembersBecomeSuspectThenDownOnTime() {
        var config = Membership.Configuration()
        config.suspectAfter = .seconds(5)
        config.downAfter = .seconds(12)
        config.heartbeatInterval = .seconds(1)
        let (names, links) = Self.ring(6)
        var fleet = MiniFleet(names, links: links, configuration: config)
        for _ in 0..<5 { fleet.round() }
        #expect(fleet.everyoneKnowsEveryone)
        fleet.down = ["m3"]
        var suspectAt: Int?
        var downAt: Int?
        for second in 1...20 {
            fleet.round()
            let views = fleet.members.filter { $0.key != "m3" }.map { $0.value.entries["m3"]!.liveness }
            if suspectAt == nil, views.allSatisfy({ $0 != .alive }) { suspectAt = second }
            if downAt == nil, views.allSatisfy({ $0 == .down }) { downAt = second }
        }
        // Its last heartbeat spread within a round of stopping, so every view goes suspect after 5–7 s, down after 12–14 s.
        #expect((5...7).contains(suspectAt ?? 0), "suspect after \(suspectAt ?? -1) s")
        #expect((12...14).contains(downAt ?? 0), "down after \(downAt ?? -1) s")

        // It comes back with a new generation: alive again everywhere, and its new record wins over the old one.
        fleet.down = []
        fleet.members["m3"] = Membership(me: "m3", generation: 999, configuration: config)
        fleet.members["m3"]!.onConnected("m4")
        fleet.members["m4"]!.onConnected("m3")
        for _ in 0..<6 { fleet.round() }
        #expect(fleet.everyoneKnowsEveryone)
        #expect(fleet.members.values.allSatisfy { $0.entries["m3"]?.liveness == .alive && $0.entries["m3"]?.record.generation == 999 })
    }

    @Test func olderRecordsNeverReplaceNewerOnes() {
        var m = Membership(me: "a", generation: 1)
        var r = MemberRecord(node: "b", generation: 5)
        r.heartbeat = 9
        r.publishedToken = "new"
        _ = m.onRecord(r, signed: [1], from: "b", now: .seconds(1))
        var old = r
        old.heartbeat = 8
        old.publishedToken = "old"
        #expect(m.onRecord(old, signed: [2], from: "c", now: .seconds(2)) == [])
        var oldGeneration = r
        oldGeneration.generation = 4
        oldGeneration.heartbeat = 1000
        #expect(m.onRecord(oldGeneration, signed: [3], from: "c", now: .seconds(3)) == [])
        #expect(m.entries["b"]?.record.publishedToken == "new")
        #expect(m.entries["b"]?.signed == [1])
    }

    @Test func ourOwnRecordIsOnlyAuthoredHere() {
        var m = Membership(me: "a", generation: 10)
        _ = m.onTick(now: .seconds(1))
        var forged = MemberRecord(node: "a", generation: 10)
        forged.heartbeat = 0
        forged.publishedToken = "forged"
        #expect(m.onRecord(forged, signed: [9], from: "x", now: .seconds(2)) == [])
        #expect(m.own.publishedToken == "")
        // A newer copy means we restarted without our state: jump past it instead of arguing.
        var stale = MemberRecord(node: "a", generation: 50)
        stale.heartbeat = 3
        _ = m.onRecord(stale, signed: [9], from: "x", now: .seconds(3))
        let directives = m.onTick(now: .seconds(4))
        guard case .signOwnRecord(let signed)? = directives.first else { Issue.record("no re-sign"); return }
        #expect(signed.version > stale.version)
    }

    @Test func aReplyDigestIsNotAnsweredWithAnother() {
        var a = Membership(me: "a", generation: 1)
        _ = a.onOwnRecordSigned(MemberRecord(node: "a", generation: 1), signed: [1], now: .zero)
        let theirs = [Membership.DigestEntry(node: "b", version: .init(generation: 1, heartbeat: 1))]
        let asRequest = a.onDigest(from: "b", entries: theirs, isReply: false, now: .zero)
        #expect(asRequest.contains(.sendRecords(to: "b", nodes: ["a"])))
        #expect(asRequest.contains { if case .sendDigest(_, _, true) = $0 { true } else { false } })
        let asReply = a.onDigest(from: "b", entries: theirs, isReply: true, now: .zero)
        #expect(!asReply.contains { if case .sendDigest = $0 { true } else { false } })
    }
}

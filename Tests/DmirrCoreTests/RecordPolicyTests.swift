import DmirrCore
import Testing

@Suite struct RecordPolicyTests {
    static let now: Int64 = 1_800_000_000_000

    static func valid() -> MemberRecord {
        var r = MemberRecord(node: "m1", generation: 3)
        r.publishedToken = "push-1"
        r.targetToken = "push-1"
        r.targetSeenMillis = now - 5_000
        r.lastSyncMillis = now - 1_000
        r.rsyncURL = "rsync://m1.example.org/ius"
        r.peerAddress = "m1.example.org:7873"
        r.source = "upstream"
        r.avoid = ["m2", "upstream"]
        r.suspects = [Suspicion(node: "m4", version: RecordVersion(generation: 1, heartbeat: 2))]
        r.attestToken = "push-1"
        r.attestRoot = String(repeating: "0a", count: 32)
        r.progress = 0.5
        r.expiresMillis = now + 120_000
        return r
    }

    @Test func anOrdinaryRecordPasses() {
        #expect(RecordPolicy.problem(with: Self.valid(), nowMillis: Self.now) == nil)
        // 59 s ahead is within the allowed skew.
        var r = Self.valid()
        r.targetSeenMillis = Self.now + 59_000
        #expect(RecordPolicy.problem(with: r, nowMillis: Self.now) == nil)
    }

    static func broken(_ rule: String) -> MemberRecord {
        var r = valid()
        switch rule {
        case "future target": r.targetSeenMillis = now + 61_000
        case "future sync": r.lastSyncMillis = now + 3_600_000
        case "long token": r.targetToken = String(repeating: "x", count: 1025)
        case "long error": r.lastError = String(repeating: "e", count: 5000)
        case "bad name": r.node = "m1/../../x"
        case "many suspects": r.suspects = (0..<300).map { Suspicion(node: "n\($0)", version: RecordVersion(generation: 1, heartbeat: 1)) }
        case "bad suspect": r.suspects = [Suspicion(node: "", version: RecordVersion(generation: 1, heartbeat: 1))]
        case "many avoided": r.avoid = (0..<100).map { "n\($0)" }
        case "bad root": r.attestRoot = "not-a-hash"
        case "root without token": r.attestToken = ""
        case "bad source": r.source = "rsync://elsewhere"
        case "bad progress": r.progress = 7
        case "no expiry": r.expiresMillis = 0
        case "expired": r.expiresMillis = now - 61_000
        case "forever": r.expiresMillis = .max
        default: Issue.record("unknown rule \(rule)")
        }
        return r
    }

    @Test(arguments: [
        ("future target", "in the future"), ("future sync", "last_sync"), ("long token", "target_token has 1025 bytes"),
        ("long error", "last_error"), ("bad name", "not a valid name"), ("many suspects", "300 suspicions"),
        ("bad suspect", "suspicion names"), ("many avoided", "100 avoided"), ("bad root", "attest_root"),
        ("root without token", "come together"), ("bad source", "source"), ("bad progress", "progress"),
        ("no expiry", "no expiry"), ("expired", "expired 61 s ago"), ("forever", "more than 7 days"),
    ])
    func eachRuleRefusesWithItsReason(rule: String, expected: String) {
        let problem = RecordPolicy.problem(with: Self.broken(rule), nowMillis: Self.now)
        #expect(problem?.contains(expected) == true, "\(rule): \(problem ?? "accepted")")
    }
}

import Foundation
import Testing

@testable import DmirrAgent

/// The mirrorlist's per-client rate limit, in virtual time.
@Suite struct ClientListsTests {
    @Test func eachClientGetsABucketAndTheTableIsBounded() async throws {
        let h = try await AgentServiceTests.Harness()
        defer { h.dir.remove() }
        let lists = ClientLists(node: h.node, clock: h.clock, tree: h.dir.sub("mirror"), attestations: 2,
                                limits: .init(rate: 10, burst: 40, clients: 3))
        // No path given: 400 once admitted, 429 once the bucket is empty.
        func ask(_ client: String) async -> Int { await lists.mirrorlist(path: nil, client: client, region: nil).status }
        for _ in 0..<40 { #expect(await ask("a") == 400) }
        let refused = await lists.mirrorlist(path: nil, client: "a", region: nil)
        #expect(refused.status == 429 && refused.retryAfter == 1)
        #expect(await ask("b") == 400, "another client has its own bucket")
        h.clock.advance(by: .milliseconds(100))
        #expect(await ask("a") == 400, "a tenth of a second refills one request")
        #expect(await ask("a") == 429)
        // Three addresses tracked at most: a fourth new one waits until an idle one has refilled and is forgotten.
        #expect(await ask("c") == 400)
        #expect(await ask("d") == 429)
        h.clock.advance(by: .seconds(5))
        #expect(await ask("d") == 400)
    }

    /// `[listen] client_rate = 0` (a listener behind a proxy that limits clients itself): nobody is refused.
    @Test func aRateOfZeroLimitsNobody() async throws {
        let h = try await AgentServiceTests.Harness()
        defer { h.dir.remove() }
        let lists = ClientLists(node: h.node, clock: h.clock, tree: h.dir.sub("mirror"), attestations: 2,
                                limits: .init(rate: 0, burst: 1, clients: 1))
        for client in ["a", "b", "c"] {
            for _ in 0..<100 { #expect(await lists.mirrorlist(path: nil, client: client, region: nil).status == 400) }
        }
    }

    @Test func theMetalinkDateIsRFC1123() {
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: 1_800_000_000)) == "Fri, 15 Jan 2027 08:00:00 GMT")
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: 0)) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: 951_782_400)) == "Tue, 29 Feb 2000 00:00:00 GMT")
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: -1)) == "Wed, 31 Dec 1969 23:59:59 GMT")
        // Every day over 150 years (leap years, centuries, 2100 which is not a leap year) against Foundation's calendar.
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        for day in stride(from: 0, to: 150 * 366, by: 1) {
            let date = Date(timeIntervalSince1970: Double(day) * 86_400 + Double(day % 86_400) + 946_684_800 - 30 * 366 * 86_400)
            #expect(ClientLists.rfc1123(date) == formatter.string(from: date), "\(date)")
        }
    }
}

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

    @Test func theMetalinkDateIsRFC1123() {
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: 1_800_000_000)) == "Fri, 15 Jan 2027 08:00:00 GMT")
        #expect(ClientLists.rfc1123(Date(timeIntervalSince1970: 0)) == "Thu, 01 Jan 1970 00:00:00 GMT")
    }
}

import Testing

@testable import DmirrCore

@Suite struct ClockOffsetTests {
    static let tenMinutes: Int64 = 600_000

    @Test func aMemberTenMinutesOffCorrectsItselfOnceTwoPeersAgree() {
        var skewed = ClockOffset()
        // One peer alone (it 10 min ahead of us, or we behind it): one against our own zero, no majority.
        let moved = skewed.observe(peer: "a", peerWallMillis: Self.tenMinutes + 5_000, localWallMillis: 5_000)
        #expect(!moved)
        #expect(skewed.correctionMillis == 0)
        let movedNow = skewed.observe(peer: "b", peerWallMillis: Self.tenMinutes + 7_030, localWallMillis: 7_000)
        #expect(movedNow)
        #expect(abs(skewed.correctionMillis - Self.tenMinutes) < 100, "\(skewed.correctionMillis)")
        // And the other way round.
        var ahead = ClockOffset()
        for (i, peer) in ["a", "b", "c"].enumerated() {
            ahead.observe(peer: peer, peerWallMillis: 1_000_000 + Int64(i), localWallMillis: 1_000_000 + Self.tenMinutes)
        }
        #expect(ahead.correctionMillis == -Self.tenMinutes + 1)  // the lower middle of −600,000, −599,999, −599,998 and 0
    }

    @Test func honestMembersAreNotMovedByOneWrongClock() {
        var honest = ClockOffset()
        // The skewed member is the first and, for a while, the only other peer heard: no majority for it.
        honest.observe(peer: "skewed", peerWallMillis: 2_000_000 + Self.tenMinutes, localWallMillis: 2_000_000)
        #expect(honest.correctionMillis == 0)
        honest.observe(peer: "b", peerWallMillis: 2_000_100, localWallMillis: 2_000_000)
        honest.observe(peer: "c", peerWallMillis: 1_999_900, localWallMillis: 2_000_000)
        #expect(honest.correctionMillis == 0 && honest.measuredMillis == 0)
    }

    @Test func smallDifferencesAreLeftAloneAndLargeOnesCapped() {
        var ntp = ClockOffset()
        for peer in ["a", "b", "c"] { ntp.observe(peer: peer, peerWallMillis: 10_500, localWallMillis: 10_000) }
        #expect(ntp.correctionMillis == 0 && ntp.measuredMillis == 500)
        var far = ClockOffset()
        for peer in ["a", "b", "c"] { far.observe(peer: peer, peerWallMillis: 5 * 3_600_000, localWallMillis: 0) }
        #expect(far.correctionMillis == ClockOffset.limit && far.measuredMillis == 5 * 3_600_000)
        // A peer heard again replaces its sample: fixed clocks bring the correction back to zero.
        for peer in ["a", "b", "c"] { far.observe(peer: peer, peerWallMillis: 20, localWallMillis: 0) }
        #expect(far.correctionMillis == 0)
    }

    @Test func samplesAreCapped() {
        var many = ClockOffset()
        for i in 0..<(ClockOffset.maxSamples + 50) { many.observe(peer: "p\(i)", peerWallMillis: Self.tenMinutes, localWallMillis: 0) }
        #expect(many.correctionMillis == Self.tenMinutes)
        // The oldest were dropped: as many honest peers as the cap outvote them all.
        for i in 0..<ClockOffset.maxSamples { many.observe(peer: "h\(i)", peerWallMillis: 0, localWallMillis: 0) }
        #expect(many.correctionMillis == 0)
    }
}

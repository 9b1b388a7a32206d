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

    /// What the simulation campaign found (seed 311): a member 5 minutes behind whose five peers are three honest ones
    /// and two off by their own amounts has no majority (three of six offsets), and it was left uncorrected, refusing
    /// every record as dated in the future. The largest group that agrees wins when it is one group.
    @Test func aMemberWhosePeersAreOffTooFollowsTheLargestGroupThatAgrees() {
        let behind: Int64 = 299_775
        var skewed = ClockOffset()
        let peers: [(String, Int64)] = [("m18", 0), ("m37", -544_327), ("m61", -32_725), ("m70", 0), ("m83", 0)]
        for (peer, error) in peers {
            skewed.observe(peer: peer, peerWallMillis: 1_000_000 + error + 40, localWallMillis: 1_000_000 - behind)
        }
        #expect(skewed.correctionMillis == behind + 40, "\(skewed.correctionMillis)")
        // m37's clock fixed later: now a majority agrees, within the threshold of the correction, which stays.
        skewed.observe(peer: "m37", peerWallMillis: 2_000_000, localWallMillis: 2_000_000 - behind)
        #expect(abs(skewed.correctionMillis - behind) < ClockOffset.threshold)
    }

    @Test func twoGroupsOfTheSameSizeOrOneNoLargerThanOurOwnMoveNobody() {
        // Two peers say +5 min, two say −3 min: nothing says which is the fleet's time.
        var torn = ClockOffset()
        for (peer, offset) in [("a", 300_000), ("b", 300_500), ("c", -180_000), ("d", -180_200)] as [(String, Int64)] {
            torn.observe(peer: peer, peerWallMillis: offset, localWallMillis: 0)
        }
        #expect(torn.correctionMillis == 0 && torn.measuredMillis == 0 && !torn.determined)
        // An honest member with two honest peers and three that are off, each its own way: its own group (three) is
        // the largest, and it stays.
        var honest = ClockOffset()
        for (peer, offset) in [("h1", 30), ("h2", -20), ("x", 400_000), ("y", -250_000), ("z", 90_000)] as [(String, Int64)] {
            honest.observe(peer: peer, peerWallMillis: offset, localWallMillis: 0)
        }
        #expect(honest.correctionMillis == 0 && honest.measuredMillis == 0 && honest.determined)
        // Two colluding peers against one honest peer and our own clock: two groups of two, nobody moves.
        var outnumbered = ClockOffset()
        for (peer, offset) in [("h", 10), ("evil1", 3_000_000), ("evil2", 3_000_100)] as [(String, Int64)] {
            outnumbered.observe(peer: peer, peerWallMillis: offset, localWallMillis: 0)
        }
        #expect(outnumbered.correctionMillis == 0 && !outnumbered.determined)
    }

    /// Seed 7662 of the simulation campaign's fourth pass: m98, 332 s behind, linked to m32 (honest) and to m27, m63
    /// and m97, each off its own way. No two of its offsets agree, so nothing decided its clock, and it refused honest
    /// records as dated minutes in the future for the whole run. Such offsets now say they are not determined (the
    /// agent then links to more peers); one more honest peer's sample decides.
    @Test func offsetsThatAllDifferAreNotDeterminedUntilOneMoreSampleAgrees() {
        let behind: Int64 = 332_250
        var m98 = ClockOffset()
        let peers: [(String, Int64)] = [("m27", 446_013), ("m32", 0), ("m63", -570_840), ("m97", 219_784)]
        for (peer, error) in peers {
            m98.observe(peer: peer, peerWallMillis: 5_000_000 + error, localWallMillis: 5_000_000 - behind)
        }
        #expect(!m98.determined)
        #expect(m98.correctionMillis == 0)
        // A fifth link, to another honest member: two offsets agree on 332 s, the largest group.
        let moved = m98.observe(peer: "m71", peerWallMillis: 6_000_020, localWallMillis: 6_000_000 - behind)
        #expect(moved)
        #expect(m98.determined)
        #expect(abs(m98.correctionMillis - behind) < ClockOffset.threshold, "\(m98.correctionMillis)")
        // A member alone, and one whose every peer agrees, are determined.
        #expect(ClockOffset().determined)
        var one = ClockOffset()
        one.observe(peer: "a", peerWallMillis: 1_000, localWallMillis: 1_000)
        #expect(one.determined)
        // One peer that disagrees with our own clock: nothing says which is right.
        one.observe(peer: "a", peerWallMillis: 1_000 + Self.tenMinutes, localWallMillis: 1_000)
        #expect(!one.determined)
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

/// How far this host's wall clock is from its peers', estimated from the wall clock each peer puts in its `Hello`
/// (protocol 2.5), so that a member whose clock is off stamps its records and judges others' in the fleet's time
/// instead of being refused (or refusing everyone) by the record skew rule (docs/security.md, "Clocks").
///
/// The offsets are one per peer last heard (its clock minus ours) plus our own (zero). The correction is a middle
/// value of them that more than half of all the offsets agree with (within ``threshold``): one member with a wrong
/// clock among honest ones moves only itself (the others' middle is zero), and while the peers heard so far disagree
/// (two peers, one of them wrong), nobody moves. Without such a majority (some of our peers are off too, each its own
/// way), the largest group of offsets that agree wins if it is one group and larger than the group agreeing with our
/// own clock: a member 5 minutes behind whose peers are three honest ones and two others off by their own amounts
/// follows the three (the simulation campaign found members left uncorrected, refusing every record, that way). When
/// even that does not decide (every offset its own, or two groups of one size), the offsets are not ``determined``,
/// and the agent links to more peers for more samples until they are: the simulation campaign's seed 7662 had a member
/// 332 s behind whose four links were one honest member and three off by their own amounts (offsets −239, 332, 552
/// and 778 s, and its own 0), and it refused honest records for the whole run.
///
/// Below ``threshold`` the correction is zero (hosts kept by NTP do not jitter), and it never exceeds ``limit`` either
/// way: a clock further off than that is the operator's to fix, and a few hostile peers cannot move a member's time
/// by more. The offsets include the one-way delay of the `Hello` (milliseconds), well inside the threshold, and the
/// correction moves only by more than the threshold.
public struct ClockOffset: Sendable, Equatable {
    public static let threshold: Int64 = 2_000
    public static let limit: Int64 = 3_600_000
    /// Peers remembered; the oldest sample goes first.
    public static let maxSamples = 256

    private var samples: [String: Int64] = [:]
    private var order: [String] = []
    /// The correction to add to this host's wall clock (Unix ms) to get the fleet's time.
    public private(set) var correctionMillis: Int64 = 0
    /// The median before clamping to ``limit`` (what the operator should hear about).
    public private(set) var measuredMillis: Int64 = 0
    /// Whether the offsets heard say where the fleet's clock is (a majority, or a single largest group, agrees). While
    /// they do not, the correction is zero and more peers' `Hello`s are wanted.
    public private(set) var determined = true

    public init() {}

    /// A peer's `Hello` said `peerWallMillis` when this host's own (uncorrected) clock read `localWallMillis`. Returns
    /// whether the correction changed.
    @discardableResult
    public mutating func observe(peer: String, peerWallMillis: Int64, localWallMillis: Int64) -> Bool {
        if samples.updateValue(peerWallMillis &- localWallMillis, forKey: peer) == nil {
            order.append(peer)
            if order.count > Self.maxSamples { samples[order.removeFirst()] = nil }
        }
        let found = Self.fleetOffset(of: (Array(samples.values) + [0]).sorted())
        determined = found != nil
        measuredMillis = found ?? 0
        let before = correctionMillis
        let candidate = abs(measuredMillis) < Self.threshold ? 0 : min(max(measuredMillis, -Self.limit), Self.limit)
        // Moves only by more than the threshold: each new session's delay differs by milliseconds, and every move
        // re-signs our record.
        if candidate == 0 || abs(candidate &- before) >= Self.threshold { correctionMillis = candidate }
        return correctionMillis != before
    }

    /// The offset the fleet's clock is at, from sorted offsets that include our own zero; nil when they do not say.
    static func fleetOffset(of all: [Int64]) -> Int64? {
        // How many offsets agree with each one: those within the threshold either way (a window over the sorted list).
        var agreeing = [Int](repeating: 0, count: all.count)
        var low = 0
        var high = 0
        for (i, offset) in all.enumerated() {
            while offset &- all[low] >= threshold { low += 1 }
            while high < all.count, all[high] &- offset < threshold { high += 1 }
            agreeing[i] = high - low
        }
        // The lower and the upper middle (the same for an odd count); the first a majority agrees with.
        for middle in [(all.count - 1) / 2, all.count / 2] where agreeing[middle] * 2 > all.count { return all[middle] }
        // Else the largest group, if it is one group: our own clock when it is in that group, else its members'
        // middle. Two groups of that size, or offsets that all differ, do not say.
        let most = agreeing.max() ?? 0
        let leaders = all.indices.filter { agreeing[$0] == most }
        guard let first = leaders.first, let last = leaders.last, all[last] &- all[first] < threshold else { return nil }
        if let own = all.firstIndex(of: 0), agreeing[own] == most { return 0 }
        return all[leaders[(leaders.count - 1) / 2]]
    }
}

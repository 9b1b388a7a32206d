/// How far this host's wall clock is from its peers', estimated from the wall clock each peer puts in its `Hello`
/// (protocol 2.5), so that a member whose clock is off stamps its records and judges others' in the fleet's time
/// instead of being refused (or refusing everyone) by the record skew rule (docs/security.md, "Clocks").
///
/// The offsets are one per peer last heard (its clock minus ours) plus our own (zero). The correction is a middle
/// value of them that more than half of all the offsets agree with (within ``threshold``): one member with a wrong
/// clock among honest ones moves only itself (the others' middle is zero), and while the peers heard so far disagree
/// (two peers, one of them wrong), nobody moves. Below ``threshold`` the correction is zero (hosts kept by NTP do not
/// jitter), and it never exceeds ``limit`` either way: a clock further off than that is the operator's to fix, and a
/// few hostile peers cannot move a member's time by more. The offsets include the one-way delay of the `Hello`
/// (milliseconds), well inside the threshold, and the correction moves only by more than the threshold.
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

    public init() {}

    /// A peer's `Hello` said `peerWallMillis` when this host's own (uncorrected) clock read `localWallMillis`. Returns
    /// whether the correction changed.
    @discardableResult
    public mutating func observe(peer: String, peerWallMillis: Int64, localWallMillis: Int64) -> Bool {
        if samples.updateValue(peerWallMillis &- localWallMillis, forKey: peer) == nil {
            order.append(peer)
            if order.count > Self.maxSamples { samples[order.removeFirst()] = nil }
        }
        let all = (Array(samples.values) + [0]).sorted()
        // The lower and the upper middle (the same for an odd count); the first a majority agrees with, else none.
        let majority = { (candidate: Int64) in all.filter { abs($0 &- candidate) < Self.threshold }.count * 2 > all.count }
        let middles = [all[(all.count - 1) / 2], all[all.count / 2]]
        measuredMillis = middles.first(where: majority) ?? 0
        let before = correctionMillis
        let candidate = abs(measuredMillis) < Self.threshold ? 0 : min(max(measuredMillis, -Self.limit), Self.limit)
        // Moves only by more than the threshold: each new session's delay differs by milliseconds, and every move
        // re-signs our record.
        if candidate == 0 || abs(candidate &- before) >= Self.threshold { correctionMillis = candidate }
        return correctionMillis != before
    }
}

import DmirrCore

/// Bulk transfers sharing bandwidth fairly (processor sharing), in virtual time: each transfer runs at the smallest of
/// its receiver's bandwidth and its sender's bandwidth divided among the sender's active transfers. Rates are
/// recomputed whenever a transfer starts or ends, so completion times are exact for this model.
struct FluidNetwork {
    struct Transfer {
        var id: Int
        var source: Int  // -1 = upstream
        var destination: Int
        var remaining: Double
        var rate: Double = 0
        var transferred: Double = 0
    }

    /// Bytes per second each endpoint can send (index = node; upstream separately) and receive.
    var sendBandwidth: [Double]
    var receiveBandwidth: [Double]
    var upstreamBandwidth: Double
    private(set) var active: [Int: Transfer] = [:]
    private var nextID = 0
    private var lastUpdate: Double = 0
    private(set) var upstreamBytes: Double = 0
    private(set) var peerBytes: Double = 0

    init(sendBandwidth: [Double], receiveBandwidth: [Double], upstreamBandwidth: Double) {
        self.sendBandwidth = sendBandwidth
        self.receiveBandwidth = receiveBandwidth
        self.upstreamBandwidth = upstreamBandwidth
    }

    func count(from source: Int) -> Int { active.values.reduce(0) { $0 + ($1.source == source ? 1 : 0) } }

    /// Moves every transfer forward to `now`.
    mutating func advance(to now: Double) {
        let dt = now - lastUpdate
        if dt > 0 {
            // In id order: the byte counters are floating-point sums, and a dictionary's order differs between
            // instances, which would make two runs of one seed differ in their last digits.
            for id in active.keys.sorted() {
                let moved = min(active[id]!.remaining, active[id]!.rate * dt)
                active[id]!.remaining -= moved
                active[id]!.transferred += moved
                if active[id]!.source < 0 { upstreamBytes += moved } else { peerBytes += moved }
            }
        }
        lastUpdate = now
    }

    mutating func start(source: Int, destination: Int, bytes: Double, now: Double) -> Int {
        advance(to: now)
        nextID += 1
        active[nextID] = Transfer(id: nextID, source: source, destination: destination, remaining: max(bytes, 1))
        recomputeRates()
        return nextID
    }

    @discardableResult
    mutating func stop(_ id: Int, now: Double) -> Transfer? {
        advance(to: now)
        let t = active.removeValue(forKey: id)
        recomputeRates()
        return t
    }

    private mutating func recomputeRates() {
        var perSource: [Int: Int] = [:]
        for t in active.values { perSource[t.source, default: 0] += 1 }
        for id in active.keys {
            let t = active[id]!
            let sending = t.source < 0 ? upstreamBandwidth : sendBandwidth[t.source]
            active[id]!.rate = min(receiveBandwidth[t.destination], sending / Double(perSource[t.source]!))
        }
    }

    /// How many bytes transfer `id` will have moved by `now` (without moving the network forward).
    func transferred(_ id: Int, at now: Double) -> Double? {
        active[id].map { $0.transferred + min($0.remaining, $0.rate * max(0, now - lastUpdate)) }
    }

    /// The next transfer to finish and when, if any.
    func nextCompletion() -> (id: Int, at: Double)? {
        var best: (Int, Double)?
        for t in active.values where t.rate > 0 {
            let at = lastUpdate + t.remaining / t.rate
            if best == nil || at < best!.1 || (at == best!.1 && t.id < best!.0) { best = (t.id, at) }
        }
        return best
    }
}

/// Timed events in time order; ties keep insertion order, so runs are exactly replayable.
struct EventQueue<Event> {
    /// One queued event: ordered by time, then by when it was pushed (the event itself takes no part).
    private struct Timed: Comparable {
        var at: Double
        var seq: Int
        var event: Event

        static func < (a: Timed, b: Timed) -> Bool { a.at != b.at ? a.at < b.at : a.seq < b.seq }
        static func == (a: Timed, b: Timed) -> Bool { a.at == b.at && a.seq == b.seq }
    }

    private var heap = MinHeap<Timed>()
    private var seq = 0

    var isEmpty: Bool { heap.isEmpty }
    var peekTime: Double? { heap.min?.at }

    mutating func push(_ event: Event, at: Double) {
        seq += 1
        heap.push(Timed(at: at, seq: seq, event: event))
    }

    mutating func pop() -> (at: Double, event: Event)? {
        heap.popMin().map { ($0.at, $0.event) }
    }
}


/// SplitMix64: small, fast, seeded; the simulator's only source of randomness.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

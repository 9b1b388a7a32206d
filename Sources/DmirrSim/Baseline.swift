/// The cron script dmirr replaces, on the same inputs: every mirror runs it hourly at its own minute, sleeps
/// `$RANDOM % 3000` seconds, and pulls the whole delta from upstream; when upstream is at its `max connections` the
/// pull fails (rsync exit 5) and waits for the next hour. Transfers share bandwidth exactly as in ``Simulation``.
public enum Baseline {
    public struct Result: Sendable {
        public var t50: Double?
        public var t90: Double?
        public var t100: Double?
        public var peakUpstreamConcurrency = 0
        public var upstreamCopies = 0.0
        public var refusals = 0
    }

    enum Event {
        case cron(Int)
        case transferCheck(generation: Int)
    }

    public static func run(_ scenario: Scenario) -> Result {
        var rng = SeededRandom(seed: scenario.seed ^ 0x5EED_BA5E)
        let n = scenario.nodes
        var network = FluidNetwork(sendBandwidth: Array(repeating: scenario.mirrorBandwidth, count: n),
                                   receiveBandwidth: Array(repeating: scenario.mirrorBandwidth, count: n),
                                   upstreamBandwidth: scenario.upstreamBandwidth)
        var queue = EventQueue<Event>()
        var has = Array(repeating: false, count: n)
        var running = Array(repeating: false, count: n)
        var reached: [Double] = []
        var result = Result()
        var generation = 0
        // Each mirror's cron minute; the first run after the push is the first that sees the new token.
        for i in 0..<n {
            let minute = Double.random(in: 0..<3600, using: &rng)
            var first = minute
            while first < scenario.pushAt { first += 3600 }
            queue.push(.cron(i), at: first)
        }
        func schedule(_ now: Double) {
            generation += 1
            if let next = network.nextCompletion() { queue.push(.transferCheck(generation: generation), at: max(now, next.at)) }
        }
        var pendingStart: [(at: Double, node: Int)] = []
        /// Sleeps that end by `time` start their rsync, in time order.
        func startSleepers(until time: Double) {
            pendingStart.sort { $0.at < $1.at }
            while let first = pendingStart.first, first.at <= time {
                pendingStart.removeFirst()
                // Completions due before this start happen first.
                network.advance(to: first.at)
                while let next = network.nextCompletion(), next.at <= first.at + 1e-9 {
                    network.advance(to: next.at)
                    complete(network.stop(next.id, now: next.at)!, at: next.at)
                }
                if network.count(from: -1) >= scenario.upstreamMaxConnections {
                    result.refusals += 1
                    running[first.node] = false  // exit 5; the next hour's cron tries again
                } else {
                    _ = network.start(source: -1, destination: first.node, bytes: scenario.delta, now: first.at)
                    result.peakUpstreamConcurrency = max(result.peakUpstreamConcurrency, network.count(from: -1))
                }
                schedule(first.at)
            }
        }
        func complete(_ t: FluidNetwork.Transfer, at time: Double) {
            has[t.destination] = true
            running[t.destination] = false
            reached.append(time - scenario.pushAt)
        }
        while let (now, event) = queue.pop(), now <= scenario.horizon {
            startSleepers(until: now)
            switch event {
            case .cron(let i):
                queue.push(.cron(i), at: now + 3600)
                // `ps | grep` lock: a run still in progress (sleeping or pulling) means this one exits.
                if !has[i], !running[i] {
                    running[i] = true
                    pendingStart.append((now + Double(Int.random(in: 0..<3000, using: &rng)), i))
                }
            case .transferCheck(let g):
                guard g == generation else { break }
                network.advance(to: now)
                while let next = network.nextCompletion(), next.at <= now + 1e-9 {
                    complete(network.stop(next.id, now: now)!, at: now)
                }
                schedule(now)
            }
            if reached.count == n { break }
        }
        reached.sort()
        func quantile(_ q: Double) -> Double? {
            let needed = Int((q * Double(n)).rounded(.up))
            return needed <= reached.count && needed > 0 ? reached[needed - 1] : nil
        }
        result.t50 = quantile(0.5)
        result.t90 = quantile(0.9)
        result.t100 = quantile(1.0)
        result.upstreamCopies = network.upstreamBytes / scenario.delta
        return result
    }
}

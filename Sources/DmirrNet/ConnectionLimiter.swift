import NIOCore
import Synchronization

/// Caps the peer listener's open connections, per remote address and in total, before any TLS work is spent on them.
/// A connection over a cap is closed at accept; the count of one falls when its channel closes.
public final class ConnectionLimiter: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Connections open at once from one IP address (a fleet member keeps one link; operators a few).
        public var perAddress: Int = 32
        /// Connections open at once in all.
        public var total: Int = 1024

        public init() {}

        public init(perAddress: Int, total: Int) {
            self.perAddress = perAddress
            self.total = total
        }
    }

    private struct Counts {
        var byAddress: [String: Int] = [:]
        var total = 0
    }

    public let limits: Limits
    private let counts = Mutex(Counts())

    public init(_ limits: Limits) {
        self.limits = limits
    }

    /// Why a connection was refused, or nil when it was admitted (and counted until `release`).
    public func admit(_ address: String) -> String? {
        counts.withLock { counts in
            if counts.total >= limits.total { return "\(counts.total) connections open, the listener's cap" }
            let mine = counts.byAddress[address, default: 0]
            if mine >= limits.perAddress { return "\(mine) connections open from \(address), the cap per address" }
            counts.total += 1
            counts.byAddress[address] = mine + 1
            return nil
        }
    }

    public func release(_ address: String) {
        counts.withLock { counts in
            counts.total -= 1
            let left = counts.byAddress[address, default: 1] - 1
            counts.byAddress[address] = left > 0 ? left : nil
        }
    }

    private let refusals = Mutex(0)

    /// Counts a refusal; true for the first and then every 1,000th (what is worth a log line).
    func noteRefusal() -> Bool {
        refusals.withLock { count in
            count += 1
            return count == 1 || count % 1000 == 0
        }
    }

    /// Open connections now (for tests and status).
    public var open: Int { counts.withLock { $0.total } }

    /// The address a connection counts against: the remote IP, without the port.
    static func key(of channel: any Channel) -> String {
        channel.remoteAddress?.ipAddress ?? "unknown"
    }
}

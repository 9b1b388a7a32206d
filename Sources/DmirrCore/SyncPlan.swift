import Crypto

/// Where a member pulls a token's tree from.
public enum PlanSource: Sendable, Hashable, CustomStringConvertible {
    case upstream
    case peer(String)

    /// As gossiped in `MemberRecord.source`: "upstream" or the node name.
    public init?(recordValue: String) {
        switch recordValue {
        case "": return nil
        case "upstream": self = .upstream
        default: self = .peer(recordValue)
        }
    }

    public var recordValue: String {
        switch self {
        case .upstream: "upstream"
        case .peer(let node): node
        }
    }

    public var description: String { recordValue }
}

/// The fleet's assignment for one upstream token, "slots by consensus" (docs/architecture.md §4). Every member computes it from
/// its own gossiped view; equal views give equal plans, and the plan's digest lets members see that they agree on the
/// part that needs agreeing: who pulls from upstream.
///
/// Rules, applied in this order:
/// 1. The slot order is the live members sorted by SHA-256(token ‖ 0 ‖ node), so it rotates with every token.
/// 2. A member that has published the token is in sync and may serve up to its `serveSlots` pulls.
/// 3. Pulls already running stay where they are (a plan never yanks a transfer that is making progress): a pull from
///    upstream counts against the upstream slots, a pull from an in-sync live peer takes one of its serving slots.
///    A pull from a member that is no longer live or in sync is dropped and the member is planned afresh.
/// 4. Every other member, in slot order, takes a free serving slot of an in-sync peer it does not avoid (the peer
///    with the most free slots, ties to the earlier in slot order); failing that an upstream slot while fewer than
///    `upstreamSlots` are used (and it does not avoid upstream); failing that it waits.
public struct SyncPlan: Sendable, Equatable {
    /// One live member as the view shows it.
    public struct Member: Sendable, Equatable {
        public var node: String
        public var publishedToken: String
        /// The pull it reports running for this plan's token, if any.
        public var pulling: PlanSource?
        public var serveSlots: Int
        /// Sources it gave up on for this token (failed, too slow, refused); the plan does not offer them again.
        public var avoid: Set<PlanSource>

        public init(node: String, publishedToken: String, pulling: PlanSource? = nil, serveSlots: Int, avoid: Set<PlanSource> = []) {
            self.node = node
            self.publishedToken = publishedToken
            self.pulling = pulling
            self.serveSlots = serveSlots
            self.avoid = avoid
        }
    }

    public enum Assignment: Sendable, Hashable {
        case inSync
        case pull(PlanSource)
        case wait
    }

    public let token: String
    /// Live members in slot order.
    public let order: [String]
    public let assignments: [String: Assignment]
    /// A short hex digest of the token and the upstream pulls in slot order: equal exactly when two members agree on
    /// who uses the upstream slots. Peer assignments are left out on purpose: a peer's serving limit is enforced by its
    /// own daemon, and leaving them out keeps the digest (a gossiped field) from changing with every finished pull.
    public let digest: String

    /// - Parameter order: the slot order of exactly these members for `token`, when the caller kept it from an earlier
    ///   plan (``slotOrder(token:nodes:)`` costs a SHA-256 per member); computed when nil.
    public init(token: String, members: [Member], upstreamSlots: Int, order knownOrder: [String]? = nil) {
        self.token = token
        var byNode: [String: Member] = [:]
        for m in members { byNode[m.node] = m }
        let order = knownOrder ?? Self.slotOrder(token: token, nodes: Array(byNode.keys))
        var assignments: [String: Assignment] = [:]
        var freeSlots: [String: Int] = [:]
        for node in order where byNode[node]!.publishedToken == token {
            assignments[node] = .inSync
            freeSlots[node] = max(0, byNode[node]!.serveSlots)
        }
        var upstreamUsed = 0
        // Running pulls first, so that new ones only take what is left.
        for node in order where assignments[node] == nil {
            switch byNode[node]!.pulling {
            case .upstream?:
                assignments[node] = .pull(.upstream)
                upstreamUsed += 1
            case .peer(let source)? where freeSlots[source] != nil && source != node:
                assignments[node] = .pull(.peer(source))
                freeSlots[source]! -= 1
            case .peer?, nil:
                break
            }
        }
        // Peers with free slots, bucketed by how many are free, each bucket in slot order: the peer with the most free
        // slots (ties to the earlier in slot order) is the first non-avoided one of the highest non-empty bucket. This
        // keeps a plan O(N log N) when hundreds of members are in sync at once.
        var buckets: [Int: [String]] = [:]
        var position: [String: Int] = [:]
        for (i, node) in order.enumerated() {
            position[node] = i
            if let free = freeSlots[node], free > 0 { buckets[free, default: []].append(node) }
        }
        var highest = buckets.keys.max() ?? 0
        for node in order where assignments[node] == nil {
            let avoid = byNode[node]!.avoid
            var chosen: (free: Int, index: Int)?
            var k = highest
            while k > 0, chosen == nil {
                if let bucket = buckets[k], let i = bucket.firstIndex(where: { !avoid.contains(.peer($0)) }) { chosen = (k, i) }
                k -= 1
            }
            if let (free, index) = chosen {
                let peer = buckets[free]!.remove(at: index)
                assignments[node] = .pull(.peer(peer))
                if free > 1 {
                    let mine = position[peer]!
                    let at = (buckets[free - 1] ?? []).partitionPoint { position[$0]! < mine }
                    buckets[free - 1, default: []].insert(peer, at: at)
                }
                while highest > 0, buckets[highest]?.isEmpty ?? true { highest -= 1 }
            } else if upstreamUsed < upstreamSlots, !avoid.contains(.upstream) {
                assignments[node] = .pull(.upstream)
                upstreamUsed += 1
            } else {
                assignments[node] = .wait
            }
        }
        self.order = order
        self.assignments = assignments
        self.digest = Self.digest(token: token, order: order, assignments: assignments)
    }

    /// Members sorted by SHA-256(token ‖ 0x00 ‖ node).
    public static func slotOrder(token: String, nodes: [String]) -> [String] {
        nodes.map { (slotKey(token: token, node: $0), $0) }.sorted(by: precedes).map(\.1)
    }

    /// A member's sort key in a slot order: SHA-256(token ‖ 0x00 ‖ node).
    static func slotKey(token: String, node: String) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: Array(token.utf8) + [0] + Array(node.utf8))
        return Array(hasher.finalize())
    }

    /// Slot order on (key, node) pairs: by key, ties (never seen in SHA-256) by node.
    static func precedes(_ a: ([UInt8], String), _ b: ([UInt8], String)) -> Bool {
        a.0.lexicographicallyPrecedes(b.0) || (a.0 == b.0 && a.1 < b.1)
    }

    static func digest(token: String, order: [String], assignments: [String: Assignment]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array(token.utf8) + [0])
        for node in order where assignments[node] == .pull(.upstream) {
            hasher.update(data: Array(node.utf8) + [0])
        }
        return hasher.finalize().prefix(8).map { byte in
            let hex = Array("0123456789abcdef".utf8)
            return String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 15)]], as: UTF8.self)
        }.joined()
    }

    /// Members pulling from upstream in this plan.
    public var upstreamPulls: [String] { order.filter { assignments[$0] == .pull(.upstream) } }

    /// Members pulling from `node`.
    public func pulls(from node: String) -> [String] { order.filter { assignments[$0] == .pull(.peer(node)) } }
}

extension Array {
    /// The first index whose element is not `belongsBefore` (the array partitioned so that those come first).
    func partitionPoint(_ belongsBefore: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsBefore(self[mid]) { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

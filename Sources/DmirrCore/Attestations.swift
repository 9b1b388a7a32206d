/// Counting attestations: members' signed claims "I published token T from my own upstream pull, and its manifest
/// has root R" (``MemberRecord/attestToken``, ``MemberRecord/attestRoot``).
public enum Attestations {
    /// One member's claim.
    public struct Claim: Sendable, Equatable {
        public var node: String
        public var token: String
        public var root: String

        public init(node: String, token: String, root: String) {
            self.node = node
            self.token = token
            self.root = root
        }
    }

    /// The root of `token` a member may accept from a peer: attested by at least `needed` distinct members and by more
    /// of them than any other root of `token`. A set of at most one root; empty when no root qualifies (too few
    /// attestations, or a tie between roots: members disagree about what upstream served, and none of them decides).
    public static func acceptedRoots(for token: String, claims: [Claim], needed: Int) -> Set<String> {
        var authors: [String: Set<String>] = [:]
        for claim in claims where claim.token == token && !claim.root.isEmpty && !token.isEmpty {
            authors[claim.root, default: []].insert(claim.node)
        }
        // A member attests one root at a time; one that somehow appears under two counts for neither.
        var seen: [String: Int] = [:]
        for nodes in authors.values { for node in nodes { seen[node, default: 0] += 1 } }
        let counts = authors.mapValues { nodes in nodes.filter { seen[$0] == 1 }.count }
        let ranked = counts.sorted { $0.value > $1.value }
        guard let best = ranked.first, best.value >= max(1, needed) else { return [] }
        if ranked.count > 1, ranked[1].value == best.value { return [] }
        return [best.key]
    }
}

/// What a member record may hold, checked at receipt before anything of it is believed or relayed: every string,
/// list and count is capped, names follow the certificate rule, and claims dated in the future beyond the allowed clock
/// skew are refused. A record that breaks a rule is dropped whole and its sender logged (proto/PROTOCOL.md lists the
/// caps).
public enum RecordPolicy {
    /// The caps. Generous for real fleets; tight enough that one member cannot make others hold or relay much.
    public enum Limit {
        public static let tokenBytes = 1024
        public static let urlBytes = 1024
        public static let addressBytes = 300
        public static let errorBytes = 1024
        public static let digestBytes = 64
        public static let avoid = 64
        public static let suspects = 256
        public static let serveSlots = 1024
        /// Allowed clock difference for timestamps a member puts in its record.
        public static let skewMillis: Int64 = 60_000
        /// The furthest in the future a record may say it expires.
        public static let lifetimeMillis: Int64 = 7 * 24 * 3_600_000
    }

    /// Why `record` must be refused, or nil. `nowMillis` is the receiver's wall clock (Unix ms).
    public static func problem(with record: MemberRecord, nowMillis: Int64) -> String? {
        func bytes(_ s: String) -> Int { s.utf8.count }
        guard PeerIdentity.isValidName(record.node) else { return "node name '\(record.node.prefix(80))' is not a valid name" }
        for (field, value, cap) in [
            ("published_token", record.publishedToken, Limit.tokenBytes), ("target_token", record.targetToken, Limit.tokenBytes),
            ("attest_token", record.attestToken, Limit.tokenBytes), ("rsync_url", record.rsyncURL, Limit.urlBytes),
            ("peer_address", record.peerAddress, Limit.addressBytes), ("last_error", record.lastError, Limit.errorBytes),
            ("plan_digest", record.planDigest, Limit.digestBytes),
        ] where bytes(value) > cap {
            return "\(field) has \(bytes(value)) bytes, over the cap of \(cap)"
        }
        if !record.attestRoot.isEmpty,
            record.attestRoot.utf8.count != 64 || !record.attestRoot.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) })
        {
            return "attest_root is not a SHA-256 in lower-case hex"
        }
        if record.attestRoot.isEmpty != record.attestToken.isEmpty { return "attest_token and attest_root come together" }
        // Clients are sent to this URL: only http(s), in the form the config allows.
        if !record.publicURL.isEmpty, MirrorList.publicURL(record.publicURL) != record.publicURL {
            return "public_url is not an http:// or https:// URL without query, fragment or trailing slash"
        }
        if !record.region.isEmpty, !MirrorList.isValidRegion(record.region) { return "region is not a region tag" }
        if !record.source.isEmpty, record.source != "upstream", !PeerIdentity.isValidName(record.source) {
            return "source is neither 'upstream' nor a node name"
        }
        if record.avoid.count > Limit.avoid { return "\(record.avoid.count) avoided sources, over the cap of \(Limit.avoid)" }
        if let bad = record.avoid.first(where: { $0 != "upstream" && !PeerIdentity.isValidName($0) }) {
            return "avoid lists '\(bad.prefix(80))', neither 'upstream' nor a node name"
        }
        if record.suspects.count > Limit.suspects {
            return "\(record.suspects.count) suspicions, over the cap of \(Limit.suspects)"
        }
        if let bad = record.suspects.first(where: { !PeerIdentity.isValidName($0.node) }) {
            return "a suspicion names '\(bad.node.prefix(80))', not a valid name"
        }
        if record.serveSlots > Limit.serveSlots || record.serving > Limit.serveSlots {
            return "serving counts over the cap of \(Limit.serveSlots)"
        }
        if let p = record.progress, !(p >= 0 && p <= 1) { return "progress \(p) is outside 0…1" }
        let latest = nowMillis + Limit.skewMillis
        if record.targetSeenMillis > latest {
            return "target_seen is \((record.targetSeenMillis - nowMillis) / 1000) s in the future"
        }
        if let last = record.lastSyncMillis, last > latest {
            return "last_sync is \((last - nowMillis) / 1000) s in the future"
        }
        if record.expiresMillis == 0 { return "the record has no expiry" }
        if record.expiresMillis < nowMillis - Limit.skewMillis {  // (subtracting: a hostile Int64.max must not overflow)
            return "the record expired \((nowMillis - record.expiresMillis) / 1000) s ago"
        }
        if record.expiresMillis > nowMillis + Limit.lifetimeMillis + Limit.skewMillis {
            return "the record claims to be valid for more than \(Limit.lifetimeMillis / 86_400_000) days"
        }
        return nil
    }
}

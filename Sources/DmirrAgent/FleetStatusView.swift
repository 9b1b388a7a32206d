import DmirrWire
import Foundation

/// An agent's status answer as the operator contract shows it: the members as rows, and the JSON document of
/// `dmirr status --json` (the same bytes every consumer of that document gets).
public struct FleetStatusView: Sendable {
    public let response: WireStatusResponse

    public init(_ response: WireStatusResponse) { self.response = response }

    public struct Row: Sendable {
        public var node: String
        public var state: String
        public var token: String
        public var source: String?
        public var progress: Double?
        public var lastSync: Date?
        public var lastError: String?
        public var position: Int?
        /// Where clients fetch its tree, and its region tag (protocol 2.4; nil when not given).
        public var publicURL: String?
        public var region: String?
    }

    /// The members, those with a plan position first in plan order, then by name.
    public var rows: [Row] {
        response.members.map { m in
            let r = m.record
            let state: String = m.liveness == "alive" ? Self.stateName(r.syncState) : m.liveness
            return Row(
                node: r.node, state: state, token: r.publishedToken, source: r.source.isEmpty ? nil : r.source,
                progress: r.progress >= 0 ? Double(r.progress) : nil,
                lastSync: r.lastSyncUnixMs > 0 ? Date(timeIntervalSince1970: Double(r.lastSyncUnixMs) / 1000) : nil,
                lastError: r.lastError.isEmpty ? nil : r.lastError, position: m.position > 0 ? Int(m.position) : nil,
                publicURL: r.publicURL.isEmpty ? nil : r.publicURL, region: r.region.isEmpty ? nil : r.region)
        }.sorted { ($0.position ?? .max, $0.node) < ($1.position ?? .max, $1.node) }
    }

    public static func stateName(_ s: WireSyncState) -> String {
        switch s {
        case .inSync: "in_sync"
        case .waiting: "waiting"
        case .syncing: "syncing"
        case .failed: "failed"
        case .behind, .unspecified, .UNRECOGNIZED: "behind"
        }
    }

    /// Whether the answering node holds the target token.
    public var thisNodeInSync: Bool {
        guard let me = response.members.first(where: { $0.record.node == response.node })?.record else { return false }
        return !response.targetToken.isEmpty && me.publishedToken == response.targetToken
    }

    /// RFC 3339 in UTC, whole seconds (`2026-12-02T01:54:41Z`). A format style, not a formatter made per call: the
    /// document has a date per member, and `/status.json` is scraped.
    public static func rfc3339(_ d: Date) -> String {
        d.formatted(Date.ISO8601FormatStyle(timeZone: .gmt))
    }

    /// When the answering node's own certificate expires (protocol 2.6; nil from an older agent).
    public var certificateNotAfter: Date? {
        response.certificateNotAfterUnixMs > 0 ? Date(timeIntervalSince1970: Double(response.certificateNotAfterUnixMs) / 1000) : nil
    }

    /// The `dmirr status --json` document (docs/architecture.md §5), keys sorted, pretty-printed; `now` judges whether
    /// the answering node's certificate has expired.
    public func json(now: Date = Date()) -> String {
        let members: [[String: Any]] = rows.map { r in
            [
                "node": r.node, "state": r.state, "token": r.token.isEmpty ? NSNull() as Any : r.token as Any, "position": r.position ?? NSNull() as Any,
                "source": r.source ?? NSNull(), "progress": r.progress ?? NSNull(),
                "last_sync": r.lastSync.map(Self.rfc3339) ?? NSNull(), "last_error": r.lastError ?? NSNull(),
                "public_url": r.publicURL ?? NSNull(), "region": r.region ?? NSNull(),
            ]
        }
        let object: [String: Any] = [
            "fleet": response.fleet, "node": response.node,
            "target": [
                "token": response.targetToken.isEmpty ? NSNull() as Any : response.targetToken as Any,
                "seen_at": response.targetSeenUnixMs > 0
                    ? Self.rfc3339(Date(timeIntervalSince1970: Double(response.targetSeenUnixMs) / 1000)) as Any : NSNull() as Any,
            ],
            "plan": [
                "token": response.planToken.isEmpty ? NSNull() as Any : response.planToken as Any,
                "digest": response.planDigest.isEmpty ? NSNull() as Any : response.planDigest as Any,
                "agreed": response.planAgreed,
            ],
            "members": members,
            "certificate": [
                "not_after": certificateNotAfter.map(Self.rfc3339) ?? NSNull() as Any,
                "expired": certificateNotAfter.map { $0 <= now } ?? NSNull() as Any,
            ],
        ]
        // Only strings, numbers, booleans, nulls, arrays and dictionaries: serialization cannot fail.
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

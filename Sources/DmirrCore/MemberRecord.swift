/// What a member says about itself (proto `MemberRecord`). Authored only by `node`; travels signed.
public struct MemberRecord: Sendable, Equatable {
    /// A member's own view of its sync (docs/architecture.md §5 `state`, minus the liveness states the others judge).
    public enum SyncState: String, Sendable, Equatable, CaseIterable {
        case inSync = "in_sync"
        case waiting
        case syncing
        case behind
        case failed
    }

    public var node: String
    /// host:port of its peer listener.
    public var peerAddress: String = ""
    public var rsyncURL: String = ""
    public var generation: UInt64
    public var heartbeat: UInt64 = 0
    public var syncState: SyncState = .behind
    public var publishedToken: String = ""
    public var targetToken: String = ""
    /// "upstream", a node name, or "" when not syncing.
    public var source: String = ""
    /// 0…1 while syncing.
    public var progress: Double?
    public var serving: Int = 0
    public var lastError: String = ""
    /// Unix milliseconds of its last successful sync; nil = never.
    public var lastSyncMillis: Int64?
    /// Unix milliseconds when `targetToken` was first seen at upstream (orders tokens, which are opaque).
    public var targetSeenMillis: Int64 = 0
    /// How many peers it serves at once.
    public var serveSlots: Int = 0
    /// Sources it avoids for its target token ("upstream" or node names).
    public var avoid: [String] = []
    /// The digest of the sync plan it computed for its target token ("" when none).
    public var planDigest: String = ""
    /// The token this member published from its own upstream pull, and the root hash of that tree's manifest ("" when
    /// none): an attestation others count before they trust a peer's copy (``TreeManifest``).
    public var attestToken: String = ""
    public var attestRoot: String = ""
    /// Unix milliseconds after which nobody may believe or relay this record (protocol 2). Its author re-signs long
    /// before: a record that outlives it is one its author stopped renewing. 0: none given (refused at receipt).
    public var expiresMillis: Int64 = 0
    /// Where clients fetch its tree over HTTP(S), without a trailing slash ("" = not listed for clients); protocol 2.4.
    public var publicURL: String = ""
    /// Its location tag for clients ("" = none); protocol 2.4.
    public var region: String = ""
    /// Members this node has lost direct contact with, at the version it last held of each (see ``Membership``).
    public var suspects: [Suspicion] = []

    public init(node: String, generation: UInt64) {
        self.node = node
        self.generation = generation
    }

    public var version: RecordVersion { RecordVersion(generation: generation, heartbeat: heartbeat) }
}

/// One member's claim that it lost contact with another, as of that member's record version `version`. A newer
/// record of the suspect refutes it.
public struct Suspicion: Sendable, Equatable {
    public var node: String
    public var version: RecordVersion

    public init(node: String, version: RecordVersion) {
        self.node = node
        self.version = version
    }
}

/// Which of two records for one node is newer: a later generation (agent restart) wins, then a higher heartbeat.
public struct RecordVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var generation: UInt64
    public var heartbeat: UInt64

    public init(generation: UInt64, heartbeat: UInt64) {
        self.generation = generation
        self.heartbeat = heartbeat
    }

    public static func < (a: Self, b: Self) -> Bool { (a.generation, a.heartbeat) < (b.generation, b.heartbeat) }
    public var description: String { "\(generation).\(heartbeat)" }
}

/// How the others judge a member, from how long its record has not advanced.
public enum Liveness: String, Sendable, Equatable, CaseIterable {
    case alive
    case suspect
    case down
}

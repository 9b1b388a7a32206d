/// dmirr's configuration (docs/architecture.md §5), validated. Build one with ``ConfigLoader``.
public struct Config: Sendable, Equatable {
    /// This mirror's name in the fleet; must match its certificate.
    public var node: String
    /// The fleet's name; must match the fleet CA.
    public var fleet: String
    public var upstream: Upstream
    public var mirror: Mirror
    public var listen: Listen
    public var tls: TLS?
    public var peers: Peers
    public var state: State

    public struct Upstream: Sendable, Equatable {
        /// `rsync://host[:port]/module[/path]` or an absolute local directory.
        public var url: RsyncLocation
        /// The token file, relative to the tree root (`CURRENT`).
        public var tokenFile: String
        public var poll: Duration
        /// Fleet-wide: how many mirrors may pull from upstream at once.
        public var slots: Int
        /// rsync's I/O timeout (`--timeout`).
        public var timeout: Duration
        /// rsync's daemon connection timeout (`--contimeout`).
        public var connectTimeout: Duration
        /// Optional `--password-file` for daemons with `auth users`.
        public var passwordFile: String?
        /// Upstream's OpenPGP public key (armored or binary). When set, every `repodata/repomd.xml` must carry a
        /// `repomd.xml.asc` that `gpgv` accepts under this key before anything is published, from upstream or a peer.
        public var signingKey: String? = nil
        /// Publish a token this mirror has already superseded, when upstream really went back (an agent's runs, and
        /// `dmirr sync` without `--allow-rollback`). Off: such a run fails and the mirror keeps its newer tree.
        public var allowRollback = false
    }

    public enum PublishMode: String, Sendable, Equatable, CaseIterable {
        case inPlace = "in-place"
        case snapshot
    }

    public enum VerifyLevel: String, Sendable, Equatable, CaseIterable, Comparable {
        case none
        case metadata
        case packages

        private var rank: Int {
            switch self {
            case .none: 0
            case .metadata: 1
            case .packages: 2
            }
        }
        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rank < rhs.rank }
    }

    public struct Mirror: Sendable, Equatable {
        /// The served tree (a directory, or in snapshot mode a symlink that dmirr manages).
        public var path: String
        /// Where peers pull this mirror from.
        public var rsyncURL: String?
        public var serveSlots: Int
        public var excludeFrom: String?
        /// Paths synced in stage 2, as rsync patterns (default `repodata/`).
        public var metadata: [String]
        public var publish: PublishMode
        public var verify: VerifyLevel
        /// Extra rsync arguments, checked against ``RsyncArgumentPolicy``.
        public var rsyncArgs: [String]
        /// Snapshot mode: how many complete snapshots to keep, the live one included.
        public var keepSnapshots: Int
        /// How many transfer passes one run may make while upstream's token keeps changing under it.
        public var maxPasses: Int
        /// Where clients fetch this mirror's tree over HTTP(S) (no trailing slash): listed in the fleet's mirrorlist
        /// and metalink while this mirror holds the current token. Nil: clients are never sent here.
        public var publicURL: String? = nil
        /// A short location tag (a country code like `DE`, or `eu-west`): clients that give theirs get nearer
        /// mirrors first.
        public var region: String? = nil
    }

    public struct Listen: Sendable, Equatable {
        public var peer: String?
        /// host:port other agents dial to reach this one (default: `peer`'s host with the bound port).
        public var advertise: String?
        public var control: String?
        public var metrics: String?
        /// `/mirrorlist` and `/metalink` requests a second each client address may make (0: no limit, for a listener
        /// behind a reverse proxy that limits clients itself: every request would come from the proxy's address).
        public var clientRate: Int = 10
        /// How many such requests a client may make at once before the rate applies.
        public var clientBurst: Int = 40
    }

    public struct TLS: Sendable, Equatable {
        public var ca: String
        public var cert: String
        public var key: String
        /// The fleet's revocation list (`dmirr cert revoke`), re-read whenever it changes; nil: only what peers relay.
        public var crl: String?

        public init(ca: String, cert: String, key: String, crl: String? = nil) {
            self.ca = ca
            self.cert = cert
            self.key = key
            self.crl = crl
        }
    }

    public struct Peers: Sendable, Equatable {
        public var seeds: [String]
        public var gossip: Duration
        public var suspectAfter: Duration
        public var downAfter: Duration
        /// How many distinct members must attest a token's manifest root, each from its own upstream pull, before this
        /// member takes that token's tree from a peer (or follows the token while upstream refuses it).
        public var attestations: Int = 2
    }

    public struct State: Sendable, Equatable {
        public var dir: String
    }
}

/// Where rsync reads from: a daemon URL or a local directory.
public enum RsyncLocation: Sendable, Equatable, CustomStringConvertible {
    /// `rsync://…`, stored without a trailing slash.
    case daemon(String)
    /// An absolute local path, stored without a trailing slash.
    case local(String)

    /// Parses a config value; nil when it is neither an `rsync://` URL nor an absolute path.
    public init?(_ text: String) {
        var t = text
        while t.count > 1, t.hasSuffix("/") { t.removeLast() }
        if t.hasPrefix("rsync://") {
            let rest = t.dropFirst("rsync://".count)
            // host[:port]/module at least
            guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex, rest.index(after: slash) != rest.endIndex
            else { return nil }
            self = .daemon(t)
        } else if t.hasPrefix("/") {
            self = .local(t)
        } else {
            return nil
        }
    }

    public var description: String {
        switch self {
        case .daemon(let url): url
        case .local(let path): path
        }
    }

    /// True for daemon URLs (rsync only accepts `--contimeout` for those).
    public var isDaemon: Bool {
        if case .daemon = self { return true }
        return false
    }

    /// The tree's contents as an rsync source argument (trailing slash: copy the contents, not the directory).
    public var treeArgument: String { description + "/" }

    /// A file inside the tree, as an rsync source argument.
    public func file(_ relativePath: String) -> String { description + "/" + relativePath }
}

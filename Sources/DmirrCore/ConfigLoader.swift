/// One thing wrong with a config file, naming the file, the key and the line.
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based; nil when the problem is a key that is missing altogether.
    public var line: Int?
    /// Dotted key (`upstream.url`), or nil for a syntax error that is not about one key.
    public var key: String?
    public var message: String

    public init(file: String, line: Int?, key: String?, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var s = file
        if let line { s += ":\(line)" }
        s += ": "
        if let key { s += "\(key): " }
        return s + message
    }
}

/// Turns config text into a validated ``Config``, or the full list of problems found.
///
/// Pure: the caller reads the file. Every problem is collected, not just the first, so `dmirr check` can list all.
public enum ConfigLoader {
    /// Every key the loader knows, by table ("" is the top level): for docs and tests that must name them all.
    public static var knownKeys: [String: Set<String>] { Reader.knownKeys }

    /// What a config is for. `dmirr sync` needs less than `dmirr agent`.
    public enum Purpose: Sendable {
        case sync
        case agent
        /// `dmirr announce`: an upstream operator's small file needs only `node`, `fleet`, `[tls]` and
        /// `[peers] seeds`; a mirror's own config works too.
        case announce
    }

    public static func load(text: String, file: String, purpose: Purpose = .sync) -> Result<Config, ConfigErrors> {
        let document: TOMLDocument
        do {
            document = try TOMLDocument(parsing: text)
        } catch {
            return .failure(ConfigErrors(problems: [ConfigProblem(file: file, line: error.line, key: nil, message: error.message)]))
        }
        var reader = Reader(document: document, file: file)
        let config = reader.readConfig(purpose: purpose)
        if reader.problems.isEmpty, let config { return .success(config) }
        return .failure(ConfigErrors(problems: reader.problems))
    }
}

/// All problems found in one config file.
public struct ConfigErrors: Error, Sendable, Equatable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    public init(problems: [ConfigProblem]) { self.problems = problems }
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

private struct Reader {
    let document: TOMLDocument
    let file: String
    var problems: [ConfigProblem] = []

    static let knownKeys: [String: Set<String>] = [
        "": ["node", "fleet"],
        "upstream": ["url", "token_file", "poll", "slots", "timeout", "connect_timeout", "password_file", "signing_key", "allow_rollback"],
        "mirror": [
            "path", "rsync_url", "serve_slots", "exclude_from", "metadata", "publish", "verify", "rsync_args", "public_url", "region",
            "keep_snapshots", "max_passes",
        ],
        "listen": ["peer", "advertise", "control", "metrics", "client_rate", "client_burst"],
        "tls": ["ca", "cert", "key", "crl"],
        "peers": ["seeds", "gossip", "suspect_after", "down_after", "attestations"],
        "state": ["dir"],
    ]

    init(document: TOMLDocument, file: String) {
        self.document = document
        self.file = file
    }

    mutating func problem(_ key: String?, line: Int?, _ message: String) {
        problems.append(ConfigProblem(file: file, line: line, key: key, message: message))
    }

    private static func dotted(_ table: String, _ key: String) -> String { table.isEmpty ? key : "\(table).\(key)" }

    /// The entry for `table.key`, if present.
    func entry(_ table: String, _ key: String) -> TOMLDocument.Entry? {
        document.table(table)?.entries[key]
    }

    mutating func string(_ table: String, _ key: String, required: Bool = false) -> (String, Int)? {
        guard let e = entry(table, key) else {
            if required { missing(table, key) }
            return nil
        }
        guard case .string(let s) = e.value else {
            problem(Self.dotted(table, key), line: e.line, "expected a string, found \(e.value.typeName)")
            return nil
        }
        if s.isEmpty {
            problem(Self.dotted(table, key), line: e.line, "must not be empty")
            return nil
        }
        return (s, e.line)
    }

    mutating func missing(_ table: String, _ key: String) {
        let hint = table.isEmpty ? "add `\(key) = \"…\"` at the top of the file" : "add `\(key) = …` under [\(table)]"
        problem(Self.dotted(table, key), line: nil, "required key is missing; \(hint)")
    }

    mutating func absolutePath(_ table: String, _ key: String, required: Bool = false) -> String? {
        guard let (s, line) = string(table, key, required: required) else { return nil }
        guard s.hasPrefix("/") else {
            problem(Self.dotted(table, key), line: line, "'\(s)' is a relative path; give an absolute path")
            return nil
        }
        var path = s
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        return path
    }

    mutating func integer(_ table: String, _ key: String, default value: Int, range: ClosedRange<Int>) -> Int {
        guard let e = entry(table, key) else { return value }
        guard case .integer(let n) = e.value else {
            problem(Self.dotted(table, key), line: e.line, "expected an integer, found \(e.value.typeName)")
            return value
        }
        guard range.contains(n) else {
            problem(Self.dotted(table, key), line: e.line, "\(n) is out of range \(range.lowerBound)…\(range.upperBound)")
            return value
        }
        return n
    }

    mutating func boolean(_ table: String, _ key: String, default value: Bool) -> Bool {
        guard let e = entry(table, key) else { return value }
        guard case .boolean(let b) = e.value else {
            problem(Self.dotted(table, key), line: e.line, "expected true or false, found \(e.value.typeName)")
            return value
        }
        return b
    }

    mutating func duration(_ table: String, _ key: String, default value: Duration) -> Duration {
        guard let (s, line) = string(table, key) else {
            if let e = entry(table, key), case .integer(let n) = e.value {
                // string() reported the type; add the hint operators need most.
                problems[problems.count - 1].message += " (write durations with a unit, like \"\(n)s\")"
            }
            return value
        }
        guard let d = DurationText.parse(s), d > .zero else {
            problem(Self.dotted(table, key), line: line, "'\(s)' is not a duration; use a number and a unit: 500ms, 30s, 5m, 1h, 1d")
            return value
        }
        return d
    }

    mutating func stringArray(_ table: String, _ key: String) -> ([String], Int)? {
        guard let e = entry(table, key) else { return nil }
        guard case .array(let items) = e.value else {
            problem(Self.dotted(table, key), line: e.line, "expected an array of strings, found \(e.value.typeName)")
            return nil
        }
        var out: [String] = []
        for item in items {
            guard case .string(let s) = item else {
                problem(Self.dotted(table, key), line: e.line, "expected an array of strings, found \(item.typeName) in it")
                return nil
            }
            out.append(s)
        }
        return (out, e.line)
    }

    mutating func choice<T: RawRepresentable & CaseIterable>(_ table: String, _ key: String, default value: T) -> T
    where T.RawValue == String {
        guard let (s, line) = string(table, key) else { return value }
        guard let v = T(rawValue: s) else {
            let options = T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            problem(Self.dotted(table, key), line: line, "'\(s)' is not one of \(options)")
            return value
        }
        return v
    }

    mutating func checkUnknownKeys() {
        for table in document.tables {
            guard let known = Self.knownKeys[table.name] else {
                let names = Self.knownKeys.keys.filter { !$0.isEmpty }.sorted().map { "[\($0)]" }.joined(separator: ", ")
                problem(table.name, line: table.line, "unknown table [\(table.name)]; known tables are \(names)")
                continue
            }
            for key in table.keys where !known.contains(key) {
                let line = table.entries[key]?.line
                var message = "unknown key"
                if table.name.isEmpty, Self.knownKeys.values.contains(where: { $0.contains(key) }) {
                    let owner = Self.knownKeys.first { $0.value.contains(key) }!.key
                    message += "; did you mean to put it under [\(owner)]?"
                } else {
                    message += "; known keys here are " + known.sorted().joined(separator: ", ")
                }
                problem(Self.dotted(table.name, key), line: line, message)
            }
        }
    }

    mutating func readConfig(purpose: ConfigLoader.Purpose) -> Config? {
        checkUnknownKeys()

        let node = name("", "node")
        let fleet = name("", "fleet")

        var upstreamURL: RsyncLocation?
        let mirrorKeysRequired = purpose != .announce
        if let (s, line) = string("upstream", "url", required: mirrorKeysRequired) {
            upstreamURL = RsyncLocation(s)
            if upstreamURL == nil {
                problem("upstream.url", line: line, "'\(s)' is neither rsync://HOST[:PORT]/MODULE[/PATH] nor an absolute path")
            }
        }
        var tokenFile = "CURRENT"
        if let (s, line) = string("upstream", "token_file") {
            if s.hasPrefix("/") || s.split(separator: "/").contains("..") || s.hasSuffix("/") {
                problem("upstream.token_file", line: line, "'\(s)' must be a file path relative to the tree root, without '..'")
            } else {
                tokenFile = s
            }
        }
        let upstream = Config.Upstream(
            url: upstreamURL ?? .local("/"),
            tokenFile: tokenFile,
            poll: duration("upstream", "poll", default: .seconds(300)),
            slots: integer("upstream", "slots", default: 2, range: 1...1000),
            timeout: duration("upstream", "timeout", default: .seconds(300)),
            connectTimeout: duration("upstream", "connect_timeout", default: .seconds(30)),
            passwordFile: absolutePath("upstream", "password_file"),
            signingKey: absolutePath("upstream", "signing_key"),
            allowRollback: boolean("upstream", "allow_rollback", default: false)
        )

        let path = absolutePath("mirror", "path", required: mirrorKeysRequired)
        var rsyncURL: String?
        if let (s, line) = string("mirror", "rsync_url") {
            if case .daemon = RsyncLocation(s) { rsyncURL = s } else {
                problem("mirror.rsync_url", line: line, "'\(s)' is not an rsync://HOST[:PORT]/MODULE URL")
            }
        }
        var publicURL: String?
        if let (s, line) = string("mirror", "public_url") {
            if let url = MirrorList.publicURL(s) { publicURL = url } else {
                problem("mirror.public_url", line: line, "'\(s)' is not an http:// or https:// URL without query or fragment (at most \(RecordPolicy.Limit.urlBytes) bytes)")
            }
        }
        var region: String?
        if let (s, line) = string("mirror", "region") {
            if MirrorList.isValidRegion(s) { region = s } else {
                problem("mirror.region", line: line, "'\(s)' is not a region tag: 1 to \(MirrorList.regionBytes) letters, digits, '-' or '_' (like \"DE\" or \"eu-west\")")
            }
        }
        var metadata = ["repodata/"]
        if let (list, line) = stringArray("mirror", "metadata") {
            if list.isEmpty || list.contains(where: \.isEmpty) {
                problem("mirror.metadata", line: line, "must list at least one non-empty rsync pattern, like \"repodata/\"")
            } else {
                metadata = list
            }
        }
        var rsyncArgs: [String] = []
        if let (list, line) = stringArray("mirror", "rsync_args") {
            for arg in list {
                if let reason = RsyncArgumentPolicy.rejection(for: arg) {
                    problem("mirror.rsync_args", line: line, "'\(arg)' is not allowed: \(reason)")
                }
            }
            rsyncArgs = list
        }
        let mirror = Config.Mirror(
            path: path ?? "/",
            rsyncURL: rsyncURL,
            serveSlots: integer("mirror", "serve_slots", default: 4, range: 0...1000),
            excludeFrom: absolutePath("mirror", "exclude_from"),
            metadata: metadata,
            publish: choice("mirror", "publish", default: .inPlace),
            verify: choice("mirror", "verify", default: .metadata),
            rsyncArgs: rsyncArgs,
            keepSnapshots: integer("mirror", "keep_snapshots", default: 3, range: 1...100),
            maxPasses: integer("mirror", "max_passes", default: 3, range: 1...20),
            publicURL: publicURL,
            region: region
        )
        if let path, path == "/" {
            problem("mirror.path", line: entry("mirror", "path")?.line, "refusing to mirror into '/'")
        }

        let listen = Config.Listen(
            peer: hostPort("listen", "peer"),
            advertise: hostPort("listen", "advertise"),
            control: absolutePath("listen", "control"),
            metrics: string("listen", "metrics").map(\.0),
            clientRate: integer("listen", "client_rate", default: 10, range: 0...100_000),
            clientBurst: integer("listen", "client_burst", default: 40, range: 1...100_000)
        )

        var tls: Config.TLS?
        if document.table("tls") != nil || purpose == .agent || purpose == .announce {
            let ca = absolutePath("tls", "ca", required: true)
            let cert = absolutePath("tls", "cert", required: true)
            let key = absolutePath("tls", "key", required: true)
            let crl = absolutePath("tls", "crl")
            if let ca, let cert, let key { tls = .init(ca: ca, cert: cert, key: key, crl: crl) }
        }

        let seeds = stringArray("peers", "seeds")?.0 ?? []
        let peers = Config.Peers(
            seeds: seeds,
            gossip: duration("peers", "gossip", default: .seconds(1)),
            suspectAfter: duration("peers", "suspect_after", default: .seconds(10)),
            downAfter: duration("peers", "down_after", default: .seconds(60)),
            attestations: integer("peers", "attestations", default: 2, range: 1...64)
        )
        if peers.suspectAfter >= peers.downAfter {
            problem("peers.down_after", line: entry("peers", "down_after")?.line ?? entry("peers", "suspect_after")?.line,
                    "must be longer than suspect_after")
        }

        if purpose == .agent, listen.peer == nil {
            missing("listen", "peer")
        }
        if purpose == .announce, seeds.isEmpty {
            missing("peers", "seeds")
        }
        for (i, seed) in seeds.enumerated() where HostPort(seed) == nil {
            problem("peers.seeds", line: entry("peers", "seeds")?.line, "seed \(i + 1) '\(seed)' is not HOST:PORT")
        }

        let stateDir = absolutePath("state", "dir", required: mirrorKeysRequired)
        if let stateDir, let path, stateDir == path || stateDir.hasPrefix(path + "/") {
            problem("state.dir", line: entry("state", "dir")?.line, "must not be inside mirror.path (clients would see it)")
        }

        guard let node, let fleet else { return nil }
        if purpose == .announce {
            // Nothing below is used to announce; a mirror's own file fills them in, an upstream operator's need not.
            return Config(node: node, fleet: fleet, upstream: upstream, mirror: mirror, listen: listen, tls: tls, peers: peers,
                          state: .init(dir: stateDir ?? "/"))
        }
        guard upstreamURL != nil, path != nil, let stateDir else { return nil }
        return Config(
            node: node, fleet: fleet, upstream: upstream, mirror: mirror, listen: listen, tls: tls, peers: peers,
            state: .init(dir: stateDir))
    }

    /// `host:port` (IPv6 in brackets); returns it unchanged when valid.
    mutating func hostPort(_ table: String, _ key: String) -> String? {
        guard let (s, line) = string(table, key) else { return nil }
        guard HostPort(s) != nil else {
            problem(Self.dotted(table, key), line: line, "'\(s)' is not HOST:PORT (port 0…65535; IPv6 as [::1]:7873)")
            return nil
        }
        return s
    }

    /// Node and fleet names: they end up in certificate URIs and directory names.
    mutating func name(_ table: String, _ key: String) -> String? {
        guard let (s, line) = string(table, key, required: true) else { return nil }
        guard PeerIdentity.isValidName(s) else {
            problem(Self.dotted(table, key), line: line,
                    "'\(s)' is not a valid name: use letters, digits, '-', '.', '_' (at most 63, starting with a letter or digit)")
            return nil
        }
        return s
    }
}

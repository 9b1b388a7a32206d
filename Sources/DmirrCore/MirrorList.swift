/// Which mirrors a client is sent to, for the fleet's mirrorlist and metalink (docs/clients.md): only members whose
/// published token is the fleet's target, each client in its own stable order (so load spreads and a client keeps its
/// order between requests), members of the client's region first. Pure: the agent gives it the members and the client.
public enum MirrorList {
    /// The most URLs one answer lists.
    public static let maxURLs = 100
    public static let regionBytes = 32
    public static let pathBytes = 255

    /// A member as the lists need it.
    public struct Member: Sendable, Equatable {
        public var node: String
        public var publicURL: String
        public var region: String
        public var publishedToken: String
        /// When it last published (Unix ms; 0: unknown): the newest token held is the one published last.
        public var lastSyncMillis: Int64

        public init(node: String, publicURL: String, region: String = "", publishedToken: String, lastSyncMillis: Int64 = 0) {
            self.node = node
            self.publicURL = publicURL
            self.region = region
            self.publishedToken = publishedToken
            self.lastSyncMillis = lastSyncMillis
        }
    }

    public struct Answer: Sendable, Equatable {
        /// The token every listed member publishes.
        public var token: String
        /// False when no member with a public URL holds the target: these hold the newest token anyone holds.
        public var current: Bool
        /// The members, in this client's order (at most ``maxURLs``).
        public var members: [Member]
    }

    /// Who may be listed at all, before any client's order: the members holding `target` (with a public URL), else
    /// those holding the token published most recently. The same for every client until the member view changes, so
    /// a busy listener computes it once per view, with each member's half of the order key.
    public struct Candidates: Sendable, Equatable {
        public var token: String
        public var current: Bool
        /// Sorted by node name.
        public var members: [Member]
        /// Per member: a hash of its node name, and its region lowercased.
        var nodeHashes: [UInt64]
        var regions: [String]
    }

    /// Nil when no member has a public URL at all.
    public static func candidates(_ members: [Member], target: String) -> Candidates? {
        let listed = members.filter { !$0.publicURL.isEmpty && !$0.publishedToken.isEmpty }
        var token = target
        var current = true
        if target.isEmpty || !listed.contains(where: { $0.publishedToken == target }) {
            guard let newest = listed.max(by: { ($0.lastSyncMillis, $0.node) < ($1.lastSyncMillis, $1.node) }) else { return nil }
            token = newest.publishedToken
            current = false
        }
        let holders = listed.filter { $0.publishedToken == token }.sorted { $0.node < $1.node }
        return Candidates(token: token, current: current, members: holders, nodeHashes: holders.map { mix(fnv($0.node.utf8, from: fnvOffset)) },
                          regions: holders.map { $0.region.lowercased() })
    }

    /// The members to list for a client (see ``candidates(_:target:)``). Nil when no member has a public URL at all.
    /// - Parameters:
    ///   - client: what tells clients apart for the order (their address); the same client gets the same order.
    ///   - region: the client's region, when it said; members tagged with it come first.
    public static func select(_ members: [Member], target: String, client: String, region: String?) -> Answer? {
        candidates(members, target: target).map { order($0, client: client, region: region) }
    }

    /// One client's answer from the candidates: its own stable order, its region first, at most ``maxURLs``.
    ///
    /// Each member's position key is `mix(mix(hash(client)) ^ hash(node))`: stable per client and node, spread by the
    /// finalizer. The keys are packed with the region flag on top and the member's index at the bottom, so one sort of
    /// integers orders a thousand members (ties of the truncated key fall back to the index, that is the node name).
    public static func order(_ candidates: Candidates, client: String, region: String?) -> Answer {
        let count = candidates.members.count
        let wanted = region?.lowercased() ?? ""
        let seed = mix(fnv(client.utf8, from: fnvOffset))
        let indexBits = UInt64(max(1, Int.bitWidth - max(0, count - 1).leadingZeroBitCount))
        var keys = [UInt64](repeating: 0, count: count)
        for index in 0..<count {
            let far: UInt64 = !wanted.isEmpty && candidates.regions[index] == wanted ? 0 : 1
            let rank = mix(seed ^ candidates.nodeHashes[index]) >> (1 + indexBits)
            keys[index] = far << 63 | rank << indexBits | UInt64(index)
        }
        keys.sort()
        let mask: UInt64 = (1 << indexBits) - 1
        return Answer(token: candidates.token, current: candidates.current,
                      members: keys.prefix(maxURLs).map { candidates.members[Int($0 & mask)] })
    }

    private static let fnvOffset: UInt64 = 0xcbf2_9ce4_8422_2325

    private static func fnv<Bytes: Sequence<UInt8>>(_ bytes: Bytes, from start: UInt64) -> UInt64 {
        var hash = start
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return hash
    }

    /// The 64-bit finalizer of MurmurHash3: FNV alone barely mixes inputs that differ in their last byte (addresses).
    private static func mix(_ value: UInt64) -> UInt64 {
        var hash = value
        hash ^= hash >> 33
        hash = hash &* 0xff51_afd7_ed55_8ccd
        hash ^= hash >> 33
        hash = hash &* 0xc4ce_b9fe_1a85_ec53
        hash ^= hash >> 33
        return hash
    }

    /// The URL of `path` (a repository directory, "" for the tree's root) under a member's public URL.
    public static func url(_ member: Member, path: String) -> String {
        path.isEmpty ? member.publicURL + "/" : member.publicURL + "/" + path + "/"
    }

    /// The plain-text mirrorlist: one URL per line; a comment line first when the list is not of the target token.
    public static func text(_ answer: Answer, path: String, target: String) -> String {
        var out = ""
        if !answer.current {
            out += "# dmirr: no mirror publishes the fleet's target token \(target.isEmpty ? "(unknown yet)" : target) yet; "
                + "these publish \(answer.token), the newest held\n"
        }
        for member in answer.members { out += url(member, path: path) + "\n" }
        return out
    }

    // MARK: Validation

    /// A public URL as configured or gossiped: http or https, a host, no query, fragment or spaces, at most
    /// `RecordPolicy.Limit.urlBytes`. Returns it without a trailing slash, or nil.
    public static func publicURL(_ s: String) -> String? {
        guard s.utf8.count <= RecordPolicy.Limit.urlBytes else { return nil }
        let lower = s.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") { rest = s.dropFirst(8) } else if lower.hasPrefix("http://") { rest = s.dropFirst(7) } else { return nil }
        guard let host = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first, !host.isEmpty,
            !s.contains(where: { $0 == "?" || $0 == "#" || $0 == " " || $0 == "\"" || $0 == "<" || $0 == ">" || $0.isNewline })
        else { return nil }
        var trimmed = s
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        return trimmed
    }

    public static func isValidRegion(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= regionBytes && s.utf8.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    }

    /// A repository path as clients ask for it (`el9/x86_64`): relative, segments of letters, digits, `.`, `_`, `+`,
    /// `-`, never `.` or `..`. Leading and trailing slashes are dropped; nil when it is not one.
    public static func repositoryPath(_ s: String) -> String? {
        let segments = s.split(separator: "/", omittingEmptySubsequences: true)
        guard s.utf8.count <= pathBytes else { return nil }
        for segment in segments {
            guard segment != ".", segment != "..",
                segment.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") })
            else { return nil }
        }
        return segments.joined(separator: "/")
    }

    private static func isAlphanumeric(_ b: UInt8) -> Bool {
        (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
    }
}

/// The metalink 3.0 document dnf (librepo) reads for `metalink=` in a `.repo` file, in the form MirrorManager serves
/// it: one `repomd.xml` with its size, modification time and SHA-256, and the mirrors' URLs of it. dnf fetches
/// `repomd.xml` from a mirror and refuses it unless its size and hash match, then takes the rest from that mirror.
public enum Metalink {
    public struct File: Sendable, Equatable {
        public var size: Int64
        /// Unix seconds.
        public var mtime: Int64
        public var sha256: String

        public init(size: Int64, mtime: Int64, sha256: String) {
            self.size = size
            self.mtime = mtime
            self.sha256 = sha256
        }
    }

    /// - Parameters:
    ///   - published: when the document was made, as an RFC 1123 date (`pubdate`).
    ///   - note: said in an XML comment after the declaration (when the mirrors are not of the fleet's target).
    public static func document(file: File, members: [MirrorList.Member], path: String, published: String, note: String? = nil) -> String {
        let comment = note.map { "<!-- dmirr: \(commentText($0)) -->\n" } ?? ""
        var out = """
            <?xml version="1.0" encoding="utf-8"?>
            \(comment)<metalink version="3.0" xmlns="http://www.metalinker.org/" type="dynamic" pubdate="\(escape(published))" \
            generator="dmirr" xmlns:mm0="http://fedorahosted.org/mirrormanager">
             <files>
              <file name="repomd.xml">
               <mm0:timestamp>\(file.mtime)</mm0:timestamp>
               <size>\(file.size)</size>
               <verification>
                <hash type="sha256">\(escape(file.sha256))</hash>
               </verification>
               <resources maxconnections="1">

            """
        for (index, member) in members.enumerated() {
            let url = MirrorList.url(member, path: path) + "repodata/repomd.xml"
            let scheme = url.prefix(6).lowercased() == "https:" ? "https" : "http"
            let location = member.region.isEmpty ? "" : " location=\"\(escape(member.region.uppercased()))\""
            // Preference 100 for this client's first, falling by one, never below 1.
            out += "    <url protocol=\"\(scheme)\" type=\"\(scheme)\"\(location) preference=\"\(max(1, 100 - index))\">\(escape(url))</url>\n"
        }
        out += """
               </resources>
              </file>
             </files>
            </metalink>

            """
        return out
    }

    /// Text an XML comment may hold: no two hyphens in a row (a space goes between them).
    static func commentText(_ s: String) -> String {
        var out = ""
        for c in s {
            if c == "-", out.last == "-" { out.append(" ") }
            out.append(c)
        }
        return out
    }

    static func escape(_ s: String) -> String {
        // Most values need nothing: look at the bytes before walking characters.
        guard s.utf8.contains(where: { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: "<") || $0 == UInt8(ascii: ">") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "'") })
        else { return s }
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(c)
            }
        }
        return out
    }
}

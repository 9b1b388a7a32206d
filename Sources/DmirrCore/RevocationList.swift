/// The fleet's revocation list (`dmirr cert revoke`): certificates the fleet CA has withdrawn, by serial number or by
/// identity. The network shell checks the CA's signature; this type holds the decoded list, decides whether it
/// replaces the one held, and answers whether a certificate is revoked.
///
/// A revocation by identity covers every certificate of that role and name whose validity starts (notBefore) before
/// the revocation, so a host re-enrolled afterwards works again without the list being edited.
public struct RevocationList: Sendable, Equatable {
    public struct Entry: Sendable, Equatable, CustomStringConvertible {
        public enum Target: Sendable, Hashable {
            /// One certificate: its serial number, big-endian bytes as in the certificate.
            case serial([UInt8])
            /// Every certificate of this identity issued before `revokedMillis`.
            case identity(role: PeerIdentity.Role, name: String)
        }

        public var target: Target
        public var revokedMillis: Int64

        public init(target: Target, revokedMillis: Int64) {
            self.target = target
            self.revokedMillis = revokedMillis
        }

        public var description: String {
            switch target {
            case .serial(let bytes): "certificate serial \(RevocationList.hex(bytes))"
            case .identity(let role, let name): "every \(role.rawValue) certificate of '\(name)' issued before the revocation"
            }
        }
    }

    public var fleet: String
    /// Increases with every list the CA issues; the higher replaces the lower.
    public var number: UInt64
    public var issuedMillis: Int64
    public private(set) var entries: [Entry]
    private var serials: Set<[UInt8]> = []
    private var identities: [String: Int64] = [:]

    /// The most entries a list may hold (proto/PROTOCOL.md): a list over it is refused whole.
    public static let maxEntries = 10_000
    /// A serial number is at most 20 bytes (RFC 5280 §4.1.2.2).
    public static let maxSerialBytes = 20

    public init(fleet: String, number: UInt64, issuedMillis: Int64, entries: [Entry]) {
        self.fleet = fleet
        self.number = number
        self.issuedMillis = issuedMillis
        self.entries = []
        for entry in entries { add(entry) }
    }

    /// Adds an entry (the CLI, before the list is signed again).
    public mutating func add(_ entry: Entry) {
        var entry = entry
        if case .serial(let bytes) = entry.target, !bytes.isEmpty { entry.target = .serial(Self.trimmed(bytes)) }
        entries.append(entry)
        switch entry.target {
        case .serial(let bytes): serials.insert(bytes)
        case .identity(let role, let name):
            identities["\(role.rawValue)/\(name)"] = max(identities["\(role.rawValue)/\(name)"] ?? .min, entry.revokedMillis)
        }
    }

    /// Why the list cannot be used, or nil. Checked on every list, from a file or from a peer, after its signature.
    public func problem(fleet expected: String) -> String? {
        guard fleet == expected else { return "the list is for fleet '\(fleet.prefix(64))', not '\(expected)'" }
        guard entries.count <= Self.maxEntries else { return "\(entries.count) entries, over the cap of \(Self.maxEntries)" }
        for entry in entries {
            switch entry.target {
            case .serial(let bytes):
                guard !bytes.isEmpty, bytes.count <= Self.maxSerialBytes else { return "a serial number of \(bytes.count) bytes" }
            case .identity(_, let name):
                guard PeerIdentity.isValidName(name) else { return "'\(name.prefix(64))' is not a valid name" }
            }
        }
        return nil
    }

    /// Whether this list should replace `held`: a list is never replaced by an older or equal one.
    public func supersedes(_ held: RevocationList?) -> Bool {
        held.map { number > $0.number } ?? true
    }

    /// The entry that revokes a certificate with this identity, serial number and start of validity, if any.
    public func revocation(role: PeerIdentity.Role, name: String, serial: [UInt8], notBeforeMillis: Int64) -> Entry? {
        let serial = Self.trimmed(serial)
        if serials.contains(serial) { return entries.first { $0.target == .serial(serial) } }
        if let revoked = identities["\(role.rawValue)/\(name)"], notBeforeMillis < revoked {
            return Entry(target: .identity(role: role, name: name), revokedMillis: revoked)
        }
        return nil
    }

    /// Serial numbers compare without leading zero bytes (DER adds one to keep a number positive).
    static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        let start = bytes.firstIndex { $0 != 0 } ?? bytes.endIndex
        return start == bytes.endIndex ? [0] : Array(bytes[start...])
    }

    /// Colon-separated hex, the way `openssl x509 -serial` and `dmirr cert issue` print serials.
    public static func hex(_ bytes: [UInt8]) -> String {
        trimmed(bytes).map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined(separator: ":")
    }

    /// Parses a serial as printed by ``hex(_:)`` (colons optional), or nil.
    public static func serial(hex text: String) -> [UInt8]? {
        let digits = text.lowercased().filter { $0 != ":" }
        guard !digits.isEmpty, digits.count <= maxSerialBytes * 2 + 2, digits.allSatisfy(\.isHexDigit) else { return nil }
        let padded = digits.count % 2 == 1 ? "0" + digits : digits
        var bytes: [UInt8] = []
        var index = padded.startIndex
        while index < padded.endIndex {
            let next = padded.index(index, offsetBy: 2)
            bytes.append(UInt8(padded[index..<next], radix: 16)!)
            index = next
        }
        return trimmed(bytes)
    }
}

/// Who is at the other end of a connection, as its certificate's URI SAN says: `dmirr://FLEET/node/NAME` or
/// `dmirr://FLEET/operator/NAME`. A fleet is defined by its CA; this is the identity inside it.
public struct PeerIdentity: Sendable, Hashable, CustomStringConvertible {
    public enum Role: String, Sendable, Hashable {
        /// A mirror: may gossip and serve.
        case node
        /// A human or tool: may query status, never gossip.
        case `operator`
    }

    public var fleet: String
    public var role: Role
    public var name: String

    public init(fleet: String, role: Role, name: String) {
        self.fleet = fleet
        self.role = role
        self.name = name
    }

    /// The URI written into certificates.
    public var uri: String { "dmirr://\(fleet)/\(role.rawValue)/\(name)" }
    /// The URI a fleet CA carries, naming its fleet.
    public static func caURI(fleet: String) -> String { "dmirr://\(fleet)/ca" }

    /// Parses a certificate's URI SAN; nil for anything that is not exactly a dmirr identity.
    public init?(uri: String) {
        guard uri.hasPrefix("dmirr://") else { return nil }
        let parts = uri.dropFirst("dmirr://".count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, let role = Role(rawValue: String(parts[1])),
            Self.isValidName(String(parts[0])), Self.isValidName(String(parts[2]))
        else { return nil }
        self.init(fleet: String(parts[0]), role: role, name: String(parts[2]))
    }

    public var description: String { uri }

    /// Node, operator and fleet names: letters, digits, `-`, `.`, `_`, starting with a letter or digit, ≤ 63.
    /// Checked on the UTF-8 bytes (every record received names several members; Character properties cost more).
    public static func isValidName(_ s: String) -> Bool {
        func alphanumeric(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x7a) }
        let bytes = s.utf8
        return bytes.count <= 63 && bytes.first.map(alphanumeric) == true
            && bytes.allSatisfy { alphanumeric($0) || $0 == 0x2d || $0 == 0x2e || $0 == 0x5f }
    }
}

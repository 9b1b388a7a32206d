/// The checks every connection's first message must pass (proto/PROTOCOL.md, "Connection rules"). Pure: the shell
/// passes in what the certificate and the `Hello` say.
public enum HelloPolicy {
    /// What a peer's `Hello` claims.
    public struct Claim: Sendable, Equatable {
        public var protocolMajor: UInt32
        public var fleet: String
        public var node: String

        public init(protocolMajor: UInt32, fleet: String, node: String) {
            self.protocolMajor = protocolMajor
            self.fleet = fleet
            self.node = node
        }
    }

    /// Why a connection is refused; the shell sends the matching error frame and closes.
    public enum Rejection: Error, Sendable, Equatable, CustomStringConvertible {
        case unsupportedVersion(theirs: UInt32, ours: UInt32)
        case wrongFleet(theirs: String, ours: String)
        case identityMismatch(hello: String, certificate: String)
        case noIdentity

        public var description: String {
            switch self {
            case .unsupportedVersion(let theirs, let ours): "protocol major version \(theirs) is not supported (this agent speaks \(ours))"
            case .wrongFleet(let theirs, let ours): "fleet '\(theirs)' is not this agent's fleet '\(ours)'"
            case .identityMismatch(let hello, let cert): "Hello says node '\(hello)' but the certificate is for '\(cert)'"
            case .noIdentity: "the certificate carries no dmirr identity (URI SAN dmirr://FLEET/node/NAME)"
            }
        }
    }

    /// Checks a `Hello` against the sender's certificate identity. Returns the authenticated identity.
    public static func check(_ claim: Claim, certificate: PeerIdentity?, fleet: String, major: UInt32) -> Result<PeerIdentity, Rejection> {
        guard let certificate, certificate.fleet == fleet else {
            return .failure(certificate == nil ? .noIdentity : .wrongFleet(theirs: certificate!.fleet, ours: fleet))
        }
        guard claim.protocolMajor == major else { return .failure(.unsupportedVersion(theirs: claim.protocolMajor, ours: major)) }
        guard claim.fleet == fleet else { return .failure(.wrongFleet(theirs: claim.fleet, ours: fleet)) }
        guard claim.node == certificate.name else { return .failure(.identityMismatch(hello: claim.node, certificate: certificate.name)) }
        return .success(certificate)
    }

    /// What a peer may ask for after its `Hello`.
    public enum Request: Sendable {
        case gossip
        case status
        case announce
    }

    /// Operators may query status and announce a push; only nodes gossip.
    public static func permits(_ identity: PeerIdentity, _ request: Request) -> Bool {
        switch (identity.role, request) {
        case (.node, _): true
        case (.operator, .status), (.operator, .announce): true
        case (.operator, .gossip): false
        }
    }
}

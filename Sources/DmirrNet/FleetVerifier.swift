import Crypto
import DmirrCore
import DmirrWire
import Foundation
import SwiftASN1
import Synchronization
// The SPI lets the chain's validity be judged at the time a caller gives (tests, records checked at receipt).
@_spi(FixedExpiryValidationTime) import X509

/// Checks fleet certificates the way every agent must: the chain with swift-certificates' `Verifier` and
/// `RFC5280Policy` (validity, BasicConstraints and path length, name constraints, critical extensions), then the
/// fleet's own rules (``FleetCertificatePolicy``), then the fleet's revocation list. Used for the certificate a peer
/// presents in the TLS handshake and for the author certificate of every relayed member record.
///
/// It also holds the revocation list in force: one from `[tls] crl` or one a peer relayed, whichever the CA issued
/// last (``adopt(_:)``).
public final class FleetVerifier: Sendable {
    public let fleet: String
    /// The fleet CA certificates trusted now: a bundle may hold an old and a new CA while the fleet moves to the new
    /// one (``trust(_:)`` replaces them on a reload).
    private let trusted: Mutex<[Certificate]>
    var roots: [Certificate] { trusted.withLock { $0 } }
    private let revocations: Mutex<RevocationList?>

    public convenience init(caPath: String) throws(NetError) {
        let (roots, fleet) = try Self.readBundle(caPath)
        self.init(roots: roots, fleet: fleet)
    }

    public init(roots: [Certificate], fleet: String) {
        self.trusted = Mutex(roots)
        self.fleet = fleet
        self.revocations = Mutex(nil)
    }

    /// The CA certificates in a PEM bundle, which must all be of one fleet.
    static func readBundle(_ caPath: String) throws(NetError) -> (roots: [Certificate], fleet: String) {
        let roots: [Certificate]
        do {
            roots = try PEMDocument.parseMultiple(pemString: String(contentsOfFile: caPath, encoding: .utf8)).map {
                try Certificate(pemDocument: $0)
            }
        } catch {
            throw NetError(.tls, "cannot read the fleet CA \(caPath)", underlying: error)
        }
        let fleets = Set(roots.compactMap(FleetPKI.fleet(ofCA:)))
        guard !roots.isEmpty, fleets.count == 1, let fleet = fleets.first else {
            throw NetError(.tls, "\(caPath) does not hold the CA certificate of exactly one dmirr fleet")
        }
        return (roots, fleet)
    }

    /// Trusts the CA certificates `other` trusts from now on, in place of the ones trusted so far (the same roots the
    /// reloaded TLS contexts were made with, not the file read again); the revocation list in force stays. Refuses,
    /// changing nothing, the CA of another fleet.
    public func trust(rootsOf other: FleetVerifier) throws(NetError) {
        guard other.fleet == fleet else {
            throw NetError(.tls, "the new CA bundle is of fleet '\(other.fleet)', not of this fleet '\(fleet)'")
        }
        let roots = other.roots
        trusted.withLock { $0 = roots }
    }

    /// Why a certificate was refused.
    public enum Rejection: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed(String)
        /// The chain or the fleet's rules refused it; the reasons the verifier gave.
        case untrusted(String)
        case revoked(String)

        public var description: String {
            switch self {
            case .malformed(let why): "unreadable certificate: \(why)"
            case .untrusted(let why): "certificate refused: \(why)"
            case .revoked(let why): "certificate revoked by the fleet CA (\(why))"
            }
        }
    }

    /// The checked identity and what a record author needs from the certificate.
    public struct Checked: Sendable {
        public var identity: PeerIdentity
        public var certificate: Certificate
    }

    /// Checks a certificate presented by a peer or carried by a record, at `now`. `role` nil accepts nodes and
    /// operators (a TLS session); records are authored only by nodes.
    public func check(
        _ certificate: Certificate, intermediates: [Certificate] = [], role: PeerIdentity.Role?, now: Date = Date()
    ) async -> Result<Checked, Rejection> {
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy(fixedExpiryValidationTime: now)
            FleetCertificatePolicy(fleet: fleet, role: role)
        }
        let result = await verifier.validate(leaf: certificate, intermediates: CertificateStore(intermediates))
        switch result {
        case .validCertificate:
            break
        case .couldNotValidate(let failures):
            let reasons = Set(failures.map { "\($0.policyFailureReason)" }).sorted()
            return .failure(.untrusted(reasons.isEmpty ? "no chain to the fleet CA" : reasons.joined(separator: "; ")))
        }
        guard let identity = FleetPKI.identity(of: certificate) else { return .failure(.untrusted("no dmirr identity")) }
        if let entry = revocation(of: certificate, identity: identity) { return .failure(.revoked("\(entry)")) }
        return .success(Checked(identity: identity, certificate: certificate))
    }

    /// The revocation that covers a certificate, under the list in force.
    public func revocation(of certificate: Certificate, identity: PeerIdentity) -> RevocationList.Entry? {
        revocations.withLock { list in
            list?.revocation(
                role: identity.role, name: identity.name, serial: Array(certificate.serialNumber.bytes),
                notBeforeMillis: Int64(certificate.notValidBefore.timeIntervalSince1970 * 1000))
        }
    }

    /// The revocation that covers the certificate a session's peer presented.
    public func revocation(of session: PeerSession) -> RevocationList.Entry? {
        session.certificate.flatMap { revocation(of: $0, identity: session.peer) }
    }

    /// The list in force.
    public var revocationList: RevocationList? { revocations.withLock { $0 } }

    /// Puts `list` in force if the CA issued it after the one held. Its signature must have been checked
    /// (``openRevocations(_:)``).
    @discardableResult
    public func adopt(_ list: RevocationList) -> Bool {
        revocations.withLock { held in
            guard list.supersedes(held) else { return false }
            held = list
            return true
        }
    }

    // MARK: Revocation lists

    /// What a revocation list's signature covers besides the list (never a member record or anything else the CA key
    /// might sign).
    public static let revocationContext = Array("dmirr revocation list, protocol 2\u{0}".utf8)

    /// Checks a signed list against the fleet CA and decodes it.
    public func openRevocations(_ signed: WireSignedRevocationList) -> Result<RevocationList, Rejection> {
        let bytes = Self.revocationContext + Array(signed.list)
        guard let signature = try? P256.Signing.ECDSASignature(derRepresentation: signed.signature),
            roots.contains(where: { P256.Signing.PublicKey($0.publicKey)?.isValidSignature(signature, for: bytes) == true })
        else { return .failure(.untrusted("the revocation list is not signed by the fleet CA")) }
        let wire: WireRevocationList
        do { wire = try WireRevocationList(serializedBytes: Array(signed.list)) } catch {
            return .failure(.malformed("revocation list: \(error)"))
        }
        guard wire.revoked.count <= RevocationList.maxEntries else {
            return .failure(.malformed("\(wire.revoked.count) revocations, over the cap of \(RevocationList.maxEntries)"))
        }
        var entries: [RevocationList.Entry] = []
        for item in wire.revoked {
            if !item.serial.isEmpty {
                entries.append(.init(target: .serial(Array(item.serial)), revokedMillis: item.revokedUnixMs))
            } else if let role = PeerIdentity.Role(rawValue: item.role) {
                entries.append(.init(target: .identity(role: role, name: item.name), revokedMillis: item.revokedUnixMs))
            } else {
                return .failure(.malformed("a revocation with neither a serial number nor a role and name"))
            }
        }
        let list = RevocationList(fleet: wire.fleet, number: wire.number, issuedMillis: wire.issuedUnixMs, entries: entries)
        if let problem = list.problem(fleet: fleet) { return .failure(.malformed("revocation list: \(problem)")) }
        return .success(list)
    }

    /// Signs a list with the CA's key (`dmirr cert revoke`).
    public static func signRevocations(_ list: RevocationList, caKeyPEM: String) throws -> WireSignedRevocationList {
        let wire = WireRevocationList.with {
            $0.fleet = list.fleet
            $0.number = list.number
            $0.issuedUnixMs = list.issuedMillis
            $0.revoked = list.entries.map { entry in
                .with {
                    switch entry.target {
                    case .serial(let bytes): $0.serial = Data(bytes)
                    case .identity(let role, let name):
                        $0.role = role.rawValue
                        $0.name = name
                    }
                    $0.revokedUnixMs = entry.revokedMillis
                }
            }
        }
        let bytes: [UInt8] = try wire.serializedBytes()
        let key = try P256.Signing.PrivateKey(pemRepresentation: caKeyPEM)
        let signature = try key.signature(for: revocationContext + bytes).derRepresentation
        return .with {
            $0.list = Data(bytes)
            $0.signature = signature
        }
    }

    /// The file form: the signed list, base64 between PEM-style markers, so it can be mailed and copied like a
    /// certificate.
    public static let pemLabel = "DMIRR REVOCATION LIST"

    public static func pem(_ signed: WireSignedRevocationList) throws -> String {
        try PEMDocument(type: pemLabel, derBytes: signed.serializedBytes()).pemString + "\n"
    }

    public static func signedRevocations(pem text: String) throws -> WireSignedRevocationList {
        let document = try PEMDocument(pemString: text)
        guard document.discriminator == pemLabel else {
            throw NetError(.tls, "not a dmirr revocation list (the file holds a \(document.discriminator))")
        }
        return try WireSignedRevocationList(serializedBytes: document.derBytes)
    }

    /// Reads, checks and adopts the list in a file (`[tls] crl`). Returns the list, adopted or not (an older one).
    @discardableResult
    public func load(revocationsAt path: String) throws(NetError) -> RevocationList {
        let signed: WireSignedRevocationList
        do { signed = try Self.signedRevocations(pem: String(contentsOfFile: path, encoding: .utf8)) } catch {
            throw NetError(.tls, "cannot read the revocation list \(path)", underlying: error)
        }
        switch openRevocations(signed) {
        case .success(let list):
            adopt(list)
            return list
        case .failure(let rejection):
            throw NetError(.tls, "\(path): \(rejection)")
        }
    }
}

/// The fleet's rules for a certificate chain, on top of RFC 5280: the leaf carries exactly one `dmirr://` identity of
/// this fleet (of `role`, when given), is no CA, may sign (KeyUsage digitalSignature) and may act as TLS server and
/// client (both EKUs: every agent is both); every issuer may sign certificates (KeyUsage keyCertSign); the root is this
/// fleet's CA.
public struct FleetCertificatePolicy: VerifierPolicy, Sendable {
    public let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [
        .X509ExtensionID.keyUsage, .X509ExtensionID.extendedKeyUsage, .X509ExtensionID.subjectAlternativeName,
    ]
    let fleet: String
    let role: PeerIdentity.Role?

    public init(fleet: String, role: PeerIdentity.Role?) {
        self.fleet = fleet
        self.role = role
    }

    public func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) -> PolicyEvaluationResult {
        let leaf = chain.leaf
        guard let identity = FleetPKI.identity(of: leaf) else {
            return .failsToMeetPolicy(reason: "the certificate has no single dmirr:// identity")
        }
        guard identity.fleet == fleet else {
            return .failsToMeetPolicy(reason: "the certificate is for fleet '\(identity.fleet)', not '\(fleet)'")
        }
        if let role, identity.role != role {
            return .failsToMeetPolicy(reason: "\(identity) is not a \(role.rawValue) certificate")
        }
        guard (try? leaf.extensions.basicConstraints).map({ $0 == .notCertificateAuthority }) ?? true else {
            return .failsToMeetPolicy(reason: "\(identity) is a CA certificate")
        }
        guard let usage = try? leaf.extensions.keyUsage, usage.digitalSignature else {
            return .failsToMeetPolicy(reason: "\(identity) may not sign (no KeyUsage digitalSignature)")
        }
        guard let eku = try? leaf.extensions.extendedKeyUsage, eku.contains(.serverAuth), eku.contains(.clientAuth) else {
            return .failsToMeetPolicy(reason: "\(identity) lacks the fleet's EKUs (TLS server and client)")
        }
        for issuer in chain.dropFirst() {
            guard let usage = try? issuer.extensions.keyUsage, usage.keyCertSign else {
                return .failsToMeetPolicy(reason: "an issuer of \(identity) may not sign certificates (no KeyUsage keyCertSign)")
            }
        }
        guard let root = chain.last, FleetPKI.fleet(ofCA: root) == fleet else {
            return .failsToMeetPolicy(reason: "the chain of \(identity) does not end at the CA of fleet '\(fleet)'")
        }
        return .meetsPolicy
    }
}

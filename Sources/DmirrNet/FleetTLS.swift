import DmirrCore
import Foundation
import NIOCore
import NIOSSL
import Synchronization
import X509

/// TLS for the fleet: TLS 1.3 only, both sides present certificates, both verify against the fleet CA only.
///
/// NIOSSL's defaults are unsafe for this (no verification on servers, TLS 1.0, the system roots), so every one of
/// trust roots, verification mode and minimum version is set here explicitly. Hostnames are not checked: a peer is
/// authorized by the identity in its certificate's URI SAN, read after the handshake (``identity(of:)``).
public struct FleetTLS: Sendable {
    /// This agent's (or operator's) own identity, from its certificate.
    public let identity: PeerIdentity
    public let serverContext: NIOSSLContext
    public let clientContext: NIOSSLContext
    /// Checks each peer's certificate after the handshake (the fleet's rules and its revocation list), on top of the
    /// chain check BoringSSL made during it.
    public internal(set) var verifier: FleetVerifier
    /// Our own certificate, as read from the file.
    public let certificate: Certificate
    public let certPath: String

    public init(caPath: String, certPath: String, keyPath: String) throws(NetError) {
        verifier = try FleetVerifier(caPath: caPath)
        self.certPath = certPath
        let cas: [NIOSSLCertificate]
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do { cas = try NIOSSLCertificate.fromPEMFile(caPath) } catch {
            throw NetError(.tls, "cannot read the fleet CA \(caPath)", underlying: error)
        }
        do { chain = try NIOSSLCertificate.fromPEMFile(certPath) } catch {
            throw NetError(.tls, "cannot read the certificate \(certPath)", underlying: error)
        }
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw NetError(.tls, "cannot read the private key \(keyPath)", underlying: error)
        }
        guard let leaf = chain.first, let identity = Self.identity(of: leaf),
            let parsed = try? Certificate(derEncoded: leaf.toDERBytes())
        else {
            throw NetError(.tls, "\(certPath) has no dmirr identity (URI SAN dmirr://FLEET/node/NAME); issue it with `dmirr cert issue`")
        }
        certificate = parsed
        let fleets = Set(cas.compactMap { try? FleetPKI.fleet(ofCA: Certificate(derEncoded: $0.toDERBytes())) })
        guard !cas.isEmpty, fleets == [identity.fleet] else {
            throw NetError(.tls, "\(caPath) is not the CA of fleet '\(identity.fleet)' that \(certPath) belongs to")
        }
        self.identity = identity

        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain.map { .certificate($0) }
        client.privateKey = .privateKey(key)
        Self.harden(&server, cas: cas)
        Self.harden(&client, cas: cas)
        do {
            serverContext = try NIOSSLContext(configuration: server)
            clientContext = try NIOSSLContext(configuration: client)
        } catch {
            throw NetError(.tls, "cannot set up TLS with \(certPath) and \(keyPath) (does the key belong to the certificate?)", underlying: error)
        }
    }

    /// The three settings NIOSSL's defaults get wrong for a private fleet.
    static func harden(_ config: inout TLSConfiguration, cas: [NIOSSLCertificate]) {
        config.trustRoots = .certificates(cas)
        config.additionalTrustRoots = []
        config.certificateVerification = .noHostnameVerification
        config.minimumTLSVersion = .tlsv13
    }

    /// Checks the certificate a peer presented in the handshake: nil identity when it presented none.
    func check(peer certificate: NIOSSLCertificate?) async -> Result<FleetVerifier.Checked?, FleetVerifier.Rejection> {
        guard let certificate else { return .success(nil) }
        let parsed: Certificate
        do { parsed = try Certificate(derEncoded: certificate.toDERBytes()) } catch { return .failure(.malformed("\(error)")) }
        return await verifier.check(parsed, role: nil).map { $0 }
    }

    /// The dmirr identity in a certificate's URI SAN, or nil.
    public static func identity(of certificate: NIOSSLCertificate) -> PeerIdentity? {
        guard let der = try? certificate.toDERBytes(), let cert = try? Certificate(derEncoded: der) else { return nil }
        return FleetPKI.identity(of: cert)
    }
}

/// The agent's TLS credentials, replaced as a whole when the operator rotates the certificate, key or CA bundle
/// (SIGHUP). The listener reads ``current`` at each accept and the dialer at each dial; sessions already open keep
/// the credentials they were made with.
public final class FleetCredentials: Sendable {
    private let state: Mutex<FleetTLS>
    public let caPath: String
    public let keyPath: String

    public init(_ tls: FleetTLS, caPath: String, keyPath: String) {
        state = Mutex(tls)
        self.caPath = caPath
        self.keyPath = keyPath
    }

    public var current: FleetTLS { state.withLock { $0 } }

    /// Reads the three files again (same paths) and puts them in force, keeping the verifier (and so the revocation
    /// list in force). Refuses, changing nothing, files that do not load, a certificate for another identity, and a
    /// certificate that does not pass the fleet's checks under the new bundle now (expired, not yet valid, another
    /// CA). Returns the credentials in force afterwards and a signer for our records made from the same files.
    public func reload(now: Date) async throws(NetError) -> (tls: FleetTLS, signer: RecordSigner) {
        let old = current
        var fresh = try FleetTLS(caPath: caPath, certPath: old.certPath, keyPath: keyPath)
        guard fresh.identity == old.identity else {
            throw NetError(.tls, "\(old.certPath) is now for \(fresh.identity), not for \(old.identity) as when the agent started")
        }
        if case .failure(let rejection) = await fresh.verifier.check(fresh.certificate, role: .node, now: now) {
            throw NetError(.tls, "\(old.certPath) would be refused by the fleet: \(rejection)")
        }
        let signer = try RecordSigner(caPath: caPath, certPath: old.certPath, keyPath: keyPath, verifier: old.verifier)
        try old.verifier.trust(rootsOf: fresh.verifier)
        fresh.verifier = old.verifier
        state.withLock { $0 = fresh }
        return (fresh, signer)
    }
}

/// The network module's one error type.
public struct NetError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        public var description: String { raw }
        public static let tls = Code(raw: "tls")
        /// The peer broke the protocol, or refused ours; see the message.
        public static let protocolViolation = Code(raw: "protocol")
        /// The peer sent an error frame.
        public static let rejected = Code(raw: "rejected")
        public static let timeout = Code(raw: "timeout")
        public static let connection = Code(raw: "connection")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        if let underlying { return "\(message): \(underlying)" }
        return message
    }
}

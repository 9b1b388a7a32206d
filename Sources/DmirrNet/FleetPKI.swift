import Crypto
import DmirrCore
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// The fleet's PKI (`dmirr cert`): a P-256 CA per fleet, and leaf certificates whose URI SAN is the holder's
/// ``PeerIdentity``. Both TLS EKUs are set on leaves, because every agent is a server and a client.
public enum FleetPKI {
    /// A certificate and its private key, PEM-encoded.
    public struct Issued: Sendable {
        public var certificatePEM: String
        public var privateKeyPEM: String
    }

    /// Certificates are valid from a few minutes ago, so a peer whose clock is slightly behind accepts them.
    static let backdate: TimeInterval = 300

    /// Makes a self-signed fleet CA.
    public static func makeCA(fleet: String, days: Int = 3650, now: Date = Date()) throws(PKIError) -> Issued {
        guard PeerIdentity.isValidName(fleet) else {
            throw PKIError(.invalidName, "'\(fleet)' is not a valid fleet name: use letters, digits, '-', '.', '_'")
        }
        do {
            let key = P256.Signing.PrivateKey()
            let certKey = Certificate.PrivateKey(key)
            let name = try DistinguishedName {
                OrganizationName(fleet)
                CommonName("dmirr fleet \(fleet) CA")
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: certKey.publicKey)
                SubjectAlternativeNames([.uniformResourceIdentifier(PeerIdentity.caURI(fleet: fleet))])
            }
            let cert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: certKey.publicKey,
                notValidBefore: now.addingTimeInterval(-backdate), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
                issuerPrivateKey: certKey)
            return Issued(certificatePEM: try cert.serializeAsPEM().pemString, privateKeyPEM: key.pemRepresentation)
        } catch {
            throw PKIError(.crypto, "cannot create the CA certificate", underlying: error)
        }
    }

    /// Issues a leaf for `identity`, signed by the CA, with optional DNS and IP SANs for the host it runs on.
    public static func issue(
        caCertificatePEM: String, caKeyPEM: String, identity: PeerIdentity, hosts: [String] = [], ips: [String] = [],
        days: Int = 90, now: Date = Date()
    ) throws(PKIError) -> Issued {
        let (ca, caKey, fleet) = try loadCA(certificatePEM: caCertificatePEM, keyPEM: caKeyPEM)
        guard fleet == identity.fleet else {
            throw PKIError(.badInput, "the CA is for fleet '\(fleet)', not '\(identity.fleet)'")
        }
        let names = try subjectNames(identity: identity, hosts: hosts, ips: ips)
        let key = P256.Signing.PrivateKey()
        let certificate = try sign(
            publicKey: Certificate.PublicKey(key.publicKey), identity: identity, names: names, ca: ca, caKey: caKey, days: days, now: now)
        return Issued(certificatePEM: certificate, privateKeyPEM: key.pemRepresentation)
    }

    static func loadCA(certificatePEM: String, keyPEM: String) throws(PKIError) -> (Certificate, Certificate.PrivateKey, String) {
        let ca: Certificate
        let caKey: Certificate.PrivateKey
        do {
            ca = try Certificate(pemEncoded: certificatePEM)
            caKey = try Certificate.PrivateKey(pemEncoded: keyPEM)
        } catch {
            throw PKIError(.badInput, "cannot read the CA certificate or key", underlying: error)
        }
        guard caKey.publicKey == ca.publicKey else {
            throw PKIError(.badInput, "the CA key does not belong to the CA certificate")
        }
        guard let fleet = fleet(ofCA: ca) else {
            throw PKIError(.badInput, "the CA certificate is not a dmirr fleet CA (no \(PeerIdentity.caURI(fleet: "FLEET")) name)")
        }
        return (ca, caKey, fleet)
    }

    // MARK: - Enrolment without moving keys

    /// A new P-256 key and a certificate signing request for `identity` (`dmirr cert request`): the key stays on the
    /// host that made it; only the request travels to the CA.
    public static func request(identity: PeerIdentity, hosts: [String] = [], ips: [String] = []) throws(PKIError) -> (csrPEM: String, keyPEM: String) {
        let names = try subjectNames(identity: identity, hosts: hosts, ips: ips)
        let key = P256.Signing.PrivateKey()
        do {
            let subject = try DistinguishedName {
                OrganizationName(identity.fleet)
                CommonName("\(identity.role.rawValue) \(identity.name)")
            }
            let extensions = try Certificate.Extensions { SubjectAlternativeNames(names) }
            let attributes = try CertificateSigningRequest.Attributes([.init(ExtensionRequest(extensions: extensions))])
            let csr = try CertificateSigningRequest(
                version: .v1, subject: subject, privateKey: .init(key), attributes: attributes, signatureAlgorithm: .ecdsaWithSHA256)
            return (try csr.serializeAsPEM().pemString, key.pemRepresentation)
        } catch {
            throw PKIError(.crypto, "cannot make the signing request for \(identity)", underlying: error)
        }
    }

    /// Checks a signing request and issues its certificate (`dmirr cert sign`): the request must be signed by its own
    /// key, carry a P-256 key (members sign records with P-256) and exactly one `dmirr://` identity of this CA's fleet
    /// with a valid name and the expected role; its DNS and IP names are kept.
    public static func sign(
        csrPEM: String, caCertificatePEM: String, caKeyPEM: String, role: PeerIdentity.Role, days: Int = 90, now: Date = Date()
    ) throws(PKIError) -> (certificatePEM: String, identity: PeerIdentity) {
        let (ca, caKey, fleet) = try loadCA(certificatePEM: caCertificatePEM, keyPEM: caKeyPEM)
        let csr: CertificateSigningRequest
        do { csr = try CertificateSigningRequest(pemEncoded: csrPEM) } catch {
            throw PKIError(.badInput, "not a PEM certificate signing request", underlying: error)
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw PKIError(.badInput, "the request's signature does not match its content (altered in transit?)")
        }
        guard P256.Signing.PublicKey(csr.publicKey) != nil else {
            throw PKIError(.badInput, "the request's key is not ECDSA P-256; dmirr members sign their records with P-256 (make the request with `dmirr cert request`)")
        }
        let requested: [GeneralName]
        do { requested = try csr.attributes.extensionRequest?.extensions.subjectAlternativeNames.map(Array.init) ?? [] } catch {
            throw PKIError(.badInput, "the request's names cannot be read", underlying: error)
        }
        let uris = requested.compactMap { name -> String? in if case .uniformResourceIdentifier(let u) = name { u } else { nil } }
        guard uris.count == 1, let identity = PeerIdentity(uri: uris[0]) else {
            let shown = uris.map { "'\($0.prefix(100))'" }.joined(separator: ", ")
            throw PKIError(.invalidName, "the request must name exactly one valid dmirr://FLEET/ROLE/NAME identity (names: letters, digits, '-', '.', '_'); it names \(shown.isEmpty ? "none" : shown)")
        }
        guard identity.fleet == fleet else { throw PKIError(.badInput, "the request is for fleet '\(identity.fleet)', this CA is for '\(fleet)'") }
        guard identity.role == role else {
            throw PKIError(.badInput, "the request is for \(identity), a \(identity.role.rawValue); pass \(role == .node ? "--operator to sign it" : "no --operator for a node")")
        }
        var names: [GeneralName] = [.uniformResourceIdentifier(identity.uri)]
        for name in requested {
            switch name {
            case .dnsName(let host):
                guard isValidHostName(host) else { throw PKIError(.badInput, "the request names '\(host.prefix(100))', not a DNS name") }
                names.append(name)
            case .ipAddress(let bytes):
                guard bytes.bytes.count == 4 || bytes.bytes.count == 16 else { throw PKIError(.badInput, "the request names a malformed IP address") }
                names.append(name)
            case .uniformResourceIdentifier:
                break
            default:
                throw PKIError(.badInput, "the request names \(name), which a dmirr certificate does not carry")
            }
        }
        let pem = try sign(publicKey: csr.publicKey, identity: identity, names: names, ca: ca, caKey: caKey, days: days, now: now)
        return (pem, identity)
    }

    /// The SANs of a leaf: its identity, then DNS names and IP addresses.
    static func subjectNames(identity: PeerIdentity, hosts: [String], ips: [String]) throws(PKIError) -> [GeneralName] {
        var names: [GeneralName] = [.uniformResourceIdentifier(identity.uri)]
        for host in hosts {
            guard isValidHostName(host) else { throw PKIError(.badInput, "'\(host)' is not a DNS name") }
            names.append(.dnsName(host))
        }
        for ip in ips {
            guard let bytes = ipBytes(ip) else { throw PKIError(.badInput, "'\(ip)' is not an IPv4 or IPv6 address") }
            names.append(.ipAddress(ASN1OctetString(contentBytes: bytes[...])))
        }
        return names
    }

    static func isValidHostName(_ host: String) -> Bool {
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        return !host.isEmpty && host.utf8.count <= 253 && labels.allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "*") }
        }
    }

    /// Signs a leaf certificate for `publicKey` (a key made here, or one a CSR carried).
    static func sign(
        publicKey: Certificate.PublicKey, identity: PeerIdentity, names: [GeneralName], ca: Certificate,
        caKey: Certificate.PrivateKey, days: Int, now: Date
    ) throws(PKIError) -> String {
        do {
            let subject = try DistinguishedName {
                OrganizationName(identity.fleet)
                CommonName("\(identity.role.rawValue) \(identity.name)")
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectKeyIdentifier(hash: publicKey)
                if let ski = try? ca.extensions.subjectKeyIdentifier {
                    AuthorityKeyIdentifier(keyIdentifier: ski.keyIdentifier)
                }
                SubjectAlternativeNames(names)
            }
            let cert = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: publicKey,
                notValidBefore: now.addingTimeInterval(-backdate), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
                issuer: ca.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
                issuerPrivateKey: caKey)
            return try cert.serializeAsPEM().pemString
        } catch {
            throw PKIError(.crypto, "cannot issue the certificate for \(identity)", underlying: error)
        }
    }

    /// The fleet a CA certificate was made for.
    public static func fleet(ofCA ca: Certificate) -> String? {
        guard let sans = try? ca.extensions.subjectAlternativeNames else { return nil }
        for name in sans {
            if case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix("dmirr://"), uri.hasSuffix("/ca") {
                let fleet = String(uri.dropFirst("dmirr://".count).dropLast("/ca".count))
                if PeerIdentity.isValidName(fleet) { return fleet }
            }
        }
        return nil
    }

    /// The identity a leaf certificate carries: exactly one `dmirr://` URI SAN, or nil.
    public static func identity(of certificate: Certificate) -> PeerIdentity? {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return nil }
        let identities = sans.compactMap { name -> PeerIdentity? in
            if case .uniformResourceIdentifier(let uri) = name { return PeerIdentity(uri: uri) }
            return nil
        }
        return identities.count == 1 ? identities[0] : nil
    }

    static func ipBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    // MARK: - Files

    /// Writes a PEM file; keys get mode 0600. Refuses to replace an existing file unless `force`.
    public static func write(_ pem: String, to path: String, secret: Bool, force: Bool) throws(PKIError) {
        if !force, FileManager.default.fileExists(atPath: path) {
            throw PKIError(.exists, "\(path) already exists; pass --force to replace it")
        }
        let temp = path + ".dmirr-new"
        // O_EXCL | O_NOFOLLOW: a file or symlink planted at the temporary name is never written through. One left by a
        // crash is removed (unlink does not follow symlinks) and the open tried once more.
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        var fd = open(temp, flags, secret ? 0o600 : 0o644)
        if fd < 0, errno == EEXIST, unlink(temp) == 0 { fd = open(temp, flags, secret ? 0o600 : 0o644) }
        guard fd >= 0 else { throw PKIError(.io, "cannot create \(temp): \(String(cString: strerror(errno)))") }
        _ = fchmod(fd, secret ? 0o600 : 0o644)
        // Ending in a newline, as PEM files do: `cat old/ca.pem new/ca.pem > bundle.pem` must give two certificates,
        // not one unreadable line where the first ends and the second begins.
        let bytes = Array((pem.hasSuffix("\n") ? pem : pem + "\n").utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temp, path) == 0 else {
            unlink(temp)
            throw PKIError(.io, "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// The PKI's one error type.
public struct PKIError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable {
        private let raw: Int
        public static let invalidName = Code(raw: 1)
        public static let badInput = Code(raw: 2)
        public static let crypto = Code(raw: 3)
        public static let exists = Code(raw: 4)
        public static let io = Code(raw: 5)
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

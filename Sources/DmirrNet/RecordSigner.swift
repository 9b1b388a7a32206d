import Crypto
import DmirrCore
import DmirrWire
import Foundation
import SwiftASN1
import X509

/// Signs this node's member record and verifies everyone else's (proto/PROTOCOL.md: a record is authored only by its
/// node, signed with that node's key, and checked by every receiver, relays included).
public struct RecordSigner: Sendable {
    let key: P256.Signing.PrivateKey
    let certificateDER: [UInt8]
    let caKeys: [Certificate.PublicKey]
    let fleet: String

    public init(caPath: String, certPath: String, keyPath: String) throws(NetError) {
        do {
            let cas = try Self.certificates(pem: String(contentsOfFile: caPath, encoding: .utf8))
            let leaf = try Certificate(pemEncoded: String(contentsOfFile: certPath, encoding: .utf8))
            key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: keyPath, encoding: .utf8))
            var serializer = DER.Serializer()
            try serializer.serialize(leaf)
            certificateDER = serializer.serializedBytes
            caKeys = cas.map(\.publicKey)
            guard let identity = FleetPKI.identity(of: leaf) else { throw NetError(.tls, "\(certPath) has no dmirr identity") }
            fleet = identity.fleet
        } catch let error as NetError {
            throw error
        } catch {
            throw NetError(.tls, "cannot load the signing key and certificates (\(certPath), \(keyPath), \(caPath))", underlying: error)
        }
    }

    static func certificates(pem: String) throws -> [Certificate] {
        try PEMDocument.parseMultiple(pemString: pem).map { try Certificate(pemDocument: $0) }
    }

    /// What a record signature covers besides the record: a fixed context, so that a member's key signing anything
    /// else (now or in a later protocol) can never produce something that verifies as a member record.
    public static let signatureContext = Array("dmirr member record, protocol 2\u{0}".utf8)

    /// Our record, signed, ready to gossip.
    public func sign(_ record: MemberRecord) throws -> WireSignedRecord {
        let bytes: [UInt8] = try WireRecords.wire(record).serializedBytes()
        let signature = try key.signature(for: Self.signatureContext + bytes)
        return .with {
            $0.record = Data(bytes)
            $0.signature = signature.derRepresentation
            $0.authorCertificate = Data(certificateDER)
        }
    }

    /// Why a relayed record was dropped.
    public enum Rejection: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed(String)
        case untrustedCertificate
        case expiredCertificate
        case authorMismatch(record: String, certificate: String)
        case badSignature
        case unknownAuthor(String)

        public var description: String {
            switch self {
            case .malformed(let why): "malformed record: \(why)"
            case .untrustedCertificate: "the author certificate is not signed by the fleet CA"
            case .expiredCertificate: "the author certificate is not valid now"
            case .authorMismatch(let r, let c): "record for '\(r)' carries the certificate of '\(c)'"
            case .badSignature: "the signature does not match the record"
            case .unknownAuthor(let node): "record for '\(node)' came without a certificate and none is known for it"
            }
        }
    }

    /// Authors' certificates already checked, by node: records that arrive without one are verified against these.
    public struct AuthorCache: Sendable {
        struct Author: Sendable {
            var der: [UInt8]
            var key: P256.Signing.PublicKey
            var notBefore: Date
            var notAfter: Date
        }
        var authors: [String: Author] = [:]
        public init() {}

        /// The certificate (DER) last verified for `node`.
        public func certificate(of node: String) -> [UInt8]? { authors[node]?.der }
    }

    /// A verified record and its author's certificate (DER).
    public struct Verified: Sendable, Equatable {
        public var record: MemberRecord
        public var certificateDER: [UInt8]
    }

    /// Checks a signed record on its own (it must carry its certificate).
    public func verify(_ signed: WireSignedRecord, now: Date = Date()) -> Result<MemberRecord, Rejection> {
        var cache = AuthorCache()
        return verify(signed, cache: &cache, now: now).map(\.record)
    }

    /// Checks a signed record: its certificate, or the one cached for its node when it carries none, chains to the
    /// fleet CA, is valid now and names the record's node, and the signature verifies. A newly checked certificate is
    /// cached; checking a known certificate again costs a byte comparison, not a chain validation.
    public func verify(_ signed: WireSignedRecord, cache: inout AuthorCache, now: Date = Date()) -> Result<Verified, Rejection> {
        let wire: WireMemberRecord
        do { wire = try WireMemberRecord(serializedBytes: Array(signed.record)) } catch {
            return .failure(.malformed("record: \(error)"))
        }
        let author: AuthorCache.Author
        if signed.authorCertificate.isEmpty {
            guard let known = cache.authors[wire.node] else { return .failure(.unknownAuthor(wire.node)) }
            author = known
        } else if let known = cache.authors[wire.node], known.der.elementsEqual(signed.authorCertificate) {
            author = known
        } else {
            switch checkCertificate(Array(signed.authorCertificate), node: wire.node, now: now) {
            case .success(let checked):
                author = checked
                cache.authors[wire.node] = checked
            case .failure(let rejection):
                return .failure(rejection)
            }
        }
        guard author.notBefore <= now, now <= author.notAfter else { return .failure(.expiredCertificate) }
        guard let signature = try? P256.Signing.ECDSASignature(derRepresentation: signed.signature),
            author.key.isValidSignature(signature, for: Self.signatureContext + Array(signed.record))
        else { return .failure(.badSignature) }
        return .success(Verified(record: WireRecords.core(wire), certificateDER: author.der))
    }

    private func checkCertificate(_ der: [UInt8], node: String, now: Date) -> Result<AuthorCache.Author, Rejection> {
        let certificate: Certificate
        do { certificate = try Certificate(derEncoded: der) } catch {
            return .failure(.malformed("author certificate: \(error)"))
        }
        guard caKeys.contains(where: { $0.isValidSignature(certificate.signature, for: certificate) }) else {
            return .failure(.untrustedCertificate)
        }
        guard certificate.notValidBefore <= now, now <= certificate.notValidAfter else { return .failure(.expiredCertificate) }
        guard let identity = FleetPKI.identity(of: certificate), identity.fleet == fleet, identity.role == .node else {
            return .failure(.untrustedCertificate)
        }
        guard identity.name == node else { return .failure(.authorMismatch(record: node, certificate: identity.name)) }
        guard let key = P256.Signing.PublicKey(certificate.publicKey) else { return .failure(.untrustedCertificate) }
        return .success(.init(der: der, key: key, notBefore: certificate.notValidBefore, notAfter: certificate.notValidAfter))
    }
}

/// Conversions between the core's ``MemberRecord`` and the wire's.
public enum WireRecords {
    public static func wire(_ r: MemberRecord) -> WireMemberRecord {
        .with {
            $0.node = r.node
            $0.peerAddress = r.peerAddress
            $0.rsyncURL = r.rsyncURL
            $0.generation = r.generation
            $0.heartbeat = r.heartbeat
            $0.syncState = switch r.syncState {
            case .inSync: .inSync
            case .waiting: .waiting
            case .syncing: .syncing
            case .behind: .behind
            case .failed: .failed
            }
            $0.publishedToken = r.publishedToken
            $0.targetToken = r.targetToken
            $0.source = r.source
            $0.progress = r.progress.map(Float.init) ?? -1
            $0.serving = UInt32(clamping: r.serving)
            $0.lastError = r.lastError
            $0.lastSyncUnixMs = r.lastSyncMillis ?? 0
            $0.targetSeenUnixMs = r.targetSeenMillis
            $0.serveSlots = UInt32(clamping: r.serveSlots)
            $0.avoid = r.avoid
            $0.planDigest = r.planDigest
            $0.attestToken = r.attestToken
            $0.attestRoot = r.attestRoot
            $0.expiresUnixMs = r.expiresMillis
            $0.suspects = r.suspects.map { suspicion in
                .with {
                    $0.node = suspicion.node
                    $0.generation = suspicion.version.generation
                    $0.heartbeat = suspicion.version.heartbeat
                }
            }
        }
    }

    public static func core(_ w: WireMemberRecord) -> MemberRecord {
        var r = MemberRecord(node: w.node, generation: w.generation)
        r.peerAddress = w.peerAddress
        r.rsyncURL = w.rsyncURL
        r.heartbeat = w.heartbeat
        r.syncState = switch w.syncState {
        case .inSync: .inSync
        case .waiting: .waiting
        case .syncing: .syncing
        case .failed: .failed
        case .behind, .unspecified, .UNRECOGNIZED: .behind
        }
        r.publishedToken = w.publishedToken
        r.targetToken = w.targetToken
        r.source = w.source
        r.progress = w.progress >= 0 ? Double(min(w.progress, 1)) : nil
        r.serving = Int(w.serving)
        r.lastError = w.lastError
        r.lastSyncMillis = w.lastSyncUnixMs > 0 ? w.lastSyncUnixMs : nil
        r.targetSeenMillis = w.targetSeenUnixMs
        r.serveSlots = Int(w.serveSlots)
        r.avoid = w.avoid
        r.planDigest = w.planDigest
        r.attestToken = w.attestToken
        r.attestRoot = w.attestRoot
        r.expiresMillis = w.expiresUnixMs
        r.suspects = w.suspects.map { Suspicion(node: $0.node, version: RecordVersion(generation: $0.generation, heartbeat: $0.heartbeat)) }
        return r
    }
}

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
    /// Checks authors' certificates, and holds the fleet's revocation list.
    public let verifier: FleetVerifier

    /// - Parameter verifier: the agent's shared verifier (so a revocation list adopted anywhere applies to records
    ///   too); nil makes one from `caPath`.
    public init(caPath: String, certPath: String, keyPath: String, verifier: FleetVerifier? = nil) throws(NetError) {
        if let verifier { self.verifier = verifier } else { self.verifier = try FleetVerifier(caPath: caPath) }
        do {
            let leaf = try Certificate(pemEncoded: String(contentsOfFile: certPath, encoding: .utf8))
            key = try P256.Signing.PrivateKey(pemRepresentation: String(contentsOfFile: keyPath, encoding: .utf8))
            var serializer = DER.Serializer()
            try serializer.serialize(leaf)
            certificateDER = serializer.serializedBytes
            guard FleetPKI.identity(of: leaf) != nil else { throw NetError(.tls, "\(certPath) has no dmirr identity") }
        } catch let error as NetError {
            throw error
        } catch {
            throw NetError(.tls, "cannot load the signing key and certificates (\(certPath), \(keyPath), \(caPath))", underlying: error)
        }
    }

    /// What a record signature covers besides the record: a fixed context, so that a member's key signing anything
    /// else (now or in a later protocol) can never produce something that verifies as a member record.
    public static let signatureContext = Array("dmirr member record, protocol 2\u{0}".utf8)

    /// The most intermediates a record may carry (proto/PROTOCOL.md).
    public static let maxIntermediates = 4

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
        /// The chain, the fleet's certificate rules or the revocation list refused the author's certificate.
        case certificate(FleetVerifier.Rejection)
        case expiredCertificate
        case authorMismatch(record: String, certificate: String)
        case badSignature
        case unknownAuthor(String)

        public var description: String {
            switch self {
            case .malformed(let why): "malformed record: \(why)"
            case .certificate(let rejection): "author \(rejection)"
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
            var certificate: Certificate
            var identity: PeerIdentity
            var key: P256.Signing.PublicKey
        }
        var authors: [String: Author] = [:]
        public init() {}

        /// The certificate (DER) last verified for `node`.
        public func certificate(of node: String) -> [UInt8]? { authors[node]?.der }

        /// Takes the certificates `other` checked (a batch verified while this cache was in use elsewhere).
        public mutating func merge(_ other: AuthorCache) {
            authors.merge(other.authors) { mine, theirs in theirs }
        }

        /// Forgets a node's certificate (its member was forgotten, or revoked).
        public mutating func forget(_ node: String) { authors[node] = nil }
    }

    /// A verified record and its author's certificate (DER).
    public struct Verified: Sendable, Equatable {
        public var record: MemberRecord
        public var certificateDER: [UInt8]
    }

    /// The revocation that covers the certificate last checked for `node`'s records, if any.
    public func revocation(ofAuthor node: String, in cache: AuthorCache) -> RevocationList.Entry? {
        cache.authors[node].flatMap { verifier.revocation(of: $0.certificate, identity: $0.identity) }
    }

    /// Checks a signed record on its own (it must carry its certificate).
    public func verify(_ signed: WireSignedRecord, now: Date = Date()) async -> Result<MemberRecord, Rejection> {
        await verify(batch: [signed], known: AuthorCache(), now: now).results[0].map(\.record)
    }

    /// Checks signed records: each one's certificate, or the one cached for its node when it carries none, chains to
    /// the fleet CA under the fleet's rules, is valid now, is not revoked and names the record's node, and the
    /// signature verifies. Certificates newly checked come back in the cache; a known certificate costs a byte
    /// comparison, not a chain validation. Runs off the caller's executor: an actor hands over a batch and is free to
    /// handle other peers meanwhile.
    @concurrent
    public func verify(batch: [WireSignedRecord], known: AuthorCache, now: Date = Date()) async
        -> (results: [Result<Verified, Rejection>], cache: AuthorCache)
    {
        var cache = known
        var results: [Result<Verified, Rejection>] = []
        results.reserveCapacity(batch.count)
        for signed in batch {
            results.append(await verify(signed, cache: &cache, now: now))
        }
        return (results, cache)
    }

    private func verify(_ signed: WireSignedRecord, cache: inout AuthorCache, now: Date) async -> Result<Verified, Rejection> {
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
            switch await checkCertificate(signed, node: wire.node, now: now) {
            case .success(let checked):
                author = checked
                cache.authors[wire.node] = checked
            case .failure(let rejection):
                return .failure(rejection)
            }
        }
        guard author.certificate.notValidBefore <= now, now <= author.certificate.notValidAfter else {
            return .failure(.expiredCertificate)
        }
        // A list adopted after the author was cached applies to its next record.
        if let entry = verifier.revocation(of: author.certificate, identity: author.identity) {
            return .failure(.certificate(.revoked("\(entry)")))
        }
        guard let signature = try? P256.Signing.ECDSASignature(derRepresentation: signed.signature),
            author.key.isValidSignature(signature, for: Self.signatureContext + Array(signed.record))
        else { return .failure(.badSignature) }
        return .success(Verified(record: WireRecords.core(wire), certificateDER: author.der))
    }

    private func checkCertificate(_ signed: WireSignedRecord, node: String, now: Date) async -> Result<AuthorCache.Author, Rejection> {
        guard signed.authorIntermediates.count <= Self.maxIntermediates else {
            return .failure(.malformed("\(signed.authorIntermediates.count) intermediates, over the cap of \(Self.maxIntermediates)"))
        }
        let der = Array(signed.authorCertificate)
        let certificate: Certificate
        let intermediates: [Certificate]
        do {
            certificate = try Certificate(derEncoded: der)
            intermediates = try signed.authorIntermediates.map { try Certificate(derEncoded: Array($0)) }
        } catch {
            return .failure(.malformed("author certificate: \(error)"))
        }
        let checked: FleetVerifier.Checked
        switch await verifier.check(certificate, intermediates: intermediates, role: .node, now: now) {
        case .success(let c): checked = c
        case .failure(let rejection): return .failure(.certificate(rejection))
        }
        guard checked.identity.name == node else { return .failure(.authorMismatch(record: node, certificate: checked.identity.name)) }
        guard let key = P256.Signing.PublicKey(certificate.publicKey) else {
            return .failure(.certificate(.untrusted("the author key is not P-256")))
        }
        return .success(.init(der: der, certificate: certificate, identity: checked.identity, key: key))
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
            $0.publicURL = r.publicURL
            $0.region = r.region
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
        r.publicURL = w.publicURL
        r.region = w.region
        r.suspects = w.suspects.map { Suspicion(node: $0.node, version: RecordVersion(generation: $0.generation, heartbeat: $0.heartbeat)) }
        return r
    }
}

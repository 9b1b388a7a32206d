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

    /// Our record, signed, ready to gossip.
    public func sign(_ record: MemberRecord) throws -> WireSignedRecord {
        let bytes: [UInt8] = try WireRecords.wire(record).serializedBytes()
        let signature = try key.signature(for: bytes)
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

        public var description: String {
            switch self {
            case .malformed(let why): "malformed record: \(why)"
            case .untrustedCertificate: "the author certificate is not signed by the fleet CA"
            case .expiredCertificate: "the author certificate is not valid now"
            case .authorMismatch(let r, let c): "record for '\(r)' carries the certificate of '\(c)'"
            case .badSignature: "the signature does not match the record"
            }
        }
    }

    /// Checks a signed record: certificate chains to the fleet CA and is valid now, names the record's node, and the
    /// signature verifies. Returns the record.
    public func verify(_ signed: WireSignedRecord, now: Date = Date()) -> Result<MemberRecord, Rejection> {
        let certificate: Certificate
        do { certificate = try Certificate(derEncoded: Array(signed.authorCertificate)) } catch {
            return .failure(.malformed("author certificate: \(error)"))
        }
        guard caKeys.contains(where: { $0.isValidSignature(certificate.signature, for: certificate) }) else {
            return .failure(.untrustedCertificate)
        }
        guard certificate.notValidBefore <= now, now <= certificate.notValidAfter else { return .failure(.expiredCertificate) }
        guard let author = FleetPKI.identity(of: certificate), author.fleet == fleet, author.role == .node else {
            return .failure(.untrustedCertificate)
        }
        let wire: WireMemberRecord
        do { wire = try WireMemberRecord(serializedBytes: Array(signed.record)) } catch {
            return .failure(.malformed("record: \(error)"))
        }
        guard wire.node == author.name else { return .failure(.authorMismatch(record: wire.node, certificate: author.name)) }
        guard let signature = try? P256.Signing.ECDSASignature(derRepresentation: signed.signature),
            let publicKey = P256.Signing.PublicKey(certificate.publicKey),
            publicKey.isValidSignature(signature, for: Array(signed.record))
        else { return .failure(.badSignature) }
        return .success(WireRecords.core(wire))
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
        return r
    }
}

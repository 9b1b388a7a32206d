import Crypto
import DmirrCore
import DmirrTestSupport
import DmirrWire
import Foundation
import SwiftASN1
import Testing
import X509

@testable import DmirrNet

/// Certificates checked by swift-certificates' Verifier with RFC 5280 and the fleet's rules, and the fleet's
/// revocation lists. Odd certificates (no EKU, intermediates) are made here with swift-certificates directly, the way an
/// attacker holding some CA-signed certificate or a careless CA operator would produce them.
@Suite struct FleetVerifierTests {
    /// A CA of fleet "ius" (path length `pathLength`) and its key.
    struct Authority {
        var certificate: Certificate
        var key: P256.Signing.PrivateKey

        init(pathLength: Int? = 0) throws {
            key = P256.Signing.PrivateKey()
            let name = try DistinguishedName { CommonName("test CA of ius") }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: pathLength))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectAlternativeNames([.uniformResourceIdentifier(PeerIdentity.caURI(fleet: "ius"))])
            }
            certificate = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: Date() - 600,
                notValidAfter: Date() + 86400, issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: extensions, issuerPrivateKey: .init(key))
        }

        /// Issues a certificate for `subjectKey` with the given extensions.
        func issue(_ subject: String, key subjectKey: P256.Signing.PrivateKey, notBefore: Date = Date() - 600,
                   @ExtensionsBuilder extensions: () throws -> Result<Certificate.Extensions, any Error>) throws -> Certificate {
            try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(subjectKey.publicKey), notValidBefore: notBefore,
                notValidAfter: Date() + 86400, issuer: certificate.subject,
                subject: try DistinguishedName { CommonName(subject) }, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try extensions().get(), issuerPrivateKey: .init(key))
        }

        /// A node certificate as `dmirr cert issue` makes it.
        func node(_ name: String, key: P256.Signing.PrivateKey, notBefore: Date = Date() - 600) throws -> Certificate {
            try issue(name, key: key, notBefore: notBefore) {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier("dmirr://ius/node/\(name)")])
            }
        }

        func intermediate(key: P256.Signing.PrivateKey, keyCertSign: Bool = true) throws -> Authority {
            var sub = self
            sub.certificate = try issue("intermediate", key: key) {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(digitalSignature: true, keyCertSign: keyCertSign))
            }
            sub.key = key
            return sub
        }
    }

    /// A record of `name` signed with `key`, carrying `certificate` and `intermediates`.
    func record(_ name: String, key: P256.Signing.PrivateKey, certificate: Certificate, intermediates: [Certificate] = []) throws -> WireSignedRecord {
        var record = MemberRecord(node: name, generation: 1)
        record.expiresMillis = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        let bytes: [UInt8] = try WireRecords.wire(record).serializedBytes()
        return try .with {
            $0.record = Data(bytes)
            $0.signature = try key.signature(for: RecordSigner.signatureContext + bytes).derRepresentation
            $0.authorCertificate = Data(try der(certificate))
            $0.authorIntermediates = try intermediates.map { Data(try der($0)) }
        }
    }

    func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    /// A verifying member: its own certificate from `authority`, written where RecordSigner reads it.
    func signer(_ authority: Authority, dir: TestDirectory) throws -> RecordSigner {
        let key = P256.Signing.PrivateKey()
        try authority.certificate.serializeAsPEM().pemString.write(toFile: dir.sub("ca.pem"), atomically: true, encoding: .utf8)
        try authority.node("checker", key: key).serializeAsPEM().pemString.write(toFile: dir.sub("checker.pem"), atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(toFile: dir.sub("checker.key"), atomically: true, encoding: .utf8)
        return try RecordSigner(caPath: dir.sub("ca.pem"), certPath: dir.sub("checker.pem"), keyPath: dir.sub("checker.key"))
    }

    func refusal(_ result: Result<MemberRecord, RecordSigner.Rejection>) -> String? {
        if case .failure(.certificate(let rejection)) = result { return "\(rejection)" }
        return nil
    }

    @Test func aRelayedRecordWhoseCertificateLacksTheFleetsRulesIsRefused() async throws {
        let dir = try TestDirectory("verifier")
        defer { dir.remove() }
        let ca = try Authority()
        let signer = try signer(ca, dir: dir)
        let key = P256.Signing.PrivateKey()

        // The control: a certificate made like `dmirr cert issue` makes them passes, so the refusals below are the
        // rules' doing.
        let control = try await signer.verify(record("m1", key: key, certificate: ca.node("m1", key: key)))
        #expect(control.map { $0.node } == .success("m1"), "\(control)")

        // CA-signed, right identity, but no EKU: refused for the EKU.
        let noEKU = try ca.issue("m2", key: key) {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            SubjectAlternativeNames([.uniformResourceIdentifier("dmirr://ius/node/m2")])
        }
        let withoutEKU = await signer.verify(try record("m2", key: key, certificate: noEKU))
        #expect(refusal(withoutEKU)?.contains("lacks the fleet's EKUs") == true, "\(withoutEKU)")

        // Only the TLS server EKU (a web certificate the CA once signed): refused too.
        let serverOnly = try ca.issue("m3", key: key) {
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth])
            SubjectAlternativeNames([.uniformResourceIdentifier("dmirr://ius/node/m3")])
        }
        let fromServerOnly = await signer.verify(try record("m3", key: key, certificate: serverOnly))
        #expect(refusal(fromServerOnly)?.contains("lacks the fleet's EKUs") == true, "\(fromServerOnly)")

        // No KeyUsage digitalSignature.
        let noSigning = try ca.issue("m4", key: key) {
            Critical(KeyUsage(keyEncipherment: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectAlternativeNames([.uniformResourceIdentifier("dmirr://ius/node/m4")])
        }
        let fromNoSigning = await signer.verify(try record("m4", key: key, certificate: noSigning))
        #expect(refusal(fromNoSigning)?.contains("may not sign") == true, "\(fromNoSigning)")

        // A critical extension nobody here understands: RFC 5280 says refuse.
        let unknownCritical = try ca.issue("m5", key: key) {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectAlternativeNames([.uniformResourceIdentifier("dmirr://ius/node/m5")])
            Certificate.Extension(oid: [1, 3, 6, 1, 4, 1, 99999, 1], critical: true, value: [0x05, 0x00])
        }
        if case .failure(.certificate(.untrusted)) = await signer.verify(try record("m5", key: key, certificate: unknownCritical)) {} else {
            Issue.record("a certificate with an unknown critical extension was accepted")
        }
    }

    @Test func aRelayedRecordSignedThroughAnIntermediateThePolicyRejectsIsRefused() async throws {
        let dir = try TestDirectory("verifier")
        defer { dir.remove() }
        let ca = try Authority(pathLength: 0)  // what `dmirr cert ca` makes: no intermediates allowed
        let signer = try signer(ca, dir: dir)
        let key = P256.Signing.PrivateKey()
        let intermediate = try ca.intermediate(key: P256.Signing.PrivateKey())
        let leaf = try intermediate.node("m1", key: key)
        let refused = await signer.verify(try record("m1", key: key, certificate: leaf, intermediates: [intermediate.certificate]))
        #expect(refusal(refused)?.contains("RFC5280Policy") == true, "path length 0 must refuse an intermediate: \(refused)")
        // Without its intermediate the leaf does not chain at all.
        let unchained = await signer.verify(try record("m1", key: key, certificate: leaf))
        #expect(refusal(unchained)?.contains("no chain to the fleet CA") == true, "\(unchained)")

        // The control: a CA that allows one intermediate accepts this chain, so path length is what refused it above…
        let dir2 = try TestDirectory("verifier")
        defer { dir2.remove() }
        let open = try Authority(pathLength: 1)
        let lenient = try self.signer(open, dir: dir2)
        let good = try open.intermediate(key: P256.Signing.PrivateKey())
        let accepted = try await lenient.verify(record("m1", key: key, certificate: good.node("m1", key: key), intermediates: [good.certificate]))
        #expect(accepted.map { $0.node } == .success("m1"), "\(accepted)")
        // …and an intermediate that may not sign certificates is refused by the fleet's rule even there.
        let notASigner = try open.intermediate(key: P256.Signing.PrivateKey(), keyCertSign: false)
        let fromNotASigner = await lenient.verify(try record("m1", key: key, certificate: notASigner.node("m1", key: key), intermediates: [notASigner.certificate]))
        #expect(refusal(fromNotASigner) != nil, "\(fromNotASigner)")

        // More than four intermediates is malformed before any chain is built.
        let tooMany = try record("m1", key: key, certificate: leaf, intermediates: Array(repeating: intermediate.certificate, count: 5))
        if case .failure(.malformed) = await signer.verify(tooMany) {} else { Issue.record("five intermediates were accepted") }
    }

    @Test func revocationListsAreCheckedAgainstTheCAAndOnlyNewerOnesReplace() throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let verifier = try FleetVerifier(caPath: fleet.dir.sub("ca.pem"))
        let caKey = try String(contentsOfFile: fleet.dir.sub("ca.key"), encoding: .utf8)
        let server = try Certificate(pemEncoded: String(contentsOfFile: fleet.dir.sub("server.pem"), encoding: .utf8))
        let identity = try #require(FleetPKI.identity(of: server))

        let byName = RevocationList(fleet: "ius", number: 2, issuedMillis: 1, entries: [
            .init(target: .identity(role: .node, name: "server"), revokedMillis: Int64(Date().timeIntervalSince1970 * 1000)),
        ])
        let signed = try FleetVerifier.signRevocations(byName, caKeyPEM: caKey)
        let opened = try verifier.openRevocations(signed).get()
        #expect(opened == byName)
        #expect(verifier.adopt(opened))
        #expect(verifier.revocation(of: server, identity: identity) != nil)
        // A certificate issued for the same name after the revocation works again.
        let later = try Certificate(pemEncoded: FleetPKI.issue(
            caCertificatePEM: String(contentsOfFile: fleet.dir.sub("ca.pem"), encoding: .utf8), caKeyPEM: caKey,
            identity: identity, days: 1, now: Date().addingTimeInterval(3600)).certificatePEM)
        #expect(verifier.revocation(of: later, identity: identity) == nil)

        // An older or equal number never replaces the list in force (a replayed old list cannot un-revoke).
        let older = RevocationList(fleet: "ius", number: 1, issuedMillis: 0, entries: [])
        #expect(!verifier.adopt(try verifier.openRevocations(FleetVerifier.signRevocations(older, caKeyPEM: caKey)).get()))
        #expect(verifier.revocation(of: server, identity: identity) != nil)

        // By serial: exactly that certificate.
        let bySerial = RevocationList(fleet: "ius", number: 3, issuedMillis: 2, entries: [
            .init(target: .serial(Array(server.serialNumber.bytes)), revokedMillis: 0),
        ])
        #expect(verifier.adopt(try verifier.openRevocations(FleetVerifier.signRevocations(bySerial, caKeyPEM: caKey)).get()))
        #expect(verifier.revocation(of: server, identity: identity) != nil)
        #expect(verifier.revocation(of: later, identity: identity) == nil)

        // Signed by a member's key, by another CA, altered, or for another fleet: refused.
        let memberKey = try String(contentsOfFile: fleet.dir.sub("good.key"), encoding: .utf8)
        let forged = try FleetVerifier.signRevocations(RevocationList(fleet: "ius", number: 99, issuedMillis: 0, entries: []), caKeyPEM: memberKey)
        #expect(throws: FleetVerifier.Rejection.self) { try verifier.openRevocations(forged).get() }
        var altered = signed
        var wire = try WireRevocationList(serializedBytes: Array(altered.list))
        wire.number = 1000
        wire.revoked = []
        altered.list = try wire.serializedData()
        #expect(throws: FleetVerifier.Rejection.self) { try verifier.openRevocations(altered).get() }
        let foreign = try FleetVerifier.signRevocations(RevocationList(fleet: "epel", number: 99, issuedMillis: 0, entries: []), caKeyPEM: caKey)
        #expect(throws: FleetVerifier.Rejection.self) { try verifier.openRevocations(foreign).get() }
        #expect(verifier.revocationList?.number == 3)

        // The file form round-trips.
        #expect(try FleetVerifier.signedRevocations(pem: FleetVerifier.pem(signed)) == signed)
    }

    @Test func aRevokedRecordAuthorIsRefusedEvenWhenItsCertificateWasCached() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let checker = try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("good.pem"), keyPath: fleet.dir.sub("good.key"))
        let server = try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("server.pem"), keyPath: fleet.dir.sub("server.key"))
        var record = MemberRecord(node: "server", generation: 1)
        record.expiresMillis = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        let first = try server.sign(record)
        let (before, cache) = await checker.verify(batch: [first], known: .init())
        #expect(before[0].map(\.record.node) == .success("server"))

        let list = RevocationList(fleet: "ius", number: 1, issuedMillis: 0, entries: [
            .init(target: .identity(role: .node, name: "server"), revokedMillis: Int64(Date().timeIntervalSince1970 * 1000) + 1000),
        ])
        let caKey = try String(contentsOfFile: fleet.dir.sub("ca.key"), encoding: .utf8)
        #expect(checker.verifier.adopt(try checker.verifier.openRevocations(FleetVerifier.signRevocations(list, caKeyPEM: caKey)).get()))
        record.heartbeat = 1
        var bare = try server.sign(record)
        bare.authorCertificate = Data()
        let (after, _) = await checker.verify(batch: [bare], known: cache)
        if case .failure(.certificate(.revoked)) = after[0] {} else { Issue.record("a revoked author's record passed: \(after[0])") }
        #expect(checker.revocation(ofAuthor: "server", in: cache) != nil)
    }
}

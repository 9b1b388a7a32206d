import DmirrCore
import DmirrWire
import Foundation
import Testing

@testable import DmirrNet

@Suite struct RecordSignerTests {
    func signer(_ fleet: TestFleet, _ name: String) throws -> RecordSigner {
        try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("\(name).pem"), keyPath: fleet.dir.sub("\(name).key"))
    }

    @Test func signedRecordsVerifyAndRoundTrip() throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let server = try signer(fleet, "server")
        var record = MemberRecord(node: "server", generation: 1_800_000_000)
        record.heartbeat = 42
        record.syncState = .syncing
        record.publishedToken = "T1"
        record.targetToken = "T2"
        record.source = "upstream"
        record.progress = 0.5
        record.serving = 3
        record.lastSyncMillis = 1_800_000_000_123
        record.expiresMillis = 1_800_000_060_000
        let signed = try server.sign(record)
        // Any member verifies it, including one relaying it.
        #expect(try signer(fleet, "good").verify(signed) == .success(record))
    }

    @Test func aSignatureWithoutTheRecordContextDoesNotVerify() throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let server = try signer(fleet, "server")
        var signed = try server.sign(MemberRecord(node: "server", generation: 1))
        #expect(try signer(fleet, "good").verify(signed).map(\.node) == .success("server"))
        // The same key's signature over the bare record bytes (what protocol 1 signed, or anything else the key might
        // sign) is not a record signature.
        signed.signature = try server.key.signature(for: Array(signed.record)).derRepresentation
        #expect(try signer(fleet, "good").verify(signed) == .failure(.badSignature))
    }

    @Test func forgedTamperedAndForeignRecordsAreRejected() throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let verifier = try signer(fleet, "server")
        let good = try signer(fleet, "good")

        // "good" relays a record it wrote for "server", signed with its own key and certificate.
        let forged = try good.sign(MemberRecord(node: "server", generation: 9))
        #expect(verifier.verify(forged) == .failure(.authorMismatch(record: "server", certificate: "good")))

        // "good" alters a genuine record of "server" in transit, keeping server's signature and certificate.
        var genuine = try verifier.sign(MemberRecord(node: "server", generation: 9))
        var wire = try WireMemberRecord(serializedBytes: Array(genuine.record))
        wire.publishedToken = "lie"
        genuine.record = try wire.serializedData()
        #expect(verifier.verify(genuine) == .failure(.badSignature))

        // Certificates from another CA with the same fleet name, expired ones, and operators' are not authors.
        let impostor = try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("impostor.pem"), keyPath: fleet.dir.sub("impostor.key"))
        #expect(verifier.verify(try impostor.sign(MemberRecord(node: "server", generation: 1))) == .failure(.untrustedCertificate))
        let expired = try signer(fleet, "expired")
        #expect(verifier.verify(try expired.sign(MemberRecord(node: "expired", generation: 1))) == .failure(.expiredCertificate))
        let alice = try signer(fleet, "alice")
        #expect(verifier.verify(try alice.sign(MemberRecord(node: "alice", generation: 1))) == .failure(.untrustedCertificate))

        var garbage = WireSignedRecord()
        garbage.authorCertificate = Data([1, 2, 3])
        if case .failure(.malformed) = verifier.verify(garbage) {} else { Issue.record("garbage certificate accepted") }
    }

    @Test func recordsWithoutACertificateVerifyOnlyAgainstACheckedOne() throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let verifier = try signer(fleet, "good")
        let server = try signer(fleet, "server")
        var cache = RecordSigner.AuthorCache()

        var bare = try server.sign(MemberRecord(node: "server", generation: 2))
        bare.authorCertificate = Data()
        #expect(verifier.verify(bare, cache: &cache).map(\.record.node) == .failure(.unknownAuthor("server")))

        // Once a record of "server" arrived with its certificate, later ones may come bare.
        let whole = try server.sign(MemberRecord(node: "server", generation: 1))
        #expect(verifier.verify(whole, cache: &cache).map(\.record.generation) == .success(1))
        let verified = verifier.verify(bare, cache: &cache)
        #expect(verified.map(\.record.generation) == .success(2))
        // The certificate comes back with it, so the record can be stored and relayed whole.
        #expect(verified.map(\.certificateDER) == .success(Array(whole.authorCertificate)))

        // A bare record for "server" signed by someone else's key does not pass on the strength of the cache.
        var forged = try verifier.sign(MemberRecord(node: "server", generation: 3))
        forged.authorCertificate = Data()
        #expect(verifier.verify(forged, cache: &cache).map(\.record.node) == .failure(.badSignature))
    }
}

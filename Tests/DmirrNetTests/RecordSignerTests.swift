import DmirrCore
import DmirrWire
import Foundation
import Testing

@testable import DmirrNet

@Suite struct RecordSignerTests {
    func signer(_ fleet: TestFleet, _ name: String) throws -> RecordSigner {
        try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("\(name).pem"), keyPath: fleet.dir.sub("\(name).key"))
    }

    @Test func signedRecordsVerifyAndRoundTrip() async throws {
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
        #expect(try await signer(fleet, "good").verify(signed) == .success(record))
    }

    @Test func aSignatureWithoutTheRecordContextDoesNotVerify() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let server = try signer(fleet, "server")
        var signed = try server.sign(MemberRecord(node: "server", generation: 1))
        #expect(try await signer(fleet, "good").verify(signed).map(\.node) == .success("server"))
        // The same key's signature over the bare record bytes (what protocol 1 signed, or anything else the key might
        // sign) is not a record signature.
        signed.signature = try server.key.signature(for: Array(signed.record)).derRepresentation
        #expect(try await signer(fleet, "good").verify(signed) == .failure(.badSignature))
    }

    @Test func forgedTamperedAndForeignRecordsAreRejected() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let verifier = try signer(fleet, "server")
        let good = try signer(fleet, "good")

        // "good" relays a record it wrote for "server", signed with its own key and certificate.
        let forged = try good.sign(MemberRecord(node: "server", generation: 9))
        #expect(await verifier.verify(forged) == .failure(.authorMismatch(record: "server", certificate: "good")))

        // "good" alters a genuine record of "server" in transit, keeping server's signature and certificate.
        var genuine = try verifier.sign(MemberRecord(node: "server", generation: 9))
        var wire = try WireMemberRecord(serializedBytes: Array(genuine.record))
        wire.publishedToken = "lie"
        genuine.record = try wire.serializedData()
        #expect(await verifier.verify(genuine) == .failure(.badSignature))

        // Certificates from another CA with the same fleet name, expired ones, and operators' are not authors.
        let impostor = try RecordSigner(caPath: fleet.dir.sub("ca.pem"), certPath: fleet.dir.sub("impostor.pem"), keyPath: fleet.dir.sub("impostor.key"))
        let fromImpostor = await verifier.verify(try impostor.sign(MemberRecord(node: "server", generation: 1)))
        #expect(rejectedCertificate(fromImpostor)?.contains("fleet CA") == true, "\(fromImpostor)")
        let expired = try signer(fleet, "expired")
        let fromExpired = await verifier.verify(try expired.sign(MemberRecord(node: "expired", generation: 1)))
        #expect(rejectedCertificate(fromExpired)?.contains("expired") == true, "\(fromExpired)")
        let alice = try signer(fleet, "alice")
        let fromOperator = await verifier.verify(try alice.sign(MemberRecord(node: "alice", generation: 1)))
        #expect(rejectedCertificate(fromOperator)?.contains("is not a node certificate") == true, "\(fromOperator)")

        var garbage = WireSignedRecord()
        garbage.authorCertificate = Data([1, 2, 3])
        if case .failure(.malformed) = await verifier.verify(garbage) {} else { Issue.record("garbage certificate accepted") }
    }

    /// The reason the verifier gave for refusing a record's certificate, or nil when it was not refused for that.
    func rejectedCertificate(_ result: Result<MemberRecord, RecordSigner.Rejection>) -> String? {
        if case .failure(.certificate(let rejection)) = result { return "\(rejection)" }
        return nil
    }

    @Test func recordsWithoutACertificateVerifyOnlyAgainstACheckedOne() async throws {
        let fleet = try TestFleet()
        defer { fleet.dir.remove() }
        let verifier = try signer(fleet, "good")
        let server = try signer(fleet, "server")
        var cache = RecordSigner.AuthorCache()
        func verify(_ signed: WireSignedRecord) async -> Result<RecordSigner.Verified, RecordSigner.Rejection> {
            let (results, learned) = await verifier.verify(batch: [signed], known: cache)
            cache = learned
            return results[0]
        }

        var bare = try server.sign(MemberRecord(node: "server", generation: 2))
        bare.authorCertificate = Data()
        #expect(await verify(bare).map(\.record.node) == .failure(.unknownAuthor("server")))

        // Once a record of "server" arrived with its certificate, later ones may come bare.
        let whole = try server.sign(MemberRecord(node: "server", generation: 1))
        #expect(await verify(whole).map(\.record.generation) == .success(1))
        let verified = await verify(bare)
        #expect(verified.map(\.record.generation) == .success(2))
        // The certificate comes back with it, so the record can be stored and relayed whole.
        #expect(verified.map(\.certificateDER) == .success(Array(whole.authorCertificate)))

        // A bare record for "server" signed by someone else's key does not pass on the strength of the cache.
        var forged = try verifier.sign(MemberRecord(node: "server", generation: 3))
        forged.authorCertificate = Data()
        #expect(await verify(forged).map(\.record.node) == .failure(.badSignature))
    }
}

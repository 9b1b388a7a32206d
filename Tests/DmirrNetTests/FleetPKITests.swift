import DmirrCore
import DmirrTestSupport
import Foundation
import Testing
import X509

@testable import DmirrNet

@Suite struct FleetPKITests {
    @Test func caAndLeafVerifyWithOpenSSLAndCarryTheIdentity() throws {
        let dir = try TestDirectory("pki")
        defer { dir.remove() }
        let ca = try FleetPKI.makeCA(fleet: "ius")
        let leaf = try FleetPKI.issue(
            caCertificatePEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM,
            identity: PeerIdentity(fleet: "ius", role: .node, name: "mirror-a"), hosts: ["mirror-a.example.org"],
            ips: ["127.0.0.1", "::1"])
        try FleetPKI.write(ca.certificatePEM, to: dir.sub("ca.pem"), secret: false, force: false)
        try FleetPKI.write(leaf.certificatePEM, to: dir.sub("mirror-a.pem"), secret: false, force: false)

        // The real openssl accepts the chain and sees both EKUs and the URI SAN.
        let verify = try CLI.run("openssl", ["verify", "-CAfile", dir.sub("ca.pem"), "-purpose", "sslserver", dir.sub("mirror-a.pem")])
        #expect(verify.exitCode == 0, "\(verify.stdout) \(verify.stderr)")
        let verifyClient = try CLI.run("openssl", ["verify", "-CAfile", dir.sub("ca.pem"), "-purpose", "sslclient", dir.sub("mirror-a.pem")])
        #expect(verifyClient.exitCode == 0, "\(verifyClient.stderr)")
        let text = try CLI.run("openssl", ["x509", "-in", dir.sub("mirror-a.pem"), "-noout", "-text"]).stdout
        #expect(text.contains("URI:dmirr://ius/node/mirror-a"))
        #expect(text.contains("DNS:mirror-a.example.org"))
        #expect(text.contains("IP Address:127.0.0.1"))
        #expect(text.contains("TLS Web Server Authentication") && text.contains("TLS Web Client Authentication"))
        #expect(text.contains("CA:FALSE"))

        let parsed = try Certificate(pemEncoded: leaf.certificatePEM)
        #expect(FleetPKI.identity(of: parsed) == PeerIdentity(fleet: "ius", role: .node, name: "mirror-a"))
        #expect(FleetPKI.fleet(ofCA: try Certificate(pemEncoded: ca.certificatePEM)) == "ius")
        let days = parsed.notValidAfter.timeIntervalSince(parsed.notValidBefore) / 86400
        #expect(days > 89.9 && days < 90.1)
    }

    @Test func anotherFleetsCAIsNotTrusted() throws {
        let dir = try TestDirectory("pki2")
        defer { dir.remove() }
        let ours = try FleetPKI.makeCA(fleet: "ius")
        let theirs = try FleetPKI.makeCA(fleet: "ius")  // same name, different key: still another CA
        let leaf = try FleetPKI.issue(
            caCertificatePEM: theirs.certificatePEM, caKeyPEM: theirs.privateKeyPEM,
            identity: PeerIdentity(fleet: "ius", role: .operator, name: "alice"))
        try FleetPKI.write(ours.certificatePEM, to: dir.sub("ca.pem"), secret: false, force: false)
        try FleetPKI.write(leaf.certificatePEM, to: dir.sub("alice.pem"), secret: false, force: false)
        let verify = try CLI.run("openssl", ["verify", "-CAfile", dir.sub("ca.pem"), dir.sub("alice.pem")])
        #expect(verify.exitCode != 0)
    }

    @Test func issuingRefusesMismatchedInput() throws {
        let ca = try FleetPKI.makeCA(fleet: "ius")
        let other = try FleetPKI.makeCA(fleet: "epel")
        #expect(throws: PKIError.self) {
            _ = try FleetPKI.issue(caCertificatePEM: ca.certificatePEM, caKeyPEM: other.privateKeyPEM,
                                   identity: PeerIdentity(fleet: "ius", role: .node, name: "a"))
        }
        #expect {
            _ = try FleetPKI.issue(caCertificatePEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM,
                                   identity: PeerIdentity(fleet: "epel", role: .node, name: "a"))
        } throws: { "\($0)".contains("the CA is for fleet 'ius', not 'epel'") }
        #expect {
            _ = try FleetPKI.issue(caCertificatePEM: ca.certificatePEM, caKeyPEM: ca.privateKeyPEM,
                                   identity: PeerIdentity(fleet: "ius", role: .node, name: "a"), ips: ["not-an-ip"])
        } throws: { "\($0)".contains("'not-an-ip' is not an IPv4 or IPv6 address") }
        #expect(throws: PKIError.self) { _ = try FleetPKI.makeCA(fleet: "bad/name") }
    }

    @Test func keysAreWrittenPrivateAndNeverOverwritten() throws {
        let dir = try TestDirectory("pki3")
        defer { dir.remove() }
        let ca = try FleetPKI.makeCA(fleet: "ius")
        try FleetPKI.write(ca.privateKeyPEM, to: dir.sub("ca.key"), secret: true, force: false)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.sub("ca.key"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect {
            try FleetPKI.write("x", to: dir.sub("ca.key"), secret: true, force: false)
        } throws: { "\($0)".contains("already exists; pass --force") }
        // Written as given, ending in a newline as PEM files do (so that `cat a.pem b.pem` makes a bundle).
        #expect(try String(contentsOfFile: dir.sub("ca.key"), encoding: .utf8) == Self.withNewline(ca.privateKeyPEM))
        try FleetPKI.write("x", to: dir.sub("ca.key"), secret: true, force: true)
        #expect(try String(contentsOfFile: dir.sub("ca.key"), encoding: .utf8) == "x\n")
    }

    static func withNewline(_ pem: String) -> String { pem.hasSuffix("\n") ? pem : pem + "\n" }

    @Test func aKeyIsNeverWrittenThroughAFilePlantedAtItsTemporaryName() throws {
        let dir = try TestDirectory("pki4")
        defer { dir.remove() }
        // Someone who can write to the directory plants a symlink where the key's temporary file will be, pointing at a
        // file they can read.
        try "public\n".write(toFile: dir.sub("readable"), atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir.sub("node.key.dmirr-new"), withDestinationPath: dir.sub("readable"))
        let ca = try FleetPKI.makeCA(fleet: "ius")
        try FleetPKI.write(ca.privateKeyPEM, to: dir.sub("node.key"), secret: true, force: false)
        #expect(try String(contentsOfFile: dir.sub("readable"), encoding: .utf8) == "public\n", "the key went through the symlink")
        #expect(try String(contentsOfFile: dir.sub("node.key"), encoding: .utf8) == Self.withNewline(ca.privateKeyPEM))
        var st = stat()
        #expect(lstat(dir.sub("node.key"), &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && (st.st_mode & 0o777) == 0o600)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("node.key.dmirr-new")))
    }
}

@Suite struct PeerIdentityTests {
    @Test func parsesOnlyExactIdentities() {
        #expect(PeerIdentity(uri: "dmirr://ius/node/mirror-a") == PeerIdentity(fleet: "ius", role: .node, name: "mirror-a"))
        #expect(PeerIdentity(uri: "dmirr://ius/operator/alice")?.role == .operator)
        for bad in ["dmirr://ius/ca", "dmirr://ius/node/", "dmirr://ius/admin/x", "https://ius/node/a", "dmirr://ius/node/a/b", "dmirr:///node/a", "dmirr://i us/node/a"] {
            #expect(PeerIdentity(uri: bad) == nil, "\(bad)")
        }
    }

    @Test func namesAreAsciiLettersDigitsAndThreeMarksUpTo63() {
        for good in ["m0", "Mirror-a.b_c", "0z", "AZaz09", String(repeating: "a", count: 63)] {
            #expect(PeerIdentity.isValidName(good), "\(good)")
        }
        // Non-ASCII letters and digits (é, Cyrillic а, fullwidth ａ, Arabic-Indic ٣), marks or symbols first, the bytes
        // just outside the ranges, and 64 characters.
        for bad in ["", "é", "mirror-а", "ａ", "٣", "-m", ".m", "_m", "m/1", "m 1", "m@", "m[", "m`", "m{", "m:", "\r\n",
                    String(repeating: "a", count: 64)] {
            #expect(!PeerIdentity.isValidName(bad), "\(bad)")
        }
    }
}

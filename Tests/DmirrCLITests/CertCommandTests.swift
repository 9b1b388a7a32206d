import DmirrTestSupport
import Foundation
import Testing

@Suite struct CertCommandTests {
    @Test func caThenIssueThroughTheBinary() throws {
        let dir = try TestDirectory("cert")
        defer { dir.remove() }
        let ca = try CLI.dmirr(["cert", "ca", "--fleet", "ius", "--out", dir.sub("ca")])
        #expect(ca.exitCode == 0, "\(ca.stderr)")
        let node = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "mirror-a", "--host", "localhost", "--ip", "127.0.0.1", "--out", dir.sub("nodes")])
        #expect(node.exitCode == 0, "\(node.stderr)")
        #expect(node.stdout.contains("dmirr://ius/node/mirror-a"))
        let op = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "alice", "--operator", "--days", "7", "--out", dir.sub("ops")])
        #expect(op.exitCode == 0)
        #expect(op.stdout.contains("dmirr://ius/operator/alice"))

        for key in [dir.sub("ca/ca.key"), dir.sub("nodes/mirror-a.key"), dir.sub("ops/alice.key")] {
            #expect(try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int == 0o600, "\(key)")
        }
        let verify = try CLI.run("openssl", ["verify", "-CAfile", dir.sub("ca/ca.pem"), dir.sub("nodes/mirror-a.pem"), dir.sub("ops/alice.pem")])
        #expect(verify.exitCode == 0, "\(verify.stderr)")

        // Never overwrites without --force, and says so; the existing key is untouched.
        let before = try String(contentsOfFile: dir.sub("nodes/mirror-a.key"), encoding: .utf8)
        let again = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "mirror-a", "--out", dir.sub("nodes")])
        #expect(again.exitCode == 2)
        #expect(again.stderr.contains("already exists; pass --force"))
        #expect(try String(contentsOfFile: dir.sub("nodes/mirror-a.key"), encoding: .utf8) == before)
        let forced = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "mirror-a", "--out", dir.sub("nodes"), "--force"])
        #expect(forced.exitCode == 0)
        #expect(try String(contentsOfFile: dir.sub("nodes/mirror-a.key"), encoding: .utf8) != before)

        let missing = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("nope"), "--node", "x", "--out", dir.sub("x")])
        #expect(missing.exitCode == 2)
        #expect(missing.stderr.contains("cannot read \(dir.sub("nope"))/ca.pem"))
        let badName = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "../evil", "--out", dir.sub("x")])
        #expect(badName.exitCode == 2)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("x")))
    }

    @Test func revokeBuildsOnTheListItSignsAndRefusesWhatItCannotCheck() throws {
        let dir = try TestDirectory("cert")
        defer { dir.remove() }
        #expect(try CLI.dmirr(["cert", "ca", "--fleet", "ius", "--out", dir.sub("ca")]).exitCode == 0)
        let issued = try CLI.dmirr(["cert", "issue", "--ca", dir.sub("ca"), "--node", "m1", "--out", dir.sub("nodes")])
        // The serial is printed, as openssl prints it, so the operator can revoke one certificate.
        let serial = try #require(issued.stdout.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) })
        let openssl = try CLI.run("openssl", ["x509", "-noout", "-serial", "-in", dir.sub("nodes/m1.pem")])
        #expect(openssl.stdout.lowercased().contains(serial.replacingOccurrences(of: ":", with: "")), "\(serial) vs \(openssl.stdout)")

        let first = try CLI.dmirr(["cert", "revoke", "--ca", dir.sub("ca"), "m2"])
        #expect(first.exitCode == 0, "\(first.stderr)")
        #expect(first.stdout.contains("revocation list 1 of fleet ius, 1 revocation(s)"), "\(first.stdout)")
        let second = try CLI.dmirr(["cert", "revoke", "--ca", dir.sub("ca"), "--serial", serial])
        #expect(second.exitCode == 0, "\(second.stderr)")
        #expect(second.stdout.contains("revocation list 2 of fleet ius, 2 revocation(s)"), "\(second.stdout)")
        #expect(second.stdout.contains("certificate serial \(serial.lowercased())"), "\(second.stdout)")
        let operatorRevoked = try CLI.dmirr(["cert", "revoke", "--ca", dir.sub("ca"), "alice", "--operator"])
        #expect(operatorRevoked.stdout.contains("revocation list 3") && operatorRevoked.stdout.contains("every operator certificate of 'alice'"))

        // Bad input: a clear error, exit 2, and the list on disk untouched.
        let before = try String(contentsOfFile: dir.sub("ca/crl.pem"), encoding: .utf8)
        let cases: [([String], String)] = [
            (["cert", "revoke", "--ca", dir.sub("ca"), "../evil"], "is not a valid name"),
            (["cert", "revoke", "--ca", dir.sub("ca"), "--serial", "xyz"], "is not a serial number"),
            (["cert", "revoke", "--ca", dir.sub("ca")], "give either NAME or --serial"),
            (["cert", "revoke", "--ca", dir.sub("ca"), "m3", "--serial", serial], "give either NAME or --serial"),
            (["cert", "revoke", "--ca", dir.sub("nope"), "m3"], "nope/ca.pem"),
        ]
        for (arguments, message) in cases {
            let r = try CLI.dmirr(arguments)
            #expect(r.exitCode != 0 && r.stderr.contains(message), "\(arguments): \(r.exitCode) \(r.stderr)")
        }
        #expect(try String(contentsOfFile: dir.sub("ca/crl.pem"), encoding: .utf8) == before)

        // A list the CA cannot verify (another fleet's CA signed it) is never extended or overwritten.
        #expect(try CLI.dmirr(["cert", "ca", "--fleet", "ius", "--out", dir.sub("other")]).exitCode == 0)
        let foreign = try CLI.dmirr(["cert", "revoke", "--ca", dir.sub("other"), "m3", "--out", dir.sub("ca/crl.pem")])
        #expect(foreign.exitCode == 2)
        #expect(foreign.stderr.contains("not signed by the fleet CA") && foreign.stderr.contains("move it away"), "\(foreign.stderr)")
        #expect(try String(contentsOfFile: dir.sub("ca/crl.pem"), encoding: .utf8) == before)
    }
}

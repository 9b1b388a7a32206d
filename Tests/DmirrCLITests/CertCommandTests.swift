import DmirrCore
import DmirrNet
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

    /// Enrolment without moving keys: the host makes its key and a request, the CA holder signs the request, and the
    /// certificate works with the key that never left the host.
    @Test func requestOnTheHostSignAtTheCAAndTheKeyNeverMoves() throws {
        let dir = try TestDirectory("csr")
        defer { dir.remove() }
        #expect(try CLI.dmirr(["cert", "ca", "--fleet", "ius", "--out", dir.sub("ca")]).exitCode == 0)
        let request = try CLI.dmirr(["cert", "request", "--fleet", "ius", "--node", "mirror-b", "--host", "mirror-b.example.org",
                                     "--ip", "192.0.2.7", "--out", dir.sub("host")])
        #expect(request.exitCode == 0, "\(request.stderr)")
        #expect(try FileManager.default.attributesOfItem(atPath: dir.sub("host/mirror-b.key"))[.posixPermissions] as? Int == 0o600)
        // The CA holder gets only the request.
        try FileManager.default.createDirectory(atPath: dir.sub("inbox"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir.sub("host/mirror-b.csr"), toPath: dir.sub("inbox/mirror-b.csr"))
        let signed = try CLI.dmirr(["cert", "sign", "--ca", dir.sub("ca"), "--csr", dir.sub("inbox/mirror-b.csr"), "--out", dir.sub("issued")])
        #expect(signed.exitCode == 0, "\(signed.stderr)")
        #expect(signed.stdout.contains("dmirr://ius/node/mirror-b"), "\(signed.stdout)")
        for place in ["ca", "inbox", "issued"] {
            #expect(try !FileManager.default.contentsOfDirectory(atPath: dir.sub(place)).contains { $0.hasPrefix("mirror-b") && $0.hasSuffix(".key") },
                    "a key for mirror-b appeared in \(place)")
        }
        // The certificate and the host's key work together: TLS loads them, and the fleet's verifier accepts the
        // certificate as a node of fleet ius, with the names the host asked for.
        try FileManager.default.copyItem(atPath: dir.sub("issued/mirror-b.pem"), toPath: dir.sub("host/mirror-b.pem"))
        let tls = try FleetTLS(caPath: dir.sub("ca/ca.pem"), certPath: dir.sub("host/mirror-b.pem"), keyPath: dir.sub("host/mirror-b.key"))
        #expect(tls.identity == PeerIdentity(fleet: "ius", role: .node, name: "mirror-b"))
        let text = try CLI.run("openssl", ["x509", "-noout", "-text", "-in", dir.sub("host/mirror-b.pem")]).stdout
        #expect(text.contains("DNS:mirror-b.example.org") && text.contains("IP Address:192.0.2.7") && text.contains("TLS Web Client Authentication"), "\(text)")
        #expect(try CLI.run("openssl", ["verify", "-CAfile", dir.sub("ca/ca.pem"), dir.sub("host/mirror-b.pem")]).exitCode == 0)

        // Refusals: each exits 2, says why, and writes nothing.
        // The request altered in transit: its subject renamed (mirror-b → mirror-c), still well-formed DER.
        let pem = try String(contentsOfFile: dir.sub("inbox/mirror-b.csr"), encoding: .utf8)
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        var der = try #require(Data(base64Encoded: body))
        let at = try #require(der.firstRange(of: Data("node mirror-b".utf8)))
        der[at.upperBound - 1] = UInt8(ascii: "c")
        let tampered = "-----BEGIN CERTIFICATE REQUEST-----\n" + der.base64EncodedString(options: .lineLength64Characters)
            + "\n-----END CERTIFICATE REQUEST-----\n"
        try tampered.write(toFile: dir.sub("inbox/tampered.csr"), atomically: true, encoding: .utf8)
        // Requests other tools make: an RSA key, a name no certificate may carry, another fleet, an operator signed as a node.
        let openssl: [(String, [String])] = [
            ("rsa", ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.sub("inbox/rsa.key"), "-subj", "/CN=x",
                     "-addext", "subjectAltName=URI:dmirr://ius/node/rsa", "-out", dir.sub("inbox/rsa.csr")]),
            ("badname", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", dir.sub("inbox/bad.key"),
                         "-subj", "/CN=x", "-addext", "subjectAltName=URI:dmirr://ius/node/../evil", "-out", dir.sub("inbox/badname.csr")]),
        ]
        for (name, arguments) in openssl {
            let made = try CLI.run("openssl", arguments)
            #expect(made.exitCode == 0, "\(name): \(made.stderr)")
        }
        #expect(try CLI.dmirr(["cert", "request", "--fleet", "epel", "--node", "x", "--out", dir.sub("inbox")]).exitCode == 0)
        #expect(try CLI.dmirr(["cert", "request", "--fleet", "ius", "--node", "alice", "--operator", "--out", dir.sub("inbox")]).exitCode == 0)
        let cases: [(String, [String], String)] = [
            ("tampered", [], "signature does not match"),
            ("rsa", [], "not ECDSA P-256"),
            ("badname", [], "exactly one valid dmirr://"),
            ("x", [], "for fleet 'epel'"),
            ("alice", [], "pass --operator"),
            ("mirror-b", ["--operator"], "no --operator for a node"),
        ]
        for (name, extra, message) in cases {
            let r = try CLI.dmirr(["cert", "sign", "--ca", dir.sub("ca"), "--csr", dir.sub("inbox/\(name).csr"), "--out", dir.sub("refused")] + extra)
            #expect(r.exitCode == 2 && r.stderr.contains(message) && r.stderr.contains("\(name).csr"), "\(name): \(r.exitCode) \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir.sub("refused")))
        let badNode = try CLI.dmirr(["cert", "request", "--fleet", "ius", "--node", "../evil", "--out", dir.sub("nope")])
        #expect(badNode.exitCode == 2 && badNode.stderr.contains("not a valid node name"))
        #expect(!FileManager.default.fileExists(atPath: dir.sub("nope")))
        let operatorSigned = try CLI.dmirr(["cert", "sign", "--ca", dir.sub("ca"), "--csr", dir.sub("inbox/alice.csr"), "--operator", "--out", dir.sub("issued")])
        #expect(operatorSigned.exitCode == 0 && operatorSigned.stdout.contains("dmirr://ius/operator/alice"), "\(operatorSigned.stderr)")
    }
}

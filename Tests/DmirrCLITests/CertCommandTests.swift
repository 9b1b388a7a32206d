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
}

import DmirrCore
import DmirrTestSupport
import Foundation
import Testing

/// The files in contrib/ are what operators install: they must be accepted by the tools that read them.
@Suite struct ContribTests {
    static var contrib: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/contrib"
    }

    /// The example config names every key the loader knows, and passes `dmirr check --offline` once its paths exist
    /// (moved under a scratch directory, with certificates made for it).
    @Test func theExampleConfigHasEveryKeyAndPassesCheck() throws {
        let dir = try TestDirectory("contrib")
        defer { dir.remove() }
        let example = try String(contentsOfFile: Self.contrib + "/dmirr.toml.example", encoding: .utf8)
        for (table, keys) in ConfigLoader.knownKeys {
            for key in keys {
                // As a line of its own table, commented out or not.
                let pattern = "(?m)^#? ?\(NSRegularExpression.escapedPattern(for: key)) *="
                #expect(example.range(of: pattern, options: .regularExpression) != nil, "[\(table)] \(key) is missing from the example")
            }
        }
        var text = example.replacingOccurrences(of: "/etc/dmirr", with: dir.sub("etc"))
            .replacingOccurrences(of: "/srv/mirror", with: dir.sub("srv"))
            .replacingOccurrences(of: "/var/lib/dmirr", with: dir.sub("state"))
        text = text.replacingOccurrences(of: "url             = \"rsync://dl.example.org/ius\"", with: "url             = \"\(dir.sub("upstream"))\"")
        for sub in ["etc/tls", "srv/ius", "state", "upstream"] {
            try FileManager.default.createDirectory(atPath: dir.sub(sub), withIntermediateDirectories: true)
        }
        #expect(try CLI.dmirr(["cert", "ca", "--fleet", "ius", "--out", dir.sub("etc/tls")]).exitCode == 0)
        #expect(try CLI.dmirr(["cert", "issue", "--ca", dir.sub("etc/tls"), "--node", "mirror-a", "--out", dir.sub("etc/tls")]).exitCode == 0)
        try text.write(toFile: dir.sub("dmirr.toml"), atomically: true, encoding: .utf8)
        let check = try CLI.dmirr(["check", "-c", dir.sub("dmirr.toml"), "--offline"])
        #expect(check.exitCode == 0, "\(check.stdout)\n\(check.stderr)")
    }

    /// The operator guide's reference has a row for every key the loader knows.
    @Test func theOperatorGuideReferencesEveryKey() throws {
        let guide = try String(contentsOfFile: Self.contrib + "/../docs/operator-guide.md", encoding: .utf8)
        for (table, keys) in ConfigLoader.knownKeys {
            for key in keys {
                let name = table.isEmpty ? "`\(key)`" : "`[\(table)] \(key)`"
                #expect(guide.contains("| \(name) |"), "\(name) has no row in docs/operator-guide.md")
            }
        }
    }

    /// `systemd-analyze verify` accepts the units, pointed at the binary the tests built.
    @Test func theUnitsPassSystemdAnalyzeVerify() throws {
        let dir = try TestDirectory("units")
        defer { dir.remove() }
        for unit in ["dmirr-agent.service", "dmirr-sync@.service", "dmirr-sync@.timer"] {
            let text = try String(contentsOfFile: Self.contrib + "/" + unit, encoding: .utf8)
                .replacingOccurrences(of: "/usr/local/bin/dmirr", with: CLI.dmirrPath)
            try text.write(toFile: dir.sub(unit), atomically: true, encoding: .utf8)
        }
        // An instance of the template, as `systemctl enable dmirr-sync@ius.timer` makes it.
        try FileManager.default.copyItem(atPath: dir.sub("dmirr-sync@.service"), toPath: dir.sub("dmirr-sync@ius.service"))
        try FileManager.default.copyItem(atPath: dir.sub("dmirr-sync@.timer"), toPath: dir.sub("dmirr-sync@ius.timer"))
        let verify = try CLI.run("systemd-analyze", ["verify", "--man=no", dir.sub("dmirr-agent.service"), dir.sub("dmirr-sync@ius.service"), dir.sub("dmirr-sync@ius.timer")])
        // Only problems with the files themselves count; this container runs no systemd manager.
        let problems = (verify.stdout + verify.stderr).split(separator: "\n").filter { $0.contains(dir.path) }
        #expect(problems.isEmpty, "\(verify.exitCode): \(verify.stdout)\(verify.stderr)")
    }
}

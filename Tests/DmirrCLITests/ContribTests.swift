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

    /// `scripts/install.sh`, staged under a directory as a packager would: the binary, the units, the example config,
    /// and private directories for the state and the key.
    @Test func theInstallScriptStagesAWorkingLayout() throws {
        let dir = try TestDirectory("install")
        defer { dir.remove() }
        let root = URL(fileURLWithPath: Self.contrib).deletingLastPathComponent().path
        let stage = dir.sub("stage")
        let run = try CLI.run("/bin/bash", [root + "/scripts/install.sh", "--binary", CLI.dmirrPath, "--destdir", stage, "--no-docs"], timeout: 120)
        #expect(run.exitCode == 0, "\(run.stdout)\(run.stderr)")
        let installed = try CLI.run(stage + "/usr/local/bin/dmirr", ["--version"])
        #expect(installed.exitCode == 0 && !installed.stdout.isEmpty)
        for unit in ["dmirr-agent.service", "dmirr-sync@.service", "dmirr-sync@.timer"] {
            #expect(FileManager.default.fileExists(atPath: stage + "/etc/systemd/system/" + unit), "\(unit)")
        }
        // The example config (the test above checks it) as the starting point.
        #expect(try String(contentsOfFile: stage + "/etc/dmirr/dmirr.toml", encoding: .utf8)
            == String(contentsOfFile: Self.contrib + "/dmirr.toml.example", encoding: .utf8))
        for (path, mode) in [("/var/lib/dmirr", 0o750), ("/etc/dmirr/tls", 0o750), ("/etc/dmirr/dmirr.toml", 0o640)] {
            let attributes = try FileManager.default.attributesOfItem(atPath: stage + path)
            #expect((attributes[.posixPermissions] as? Int) == mode, "\(path): \(String(attributes[.posixPermissions] as? Int ?? 0, radix: 8))")
        }
        // A second run keeps the operator's config.
        try "# edited\n".write(toFile: stage + "/etc/dmirr/dmirr.toml", atomically: true, encoding: .utf8)
        _ = try CLI.run("/bin/bash", [root + "/scripts/install.sh", "--binary", CLI.dmirrPath, "--destdir", stage, "--no-docs"], timeout: 120)
        #expect(try String(contentsOfFile: stage + "/etc/dmirr/dmirr.toml", encoding: .utf8) == "# edited\n")
    }

    /// The shell completions swift-argument-parser generates: valid scripts that know every command.
    @Test func shellCompletionsKnowEveryCommand() throws {
        let bash = try CLI.dmirr(["--generate-completion-script", "bash"])
        #expect(bash.exitCode == 0)
        let dir = try TestDirectory("completion")
        defer { dir.remove() }
        try bash.stdout.write(toFile: dir.sub("dmirr.bash"), atomically: true, encoding: .utf8)
        let syntax = try CLI.run("/bin/bash", ["-n", dir.sub("dmirr.bash")])
        #expect(syntax.exitCode == 0, "\(syntax.stderr)")
        for command in ["agent", "sync", "status", "check", "history", "announce", "cert", "demo"] {
            #expect(bash.stdout.contains(command), "no \(command) in the bash completion")
        }
        for shell in ["zsh", "fish"] {
            let script = try CLI.dmirr(["--generate-completion-script", shell])
            #expect(script.exitCode == 0 && script.stdout.contains("status"), "\(shell)")
        }
    }
}

import DmirrTestSupport
import Foundation
import Testing

/// Every config error exits 2 and names the file, the key and the line.
@Suite struct ConfigErrorTests {
    static let valid = """
        node = "m"
        fleet = "f"
        [upstream]
        url = "rsync://127.0.0.1:1/repo"
        [mirror]
        path = "/tmp/dmirr-never-used/mirror"
        [state]
        dir = "/tmp/dmirr-never-used/state"
        """

    func check(_ text: String, command: String = "sync") throws -> CommandResult {
        let dir = try TestDirectory("config")
        defer { dir.remove() }
        let path = dir.sub("bad.toml")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        var result = try CLI.dmirr([command, "-c", path])
        result.stderr = result.stderr.replacingOccurrences(of: path, with: "FILE")
        return result
    }

    @Test(arguments: [
        ("unknown key", "speed = 3\n" + valid, "FILE:1: speed: unknown key"),
        ("unknown key in a table", valid + "\nspeed = 3", "FILE:9: state.speed: unknown key"),
        ("wrong type", valid.replacingOccurrences(of: "fleet = \"f\"", with: "fleet = 7"), "FILE:2: fleet: expected a string, found an integer"),
        ("bad duration", valid.replacingOccurrences(of: "url = \"rsync://127.0.0.1:1/repo\"", with: "url = \"rsync://127.0.0.1:1/repo\"\npoll = \"soon\""), "FILE:5: upstream.poll: 'soon' is not a duration"),
        ("missing key", valid.replacingOccurrences(of: "dir = \"/tmp/dmirr-never-used/state\"", with: ""), "FILE: state.dir: required key is missing"),
        ("relative path", valid.replacingOccurrences(of: "path = \"/tmp/dmirr-never-used/mirror\"", with: "path = \"mirror\""), "FILE:6: mirror.path: 'mirror' is a relative path"),
        ("denied rsync arg", valid + "\n[peers]\n", "none"),
        ("syntax", "node = \"m", "FILE:1: string is not closed"),
    ])
    func exitsTwoNamingFileKeyAndLine(name: String, text: String, expected: String) throws {
        if name == "denied rsync arg" {
            let r = try check(Self.valid.replacingOccurrences(of: "path = \"/tmp/dmirr-never-used/mirror\"", with: "path = \"/tmp/dmirr-never-used/mirror\"\nrsync_args = [\"--delete-before\"]"))
            #expect(r.exitCode == 2)
            #expect(r.stderr.contains("FILE:7: mirror.rsync_args: '--delete-before' is not allowed"), "\(r.stderr)")
            return
        }
        for command in ["sync", "check", "history"] {
            let r = try check(text, command: command)
            #expect(r.exitCode == 2, "\(name) \(command)")
            #expect(r.stderr.contains(expected), "\(name) \(command): \(r.stderr)")
        }
    }

    @Test func unreadableFileNamesIt() throws {
        let r = try CLI.dmirr(["sync", "-c", "/nonexistent/dmirr.toml"])
        #expect(r.exitCode == 2)
        #expect(r.stderr.contains("/nonexistent/dmirr.toml: cannot read the config file"), "\(r.stderr)")
    }

    @Test func nothingIsCreatedOnBadConfig() throws {
        _ = try check(Self.valid + "\nbogus = 1")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/dmirr-never-used"))
    }
}

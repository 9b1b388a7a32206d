import Foundation

/// A throwaway OpenPGP signing key made with the real `gpg` in its own home directory, to sign `repomd.xml` the way
/// repositories that support `repo_gpgcheck` do. ``remove()`` stops the gpg-agent that gpg started for that home.
public struct GPGKey: Sendable {
    public let home: String
    /// The public key, ASCII-armored (what an operator gives `[upstream] signing_key`).
    public let publicKey: String

    public init(in directory: String, name: String = "dmirr test upstream") throws {
        home = directory + "/gnupg-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try Self.gpg(home, ["--quick-generate-key", "--passphrase", "", "\(name) <upstream@example.org>", "ed25519", "sign", "never"])
        publicKey = directory + "/\(home.split(separator: "/").last!).asc"
        let exported = try Self.gpg(home, ["--armor", "--export"])
        try exported.write(toFile: publicKey, atomically: true, encoding: .utf8)
    }

    /// Writes `FILE.asc`, an armored detached signature of `file`.
    public func sign(_ file: String) throws {
        try Self.gpg(home, ["--yes", "--armor", "--detach-sign", "--output", file + ".asc", file])
    }

    /// Stops gpg's agent for this home (by its own command; we never started it by PID) and removes the home.
    public func remove() {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/gpgconf")
        p.arguments = ["--homedir", home, "--kill", "gpg-agent"]
        try? p.run()
        p.waitUntilExit()
        try? FileManager.default.removeItem(atPath: home)
    }

    @discardableResult
    static func gpg(_ home: String, _ arguments: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/gpg")
        p.arguments = ["--homedir", home, "--batch", "--pinentry-mode", "loopback", "--quiet"] + arguments
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        let errors = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw TestFailure("gpg \(arguments.joined(separator: " ")): \(String(decoding: errors, as: UTF8.self))")
        }
        return String(decoding: output, as: UTF8.self)
    }
}

import Foundation
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Checks upstream's signature on `repomd.xml` with `gpgv` (`[upstream] signing_key`): the check dnf's
/// `repo_gpgcheck` makes on each client, made once at the mirror for every client, before a token is published.
///
/// `gpgv` only verifies: it has no trust database and never imports keys. It reads the key from a binary keyring,
/// which ``prepare(key:in:)`` writes from the operator's key file (armored or binary) into the state directory.
public struct MetadataSignature: Sendable {
    /// The binary keyring `gpgv --keyring` reads.
    public let keyring: String
    /// A private directory for `gpgv --homedir` (it writes nothing there, but must not touch the user's own).
    public let home: String

    /// Reads the key file and writes the keyring gpgv reads, under `directory` (the state directory).
    public static func prepare(key path: String, in directory: String) throws(SyncError) -> MetadataSignature {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw SyncError(.setup, "[upstream] signing_key: cannot read \(path): \(error.localizedDescription)")
        }
        guard let binary = dearmored(data), !binary.isEmpty, binary[binary.startIndex] & 0x80 != 0 else {
            throw SyncError(.setup, "[upstream] signing_key: \(path) is not an OpenPGP public key (armored or binary)")
        }
        let home = directory + "/.dmirr-gpg"
        do {
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: home)
            try binary.write(to: URL(fileURLWithPath: home + "/upstream-keyring.gpg"), options: .atomic)
        } catch {
            throw SyncError(.io, "cannot write the keyring for [upstream] signing_key under \(home): \(error.localizedDescription)")
        }
        return MetadataSignature(keyring: home + "/upstream-keyring.gpg", home: home)
    }

    /// The binary form of an OpenPGP key file: armored text decoded (headers and the CRC line skipped), binary as is.
    static func dearmored(_ data: Data) -> Data? {
        guard let text = String(data: data, encoding: .utf8), text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") else {
            return data
        }
        var body = ""
        var inBlock = false
        var inHeaders = false
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = raw.trimmingCharacters(in: .whitespaces.union(.init(charactersIn: "\r")))
            if line == "-----BEGIN PGP PUBLIC KEY BLOCK-----" {
                inBlock = true
                inHeaders = true
                continue
            }
            guard inBlock else { continue }
            if line.hasPrefix("-----END PGP PUBLIC KEY BLOCK-----") { break }
            if inHeaders {
                // Armor headers ("Comment: …") end at the first blank line; a block without headers starts at once.
                if line.isEmpty { inHeaders = false; continue }
                if line.contains(": ") { continue }
                inHeaders = false
            }
            if line.hasPrefix("=") { continue }  // the CRC-24 line
            body += line
        }
        return Data(base64Encoded: body)
    }

    /// Nil when `repomd.xml.asc` beside `repomd` is a good signature by the key, else what is wrong.
    /// - Parameter signatureLeaving: the `.asc` is one the source no longer has (it goes after the publish): as missing.
    public func check(repomd: String, signatureLeaving: Bool = false) async -> String? {
        let signature = repomd + ".asc"
        guard !signatureLeaving, FileManager.default.fileExists(atPath: signature) else {
            return "no repomd.xml.asc beside it, and [upstream] signing_key requires one"
        }
        do {
            let result = try await Subprocess.run(
                .name("gpgv"), arguments: ["--homedir", home, "--keyring", keyring, "--", signature, repomd],
                output: .discarded, error: .string(limit: 16_384))
            if result.terminationStatus.isSuccess { return nil }
            let lines = (result.standardError ?? "").split(separator: "\n").map(String.init)
            let reason = lines.last { $0.contains("BAD signature") || $0.contains("Can't check") || $0.contains("no valid OpenPGP") }
                ?? lines.last ?? "gpgv failed"
            return "signature check failed: \(reason)"
        } catch {
            return "cannot run gpgv (apt-get install gpgv): \(error)"
        }
    }
}

import Foundation

/// Real yum repositories built with `rpmbuild` and `createrepo_c` (Debian packages `rpm` and `createrepo-c`).
public enum YumRepo {
    /// One package to build: `NAME-VERSION-1.noarch.rpm` holding `sizeKB` KiB of deterministic pseudo-random bytes.
    public struct Package: Sendable, Hashable {
        public var name: String
        public var version: String
        public var sizeKB: Int

        public init(_ name: String, _ version: String, sizeKB: Int = 1) {
            self.name = name
            self.version = version
            self.sizeKB = sizeKB
        }

        public var fileName: String { "\(name)-\(version)-1.noarch.rpm" }
    }

    /// The bundled script that does the building (see its header for how and why).
    static var script: String {
        get throws {
            guard let path = Bundle.module.path(forResource: "make-yum-repo", ofType: "sh") else {
                throw FixtureError("make-yum-repo.sh is missing from the DmirrFixtures bundle")
            }
            return path
        }
    }

    /// Builds `packages` into `directory` (flat), in one rpmbuild run.
    public static func buildRPMs(_ packages: [Package], into directory: String) throws {
        guard !packages.isEmpty else { return }
        try runScript(["build-rpms", directory] + packages.map { "\($0.name):\($0.version):\($0.sizeKB)" })
    }

    /// (Re)writes `directory/repodata/` with createrepo_c.
    /// - Parameter options: more createrepo_c options (`--zck`, `-s sha512`, `--baseurl URL`, …).
    public static func createrepo(_ directory: String, options: [String] = []) throws {
        try runScript(["createrepo", directory] + options)
    }

    /// Builds a complete repo: packages under `directory/Packages/`, metadata, and a token file.
    public static func make(at directory: String, packages: [Package], token: String, tokenFile: String = "CURRENT") throws {
        try FileManager.default.createDirectory(atPath: directory + "/Packages", withIntermediateDirectories: true)
        try buildRPMs(packages, into: directory + "/Packages")
        try createrepo(directory)
        try (token + "\n").write(toFile: directory + "/" + tokenFile, atomically: true, encoding: .utf8)
    }

    private static func runScript(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [try script] + arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let message = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw FixtureError("make-yum-repo.sh \(arguments.first ?? "") failed: \(String(decoding: message, as: UTF8.self))")
        }
    }
}

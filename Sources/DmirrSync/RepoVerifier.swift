import DmirrCore
import Foundation
import Logging
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// One thing verification found wrong, naming the file.
public struct VerificationProblem: Sendable, Equatable, CustomStringConvertible {
    /// Path relative to the tree root.
    public var path: String
    public var message: String
    public var description: String { "\(path): \(message)" }
}

/// What verification checked and found.
public struct VerificationReport: Sendable {
    public var repositories = 0
    public var metadataFiles = 0
    public var packages = 0
    /// `repomd.xml` signatures checked (`[upstream] signing_key`).
    public var signatures = 0
    public var problems: [VerificationProblem] = []
    public var isClean: Bool { problems.isEmpty }
}

/// Checks a tree against its yum metadata before its token is published (docs/architecture.md §3 step 5).
///
/// `metadata`: every `repodata/repomd.xml` in the tree → each file it references exists with the listed size and
/// checksum, and each package its `primary.xml` lists exists with the listed size. `packages`: also each given package
/// (the ones this run changed) against its checksum in `primary.xml`.
public struct RepoVerifier: Sendable {
    /// When set, every `repomd.xml` must carry a good signature by upstream's key, whatever the level.
    public var signature: MetadataSignature?
    /// Where compressed metadata is decompressed to while it is parsed (the state directory; default: the system's
    /// temporary directory).
    public var scratch: String?
    /// Paths (relative to the root) that the source no longer has and that go once the token is published (in place):
    /// the new tree does not hold them, so a `repomd.xml` that lists one, or a repository whose `repomd.xml` is one,
    /// is judged as if they were gone already. (This is what catches a stale `repomd.xml` that rsync's quick check
    /// kept: the files it lists are the ones the source dropped.)
    public var leaving: Set<String> = []

    /// The most a `repomd.xml` may weigh (real ones are a few KiB).
    static let repomdLimit = 16 << 20
    /// The most compressed metadata may decompress to (Fedora's largest `primary.xml` is a few hundred MiB): a
    /// decompression bomb stops there, on disk, not in memory.
    static let decompressedLimit = 1 << 30

    public init() {}

    /// - Parameters:
    ///   - root: the tree's root directory.
    ///   - changedPackages: paths relative to `root` of packages this run received (checked at `packages` level).
    public func verify(root: String, level: Config.VerifyLevel, changedPackages: [String], logger: Logger) async
        -> VerificationReport
    {
        var report = VerificationReport()
        // Deepest repositories first: a package under a nested repository (`x86_64/Packages/…` beside a root one) is
        // checked against the nested one's metadata, the one that lists it, not against the first prefix that matches.
        let repomdPaths = Self.findRepomd(root: root).filter { !leaving.contains($0) }.sorted { ($0.count, $1) > ($1.count, $0) }
        if let signature {
            for repomd in repomdPaths {
                if let problem = await signature.check(repomd: root + "/" + repomd, signatureLeaving: leaving.contains(repomd + ".asc")) {
                    report.problems.append(.init(path: repomd, message: problem))
                }
            }
            report.signatures = repomdPaths.count
        }
        guard level != .none else { return report }
        var changed = Set(changedPackages)
        for repomdRelative in repomdPaths {
            report.repositories += 1
            let repoRelative = String(repomdRelative.dropLast("repodata/repomd.xml".count))  // "" or "a/b/"
            let repoRoot = root + "/" + repoRelative
            let entries: [ExpectedFile]
            do {
                let path = root + "/" + repomdRelative
                let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
                guard size <= Self.repomdLimit else {
                    throw RepoMetadata.MetadataError(message: "\(size) bytes, over the \(Self.repomdLimit >> 20) MiB a repomd.xml may have")
                }
                entries = try RepoMetadata.parseRepomd(Data(contentsOf: URL(fileURLWithPath: path)))
            } catch {
                report.problems.append(.init(path: repomdRelative, message: "cannot parse: \(error)"))
                continue
            }
            var primary: ExpectedFile?
            for entry in entries where entry.base == nil {
                report.metadataFiles += 1
                if leaving.contains(repoRelative + entry.href) {
                    report.problems.append(.init(path: repoRelative + entry.href, message: "missing: the source no longer has it"))
                } else if let problem = Self.check(entry, repoRoot: repoRoot) {
                    report.problems.append(.init(path: repoRelative + entry.href, message: problem))
                } else if entry.type == "primary" {
                    primary = entry
                }
            }
            // Every package primary.xml lists must be in the tree with its size, at every level: metadata naming a
            // package upstream does not (yet) have breaks every client that installs it. At `packages`, the packages this
            // run received are also checked against their checksums.
            let inRepo = level == .packages ? changed.filter { repoRelative.isEmpty || $0.hasPrefix(repoRelative) } : []
            changed.subtract(inRepo)
            guard let primary else {
                if !inRepo.isEmpty {
                    report.problems.append(.init(path: repomdRelative, message: "no usable primary metadata to check packages against"))
                }
                continue
            }
            let packages: [ExpectedFile]
            do {
                packages = try await Self.withDecompressed(repoRoot + primary.href, scratch: scratch ?? NSTemporaryDirectory()) {
                    try RepoMetadata.parsePrimary(fileAt: $0)
                }
            } catch {
                report.problems.append(.init(path: repoRelative + primary.href, message: "cannot read: \(error)"))
                continue
            }
            var absent = 0
            for expected in packages where expected.base == nil {
                // `xml:base` puts the listed file elsewhere (another URL or tree): the file here is not the one listed.
                guard let problem = Self.presence(expected, repoRoot: repoRoot, leaving: leaving, repoRelative: repoRelative) else { continue }
                absent += 1
                if absent <= Self.listedProblems {
                    report.problems.append(.init(path: repoRelative + expected.href, message: problem + " (listed in \(repoRelative + primary.href))"))
                }
            }
            if absent > Self.listedProblems {
                report.problems.append(.init(path: repoRelative + primary.href, message: "\(absent - Self.listedProblems) more listed packages missing or of the wrong size"))
            }
            guard !inRepo.isEmpty else { continue }
            let byHref = Dictionary(packages.map { ($0.href, $0) }, uniquingKeysWith: { first, _ in first })
            for path in inRepo.sorted() {
                report.packages += 1
                let href = String(path.dropFirst(repoRelative.count))
                guard let expected = byHref[href] else {
                    logger.debug("package not listed in primary.xml", metadata: ["sync.path": "\(path)"])
                    continue
                }
                guard expected.base == nil else { continue }
                if let problem = Self.check(expected, repoRoot: repoRoot) {
                    report.problems.append(.init(path: path, message: problem))
                }
            }
        }
        return report
    }

    /// Relative paths of every `repodata/repomd.xml` under `root`, sorted. Does not descend into `repodata/`.
    static func findRepomd(root: String) -> [String] {
        var found: [String] = []
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: root) else { return [] }
        while let relative = walker.nextObject() as? String {
            let name = (relative as NSString).lastPathComponent
            if name == RsyncCommand.tempDirName || name == RsyncCommand.delayDirName {
                walker.skipDescendants()
                continue
            }
            if name == "repodata" {
                walker.skipDescendants()
                if fm.fileExists(atPath: root + "/" + relative + "/repomd.xml") { found.append(relative + "/repomd.xml") }
            }
        }
        return found.sorted()
    }

    /// How many missing packages a report names one by one (a whole missing repository is summed up after these).
    static let listedProblems = 20

    /// Nil when a listed package is in the tree with its listed size (no checksum: every package of a large
    /// repository is stat'ed on every run), else what is wrong.
    static func presence(_ expected: ExpectedFile, repoRoot: String, leaving: Set<String>, repoRelative: String) -> String? {
        if expected.href.hasPrefix("/") || expected.href.split(separator: "/").contains("..") {
            return "refusing a location outside the repository"
        }
        if leaving.contains(repoRelative + expected.href) { return "missing: the source no longer has it" }
        var info = stat()
        guard stat(repoRoot + expected.href, &info) == 0 else { return "missing" }
        if let size = expected.size, Int64(info.st_size) != size { return "size \(info.st_size) differs from the metadata's \(size)" }
        return nil
    }

    /// Nil when the file matches, else what is wrong.
    static func check(_ expected: ExpectedFile, repoRoot: String) -> String? {
        if expected.href.hasPrefix("/") || expected.href.split(separator: "/").contains("..") {
            return "refusing a location outside the repository"
        }
        let path = repoRoot + expected.href
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return "missing" }
        if let size = expected.size, let actual = (attributes[.size] as? NSNumber)?.int64Value, actual != size {
            return "size \(actual) differs from the metadata's \(size)"
        }
        do {
            guard let digest = try FileDigest.hex(of: path, type: expected.checksumType) else {
                return "unknown checksum type '\(expected.checksumType)'"
            }
            if digest != expected.checksum.lowercased() {
                return "\(expected.checksumType) \(digest) differs from the metadata's \(expected.checksum)"
            }
        } catch {
            return "cannot read: \(error)"
        }
        return nil
    }

    /// Runs `body` on the uncompressed form of a metadata file: the file itself, or its content decompressed by the
    /// matching standard tool (gzip, zstd, xz, bzip2) into a scratch file of at most `limit` bytes, removed after.
    static func withDecompressed<T>(
        _ path: String, scratch: String, limit: Int = decompressedLimit, _ body: (String) throws -> T
    ) async throws -> T {
        let tools: [(suffix: String, tool: String)] = [(".gz", "gzip"), (".zst", "zstd"), (".xz", "xz"), (".bz2", "bzip2")]
        guard let (_, tool) = tools.first(where: { path.hasSuffix($0.suffix) }) else { return try body(path) }
        let out = scratch + "/.dmirr-metadata-\(UUID().uuidString)"
        defer { unlink(out) }
        // `head` stops the stream one byte past the limit, so a bomb costs at most that much disk and no memory.
        let script = "set -o pipefail; \"$1\" -dc -- \"$2\" | head -c \(limit + 1) > \"$3\""
        let result = try await Subprocess.run(
            .path("/bin/bash"), arguments: ["-c", script, "bash", tool, path, out], output: .discarded, error: .string(limit: 4096))
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? NSNumber)?.intValue ?? 0
        if size > limit {
            throw RepoMetadata.MetadataError(message: "decompresses to more than \(limit >> 20) MiB, the most metadata may")
        }
        guard result.terminationStatus.isSuccess else {
            throw RepoMetadata.MetadataError(message: "\(tool) -dc failed: \(result.standardError ?? "")")
        }
        return try body(out)
    }
}

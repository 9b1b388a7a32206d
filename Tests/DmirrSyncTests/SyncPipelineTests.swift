import DmirrCore
import DmirrFixtures
import DmirrStore
import DmirrTestSupport
import Foundation
import Logging
import Testing

@testable import DmirrSync

/// Live tests of the one-mirror pipeline: real rsync daemons on loopback, real yum repos, real dnf.
@Suite(.serialized) struct SyncPipelineTests {
    static let logger: Logger = {
        var l = Logger(label: "test")
        l.logLevel = .warning
        return l
    }()

    struct Rig {
        let dir: TestDirectory
        let upstream: Upstream
        let mirror: String
        let configPath: String
        var config: Config

        init(
            label: String, packages: [YumRepo.Package] = Rig.basePackages, maxConnections: Int = 0, publish: String = "in-place",
            verify: String = "metadata", extra: String = ""
        ) throws {
            dir = try TestDirectory(label)
            upstream = try Upstream(in: dir, packages: packages, token: "push-1", maxConnections: maxConnections)
            mirror = dir.sub("mirror")
            configPath = dir.sub("mirror.toml")
            try MirrorConfig.write(
                to: configPath, upstream: upstream.url, mirror: mirror, state: dir.sub("state"), publish: publish,
                verify: verify, extra: extra)
            config = try ConfigLoader.load(text: String(contentsOfFile: configPath, encoding: .utf8), file: configPath).get()
        }

        static let basePackages: [YumRepo.Package] = [.init("alpha", "1.0"), .init("beta", "1.0"), .init("gamma", "1.0")]

        func sync(force: Bool = false, onEvent: @escaping @Sendable (SyncEvent) -> Void = { _ in }) async -> SyncReport {
            await SyncPipeline(config: config).run(options: .init(force: force), logger: SyncPipelineTests.logger, onEvent: onEvent)
        }

        func publishedToken() -> String? {
            (try? String(contentsOfFile: mirror + "/CURRENT", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        func cleanup() {
            upstream.stop()
            dir.remove()
        }
    }

    /// Flips one byte near the end of a file (in a package: its payload), keeping its size. Twice restores it.
    static func flipByte(_ path: String) throws {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - 10] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
    }

    /// Extra upstream content that is not a package: a hard-linked pair, a private file, a symlink.
    static func addExtras(_ tree: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: tree + "/docs", withIntermediateDirectories: true)
        try "read me\n".write(toFile: tree + "/docs/README", atomically: false, encoding: .utf8)
        try fm.linkItem(atPath: tree + "/docs/README", toPath: tree + "/docs/README.hardlink")
        try "secret-ish\n".write(toFile: tree + "/docs/private", atomically: false, encoding: .utf8)
        try fm.setAttributes([.posixPermissions: 0o600, .modificationDate: Date(timeIntervalSince1970: 1_600_000_000)], ofItemAtPath: tree + "/docs/private")
        try fm.createSymbolicLink(atPath: tree + "/latest", withDestinationPath: "Packages")
    }

    @Test func freshSyncThenPushMakesAnExactCopyThatDnfReads() async throws {
        let rig = try Rig(label: "fresh")
        defer { rig.cleanup() }
        try Self.addExtras(rig.upstream.tree)

        let first = await rig.sync()
        #expect(first.exitCode == 0, "\(first.message)")
        #expect(first.outcome == .synced)
        #expect(TreeComparison.differences(rig.upstream.tree, rig.mirror) == [])
        #expect(rig.publishedToken() == "push-1")
        #expect(try Dnf.availablePackages(repo: rig.mirror) == ["alpha-1.0-1", "beta-1.0-1", "gamma-1.0-1"])

        // A push that adds, changes and removes.
        try rig.upstream.push(add: [.init("alpha", "1.1"), .init("delta", "2.0")], remove: ["gamma-1.0-1.noarch.rpm"], token: "push-2")
        try "read me, changed\n".write(toFile: rig.upstream.tree + "/docs/README", atomically: false, encoding: .utf8)
        let second = await rig.sync()
        #expect(second.exitCode == 0, "\(second.message)")
        #expect(TreeComparison.differences(rig.upstream.tree, rig.mirror) == [])
        #expect(rig.publishedToken() == "push-2")
        #expect(try Dnf.availablePackages(repo: rig.mirror) == ["alpha-1.0-1", "alpha-1.1-1", "beta-1.0-1", "delta-2.0-1"])
        #expect(!FileManager.default.fileExists(atPath: rig.mirror + "/.dmirr-tmp"))

        let runs = try StateStore(directory: rig.config.state.dir).recentRuns(limit: 5)
        #expect(runs.map(\.outcome) == ["synced", "synced"])
        #expect(runs.first?.token == "push-2")
        #expect(runs.first.map { $0.files > 0 && $0.bytes > 0 } == true)
        #expect(runs.map(\.rsyncExitCode) == [0, 0])
    }

    @Test func aTreeDmirrDidNotPublishIsCheckedOnceNotTakenOnItsToken() async throws {
        // An operator moves a mirror from the cron script to dmirr: the tree carries upstream's token, but a package
        // went missing under the old regime. Matching tokens must not make dmirr call it up to date.
        let rig = try Rig(label: "adopt")
        defer { rig.cleanup() }
        let copy = Process()
        copy.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        copy.arguments = ["rsync", "-a", rig.upstream.tree + "/", rig.mirror + "/"]
        try copy.run()
        copy.waitUntilExit()
        try FileManager.default.removeItem(atPath: rig.mirror + "/Packages/alpha-1.0-1.noarch.rpm")
        #expect(try String(contentsOfFile: rig.mirror + "/CURRENT", encoding: .utf8) == "push-1\n")

        let first = await rig.sync()
        #expect(first.outcome == .synced, "\(first.message)")
        #expect(TreeComparison.differences(rig.upstream.tree, rig.mirror) == [])
        #expect(try StateStore(directory: rig.config.state.dir).published()?.token == "push-1")
        // Published by dmirr now: the next run takes the token's word.
        #expect(await rig.sync().outcome == .upToDate)
    }

    @Test func matchingTokensTransferNothingButTheToken() async throws {
        let rig = try Rig(label: "noop")
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        let before = try rig.upstream.sentFiles()
        #expect(before.contains("Packages/alpha-1.0-1.noarch.rpm"))

        let again = await rig.sync()
        #expect(again.exitCode == 0)
        #expect(again.outcome == .upToDate)
        #expect(again.message.contains("up to date"))
        let sentByNoOp = Array(try rig.upstream.sentFiles().dropFirst(before.count))
        #expect(sentByNoOp == ["CURRENT"])

        // --force transfers again even with equal tokens, and still publishes the same token.
        let forced = await rig.sync(force: true)
        #expect(forced.outcome == .synced)
        #expect(rig.publishedToken() == "push-1")
    }

    @Test func busyUpstreamExits75AndTouchesNothing() async throws {
        var packages = Rig.basePackages
        packages.append(.init("huge", "1.0", sizeKB: 4096))
        let rig = try Rig(label: "busy", packages: packages, maxConnections: 1)
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        try rig.upstream.push(add: [.init("delta", "1.0")], token: "push-2")

        // Hold the daemon's only slot with a slow transfer of the big package.
        let holderDest = rig.dir.sub("holder")
        try FileManager.default.createDirectory(atPath: holderDest, withIntermediateDirectories: true)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        holder.arguments = ["rsync", "--bwlimit=32", rig.upstream.url + "/Packages/huge-1.0-1.noarch.rpm", holderDest + "/"]
        holder.standardOutput = FileHandle.nullDevice
        holder.standardError = FileHandle.nullDevice
        try holder.run()
        defer { if holder.isRunning { holder.terminate(); holder.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(15)
        while (try FileManager.default.contentsOfDirectory(atPath: holderDest)).isEmpty, Date() < deadline { usleep(20_000) }
        #expect(holder.isRunning)

        let before = TreeComparison.snapshotForTests(rig.mirror)
        let report = await rig.sync()
        #expect(report.exitCode == 75)
        #expect(report.outcome == .busy)
        #expect(report.message.contains("max connections 1"), "\(report.message)")
        #expect(rig.publishedToken() == "push-1")
        #expect(TreeComparison.snapshotForTests(rig.mirror) == before)
        let last = try #require(try StateStore(directory: rig.config.state.dir).recentRuns(limit: 1).first)
        #expect(last.outcome == "busy")
        #expect(last.rsyncExitCode == 5)
        #expect(last.error?.contains("max connections") == true)
    }

    @Test func unknownModuleAuthFailureAndRefusalAreDistinct() async throws {
        let dir = try TestDirectory("errors")
        defer { dir.remove() }
        let tree = dir.sub("up")
        try YumRepo.make(at: tree, packages: [.init("alpha", "1.0")], token: "t1")
        let daemon = try RsyncDaemon(
            directory: dir.sub("rsyncd"), modules: [.init(name: "locked", path: tree, users: [("mirror", "right")])])
        defer { daemon.stop() }
        let passwordFile = dir.sub("password")
        try "wrong\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
        chmod(passwordFile, 0o600)
        let closedPort = try FreePort.pick()

        func report(_ url: String, extra: String = "") async throws -> SyncReport {
            let path = dir.sub("m-\(UUID().uuidString.prefix(4)).toml")
            try MirrorConfig.write(to: path, upstream: url, mirror: dir.sub("mirror"), state: dir.sub("state"))
            var config = try ConfigLoader.load(text: String(contentsOfFile: path, encoding: .utf8), file: path).get()
            if !extra.isEmpty { config.upstream.passwordFile = extra }
            return await SyncPipeline(config: config).run(options: .init(), logger: Self.logger)
        }
        let unknown = try await report(daemon.url("nope"))
        let auth = try await report("rsync://mirror@127.0.0.1:\(daemon.port)/locked", extra: passwordFile)
        let refused = try await report("rsync://127.0.0.1:\(closedPort)/repo")
        for r in [unknown, auth, refused] {
            #expect(r.exitCode == 1)
            #expect(r.outcome == .failed)
        }
        #expect(unknown.message.contains("does not have that module"), "\(unknown.message)")
        #expect(auth.message.contains("refused the credentials"), "\(auth.message)")
        #expect(refused.message.contains("connection refused"), "\(refused.message)")
        #expect([unknown, auth, refused].map(\.rsyncExitCode) == [5, 5, 10])
        #expect(!FileManager.default.fileExists(atPath: dir.sub("mirror") + "/CURRENT"))
    }

    @Test func tokenChangingMidSyncIsFollowedToTheEnd() async throws {
        let rig = try Rig(label: "midsync")
        defer { rig.cleanup() }
        let upstream = rig.upstream
        let pushed = Flag()
        // The push lands after dmirr read token push-1 and before its first transfer starts.
        let report = await rig.sync { event in
            if case .stageStarted("content", 1) = event, pushed.setOnce() {
                try? upstream.push(add: [.init("delta", "1.0")], remove: ["beta-1.0-1.noarch.rpm"], token: "push-2")
            }
        }
        #expect(pushed.isSet)
        #expect(report.exitCode == 0, "\(report.message)")
        #expect(report.token?.value == "push-2")
        #expect(rig.publishedToken() == "push-2")
        #expect(TreeComparison.differences(rig.upstream.tree, rig.mirror) == [])
    }

    /// Upstream replaces a directory with a regular file of the same name (and a file with a directory). Without
    /// `--force` and with no deletions before the publish, rsync cannot make way for the file ("cannot delete
    /// non-empty directory", exit 23) and every run would fail.
    @Test(arguments: ["in-place", "snapshot"]) func aDirectoryReplacedByAFileIsSynced(publish: String) async throws {
        let rig = try Rig(label: "dir-to-file-\(publish)", publish: publish)
        defer { rig.cleanup() }
        let tree = rig.upstream.tree
        try FileManager.default.createDirectory(atPath: tree + "/extras/nested", withIntermediateDirectories: true)
        try Data("inside\n".utf8).write(to: URL(fileURLWithPath: tree + "/extras/nested/note.txt"))
        try Data("a file for now\n".utf8).write(to: URL(fileURLWithPath: tree + "/later-a-dir"))
        try rig.upstream.setToken("push-1b")
        #expect(await rig.sync().exitCode == 0)
        try FileManager.default.removeItem(atPath: tree + "/extras")
        try Data("now a file\n".utf8).write(to: URL(fileURLWithPath: tree + "/extras"))
        try FileManager.default.removeItem(atPath: tree + "/later-a-dir")
        try FileManager.default.createDirectory(atPath: tree + "/later-a-dir", withIntermediateDirectories: true)
        try Data("inside\n".utf8).write(to: URL(fileURLWithPath: tree + "/later-a-dir/x.txt"))
        try rig.upstream.setToken("push-2")
        let report = await rig.sync()
        #expect(report.exitCode == 0, "\(report.message)")
        #expect(rig.publishedToken() == "push-2")
        #expect(TreeComparison.differences(tree, realPath(rig.mirror)) == [])
    }

    /// A recorded deletion never reaches outside the tree: a path under a symlinked directory is kept, whatever the
    /// list says; a path the published manifest lists is kept; an extra file is removed.
    @Test func pendingDeletionsStayInsideTheTree() async throws {
        let rig = try Rig(label: "pending-inside")
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        let outside = rig.dir.sub("outside")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: outside + "/victim"))
        try FileManager.default.createSymbolicLink(atPath: rig.mirror + "/link", withDestinationPath: outside)
        try Data("extra\n".utf8).write(to: URL(fileURLWithPath: rig.mirror + "/extra"))
        let store = try StateStore(directory: rig.dir.sub("state"))
        let published = try #require(try store.published())
        try store.setPublished(token: published.token, source: "upstream", at: Date(), manifestRoot: nil,
                               pendingDeletions: ["link/victim", "extra", "repodata/repomd.xml"])
        let removed = try SyncPipeline(config: rig.config, store: store).finishPendingDeletions(logger: SyncPipelineTests.logger, store: store)
        #expect(removed == 1)
        #expect(FileManager.default.fileExists(atPath: outside + "/victim"), "deleted through a symlink")
        #expect(!FileManager.default.fileExists(atPath: rig.mirror + "/extra"))
        #expect(FileManager.default.fileExists(atPath: rig.mirror + "/repodata/repomd.xml"))
        #expect(try store.pendingDeletions() == nil)
    }

    /// A regenerated repomd.xml with the old one's size and mtime fools rsync's quick check; verification notices,
    /// the metadata is fetched again by checksum, and the sync completes.
    @Test(arguments: ["in-place", "snapshot"]) func quickCheckCollisionIsRepaired(publish: String) async throws {
        let rig = try Rig(label: "collide-\(publish)", publish: publish)
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        let repomd = rig.upstream.tree + "/repodata/repomd.xml"
        let old = try FileManager.default.attributesOfItem(atPath: realPath(rig.mirror) + "/repodata/repomd.xml")
        try rig.upstream.push(add: [.init("delta", "1.0")], token: "push-2")
        // Whitespace between XML elements is insignificant: pad or trim it so the new repomd.xml has the old size.
        var xml = Array(try String(contentsOfFile: repomd, encoding: .utf8).utf8)
        let oldSize = try #require(old[.size] as? Int)
        while xml.count > oldSize, let i = xml.indices.first(where: { xml[$0] == 0x20 && xml[$0 + 1] == 0x20 }) { xml.remove(at: i) }
        while xml.count < oldSize { xml.insert(0x20, at: xml.count - "</repomd>\n".utf8.count) }
        try Data(xml).write(to: URL(fileURLWithPath: repomd))
        let new = try FileManager.default.attributesOfItem(atPath: repomd)
        try #require(new[.size] as? Int == oldSize, "the collision needs equal sizes")
        try FileManager.default.setAttributes([.modificationDate: try #require(old[.modificationDate])], ofItemAtPath: repomd)

        let report = await rig.sync()
        #expect(report.exitCode == 0, "\(report.message)")
        #expect(rig.publishedToken() == "push-2")
        #expect(TreeComparison.differences(rig.upstream.tree, realPath(rig.mirror)) == [])
        #expect(try Dnf.availablePackages(repo: rig.mirror).contains("delta-1.0-1"))
    }

    @Test func corruptedUpstreamMetadataIsNotPublished() async throws {
        let rig = try Rig(label: "corrupt")
        defer { rig.cleanup() }
        let repodata = rig.upstream.tree + "/repodata"
        let primary = try #require(try FileManager.default.contentsOfDirectory(atPath: repodata).first { $0.hasSuffix("primary.xml.gz") })
        var bytes = try Data(contentsOf: URL(fileURLWithPath: repodata + "/" + primary))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: repodata + "/" + primary))

        let report = await rig.sync()
        #expect(report.exitCode == 1)
        #expect(report.outcome == .verifyFailed)
        #expect(report.problems.map(\.path) == ["repodata/" + primary])
        #expect(report.message.contains("repodata/" + primary))
        #expect(rig.publishedToken() == nil)
        #expect(try StateStore(directory: rig.config.state.dir).published() == nil)
    }

    /// Upstream's metadata names a package it does not have (metadata written before the package, or the package
    /// removed after): clients would fail to install it, so the default level refuses the tree, naming the package,
    /// and the mirror keeps what it published; once upstream has it, the next run publishes.
    @Test(arguments: ["metadata", "packages"]) func metadataNamingAMissingPackageIsNotPublished(verify: String) async throws {
        let rig = try Rig(label: "missing", verify: verify)
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        let served = FileManager.default.contents(atPath: rig.mirror + "/repodata/repomd.xml")
        try rig.upstream.push(add: [.init("ghost", "1.0")], token: "push-2")
        let ghost = rig.upstream.tree + "/Packages/ghost-1.0-1.noarch.rpm"
        let kept = rig.dir.sub("ghost.rpm")
        try FileManager.default.moveItem(atPath: ghost, toPath: kept)
        let refused = await rig.sync()
        #expect(refused.outcome == .verifyFailed, "\(refused.message)")
        #expect(refused.problems.map(\.path) == ["Packages/ghost-1.0-1.noarch.rpm"], "\(refused.problems)")
        #expect(refused.message.contains("Packages/ghost-1.0-1.noarch.rpm: missing"), "\(refused.message)")
        #expect(rig.publishedToken() == "push-1")
        // In place, stage 2 had swapped push-2's metadata in: it is put back, so clients see push-1's, as CURRENT says.
        #expect(FileManager.default.contents(atPath: rig.mirror + "/repodata/repomd.xml") == served, "push-2's repomd.xml is still served")
        #expect(!FileManager.default.fileExists(atPath: rig.config.state.dir + "/held-metadata"))
        try FileManager.default.moveItem(atPath: kept, toPath: ghost)
        let fixed = await rig.sync()
        #expect(fixed.exitCode == 0, "\(fixed.message)")
        #expect(rig.publishedToken() == "push-2")
    }

    @Test func packagesLevelCatchesATamperedPackage() async throws {
        let rig = try Rig(label: "tamper", verify: "packages")
        defer { rig.cleanup() }
        // Same size, different bytes: only a checksum can tell.
        try Self.flipByte(rig.upstream.tree + "/Packages/beta-1.0-1.noarch.rpm")

        let report = await rig.sync()
        #expect(report.outcome == .verifyFailed)
        #expect(report.problems.map(\.path) == ["Packages/beta-1.0-1.noarch.rpm"])
        #expect(rig.publishedToken() == nil)

        // The metadata level does not read packages, so the same tree passes it.
        var metadataOnly = rig.config
        metadataOnly.mirror.verify = .metadata
        let relaxed = await SyncPipeline(config: metadataOnly).run(options: .init(), logger: Self.logger)
        #expect(relaxed.exitCode == 0, "\(relaxed.message)")
    }

    @Test func snapshotModeSwapsCompleteTreesAndKeepsThree() async throws {
        let rig = try Rig(label: "snap", publish: "snapshot", verify: "packages")
        defer { rig.cleanup() }
        #expect(await rig.sync().exitCode == 0)
        let firstTarget = try FileManager.default.destinationOfSymbolicLink(atPath: rig.mirror)
        #expect(firstTarget.hasPrefix(".dmirr/mirror/snapshots/000001-push-1"))
        #expect(TreeComparison.differences(rig.upstream.tree, realPath(rig.mirror)) == [])

        for n in 2...5 {
            try rig.upstream.push(add: [.init("pkg\(n)", "1.0")], token: "push-\(n)")
            let r = await rig.sync()
            #expect(r.exitCode == 0, "\(r.message)")
            #expect(TreeComparison.differences(rig.upstream.tree, realPath(rig.mirror)) == [])
        }
        let layout = SnapshotLayout(path: rig.mirror)
        #expect(layout.snapshotNames() == ["000003-push-3", "000004-push-4", "000005-push-5"])
        #expect(layout.liveSnapshot()?.hasSuffix("000005-push-5") == true)
        #expect(try Dnf.availablePackages(repo: rig.mirror).contains("pkg5-1.0-1"))
        // Unchanged packages are hard links into the previous snapshot, not copies.
        var a = stat(), b = stat()
        stat(layout.snapshots + "/000004-push-4/Packages/alpha-1.0-1.noarch.rpm", &a)
        stat(layout.snapshots + "/000005-push-5/Packages/alpha-1.0-1.noarch.rpm", &b)
        #expect(a.st_ino == b.st_ino)
    }

    @Test func snapshotModeRefusesARealDirectory() async throws {
        let rig = try Rig(label: "snapdir", publish: "snapshot")
        defer { rig.cleanup() }
        try FileManager.default.createDirectory(atPath: rig.mirror, withIntermediateDirectories: true)
        let report = await rig.sync()
        #expect(report.exitCode == 2)
        #expect(report.message.contains("is a real directory"))
    }
}

/// A thread-safe one-shot flag for event callbacks.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    /// True the first time only.
    func setOnce() -> Bool { lock.withLock { defer { value = true }; return !value } }
}

extension TreeComparison {
    /// Every path with its size and mtime, for "nothing changed" checks.
    static func snapshotForTests(_ root: String) -> [String: String] {
        var out: [String: String] = [:]
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: root) else { return [:] }
        while let p = walker.nextObject() as? String {
            let a = (try? fm.attributesOfItem(atPath: root + "/" + p)) ?? [:]
            out[p] = "\(a[.size] ?? "-") \(a[.modificationDate] ?? "-")"
        }
        return out
    }
}

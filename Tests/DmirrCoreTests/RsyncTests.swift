import Foundation
@testable import DmirrCore
import Testing

@Suite struct RsyncCommandTests {
    func config(_ extra: String = "") throws -> Config {
        try ConfigLoader.load(text: """
            node = "m"
            fleet = "f"
            [upstream]
            url = "rsync://127.0.0.1:873/repo/"
            timeout = "90s"
            connect_timeout = "7s"
            [mirror]
            path = "/srv/m"
            metadata = ["repodata/", "*.xml"]
            \(extra)
            [state]
            dir = "/var/lib/m"
            """, file: "t").get()
    }

    @Test func contentStageHasNoDeletionsAndSkipsMetadataAndToken() throws {
        let args = RsyncCommand.transfer(stage: .content, source: try config().upstream.url, destination: "/srv/m", config: try config()).arguments
        #expect(!args.contains { $0.hasPrefix("--del") })
        #expect(!args.contains("--delay-updates"))
        #expect(args.contains("--exclude=repodata/") && args.contains("--exclude=*.xml"))
        #expect(args.contains("--exclude=/CURRENT"))
        #expect(args.contains("--timeout=90") && args.contains("--contimeout=7"))
        #expect(args.contains("--temp-dir=.dmirr-tmp") && args.contains("--exclude=/.dmirr-tmp/"))
        #expect(Array(args.suffix(2)) == ["rsync://127.0.0.1:873/repo/", "/srv/m/"])
        #expect(args.starts(with: ["-aH", "--numeric-ids"]))
    }

    @Test func metadataStageDelaysUpdatesAndDeletesNothing() throws {
        let c = try config("rsync_args = [\"--bwlimit=10\"]\nexclude_from = \"/etc/x\"")
        let args = RsyncCommand.transfer(stage: .metadata, source: c.upstream.url, destination: "/srv/m/", config: c).arguments
        #expect(args.contains("--delay-updates") && !args.contains { $0.hasPrefix("--del") && $0 != "--delay-updates" })
        #expect(!args.contains("--exclude=repodata/"))
        #expect(args.contains("--exclude=/CURRENT"))
        #expect(args.contains("--exclude-from=/etc/x") && args.contains("--bwlimit=10"))
        #expect(args.last == "/srv/m/")
    }

    /// The listing stage changes nothing: a dry run that would only delete, with the same exclusions as the transfer
    /// (so what the operator excluded is never listed).
    @Test func theDeletionListingIsADryRunThatTransfersNothing() throws {
        let c = try config("exclude_from = \"/etc/x\"")
        let args = RsyncCommand.transfer(stage: .listDeletions, source: c.upstream.url, destination: "/srv/m/", config: c).arguments
        #expect(args.contains("--dry-run") && args.contains("--delete") && args.contains("--existing") && args.contains("--ignore-existing"))
        #expect(args.contains("--exclude-from=/etc/x") && args.contains("--exclude=/CURRENT") && args.contains("--exclude=/.dmirr-manifest"))
    }

    @Test func snapshotStageLinksToLive() throws {
        let c = try config()
        let args = RsyncCommand.transfer(stage: .snapshot(linkDest: "/srv/.dmirr/m/snapshots/1"), source: c.upstream.url, destination: "/s", config: c).arguments
        #expect(args.contains("--link-dest=/srv/.dmirr/m/snapshots/1") && args.contains("--delete"))
    }

    @Test func metadataByChecksumTouchesOnlyMetadata() throws {
        let c = try config()
        let args = RsyncCommand.transfer(stage: .metadataByChecksum, source: c.upstream.url, destination: "/srv/m", config: c).arguments
        #expect(args.contains("--checksum") && args.contains("--delay-updates"))
        #expect(!args.contains { $0.hasPrefix("--del") && $0 != "--delay-updates" })
        let filters = args.filter { $0.hasPrefix("--include=") || $0.hasPrefix("--exclude=") && !$0.contains("dmirr-tmp") && !$0.contains("CURRENT") && !$0.contains("dmirr-manifest") }
        #expect(filters == ["--include=*/", "--include=repodata/**", "--include=*.xml", "--exclude=*"])
        // The token and temp-dir excludes come first, so they still win.
        #expect(args.firstIndex(of: "--exclude=/CURRENT")! < args.firstIndex(of: "--include=*/")!)
    }

    @Test func localSourcesGetNoDaemonOptions() throws {
        var c = try config()
        c.upstream.url = .local("/srv/upstream")
        let args = RsyncCommand.fetchToken(source: c.upstream.url, destinationFile: "/tmp/t", config: c).arguments
        #expect(args == ["--timeout=90", "-tp", "--no-motd", "/srv/upstream/CURRENT", "/tmp/t"])
    }
}

@Suite struct RsyncOutcomeTests {
    func failure(_ code: Int32, _ stderr: [String]) -> RsyncFailure? {
        if case .failure(let f) = RsyncOutcome.classify(.exited(code), stderr: stderr) { return f }
        return nil
    }

    @Test func exitFiveIsSplitByStderr() {
        let busy = failure(5, ["@ERROR: max connections (1) reached -- try again later", "rsync error: error starting client-server protocol (code 5) at main.c(1850) [Receiver=3.2.7]"])
        #expect(busy?.kind == .busy(limit: 1))
        #expect(busy?.isTemporary == true)
        #expect(failure(5, ["@ERROR: Unknown module 'nope'"])?.kind == .unknownModule)
        #expect(failure(5, ["@ERROR: auth failed on module repo"])?.kind == .authFailed)
        #expect(failure(5, ["@ERROR: Unknown module 'nope'"])?.isTemporary == false)
    }

    @Test func otherCodes() {
        #expect(failure(10, ["rsync: [Receiver] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused (111)"])?.kind == .refused)
        #expect(failure(30, ["[receiver] io timeout after 5 seconds -- exiting"])?.kind == .timeout)
        #expect(failure(35, [])?.kind == .connectTimeout)
        #expect(failure(23, ["rsync: [sender] link_stat \"/CURRENT\" (in repo) failed: No such file or directory (2)"])?.kind == .missingSource)
        #expect(failure(23, ["some other problem"])?.kind == .partial)
        #expect(failure(20, [])?.kind == .killed)
        #expect(failure(11, [])?.kind == .fileIO)
        #expect(failure(12, [])?.kind == .protocolError)
        #expect(RsyncOutcome.classify(.exited(24), stderr: []) == .vanished)
        #expect(RsyncOutcome.classify(.exited(0), stderr: []) == .success)
        if case .failure(let f) = RsyncOutcome.classify(.signaled(9), stderr: []) { #expect(f.kind == .killed) } else { Issue.record("signal not a failure") }
    }

    @Test func summariesNameTheCause() {
        let f = failure(5, ["@ERROR: max connections (3) reached -- try again later"])
        #expect(f?.summary == "source busy (max connections 3 reached), retry later")
        #expect(f?.name == "busy")
    }
}

@Suite struct RsyncOutputTests {
    @Test func progressLine() {
        let line = RsyncOutput.classify("     12,345,678  45%   12.34MB/s    0:00:10 (xfr#12, to-chk=34/100)")
        #expect(line == .progress(.init(bytes: 12_345_678, percent: 45, rate: "12.34MB/s", eta: "0:00:10", filesTransferred: 12)))
        #expect(RsyncOutput.classify("              0   0%    0.00kB/s    0:00:00") == .progress(.init(bytes: 0, percent: 0, rate: "0.00kB/s", eta: "0:00:00", filesTransferred: nil)))
    }

    @Test func itemsAndStats() {
        #expect(RsyncOutput.classify(">f+++++++++ Packages/a-1.0-1.noarch.rpm") == .item(.init(changes: ">f+++++++++", path: "Packages/a-1.0-1.noarch.rpm")))
        let deletion = RsyncOutput.classify("*deleting   Packages/old.rpm")
        #expect(deletion == .item(.init(changes: "*deleting", path: "Packages/old.rpm")))
        if case .item(let i) = deletion { #expect(i.isDeletion && !i.isReceivedFile) }
        #expect(RsyncOutput.classify("cd+++++++++ Packages/") == .item(.init(changes: "cd+++++++++", path: "Packages/")))
        var stats = RsyncOutput.Stats()
        for raw in ["Number of files: 15 (reg: 12, dir: 3)", "Number of regular files transferred: 12", "Total transferred file size: 1,234,567 bytes", "Total bytes received: 99,000"] {
            guard case .stat(let k, let v) = RsyncOutput.classify(Substring(raw)) else { Issue.record("not a stat: \(raw)"); continue }
            RsyncOutput.accumulate(k, v, into: &stats)
        }
        #expect(stats.numberOfFiles == 15 && stats.filesTransferred == 12 && stats.transferredFileSize == 1_234_567 && stats.bytesReceived == 99_000)
        #expect(RsyncOutput.classify("sending incremental file list") == .other("sending incremental file list"))
    }

    @Test func carriageReturnsSplitProgress() {
        let parts = RsyncOutput.splitLines("  1,000  10%  1.00kB/s  0:00:09\r  2,000  20%  1.00kB/s  0:00:08\r\n>f+++++++++ x\n")
        #expect(parts.count == 3)
    }
}

@Suite struct TokenTests {
    @Test func whitespaceDoesNotMatterButBytesAreKept() {
        let a = Token(fileContents: Array("1700000000\n".utf8))
        let b = Token(fileContents: Array("  1700000000 ".utf8))
        #expect(a == b)
        #expect(a.bytes != b.bytes)
        #expect(Token(fileContents: Array(" \n".utf8)).isEmpty)
    }

    @Test func directoryNamesAreSafeAndDistinct() {
        #expect(Token("2026-11-25.1").directoryName == "2026-11-25.1")
        #expect(Token("a/b").directoryName == "a_2Fb")
        #expect(Token("../x").directoryName != Token("..x").directoryName)
        #expect(!Token("../x").directoryName.contains("/"))
        #expect(!Token("..").directoryName.hasPrefix("."))
    }
}

@Suite struct HelloPolicyTests {
    let cert = PeerIdentity(fleet: "ius", role: .node, name: "mirror-a")

    @Test func acceptsTheMatchingClaim() {
        #expect(HelloPolicy.check(.init(protocolMajor: 1, fleet: "ius", node: "mirror-a"), certificate: cert, fleet: "ius", major: 1) == .success(cert))
    }

    @Test func rejectsEachMismatch() {
        func check(_ claim: HelloPolicy.Claim, _ identity: PeerIdentity?) -> HelloPolicy.Rejection? {
            if case .failure(let r) = HelloPolicy.check(claim, certificate: identity, fleet: "ius", major: 1) { return r }
            return nil
        }
        #expect(check(.init(protocolMajor: 2, fleet: "ius", node: "mirror-a"), cert) == .unsupportedVersion(theirs: 2, ours: 1))
        #expect(check(.init(protocolMajor: 1, fleet: "epel", node: "mirror-a"), cert) == .wrongFleet(theirs: "epel", ours: "ius"))
        #expect(check(.init(protocolMajor: 1, fleet: "ius", node: "mirror-b"), cert) == .identityMismatch(hello: "mirror-b", certificate: "mirror-a"))
        #expect(check(.init(protocolMajor: 1, fleet: "ius", node: "mirror-a"), nil) == .noIdentity)
        #expect(check(.init(protocolMajor: 1, fleet: "ius", node: "mirror-a"), PeerIdentity(fleet: "epel", role: .node, name: "mirror-a")) == .wrongFleet(theirs: "epel", ours: "ius"))
    }

    @Test func operatorsMayOnlyQueryStatus() {
        let op = PeerIdentity(fleet: "ius", role: .operator, name: "alice")
        #expect(HelloPolicy.permits(op, .status))
        #expect(!HelloPolicy.permits(op, .gossip))
        #expect(HelloPolicy.permits(cert, .gossip))
    }
}

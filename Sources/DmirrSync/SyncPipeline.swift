import DmirrCore
import DmirrStore
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Something the pipeline reports while it works, for a progress line or a log.
public enum SyncEvent: Sendable {
    /// A transfer pass started: `stage` is a short label such as `content` or `metadata+deletions`.
    case stageStarted(stage: String, pass: Int)
    case progress(stage: String, RsyncOutput.Progress)
    case stageFinished(stage: String, stats: RsyncOutput.Stats)
    case verifying
}

/// Fixed points of a run where ``SyncPipeline/checkpoint`` is called.
public enum SyncCheckpoint: String, Sendable, CaseIterable {
    /// The tree is transferred and verified; the token is not yet published.
    case beforePublish = "before-publish"
}

/// How a sync ended: the outcome recorded in the history, the process exit code (DESIGN.md §5) and a sentence.
public struct SyncReport: Sendable {
    public var outcome: SyncRun.Outcome
    /// 0 synced or up to date, 1 failed, 2 setup/config problem, 75 temporary (busy source, lock held).
    public var exitCode: Int32
    public var message: String
    /// The source's token this run aimed for.
    public var token: Token?
    public var problems: [VerificationProblem] = []
    public var bytes: Int64 = 0
    public var files: Int = 0
    /// rsync's exit code of the run that decided the outcome: 0 when every rsync succeeded, the failing one's code
    /// otherwise, nil when rsync did not run or died of a signal.
    public var rsyncExitCode: Int32?
    /// A peer pull found the peer holding another token than the pinned one.
    public var peerTokenMismatch = false

    public init(outcome: SyncRun.Outcome, exitCode: Int32, message: String) {
        self.outcome = outcome
        self.exitCode = exitCode
        self.message = message
    }

    init(
        outcome: SyncRun.Outcome, exitCode: Int32, message: String, token: Token? = nil, problems: [VerificationProblem] = [],
        bytes: Int64 = 0, files: Int = 0, rsyncExitCode: Int32? = nil
    ) {
        self.outcome = outcome
        self.exitCode = exitCode
        self.message = message
        self.token = token
        self.problems = problems
        self.bytes = bytes
        self.files = files
        self.rsyncExitCode = rsyncExitCode
    }
}

/// The one-mirror, one-token sync of DESIGN.md §3: lock, token check, two-stage transfer (or snapshot staging),
/// verify, publish the token last, record the run.
public struct SyncPipeline: Sendable {
    public var config: Config
    public var runner: RsyncRunner
    public var verifier = RepoVerifier()
    /// Called at fixed points of a run (fault-injection tests pause or kill the process there). Default: nothing.
    public var checkpoint: @Sendable (SyncCheckpoint) async -> Void = { _ in }

    public struct Options: Sendable {
        /// Sync even when the source's token equals the published one.
        public var force = false
        /// Pull from a peer mirror instead of upstream: its name (recorded as the run's source), its rsync URL, and
        /// the token it must hold. A peer's tree is always verified at the `packages` level before it is published.
        public var peer: (node: String, url: RsyncLocation, token: String)?
        public init(force: Bool = false) { self.force = force }
    }

    /// The config this run uses: a peer pull reads the peer's tree and token, pinned and fully verified.
    public func effectiveConfig(_ options: Options) -> Config {
        guard let peer = options.peer else { return config }
        var c = config
        c.upstream.url = peer.url
        c.upstream.passwordFile = nil
        c.mirror.verify = .packages
        return c
    }

    public init(config: Config, runner: RsyncRunner = RsyncRunner()) {
        self.config = config
        self.runner = runner
    }

    /// Runs one sync from upstream. Never throws: every failure is a report with its exit code.
    public func run(options: Options, logger: Logger, onEvent: @escaping @Sendable (SyncEvent) -> Void = { _ in })
        async -> SyncReport
    {
        guard options.peer != nil else { return await runResolved(options: options, logger: logger, onEvent: onEvent) }
        var peerPipeline = SyncPipeline(config: effectiveConfig(options), runner: runner)
        peerPipeline.checkpoint = checkpoint
        return await peerPipeline.runResolved(options: options, logger: logger, onEvent: onEvent)
    }

    private func runResolved(options: Options, logger: Logger, onEvent: @escaping @Sendable (SyncEvent) -> Void) async -> SyncReport {
        let sourceName = options.peer?.node ?? "upstream"
        var logger = logger
        logger[metadataKey: "sync.source"] = "\(sourceName)"
        // 1. Lock.
        let lock: SyncLock
        do {
            try FileManager.default.createDirectory(atPath: config.state.dir, withIntermediateDirectories: true)
            lock = try SyncLock(stateDirectory: config.state.dir)
        } catch let error as SyncError {
            return SyncReport(outcome: .busy, exitCode: error.code == .locked ? 75 : 2, message: error.message)
        } catch {
            return SyncReport(outcome: .failed, exitCode: 2, message: "cannot create the state directory \(config.state.dir): \(error)")
        }
        defer { withExtendedLifetime(lock) {} }

        let store: StateStore
        do {
            store = try StateStore(directory: config.state.dir)
        } catch {
            return SyncReport(outcome: .failed, exitCode: 1, message: error.description)
        }

        var run = SyncRun(token: nil, source: sourceName, startedAt: Date())
        var report: SyncReport
        do {
            // Leftovers first: a killed run must not leave anything behind for this one to trip over.
            let interrupted = try store.markInterruptedRuns(at: Date())
            try cleanLeftovers(afterInterruptedRun: interrupted > 0, logger: logger)
            run.id = try store.beginRun(run)
            report = try await syncPasses(options: options, run: &run, store: store, logger: logger, onEvent: onEvent)
        } catch let error as SyncError {
            report = Self.report(for: error)
        } catch let error as StoreError {
            report = SyncReport(outcome: .failed, exitCode: 1, message: error.description)
        } catch is CancellationError {
            report = SyncReport(outcome: .cancelled, exitCode: 1, message: "cancelled; the published token is unchanged")
        } catch {
            report = SyncReport(outcome: .failed, exitCode: 1, message: "\(error)")
        }
        if Task.isCancelled, report.outcome != .synced {
            report.outcome = .cancelled
            report.message = "cancelled (\(report.message)); the published token is unchanged"
        }
        if run.id != nil {
            run.finishedAt = Date()
            run.outcome = report.outcome.rawValue
            run.token = report.token?.value ?? run.token
            run.bytes = report.bytes
            run.files = report.files
            // Outcomes reached only after every rsync succeeded record 0.
            let rsyncSucceeded: Set<SyncRun.Outcome> = [.synced, .upToDate, .verifyFailed]
            run.rsyncExitCode = report.rsyncExitCode.map(Int.init) ?? (rsyncSucceeded.contains(report.outcome) ? 0 : nil)
            run.error = report.exitCode == 0 ? nil : report.message
            do { try store.finishRun(run) } catch {
                logger.error("cannot record the sync run", metadata: ["error": "\(error)"])
            }
        }
        return report
    }

    static func report(for error: SyncError) -> SyncReport {
        if let failure = error.rsync {
            return SyncReport(
                outcome: failure.isTemporary ? .busy : .failed, exitCode: failure.isTemporary ? 75 : 1,
                message: error.message, rsyncExitCode: failure.exitCode)
        }
        let exit: Int32 = error.code == .setup ? 2 : error.code == .locked ? 75 : 1
        return SyncReport(outcome: .failed, exitCode: exit, message: error.description)
    }

    // MARK: - Steps

    var tokenPath: String { config.mirror.path + "/" + config.upstream.tokenFile }
    /// Where the source's token file is fetched to (with its mode and mtime) before it is compared and published.
    var fetchedTokenPath: String { config.state.dir + "/source-token" }

    private func syncPasses(
        options: Options, run: inout SyncRun, store: StateStore, logger: Logger,
        onEvent: @escaping @Sendable (SyncEvent) -> Void
    ) async throws -> SyncReport {
        let snapshot = config.mirror.publish == .snapshot ? SnapshotLayout(path: config.mirror.path) : nil
        try snapshot?.prepare()
        let published = try TreeFiles.readIfPresent(tokenPath).map(Token.init(fileContents:))

        // 2. Token check.
        var target = try await fetchToken(logger: logger)
        run.token = target.value
        if let pinned = options.peer?.token, target.value != pinned {
            var report = SyncReport(
                outcome: .failed, exitCode: 1,
                message: "peer \(options.peer!.node) holds \(config.upstream.tokenFile) \(target.value), not \(pinned); not pulling from it",
                token: target)
            report.peerTokenMismatch = true
            return report
        }
        var logger = logger
        logger[metadataKey: "sync.token"] = "\(target.value)"
        if let published, published == target, !options.force {
            // A tree dmirr did not publish (one a cron script kept until now) is not taken on its token's word: one
            // pass checks it against the source, and the publish that follows is recorded like any other.
            if try store.published()?.token == published.value {
                logger.info("already up to date")
                return SyncReport(outcome: .upToDate, exitCode: 0, message: "up to date: \(config.upstream.tokenFile) is \(target.value)", token: target)
            }
            logger.notice("the tree holds the source's token, but dmirr never published it here: checking it against the source once")
        }
        logger.info("syncing", metadata: ["sync.published": "\(published?.value ?? "none")"])

        // 3–4. Transfer passes, until the source's token holds still across a whole pass.
        var totals = (bytes: Int64(0), files: 0)
        var packages = Set<String>()
        var stable = false
        for pass in 1...config.mirror.maxPasses {
            let received = try await transfer(pass: pass, snapshot: snapshot, logger: logger, onEvent: onEvent)
            totals.bytes += received.bytes
            totals.files += received.files
            packages.formUnion(received.packages)
            let after = try await fetchToken(logger: logger)
            if after == target {
                stable = true
                break
            }
            logger.notice("the source's token changed during the sync; syncing again so the published token matches the tree",
                          metadata: ["sync.token.new": "\(after.value)", "sync.pass": "\(pass)"])
            target = after
            run.token = target.value
            logger[metadataKey: "sync.token"] = "\(target.value)"
        }
        guard stable else {
            return SyncReport(
                outcome: .busy, exitCode: 75,
                message: "the source's token kept changing during \(config.mirror.maxPasses) passes; the token was not "
                    + "published, retry later", token: target, bytes: totals.bytes, files: totals.files)
        }
        let tree = snapshot?.staging ?? config.mirror.path
        _ = rmdir(tree + "/" + RsyncCommand.tempDirName)

        // 5. Verify.
        if config.mirror.verify != .none {
            var verification = await verify(tree: tree, packages: packages, logger: logger, onEvent: onEvent)
            if !verification.isClean {
                // rsync's quick check (size + mtime) can keep a stale metadata file whose replacement has the same
                // size and mtime. Fetch the metadata once more by checksum before calling the tree bad.
                logger.notice("verification failed; fetching the metadata again, compared by checksum",
                              metadata: ["verify.problems": "\(verification.problems.count)"])
                let repaired = try await transfer(
                    pass: config.mirror.maxPasses + 1, snapshot: snapshot, stages: [("metadata-by-checksum", .metadataByChecksum)],
                    logger: logger, onEvent: onEvent)
                totals.bytes += repaired.bytes
                totals.files += repaired.files
                _ = rmdir(tree + "/" + RsyncCommand.tempDirName)
                guard try await fetchToken(logger: logger) == target else {
                    return SyncReport(
                        outcome: .busy, exitCode: 75, message: "the source's token changed during the metadata check; "
                            + "the token was not published, retry later", token: target, bytes: totals.bytes, files: totals.files)
                }
                verification = await verify(tree: tree, packages: packages, logger: logger, onEvent: onEvent)
            }
            guard verification.isClean else {
                // The bad files have the size and mtime the metadata promises, so rsync's quick check would keep them
                // on every later run, from any source. Remove them: the next run fetches them again. (They are not
                // published: in snapshot mode they sit in staging; in place, the token still names the old tree.)
                // Only files this run received are removed: a problem's path can come from the source's metadata,
                // and a lying source must not be able to name a file for us to delete.
                for problem in verification.problems where packages.contains(problem.path) {
                    let file = tree + "/" + problem.path
                    if unlink(file) == 0 {
                        logger.notice("removed a file that failed verification", metadata: ["verify.path": "\(problem.path)"])
                    }
                }
                let list = verification.problems.prefix(20).map { "  \($0)" }.joined(separator: "\n")
                return SyncReport(
                    outcome: .verifyFailed, exitCode: 1,
                    message: "verification failed, token \(target.value) not published:\n" + list
                        + (verification.problems.count > 20 ? "\n  … and \(verification.problems.count - 20) more" : ""),
                    token: target, problems: verification.problems, bytes: totals.bytes, files: totals.files)
            }
        }

        // 6. Publish the token last.
        await checkpoint(.beforePublish)
        try Task.checkCancellation()
        if let snapshot {
            try TreeFiles.writeAtomically(target.bytes, to: snapshot.staging + "/" + config.upstream.tokenFile, like: fetchedTokenPath)
            let name = snapshot.nextName(for: target)
            try snapshot.promoteStaging(to: name)
            let removed = try snapshot.prune(keep: config.mirror.keepSnapshots)
            logger.info("snapshot published", metadata: ["snapshot.name": "\(name)", "snapshot.pruned": "\(removed)"])
        } else {
            try TreeFiles.writeAtomically(target.bytes, to: tokenPath, like: fetchedTokenPath)
        }
        try store.setPublished(token: target.value, source: options.peer?.node ?? "upstream", at: Date())
        return SyncReport(
            outcome: .synced, exitCode: 0,
            message: "synced \(config.upstream.tokenFile) \(published?.value ?? "(none)") → \(target.value)",
            token: target, bytes: totals.bytes, files: totals.files)
    }

    private func verify(tree: String, packages: Set<String>, logger: Logger, onEvent: @Sendable (SyncEvent) -> Void) async
        -> VerificationReport
    {
        onEvent(.verifying)
        let started = ContinuousClock.now
        let verification = await verifier.verify(
            root: tree, level: config.mirror.verify, changedPackages: packages.sorted(), logger: logger)
        logger.info(verification.isClean ? "verified" : "verification found problems", metadata: [
            "verify.repositories": "\(verification.repositories)", "verify.metadata": "\(verification.metadataFiles)",
            "verify.packages": "\(verification.packages)", "verify.problems": "\(verification.problems.count)",
            "verify.seconds": "\(Self.seconds(ContinuousClock.now - started))",
        ])
        return verification
    }

    /// Fetches the source's token file into the state directory and reads it.
    func fetchToken(logger: Logger, into destination: String? = nil) async throws -> Token {
        let destination = destination ?? fetchedTokenPath
        unlink(destination)
        let command = RsyncCommand.fetchToken(source: config.upstream.url, destinationFile: destination, config: config)
        let result = try await runner.run(command, logger: logger)
        try Task.checkCancellation()
        if case .failure(let failure) = result.outcome {
            let what = "cannot fetch \(config.upstream.tokenFile) from \(config.upstream.url)"
            throw SyncError(.rsync, "\(what): \(failure)", rsync: failure)
        }
        guard let bytes = try TreeFiles.readIfPresent(destination) else {
            throw SyncError(.badToken, "rsync reported success but \(destination) is missing")
        }
        let token = Token(fileContents: bytes)
        guard !token.isEmpty else {
            throw SyncError(.badToken, "the source's \(config.upstream.tokenFile) is empty; refusing to sync to an empty token")
        }
        return token
    }

    /// Fetches the source's token without syncing (for `dmirr check`): proves the source is reachable.
    public func probeSource(logger: Logger) async -> Result<Token, SyncError> {
        let temp = NSTemporaryDirectory() + "dmirr-probe-\(getpid())-token"
        defer { unlink(temp) }
        do {
            return .success(try await fetchToken(logger: logger, into: temp))
        } catch let error as SyncError {
            return .failure(error)
        } catch {
            return .failure(SyncError(.io, "\(error)"))
        }
    }

    struct PassResult {
        var bytes: Int64 = 0
        var files = 0
        var packages: [String] = []
    }

    /// One pass: stage 1 + stage 2 in place, or one staging transfer in snapshot mode.
    private func transfer(
        pass: Int, snapshot: SnapshotLayout?, stages: [(String, RsyncCommand.Stage)]? = nil, logger: Logger,
        onEvent: @escaping @Sendable (SyncEvent) -> Void
    ) async throws -> PassResult {
        let destination = snapshot?.staging ?? config.mirror.path
        let stages = stages ?? (snapshot.map { [("snapshot", .snapshot(linkDest: $0.liveSnapshot()))] }
            ?? [("content", .content), ("metadata+deletions", .metadataAndDeletions)])
        try TreeFiles.emptyDirectory(destination + "/" + RsyncCommand.tempDirName)
        var result = PassResult()
        for (label, stage) in stages {
            try Task.checkCancellation()
            onEvent(.stageStarted(stage: label, pass: pass))
            let command = RsyncCommand.transfer(stage: stage, source: config.upstream.url, destination: destination, config: config)
            let started = ContinuousClock.now
            let run = try await runner.run(command, logger: logger) { onEvent(.progress(stage: label, $0)) }
            try Task.checkCancellation()
            if case .failure(let failure) = run.outcome {
                var message = "\(label) transfer from \(config.upstream.url) failed: \(failure.summary)"
                if !run.stderrTail.isEmpty {
                    message += "\nrsync said:\n" + run.stderrTail.suffix(8).map { "  \($0)" }.joined(separator: "\n")
                }
                throw SyncError(.rsync, message, rsync: failure)
            }
            if run.outcome == .vanished {
                logger.info("some source files vanished during the transfer; the token re-check decides", metadata: ["sync.stage": "\(label)"])
            }
            onEvent(.stageFinished(stage: label, stats: run.stats))
            logger.info("stage done", metadata: [
                "sync.stage": "\(label)", "sync.pass": "\(pass)", "rsync.files": "\(run.stats.filesTransferred)",
                "rsync.bytes": "\(run.stats.bytesReceived)", "rsync.deleted": "\(run.deletions)",
                "rsync.seconds": "\(Self.seconds(ContinuousClock.now - started))",
            ])
            result.bytes += run.stats.bytesReceived
            result.files += run.stats.filesTransferred
            result.packages += run.receivedPackages
        }
        return result
    }

    /// Seconds with millisecond precision, for log metadata that scripts read.
    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return "\(ms / 1000).\(String(repeating: "0", count: 3 - String(ms % 1000).count))\(ms % 1000)"
    }

    /// Removes what a killed run leaves: rsync temp files (in `.dmirr-tmp/`), a half-written token, and, after an
    /// interrupted run, `--delay-updates` holding directories anywhere in the tree.
    func cleanLeftovers(afterInterruptedRun: Bool, logger: Logger) throws(SyncError) {
        if config.mirror.publish == .snapshot {
            let layout = SnapshotLayout(path: config.mirror.path)
            unlink(layout.swapLink)
            let tmp = layout.staging + "/" + RsyncCommand.tempDirName
            if FileManager.default.fileExists(atPath: tmp) {
                let n = try TreeFiles.emptyDirectory(tmp)
                if n > 0 { logger.notice("removed temp files of an interrupted run", metadata: ["sync.removed": "\(n)"]) }
            }
            return
        }
        let root = config.mirror.path
        guard FileManager.default.fileExists(atPath: root) else { return }
        unlink(root + "/." + config.upstream.tokenFile + ".dmirr-new")
        let tmp = root + "/" + RsyncCommand.tempDirName
        if FileManager.default.fileExists(atPath: tmp) {
            let n = try TreeFiles.emptyDirectory(tmp)
            _ = rmdir(tmp)
            if n > 0 { logger.notice("removed temp files of an interrupted run", metadata: ["sync.removed": "\(n)"]) }
        }
        if afterInterruptedRun {
            let removed = try TreeFiles.removeDelayDirectories(under: root)
            logger.notice("the previous run was interrupted; cleaned its leftovers", metadata: ["sync.removed": "\(removed)"])
        }
    }
}

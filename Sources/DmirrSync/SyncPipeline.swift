import DmirrCore
import DmirrStore
import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// Something the pipeline reports while it works, for a progress line or a log.
public enum SyncEvent: Sendable {
    /// A transfer pass started: `stage` is a short label such as `content`, `metadata` or `deletions`.
    case stageStarted(stage: String, pass: Int)
    case progress(stage: String, RsyncOutput.Progress)
    case stageFinished(stage: String, stats: RsyncOutput.Stats)
    case verifying
}

/// Fixed points of a run where ``SyncPipeline/checkpoint`` is called.
public enum SyncCheckpoint: String, Sendable, CaseIterable {
    /// The tree is transferred and verified; the token is not yet published.
    case beforePublish = "before-publish"
    /// The token is published; in place, the files the source no longer has are not removed yet.
    case afterPublish = "after-publish"
}

/// How a sync ended: the outcome recorded in the history, the process exit code (docs/architecture.md §5) and a sentence.
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
    /// "upstream" or the peer's node name.
    public var source = "upstream"
    /// The root of the manifest published with the token (a synced run), or of the one already published (up to date).
    public var manifestRoot: String?

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

/// The one-mirror, one-token sync of docs/architecture.md §3: lock, token check, two-stage transfer (or snapshot staging),
/// verify, publish the token last, record the run.
public struct SyncPipeline: Sendable {
    public var config: Config
    public var runner: RsyncRunner
    public var verifier = RepoVerifier()
    /// Called at fixed points of a run (fault-injection tests pause or kill the process there). Default: nothing.
    public var checkpoint: @Sendable (SyncCheckpoint) async -> Void = { _ in }
    /// The state database of `[state] dir`, when the process already has it open (the agent: one `DatabasePool` per
    /// file and process, GRDB's rule). Nil: each run opens it, after taking the lock.
    public var store: StateStore?

    public struct Options: Sendable {
        /// Sync even when the source's token equals the published one.
        public var force = false
        /// Pull from a peer mirror instead of upstream (see ``PeerPull``).
        public var peer: PeerPull?
        /// Publish a token this mirror has already superseded (upstream really went back). Off: such a run fails.
        public var allowRollback = false
        public init(force: Bool = false) { self.force = force }
    }

    /// A pull from another member: its name (recorded as the run's source), its rsync URL, the token it must hold, and
    /// the manifest roots that enough members attest for that token (from their own upstream pulls). The peer's
    /// manifest must have one of these roots, and every file of the tree must match it, before anything is published;
    /// the tree is also verified at the `packages` level.
    public struct PeerPull: Sendable {
        public var node: String
        public var url: RsyncLocation
        public var token: String
        public var acceptedRoots: Set<String>
        /// How many attestations a root needs, for messages.
        public var attestationsNeeded: Int

        public init(node: String, url: RsyncLocation, token: String, acceptedRoots: Set<String>, attestationsNeeded: Int) {
            self.node = node
            self.url = url
            self.token = token
            self.acceptedRoots = acceptedRoots
            self.attestationsNeeded = attestationsNeeded
        }
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

    public init(config: Config, runner: RsyncRunner = RsyncRunner(), store: StateStore? = nil) {
        self.config = config
        self.runner = runner
        self.store = store
    }

    /// Runs one sync from upstream. Never throws: every failure is a report with its exit code.
    public func run(options: Options, logger: Logger, onEvent: @escaping @Sendable (SyncEvent) -> Void = { _ in })
        async -> SyncReport
    {
        guard options.peer != nil else { return await runResolved(options: options, logger: logger, onEvent: onEvent) }
        var peerPipeline = SyncPipeline(config: effectiveConfig(options), runner: runner, store: store)
        peerPipeline.checkpoint = checkpoint
        var report = await peerPipeline.runResolved(options: options, logger: logger, onEvent: onEvent)
        report.source = options.peer!.node
        return report
    }

    /// What a process that starts while no run holds the lock does first (the agent, at start): a run that was killed
    /// is recorded as `interrupted` and its leftovers are removed now, not at the next pull, which may be hours away.
    /// Does nothing while a run holds the lock. Returns how many runs it marked.
    public func recoverInterruptedRuns(logger: Logger) -> Int {
        guard let lock = try? SyncLock(stateDirectory: config.state.dir) else { return 0 }
        defer { withExtendedLifetime(lock) {} }
        do {
            let store = try self.store ?? StateStore(directory: config.state.dir)
            let interrupted = try store.markInterruptedRuns(at: Date())
            if interrupted > 0 { try cleanLeftovers(afterInterruptedRun: true, logger: logger) }
            try heldMetadata?.restore(logger: logger)
            try finishPendingDeletions(logger: logger, store: store)
            return interrupted
        } catch {
            logger.warning("cannot recover from an interrupted run before the next one: \(error)")
            return 0
        }
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
        // An unreadable signing key is the operator's to fix before anything is transferred.
        if let key = config.upstream.signingKey {
            do { _ = try MetadataSignature.prepare(key: key, in: config.state.dir) } catch {
                return SyncReport(outcome: .failed, exitCode: 2, message: error.message)
            }
        }

        let store: StateStore
        if let shared = self.store {
            store = shared
        } else {
            do {
                store = try StateStore(directory: config.state.dir, check: true)
            } catch {
                return Self.report(for: error)
            }
        }

        var run = SyncRun(token: nil, source: sourceName, startedAt: Date())
        var report: SyncReport
        do {
            // Leftovers first: a killed run must not leave anything behind for this one to trip over.
            let interrupted = try store.markInterruptedRuns(at: Date())
            try cleanLeftovers(afterInterruptedRun: interrupted > 0, logger: logger)
            // A run killed before it published left the served metadata aside: it goes back first.
            try heldMetadata?.restore(logger: logger)
            try finishPendingDeletions(logger: logger, store: store)
            run.id = try store.beginRun(run)
            report = try await syncPasses(options: options, run: &run, store: store, logger: logger, onEvent: onEvent)
        } catch let error as SyncError {
            report = Self.report(for: error)
        } catch let error as StoreError {
            report = Self.report(for: error)
        } catch is CancellationError {
            report = SyncReport(outcome: .cancelled, exitCode: 1, message: "cancelled; the published token is unchanged")
        } catch {
            report = SyncReport(outcome: .failed, exitCode: 1, message: "\(error)")
        }
        if Task.isCancelled, report.outcome != .synced {
            report.outcome = .cancelled
            report.message = "cancelled (\(report.message)); the published token is unchanged"
        }
        if report.outcome != .synced {
            // In place, a run that did not publish puts the served metadata back (a copy exists only then).
            do { try heldMetadata?.restore(logger: logger) } catch {
                logger.error("cannot put the served metadata back; the next run does", metadata: ["error": "\(error)"])
                report.message += "\n(and the served metadata could not be put back: \(error); the next run does)"
            }
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

    /// A lock another process holds on the state database is temporary (75, like a held sync lock); damage and a
    /// read-only state are the operator's to fix (1).
    static func report(for error: StoreError) -> SyncReport {
        error.code == .locked
            ? SyncReport(outcome: .busy, exitCode: 75, message: error.description)
            : SyncReport(outcome: .failed, exitCode: 1, message: error.description)
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

    /// The passes, with an ``ArrivalHasher`` beside them hashing each file rsync reports received.
    private func syncPasses(
        options: Options, run: inout SyncRun, store: StateStore, logger: Logger,
        onEvent: @escaping @Sendable (SyncEvent) -> Void
    ) async throws -> SyncReport {
        let snapshot = config.mirror.publish == .snapshot ? SnapshotLayout(path: config.mirror.path) : nil
        let tree = snapshot?.staging ?? config.mirror.path
        let (arrived, sink) = AsyncStream.makeStream(of: String.self)
        var syncRun = run
        defer { run = syncRun }
        return try await withThrowingTaskGroup(of: [String: StateStore.CachedDigest].self) { group in
            group.addTask { await ArrivalHasher.consume(arrived, root: tree) }
            // A run that ends before the manifest step (up to date, refused, failed) has no use for the hashes.
            defer {
                sink.finish()
                group.cancelAll()
            }
            return try await syncPasses(options: options, run: &syncRun, store: store, snapshot: snapshot, arrived: sink,
                                        hashed: &group, logger: logger, onEvent: onEvent)
        }
    }

    /// - Parameters:
    ///   - arrived: takes the paths rsync reports received, for the ``ArrivalHasher``.
    ///   - hashed: the group the hasher runs in; the manifest step ends `arrived` and takes its digests from it.
    private func syncPasses(
        options: Options, run: inout SyncRun, store: StateStore, snapshot: SnapshotLayout?,
        arrived: AsyncStream<String>.Continuation, hashed: inout ThrowingTaskGroup<[String: StateStore.CachedDigest], any Error>,
        logger: Logger, onEvent: @escaping @Sendable (SyncEvent) -> Void
    ) async throws -> SyncReport {
        try snapshot?.prepare()
        let published = try TreeFiles.readIfPresent(tokenPath).map(Token.init(fileContents:))

        // 2. Token check.
        var target = try await fetchToken(logger: logger)
        run.token = target.value
        if let id = run.id { try store.setRunToken(id, token: target.value) }
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
            // pass checks it against the source, and the publish that follows is recorded like any other. Nor is a
            // tree that a failed or killed run changed since the last publish.
            let unchecked = try store.treeUnchecked()
            if try store.published()?.token == published.value, unchecked == nil {
                logger.info("already up to date")
                var report = SyncReport(outcome: .upToDate, exitCode: 0, message: "up to date: \(config.upstream.tokenFile) is \(target.value)", token: target)
                report.manifestRoot = try store.attestation().flatMap { $0.token == target.value ? $0.root : nil }
                return report
            }
            if let unchecked {
                logger.notice("the tree holds the source's token, but a run since its publish changed it: checking it again",
                              metadata: ["sync.unchecked": "\(unchecked)"])
            } else {
                logger.notice("the tree holds the source's token, but dmirr never published it here: checking it against the source once")
            }
        }
        // 2b. Never back in time: a token this mirror already superseded is refused unless the operator says so.
        if let published, published != target, !options.allowRollback, !config.upstream.allowRollback,
            try store.supersededTokens().contains(target.value)
        {
            return SyncReport(
                outcome: .failed, exitCode: 1,
                message: "\(sourceDescription(options)) serves \(config.upstream.tokenFile) \(target.value), which this mirror "
                    + "published before \(published.value): refusing to go back. If upstream really went back, run "
                    + "`dmirr sync --allow-rollback` once (beside an agent: set `[upstream] allow_rollback = true`, "
                    + "restart the agent, and unset it once the mirror holds the token).", token: target)
        }
        // 2c. A peer's manifest must carry enough attestations before any of its tree is taken.
        var expected: (manifest: TreeManifest, bytes: [UInt8], root: String)?
        if let peer = options.peer {
            switch await fetchAttestedManifest(peer, logger: logger) {
            case .success(let m): expected = m
            case .failure(let refusal):
                var report = refusal.report
                report.token = target
                return report
            }
        }
        logger.info("syncing", metadata: ["sync.published": "\(published?.value ?? "none")"])
        if snapshot == nil {
            // In place, the transfer changes the served tree before anything is verified: until a publish covers it,
            // the next run must not call the tree up to date.
            try store.markTreeUnchecked(reason: "a sync of \(target.value) from \(sourceName(options)) changed the tree", at: Date())
        }

        // In place, the served metadata is kept aside before the transfer changes it, and put back unless this run publishes.
        try heldMetadata?.save()

        // 3–4. Transfer passes, until the source's token holds still across a whole pass.
        var totals = (bytes: Int64(0), files: 0)
        var packages = Set<String>()
        // In place: what the source no longer has, as the last (stable) pass listed it; removed after the publish.
        var leaving: [String] = []
        var stable = false
        for pass in 1...config.mirror.maxPasses {
            let received = try await transfer(pass: pass, snapshot: snapshot, fromPeer: options.peer != nil, arrived: arrived,
                                              logger: logger, onEvent: onEvent)
            totals.bytes += received.bytes
            totals.files += received.files
            packages.formUnion(received.packages)
            leaving = received.leaving
            let after = try await fetchToken(logger: logger)
            if after == target {
                stable = true
                break
            }
            logger.notice("the source's token changed during the sync; syncing again so the published token matches the tree",
                          metadata: ["sync.token.new": "\(after.value)", "sync.pass": "\(pass)"])
            target = after
            run.token = target.value
            if let id = run.id { try store.setRunToken(id, token: target.value) }
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
        if config.mirror.verify != .none || config.upstream.signingKey != nil {
            var verification = await verify(tree: tree, packages: packages, leaving: leaving, logger: logger, onEvent: onEvent)
            if !verification.isClean {
                // rsync's quick check (size + mtime) can keep a stale metadata file whose replacement has the same
                // size and mtime. Fetch the metadata once more by checksum before calling the tree bad.
                logger.notice("verification failed; fetching the metadata again, compared by checksum",
                              metadata: ["verify.problems": "\(verification.problems.count)"])
                let repaired = try await transfer(
                    pass: config.mirror.maxPasses + 1, snapshot: snapshot, stages: [("metadata-by-checksum", .metadataByChecksum)],
                    fromPeer: options.peer != nil, arrived: arrived, logger: logger, onEvent: onEvent)
                totals.bytes += repaired.bytes
                totals.files += repaired.files
                _ = rmdir(tree + "/" + RsyncCommand.tempDirName)
                guard try await fetchToken(logger: logger) == target else {
                    return SyncReport(
                        outcome: .busy, exitCode: 75, message: "the source's token changed during the metadata check; "
                            + "the token was not published, retry later", token: target, bytes: totals.bytes, files: totals.files)
                }
                verification = await verify(tree: tree, packages: packages, leaving: leaving, logger: logger, onEvent: onEvent)
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

        // 5b. The manifest: a peer's tree must match the attested one; an upstream tree gets its own.
        let manifest: (bytes: [UInt8], root: String)
        do {
            let started = ContinuousClock.now
            arrived.finish()
            let fresh = (try? await hashed.next()) ?? nil
            // What the database holds: saving compares against it (not against the fresh hashes merged in below).
            let stored = try store.digestCache()
            let builder = ManifestBuilder(
                root: tree, tokenFile: config.upstream.tokenFile, tokenSource: fetchedTokenPath,
                cache: stored.merging(fresh ?? [:]) { _, new in new }, leaving: Set(leaving))
            var built = try builder.build(token: target.value)
            if let expected {
                let problems = try reconcile(tree: tree, expected: expected.manifest, actual: &built, peer: options.peer!, logger: logger)
                guard problems.isEmpty else {
                    try? saveDigests(built, previous: stored, store: store)
                    let list = problems.prefix(20).map { "  \($0)" }.joined(separator: "\n")
                    return SyncReport(
                        outcome: .verifyFailed, exitCode: 1,
                        message: "the tree from \(options.peer!.node) does not match the manifest that members attest for "
                            + "\(target.value) (root \(expected.root.prefix(16))…); token not published:\n" + list
                            + (problems.count > 20 ? "\n  … and \(problems.count - 20) more" : ""),
                        token: target, problems: problems, bytes: totals.bytes, files: totals.files)
                }
                manifest = (expected.bytes, expected.root)
            } else {
                let bytes = built.manifest.encoded()
                manifest = (bytes, TreeManifest.root(of: bytes))
            }
            try saveDigests(built, previous: stored, store: store)
            logger.info("manifest", metadata: [
                "manifest.root": "\(manifest.root)", "manifest.entries": "\(built.manifest.entries.count)",
                "manifest.hashed": "\(built.hashedFiles)", "manifest.hashed_bytes": "\(built.hashedBytes)",
                "manifest.cached": "\(built.cachedFiles)", "manifest.seconds": "\(Self.seconds(ContinuousClock.now - started))",
            ])
        }

        // 6. Publish the manifest, then the token last.
        await checkpoint(.beforePublish)
        try Task.checkCancellation()
        // The new metadata is the one to serve from here on.
        try heldMetadata?.discard()
        try TreeFiles.writeAtomically(manifest.bytes, to: tree + "/" + TreeManifest.fileName)
        if let snapshot {
            try TreeFiles.writeAtomically(target.bytes, to: snapshot.staging + "/" + config.upstream.tokenFile, like: fetchedTokenPath)
            let name = snapshot.nextName(for: target)
            try snapshot.promoteStaging(to: name)
            let removed = try snapshot.prune(keep: config.mirror.keepSnapshots)
            logger.info("snapshot published", metadata: ["snapshot.name": "\(name)", "snapshot.pruned": "\(removed)"])
        } else {
            try TreeFiles.writeAtomically(target.bytes, to: tokenPath, like: fetchedTokenPath)
        }
        // The token names the new tree now; only then do the files the source dropped go (recorded with the publish,
        // so a run killed meanwhile leaves them to the next start).
        try store.setPublished(token: target.value, source: options.peer?.node ?? "upstream", at: Date(), manifestRoot: manifest.root,
                               pendingDeletions: snapshot == nil ? leaving : [])
        await checkpoint(.afterPublish)
        try finishPendingDeletions(logger: logger, store: store)
        var report = SyncReport(
            outcome: .synced, exitCode: 0,
            message: "synced \(config.upstream.tokenFile) \(published?.value ?? "(none)") → \(target.value)",
            token: target, bytes: totals.bytes, files: totals.files)
        report.manifestRoot = manifest.root
        return report
    }

    private func verify(tree: String, packages: Set<String>, leaving: [String], logger: Logger, onEvent: @Sendable (SyncEvent) -> Void) async
        -> VerificationReport
    {
        onEvent(.verifying)
        let started = ContinuousClock.now
        var verifier = self.verifier
        verifier.scratch = config.state.dir
        verifier.leaving = Set(leaving)
        if let key = config.upstream.signingKey {
            do { verifier.signature = try MetadataSignature.prepare(key: key, in: config.state.dir) } catch {
                var report = VerificationReport()
                report.problems.append(.init(path: config.upstream.tokenFile, message: error.message))
                return report
            }
        }
        let verification = await verifier.verify(
            root: tree, level: config.mirror.verify, changedPackages: packages.sorted(), logger: logger)
        logger.info(verification.isClean ? "verified" : "verification found problems", metadata: [
            "verify.repositories": "\(verification.repositories)", "verify.metadata": "\(verification.metadataFiles)",
            "verify.packages": "\(verification.packages)", "verify.signatures": "\(verification.signatures)", "verify.problems": "\(verification.problems.count)",
            "verify.seconds": "\(Self.seconds(ContinuousClock.now - started))",
        ])
        return verification
    }

    func sourceName(_ options: Options) -> String { options.peer?.node ?? "upstream" }
    func sourceDescription(_ options: Options) -> String { options.peer.map { "peer \($0.node)" } ?? "upstream" }

    /// A peer pull refused before any of its tree was taken, as the run's report.
    struct Refusal: Error {
        var report: SyncReport
    }

    /// Where a peer's manifest is fetched to before its root is checked.
    var fetchedManifestPath: String { config.state.dir + "/source-manifest" }

    /// Fetches the peer's manifest alone and accepts it only when its root is one that enough members attest for the
    /// pinned token. A refusal is a finished report: nothing of the peer's tree has been taken yet.
    private func fetchAttestedManifest(_ peer: PeerPull, logger: Logger) async
        -> Result<(manifest: TreeManifest, bytes: [UInt8], root: String), Refusal>
    {
        func refuse(_ message: String, _ outcome: SyncRun.Outcome = SyncRun.Outcome.verifyFailed) -> Result<(manifest: TreeManifest, bytes: [UInt8], root: String), Refusal> {
            logger.warning("refusing a peer's tree", metadata: ["peer.node": "\(peer.node)", "reason": "\(message)"])
            return .failure(Refusal(report: SyncReport(outcome: outcome, exitCode: 1, message: "not pulling from peer \(peer.node): " + message)))
        }
        guard !peer.acceptedRoots.isEmpty else {
            return refuse("no manifest of \(peer.token) is attested by \(peer.attestationsNeeded) members that fetched it from "
                          + "upstream themselves ([peers] attestations)", SyncRun.Outcome.failed)
        }
        let limits = TreeManifest.Limits()
        unlink(fetchedManifestPath)
        let command = RsyncCommand.fetchFile(TreeManifest.fileName, source: config.upstream.url, destinationFile: fetchedManifestPath,
                                             maxBytes: limits.maxBytes, config: config)
        let bytes: [UInt8]
        do {
            let result = try await runner.run(command, logger: logger)
            if case .failure(let failure) = result.outcome {
                return .failure(Refusal(report: Self.report(for: SyncError(
                    .rsync, "cannot fetch \(TreeManifest.fileName) from peer \(peer.node) at \(config.upstream.url): \(failure)", rsync: failure))))
            }
            guard let read = try TreeFiles.readIfPresent(fetchedManifestPath) else {
                return refuse("it serves no \(TreeManifest.fileName) (or one over \(limits.maxBytes) bytes)")
            }
            bytes = read
        } catch {
            return refuse("cannot fetch its \(TreeManifest.fileName): \(error)", SyncRun.Outcome.failed)
        }
        let root = TreeManifest.root(of: bytes)
        guard peer.acceptedRoots.contains(root) else {
            return refuse("its manifest of \(peer.token) has root \(root.prefix(16))…, which is not the one \(peer.attestationsNeeded) "
                          + "members attest from their own upstream pulls (\(peer.acceptedRoots.map { String($0.prefix(16)) + "…" }.sorted().joined(separator: ", ")))")
        }
        let manifest: TreeManifest
        do { manifest = try TreeManifest.decode(bytes, limits: limits) } catch {
            return refuse("its attested manifest cannot be read: \(error)")
        }
        guard manifest.token == peer.token else {
            return refuse("its manifest is for \(manifest.token), not \(peer.token)")
        }
        return .success((manifest, bytes, root))
    }

    /// Makes the tree match an attested manifest where the manifest alone says how (permission bits, setuid included;
    /// symlinks and directories it lists), and removes what it cannot vouch for: files and symlinks with other content,
    /// and entries it does not list. Returns what was wrong beyond repair, by path; empty when the tree now matches.
    private func reconcile(
        tree: String, expected: TreeManifest, actual: inout ManifestBuilder.Result, peer: PeerPull, logger: Logger
    ) throws -> [VerificationProblem] {
        let byPath = Dictionary(expected.entries.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        var problems: [VerificationProblem] = []
        var removed = 0
        // Deepest paths first, so that an extra directory is emptied before it is looked at.
        for mismatch in expected.mismatches(in: actual.manifest).reversed() {
            let full = tree + "/" + mismatch.path
            let want = byPath[mismatch.path]
            switch mismatch.kind {
            case .mode(let mode, _):
                if chmod(full, mode_t(mode)) == 0 { continue }
                problems.append(.init(path: mismatch.path, message: "cannot set mode \(String(mode, radix: 8)): \(String(cString: strerror(errno)))"))
            case .missing where want?.kind == .symlink:
                if symlink(want!.target, full) == 0 { continue }
                problems.append(.init(path: mismatch.path, message: "cannot create the listed symlink: \(String(cString: strerror(errno)))"))
            case .missing where want?.kind == .directory:
                if mkdir(full, mode_t(want!.mode)) == 0, chmod(full, mode_t(want!.mode)) == 0 { continue }
                problems.append(.init(path: mismatch.path, message: "cannot create the listed directory: \(String(cString: strerror(errno)))"))
            case .missing:
                problems.append(.init(path: mismatch.path, message: "listed in the attested manifest, not received"))
            case .extra, .content:
                var st = stat()
                if lstat(full, &st) == 0 {
                    let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
                    if isDirectory ? rmdir(full) == 0 : unlink(full) == 0 { removed += 1 }
                }
                problems.append(.init(path: mismatch.path, message: mismatch.description.dropFirst(mismatch.path.count + 2)
                    .description + "; removed"))
            }
        }
        if !problems.isEmpty {
            logger.warning("a peer's tree does not match the attested manifest", metadata: [
                "peer.node": "\(peer.node)", "verify.problems": "\(problems.count)", "verify.removed": "\(removed)",
            ])
        }
        return problems.reversed()
    }

    private func saveDigests(_ built: ManifestBuilder.Result, previous: [String: StateStore.CachedDigest], store: StateStore) throws {
        let changed = built.digests.filter { previous[$0.key] != $0.value }
        let gone = previous.keys.filter { built.digests[$0] == nil }
        try store.updateDigestCache(set: changed, remove: Array(gone))
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
        /// In place: the paths the listing stage found the source no longer has.
        var leaving: [String] = []
    }

    /// One pass: stage 1 + stage 2 in place, or one staging transfer in snapshot mode.
    private func transfer(
        pass: Int, snapshot: SnapshotLayout?, stages: [(String, RsyncCommand.Stage)]? = nil, fromPeer: Bool,
        arrived: AsyncStream<String>.Continuation, logger: Logger,
        onEvent: @escaping @Sendable (SyncEvent) -> Void
    ) async throws -> PassResult {
        let destination = snapshot?.staging ?? config.mirror.path
        let stages = stages ?? (snapshot.map { [("snapshot", .snapshot(linkDest: $0.liveSnapshot()))] }
            ?? [("content", .content), ("metadata", .metadata), ("deletions", .listDeletions)])
        try TreeFiles.emptyDirectory(destination + "/" + RsyncCommand.tempDirName)
        var result = PassResult()
        for (label, stage) in stages {
            try Task.checkCancellation()
            onEvent(.stageStarted(stage: label, pass: pass))
            let command = RsyncCommand.transfer(stage: stage, source: config.upstream.url, destination: destination, config: config,
                                                fromPeer: fromPeer)
            let started = ContinuousClock.now
            let run = try await runner.run(command, logger: logger, onReceived: { arrived.yield($0) }) {
                onEvent(.progress(stage: label, $0))
            }
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
            if stage == .listDeletions { result.leaving = run.deletedPaths }
        }
        return result
    }

    /// In place: where a run keeps the served metadata while it changes the tree (nil in snapshot mode, where the served
    /// tree is never written).
    var heldMetadata: HeldMetadata? {
        config.mirror.publish == .snapshot ? nil : HeldMetadata(root: config.mirror.path, stateDirectory: config.state.dir)
    }

    /// Seconds with millisecond precision, for log metadata that scripts read.
    static func seconds(_ d: Duration) -> String {
        let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
        return "\(ms / 1000).\(String(repeating: "0", count: 3 - String(ms % 1000).count))\(ms % 1000)"
    }

    /// Removes the files left to delete after the last publish (in place): each path the source no longer had, deepest
    /// first, unless the published manifest lists it (then it is part of the tree the token names, whatever the list
    /// said) or it lies under a symlink (it would not be in the tree). A directory that is not empty (it holds something rsync was told to leave alone, such as an excluded
    /// file) stays. Returns how many paths went.
    @discardableResult
    func finishPendingDeletions(logger: Logger, store: StateStore) throws -> Int {
        guard let pending = try store.pendingDeletions() else { return 0 }
        let root = config.mirror.path
        let manifest = FileManager.default.contents(atPath: root + "/" + TreeManifest.fileName).flatMap { try? TreeManifest.decode([UInt8]($0)) }
        guard let manifest, manifest.token == pending.token else {
            // The tree's manifest is not that publish's: something else changed the tree since. Deleting by an old list
            // could take what the tree now needs; the next run's own listing will find what is extra.
            logger.warning("not removing files left from the publish of \(pending.token): the tree's manifest is not of that token any more")
            try store.clearPendingDeletions()
            return 0
        }
        let listed = Set(manifest.entries.map(\.path))
        var removed = 0
        var kept: [String] = []
        for path in pending.paths.sorted(by: { $0.split(separator: "/").count > $1.split(separator: "/").count }) {
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            guard !path.isEmpty, !path.hasPrefix("/"), !parts.contains(".."), !parts.contains("."), !parts.contains(""),
                !listed.contains(path), path != config.upstream.tokenFile, path != TreeManifest.fileName
            else {
                kept.append(path)
                continue
            }
            // Every directory on the way must be a real one in the tree: through a symlink the path would leave it.
            var inside = true
            var parent = root
            for part in parts.dropLast() {
                parent += "/" + part
                var dir = stat()
                if lstat(parent, &dir) != 0 || (dir.st_mode & S_IFMT) != S_IFDIR {
                    inside = false
                    break
                }
            }
            guard inside else {
                kept.append(path)
                continue
            }
            let full = root + "/" + path
            var st = stat()
            guard lstat(full, &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR ? rmdir(full) == 0 : unlink(full) == 0 {
                removed += 1
            } else {
                kept.append(path)
            }
        }
        try store.clearPendingDeletions()
        if removed > 0 || !kept.isEmpty {
            logger.info("removed what the source no longer has, after publishing", metadata: [
                "sync.token": "\(pending.token)", "sync.removed": "\(removed)", "sync.kept": "\(kept.count)",
            ])
        }
        if !kept.isEmpty {
            logger.notice("kept paths the source no longer has (listed in the manifest, not empty, or not removable)",
                          metadata: ["sync.kept.first": "\(kept.prefix(5).joined(separator: ", "))"])
        }
        return removed
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

import DmirrCore
import DmirrStore
import DmirrSync
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs this member's ``SyncCoordinator`` (docs/architecture.md §4): feeds it the live members' records every gossip round,
/// polls upstream's token when told, and runs the sync pipeline from the source the fleet's plan gives us (upstream,
/// or an in-sync peer's rsync URL pinned to the token and verified at the packages level), reporting state, source
/// and progress into our member record. Everything runs in one task group; a pull is cancelled through its own signal.
struct SyncService: Service {
    let config: Config
    let node: FleetNode
    /// The agent's one pool on the state database, shared with the pipeline.
    let store: StateStore
    let clock: any AgentClock
    let metrics: AgentMetrics
    let logger: Logger

    enum Event: Sendable {
        case tick
        /// A token fetch's result, and when it was asked for (so a late answer cannot overwrite a newer one).
        case polled(Result<Token, SyncError>, at: Duration)
        case progress(Double)
        case finished(SyncReport)
        case announced
        /// `dmirr sync` beside the agent; answered (nil: under way, else why not) once its pull has started.
        case requested(FleetNode.SyncRequest, CheckedContinuation<String?, Never>)
    }

    static func coordinatorConfiguration(_ config: Config) -> SyncCoordinator.Configuration {
        var c = SyncCoordinator.Configuration()
        c.upstreamSlots = config.upstream.slots
        c.serveSlots = config.mirror.rsyncURL == nil ? 0 : config.mirror.serveSlots
        c.poll = config.upstream.poll
        c.fallbackPoll = config.upstream.poll * 10
        c.agreementDeadline = max(.seconds(2), config.peers.gossip * 5)
        // rsync's own --timeout ends a stalled transfer; this catches a source that trickles.
        c.stallAfter = max(.seconds(30), config.upstream.timeout * 2)
        c.busyBackoff = max(.seconds(5), config.upstream.poll)
        c.attestations = config.peers.attestations
        return c
    }

    func run() async throws {
        var logger = self.logger
        logger[metadataKey: "service"] = "sync"
        let pipeline = SyncPipeline(config: config, store: store)
        let recovered = pipeline.recoverInterruptedRuns(logger: logger)
        if recovered > 0 { logger.notice("a sync run was killed before this start; recorded it as interrupted and removed its leftovers") }
        let publishedRow = try? store.published()
        let published = publishedRow?.token ?? ""
        // The published token is where we start: gossip of an older one must not take a restarted mirror back.
        var coordinator = SyncCoordinator(
            me: config.node, publishedToken: published,
            publishedSeenMillis: publishedRow.map { Int64($0.at.timeIntervalSince1970 * 1000) },
            attestation: (try? store.attestation()).flatMap { $0.map { ($0.token, $0.root) } },
            configuration: Self.coordinatorConfiguration(config))
        let (events, sink) = AsyncStream.makeStream(of: Event.self)
        let clock = self.clock
        let gossip = config.peers.gossip
        var pullCancel: CancelSignal?
        var pullStarted: Duration?
        var vouchedBy: String?
        var dispute: String?
        var lastPoll: (millis: Int64, error: String) = (0, "")
        /// The clock correction our record's times were last stamped with (``FleetTimeClock``).
        var stampedCorrection: Int64 = 0
        await node.onAnnounce { _ in sink.yield(.announced) }
        await node.onSyncRequest { request in
            await withCheckedContinuation { reply in
                if case .terminated = sink.yield(.requested(request, reply)) { reply.resume(returning: "the agent is shutting down") }
            }
        }
        /// The next pull re-checks the tree even if the source holds our token (`dmirr sync --force`).
        var forceNextPull = false

        await withDiscardingTaskGroup { group in
            group.addTask {
                // A graceful shutdown ends the ticks, and with them the loop below.
                try? await cancelWhenGracefulShutdown {
                    while !Task.isCancelled {
                        sink.yield(.tick)
                        try await clock.sleep(for: gossip)
                    }
                }
                sink.finish()
            }
            for await event in events {
                let now = clock.now
                // One reading of the wall clock per event, with the correction it includes: times stamped under an
                // earlier correction move first, so every time in our record is on the fleet's clock.
                let wallMillis: Int64
                var moved: [SyncCoordinator.Directive] = []
                if let fleetTime = clock as? FleetTimeClock {
                    let (wall, applied) = fleetTime.wallMillisAndCorrection
                    wallMillis = wall
                    if applied != stampedCorrection {
                        moved = coordinator.wallClockCorrected(by: applied - stampedCorrection)
                        stampedCorrection = applied
                        if let published = try? store.published() {
                            let millis = fleetMillis(published.at)
                            await node.updateOwn { $0.lastSyncMillis = millis }
                        }
                    }
                } else {
                    wallMillis = clock.wallMillis
                }
                var directives: [SyncCoordinator.Directive] = moved
                var reply: (CheckedContinuation<String?, Never>, String?)?
                switch event {
                case .tick:
                    let view = await node.liveRecords()
                    let suspects = await node.suspectRecords()
                    directives += coordinator.onView(view, suspects: suspects, wallMillis: wallMillis, now: now)
                    directives += coordinator.onTick(now: now)
                case .polled(.success(let token), let at):
                    lastPoll = (wallMillis, "")
                    directives += coordinator.onUpstreamToken(token.value, wallMillis: wallMillis, now: now, polledAt: at)
                case .polled(.failure(let error), let at):
                    logger.warning("cannot read the upstream token", metadata: ["error": "\(error.message)"])
                    if error.rsync?.isTemporary == true { metrics.upstreamRefused() }
                    lastPoll = (wallMillis, error.message)
                    // A dispute between attesters stays in view beside the fetch error: it is why we cannot follow peers.
                    let message = [error.message, dispute].compactMap { $0 }.joined(separator: "; ")
                    await node.updateOwn { $0.lastError = String(message.prefix(RecordPolicy.Limit.errorBytes)) }
                    directives += coordinator.onUpstreamUnreachable(now: now, polledAt: at)
                case .progress(let fraction):
                    coordinator.onPullProgress(now: now, fraction: fraction)
                    await node.updateOwn { $0.progress = fraction }
                case .announced:
                    directives += coordinator.onAnnounce(now: now)
                case .requested(let request, let continuation):
                    let (refusal, started) = await take(request, coordinator: &coordinator, now: now)
                    directives += started
                    if refusal == nil, !started.isEmpty { forceNextPull = request.force }
                    // Answered once the directives ran: the status the client reads next shows the pull.
                    reply = (continuation, refusal)
                case .finished(let report):
                    pullCancel = nil
                    await record(report, logger: logger)
                    let kind: AgentMetrics.SourceKind = report.source == "upstream" ? .upstream : .peer
                    metrics.pullFinished(outcome: Self.metricOutcome(report), source: kind, duration: now - (pullStarted ?? now),
                                         bytes: report.bytes)
                    pullStarted = nil
                    if report.outcome == .synced, let token = report.token?.value, let target = coordinator.target,
                        target.token == token, target.seenMillis > 0
                    {
                        metrics.published(afterSeconds: Double(wallMillis - target.seenMillis) / 1000)
                    }
                    if report.source == "upstream", report.exitCode == 0, let token = report.token, let root = report.manifestRoot {
                        coordinator.attest(token: token.value, root: root)
                    }
                    directives += coordinator.onPullFinished(Self.outcome(report), now: now, wallMillis: wallMillis)
                }
                if case .tick = event, let token = coordinator.target?.token {
                    // Members that attest different trees for one token: say who, in the log and in our status.
                    let sides = coordinator.disputedRoots(for: token)
                    let text = sides.isEmpty ? nil : "members disagree about what upstream served for \(token): "
                        + sides.map { "\($0.nodes.joined(separator: ", ")) attest \($0.root.prefix(12))…" }.joined(separator: "; ")
                    if text != dispute {
                        dispute = text
                        if let text {
                            logger.warning("members attest different trees for one token", metadata: ["sync.token": "\(token)", "dispute": "\(text)"])
                            await node.updateOwn { $0.lastError = String(text.prefix(RecordPolicy.Limit.errorBytes)) }
                        }
                    }
                }
                if coordinator.vouchedBy != vouchedBy {
                    vouchedBy = coordinator.vouchedBy
                    if let vouchedBy, let token = coordinator.target?.token {
                        logger.notice("our own fetch of the upstream token failed; following a token that members attest from their own upstream pulls",
                                      metadata: ["peer.attesters": "\(vouchedBy)", "sync.token": "\(token)"])
                    }
                }
                var status = FleetNode.PlanStatus()
                status.targetSeenMillis = coordinator.target?.seenMillis ?? 0
                status.token = coordinator.plan?.token ?? ""
                status.digest = coordinator.plan?.digest ?? ""
                status.agreed = coordinator.agreed
                status.agreeing = coordinator.agreement.same
                status.members = coordinator.agreement.of
                status.order = coordinator.plan?.order ?? []
                status.lastPollMillis = lastPoll.millis
                status.lastPollError = lastPoll.error
                await node.setPlanStatus(status)
                for directive in directives {
                    switch directive {
                    case .pollUpstream:
                        group.addTask {
                            let quiet = Logger(label: "dmirr.probe", factory: { _ in SwiftLogNoOpLogHandler() })
                            sink.yield(.polled(await pipeline.probeSource(logger: quiet), at: now))
                        }
                    case .startPull(let source, let token):
                        var options = SyncPipeline.Options(force: forceNextPull)
                        forceNextPull = false
                        if case .peer(let peer) = source {
                            // Only daemon URLs: a peer advertising a local path must not make us copy our own disk.
                            guard let url = await node.rsyncURL(of: peer).flatMap(RsyncLocation.init), url.isDaemon else {
                                logger.warning("the plan names a peer without a usable rsync URL", metadata: ["peer.node": "\(peer)"])
                                sink.yield(.finished(SyncReport(outcome: .failed, exitCode: 1, message: "peer \(peer) has no rsync URL")))
                                continue
                            }
                            options.peer = .init(node: peer, url: url, token: token, acceptedRoots: coordinator.attestedRoots(for: token),
                                                 attestationsNeeded: config.peers.attestations)
                        }
                        let cancel = CancelSignal()
                        pullCancel = cancel
                        pullStarted = now
                        await node.updateOwn {
                            $0.syncState = .syncing
                            $0.source = source.recordValue
                            $0.progress = 0
                        }
                        logger.info("pulling", metadata: ["sync.source": "\(source)", "sync.token": "\(token)"])
                        group.addTask { [options, logger] in
                            let progress = ProgressThrottle(clock: clock)
                            let report = await cancel.racing {
                                await pipeline.run(options: options, logger: logger) { event in
                                    // Into the event loop, which reports it into our record: no task per update.
                                    if case .progress(_, let p) = event, progress.due() {
                                        sink.yield(.progress(Double(p.percent) / 100))
                                    }
                                }
                            }
                            sink.yield(.finished(report))
                        }
                    case .cancelPull(let reason):
                        logger.notice("cancelling the pull", metadata: ["reason": "\(reason)"])
                        pullCancel?.fire()
                    case .advertise(let a):
                        await node.updateOwn {
                            $0.targetToken = a.targetToken
                            $0.targetSeenMillis = a.targetSeenMillis
                            $0.avoid = a.avoid
                            $0.planDigest = a.planDigest
                            $0.serveSlots = a.serveSlots
                            $0.attestToken = a.attestToken
                            $0.attestRoot = a.attestRoot
                            if $0.syncState != .syncing {
                                $0.syncState = !a.targetToken.isEmpty && $0.publishedToken == a.targetToken ? .inSync
                                    : $0.syncState == .failed ? .failed : .waiting
                            }
                        }
                    case .wake:
                        break  // ticks come every gossip round
                    }
                }
                if let (continuation, refusal) = reply { continuation.resume(returning: refusal) }
            }
            // Shutting down: a running pull is cancelled (rsync torn down, the token untouched) before we return.
            pullCancel?.fire()
        }
    }

    static func outcome(_ report: SyncReport) -> SyncCoordinator.PullOutcome {
        if report.peerTokenMismatch { return .tokenMismatch(found: report.token?.value ?? "") }
        switch report.outcome {
        case .synced, .upToDate: return .synced(token: report.token?.value ?? "")
        case .busy: return .busy
        case .cancelled: return .cancelled
        case .failed, .verifyFailed, .interrupted, .running: return .failed(report.message)
        }
    }

    /// Takes `dmirr sync --source/--force` from beside the agent: the directives that start its pull, or why not.
    /// A plain request (no source, no force) is an announcement: fetch upstream's token now.
    private func take(_ request: FleetNode.SyncRequest, coordinator: inout SyncCoordinator, now: Duration) async
        -> (refusal: String?, directives: [SyncCoordinator.Directive])
    {
        let upstream = request.source.isEmpty || request.source == PlanSource.upstream.recordValue
        if upstream, !request.force { return (nil, coordinator.onAnnounce(now: now)) }
        if let running = coordinator.running {
            return ("a pull of \(running.token) from \(running.source) is running; ask again once it has finished (`dmirr status` follows it)", [])
        }
        if upstream {
            let token = coordinator.target?.token ?? coordinator.publishedToken
            return (nil, coordinator.onRequestedPull(.upstream, token: token, now: now) ?? [])
        }
        let peer = request.source
        guard peer != config.node else { return ("--source \(peer) is this mirror; name a peer or 'upstream'", []) }
        guard let (record, liveness) = await node.member(peer) else {
            let known = await node.liveRecords().map(\.node).sorted()
            return ("--source \(peer): no such member is known; live members: \(known.isEmpty ? "none" : known.joined(separator: ", "))", [])
        }
        guard liveness != .down else { return ("--source \(peer): that member is down", []) }
        let token = record.publishedToken
        guard !token.isEmpty else { return ("--source \(peer): it holds no token yet", []) }
        // Checked as any peer pull is: its manifest must be attested, from upstream, by enough members.
        guard !coordinator.attestedRoots(for: token).isEmpty else {
            return ("--source \(peer): no manifest of \(token) is attested by \(config.peers.attestations) members' own upstream pulls, so its tree cannot be checked", [])
        }
        return (nil, coordinator.onRequestedPull(.peer(peer), token: token, now: now) ?? [])
    }

    static func metricOutcome(_ report: SyncReport) -> AgentMetrics.Outcome {
        switch report.outcome {
        case .synced: .synced
        case .upToDate: .upToDate
        case .busy: .busy
        case .cancelled: .cancelled
        case .failed, .verifyFailed, .interrupted, .running: .failed
        }
    }

    /// A time the state database recorded (this host's clock), in the fleet's time our records carry, and never later
    /// than now: a publish stamped while the host's clock ran fast (since put right) did not happen in the future, and
    /// members refuse a record that says it did.
    private func fleetMillis(_ hostTime: Date) -> Int64 {
        let millis = (clock as? FleetTimeClock)?.fleetMillis(hostTime) ?? Int64((hostTime.timeIntervalSince1970 * 1000).rounded(.down))
        return min(millis, clock.wallMillis)
    }

    private func record(_ report: SyncReport, logger: Logger) async {
        let published = try? store.published()
        await node.updateOwn {
            $0.progress = nil
            $0.source = ""
            $0.publishedToken = published?.token ?? $0.publishedToken
            $0.lastSyncMillis = published.map { fleetMillis($0.at) } ?? $0.lastSyncMillis
            switch report.outcome {
            case .synced, .upToDate:
                $0.syncState = $0.publishedToken == $0.targetToken ? .inSync : .waiting
                $0.lastError = ""
            case .busy:
                $0.syncState = .waiting
                $0.lastError = report.message
            case .cancelled, .running, .interrupted:
                $0.syncState = .behind
            case .failed, .verifyFailed:
                $0.syncState = .failed
                $0.lastError = String(report.message.prefix(300))
            }
        }
        logger.info("sync finished", metadata: ["sync.outcome": "\(report.outcome.rawValue)", "sync.message": "\(report.message)"])
    }
}

/// Cancels one pull from outside its task: ``racing(_:)`` runs the work beside a waiter on the signal and cancels the
/// work when the signal fires first.
final class CancelSignal: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream(of: Void.self) }

    func fire() { continuation.finish() }

    func racing(_ work: @escaping @Sendable () async -> SyncReport) async -> SyncReport {
        await withTaskGroup(of: SyncReport?.self) { group in
            group.addTask { await work() }
            group.addTask { [stream] in
                for await _ in stream {}
                return nil
            }
            var result: SyncReport?
            for await value in group {
                if let value {
                    result = value
                    break
                }
                group.cancelAll()  // the signal fired: cancel the work and wait for its (cancelled) report
            }
            group.cancelAll()
            self.continuation.finish()
            return result ?? SyncReport(outcome: .cancelled, exitCode: 1, message: "cancelled")
        }
    }
}

/// At most four progress updates a second into the member record.
final class ProgressThrottle: Sendable {
    private let clock: any AgentClock
    private let last: Mutex<Duration?> = Mutex(nil)

    init(clock: any AgentClock) { self.clock = clock }

    func due() -> Bool {
        let now = clock.now
        return last.withLock { last in
            if let previous = last, now - previous < .milliseconds(250) { return false }
            last = now
            return true
        }
    }
}

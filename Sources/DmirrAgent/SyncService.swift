import DmirrCore
import DmirrStore
import DmirrSync
import Foundation
import Logging
import ServiceLifecycle

/// Polls the upstream's token every `[upstream] poll` and runs the sync pipeline when it differs from the published
/// one, reporting state, source and progress into this node's member record. (The agreed schedule of slots comes with
/// the next piece of work; for now every agent pulls from upstream when it sees a new token.)
struct SyncService: Service {
    let config: Config
    let node: FleetNode
    let logger: Logger

    func run() async throws {
        var logger = self.logger
        logger[metadataKey: "service"] = "sync"
        let pipeline = SyncPipeline(config: config)
        let quiet = Logger(label: "dmirr.probe", factory: { _ in SwiftLogNoOpLogHandler() })
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            switch await pipeline.probeSource(logger: quiet) {
            case .success(let token):
                let own = await node.own
                await node.updateOwn { $0.targetToken = token.value }
                if own.publishedToken != token.value {
                    await sync(pipeline, logger: logger)
                } else if own.syncState != .inSync {
                    await node.updateOwn { $0.syncState = .inSync }
                }
            case .failure(let error):
                logger.warning("cannot read the upstream token", metadata: ["error": "\(error.message)"])
                await node.updateOwn { $0.lastError = error.message }
            }
            // Sleep until the next poll, but wake for shutdown.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: config.upstream.poll) }
        }
    }

    private func sync(_ pipeline: SyncPipeline, logger: Logger) async {
        await node.updateOwn {
            $0.syncState = .syncing
            $0.source = "upstream"
            $0.progress = 0
        }
        let node = self.node
        let progress = ProgressThrottle()
        // A graceful shutdown cancels the running sync: rsync is torn down, the token stays unpublished.
        let report = await cancelWhenGracefulShutdown {
            await pipeline.run(options: .init(), logger: logger) { event in
                if case .progress(_, let p) = event, progress.due() {
                    Task { await node.updateOwn { $0.progress = Double(p.percent) / 100 } }
                }
            }
        }
        let published = try? StateStore(directory: config.state.dir).published()
        await node.updateOwn {
            $0.progress = nil
            $0.source = ""
            $0.publishedToken = published?.token ?? $0.publishedToken
            $0.lastSyncMillis = published.map { Int64($0.at.timeIntervalSince1970 * 1000) } ?? $0.lastSyncMillis
            switch report.outcome {
            case .synced, .upToDate:
                $0.syncState = .inSync
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

/// At most four progress updates a second into the member record.
final class ProgressThrottle: @unchecked Sendable {
    private let lock = NSLock()
    private var last = ContinuousClock.now - .seconds(1)
    func due() -> Bool {
        lock.withLock {
            let now = ContinuousClock.now
            guard now - last >= .milliseconds(250) else { return false }
            last = now
            return true
        }
    }
}

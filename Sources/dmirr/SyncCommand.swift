import ArgumentParser
import DmirrAgent
import DmirrCore
import DmirrSync
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Sync this mirror now (a drop-in for the cron script).",
        discussion: """
            Takes the lock in [state] dir, compares the source's token with the published one, transfers content, then \
            metadata and deletions, verifies, and publishes the token last. Exit 0 synced or up to date, 1 failed, \
            2 config error, 75 source busy or another run holds the lock. When an agent runs for this mirror (its \
            control socket answers), dmirr sync asks it to check upstream now and follows its work instead: exit 0 \
            once the mirror publishes the target, 1 if the pull fails, 75 after --timeout (the agent carries on).
            """
    )

    @OptionGroup var options: ConfigOptions

    @Flag(help: "Sync even when the source's token equals the published one.")
    var force = false

    @Option(help: """
        Where to pull from: 'upstream', or a peer's node name (its rsync URL from the fleet records the agent stored; \
        pinned to the token it holds when we start; its manifest must be attested by [peers] attestations members \
        and every file must match it).
        """)
    var source = "upstream"

    @Flag(help: """
        Publish a token this mirror has already superseded. Without it such a run fails: a mirror never goes back in \
        time unless upstream really did.
        """)
    var allowRollback = false

    @Flag(name: .shortAndLong, help: "Log debug details, such as each rsync command line.")
    var verbose = false

    @Option(help: "With a running agent: how long to follow its work before exiting 75 (it carries on).")
    var timeout = "1h"

    func run() async throws {
        let config = try options.load()
        guard let followFor = DurationText.parse(timeout) else {
            printError("dmirr sync: --timeout '\(timeout)' is not a duration (e.g. 30s, 10m, 1h)")
            throw ExitCode(2)
        }
        if let control = await AgentSync.reachableAgent(config) {
            guard !allowRollback else {
                // Going back in time is an operator's decision about this host's tree, not a request to the fleet's agent.
                printError("dmirr sync: an agent runs this mirror (\(control)); --allow-rollback is not taken through it. Stop the agent to run it by hand.")
                throw ExitCode(2)
            }
            let code = await AgentSync.follow(path: control, source: source, force: force, timeout: followFor)
            if code != 0 { throw ExitCode(code) }
            return
        }
        let logger = Logs.bootstrap(verbose: verbose)
        var runOptions = SyncPipeline.Options(force: force)
        runOptions.allowRollback = allowRollback
        if source != "upstream" {
            do {
                let (url, claims) = try await PeerSource.resolve(node: source, config: config)
                let token = try await PeerSource.token(of: source, at: url, config: config, logger: logger)
                let roots = Attestations.acceptedRoots(for: token, claims: claims, needed: config.peers.attestations)
                runOptions.peer = .init(node: source, url: url, token: token, acceptedRoots: roots,
                                        attestationsNeeded: config.peers.attestations)
            } catch {
                printError("dmirr sync: \(error.message)")
                throw ExitCode(error.exitCode)
            }
        }
        let progress = ProgressLine(enabled: isatty(STDERR_FILENO) == 1)
        var pipeline = SyncPipeline(config: config)
        pipeline.checkpoint = FaultInjection.fromEnvironment()
        // SIGINT/SIGTERM cancel the run, so rsync is torn down and the run is recorded instead of the process vanishing.
        let signals = SignalWaiter([SIGINT, SIGTERM])
        let report = await withTaskGroup(of: SyncReport?.self) { [runOptions, pipeline] group in
            group.addTask { await pipeline.run(options: runOptions, logger: logger) { progress.handle($0) } }
            group.addTask {
                _ = await signals.next()
                return nil
            }
            var report: SyncReport?
            while let next = await group.next() {
                // The run's report ends the wait for a signal; a signal cancels the run, whose report follows.
                group.cancelAll()
                if let next {
                    report = next
                    break
                }
            }
            return report ?? SyncReport(outcome: .cancelled, exitCode: 1, message: "cancelled")
        }
        progress.finish()
        if report.exitCode == 0 {
            print(report.message)
        } else {
            printError("dmirr sync: \(report.message)")
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}

/// Catches signals as a stream: from creation on they no longer end the process, and ``next()`` returns the first to
/// arrive (nil once the waiting task is cancelled).
final class SignalWaiter: Sendable {
    private let stream: AsyncStream<Int32>
    private let sources: Mutex<[any DispatchSourceSignal]>

    init(_ signals: [Int32]) {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        var sources: [any DispatchSourceSignal] = []
        for signo in signals {
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler { continuation.yield(signo) }
            source.resume()
            sources.append(source)
        }
        self.sources = Mutex(sources)
    }

    func next() async -> Int32? {
        for await signo in stream { return signo }
        return nil
    }

    deinit { sources.withLock { $0.forEach { $0.cancel() } } }
}

/// The live progress line on a terminal (bytes, rate, files, ETA from rsync's `--info=progress2`); silent otherwise.
final class ProgressLine: Sendable {
    private let enabled: Bool
    private struct Screen {
        var lastDraw = ContinuousClock.now - .seconds(1)
        var drawn = false
    }
    private let screen = Mutex(Screen())

    init(enabled: Bool) { self.enabled = enabled }

    func handle(_ event: SyncEvent) {
        guard enabled else { return }
        screen.withLock { screen in
            switch event {
            case .stageStarted(let stage, let pass):
                Self.draw("\(stage)\(pass > 1 ? " (pass \(pass))" : ""): starting…", force: true, on: &screen)
            case .progress(let stage, let p):
                let files = p.filesTransferred.map { "  \($0) files" } ?? ""
                Self.draw("\(stage): \(ByteCount.format(p.bytes))  \(p.percent)%  \(p.rate)  ETA \(p.eta)\(files)", force: false, on: &screen)
            case .stageFinished:
                Self.clear(&screen)
            case .verifying:
                Self.draw("verifying metadata…", force: true, on: &screen)
            }
        }
    }

    func finish() { screen.withLock { Self.clear(&$0) } }

    private static func draw(_ text: String, force: Bool, on screen: inout Screen) {
        let now = ContinuousClock.now
        guard force || now - screen.lastDraw >= .milliseconds(250) else { return }
        screen.lastDraw = now
        screen.drawn = true
        FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
    }

    private static func clear(_ screen: inout Screen) {
        guard screen.drawn else { return }
        screen.drawn = false
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

enum ByteCount {
    static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// `DMIRR_TEST_PAUSE_AT=before-publish` makes `dmirr sync` announce on stderr that it reached that point and then
/// wait there (up to 120 s), so crash tests can `kill -9` it at an exact step. Unset, it does nothing.
enum FaultInjection {
    static let variable = "DMIRR_TEST_PAUSE_AT"

    static func fromEnvironment() -> @Sendable (SyncCheckpoint) async -> Void {
        guard let value = ProcessInfo.processInfo.environment[variable], let point = SyncCheckpoint(rawValue: value) else {
            return { _ in }
        }
        return { reached in
            guard reached == point else { return }
            printError("\(variable): paused at \(point.rawValue) (pid \(getpid()))")
            try? await Task.sleep(for: .seconds(120))
        }
    }
}

import ArgumentParser
import DmirrCore
import DmirrSync
import Foundation
import Logging

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
            guard source == "upstream", !force, !allowRollback else {
                printError("dmirr sync: an agent runs this mirror (\(control)); it cannot yet take --source, --force or --allow-rollback on request. Stop the agent to run them by hand.")
                throw ExitCode(2)
            }
            let code = await AgentSync.follow(path: control, timeout: followFor)
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
        let task = Task { [runOptions] in
            await pipeline.run(options: runOptions, logger: logger) { progress.handle($0) }
        }
        let signals = SignalCancellation(signals: [SIGINT, SIGTERM]) { task.cancel() }
        let report = await task.value
        signals.cancel()
        progress.finish()
        if report.exitCode == 0 {
            print(report.message)
        } else {
            printError("dmirr sync: \(report.message)")
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }
}

/// Cancels a task on SIGINT/SIGTERM, so rsync is torn down and the run is recorded instead of the process vanishing.
final class SignalCancellation: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []

    init(signals: [Int32], handler: @escaping @Sendable () -> Void) {
        for signo in signals {
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            sources.append(source)
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}

/// The live progress line on a terminal (bytes, rate, files, ETA from rsync's `--info=progress2`); silent otherwise.
final class ProgressLine: @unchecked Sendable {
    private let enabled: Bool
    private let lock = NSLock()
    private var lastDraw = ContinuousClock.now - .seconds(1)
    private var drawn = false

    init(enabled: Bool) { self.enabled = enabled }

    func handle(_ event: SyncEvent) {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .stageStarted(let stage, let pass):
            draw("\(stage)\(pass > 1 ? " (pass \(pass))" : ""): starting…", force: true)
        case .progress(let stage, let p):
            let files = p.filesTransferred.map { "  \($0) files" } ?? ""
            draw("\(stage): \(ByteCount.format(p.bytes))  \(p.percent)%  \(p.rate)  ETA \(p.eta)\(files)", force: false)
        case .stageFinished:
            clear()
        case .verifying:
            draw("verifying metadata…", force: true)
        }
    }

    func finish() {
        lock.lock()
        defer { lock.unlock() }
        clear()
    }

    private func draw(_ text: String, force: Bool) {
        let now = ContinuousClock.now
        guard force || now - lastDraw >= .milliseconds(250) else { return }
        lastDraw = now
        drawn = true
        FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
    }

    private func clear() {
        guard drawn else { return }
        drawn = false
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

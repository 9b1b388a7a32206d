import DmirrCore
import Foundation
import Logging
import Subprocess

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// What one rsync process did.
public struct RsyncRun: Sendable {
    public var outcome: RsyncOutcome
    public var exitCode: Int32?
    public var stats: RsyncOutput.Stats
    /// Paths (relative to the transfer root) of received files that end in `.rpm`, for package verification.
    public var receivedPackages: [String]
    /// How many regular files arrived, and how many paths were deleted.
    public var receivedFiles: Int
    public var deletions: Int
    /// The paths deleted (or, in a dry run, that would be), relative to the transfer root, without a trailing slash.
    public var deletedPaths: [String] = []
    /// The last lines rsync wrote to stderr.
    public var stderrTail: [String]
}

/// Runs rsync with swift-subprocess, streaming stdout (progress, itemized changes, stats) and stderr concurrently.
///
/// Cancelling the calling task tears rsync down: SIGTERM, then SIGKILL two seconds later.
public struct RsyncRunner: Sendable {
    /// `rsync` looked up in `PATH`, or an absolute path.
    public var executable: String
    /// How many stderr lines to keep for error messages.
    public var stderrLines = 20

    public init(executable: String = "rsync") {
        self.executable = executable
    }

    /// - Parameter onReceived: called with each regular file's path (relative to the destination) as rsync reports it
    ///   received.
    public func run(
        _ command: RsyncCommand, logger: Logger, onReceived: @escaping @Sendable (String) -> Void = { _ in },
        onProgress: @escaping @Sendable (RsyncOutput.Progress) -> Void = { _ in }
    ) async throws(SyncError) -> RsyncRun {
        logger.debug("running rsync", metadata: ["rsync.argv": "\(command.arguments.joined(separator: " "))"])
        var options = PlatformOptions()
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: .seconds(2))]
        let exe: Executable = executable.hasPrefix("/") ? .path(FilePath(executable)) : .name(executable)
        let keep = stderrLines
        do {
            let result = try await Subprocess.run(
                exe, arguments: Arguments(command.arguments), platformOptions: options,
                input: .none, output: .sequence, error: .sequence
            ) { execution in
                async let errors: [String] = {
                    var tail: [String] = []
                    for try await line in execution.standardError.strings() {
                        tail.append(line)
                        if tail.count > keep { tail.removeFirst(tail.count - keep) }
                    }
                    return tail
                }()
                var stats = RsyncOutput.Stats()
                var packages: [String] = []
                var received = 0
                var deletions = 0
                var deleted: [String] = []
                for try await line in execution.standardOutput.strings() {
                    switch RsyncOutput.classify(Substring(line)) {
                    case .progress(let p): onProgress(p)
                    case .item(let item):
                        if item.isReceivedFile {
                            received += 1
                            onReceived(item.path)
                            if item.path.hasSuffix(".rpm") { packages.append(item.path) }
                        } else if item.isDeletion {
                            deletions += 1
                            deleted.append(item.path.hasSuffix("/") ? String(item.path.dropLast()) : item.path)
                        }
                    case .stat(let key, let value): RsyncOutput.accumulate(key, value, into: &stats)
                    case .other: break
                    }
                }
                return (stats, packages, received, deleted, try await errors)
            }
            let (stats, packages, received, deleted, tail) = result.closureResult
            let termination: RsyncOutcome.Termination
            var exitCode: Int32?
            switch result.terminationStatus {
            case .exited(let code):
                termination = .exited(code)
                exitCode = code
            case .signaled(let signal):
                termination = .signaled(signal)
            }
            return RsyncRun(
                outcome: RsyncOutcome.classify(termination, stderr: tail), exitCode: exitCode, stats: stats,
                receivedPackages: packages, receivedFiles: received, deletions: deleted.count, deletedPaths: deleted, stderrTail: tail)
        } catch {
            throw SyncError(.launch, "cannot run \(executable); is rsync installed? (apt-get install rsync)", underlying: error)
        }
    }
}

import Foundation

/// One row of the sync history: what one `dmirr sync` (or an agent's sync) did.
public struct SyncRun: Sendable, Equatable, Codable {
    public var id: Int64?
    /// The token the run aimed for (nil when it never learned the source's token).
    public var token: String?
    /// `upstream` or a peer's node name.
    public var source: String
    public var startedAt: Date
    public var finishedAt: Date?
    /// ``Outcome`` raw value.
    public var outcome: String
    /// rsync's exit code of the pass that decided the outcome, when rsync ran.
    public var rsyncExitCode: Int?
    public var bytes: Int64
    public var files: Int
    public var error: String?

    public init(
        id: Int64? = nil, token: String?, source: String, startedAt: Date, finishedAt: Date? = nil,
        outcome: Outcome = .running, rsyncExitCode: Int? = nil, bytes: Int64 = 0, files: Int = 0, error: String? = nil
    ) {
        self.id = id
        self.token = token
        self.source = source
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.outcome = outcome.rawValue
        self.rsyncExitCode = rsyncExitCode
        self.bytes = bytes
        self.files = files
        self.error = error
    }

    /// How a run ended.
    public enum Outcome: String, Sendable, CaseIterable {
        /// Still running, or the process died (see ``interrupted``).
        case running
        /// Synced and published a new token.
        case synced
        /// The mirror already had the source's token; nothing to do.
        case upToDate = "up-to-date"
        /// The source refused for now (max connections); nothing changed.
        case busy
        /// Verification found a mismatch; the token was not published.
        case verifyFailed = "verify-failed"
        /// rsync or the pipeline failed.
        case failed
        /// The process was killed before it finished (found at the next start).
        case interrupted
        /// Stopped by a signal and cleaned up.
        case cancelled
    }

    /// The error an interrupted run is recorded (or shown) with.
    public static let interruptedError = "the process ended before the run finished (killed or crashed)"

    enum CodingKeys: String, CodingKey {
        case id, token, source, outcome, bytes, files, error
        case startedAt = "started_at"
        case finishedAt = "finished_at"
        case rsyncExitCode = "rsync_exit_code"
    }
}

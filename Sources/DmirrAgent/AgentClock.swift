import Foundation

/// The agent's time, injected into every service: a monotonic `now` (for intervals, timeouts and liveness), the wall
/// clock (for what goes into signed records: expiry, when a token was first seen) and sleeping. The agent runs on
/// ``SystemAgentClock``; DmirrAgentTests drive the same services on a manual clock, so their timing is tested in
/// virtual time rather than by sleeping.
///
/// It is one protocol rather than `any Clock<Duration>` because the services need both clocks to move together: a
/// test that advances virtual time must also advance the wall time records are stamped with.
public protocol AgentClock: Sendable {
    /// Monotonic time since the clock started.
    var now: Duration { get }
    /// Wall-clock time.
    var wallNow: Date { get }
    /// Suspends until `now` has advanced by `duration`; throws `CancellationError` when the task is cancelled first.
    func sleep(for duration: Duration) async throws
}

extension AgentClock {
    /// Wall-clock time in Unix milliseconds, as records carry it.
    public var wallMillis: Int64 { Int64((wallNow.timeIntervalSince1970 * 1000).rounded(.down)) }
}

/// The real clocks: `ContinuousClock` (it keeps counting while the host sleeps, so a suspended VM does not make a
/// member think no time passed) and `Date`.
public struct SystemAgentClock: AgentClock {
    private let started: ContinuousClock.Instant

    public init() { started = ContinuousClock.now }

    public var now: Duration { ContinuousClock.now - started }
    public var wallNow: Date { Date() }
    public func sleep(for duration: Duration) async throws { try await ContinuousClock().sleep(for: duration) }
}

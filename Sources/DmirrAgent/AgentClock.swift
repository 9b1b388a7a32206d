import DmirrCore
import Foundation
import Synchronization

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

/// The agent's clock in the fleet's time: `base`, its wall clock corrected by what peers' `Hello`s showed of theirs
/// (``ClockOffset``), so that a host whose clock is off stamps and judges records the way its peers do. Monotonic time
/// and sleeping are the base clock's. The agent wraps its clock in one and hands it to every service.
public final class FleetTimeClock: AgentClock {
    public let base: any AgentClock
    private let offset = Mutex(ClockOffset())

    public init(base: any AgentClock) { self.base = base }

    public var now: Duration { base.now }
    public var wallNow: Date { base.wallNow.addingTimeInterval(Double(offset.withLock { $0.correctionMillis }) / 1000) }
    public func sleep(for duration: Duration) async throws { try await base.sleep(for: duration) }

    /// The correction now (ms to add to this host's clock), and the offset measured (before the one-hour limit).
    public var correction: (applied: Int64, measured: Int64) { offset.withLock { ($0.correctionMillis, $0.measuredMillis) } }

    /// Whether the peers' clocks heard so far say where the fleet's time is (``ClockOffset/determined``); while they do
    /// not, the dialer links to more peers.
    public var determined: Bool { offset.withLock { $0.determined } }

    /// The fleet's wall clock now (Unix ms) and the correction it includes, read together: a service that stamps times
    /// moves the ones it stamped earlier when the correction it sees changes (``SyncCoordinator/wallClockCorrected(by:)``).
    public var wallMillisAndCorrection: (wallMillis: Int64, correction: Int64) {
        offset.withLock { offset in
            (Int64((base.wallNow.timeIntervalSince1970 * 1000).rounded(.down)) &+ offset.correctionMillis, offset.correctionMillis)
        }
    }

    /// A time this host's clock stamped (a publish the state database recorded), in the fleet's time.
    public func fleetMillis(_ hostTime: Date) -> Int64 {
        Int64((hostTime.timeIntervalSince1970 * 1000).rounded(.down)) &+ offset.withLock { $0.correctionMillis }
    }

    /// A peer's `Hello` carried `helloWallMillis`, stamped by its host's clock; compared with this host's own clock
    /// now, as the `Hello` was stamped (the one-way delay, milliseconds, is far below ``ClockOffset/threshold``).
    /// Returns whether the correction changed.
    public func observe(peer: String, helloWallMillis: Int64) -> Bool {
        let local = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        return offset.withLock { $0.observe(peer: peer, peerWallMillis: helloWallMillis, localWallMillis: local) }
    }
}

import DmirrAgent
import Foundation
import Synchronization

/// Virtual time for the agent's services (in the manner of Hummingbird's `MockClock`): `now` moves only when the test
/// calls ``advance(by:)``, which wakes every sleeper whose deadline has come. The wall clock starts at the real time
/// the clock was made (so certificates made for the test are valid) and moves with `now`.
final class ManualClock: AgentClock {
    private struct Sleeper {
        var id: UInt64
        var deadline: Duration
        var continuation: CheckedContinuation<Void, any Error>
    }
    private struct State {
        var now: Duration = .zero
        var sleepers: [Sleeper] = []
        var nextID: UInt64 = 0
        var cancelled: Set<UInt64> = []
    }
    private let state = Mutex(State())
    let wallStart: Date

    init(wallStart: Date = Date()) { self.wallStart = wallStart }

    var now: Duration { state.withLock { $0.now } }

    var wallNow: Date {
        let now = self.now
        return wallStart.addingTimeInterval(Double(now.components.seconds) + Double(now.components.attoseconds) / 1e18)
    }

    /// How many tasks are asleep on this clock.
    var sleepers: Int { state.withLock { $0.sleepers.count } }

    func sleep(for duration: Duration) async throws {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resume: Result<Void, any Error>? = state.withLock { state in
                    if state.cancelled.remove(id) != nil { return .failure(CancellationError()) }
                    if duration <= .zero { return .success(()) }
                    state.sleepers.append(Sleeper(id: id, deadline: state.now + duration, continuation: continuation))
                    return nil
                }
                if let resume { continuation.resume(with: resume) }
            }
        } onCancel: {
            let sleeper: Sleeper? = state.withLock { state in
                guard let index = state.sleepers.firstIndex(where: { $0.id == id }) else {
                    // Not registered yet: the registration sees this and gives up at once.
                    state.cancelled.insert(id)
                    return nil
                }
                return state.sleepers.remove(at: index)
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward and wakes every sleeper whose deadline is now due, earliest first.
    func advance(by duration: Duration) {
        let due: [Sleeper] = state.withLock { state in
            state.now += duration
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }.sorted { $0.deadline < $1.deadline }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Waits (in real time, at most `seconds`) until at least `count` tasks sleep on this clock: the services have
    /// done everything the last advance let them do and are waiting for time again.
    func waitForSleepers(_ count: Int, seconds: Double = 120) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while sleepers < count {
            guard ContinuousClock.now < deadline else {
                throw ClockTimeout("only \(sleepers) of \(count) tasks asleep on the manual clock after \(seconds) s")
            }
            try await Task.sleep(for: .milliseconds(2))
        }
    }
}

struct ClockTimeout: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Polls `condition` in real time until it holds, at most `seconds`; for effects of an advance that run in other tasks.
func eventually(_ what: String, seconds: Double = 120, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw ClockTimeout("\(what): not within \(seconds) s") }
        try await Task.sleep(for: .milliseconds(5))
    }
}

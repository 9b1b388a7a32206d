import DmirrCore
import Testing

@Suite struct OutboundQueueStateMachineTests {
    typealias Machine = OutboundQueueStateMachine<Int>

    static func written(_ action: Machine.Action) -> Int? {
        if case .write(let f) = action { f } else { nil }
    }

    @Test func framesGoOutOneAtATimeInOrder() {
        var m = Machine(limits: .init(maxBytes: 1000, maxFrames: 10, stallAfter: .seconds(5)))
        #expect(Self.written(m.enqueue(1, bytes: 10, now: .zero)) == 1)
        #expect(Self.written(m.enqueue(2, bytes: 10, now: .zero)) == nil)
        #expect(Self.written(m.enqueue(3, bytes: 10, now: .zero)) == nil)
        #expect(m.queuedFrames == 2 && m.queuedBytes == 20)
        #expect(Self.written(m.writeCompleted(now: .seconds(1))) == 2)
        #expect(Self.written(m.writeCompleted(now: .seconds(1))) == 3)
        #expect(Self.written(m.writeCompleted(now: .seconds(1))) == nil)
        #expect(m.queuedFrames == 0 && m.queuedBytes == 0)
        // Idle again: the next frame goes straight to the writer.
        #expect(Self.written(m.enqueue(4, bytes: 10, now: .seconds(2))) == 4)
    }

    @Test func aPeerThatDoesNotReadOverflowsItsOwnQueueAndIsClosed() {
        var m = Machine(limits: .init(maxBytes: 1000, maxFrames: 3, stallAfter: .seconds(5)))
        _ = m.enqueue(0, bytes: 10, now: .zero)  // being written, never completes
        for i in 1...3 { if case .close = m.enqueue(i, bytes: 10, now: .zero) { Issue.record("closed at \(i)") } }
        guard case .close(.overflow(let frames, _)) = m.enqueue(4, bytes: 10, now: .zero) else {
            Issue.record("no close on the fourth queued frame")
            return
        }
        #expect(frames == 4)
        #expect(m.isClosed && m.queuedBytes == 0)
        // Closed: later frames are dropped quietly, and a late completion writes nothing.
        if case .write = m.enqueue(5, bytes: 10, now: .zero) { Issue.record("wrote after closing") }
        if case .write = m.writeCompleted(now: .seconds(1)) { Issue.record("wrote after closing") }

        var bytes = Machine(limits: .init(maxBytes: 100, maxFrames: 100, stallAfter: .seconds(5)))
        _ = bytes.enqueue(0, bytes: 60, now: .zero)
        #expect(Self.written(bytes.enqueue(1, bytes: 60, now: .zero)) == nil && !bytes.isClosed)
        guard case .close(.overflow) = bytes.enqueue(2, bytes: 60, now: .zero) else {
            Issue.record("no close past maxBytes")
            return
        }
    }

    @Test func aWritePendingPastTheStallLimitClosesTheConnection() {
        var m = Machine(limits: .init(maxBytes: 1000, maxFrames: 10, stallAfter: .seconds(5)))
        if case .close = m.check(now: .seconds(100)) { Issue.record("an idle link is not stalled") }
        _ = m.enqueue(1, bytes: 10, now: .seconds(10))
        if case .close = m.check(now: .seconds(14)) { Issue.record("closed before the stall limit") }
        // Completing resets the clock for the next frame.
        _ = m.enqueue(2, bytes: 10, now: .seconds(11))
        _ = m.writeCompleted(now: .seconds(14))
        if case .close = m.check(now: .seconds(18)) { Issue.record("the second write only started at 14 s") }
        guard case .close(.stalled(let d)) = m.check(now: .seconds(19)) else {
            Issue.record("no close at 5 s pending")
            return
        }
        #expect(d == .seconds(5))
    }

    @Test func finishingClosesOnceTheQueueIsWritten() {
        var m = Machine()
        _ = m.enqueue(1, bytes: 1, now: .zero)
        _ = m.enqueue(2, bytes: 1, now: .zero)
        if case .close = m.finish() { Issue.record("closed with frames still queued") }
        #expect(Self.written(m.writeCompleted(now: .zero)) == 2)
        guard case .close(.finished) = m.writeCompleted(now: .zero) else {
            Issue.record("not closed after the last frame")
            return
        }
        var idle = Machine()
        guard case .close(.finished) = idle.finish() else {
            Issue.record("an idle outbox did not close at once")
            return
        }
    }
}

/// One peer connection's outbound side: a bounded queue in front of a socket that may stop taking bytes.
///
/// Nothing that holds shared state awaits a socket write. The agent *enqueues* a frame and moves on; one writer per
/// connection takes frames off the queue and writes them, one at a time. A peer that stops reading (a hostile one, or
/// a half-open link after a partition) fills its own queue and nothing else: once the queue holds more than
/// `maxBytes` or `maxFrames`, or one write has been pending for `stallAfter`, the machine says close, and the
/// connection is closed and the peer judged by the usual liveness rules.
///
/// Pure (time comes in as `now`); the shell owns the socket and the writer.
public struct OutboundQueueStateMachine<Frame: Sendable>: Sendable {
    public struct Limits: Sendable, Equatable {
        public var maxBytes: Int
        public var maxFrames: Int
        public var stallAfter: Duration

        public init(maxBytes: Int = 4 << 20, maxFrames: Int = 512, stallAfter: Duration = .seconds(10)) {
            self.maxBytes = maxBytes
            self.maxFrames = maxFrames
            self.stallAfter = stallAfter
        }
    }

    /// Why the connection must close.
    public enum CloseReason: Sendable, Equatable, CustomStringConvertible {
        case overflow(frames: Int, bytes: Int)
        case stalled(Duration)
        case finished

        public var description: String {
            switch self {
            case .overflow(let frames, let bytes): "the peer does not read: \(frames) frames (\(bytes) bytes) queued for it"
            case .stalled(let d): "the peer does not read: one write pending for \(d)"
            case .finished: "the connection is done"
            }
        }
    }

    enum State: Sendable, Equatable {
        /// No write in progress.
        case idle
        /// The writer is writing a frame, since then.
        case writing(since: Duration)
        /// No more frames will be written.
        case closed(CloseReason)
    }

    /// What the shell must do.
    public enum Action: Sendable {
        /// Write this frame, then report ``writeCompleted(now:)``.
        case write(Frame)
        /// Close the connection (frames still queued are dropped).
        case close(CloseReason)
        /// Nothing now.
        case none
    }

    public let limits: Limits
    private(set) var state: State = .idle
    private var queue: [(frame: Frame, bytes: Int)] = []
    private var head = 0
    public private(set) var queuedBytes = 0
    public var queuedFrames: Int { queue.count - head }
    /// Set by ``finish()``: close once the queue is written.
    private var finishing = false

    public init(limits: Limits = .init()) {
        self.limits = limits
    }

    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// A frame to send. Never waits: the frame is queued, handed to the writer at once, or refused with a close.
    public mutating func enqueue(_ frame: Frame, bytes: Int, now: Duration) -> Action {
        switch state {
        case .closed:
            return .none
        case .idle:
            state = .writing(since: now)
            return .write(frame)
        case .writing:
            guard queuedFrames + 1 <= limits.maxFrames, queuedBytes + bytes <= limits.maxBytes else {
                let reason = CloseReason.overflow(frames: queuedFrames + 1, bytes: queuedBytes + bytes)
                close(reason)
                return .close(reason)
            }
            queue.append((frame, bytes))
            queuedBytes += bytes
            return .none
        }
    }

    /// The writer finished its frame: the next one, if any.
    public mutating func writeCompleted(now: Duration) -> Action {
        guard case .writing = state else { return .none }
        guard head < queue.count else {
            if finishing {
                close(.finished)
                return .close(.finished)
            }
            state = .idle
            return .none
        }
        let next = queue[head]
        head += 1
        queuedBytes -= next.bytes
        if head > 64, head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        state = .writing(since: now)
        return .write(next.frame)
    }

    /// Periodic check: a write pending for longer than `stallAfter` means the peer stopped reading.
    public mutating func check(now: Duration) -> Action {
        guard case .writing(let since) = state, now - since >= limits.stallAfter else { return .none }
        let reason = CloseReason.stalled(now - since)
        close(reason)
        return .close(reason)
    }

    /// No more frames will be enqueued: close as soon as what is queued is written.
    public mutating func finish() -> Action {
        finishing = true
        guard case .idle = state else { return .none }
        close(.finished)
        return .close(.finished)
    }

    /// The connection closed underneath (or the shell gave up on it).
    public mutating func closed() {
        if !isClosed { close(.finished) }
    }

    private mutating func close(_ reason: CloseReason) {
        state = .closed(reason)
        queue = []
        head = 0
        queuedBytes = 0
    }
}

import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A userspace TCP forwarder that makes one link slow and lossy, for the kernel here has no `netem`.
///
/// It listens on a loopback port and forwards every connection to `target`. Each direction of each connection is cut
/// into segments of ``Profile/segment`` bytes, and each segment is delivered:
/// - `latency` after it arrived (one way; the data is pipelined, not sent stop-and-wait);
/// - if the segment is "lost" (probability `loss`, drawn per segment), ``Profile/retransmit`` later still, the way TCP
///   delivers a lost segment after its retransmission timeout; everything behind it on that connection waits too;
/// - with a `bandwidth`, after the link (one per direction, shared by every connection through this proxy) has carried
///   the segments before it, and a lost segment keeps the link idle for the retransmission time as well. So a lossy
///   link's capacity is exactly ``Profile/effectiveBandwidth``, which is what the simulator is given for it.
///
/// Connection setup itself is not delayed (the proxy connects to `target` as soon as it accepts). The loss draws come
/// from a seeded generator, but the order in which connections draw depends on thread timing, so two runs are alike
/// rather than equal.
///
/// Memory is bounded: a direction's reader stops reading while ``queueLimit`` bytes wait for delivery, so a slow link
/// pushes back on the sender as a real one does.
public final class LinkProxy: @unchecked Sendable {
    public struct Profile: Sendable, Equatable, CustomStringConvertible {
        /// One way, seconds.
        public var latency: Double
        /// Fraction of segments lost (each costs one retransmission timeout).
        public var loss: Double
        /// Bytes per second in each direction, shared by every connection through the proxy; nil: no limit.
        public var bandwidth: Double?

        /// Bytes per segment (an Ethernet MSS with TCP timestamps).
        public static let segment = 1448
        /// Linux's minimum retransmission timeout.
        public static let retransmit = 0.2

        public init(latency: Double, loss: Double, bandwidth: Double?) {
            self.latency = latency
            self.loss = loss
            self.bandwidth = bandwidth
        }

        /// The link's capacity once the retransmission stalls are counted: on average each segment takes
        /// `segment / bandwidth + loss × retransmit`.
        public var effectiveBandwidth: Double? {
            bandwidth.map { Double(Self.segment) / (Double(Self.segment) / $0 + loss * Self.retransmit) }
        }

        /// The mean one-way delay of a message that fits one segment (a gossip frame).
        public var meanLatency: Double { latency + loss * Self.retransmit }

        public var description: String {
            "latency \(Int(latency * 1000)) ms, loss \(loss * 100) %, "
                + (bandwidth.map { "\(Int($0 / 1000)) kB/s" } ?? "no bandwidth limit")
        }
    }

    public let port: Int
    public let profile: Profile
    /// At most this many bytes wait for delivery in one direction of one connection.
    public let queueLimit = 256 * 1024

    private let listener: Int32
    private let target: (host: String, port: Int)
    private let lock = NSLock()
    private var random: SeededRandom
    /// Per direction (0: towards `target`, 1: back): when the link is free to start the next segment.
    private var linkFree: [Double] = [0, 0]
    private var stopped = false
    private var open: Set<Int32> = []
    private var threads: [Thread] = []
    private var counts = (connections: 0, segments: 0, lost: 0, bytes: Int64(0))

    /// Starts listening on a free loopback port.
    public init(to host: String, port targetPort: Int, profile: Profile, seed: UInt64) throws {
        target = (host, targetPort)
        self.profile = profile
        random = SeededRandom(state: seed)
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard RawSocket.bind(listener, "127.0.0.1", port: 0), Glibc.listen(listener, 128) == 0 else {
            close(listener)
            throw TestFailure("link proxy to \(host):\(targetPort): cannot listen on loopback: errno \(errno)")
        }
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = listener
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        spawn { [self] in acceptLoop() }
    }

    /// Connections accepted, segments forwarded, segments "lost", bytes forwarded.
    public var statistics: (connections: Int, segments: Int, lost: Int, bytes: Int64) { lock.withLock { counts } }

    /// Stops accepting, cuts every connection and waits (boundedly) for its threads.
    public func stop() {
        let fds: Set<Int32> = lock.withLock {
            stopped = true
            return open
        }
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, lock.withLock({ threads.contains { !$0.isFinished } }) { usleep(10_000) }
        close(listener)
    }

    // MARK: - Threads

    private var isStopped: Bool { lock.withLock { stopped } }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.stackSize = 256 * 1024
        lock.withLock { threads.append(thread) }
        thread.start()
    }

    private func acceptLoop() {
        while !isStopped {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard RawSocket.connect(server, target.host, port: target.port) else {
                close(server)
                close(client)
                continue
            }
            let connection = Connection(client: client, server: server)
            lock.withLock {
                counts.connections += 1
                open.formUnion([client, server])
            }
            // Both ends are closed once all four threads are done with them (never under a reader still polling).
            let finished: @Sendable () -> Void = { [self] in
                guard connection.finishOne() else { return }
                lock.withLock { open.subtract([client, server]) }
                close(client)
                close(server)
            }
            for direction in 0..<2 {
                let pipe = Pipe(direction: direction)
                let (from, to) = direction == 0 ? (client, server) : (server, client)
                spawn { [self] in
                    read(from, into: pipe)
                    finished()
                }
                spawn { [self] in
                    write(pipe, to: to, cutting: from)
                    finished()
                }
            }
        }
    }

    /// Both ends of one forwarded connection; closed once its four threads (a reader and a writer each way) are done.
    private final class Connection: @unchecked Sendable {
        let client: Int32
        let server: Int32
        private let lock = NSLock()
        private var finished = 0
        init(client: Int32, server: Int32) {
            self.client = client
            self.server = server
        }
        func finishOne() -> Bool { lock.withLock { finished += 1; return finished == 4 } }
    }

    /// One direction's segments waiting for their delivery time; `nil` data is the end of the stream.
    private final class Pipe: @unchecked Sendable {
        let direction: Int
        let condition = NSCondition()
        var queue: [(at: Double, data: [UInt8]?)] = []
        var head = 0
        var waiting = 0
        var lastDelivery = 0.0
        var broken = false
        init(direction: Int) { self.direction = direction }
    }

    private static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    /// When a segment of `length` bytes read now is delivered (see the type's description).
    private func deliveryTime(length: Int, direction: Int) -> Double {
        let now = Self.now()
        return lock.withLock {
            counts.segments += 1
            counts.bytes += Int64(length)
            var stall = 0.0
            if profile.loss > 0, random.next() < profile.loss {
                stall = Profile.retransmit
                counts.lost += 1
            }
            guard let bandwidth = profile.bandwidth else { return now + stall + profile.latency }
            let start = max(now, linkFree[direction]) + stall
            linkFree[direction] = start + Double(length) / bandwidth
            return linkFree[direction] + profile.latency
        }
    }

    private func read(_ fd: Int32, into pipe: Pipe) {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, 100)
            if isStopped { break }
            if ready == 0 { continue }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            pipe.condition.lock()
            var offset = 0
            while offset < n {
                let length = min(Profile.segment, n - offset)
                let at = max(deliveryTime(length: length, direction: pipe.direction), pipe.lastDelivery)
                pipe.lastDelivery = at
                pipe.queue.append((at, Array(buffer[offset..<offset + length])))
                pipe.waiting += length
                offset += length
            }
            pipe.condition.broadcast()
            // Back-pressure: stop reading while the link has a full queue.
            while pipe.waiting > queueLimit, !pipe.broken, !isStopped { _ = pipe.condition.wait(until: Date().addingTimeInterval(0.1)) }
            let broken = pipe.broken
            pipe.condition.unlock()
            if broken { break }
        }
        pipe.condition.lock()
        pipe.queue.append((max(Self.now(), pipe.lastDelivery), nil))
        pipe.condition.broadcast()
        pipe.condition.unlock()
    }

    private func write(_ pipe: Pipe, to fd: Int32, cutting from: Int32) {
        while true {
            pipe.condition.lock()
            while pipe.head == pipe.queue.count, !isStopped { _ = pipe.condition.wait(until: Date().addingTimeInterval(0.1)) }
            if pipe.head == pipe.queue.count {
                pipe.condition.unlock()
                return
            }
            let first = pipe.queue[pipe.head].at
            pipe.condition.unlock()
            let wait = first - Self.now()
            if wait > 0 { usleep(useconds_t(wait * 1e6)) }
            // Everything due by now goes out in one send.
            pipe.condition.lock()
            let now = Self.now()
            var data: [UInt8] = []
            var taken = 0
            var end = false
            while pipe.head + taken < pipe.queue.count, pipe.queue[pipe.head + taken].at <= now {
                guard let bytes = pipe.queue[pipe.head + taken].data else {
                    end = true
                    taken += 1
                    break
                }
                data += bytes
                taken += 1
            }
            pipe.condition.unlock()
            var sent = 0
            while sent < data.count {
                let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + sent, data.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                sent += n
            }
            pipe.condition.lock()
            pipe.head += taken
            pipe.waiting -= data.count
            if pipe.head > 4096 {
                pipe.queue.removeFirst(pipe.head)
                pipe.head = 0
            }
            if sent < data.count { pipe.broken = true }
            pipe.condition.broadcast()
            pipe.condition.unlock()
            if sent < data.count {
                // The receiving end is gone: stop the sending end too, so the reader ends and the connection closes.
                shutdown(from, Int32(SHUT_RDWR))
                shutdown(fd, Int32(SHUT_RDWR))
                return
            }
            if end {
                shutdown(fd, Int32(SHUT_WR))
                return
            }
        }
    }
}

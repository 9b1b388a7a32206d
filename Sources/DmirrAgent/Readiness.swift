import DmirrCore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// systemd's notification protocol (sd_notify(3)), spoken directly: one datagram per message to `$NOTIFY_SOCKET`
/// (a path, or an abstract socket when it starts with `@`). Outside systemd (no `NOTIFY_SOCKET`) it sends nothing.
public struct SystemdNotifier: Sendable {
    let socketPath: String?
    /// Half of `$WATCHDOG_USEC` when systemd asked this process for keep-alives (sd_watchdog_enabled(3)).
    public let watchdogInterval: Duration?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        socketPath = path
        let forUs = environment["WATCHDOG_PID"].map { Int32($0) == getpid() } ?? true
        if path != nil, forUs, let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            watchdogInterval = .microseconds(Int64(usec / 2))
        } else {
            watchdogInterval = nil
        }
    }

    public var isActive: Bool { socketPath != nil }

    /// Sends one notification ("READY=1", "STATUS=…", several separated by newlines). Best effort: a failure is
    /// returned for the log, never thrown (systemd going away must not stop a mirror).
    @discardableResult
    public func send(_ message: String) -> String? {
        guard let socketPath else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }  // abstract namespace
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { return "NOTIFY_SOCKET is too long" }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + (pathBytes.first == 0 ? 0 : 1))
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes, bytes.count, 0, $0, length) }
        }
        return sent == bytes.count ? nil : "sendto \(socketPath): \(String(cString: strerror(errno)))"
    }
}

/// Says when the agent is ready: the peer listener reports the address it bound, once.
public final class Readiness: Sendable {
    private let stream: AsyncStream<String>
    private let continuation: AsyncStream<String>.Continuation

    public init() {
        (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// The listener is bound; `address` is what members should dial.
    public func listening(at address: String) {
        continuation.yield(address)
        continuation.finish()
    }

    /// The advertised address, once the listener is bound (nil if it never was).
    func waitUntilListening() async -> String? {
        var iterator = stream.makeAsyncIterator()
        return await iterator.next()
    }
}

/// Once the listener is bound and the state loaded: records the address members should dial, and tells systemd
/// `READY=1`. Then, under systemd, `STATUS=` lines with the target and this mirror's state, `WATCHDOG=1` while the
/// agent's loops are alive (its actor answers and gossip has ticked recently, so a wedged agent misses them and is
/// restarted), and `STOPPING=1` when shutdown begins.
struct ReadinessService: Service {
    let readiness: Readiness
    let node: FleetNode
    let notifier: SystemdNotifier
    let gossipInterval: Duration
    let clock: any AgentClock
    let logger: Logger

    func run() async throws {
        // A service that returns would end the whole group: outside systemd this one waits for the shutdown.
        guard let address = await readiness.waitUntilListening() else { try? await gracefulShutdown(); return }
        await node.updateOwn { $0.peerAddress = address }
        let status = await statusLine()
        report(notifier.send("READY=1\nSTATUS=\(status)"))
        guard notifier.isActive else { try? await gracefulShutdown(); return }
        let notifier = self.notifier
        let logger = self.logger
        let clock = self.clock
        try await withGracefulShutdownHandler {
            var shown = status
            let every = min(notifier.watchdogInterval ?? .seconds(5), .seconds(5))
            while !Task.isCancelled, !Task.isShuttingDownGracefully {
                try? await clock.sleep(for: every)
                guard !Task.isShuttingDownGracefully else { break }
                // The actor answering is itself the check that it is not wedged; a gossip loop that stopped ticking
                // (three rounds and more) withholds the keep-alive too.
                let alive = await node.sinceLastTick().map { $0 < gossipInterval * 3 + .seconds(1) } ?? false
                if notifier.watchdogInterval != nil {
                    if alive {
                        report(notifier.send("WATCHDOG=1"))
                    } else {
                        logger.warning("withholding the watchdog keep-alive: the gossip loop has not ticked for three rounds")
                    }
                }
                let line = await statusLine()
                if line != shown {
                    shown = line
                    report(notifier.send("STATUS=\(line)"))
                }
            }
        } onGracefulShutdown: {
            if let problem = notifier.send("STOPPING=1") { logger.debug("systemd notification failed", metadata: ["error": "\(problem)"]) }
        }
    }

    private func statusLine() async -> String {
        let own = await node.own
        let members = await node.liveRecords().count + 1
        let target = own.targetToken.isEmpty ? "unknown" : String(own.targetToken.prefix(64))
        let state: String = switch own.syncState {
        case .inSync: "in sync"
        case .syncing: "syncing from \(own.source.isEmpty ? "?" : own.source)"
        case .waiting: "waiting"
        case .behind: "behind"
        case .failed: "failed: \(own.lastError.prefix(80))"
        }
        return "target \(target); \(state); \(members) live member(s)"
    }

    private func report(_ problem: String?) {
        if let problem { logger.debug("systemd notification failed", metadata: ["error": "\(problem)"]) }
    }
}

import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A Unix datagram socket standing in for systemd's `$NOTIFY_SOCKET`: it collects what the agent sends.
public final class NotifySocket: Sendable {
    public let path: String
    private let fd: Int32

    public init(path: String) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw NotifySocketError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw NotifySocketError("bind \(path): \(reason)")
        }
        self.fd = fd
    }

    /// The datagrams that arrive within `seconds` (real time).
    public func receive(for seconds: Double) -> [String] {
        var out: [String] = []
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(max(1, end.timeIntervalSinceNow * 1000))) == 1 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { out.append(String(decoding: buffer[..<n], as: UTF8.self)) }
        }
        return out
    }

    /// Waits (at most `seconds`) for the next datagram, without blocking a thread of the concurrency pool (the
    /// code under test may need it to send).
    public func next(within seconds: Double) async -> String? {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if let datagram = take() { return datagram }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return take()
    }

    /// Every datagram waiting now.
    public func pending() -> [String] {
        var out: [String] = []
        while let datagram = take() { out.append(datagram) }
        return out
    }

    private func take() -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 0) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : nil
    }

    deinit {
        close(fd)
        unlink(path)
    }
}

public struct NotifySocketError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

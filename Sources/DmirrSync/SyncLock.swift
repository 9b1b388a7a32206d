import DmirrCore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The one-run-at-a-time lock: `flock(2)` on a file in the state directory (never `ps | grep`).
///
/// The kernel releases it when the process dies, however it dies, so a `kill -9` never leaves a stale lock. The file
/// holds the holder's PID so a second run can say who it is waiting for.
public final class SyncLock: Sendable {
    public static let fileName = "sync.lock"
    private let fd: Int32
    public let path: String

    /// Takes the lock or throws ``SyncError/Code/locked`` naming the holder. Never waits.
    public init(stateDirectory: String) throws(SyncError) {
        path = stateDirectory + "/" + Self.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw SyncError(.setup, "cannot open the lock file \(path): \(String(cString: strerror(errno))); [state] dir must be writable")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            let holder = Self.readPID(fd: fd)
            close(fd)
            guard err == EWOULDBLOCK else {
                throw SyncError(.setup, "cannot lock \(path): \(String(cString: strerror(err)))")
            }
            var message = "another dmirr run holds the lock \(path)"
            if let holder {
                message += kill(holder, 0) == 0 || errno == EPERM
                    ? " (pid \(holder)); retry when it has finished"
                    : " (it was taken by pid \(holder), which has exited; a child it left behind still holds it: see `fuser \(path)`)"
            }
            throw SyncError(.locked, message)
        }
        self.fd = fd
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// Whether a run holds the lock now. Takes nothing and writes nothing (for readers such as `dmirr history`); no
    /// lock file means no run has ever held it.
    public static func isHeld(stateDirectory: String) -> Bool {
        let fd = open(stateDirectory + "/" + fileName, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return errno == EWOULDBLOCK }
        _ = flock(fd, LOCK_UN)
        return false
    }

    private static func readPID(fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buffer, 31, 0)
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    deinit {
        _ = flock(fd, LOCK_UN)
        close(fd)
    }
}

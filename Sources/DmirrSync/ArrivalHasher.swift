import Crypto
import DmirrStore
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Hashes files while rsync is still transferring others, so that the manifest step after the transfer finds them in
/// the digest cache: at a mirror's usual bandwidth the transfer leaves a core idle, and a first sync of a large tree
/// then pays little for its manifest.
///
/// rsync names files (its itemized output) before it has received them, often long before, and receives them in that
/// order. So the hasher keeps the names in order and hashes the first one as soon as it exists at its path (rsync
/// renames a finished file into place, times set); until then it checks again every 20 ms. Once rsync is done (the
/// stream ends) each remaining name gets one try. What it records is read from the open descriptor (size, mtime,
/// inode), so a file replaced since, or renamed into place later (`--delay-updates`), is caught by the manifest step's
/// own check and hashed again there.
enum ArrivalHasher {
    /// Hashes the paths (relative to `root`) that arrive on `paths`; returns what it hashed once the stream has ended.
    static func consume(_ paths: AsyncStream<String>, root: String) async -> [String: StateStore.CachedDigest] {
        let queue = Names()
        return await withTaskGroup(of: [String: StateStore.CachedDigest].self) { group in
            group.addTask {
                for await path in paths { queue.state.withLock { $0.names.append(path) } }
                queue.state.withLock { $0.ended = true }
                return [:]
            }
            group.addTask {
                var out: [String: StateStore.CachedDigest] = [:]
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                var next = 0
                // A cancelled sync (shutdown, a newer token) does not stay to hash what it received.
                while !Task.isCancelled {
                    let (name, ended): (String?, Bool) = queue.state.withLock { q in (next < q.names.count ? q.names[next] : nil, q.ended) }
                    guard let name else {
                        if ended { break }
                        try? await Task.sleep(for: .milliseconds(20))
                        continue
                    }
                    if let digest = hash(root + "/" + name, buffer: &buffer) {
                        out[name] = digest
                    } else if !ended {
                        try? await Task.sleep(for: .milliseconds(20))
                        continue
                    }
                    next += 1
                }
                return out
            }
            var result: [String: StateStore.CachedDigest] = [:]
            for await part in group { result.merge(part) { a, _ in a } }
            return result
        }
    }

    /// The names rsync gave, in order, and whether it is done.
    final class Names: Sendable {
        let state = Mutex<(names: [String], ended: Bool)>(([], false))
    }

    /// The file's SHA-256 with what identified it when read; nil when it is not a regular file or cannot be read.
    static func hash(_ path: String, buffer: inout [UInt8]) -> StateStore.CachedDigest? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        var hasher = SHA256()
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { return nil }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
        let hex = hasher.finalize().map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        return StateStore.CachedDigest(
            size: Int64(st.st_size), mtimeNanos: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
            inode: UInt64(st.st_ino), sha256: hex)
    }
}

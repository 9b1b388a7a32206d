import DmirrCore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The pipeline's own file operations: atomic token writes, leftovers of killed runs, snapshot layout.
enum TreeFiles {
    /// Writes `bytes` to `path` so that readers see the old file or the new one, never a part:
    /// temp file in the same directory, fsync, rename, fsync the directory. `like` names a file whose permission bits
    /// and modification time the new file takes (the source's token file, so the mirror matches upstream exactly).
    static func writeAtomically(_ bytes: [UInt8], to path: String, like template: String? = nil) throws(SyncError) {
        let directory = (path as NSString).deletingLastPathComponent
        let temp = directory + "/." + (path as NSString).lastPathComponent + ".dmirr-new"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ioError("create", temp) }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = ioError("write", temp)
                close(fd)
                unlink(temp)
                throw e
            }
            written += n
        }
        var st = stat()
        if let template, stat(template, &st) == 0 {
            _ = fchmod(fd, st.st_mode & 0o7777)
            var times = [st.st_atim, st.st_mtim]
            _ = futimens(fd, &times)
        }
        guard fsync(fd) == 0 else {
            let e = ioError("fsync", temp)
            close(fd)
            unlink(temp)
            throw e
        }
        close(fd)
        guard rename(temp, path) == 0 else {
            let e = ioError("rename into place", path)
            unlink(temp)
            throw e
        }
        try fsyncDirectory(directory)
    }

    static func fsyncDirectory(_ directory: String) throws(SyncError) {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw ioError("open directory", directory) }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw ioError("fsync directory", directory) }
    }

    static func ioError(_ what: String, _ path: String) -> SyncError {
        SyncError(.io, "cannot \(what) \(path): \(String(cString: strerror(errno)))")
    }

    /// Reads a whole small file; nil when it does not exist.
    static func readIfPresent(_ path: String) throws(SyncError) -> [UInt8]? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else { throw ioError("read", path) }
        return Array(data)
    }

    /// Makes `path` an empty directory, creating it (and its parents) if needed. Returns how many entries it removed.
    @discardableResult
    static func emptyDirectory(_ path: String) throws(SyncError) -> Int {
        let fm = FileManager.default
        var removed = 0
        do {
            if fm.fileExists(atPath: path) {
                for name in try fm.contentsOfDirectory(atPath: path) {
                    try fm.removeItem(atPath: path + "/" + name)
                    removed += 1
                }
            } else {
                try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
            }
        } catch {
            throw SyncError(.io, "cannot clean \(path)", underlying: error)
        }
        return removed
    }

    /// Removes every rsync `--delay-updates` holding directory (`.~tmp~`) under `root`: what a killed stage 2 leaves.
    /// Returns the removed paths, relative to `root`.
    static func removeDelayDirectories(under root: String) throws(SyncError) -> [String] {
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: root) else { return [] }
        var found: [String] = []
        while let relative = walker.nextObject() as? String {
            let name = (relative as NSString).lastPathComponent
            if name == RsyncCommand.delayDirName || name == RsyncCommand.tempDirName {
                walker.skipDescendants()
                if name == RsyncCommand.delayDirName { found.append(relative) }
            }
        }
        for relative in found {
            do { try fm.removeItem(atPath: root + "/" + relative) } catch {
                throw SyncError(.io, "cannot remove the leftover \(root)/\(relative)", underlying: error)
            }
        }
        return found
    }
}

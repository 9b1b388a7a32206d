import Crypto
import DmirrCore
import DmirrStore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Walks a tree and lists it as a ``TreeManifest``, hashing only files the digest cache does not already know by
/// path, size, mtime and inode (rsync writes a changed file as a new inode, so a sync rehashes what it replaced).
///
/// Left out: the manifest itself, rsync's scratch directory (`.dmirr-tmp/`) and `--delay-updates` holding
/// directories (`.~tmp~/`). The token file is listed from the token as fetched (its bytes, mode and mtime), because it
/// is written into the tree last, after the manifest.
struct ManifestBuilder {
    let root: String
    /// The token file's path relative to the root (`[upstream] token_file`).
    let tokenFile: String
    /// Where the fetched token file is: its content, mode and mtime go into the manifest.
    let tokenSource: String
    let cache: [String: StateStore.CachedDigest]
    /// Paths (relative to the root) that stay in the tree only until the publish: what the source no longer has, in
    /// place. Left out, with everything under them, so the manifest describes the tree as it is once they are gone.
    var leaving: Set<String> = []

    struct Result {
        var manifest: TreeManifest
        /// What the cache should hold now: every file of the tree.
        var digests: [String: StateStore.CachedDigest]
        var hashedFiles = 0
        var hashedBytes: Int64 = 0
        var cachedFiles = 0
    }

    func build(token: String) throws(SyncError) -> Result {
        var result = Result(manifest: TreeManifest(token: token, entries: []), digests: [:])
        var entries: [TreeManifest.Entry] = []
        try walk(relative: "", into: &entries, result: &result)
        var st = stat()
        guard lstat(tokenSource, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw TreeFiles.ioError("stat the fetched token file", tokenSource)
        }
        let digest: String
        do { digest = try FileDigest.hex(of: tokenSource, type: "sha256")! } catch {
            throw SyncError(.io, "cannot read the fetched token file \(tokenSource)", underlying: error)
        }
        entries.removeAll { $0.path == tokenFile }
        entries.append(.init(path: tokenFile, kind: .file, mode: UInt32(st.st_mode & 0o7777), size: Int64(st.st_size),
                             mtime: Int64(st.st_mtim.tv_sec), sha256: digest))
        result.manifest = TreeManifest(token: token, entries: entries)
        return result
    }

    private func walk(relative: String, into entries: inout [TreeManifest.Entry], result: inout Result) throws(SyncError) {
        let directory = relative.isEmpty ? root : root + "/" + relative
        guard let dir = opendir(directory) else { throw TreeFiles.ioError("open the directory", directory) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." || name == RsyncCommand.delayDirName { continue }
            if relative.isEmpty, name == TreeManifest.fileName || name == RsyncCommand.tempDirName { continue }
            names.append(name)
        }
        closedir(dir)
        for name in names {
            let path = relative.isEmpty ? name : relative + "/" + name
            if leaving.contains(path) { continue }
            let full = root + "/" + path
            var st = stat()
            guard lstat(full, &st) == 0 else { throw TreeFiles.ioError("stat", full) }
            let mode = UInt32(st.st_mode & 0o7777)
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                entries.append(.init(path: path, kind: .directory, mode: mode))
                try walk(relative: path, into: &entries, result: &result)
            case S_IFLNK:
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: full) else {
                    throw TreeFiles.ioError("read the symlink", full)
                }
                entries.append(.init(path: path, kind: .symlink, mode: 0o777, target: target))
            case S_IFREG:
                if path == tokenFile { continue }
                let key = StateStore.CachedDigest(
                    size: Int64(st.st_size), mtimeNanos: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                    inode: UInt64(st.st_ino), sha256: "")
                var known = cache[path]
                if let k = known, k.size != key.size || k.mtimeNanos != key.mtimeNanos || k.inode != key.inode { known = nil }
                let digest: String
                if let known {
                    digest = known.sha256
                    result.cachedFiles += 1
                } else {
                    do { digest = try FileDigest.hex(of: full, type: "sha256")! } catch {
                        throw SyncError(.io, "cannot hash \(full)", underlying: error)
                    }
                    result.hashedFiles += 1
                    result.hashedBytes += key.size
                }
                var stored = key
                stored.sha256 = digest
                result.digests[path] = stored
                entries.append(.init(path: path, kind: .file, mode: mode, size: key.size, mtime: Int64(st.st_mtim.tv_sec), sha256: digest))
            default:
                // Devices, sockets and FIFOs have no place in a mirror: listed as what they are not, so they mismatch.
                entries.append(.init(path: path, kind: .file, mode: mode, size: -1, sha256: String(repeating: "0", count: 64)))
            }
        }
    }
}

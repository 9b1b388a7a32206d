import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Compares two trees the way an operator means "the mirror equals upstream": same paths, types, bytes, permission
/// bits, mtimes, symlink targets and hard-link structure.
public enum TreeComparison {
    struct Entry: Equatable {
        var type: mode_t
        var mode: mode_t
        var size: Int
        var mtime: Int
        var linkTarget: String?
        var content: Data?
        var inodeGroup: Int  // index of the first path sharing this inode, for regular files with nlink > 1
    }

    /// Human-readable differences; empty when the trees are equal. Directory mtimes are not compared (they change as
    /// rsync works in them). Paths in `ignoring` (relative) are skipped.
    /// dmirr's manifest (`.dmirr-manifest`) is never compared: upstream has none, a mirror writes its own.
    public static func differences(_ a: String, _ b: String, ignoring: Set<String> = []) -> [String] {
        let left = snapshot(a, ignoring: ignoring.union([".dmirr-manifest"]))
        let right = snapshot(b, ignoring: ignoring.union([".dmirr-manifest"]))
        var out: [String] = []
        for path in Set(left.keys).union(right.keys).sorted() {
            guard let l = left[path] else { out.append("only in \(b): \(path)"); continue }
            guard let r = right[path] else { out.append("only in \(a): \(path)"); continue }
            if l.type != r.type { out.append("\(path): type differs"); continue }
            if l.mode != r.mode { out.append("\(path): mode \(String(l.mode, radix: 8)) vs \(String(r.mode, radix: 8))") }
            if l.type == S_IFREG {
                if l.size != r.size { out.append("\(path): size \(l.size) vs \(r.size)") }
                if l.content != r.content { out.append("\(path): content differs") }
                if l.mtime != r.mtime { out.append("\(path): mtime \(l.mtime) vs \(r.mtime)") }
                if l.inodeGroup >= 0 || r.inodeGroup >= 0 {
                    if l.inodeGroup != r.inodeGroup { out.append("\(path): hard links differ") }
                }
            }
            if l.linkTarget != r.linkTarget { out.append("\(path): symlink target differs") }
        }
        return out
    }

    static func snapshot(_ root: String, ignoring: Set<String>) -> [String: Entry] {
        var entries: [String: Entry] = [:]
        var inodes: [UInt64: Int] = [:]
        var order = 0
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [:] }
        var paths: [String] = []
        while let p = walker.nextObject() as? String {
            if ignoring.contains(p) { walker.skipDescendants(); continue }
            paths.append(p)
        }
        // Hard-link structure within this tree only: links to files outside it (snapshot mode's --link-dest) do not count.
        var stats: [(String, stat)] = []
        var shared: [UInt64: Int] = [:]
        for p in paths.sorted() {
            var st = stat()
            guard lstat(root + "/" + p, &st) == 0 else { continue }
            stats.append((p, st))
            if st.st_mode & S_IFMT == S_IFREG { shared[UInt64(st.st_ino), default: 0] += 1 }
        }
        for (p, st) in stats {
            let type = st.st_mode & S_IFMT
            var group = -1
            if type == S_IFREG, shared[UInt64(st.st_ino), default: 0] > 1 {
                if let g = inodes[UInt64(st.st_ino)] { group = g } else { inodes[UInt64(st.st_ino)] = order; group = order }
            }
            order += 1
            entries[p] = Entry(
                type: type, mode: st.st_mode & 0o7777, size: Int(st.st_size), mtime: Int(st.st_mtim.tv_sec),
                linkTarget: type == S_IFLNK ? (try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + p)) : nil,
                content: type == S_IFREG ? FileManager.default.contents(atPath: root + "/" + p) : nil,
                inodeGroup: group)
        }
        return entries
    }
}

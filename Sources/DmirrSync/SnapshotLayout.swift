import DmirrCore
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where snapshot mode keeps its trees (`publish = "snapshot"`).
///
/// For `path = /srv/pub/ius` (a symlink dmirr manages):
/// ```
/// /srv/pub/.dmirr/ius/staging/            the next snapshot being filled (resumed after a kill)
/// /srv/pub/.dmirr/ius/snapshots/000007-<token>/   complete, verified snapshots; the newest K are kept
/// /srv/pub/ius -> .dmirr/ius/snapshots/000007-<token>   swapped with one rename(2)
/// ```
/// Everything lives beside `path`, on its filesystem, so hard links and the rename work.
struct SnapshotLayout {
    let path: String
    let parent: String
    let name: String
    let root: String

    init(path: String) {
        self.path = path
        parent = (path as NSString).deletingLastPathComponent
        name = (path as NSString).lastPathComponent
        root = parent + "/.dmirr/" + name
    }

    var staging: String { root + "/staging" }
    var snapshots: String { root + "/snapshots" }
    /// The temporary symlink renamed over `path`.
    var swapLink: String { parent + "/." + name + ".dmirr-swap" }

    /// Checks `path` is a symlink or absent and creates the directories. Throws `.setup` with what to do otherwise.
    func prepare() throws(SyncError) {
        var st = stat()
        if lstat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFLNK {
            throw SyncError(
                .setup,
                "mirror.path \(path) is a real directory, but publish = \"snapshot\" needs it to be a symlink that dmirr "
                    + "swaps. Move the directory aside (for example to \(path).old) and run again; dmirr will hard-link "
                    + "unchanged files only from its own snapshots, so sync once with publish = \"in-place\" if you want to keep using it.")
        }
        do {
            try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        } catch {
            throw SyncError(.setup, "cannot create the snapshot directory \(snapshots)", underlying: error)
        }
    }

    /// The absolute path of the live snapshot, or nil when `path` does not exist yet.
    func liveSnapshot() -> String? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) else { return nil }
        return target.hasPrefix("/") ? target : parent + "/" + target
    }

    /// Snapshot directory names, oldest first (they start with a zero-padded sequence number).
    func snapshotNames() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? [])
            .filter { $0.first?.isNumber == true }.sorted()
    }

    /// The name for the next snapshot of `token`.
    func nextName(for token: Token) -> String {
        let last = snapshotNames().last.flatMap { Int($0.prefix { $0.isNumber }) } ?? 0
        let sequence = String(last + 1)
        return String(repeating: "0", count: max(0, 6 - sequence.count)) + sequence + "-" + token.directoryName
    }

    /// Turns the staging directory into snapshot `name` and points `path` at it, atomically.
    func promoteStaging(to name: String) throws(SyncError) {
        let target = snapshots + "/" + name
        guard rename(staging, target) == 0 else { throw TreeFiles.ioError("rename the verified staging tree to", target) }
        try TreeFiles.fsyncDirectory(snapshots)
        unlink(swapLink)
        let relative = ".dmirr/" + self.name + "/snapshots/" + name
        guard symlink(relative, swapLink) == 0 else { throw TreeFiles.ioError("create the symlink", swapLink) }
        guard rename(swapLink, path) == 0 else { throw TreeFiles.ioError("swap the symlink", path) }
        try TreeFiles.fsyncDirectory(parent)
    }

    /// Deletes the oldest snapshots beyond `keep`, never the live one. Returns the names removed.
    func prune(keep: Int) throws(SyncError) -> [String] {
        let live = liveSnapshot().map { ($0 as NSString).lastPathComponent }
        let names = snapshotNames()
        var removed: [String] = []
        for name in names.dropLast(keep) where name != live {
            do { try FileManager.default.removeItem(atPath: snapshots + "/" + name) } catch {
                throw SyncError(.io, "cannot remove the old snapshot \(snapshots)/\(name)", underlying: error)
            }
            removed.append(name)
        }
        return removed
    }
}

import Foundation
import Logging

#if canImport(Glibc)
    import Glibc
#endif

/// The served tree's metadata, kept aside while an in-place run changes it.
///
/// In place, stage 2 swaps the source's new `repodata/` into the served tree before verification can judge it; a
/// push that fails verification (metadata naming a package the source lacks, a truncated `primary.xml.gz`) would
/// otherwise stay served under the old token until the next good push. So before its first transfer an in-place run
/// keeps a copy (hard links; copies across filesystems) of every file of every `repodata/` directory in
/// `<state>/held-metadata/`, and a run that does not publish puts them back: the tree's metadata is again the one
/// `CURRENT` names. The copy is dropped just before the token is published, so a run killed at any point leaves one
/// for the next start to put back (``restore(logger:)`` then runs first). The source's new files that are not part of
/// the old metadata stay (they are referenced by nothing served, and the next run's listing removes what the source
/// no longer has), except a `repomd.xml` the old tree did not have (a repository that push added), which goes.
struct HeldMetadata {
    let root: String
    let hold: String

    init(root: String, stateDirectory: String) {
        self.root = root
        self.hold = stateDirectory + "/held-metadata"
    }

    var exists: Bool { FileManager.default.fileExists(atPath: hold) }

    /// Keeps the tree's metadata as it is now, replacing an older copy.
    func save() throws(SyncError) {
        try discard()
        do { try FileManager.default.createDirectory(atPath: hold, withIntermediateDirectories: true) } catch {
            throw TreeFiles.ioError("cannot create", hold)
        }
        for repomd in RepoVerifier.findRepomd(root: root) {
            let dir = String(repomd.dropLast("/repomd.xml".count))
            // Only real directories of the tree: through a symlink the source planted, a copy or a put-back would reach
            // outside it.
            guard Self.isRealDirectory(dir, under: root) else { continue }
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: root + "/" + dir) } catch {
                throw TreeFiles.ioError("cannot list", root + "/" + dir)
            }
            do { try FileManager.default.createDirectory(atPath: hold + "/" + dir, withIntermediateDirectories: true) } catch {
                throw TreeFiles.ioError("cannot create", hold + "/" + dir)
            }
            for name in names {
                var st = stat()
                guard lstat(root + "/" + dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
                try Self.place(root + "/" + dir + "/" + name, at: hold + "/" + dir + "/" + name)
            }
        }
        // The marker that the copy is complete: a copy without it (killed while saving) is not restored from.
        try TreeFiles.writeAtomically(Array("complete\n".utf8), to: hold + "/.complete")
    }

    /// Puts the kept metadata back over the tree's (each file by rename, every `repomd.xml` last), removes a
    /// `repomd.xml` the kept tree did not have, then drops the copy. Returns how many files it put back.
    @discardableResult
    func restore(logger: Logger) throws(SyncError) -> Int {
        guard exists else { return 0 }
        guard FileManager.default.fileExists(atPath: hold + "/.complete") else {
            // Killed while saving: the tree's metadata was not touched yet (the transfer starts after the copy).
            try discard()
            return 0
        }
        var files: [String] = []
        if let walker = FileManager.default.enumerator(atPath: hold) {
            while let relative = walker.nextObject() as? String {
                var st = stat()
                if relative != ".complete", lstat(hold + "/" + relative, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { files.append(relative) }
            }
        }
        // Data files first, the index that names them last: a client never reads an old index naming a file not back yet.
        let isIndex = { (path: String) in path.hasSuffix("/repomd.xml") || path.hasSuffix("/repomd.xml.asc") }
        let ordered = files.filter { !isIndex($0) } + files.filter(isIndex).sorted { $0.hasSuffix(".asc") && !$1.hasSuffix(".asc") }
        var restored = 0
        for relative in ordered {
            let live = root + "/" + relative
            // Only what the run changed is written back: a run that failed before its metadata stage (a full disk, a busy
            // source) leaves the tree exactly as it was, and writes nothing to a filesystem that may have no room.
            guard !Self.sameContent(hold + "/" + relative, live) else { continue }
            let temp = (live as NSString).deletingLastPathComponent + "/.dmirr-restore-" + (live as NSString).lastPathComponent
            unlink(temp)
            try Self.place(hold + "/" + relative, at: temp)
            guard rename(temp, live) == 0 else {
                unlink(temp)
                throw TreeFiles.ioError("cannot put back", live)
            }
            restored += 1
        }
        let kept = Set(files)
        for repomd in RepoVerifier.findRepomd(root: root)
        where !kept.contains(repomd) && Self.isRealDirectory(String(repomd.dropLast("/repomd.xml".count)), under: root) {
            // A repository the unpublished push added: not served until a push that verifies.
            if unlink(root + "/" + repomd) == 0 { restored += 1 }
        }
        for dir in Set(ordered.map { ($0 as NSString).deletingLastPathComponent }) { try? TreeFiles.fsyncDirectory(root + "/" + dir) }
        try discard()
        if restored > 0 {
            logger.notice("put the served metadata back: the run did not publish, so the tree's repodata is again the one CURRENT names",
                          metadata: ["sync.restored": "\(restored)"])
        }
        return restored
    }

    /// Drops the copy (the run published, or there is nothing to restore).
    func discard() throws(SyncError) {
        guard exists else { return }
        do { try FileManager.default.removeItem(atPath: hold) } catch { throw TreeFiles.ioError("cannot remove", hold) }
    }

    /// A hard link, or, where the two paths are on different filesystems, a copy with the source's mode and mtime
    /// (so that rsync's quick check and ``sameContent(_:_:)`` see the file as it was).
    private static func place(_ source: String, at destination: String) throws(SyncError) {
        if link(source, destination) == 0 { return }
        guard errno == EXDEV || errno == EPERM else { throw TreeFiles.ioError("cannot link", destination) }
        do {
            try FileManager.default.copyItem(atPath: source, toPath: destination)
            let attributes = try FileManager.default.attributesOfItem(atPath: source)
            try FileManager.default.setAttributes(
                [.modificationDate: attributes[.modificationDate] as Any, .posixPermissions: attributes[.posixPermissions] as Any],
                ofItemAtPath: destination)
        } catch {
            unlink(destination)
            throw TreeFiles.ioError("cannot copy", destination)
        }
    }

    /// Whether every component of `relative` under `root` is a directory, not a symlink.
    static func isRealDirectory(_ relative: String, under root: String) -> Bool {
        var path = root
        for part in relative.split(separator: "/") {
            path += "/" + part
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
        }
        return true
    }

    /// Whether the live file is still the kept one: the same inode, or the same size, mtime and bytes.
    private static func sameContent(_ kept: String, _ live: String) -> Bool {
        var sa = stat()
        var sb = stat()
        guard stat(kept, &sa) == 0, stat(live, &sb) == 0 else { return false }
        if sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino { return true }
        guard sa.st_size == sb.st_size, sa.st_mtim.tv_sec == sb.st_mtim.tv_sec, sa.st_mtim.tv_nsec == sb.st_mtim.tv_nsec else { return false }
        return FileManager.default.contentsEqual(atPath: kept, andPath: live)
    }
}

import Foundation
import GRDB

/// This mirror's persistent state: a SQLite file (WAL) in `[state] dir`. The only code that touches GRDB.
public final class StateStore: Sendable {
    /// The database file's name inside the state directory.
    public static let fileName = "state.sqlite"

    private let pool: DatabasePool
    public let path: String

    /// How long a statement waits for a lock another process holds before it fails with ``StoreError/Code/locked``.
    public static let busySeconds: TimeInterval = 10

    /// Opens (creating if needed) the state database in `directory` and applies pending migrations.
    ///
    /// - Parameter check: run SQLite's `quick_check` first. `dmirr sync` and the agent do, when they start: a damaged
    ///   file is refused before the tree is touched, instead of failing a write after a transfer (milliseconds for a
    ///   state of a few MB; it reads every page once).
    public init(directory: String, check: Bool = false) throws(StoreError) {
        path = directory + "/" + Self.fileName
        let pool: DatabasePool
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(Self.busySeconds)
            pool = try DatabasePool(path: path, configuration: configuration)
            if check {
                let found = try pool.read { try String.fetchAll($0, sql: "PRAGMA quick_check(5)") }
                if found != ["ok"] {
                    let detail = found.joined(separator: "\n").split(whereSeparator: \.isNewline).prefix(3).joined(separator: "; ")
                    throw StoreError.damaged(path, detail: "quick_check: " + detail)
                }
            }
            try Self.migrator.migrate(pool)
        } catch {
            throw StoreError.classify(error, path: path, what: "open the state database", fallback: .cannotOpen)
        }
        self.pool = pool
    }

    /// Append-only, named migrations. Never edit one that has shipped; add a new one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: sync runs and the published token") { db in
            try db.create(table: "sync_run") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("token", .text)
                t.column("source", .text).notNull()
                t.column("started_at", .datetime).notNull()
                t.column("finished_at", .datetime)
                t.column("outcome", .text).notNull()
                    .check(sql: "outcome IN ('running','synced','up-to-date','busy','verify-failed','failed','interrupted','cancelled')")
                t.column("rsync_exit_code", .integer)
                t.column("bytes", .integer).notNull().defaults(to: 0).check { $0 >= 0 }
                t.column("files", .integer).notNull().defaults(to: 0).check { $0 >= 0 }
                t.column("error", .text)
            }
            try db.create(index: "sync_run_started_at", on: "sync_run", columns: ["started_at"])
            // One row: what this mirror claims to have. Written in the same breath as the token file.
            try db.create(table: "published_token") { t in
                t.column("id", .integer).primaryKey().check { $0 == 1 }
                t.column("token", .text).notNull()
                t.column("published_at", .datetime).notNull()
                t.column("source", .text).notNull()
            }
        }
        migrator.registerMigration("v2: fleet members") { db in
            // The newest verified signed record of each member, so a restarted agent rejoins with what it knew.
            try db.create(table: "member") { t in
                t.primaryKey("node", .text)
                t.column("signed_record", .blob).notNull()
                t.column("generation", .integer).notNull()
                t.column("heartbeat", .integer).notNull()
                t.column("updated_at", .datetime).notNull()
            }
        }
        migrator.registerMigration("v3: manifests, the digest cache, unchecked trees") { db in
            // The root hash of the manifest written with the published tree (nil for trees published before manifests).
            try db.alter(table: "published_token") { t in t.add(column: "manifest_root", .text) }
            // SHA-256 of each file of the tree as last hashed, keyed by what tells a changed file: a sync hashes only
            // what rsync replaced (a new file gets a new inode) or what changed size or mtime.
            try db.create(table: "file_digest") { t in
                t.primaryKey("path", .text)
                t.column("size", .integer).notNull()
                t.column("mtime_ns", .integer).notNull()
                t.column("inode", .integer).notNull()
                t.column("sha256", .text).notNull()
            }
            // One row while the live tree holds changes no verified publish has covered: a run that failed
            // verification or died after its transfer touched the tree. The next run checks the tree again instead of
            // answering "up to date".
            try db.create(table: "tree_unchecked") { t in
                t.column("id", .integer).primaryKey().check { $0 == 1 }
                t.column("reason", .text).notNull()
                t.column("since", .datetime).notNull()
            }
        }
        migrator.registerMigration("v4: the fleet's revocation list") { db in
            // The newest CA-signed revocation list seen (from `[tls] crl` or a peer), so a restarted agent keeps
            // refusing revoked members even before the file or a peer tells it again.
            try db.create(table: "revocation_list") { t in
                t.column("id", .integer).primaryKey().check { $0 == 1 }
                t.column("number", .integer).notNull()
                t.column("signed", .blob).notNull()
            }
        }
        migrator.registerMigration("v5: deletions pending after a publish") { db in
            // In place, files the source no longer has are removed only after the new token is published (the tree
            // always holds every file of the token it names). The list is recorded with the publish, in the same
            // transaction, so a run killed before it finished removing them leaves the rest to the next start.
            try db.create(table: "pending_deletion") { t in
                t.primaryKey("path", .text)
                t.column("token", .text).notNull()
            }
        }
        return migrator
    }

    /// Keeps a revocation list if it is newer than the one stored (numbers only grow).
    public func saveRevocations(number: UInt64, signed: [UInt8]) throws(StoreError) {
        try write("save the revocation list") { db in
            try db.execute(
                sql: """
                    INSERT INTO revocation_list (id, number, signed) VALUES (1, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET number = excluded.number, signed = excluded.signed
                    WHERE excluded.number > revocation_list.number
                    """, arguments: [Int64(bitPattern: number), Data(signed)])
        }
    }

    /// The stored revocation list (signed bytes), if any.
    public func revocations() throws(StoreError) -> [UInt8]? {
        try read("read the revocation list") { db in
            try Row.fetchOne(db, sql: "SELECT signed FROM revocation_list WHERE id = 1").map { Array($0["signed"] as Data) }
        }
    }

    /// Forgets members (revoked, or expired while down).
    public func deleteMembers(_ nodes: [String]) throws(StoreError) {
        guard !nodes.isEmpty else { return }
        try write("forget member records") { db in
            for node in nodes { try db.execute(sql: "DELETE FROM member WHERE node = ?", arguments: [node]) }
        }
    }

    /// One stored member record: the signed bytes as received, with its version.
    public struct StoredMember: Sendable, Equatable {
        public var node: String
        public var signedRecord: [UInt8]
        public var generation: UInt64
        public var heartbeat: UInt64

        public init(node: String, signedRecord: [UInt8], generation: UInt64, heartbeat: UInt64) {
            self.node = node
            self.signedRecord = signedRecord
            self.generation = generation
            self.heartbeat = heartbeat
        }
    }

    /// Saves member records, keeping for each node only the newest version (an older write never wins).
    public func saveMembers(_ members: [StoredMember], at date: Date) throws(StoreError) {
        guard !members.isEmpty else { return }
        try write("save member records") { db in
            for m in members {
                try db.execute(
                    sql: """
                        INSERT INTO member (node, signed_record, generation, heartbeat, updated_at) VALUES (?, ?, ?, ?, ?)
                        ON CONFLICT(node) DO UPDATE SET signed_record = excluded.signed_record,
                            generation = excluded.generation, heartbeat = excluded.heartbeat, updated_at = excluded.updated_at
                        WHERE (excluded.generation, excluded.heartbeat) > (member.generation, member.heartbeat)
                        """,
                    arguments: [m.node, Data(m.signedRecord), Int64(bitPattern: m.generation), Int64(bitPattern: m.heartbeat), date])
            }
        }
    }

    /// Every stored member record.
    public func members() throws(StoreError) -> [StoredMember] {
        try read("read member records") { db in
            try Row.fetchAll(db, sql: "SELECT node, signed_record, generation, heartbeat FROM member ORDER BY node").map { row in
                StoredMember(
                    node: row["node"], signedRecord: Array(row["signed_record"] as Data),
                    generation: UInt64(bitPattern: row["generation"] as Int64), heartbeat: UInt64(bitPattern: row["heartbeat"] as Int64))
            }
        }
    }

    /// Records a new run as `running` and returns its id.
    public func beginRun(_ run: SyncRun) throws(StoreError) -> Int64 {
        try write("record the start of a sync run") { db in
            var record = run
            try record.insert(db)
            return db.lastInsertedRowID
        }
    }

    /// Stores the final state of a run begun with ``beginRun(_:)``.
    public func finishRun(_ run: SyncRun) throws(StoreError) {
        try write("record the end of a sync run") { db in try run.update(db) }
    }

    /// Records the token a run is syncing as soon as it is known, so that a run killed before it ends still says which
    /// token it was on.
    public func setRunToken(_ id: Int64, token: String) throws(StoreError) {
        try write("record the token of a sync run") { db in
            try db.execute(sql: "UPDATE sync_run SET token = ? WHERE id = ?", arguments: [token, id])
        }
    }

    /// Marks runs still `running` as `interrupted`. Call it while holding the sync lock: no other run is alive then.
    @discardableResult
    public func markInterruptedRuns(at date: Date) throws(StoreError) -> Int {
        try write("mark interrupted runs") { db in
            try db.execute(
                sql: "UPDATE sync_run SET outcome = 'interrupted', finished_at = ?, error = COALESCE(error, ?) WHERE outcome = 'running'",
                arguments: [date, SyncRun.interruptedError])
            return db.changesCount
        }
    }

    /// Remembers the token this mirror now publishes, and the root of the manifest published with it. The tree is
    /// verified from here on: a mark left by ``markTreeUnchecked(reason:at:)`` is cleared in the same transaction.
    /// - Parameter pendingDeletions: paths (relative to the tree) of files the source no longer has, to remove now
    ///   that the token is published; they replace any list left before.
    public func setPublished(token: String, source: String, at date: Date, manifestRoot: String? = nil,
                             pendingDeletions: [String] = []) throws(StoreError) {
        try write("record the published token") { db in
            try db.execute(sql: "DELETE FROM pending_deletion")
            for path in pendingDeletions {
                try db.execute(sql: "INSERT OR IGNORE INTO pending_deletion (path, token) VALUES (?, ?)", arguments: [path, token])
            }
            try db.execute(
                sql: """
                    INSERT INTO published_token (id, token, published_at, source, manifest_root) VALUES (1, ?, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET token = excluded.token, published_at = excluded.published_at,
                    source = excluded.source, manifest_root = excluded.manifest_root
                    """,
                arguments: [token, date, source, manifestRoot])
            try db.execute(sql: "DELETE FROM tree_unchecked")
        }
    }

    /// What this mirror attests: the token it published from its own upstream pull and its manifest's root. Nil when
    /// the published tree came from a peer or has no manifest.
    public func attestation() throws(StoreError) -> (token: String, root: String, at: Date)? {
        try read("read the attested manifest") { db in
            guard let row = try Row.fetchOne(db, sql: """
                SELECT token, manifest_root, published_at FROM published_token
                WHERE id = 1 AND source = 'upstream' AND manifest_root IS NOT NULL
                """)
            else { return nil }
            return (row["token"], row["manifest_root"], row["published_at"])
        }
    }

    /// Tokens this mirror published before the one it publishes now, and so has superseded: publishing one of them
    /// again would take the mirror back in time.
    public func supersededTokens() throws(StoreError) -> Set<String> {
        try read("read the published tokens") { db in
            let current = try String.fetchOne(db, sql: "SELECT token FROM published_token WHERE id = 1")
            let earlier = try String.fetchAll(db, sql: "SELECT DISTINCT token FROM sync_run WHERE outcome = 'synced' AND token IS NOT NULL")
            return Set(earlier).subtracting(current.map { [$0] } ?? [])
        }
    }

    /// Files left to remove after the publish of `token` (``setPublished(token:source:at:manifestRoot:pendingDeletions:)``),
    /// or nil when none are.
    public func pendingDeletions() throws(StoreError) -> (token: String, paths: [String])? {
        try read("read the deletions pending") { db in
            let rows = try Row.fetchAll(db, sql: "SELECT path, token FROM pending_deletion ORDER BY path")
            guard let first = rows.first else { return nil }
            return (first["token"], rows.map { $0["path"] })
        }
    }

    /// The pending deletions are done.
    public func clearPendingDeletions() throws(StoreError) {
        try write("clear the deletions pending") { db in try db.execute(sql: "DELETE FROM pending_deletion") }
    }

    /// Notes that the live tree is about to change without a verified publish to cover it yet. Kept until the next
    /// ``setPublished(token:source:at:manifestRoot:)``.
    public func markTreeUnchecked(reason: String, at date: Date) throws(StoreError) {
        try write("mark the tree unchecked") { db in
            try db.execute(
                sql: "INSERT INTO tree_unchecked (id, reason, since) VALUES (1, ?, ?) ON CONFLICT(id) DO NOTHING",
                arguments: [reason, date])
        }
    }

    /// Why the live tree must be checked again before it is called up to date, or nil.
    public func treeUnchecked() throws(StoreError) -> String? {
        try read("read the tree's check mark") { db in
            try String.fetchOne(db, sql: "SELECT reason FROM tree_unchecked WHERE id = 1")
        }
    }

    /// One file's cached SHA-256 and what identified the file when it was hashed.
    public struct CachedDigest: Sendable, Equatable {
        public var size: Int64
        public var mtimeNanos: Int64
        public var inode: UInt64
        public var sha256: String

        public init(size: Int64, mtimeNanos: Int64, inode: UInt64, sha256: String) {
            self.size = size
            self.mtimeNanos = mtimeNanos
            self.inode = inode
            self.sha256 = sha256
        }
    }

    /// Every cached file digest, by path relative to the tree.
    public func digestCache() throws(StoreError) -> [String: CachedDigest] {
        try read("read the file digest cache") { db in
            var out: [String: CachedDigest] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT path, size, mtime_ns, inode, sha256 FROM file_digest")
            while let row = try rows.next() {
                out[row["path"]] = CachedDigest(
                    size: row["size"], mtimeNanos: row["mtime_ns"], inode: UInt64(bitPattern: row["inode"] as Int64),
                    sha256: row["sha256"])
            }
            return out
        }
    }

    /// Stores new digests and forgets paths no longer in the tree, in one transaction.
    public func updateDigestCache(set: [String: CachedDigest], remove: [String]) throws(StoreError) {
        guard !set.isEmpty || !remove.isEmpty else { return }
        try write("update the file digest cache") { db in
            let upsert = try db.makeStatement(sql: """
                INSERT INTO file_digest (path, size, mtime_ns, inode, sha256) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
                sha256 = excluded.sha256
                """)
            for (path, d) in set {
                try upsert.execute(arguments: [path, d.size, d.mtimeNanos, Int64(bitPattern: d.inode), d.sha256])
            }
            let delete = try db.makeStatement(sql: "DELETE FROM file_digest WHERE path = ?")
            for path in remove { try delete.execute(arguments: [path]) }
        }
    }

    /// The token recorded by the last publish, with when and from where.
    public func published() throws(StoreError) -> (token: String, at: Date, source: String)? {
        try read("read the published token") { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT token, published_at, source FROM published_token WHERE id = 1")
            else { return nil }
            return (row["token"], row["published_at"], row["source"])
        }
    }

    /// The most recent runs, newest first.
    public func recentRuns(limit: Int) throws(StoreError) -> [SyncRun] {
        try read("read the sync history") { db in
            try SyncRun.order(Column("id").desc).limit(limit).fetchAll(db)
        }
    }

    private func write<T>(_ what: String, _ body: (Database) throws -> T) throws(StoreError) -> T {
        do {
            return try pool.write(body)
        } catch {
            throw StoreError.classify(error, path: path, what: "\(what) in", fallback: .writeFailed)
        }
    }

    private func read<T>(_ what: String, _ body: (Database) throws -> T) throws(StoreError) -> T {
        do {
            return try pool.read(body)
        } catch {
            throw StoreError.classify(error, path: path, what: "\(what) from", fallback: .readFailed)
        }
    }
}

extension SyncRun: FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "sync_run"

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

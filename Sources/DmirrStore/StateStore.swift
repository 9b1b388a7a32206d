import Foundation
import GRDB

/// This mirror's persistent state: a SQLite file (WAL) in `[state] dir`. The only code that touches GRDB.
public final class StateStore: Sendable {
    /// The database file's name inside the state directory.
    public static let fileName = "state.sqlite"

    private let pool: DatabasePool
    public let path: String

    /// Opens (creating if needed) the state database in `directory` and applies pending migrations.
    public init(directory: String) throws(StoreError) {
        path = directory + "/" + Self.fileName
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
        } catch {
            throw StoreError(code: .cannotOpen, message: "cannot open the state database \(path)", underlying: error)
        }
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
        return migrator
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

    /// Marks runs still `running` as `interrupted`. Call it while holding the sync lock: no other run is alive then.
    @discardableResult
    public func markInterruptedRuns(at date: Date) throws(StoreError) -> Int {
        try write("mark interrupted runs") { db in
            try db.execute(
                sql: "UPDATE sync_run SET outcome = 'interrupted', finished_at = ?, error = COALESCE(error, ?) WHERE outcome = 'running'",
                arguments: [date, "the process ended before the run finished (killed or crashed)"])
            return db.changesCount
        }
    }

    /// Remembers the token this mirror now publishes.
    public func setPublished(token: String, source: String, at date: Date) throws(StoreError) {
        try write("record the published token") { db in
            try db.execute(
                sql: """
                    INSERT INTO published_token (id, token, published_at, source) VALUES (1, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET token = excluded.token, published_at = excluded.published_at,
                    source = excluded.source
                    """,
                arguments: [token, date, source])
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
            throw StoreError(code: .writeFailed, message: "cannot \(what) in \(path)", underlying: error)
        }
    }

    private func read<T>(_ what: String, _ body: (Database) throws -> T) throws(StoreError) -> T {
        do {
            return try pool.read(body)
        } catch {
            throw StoreError(code: .readFailed, message: "cannot \(what) from \(path)", underlying: error)
        }
    }
}

extension SyncRun: FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "sync_run"

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

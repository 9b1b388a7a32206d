import Foundation
import GRDB

/// The state store's one error type.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    /// Opaque, so cases can be added without breaking callers.
    public struct Code: Hashable, Sendable {
        private let raw: Int
        public static let cannotOpen = Code(raw: 1)
        public static let readFailed = Code(raw: 2)
        public static let writeFailed = Code(raw: 3)
        /// The file is not a database, or SQLite's `quick_check` found damage: the operator moves it aside.
        public static let damaged = Code(raw: 4)
        /// Another process holds a lock on the file for longer than the busy timeout: temporary.
        public static let locked = Code(raw: 5)
        /// The file or its filesystem cannot be written.
        public static let notWritable = Code(raw: 6)
    }

    public var code: Code
    /// What failed, naming the database file.
    public var message: String
    public var underlying: (any Error)?

    public init(code: Code, message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        if let underlying { return "\(message): \(underlying)" }
        return message
    }

    /// The error for `what` failing on the database at `path`: damage, a lock held elsewhere and a read-only file get
    /// their own code and a message that says what to do (docs/operator-guide.md, "The state database").
    static func classify(_ error: any Error, path: String, what: String, fallback: Code) -> StoreError {
        if let error = error as? StoreError { return error }
        guard let sqlite = error as? DatabaseError else { return StoreError(code: fallback, message: "cannot \(what) \(path)", underlying: error) }
        switch sqlite.resultCode {
        case .SQLITE_CORRUPT, .SQLITE_NOTADB:
            return damaged(path, detail: sqlite.message ?? "\(sqlite.resultCode)")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return StoreError(
                code: .locked,
                message: "cannot \(what) \(path): another process has held it locked for \(Int(StateStore.busySeconds)) s "
                    + "(`fuser \(path)` names it); nothing was changed, try again once it lets go")
        case .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_PERM:
            // SQLite reports a read-only filesystem as "unable to open" (the WAL's shared-memory file cannot be made).
            let directory = (path as NSString).deletingLastPathComponent
            guard access(directory, W_OK) != 0 || access(path, W_OK) != 0 || sqlite.resultCode == .SQLITE_READONLY else {
                return StoreError(code: fallback, message: "cannot \(what) \(path)", underlying: error)
            }
            let reason = access(directory, W_OK) != 0 ? String(cString: strerror(errno)) : "the file is read-only"
            return StoreError(
                code: .notWritable,
                message: "cannot \(what) \(path): it cannot be written (\(reason)); nothing was changed. dmirr needs "
                    + "[state] dir writable: remount its filesystem read-write or fix its permissions")
        default:
            return StoreError(code: fallback, message: "cannot \(what) \(path)", underlying: error)
        }
    }

    static func damaged(_ path: String, detail: String) -> StoreError {
        StoreError(
            code: .damaged,
            message: "the state database \(path) is damaged (\(detail)); nothing was changed. To recover, stop dmirr, "
                + "move it aside with its -wal and -shm files (`mv \(path) \(path).damaged`) and start again: dmirr makes "
                + "a new one, checks the published tree against the source once, and takes the fleet's records and "
                + "revocation list from its peers; the sync history and the memory of superseded tokens start afresh")
    }
}

import DmirrCore

/// The sync module's one error type: what failed, in words that say what to do, and the exit code it maps to.
public struct SyncError: Error, Sendable, CustomStringConvertible {
    /// Opaque, so cases can be added later.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let raw: String
        public var description: String { raw }
        /// Another run holds the sync lock.
        public static let locked = Code(raw: "locked")
        /// The environment is not as the config says (missing directory, path is a directory in snapshot mode, …).
        public static let setup = Code(raw: "setup")
        /// rsync could not be started.
        public static let launch = Code(raw: "launch")
        /// rsync failed; see ``SyncError/rsync``.
        public static let rsync = Code(raw: "rsync")
        /// A file operation of the pipeline itself failed.
        public static let io = Code(raw: "io")
        /// The state database failed.
        public static let store = Code(raw: "store")
        /// The source's token file is empty or unreadable.
        public static let badToken = Code(raw: "bad-token")
    }

    public var code: Code
    public var message: String
    /// The classified rsync failure, for ``Code/rsync``.
    public var rsync: RsyncFailure?
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, rsync: RsyncFailure? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.rsync = rsync
        self.underlying = underlying
    }

    public var description: String {
        if let underlying { return "\(message): \(underlying)" }
        return message
    }
}

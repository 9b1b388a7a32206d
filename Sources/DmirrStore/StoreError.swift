/// The state store's one error type.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    /// Opaque, so cases can be added without breaking callers.
    public struct Code: Hashable, Sendable {
        private let raw: Int
        public static let cannotOpen = Code(raw: 1)
        public static let readFailed = Code(raw: 2)
        public static let writeFailed = Code(raw: 3)
    }

    public var code: Code
    /// What failed, naming the database file.
    public var message: String
    public var underlying: (any Error)?

    public var description: String {
        if let underlying { return "\(message): \(underlying)" }
        return message
    }
}

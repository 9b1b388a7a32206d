import Foundation

/// A fresh directory under /tmp for one test, removed by ``remove()``.
public final class TestDirectory: @unchecked Sendable {
    public let path: String

    public init(_ label: String = "test") throws {
        path = NSTemporaryDirectory() + "dmirr-\(label)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func sub(_ name: String) -> String { path + "/" + name }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// `realpath(3)`: the path with every symlink resolved (Foundation's `resolvingSymlinksInPath` leaves relative link
/// targets alone on Linux).
public func realPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// A flag set from one task and read from another (a test's connection body and its assertions).
public final class ManagedFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    public init() {}
    public var value: Bool { lock.withLock { flag } }
    public func set() { lock.withLock { flag = true } }
}

/// A count kept by one task and read by another.
public final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    public init() {}
    public var value: Int { lock.withLock { count } }
    /// Adds one; returns the new count.
    @discardableResult public func increment() -> Int { lock.withLock { count += 1; return count } }
}

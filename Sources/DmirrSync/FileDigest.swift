import Crypto
import Foundation

/// Streams a file through a hash function, in 1 MiB reads, so memory stays flat for large packages.
enum FileDigest {
    /// Hex digest of the file at `path`, or nil when `type` is a checksum type dmirr does not know.
    static func hex(of path: String, type: String) throws -> String? {
        switch type.lowercased() {
        case "sha256": return try digest(path, SHA256())
        case "sha512": return try digest(path, SHA512())
        case "sha384": return try digest(path, SHA384())
        case "sha1", "sha": return try digest(path, Insecure.SHA1())
        case "md5": return try digest(path, Insecure.MD5())
        default: return nil
        }
    }

    private static func digest<H: HashFunction>(_ path: String, _ initial: H) throws -> String {
        var hasher = initial
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        defer { try? handle.close() }
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

import Crypto

extension TreeManifest {
    /// Lower-case hex SHA-256 of an encoded manifest: what a member attests.
    public static func root(of encoded: [UInt8]) -> String {
        SHA256.hash(data: encoded).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }
}

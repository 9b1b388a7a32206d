/// An upstream's token (the content of its `CURRENT` file): what a mirror claims to have.
///
/// Compared by its text with surrounding whitespace removed, so a trailing newline does not make two tokens differ.
/// The file's exact bytes are kept too, and are what dmirr publishes.
public struct Token: Sendable, Hashable, CustomStringConvertible {
    /// The token file's content, exactly.
    public var bytes: [UInt8]
    /// The content without surrounding whitespace.
    public var value: String

    public init(fileContents: [UInt8]) {
        self.bytes = fileContents
        self.value = String(decoding: fileContents, as: UTF8.self).trimmingWhitespace()
    }

    public init(_ value: String) {
        self.init(fileContents: Array((value + "\n").utf8))
    }

    /// True when the file holds nothing but whitespace: such a token cannot be published.
    public var isEmpty: Bool { value.isEmpty }

    /// The first 12 characters, for tables.
    public var short: String { value.count > 12 ? String(value.prefix(12)) : value }

    public var description: String { value }

    public static func == (lhs: Token, rhs: Token) -> Bool { lhs.value == rhs.value }
    public func hash(into hasher: inout Hasher) { hasher.combine(value) }

    /// A name safe for a directory (snapshot mode): the token's own characters when they are plain, else a hash-free
    /// escape of each other byte, so distinct tokens always get distinct names.
    public var directoryName: String {
        var out = ""
        for byte in value.utf8 {
            let c = Character(UnicodeScalar(byte))
            if c.isASCII, c.isLetter || c.isNumber || c == "-" || c == "." && !out.isEmpty {
                out.append(c)
            } else {
                out += "_" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out.isEmpty ? "_empty" : out
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[start...end])
    }

    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

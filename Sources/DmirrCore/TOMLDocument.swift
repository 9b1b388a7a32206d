/// A parsed TOML document that remembers the line of every key, so that config errors can name it.
///
/// dmirr's config uses a small subset of TOML: top-level keys, `[table]` headers (one level), and values that are
/// strings (basic `"…"` and literal `'…'`), integers, booleans and arrays of those (which may span lines). Anything
/// else in TOML (inline tables, multi-line strings, dates, floats, dotted keys, arrays of tables) is rejected with an
/// error that names the line, rather than being half-understood.
public struct TOMLDocument: Sendable, Equatable {
    /// One value with the line it came from.
    public struct Entry: Sendable, Equatable {
        public var value: TOMLValue
        public var line: Int
    }

    /// A table: `""` for the top level, otherwise the name in its `[header]`.
    public struct Table: Sendable, Equatable {
        public var name: String
        public var line: Int
        /// Keys in the order they appear.
        public var keys: [String] = []
        public var entries: [String: Entry] = [:]
    }

    /// Tables in the order they appear; the top level is always first.
    public var tables: [Table]

    public func table(_ name: String) -> Table? {
        tables.first { $0.name == name }
    }
}

/// A TOML value of the subset dmirr reads.
public enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int)
    case boolean(Bool)
    case array([TOMLValue])

    /// The TOML type name, for error messages ("expected a string, found an integer").
    public var typeName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .boolean: "a boolean"
        case .array: "an array"
        }
    }
}

/// A syntax error, with the 1-based line it was found on.
public struct TOMLSyntaxError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

extension TOMLDocument {
    /// Parses `text`. Throws the first syntax error found.
    public init(parsing text: String) throws(TOMLSyntaxError) {
        var parser = TOMLParser(text: text)
        self = try parser.parseDocument()
    }
}

/// A hand-written recursive-descent parser over the UTF-8 bytes of the document.
struct TOMLParser {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1

    init(text: String) {
        self.bytes = Array(text.utf8)
    }

    private func fail(_ message: String, line: Int? = nil) -> TOMLSyntaxError {
        TOMLSyntaxError(line: line ?? self.line, message: message)
    }

    private var atEnd: Bool { index >= bytes.count }
    private var current: UInt8? { atEnd ? nil : bytes[index] }

    private mutating func advance() {
        if bytes[index] == UInt8(ascii: "\n") { line += 1 }
        index += 1
    }

    /// Skips spaces and tabs (not newlines).
    private mutating func skipBlanks() {
        while let c = current, c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") { advance() }
    }

    /// Skips a comment up to (not including) the end of the line.
    private mutating func skipComment() {
        guard current == UInt8(ascii: "#") else { return }
        while let c = current, c != UInt8(ascii: "\n") { advance() }
    }

    /// After a value or header: only blanks and a comment may follow before the newline.
    private mutating func expectEndOfLine() throws(TOMLSyntaxError) {
        skipBlanks()
        skipComment()
        if current == UInt8(ascii: "\r") { advance() }
        guard let c = current else { return }
        guard c == UInt8(ascii: "\n") else {
            throw fail("unexpected '\(Character(UnicodeScalar(c)))' after the value; one key = value per line")
        }
        advance()
    }

    /// Skips blanks, newlines and comments (used between lines and inside arrays).
    private mutating func skipWhitespaceAndComments() {
        while let c = current {
            if c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\n")
                || c == UInt8(ascii: "\r")
            {
                advance()
            } else if c == UInt8(ascii: "#") {
                skipComment()
            } else {
                return
            }
        }
    }

    mutating func parseDocument() throws(TOMLSyntaxError) -> TOMLDocument {
        var tables = [TOMLDocument.Table(name: "", line: 1)]
        var currentTable = 0
        while true {
            skipWhitespaceAndComments()
            guard let c = current else { break }
            if c == UInt8(ascii: "[") {
                let headerLine = line
                advance()
                if current == UInt8(ascii: "[") {
                    throw fail("arrays of tables ([[…]]) are not used in dmirr's config")
                }
                skipBlanks()
                let name = try parseKey()
                skipBlanks()
                if current == UInt8(ascii: ".") {
                    throw fail("nested tables ([\(name).…]) are not used in dmirr's config")
                }
                guard current == UInt8(ascii: "]") else { throw fail("expected ']' to close the table header") }
                advance()
                try expectEndOfLine()
                if let previous = tables.first(where: { $0.name == name }) {
                    throw fail("table [\(name)] is defined twice (first on line \(previous.line))", line: headerLine)
                }
                tables.append(TOMLDocument.Table(name: name, line: headerLine))
                currentTable = tables.count - 1
            } else {
                let keyLine = line
                let key = try parseKey()
                skipBlanks()
                if current == UInt8(ascii: ".") {
                    throw fail("dotted keys (\(key).…) are not used in dmirr's config; use a [table]")
                }
                guard current == UInt8(ascii: "=") else { throw fail("expected '=' after key '\(key)'") }
                advance()
                skipBlanks()
                let value = try parseValue()
                try expectEndOfLine()
                if let previous = tables[currentTable].entries[key] {
                    throw fail("key '\(key)' is set twice (first on line \(previous.line))", line: keyLine)
                }
                tables[currentTable].keys.append(key)
                tables[currentTable].entries[key] = .init(value: value, line: keyLine)
            }
        }
        return TOMLDocument(tables: tables)
    }

    private static func isBareKeyByte(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
            || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "_")
            || c == UInt8(ascii: "-")
    }

    private mutating func parseKey() throws(TOMLSyntaxError) -> String {
        if current == UInt8(ascii: "\"") { return try parseBasicString() }
        if current == UInt8(ascii: "'") { return try parseLiteralString() }
        let start = index
        while let c = current, Self.isBareKeyByte(c) { advance() }
        guard index > start else {
            if let c = current {
                throw fail("expected a key, found '\(Character(UnicodeScalar(c)))'")
            }
            throw fail("expected a key")
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    private mutating func parseValue() throws(TOMLSyntaxError) -> TOMLValue {
        guard let c = current else { throw fail("expected a value") }
        switch c {
        case UInt8(ascii: "\""):
            if index + 2 < bytes.count, bytes[index + 1] == c, bytes[index + 2] == c {
                throw fail("multi-line strings are not used in dmirr's config")
            }
            return .string(try parseBasicString())
        case UInt8(ascii: "'"):
            if index + 2 < bytes.count, bytes[index + 1] == c, bytes[index + 2] == c {
                throw fail("multi-line strings are not used in dmirr's config")
            }
            return .string(try parseLiteralString())
        case UInt8(ascii: "["):
            return try parseArray()
        case UInt8(ascii: "{"):
            throw fail("inline tables are not used in dmirr's config; use a [table]")
        case UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "#"):
            throw fail("expected a value after '='")
        default:
            return try parseBareValue()
        }
    }

    private mutating func parseBareValue() throws(TOMLSyntaxError) -> TOMLValue {
        let start = index
        while let c = current, c != UInt8(ascii: " "), c != UInt8(ascii: "\t"), c != UInt8(ascii: "\n"),
            c != UInt8(ascii: "\r"), c != UInt8(ascii: "#"), c != UInt8(ascii: ","), c != UInt8(ascii: "]")
        {
            advance()
        }
        let word = String(decoding: bytes[start..<index], as: UTF8.self)
        if word == "true" { return .boolean(true) }
        if word == "false" { return .boolean(false) }
        var digits = word.replacingUnderscoresBetweenDigits()
        var negative = false
        if digits.hasPrefix("+") || digits.hasPrefix("-") {
            negative = digits.hasPrefix("-")
            digits.removeFirst()
        }
        if !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
            !(digits.count > 1 && digits.hasPrefix("0"))
        {
            guard let magnitude = Int(digits) else { throw fail("integer '\(word)' is out of range") }
            return .integer(negative ? -magnitude : magnitude)
        }
        if word.isEmpty { throw fail("expected a value") }
        if let first = word.first, first.isNumber || first == "+" || first == "-" {
            throw fail("'\(word)' is not a value dmirr's config uses (floats and dates are not); quote strings")
        }
        throw fail("'\(word)' is not a valid value; strings must be quoted, like \"\(word)\"")
    }

    private mutating func parseArray() throws(TOMLSyntaxError) -> TOMLValue {
        let openLine = line
        advance()  // [
        var items: [TOMLValue] = []
        while true {
            skipWhitespaceAndComments()
            guard let c = current else { throw fail("array opened on line \(openLine) is not closed") }
            if c == UInt8(ascii: "]") {
                advance()
                return .array(items)
            }
            items.append(try parseValue())
            skipWhitespaceAndComments()
            if current == UInt8(ascii: ",") {
                advance()
            } else if current != UInt8(ascii: "]") {
                if current == nil { throw fail("array opened on line \(openLine) is not closed") }
                throw fail("expected ',' or ']' in the array opened on line \(openLine)")
            }
        }
    }

    private mutating func parseLiteralString() throws(TOMLSyntaxError) -> String {
        advance()  // '
        let start = index
        while let c = current, c != UInt8(ascii: "'") {
            if c == UInt8(ascii: "\n") { throw fail("string is not closed before the end of the line") }
            advance()
        }
        guard current != nil else { throw fail("string is not closed before the end of the file") }
        let value = String(decoding: bytes[start..<index], as: UTF8.self)
        advance()
        return value
    }

    private mutating func parseBasicString() throws(TOMLSyntaxError) -> String {
        advance()  // "
        var out: [UInt8] = []
        while true {
            guard let c = current else { throw fail("string is not closed before the end of the file") }
            if c == UInt8(ascii: "\n") { throw fail("string is not closed before the end of the line") }
            if c == UInt8(ascii: "\"") {
                advance()
                return String(decoding: out, as: UTF8.self)
            }
            if c == UInt8(ascii: "\\") {
                advance()
                guard let e = current else { throw fail("string is not closed before the end of the file") }
                advance()
                switch e {
                case UInt8(ascii: "\""): out.append(e)
                case UInt8(ascii: "\\"): out.append(e)
                case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
                case UInt8(ascii: "t"): out.append(UInt8(ascii: "\t"))
                case UInt8(ascii: "r"): out.append(UInt8(ascii: "\r"))
                case UInt8(ascii: "u"), UInt8(ascii: "U"):
                    let width = e == UInt8(ascii: "u") ? 4 : 8
                    guard index + width <= bytes.count,
                        let code = UInt32(String(decoding: bytes[index..<index + width], as: UTF8.self), radix: 16),
                        let scalar = Unicode.Scalar(code)
                    else { throw fail("invalid unicode escape in string") }
                    for _ in 0..<width { advance() }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw fail("invalid escape '\\\(Character(UnicodeScalar(e)))' in string")
                }
                continue
            }
            out.append(c)
            advance()
        }
    }
}

extension String {
    /// TOML allows `1_000`; underscores must sit between digits.
    fileprivate func replacingUnderscoresBetweenDigits() -> String {
        guard contains("_") else { return self }
        let chars = Array(self)
        var out = ""
        for (i, ch) in chars.enumerated() {
            if ch == "_", i > 0, i + 1 < chars.count, chars[i - 1].isNumber, chars[i + 1].isNumber { continue }
            out.append(ch)
        }
        return out
    }
}

import Foundation

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// A file a yum repository's metadata vouches for: where it is, how big, and its checksum.
public struct ExpectedFile: Sendable, Equatable {
    /// Relative to the repository root (the directory holding `repodata/`).
    public var href: String
    public var size: Int64?
    /// `sha256`, `sha512`, `sha1` (also spelled `sha`), …
    public var checksumType: String
    public var checksum: String
    /// The `type` attribute of a repomd `<data>` entry (`primary`, `filelists`, …); nil for packages.
    public var type: String? = nil
    /// The location's `xml:base`, when the entry lives under another base (a URL or another tree) than the repository.
    public var base: String? = nil
}

/// Parses `repomd.xml` and `primary.xml`, keeping only what verification needs.
enum RepoMetadata {
    /// The `<data>` entries of a `repomd.xml`.
    static func parseRepomd(_ data: Data) throws -> [ExpectedFile] {
        try parse(data, entryElement: "data", sizeElement: "size", sizeAttribute: nil)
    }

    /// The `<package>` entries of a `primary.xml`.
    static func parsePrimary(_ data: Data) throws -> [ExpectedFile] {
        try parse(XMLParser(data: data), entryElement: "package", sizeElement: "size", sizeAttribute: "package")
    }

    /// The `<package>` entries of a `primary.xml` file, parsed in chunks as it is read (memory does not grow with the
    /// file, only with the entries kept).
    static func parsePrimary(fileAt path: String) throws -> [ExpectedFile] {
        guard let stream = InputStream(fileAtPath: path) else { throw MetadataError(message: "cannot open \(path)") }
        return try parse(XMLParser(stream: stream), entryElement: "package", sizeElement: "size", sizeAttribute: "package")
    }

    private static func parse(_ data: Data, entryElement: String, sizeElement: String, sizeAttribute: String?) throws
        -> [ExpectedFile]
    {
        try parse(XMLParser(data: data), entryElement: entryElement, sizeElement: sizeElement, sizeAttribute: sizeAttribute)
    }

    private static func parse(_ parser: XMLParser, entryElement: String, sizeElement: String, sizeAttribute: String?) throws
        -> [ExpectedFile]
    {
        let delegate = Collector(entryElement: entryElement, sizeElement: sizeElement, sizeAttribute: sizeAttribute)
        parser.delegate = delegate
        guard parser.parse() else {
            throw MetadataError(message: parser.parserError.map { "\($0)" } ?? "not well-formed XML")
        }
        if let problem = delegate.problem { throw MetadataError(message: problem) }
        return delegate.entries
    }

    struct MetadataError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// A SAX delegate: one entry element holds one `<checksum type=…>`, one `<location href=…>` and a size.
    private final class Collector: NSObject, XMLParserDelegate {
        let entryElement: String
        let sizeElement: String
        let sizeAttribute: String?
        var entries: [ExpectedFile] = []
        var problem: String?

        private var depthInEntry = 0
        private var entryType: String?
        private var href: String?
        private var base: String?
        private var size: Int64?
        private var checksumType: String?
        private var checksum: String?
        private var text = ""
        private var collectingChecksum = false
        private var collectingSize = false

        init(entryElement: String, sizeElement: String, sizeAttribute: String?) {
            self.entryElement = entryElement
            self.sizeElement = sizeElement
            self.sizeAttribute = sizeAttribute
        }

        func parser(
            _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName: String?,
            attributes: [String: String] = [:]
        ) {
            let name = Self.local(elementName)
            if name == entryElement, depthInEntry == 0 {
                depthInEntry = 1
                entryType = attributes["type"]
                href = nil
                base = nil
                size = nil
                checksumType = nil
                checksum = nil
                return
            }
            guard depthInEntry > 0 else { return }
            depthInEntry += 1
            // Only direct children count: <open-checksum> and friends are other elements anyway.
            guard depthInEntry == 2 else { return }
            switch name {
            case "checksum":
                checksumType = attributes["type"]
                collectingChecksum = true
                text = ""
            case "location":
                href = attributes["href"]
                base = attributes["xml:base"].flatMap { $0.isEmpty ? nil : $0 }
            case sizeElement:
                if let sizeAttribute {
                    size = attributes[sizeAttribute].flatMap { Int64($0) }
                } else {
                    collectingSize = true
                    text = ""
                }
            default:
                break
            }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if collectingChecksum || collectingSize { text += string }
        }

        func parser(
            _ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?
        ) {
            guard depthInEntry > 0 else { return }
            if collectingChecksum {
                checksum = text.trimmingCharacters(in: .whitespacesAndNewlines)
                collectingChecksum = false
            }
            if collectingSize {
                size = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines))
                collectingSize = false
            }
            depthInEntry -= 1
            if depthInEntry == 0 {
                guard let href, let checksumType, let checksum, !checksum.isEmpty else {
                    problem = problem ?? "a <\(entryElement)> entry lacks its location or checksum"
                    return
                }
                entries.append(
                    ExpectedFile(href: href, size: size, checksumType: checksumType, checksum: checksum, type: entryType, base: base))
            }
        }

        private static func local(_ name: String) -> String {
            name.split(separator: ":").last.map(String.init) ?? name
        }
    }
}

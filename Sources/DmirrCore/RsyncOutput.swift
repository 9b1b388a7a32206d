/// Parsers for what rsync prints on stdout with `--info=progress2 --stats --out-format="%i %n"`.
public enum RsyncOutput {
    /// One `--info=progress2` line: `  1,234,567  45%   12.34MB/s    0:00:10 (xfr#12, to-chk=34/100)`.
    public struct Progress: Sendable, Equatable {
        public var bytes: Int64
        public var percent: Int
        /// As rsync prints it, e.g. `12.34MB/s`.
        public var rate: String
        /// As rsync prints it, e.g. `0:00:10`.
        public var eta: String
        /// Files transferred so far (`xfr#N`), when rsync printed it.
        public var filesTransferred: Int?
    }

    /// Totals from `--stats`.
    public struct Stats: Sendable, Equatable {
        public var filesTransferred: Int = 0
        /// Total size of the files transferred (what changed on disk).
        public var transferredFileSize: Int64 = 0
        /// Bytes received over the wire.
        public var bytesReceived: Int64 = 0
        /// Files and directories in the source's file list.
        public var numberOfFiles: Int = 0

        public init() {}
    }

    /// One `--out-format="%i %n"` line.
    public struct Item: Sendable, Equatable {
        /// rsync's itemize string, like `>f+++++++++` or `*deleting`.
        public var changes: String
        /// Path relative to the transfer root.
        public var path: String

        /// A regular file whose content arrived in this pass.
        public var isReceivedFile: Bool { changes.hasPrefix(">f") }
        public var isDeletion: Bool { changes.hasPrefix("*deleting") }
    }

    /// A classified stdout line.
    public enum Line: Sendable, Equatable {
        case progress(Progress)
        case item(Item)
        case stat(key: String, value: String)
        case other(String)
    }

    /// Splits a chunk of stdout into lines: rsync ends progress updates with `\r`, everything else with `\n`.
    public static func splitLines(_ text: Substring) -> [Substring] {
        text.split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
    }

    public static func classify(_ raw: Substring) -> Line {
        let line = raw.drop { $0 == " " }
        if let progress = parseProgress(line) { return .progress(progress) }
        if let item = parseItem(raw) { return .item(item) }
        if let colon = line.firstIndex(of: ":"), statKeys.contains(String(line[..<colon])) {
            return .stat(key: String(line[..<colon]), value: String(line[line.index(after: colon)...].drop { $0 == " " }))
        }
        return .other(String(raw))
    }

    static let statKeys: Set<String> = [
        "Number of files", "Number of regular files transferred", "Total file size", "Total transferred file size",
        "Total bytes sent", "Total bytes received", "Number of created files", "Number of deleted files",
        "Literal data", "Matched data", "File list size",
    ]

    /// Folds one `--stats` line into `stats`.
    public static func accumulate(_ key: String, _ value: String, into stats: inout Stats) {
        let number = leadingNumber(value)
        switch key {
        case "Number of regular files transferred": stats.filesTransferred = Int(number ?? 0)
        case "Total transferred file size": stats.transferredFileSize = number ?? 0
        case "Total bytes received": stats.bytesReceived = number ?? 0
        case "Number of files": stats.numberOfFiles = Int(number ?? 0)
        default: break
        }
    }

    /// `1,234,567 bytes` → 1234567; `12 (reg: 10, dir: 2)` → 12.
    static func leadingNumber<S: StringProtocol>(_ s: S) -> Int64? {
        let digits = s.prefix { $0.isNumber || $0 == "," }.filter { $0 != "," }
        return Int64(String(digits))
    }

    static func parseProgress(_ line: Substring) -> Progress? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 4, fields[1].hasSuffix("%"), let bytes = leadingNumber(fields[0]),
            fields[0].allSatisfy({ $0.isNumber || $0 == "," }),
            let percent = Int(fields[1].dropLast()), fields[2].hasSuffix("/s")
        else { return nil }
        var xfr: Int?
        if let r = line.firstRange(of: "xfr#") {
            xfr = Int(line[r.upperBound...].prefix { $0.isNumber })
        }
        return Progress(bytes: bytes, percent: percent, rate: String(fields[2]), eta: String(fields[3]), filesTransferred: xfr)
    }

    static func parseItem(_ line: Substring) -> Item? {
        // "%i %n": the itemize field is 11 characters ("*deleting  " included), then a space, then the name.
        guard line.count > 12 else { return nil }
        let changes = line.prefix(11)
        let first = changes.first!
        guard ">c<.h*".contains(first) else { return nil }
        if first == "*" {
            guard changes.hasPrefix("*deleting") else { return nil }
        } else {
            let type = changes.dropFirst().first!
            guard "fdLDS".contains(type) else { return nil }
        }
        let rest = line.dropFirst(11)
        guard rest.first == " " else { return nil }
        return Item(changes: String(changes).trimmingTrailingSpaces(), path: String(rest.dropFirst()))
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var s = self
        while s.hasSuffix(" ") { s.removeLast() }
        return s
    }
}

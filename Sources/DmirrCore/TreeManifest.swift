/// A list of everything a mirror's tree holds for one token: each path's type, permission bits, size, mtime, SHA-256
/// and symlink target. A member that pulled the token from upstream writes it (`.dmirr-manifest` at the tree's root)
/// and signs its root hash into its member record (an *attestation*); a member that pulls from a peer accepts the
/// peer's manifest only when its root carries enough attestations, then checks every file of its own tree against it
/// before it publishes (docs/security.md).
///
/// Pure: encoding, decoding with limits, the root hash (TreeManifestRoot.swift) and the comparison. Walking and hashing a
/// tree is the sync module's job. This file needs nothing but the standard library and Token.swift, so the fuzzer
/// (Fuzz/) builds the decoder alone, without swift-crypto.
///
/// The encoding is line-based UTF-8, so an operator can read it:
/// ```
/// dmirr-manifest 1
/// token\tpush-2
/// f\t0644\t1234\t1700000000\t<sha256 hex>\tPackages/alpha-1.0-1.noarch.rpm
/// l\t0777\t0\t0\t-\tlatest\tPackages
/// d\t0755\t0\t0\t-\tPackages
/// ```
/// Fields are separated by tabs; in paths and targets a backslash, tab, newline or carriage return is written as
/// `\\`, `\t`, `\n`, `\r`. Entries are sorted by the bytes of their path. The root is the SHA-256 of the whole encoding.
public struct TreeManifest: Sendable, Equatable {
    /// The manifest's file name at the root of a tree.
    public static let fileName = ".dmirr-manifest"
    static let header = "dmirr-manifest 1"

    public enum Kind: String, Sendable, Equatable {
        case file = "f"
        case symlink = "l"
        case directory = "d"
    }

    public struct Entry: Sendable, Equatable {
        /// Relative to the tree's root, without a leading slash.
        public var path: String
        public var kind: Kind
        /// Permission bits, setuid, setgid and sticky included (`st_mode & 0o7777`).
        public var mode: UInt32
        /// Bytes, for files; 0 otherwise.
        public var size: Int64
        /// Whole seconds, for files; 0 otherwise (rsync keeps files' mtimes; directories' change as rsync works).
        public var mtime: Int64
        /// Lower-case hex SHA-256 of the content, for files; "" otherwise.
        public var sha256: String
        /// Where a symlink points; "" otherwise.
        public var target: String

        public init(path: String, kind: Kind, mode: UInt32, size: Int64 = 0, mtime: Int64 = 0, sha256: String = "", target: String = "") {
            self.path = path
            self.kind = kind
            self.mode = mode
            self.size = size
            self.mtime = mtime
            self.sha256 = sha256
            self.target = target
        }
    }

    /// Caps on what a decoded manifest may hold: it comes from a peer.
    public struct Limits: Sendable {
        public var maxBytes = 512 << 20
        public var maxEntries = 5_000_000
        public var maxPathBytes = 4096
        public init() {}
    }

    /// The token this tree holds.
    public var token: String
    /// Sorted by path (see ``sortEntries()``).
    public var entries: [Entry]

    public init(token: String, entries: [Entry]) {
        self.token = token
        self.entries = entries
        sortEntries()
    }

    public mutating func sortEntries() {
        entries.sort { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
    }

    // MARK: Encoding

    public func encoded() -> [UInt8] {
        var out = ""
        out.reserveCapacity(entries.count * 120 + 64)
        out += Self.header + "\n"
        out += "token\t" + Self.escape(token) + "\n"
        for e in entries {
            out += e.kind.rawValue + "\t" + Self.octal(e.mode) + "\t" + String(e.size) + "\t" + String(e.mtime) + "\t"
            out += (e.sha256.isEmpty ? "-" : e.sha256) + "\t" + Self.escape(e.path)
            if e.kind == .symlink { out += "\t" + Self.escape(e.target) }
            out += "\n"
        }
        return Array(out.utf8)
    }

    /// Why a manifest cannot be read, with the line.
    public struct DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { line > 0 ? "line \(line): \(message)" : message }
    }

    /// Reads an encoded manifest, refusing anything outside `limits` or any path that could leave the tree.
    public static func decode(_ bytes: [UInt8], limits: Limits = .init()) throws(DecodeError) -> TreeManifest {
        guard bytes.count <= limits.maxBytes else {
            throw DecodeError(line: 0, message: "\(bytes.count) bytes, over the limit of \(limits.maxBytes)")
        }
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        guard lines.last?.isEmpty == true else { throw DecodeError(line: lines.count, message: "the last line is not terminated") }
        lines.removeLast()
        guard lines.count >= 2, String(decoding: lines[0], as: UTF8.self) == header else {
            throw DecodeError(line: 1, message: "not a dmirr manifest (expected '\(header)')")
        }
        guard lines.count - 2 <= limits.maxEntries else {
            throw DecodeError(line: 0, message: "\(lines.count - 2) entries, over the limit of \(limits.maxEntries)")
        }
        let tokenLine = lines[1].split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false)
        guard tokenLine.count == 2, String(decoding: tokenLine[0], as: UTF8.self) == "token",
            let token = unescape(tokenLine[1]), !token.isEmpty
        else { throw DecodeError(line: 2, message: "expected 'token' and the token") }
        var entries: [Entry] = []
        entries.reserveCapacity(lines.count - 2)
        var previous: [UInt8]?
        for (index, line) in lines.dropFirst(2).enumerated() {
            let number = index + 3
            let fields = line.split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false)
            guard fields.count == 6 || fields.count == 7,
                let kind = Kind(rawValue: String(decoding: fields[0], as: UTF8.self)),
                let mode = UInt32(String(decoding: fields[1], as: UTF8.self), radix: 8), mode <= 0o7777,
                let size = Int64(String(decoding: fields[2], as: UTF8.self)), size >= 0,
                let mtime = Int64(String(decoding: fields[3], as: UTF8.self)),
                let path = unescape(fields[5])
            else { throw DecodeError(line: number, message: "not an entry (type, mode, size, mtime, sha256, path[, target])") }
            guard (kind == .symlink) == (fields.count == 7) else {
                throw DecodeError(line: number, message: "only symlinks have a target")
            }
            let digest = String(decoding: fields[4], as: UTF8.self)
            let sha256: String
            if kind == .file {
                guard digest.utf8.count == 64, digest.utf8.allSatisfy({ isLowerHex($0) }) else {
                    throw DecodeError(line: number, message: "a file needs a 64-digit lower-case hex SHA-256")
                }
                sha256 = digest
            } else {
                guard digest == "-" else { throw DecodeError(line: number, message: "only files have a SHA-256") }
                sha256 = ""
            }
            if let problem = pathProblem(path, limits: limits) { throw DecodeError(line: number, message: problem) }
            let target = kind == .symlink ? unescape(fields[6]) : ""
            guard let target, kind != .symlink || (!target.isEmpty && target.utf8.count <= limits.maxPathBytes) else {
                throw DecodeError(line: number, message: "a symlink needs a target of at most \(limits.maxPathBytes) bytes")
            }
            let key = Array(path.utf8)
            if let previous, !previous.lexicographicallyPrecedes(key) {
                throw DecodeError(line: number, message: "entries are not sorted, or a path repeats: \(path)")
            }
            previous = key
            entries.append(Entry(path: path, kind: kind, mode: mode, size: size, mtime: mtime, sha256: sha256, target: target))
        }
        var manifest = TreeManifest(token: token, entries: [])
        manifest.entries = entries
        return manifest
    }

    /// Why a path from a manifest cannot name a file inside the tree, or nil.
    public static func pathProblem(_ path: String, limits: Limits = .init()) -> String? {
        if path.isEmpty || path.utf8.count > limits.maxPathBytes { return "a path must have 1 to \(limits.maxPathBytes) bytes" }
        if path.hasPrefix("/") { return "an absolute path: \(path)" }
        for component in path.split(separator: "/", omittingEmptySubsequences: false) {
            if component.isEmpty || component == "." || component == ".." { return "a path that could leave the tree: \(path)" }
        }
        if path.utf8.contains(0) { return "a path with a NUL byte" }
        return nil
    }

    // MARK: Comparing

    /// One way a tree differs from its manifest.
    public struct Mismatch: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: Sendable, Equatable {
            /// Listed, absent from the tree.
            case missing
            /// In the tree, not listed.
            case extra
            /// Same path, other type, size, content or target.
            case content(String)
            /// Same content, other permission bits (the fix is a chmod, not a new copy).
            case mode(expected: UInt32, actual: UInt32)
        }
        public var path: String
        public var kind: Kind

        public init(path: String, kind: Kind) {
            self.path = path
            self.kind = kind
        }

        public var description: String {
            switch kind {
            case .missing: "\(path): listed in the manifest, missing"
            case .extra: "\(path): not in the manifest"
            case .content(let what): "\(path): \(what) differs from the manifest"
            case .mode(let e, let a): "\(path): mode \(Self.octal(a)) differs from the manifest's \(Self.octal(e))"
            }
        }
        static func octal(_ m: UInt32) -> String { TreeManifest.octal(m) }
    }

    /// How `actual` (a tree as it is) differs from `self` (what it must be), in path order.
    public func mismatches(in actual: TreeManifest) -> [Mismatch] {
        var out: [Mismatch] = []
        var i = 0
        var j = 0
        let want = entries
        let have = actual.entries
        while i < want.count || j < have.count {
            if j == have.count || (i < want.count && want[i].path.utf8.lexicographicallyPrecedes(have[j].path.utf8)) {
                out.append(Mismatch(path: want[i].path, kind: .missing))
                i += 1
            } else if i == want.count || have[j].path.utf8.lexicographicallyPrecedes(want[i].path.utf8) {
                out.append(Mismatch(path: have[j].path, kind: .extra))
                j += 1
            } else {
                let w = want[i]
                let h = have[j]
                if w.kind != h.kind {
                    out.append(Mismatch(path: w.path, kind: .content("type")))
                } else if w.size != h.size {
                    out.append(Mismatch(path: w.path, kind: .content("size \(h.size)")))
                } else if w.sha256 != h.sha256 {
                    out.append(Mismatch(path: w.path, kind: .content("SHA-256")))
                } else if w.target != h.target {
                    out.append(Mismatch(path: w.path, kind: .content("symlink target")))
                } else if w.kind == .file, w.mtime != h.mtime {
                    out.append(Mismatch(path: w.path, kind: .content("mtime")))
                } else if w.mode != h.mode, w.kind != .symlink {
                    out.append(Mismatch(path: w.path, kind: .mode(expected: w.mode, actual: h.mode)))
                }
                i += 1
                j += 1
            }
        }
        return out
    }

    // MARK: Helpers

    static func octal(_ mode: UInt32) -> String { String(mode, radix: 8).leftPadded(to: 4) }

    private static func isLowerHex(_ b: UInt8) -> Bool { (b >= 48 && b <= 57) || (b >= 97 && b <= 102) }

    static func escape(_ s: String) -> String {
        guard s.utf8.contains(where: { $0 == 92 || $0 == 9 || $0 == 10 || $0 == 13 }) else { return s }
        // By scalar, not by Character: "\r\n" is one Character, and would match neither case and go out raw, splitting
        // the line (the fuzzer found it).
        var out = String.UnicodeScalarView()
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    static func unescape(_ bytes: ArraySlice<UInt8>) -> String? {
        guard bytes.contains(92) else { return String(validating: bytes, as: UTF8.self) }
        var out: [UInt8] = []
        var escaping = false
        for b in bytes {
            if escaping {
                switch b {
                case 92: out.append(92)
                case UInt8(ascii: "t"): out.append(9)
                case UInt8(ascii: "n"): out.append(10)
                case UInt8(ascii: "r"): out.append(13)
                default: return nil
                }
                escaping = false
            } else if b == 92 {
                escaping = true
            } else {
                out.append(b)
            }
        }
        return escaping ? nil : String(validating: out, as: UTF8.self)
    }
}

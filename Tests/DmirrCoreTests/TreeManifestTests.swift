import DmirrCore
import Testing

@Suite struct TreeManifestTests {
    static let digest = String(repeating: "ab", count: 32)

    static func sample() -> TreeManifest {
        TreeManifest(token: "push-2", entries: [
            .init(path: "Packages/alpha-1.0-1.noarch.rpm", kind: .file, mode: 0o644, size: 1234, mtime: 1_700_000_000, sha256: digest),
            .init(path: "Packages", kind: .directory, mode: 0o755),
            .init(path: "latest", kind: .symlink, mode: 0o777, target: "Packages"),
            .init(path: "odd\tname\\with\nbreaks", kind: .file, mode: 0o4755, size: 0, mtime: 5, sha256: digest),
            .init(path: "CURRENT", kind: .file, mode: 0o644, size: 7, mtime: 1, sha256: digest),
        ])
    }

    @Test func encodingRoundTripsSortedWithEscapes() throws {
        let m = Self.sample()
        let bytes = m.encoded()
        let decoded = try TreeManifest.decode(bytes)
        #expect(decoded == m)
        #expect(decoded.entries.map(\.path) == ["CURRENT", "Packages", "Packages/alpha-1.0-1.noarch.rpm", "latest", "odd\tname\\with\nbreaks"])
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix("dmirr-manifest 1\ntoken\tpush-2\n"))
        #expect(text.contains("f\t4755\t0\t5\t\(Self.digest)\todd\\tname\\\\with\\nbreaks\n"))
        #expect(text.contains("l\t0777\t0\t0\t-\tlatest\tPackages\n"))
        // The root is over the exact bytes: any change moves it.
        var changed = m
        changed.entries[0].mode = 0o600
        #expect(TreeManifest.root(of: changed.encoded()) != TreeManifest.root(of: bytes))
        #expect(TreeManifest.root(of: bytes).count == 64)
    }

    /// "\r\n" is one Character in Swift: escaping by Character let it out raw, so a file or token holding a CRLF made
    /// a manifest whose lines split there (found by `scripts/fuzz.sh`, FuzzManifest). Every line break must be escaped.
    @Test func aCRLFInAPathOrTokenIsEscapedAndRoundTrips() throws {
        let m = TreeManifest(token: "push\r\n2", entries: [
            .init(path: "a\r\nf\t0644\t1\t1", kind: .file, mode: 0o644, size: 1, mtime: 1, sha256: Self.digest),
            .init(path: "b", kind: .symlink, mode: 0o777, target: "x\r\ny"),
        ])
        let bytes = m.encoded()
        #expect(bytes.filter { $0 == 13 }.isEmpty, "a raw CR in \(String(decoding: bytes, as: UTF8.self))")
        #expect(bytes.filter { $0 == 10 }.count == 4, "one line each for the header, the token and two entries")
        #expect(try TreeManifest.decode(bytes) == m)
    }

    @Test(arguments: [
        ("f\t0644\t1\t1\t\(digest)\t../etc/passwd\n", "could leave the tree"),
        ("f\t0644\t1\t1\t\(digest)\t/etc/passwd\n", "absolute path"),
        ("f\t0644\t1\t1\t\(digest)\ta//b\n", "could leave the tree"),
        ("f\t0644\t1\t1\tnothex\ta\n", "64-digit"),
        ("d\t0755\t0\t0\t\(digest)\ta\n", "only files have a SHA-256"),
        ("l\t0777\t0\t0\t-\ta\n", "only symlinks have a target"),
        ("f\t17777\t1\t1\t\(digest)\ta\n", "not an entry"),
        ("f\t0644\t-1\t1\t\(digest)\ta\n", "not an entry"),
        ("f\t0644\t1\t1\t\(digest)\tb\nf\t0644\t1\t1\t\(digest)\ta\n", "not sorted"),
        ("f\t0644\t1\t1\t\(digest)\ta\nf\t0644\t1\t1\t\(digest)\ta\n", "repeats"),
    ])
    func hostileEntriesAreRefusedWithTheirLine(body: String, expected: String) {
        let bytes = Array(("dmirr-manifest 1\ntoken\tT\n" + body).utf8)
        #expect {
            _ = try TreeManifest.decode(bytes)
        } throws: { error in
            let e = error as! TreeManifest.DecodeError
            return e.line >= 3 && e.message.contains(expected)
        }
    }

    @Test func limitsAreCheckedBeforeTheEntries() {
        var limits = TreeManifest.Limits()
        limits.maxEntries = 2
        let m = Self.sample()
        #expect(throws: TreeManifest.DecodeError.self) { _ = try TreeManifest.decode(m.encoded(), limits: limits) }
        limits = .init()
        limits.maxBytes = 100
        #expect(throws: TreeManifest.DecodeError.self) { _ = try TreeManifest.decode(m.encoded(), limits: limits) }
        #expect(throws: TreeManifest.DecodeError.self) { _ = try TreeManifest.decode(Array("something else\n".utf8)) }
        #expect(throws: TreeManifest.DecodeError.self) { _ = try TreeManifest.decode(Array("dmirr-manifest 1\ntoken\tT".utf8)) }
    }

    @Test func mismatchesNameEachPathAndKind() {
        let want = Self.sample()
        var have = want
        have.entries.removeAll { $0.path == "latest" }
        have.entries[0].sha256 = String(repeating: "cd", count: 32)  // CURRENT
        have.entries.append(.init(path: "zz-extra", kind: .file, mode: 0o644, size: 1, mtime: 1, sha256: Self.digest))
        let i = have.entries.firstIndex { $0.path == "odd\tname\\with\nbreaks" }!
        have.entries[i].mode = 0o755
        have.sortEntries()
        let found = want.mismatches(in: have)
        #expect(found == [
            .init(path: "CURRENT", kind: .content("SHA-256")),
            .init(path: "latest", kind: .missing),
            .init(path: "odd\tname\\with\nbreaks", kind: .mode(expected: 0o4755, actual: 0o755)),
            .init(path: "zz-extra", kind: .extra),
        ])
        #expect(want.mismatches(in: want).isEmpty)
    }

    @Test func attestationsNeedKDistinctAuthorsAndAStrictMajority() {
        func claims(_ list: [(String, String)]) -> [Attestations.Claim] { list.map { .init(node: $0.0, token: "T", root: $0.1) } }
        // k = 2: one author is not enough, two are; the same author twice counts once.
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R")]), needed: 2).isEmpty)
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R"), ("a", "R")]), needed: 2).isEmpty)
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R"), ("b", "R")]), needed: 2) == ["R"])
        // A liar's root against an honest one: a tie serves nobody, a majority wins.
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R"), ("x", "F")]), needed: 1).isEmpty)
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R"), ("b", "R"), ("x", "F")]), needed: 2) == ["R"])
        // Other tokens and empty roots do not count.
        let other = [Attestations.Claim(node: "b", token: "T0", root: "R"), .init(node: "c", token: "T", root: "")]
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R")]) + other, needed: 2).isEmpty)
        // A member listed under two roots counts for neither.
        #expect(Attestations.acceptedRoots(for: "T", claims: claims([("a", "R"), ("b", "R"), ("b", "F")]), needed: 2).isEmpty)
    }
}

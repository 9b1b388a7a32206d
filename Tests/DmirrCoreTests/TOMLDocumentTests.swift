import Foundation
@testable import DmirrCore
import Testing

@Suite struct TOMLDocumentTests {
    @Test func valuesAndLines() throws {
        let doc = try TOMLDocument(parsing: """
            # comment
            a = "x\\ty\\u00e9"   # trailing comment
            b = 'C:\\raw'
            c = 1_000
            d = -5
            e = true
            f = [
              "one",   # comment inside
              "two",
            ]
            [t]
            "quoted key" = false
            """)
        let top = try #require(doc.table(""))
        #expect(top.keys == ["a", "b", "c", "d", "e", "f"])
        #expect(top.entries["a"] == .init(value: .string("x\ty\u{e9}"), line: 2))
        #expect(top.entries["b"]?.value == .string("C:\\raw"))
        #expect(top.entries["c"]?.value == .integer(1000))
        #expect(top.entries["d"]?.value == .integer(-5))
        #expect(top.entries["e"]?.value == .boolean(true))
        #expect(top.entries["f"] == .init(value: .array([.string("one"), .string("two")]), line: 7))
        #expect(doc.table("t")?.line == 11)
        #expect(doc.table("t")?.entries["quoted key"]?.line == 12)
    }

    @Test(arguments: [
        ("a = 1\na = 2", 2, "set twice"),
        ("[t]\n[t]", 2, "defined twice"),
        ("a = {x = 1}", 1, "inline tables"),
        ("a = \"\"\"x\"\"\"", 1, "multi-line"),
        ("a = 1.5", 1, "floats"),
        ("a = bare", 1, "must be quoted"),
        ("a = [1, 2", 1, "not closed"),
        ("a = 1 b = 2", 1, "one key = value per line"),
        ("a.b = 1", 1, "dotted keys"),
        ("[a.b]", 1, "nested tables"),
        ("\n\n= 3", 3, "expected a key"),
        ("a = \"\\q\"", 1, "invalid escape"),
        ("a = 99999999999999999999", 1, "out of range"),
    ])
    func syntaxErrors(text: String, line: Int, fragment: String) {
        #expect {
            _ = try TOMLDocument(parsing: text)
        } throws: { error in
            guard let e = error as? TOMLSyntaxError else { return false }
            return e.line == line && e.message.contains(fragment)
        }
    }
}

@Suite struct DurationTextTests {
    @Test func parses() {
        #expect(DurationText.parse("500ms") == .milliseconds(500))
        #expect(DurationText.parse("30s") == .seconds(30))
        #expect(DurationText.parse("5m") == .seconds(300))
        #expect(DurationText.parse("1h30m") == .seconds(5400))
        #expect(DurationText.parse("2d") == .seconds(172_800))
        for bad in ["", "5", "m", "5x", "1.5s", "-1s", "5 m", "99999999999999999999d"] {
            #expect(DurationText.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func formatsAndRounds() {
        #expect(DurationText.format(.milliseconds(950)) == "950ms")
        #expect(DurationText.format(.seconds(185)) == "3m05s")
        #expect(DurationText.format(.seconds(7800)) == "2h10m")
        #expect(DurationText.wholeSeconds(.milliseconds(1500)) == 2)
        #expect(DurationText.wholeSeconds(.milliseconds(1)) == 1)
    }
}

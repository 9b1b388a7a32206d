/// Durations as operators write them in the config: `500ms`, `30s`, `5m`, `1h`, `2d`, and sums like `1h30m`.
public enum DurationText {
    /// Parses a duration. Returns nil for anything else (including a bare number, whose unit would be a guess).
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        var rest = Substring(text)
        var totalMillis: Int64 = 0
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, let number = Int64(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            // "ms" is listed before "m" and "s", so the first prefix that matches is the right unit.
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }) else { return nil }
            rest = rest.dropFirst(unit.count)
            let (product, overflow) = number.multipliedReportingOverflow(by: scale)
            guard !overflow else { return nil }
            let (sum, overflow2) = totalMillis.addingReportingOverflow(product)
            guard !overflow2 else { return nil }
            totalMillis = sum
        }
        return .milliseconds(totalMillis)
    }

    /// Whole seconds, rounded up, as rsync's `--timeout=N` wants them (never 0, which would mean "no timeout").
    public static func wholeSeconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return max(1, Int(seconds) + (attoseconds > 0 ? 1 : 0))
    }

    /// A short human form: `950ms`, `42s`, `3m05s`, `2h10m`, `3d4h`.
    public static func format(_ duration: Duration) -> String {
        let millis = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        if millis < 1000 { return "\(max(0, millis))ms" }
        let s = millis / 1000
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(twoDigits(s % 60))s" }
        if s < 86400 { return "\(s / 3600)h\(twoDigits((s % 3600) / 60))m" }
        return "\(s / 86400)d\((s % 86400) / 3600)h"
    }

    private static func twoDigits(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
}

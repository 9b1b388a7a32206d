/// Which extra rsync arguments (`[mirror] rsync_args`) an operator may add.
///
/// The pipeline's guarantees rest on the arguments dmirr itself passes (no deletions before the publish, delayed
/// updates in stage 2, a token written last, temp files in one known place). Arguments that would undo one of those
/// are refused with the reason, instead of silently breaking the pipeline.
public enum RsyncArgumentPolicy {
    /// Long options refused, by prefix (so `--delete-after` is caught by `--delete`), with why.
    static let deniedLong: [(prefix: String, reason: String)] = [
        ("--delete", "dmirr decides when deletions happen (listed before the publish, removed after it)"),
        ("--del", "dmirr decides when deletions happen (listed before the publish, removed after it)"),
        ("--remove-source-files", "it would delete files on the source"),
        ("--inplace", "clients would see half-written files"),
        ("--append", "it would trust partial files and skip checks"),
        ("--partial", "dmirr manages rsync's temporary and partial files itself"),
        ("--temp-dir", "dmirr manages rsync's temporary and partial files itself"),
        ("--delay-updates", "dmirr sets it on the stage that needs it"),
        ("--link-dest", "dmirr sets it in snapshot mode"),
        ("--compare-dest", "files would be missing from the mirror"),
        ("--copy-dest", "dmirr sets the destination layout itself"),
        ("--dry-run", "nothing would be synced, but the token would be published"),
        ("--list-only", "nothing would be synced, but the token would be published"),
        ("--only-write-batch", "nothing would be synced, but the token would be published"),
        ("--write-batch", "not supported by the pipeline"),
        ("--read-batch", "not supported by the pipeline"),
        ("--files-from", "only part of the tree would be synced"),
        ("--existing", "new files would be skipped"),
        ("--ignore-existing", "changed files would be skipped"),
        ("--max-size", "large files would be skipped and the mirror published incomplete"),
        ("--min-size", "small files would be skipped and the mirror published incomplete"),
        ("--backup", "backup copies would appear in the served tree"),
        ("--suffix", "backup copies would appear in the served tree"),
        ("--out-format", "dmirr parses rsync's output and sets its format"),
        ("--info", "dmirr parses rsync's output and sets its format"),
        ("--quiet", "dmirr parses rsync's output"),
        ("--stats", "dmirr sets it"),
        ("--timeout", "set [upstream] timeout instead"),
        ("--contimeout", "set [upstream] connect_timeout instead"),
        ("--password-file", "set [upstream] password_file instead"),
        ("--exclude-from", "set [mirror] exclude_from instead"),
        ("--server", "internal rsync option"),
        ("--sender", "internal rsync option"),
        ("--daemon", "internal rsync option"),
        ("--config", "internal rsync option"),
    ]

    /// Short options refused inside a bundle like `-avn`.
    static let deniedShort: [Character: String] = [
        "n": "dry run: nothing would be synced, but the token would be published",
        "b": "backup copies would appear in the served tree",
        "T": "dmirr manages rsync's temporary files itself",
        "q": "dmirr parses rsync's output",
        "P": "dmirr manages rsync's partial files itself",
        "i": "dmirr parses rsync's output and sets its format",
    ]

    /// Why `argument` is refused, or nil if it may be passed.
    public static func rejection(for argument: String) -> String? {
        if argument.hasPrefix("--") {
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            if name == "--" { return "positional arguments would change what is synced" }
            if let hit = deniedLong.first(where: { name.hasPrefix($0.prefix) }) { return hit.reason }
            return nil
        }
        if argument.hasPrefix("-"), argument.count > 1 {
            for ch in argument.dropFirst() {
                if let reason = deniedShort[ch] { return "-\(ch): \(reason)" }
            }
            return nil
        }
        return "only options may be added (it looks like a path or a value; write options as --name=value)"
    }
}

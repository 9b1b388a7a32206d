/// Builds the rsync argument vectors of the sync pipeline (docs/architecture.md §3). Pure: the shell runs them.
public struct RsyncCommand: Sendable, Equatable {
    /// The scratch directory for rsync's temporary files, relative to the destination root, so that a killed run's
    /// leftovers sit in one known place (cleaned by the next run) instead of as `.name.XXXXXX` all over the tree.
    public static let tempDirName = ".dmirr-tmp"
    /// rsync's own holding directory for `--delay-updates`, one in each directory that had updates.
    public static let delayDirName = ".~tmp~"
    /// The `--out-format` dmirr parses: itemized changes, then the name.
    public static let outFormat = "%i %n"

    /// What a pass does.
    public enum Stage: Sendable, Equatable {
        /// Stage 1 of in-place: everything but metadata and the token; no deletions.
        case content
        /// Stage 2 of in-place: metadata (and anything stage 1 missed), updates delayed to the end; no deletions.
        case metadata
        /// The end of an in-place pass: a dry run that only lists what the source no longer has. dmirr removes those
        /// files itself, after the new token is published, so the tree always holds every file of the token it names.
        case listDeletions
        /// Snapshot mode: the whole tree into a staging directory, hard-linking unchanged files to the live snapshot.
        case snapshot(linkDest: String?)
        /// Metadata only, compared by checksum instead of size and mtime: run after verification failed, because
        /// rsync's quick check skips a changed file whose size and mtime happen to match the old one (a repomd.xml
        /// regenerated within the same second has the same size more often than not).
        case metadataByChecksum
    }

    public var arguments: [String]

    /// What a pull from a peer adds to every transfer: a peer is not trusted with owners, devices, setuid or setgid
    /// bits, or symlinks that leave the tree. (What the tree must hold is then checked against an attested manifest,
    /// which restores modes and symlinks it lists.)
    public static let peerSafety = ["--safe-links", "--no-owner", "--no-group", "--no-devices", "--no-specials", "--chmod=ug-s"]

    /// Arguments for one transfer pass from `source` into the directory `destination`.
    /// - Parameter fromPeer: the source is another member, not upstream (adds ``peerSafety``).
    public static func transfer(stage: Stage, source: RsyncLocation, destination: String, config: Config, fromPeer: Bool = false) -> RsyncCommand {
        var args = ["-aH", "--numeric-ids"]
        if fromPeer { args += peerSafety }
        args += connectionOptions(source: source, config: config)
        args += ["--info=progress2", "--outbuf=L", "--stats", "--out-format=\(outFormat)"]
        args += ["--temp-dir=\(tempDirName)", "--exclude=/\(tempDirName)/"]
        // dmirr writes the manifest itself after verification; excluding it also keeps --delete off it.
        args += ["--exclude=/\(config.upstream.tokenFile)", "--exclude=/\(TreeManifest.fileName)"]
        switch stage {
        case .content:
            // --force: a directory upstream replaced with a file must make way, or rsync exits 23 on every run. (It
            // goes before the publish, with what it held: the one exception to "nothing is deleted before the token".)
            args += ["--force"] + config.mirror.metadata.map { "--exclude=\($0)" }
        case .metadata:
            args += ["--force", "--delay-updates"]
        case .listDeletions:
            args += ["--dry-run", "--delete", "--existing", "--ignore-existing"]
        case .snapshot(let linkDest):
            args += ["--delete"]
            if let linkDest { args += ["--link-dest=\(linkDest)"] }
        case .metadataByChecksum:
            args += ["--checksum", "--delay-updates", "--include=*/"]
            args += config.mirror.metadata.map { $0.hasSuffix("/") ? "--include=\($0)**" : "--include=\($0)" }
            args += ["--exclude=*"]
        }
        if let excludeFrom = config.mirror.excludeFrom { args += ["--exclude-from=\(excludeFrom)"] }
        args += config.mirror.rsyncArgs
        args += [source.treeArgument, destination.hasSuffix("/") ? destination : destination + "/"]
        return RsyncCommand(arguments: args)
    }

    /// Arguments that copy the source's token file to `destinationFile`.
    public static func fetchToken(source: RsyncLocation, destinationFile: String, config: Config) -> RsyncCommand {
        var args = connectionOptions(source: source, config: config)
        // -t -p: keep the token file's mtime and mode, so the published copy matches upstream's exactly.
        args += ["-tp", "--no-motd", source.file(config.upstream.tokenFile), destinationFile]
        return RsyncCommand(arguments: args)
    }

    /// Arguments that copy one file of the source's tree to `destinationFile`, refusing one larger than `maxBytes`
    /// (rsync then skips it, and the caller finds no file).
    public static func fetchFile(_ relativePath: String, source: RsyncLocation, destinationFile: String, maxBytes: Int, config: Config) -> RsyncCommand {
        var args = connectionOptions(source: source, config: config)
        args += ["-tp", "--no-motd", "--max-size=\(maxBytes)", source.file(relativePath), destinationFile]
        return RsyncCommand(arguments: args)
    }

    static func connectionOptions(source: RsyncLocation, config: Config) -> [String] {
        var args = ["--timeout=\(DurationText.wholeSeconds(config.upstream.timeout))"]
        if source.isDaemon {
            args.append("--contimeout=\(DurationText.wholeSeconds(config.upstream.connectTimeout))")
            if let passwordFile = config.upstream.passwordFile { args.append("--password-file=\(passwordFile)") }
        }
        return args
    }
}

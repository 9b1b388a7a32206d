import DmirrManifest

/// Feeds arbitrary bytes to the tree-manifest decoder (a peer serves `.dmirr-manifest` with its tree), with small
/// limits so the fuzzer reaches them. Bad input must only ever produce a `DecodeError`; what decodes must be sorted,
/// stay inside the tree, and come back the same through `encoded()` and `decode` again. Any crash, trap, leak or
/// allocation over -malloc_limit_mb is a bug.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzManifest(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    var limits = TreeManifest.Limits()
    limits.maxBytes = 64 << 10
    limits.maxEntries = 512
    limits.maxPathBytes = 256
    guard let manifest = try? TreeManifest.decode(bytes, limits: limits) else { return 0 }
    precondition(!manifest.token.isEmpty, "a manifest without a token decoded")
    precondition(manifest.entries.count <= limits.maxEntries, "more entries than the limit")
    for (i, entry) in manifest.entries.enumerated() {
        precondition(TreeManifest.pathProblem(entry.path, limits: limits) == nil, "a path that leaves the tree decoded: \(entry.path)")
        if i > 0 {
            precondition(manifest.entries[i - 1].path.utf8.lexicographicallyPrecedes(entry.path.utf8), "entries out of order")
        }
    }
    let again = try? TreeManifest.decode(manifest.encoded())
    precondition(again == manifest, "a decoded manifest does not survive encoding")
    return 0
}

#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/) with AddressSanitizer and runs each for N seconds (default 60):
#   FuzzWire      the frame and message decoders (what a peer sends over the fleet protocol)
#   FuzzManifest  the tree-manifest decoder (the .dmirr-manifest a peer serves with its tree)
# scripts/fuzz.sh 3600 is the one-hour run recorded in docs/reliability.md; scripts/fuzz.sh 60 FuzzManifest runs one.
# Exit non-zero when a fuzzer finds a crash, a leak, a timeout or an allocation over the limit; the input that did it
# is left in Fuzz/ as crash-*/leak-*/oom-*/timeout-* for a regression test.
set -euo pipefail
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(FuzzWire FuzzManifest)
cd "$(dirname "$0")/../Fuzz"
# --disable-dead-strip: release links with --gc-sections, and the linker then drops the coverage counters' sections
# (nothing names them but their __start_/__stop_ symbols), so libFuzzer ran blind, mutating at random without
# feedback. The run below refuses a binary without counters.
swift build -c release --sanitize=fuzzer --sanitize=address --disable-dead-strip 2>&1 | tail -1
for target in "${targets[@]}"; do
    case $target in
        FuzzWire) seeds=corpus ;;
        FuzzManifest) seeds=corpus-manifest ;;
        *) echo "fuzz.sh: unknown target $target (FuzzWire, FuzzManifest)" >&2; exit 2 ;;
    esac
    work=.corpus-$target
    mkdir -p "$work"
    cp -n "$seeds"/* "$work"/ 2>/dev/null || true
    echo "fuzz.sh: $target for $seconds s"
    log=$(mktemp)
    status=0
    ".build/release/$target" -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 "$work" > "$log" 2>&1 || status=$?
    grep -E "inline 8-bit counters|INITED" "$log" | head -2
    tail -12 "$log"
    if ! grep -q "inline 8-bit counters" "$log"; then
        echo "fuzz.sh: $target has no coverage counters: libFuzzer would mutate blind (see the build flags above)" >&2
        status=1
    fi
    rm -f "$log"
    [ "$status" -eq 0 ] || { echo "fuzz.sh: $target failed (exit $status)" >&2; exit "$status"; }
done

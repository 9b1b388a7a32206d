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
# The sanitizers go to swiftc as one flag. swiftc keeps only the last -sanitize= it is given, and `swift build
# --sanitize=fuzzer --sanitize=address` passes two in an order that changes from one build to the next (SwiftPM holds
# them in a Set): some builds had coverage counters but no AddressSanitizer, others AddressSanitizer and no counters,
# where libFuzzer mutates blind. --sanitize=fuzzer stays so SwiftPM links libFuzzer's main (and gives coverage to
# the C targets); -Xswiftc comes last on every swiftc line, so it decides. check_instrumented refuses a build whose
# decoder objects lack either, and the run below one whose binary registers no counters with libFuzzer.
swift build -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address 2>&1 | tail -1
counters() { # total size of the __sancov_cntrs sections (one byte per counter) in the files named
    local total=0 size
    for size in $(objdump -h "$@" 2>/dev/null | awk '$2 == "__sancov_cntrs" {print $3}'); do
        total=$((total + 16#$size))
    done
    echo "$total"
}
check_instrumented() { # target, the module holding its decoder
    local objects=(.build/release/"$2".build/*.o) asan counted
    [ -e "${objects[0]}" ] || { echo "fuzz.sh: $1: no objects of $2 in Fuzz/.build/release/$2.build" >&2; exit 1; }
    asan=$(nm -u "${objects[@]}" | grep -c '__asan_report' || true)
    counted=$(counters "${objects[@]}")
    echo "fuzz.sh: $1: $2 calls $asan of AddressSanitizer's report functions and has $counted coverage counters"
    if [ "$asan" -eq 0 ] || [ "$counted" -eq 0 ]; then
        echo "fuzz.sh: $1 is not instrumented for both AddressSanitizer and coverage (see the build flags above)" >&2
        exit 1
    fi
}
for target in "${targets[@]}"; do
    case $target in
        FuzzWire) seeds=corpus decoder=DmirrWire ;;
        FuzzManifest) seeds=corpus-manifest decoder=DmirrManifest ;;
        *) echo "fuzz.sh: unknown target $target (FuzzWire, FuzzManifest)" >&2; exit 2 ;;
    esac
    check_instrumented "$target" "$decoder"
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

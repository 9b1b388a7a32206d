#!/usr/bin/env bash
# Generates dmirr's man pages (swift-argument-parser's GenerateManual plugin, one page per command) and its shell
# completions (bash, zsh, fish) into OUT, laid out like /usr/local/share:
#   OUT/man/man1/dmirr.1, dmirr.sync.1, …
#   OUT/bash-completion/completions/dmirr   OUT/zsh/site-functions/_dmirr   OUT/fish/vendor_completions.d/dmirr.fish
# Usage: scripts/make-docs.sh [--debug] OUT      (--debug: use the debug build, faster when one exists)
set -euo pipefail
configuration=release
if [ "${1:-}" = "--debug" ]; then configuration=debug; shift; fi
out=${1:?usage: scripts/make-docs.sh [--debug] OUT}
cd "$(dirname "$0")/.."
mkdir -p "$out/man/man1" "$out/bash-completion/completions" "$out/zsh/site-functions" "$out/fish/vendor_completions.d"
out=$(cd "$out" && pwd)
swift build -c "$configuration" --product dmirr >/dev/null
swift package --allow-writing-to-directory "$out/man/man1" generate-manual --multi-page --configuration "$configuration" \
    -o "$out/man/man1" >/dev/null
rm -f "$out/man/man1"/dmirr-sim*.1   # the simulator is a development tool, not installed
bin=$(swift build -c "$configuration" --show-bin-path)/dmirr
"$bin" --generate-completion-script bash >"$out/bash-completion/completions/dmirr"
"$bin" --generate-completion-script zsh >"$out/zsh/site-functions/_dmirr"
"$bin" --generate-completion-script fish >"$out/fish/vendor_completions.d/dmirr.fish"
echo "make-docs.sh: $(ls "$out/man/man1" | wc -l) man pages and 3 completion scripts in $out"

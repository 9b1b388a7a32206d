#!/usr/bin/env bash
# Installs dmirr on a Debian host: the binary, its man pages and shell completions, the `dmirr` system user, its
# directories, an example config and the systemd units. It starts nothing: edit the config, enrol the host
# (docs/operator-guide.md §2), then `systemctl enable --now dmirr-agent`.
#
# Usage: scripts/install.sh [--binary PATH] [--prefix DIR] [--destdir DIR] [--no-docs]
#   --binary PATH   install this dmirr (default: build one with `swift build -c release --static-swift-stdlib`)
#   --prefix DIR    default /usr/local (the units' ExecStart= expects /usr/local/bin/dmirr)
#   --destdir DIR   stage everything under DIR (packaging, tests): no user is created, systemd is not touched
#   --no-docs       skip the man pages and completions (they need the Swift toolchain and a build)
# Needs at run time: rsync, libsqlite3 and libxml2 (apt-get install rsync libsqlite3-0 libxml2).
set -euo pipefail
binary="" prefix=/usr/local destdir="" docs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --no-docs) docs=0; shift ;;
        *) echo "install.sh: unknown option $1 (see the comment at the top of this script)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or stage with --destdir DIR)" >&2
    exit 2
fi
if [ -z "$binary" ]; then
    swift build -c release --static-swift-stdlib --product dmirr
    binary=$(swift build -c release --static-swift-stdlib --show-bin-path)/dmirr
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 2; }
root=$destdir
install -d "$root$prefix/bin" "$root/etc/dmirr" "$root/etc/systemd/system"
install -m 0755 --strip "$binary" "$root$prefix/bin/dmirr"   # without debug info: 87 MiB rather than 184
if [ "$docs" = 1 ]; then
    scripts/make-docs.sh "$root$prefix/share"
fi

# The agent's user owns its state and, once you hand them over, the mirror tree and its key; nothing else.
owner=root
if [ -z "$destdir" ]; then
    if ! id dmirr >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/dmirr --no-create-home --shell /usr/sbin/nologin dmirr
    fi
    owner=dmirr
fi
install -d -m 0750 -o "$owner" -g "$owner" "$root/var/lib/dmirr"
install -d -m 0750 -o root -g "$owner" "$root/etc/dmirr/tls"
if [ ! -e "$root/etc/dmirr/dmirr.toml" ]; then
    install -m 0640 -o root -g "$owner" contrib/dmirr.toml.example "$root/etc/dmirr/dmirr.toml"
fi
for unit in dmirr-agent.service dmirr-sync@.service dmirr-sync@.timer; do
    install -m 0644 "contrib/$unit" "$root/etc/systemd/system/$unit"
done
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
cat <<NEXT
install.sh: dmirr $("$root$prefix/bin/dmirr" --version 2>/dev/null || echo "") installed under ${root:-/}
Next:
  1. Edit /etc/dmirr/dmirr.toml (node, fleet, [upstream] url, [mirror] path, [tls], [peers] seeds).
  2. Enrol this host: dmirr cert request --node NAME --out /etc/dmirr/tls, have the CA sign it (docs/operator-guide.md §2).
  3. Give the agent its tree: chown -R dmirr: /srv/mirror/… and set ReadWritePaths= in the unit to it.
  4. dmirr check -c /etc/dmirr/dmirr.toml && systemctl enable --now dmirr-agent
NEXT

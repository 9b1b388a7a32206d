#!/usr/bin/env bash
# Installs what dmirr's demo and tests need on Debian 12 (Swift itself must already be on PATH).
#   rsync        the transfer engine, and the daemons the demo and tests run
#   rpm          rpmbuild, to build real packages for test and demo repos
#   createrepo-c createrepo_c, to write their yum metadata
#   dnf          the real yum client the tests read mirrors with
#   libsqlite3-dev  GRDB links the system SQLite
#   sqlite3      the tests check the state file with the sqlite3 CLI
#   openssl      make-yum-repo.sh makes deterministic package payloads with it; PKI tests verify with it
#   protobuf-compiler  protoc, for scripts/gen-proto.sh (regenerating or checking the wire code)
#   gpg gpgv gpg-agent  signed-repodata tests sign and check repomd.xml.asc
#   systemd      systemd-analyze verifies the units in contrib/
#   curl         tests read the agent's HTTP listener with it
#   prometheus   promtool checks the agent's /metrics and contrib/alerts.yml
#   chromium     the fleet page is tested in a real headless browser, driven by Playwright (PyPI, below)
#   wrk          load generator for the mirrorlist/metalink throughput test and benchmark
#   util-linux   taskset pins the agent and the load to separate cores; mount makes the state campaign's tmpfs
#   iproute2     ip netns and tc: the fault campaigns run agents as separate hosts in network namespaces
#   faketime     the clock campaign runs one agent with its wall clock ten minutes off
#   binutils     fuzz.sh checks with nm and objdump that the fuzzers are built with AddressSanitizer and coverage
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    exec sudo "$0" "$@"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    rsync rpm createrepo-c dnf libsqlite3-dev sqlite3 openssl gzip bzip2 ca-certificates protobuf-compiler procps gpg gpgv gpg-agent systemd \
    curl prometheus chromium wrk util-linux iproute2 faketime binutils >/dev/null
# Playwright drives Debian's chromium (it downloads no browser of its own here). A python3 without pip gets Debian's.
python3 -m pip --version >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --break-system-packages 'playwright==1.65.2'
command -v swift >/dev/null || { echo "setup-debian.sh: swift is not on PATH; install Swift 6.2 or newer first" >&2; exit 1; }
echo "setup-debian.sh: rsync $(rsync --version | head -1 | awk '{print $3}'), createrepo_c $(createrepo_c --version | awk '{print $2}'), dnf $(dnf --version | head -1) ready"

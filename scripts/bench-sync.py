#!/usr/bin/env python3
"""Benchmarks of the one-mirror pipeline (docs/benchmarks.md), all against one real rsync daemon on loopback.

  1. Full sync of a real yum repo (default 2,000 packages x 256 KiB = ~520 MB, ~2,000 files):
     plain `rsync -aH --delete` vs `dmirr sync` with verify = none / metadata / packages, each into an empty
     directory, alternating, median of --runs.
  2. No-op check: the cron script's `rsync UPSTREAM/CURRENT` + compare vs `dmirr sync` when tokens match.
  3. Peak RSS of `dmirr sync` during the full sync (VmHWM of the dmirr process, sampled every 50 ms; rsync's own
     memory is not included, as it is the same for both).

Usage: scripts/bench-sync.py [--dmirr .build/release/dmirr] [--packages 2000] [--kb 256] [--runs 3] [--work DIR]
Needs: rsync, rpm, createrepo-c (scripts/setup-debian.sh), and a release build: swift build -c release.
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from benchlib import add_repo_args, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_REPO = os.path.join(ROOT, "Sources/DmirrFixtures/make-yum-repo.sh")


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"rsync daemon did not start on port {port}")


def timed(argv, sample_rss=False):
    """Runs argv; returns (seconds, peak VmHWM in KiB of that process or None, stderr)."""
    start = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = None
    while p.poll() is None:
        if sample_rss:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak = max(peak or 0, int(line.split()[1]))
            except OSError:
                pass
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    err = p.stderr.read().decode()
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({p.returncode}): {err}")
    return elapsed, peak, err


def verify_seconds(stderr):
    """dmirr logs `verify.seconds=S` on its "verified" line."""
    for line in stderr.splitlines():
        for field in line.split():
            if field.startswith("verify.seconds="):
                return float(field.split("=", 1)[1])
    return 0.0


def config(path, url, mirror, state, verify, bwlimit):
    args = f'rsync_args = ["--bwlimit={bwlimit}"]\n' if bwlimit else ""
    with open(path, "w") as f:
        f.write(f'node = "bench"\nfleet = "bench"\n[upstream]\nurl = "{url}"\n'
                f'[mirror]\npath = "{mirror}"\nverify = "{verify}"\n{args}[state]\ndir = "{state}"\n')


def main():
    ap = argparse.ArgumentParser()
    add_repo_args(ap)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--noop-runs", type=int, default=20)
    ap.add_argument("--bwlimit", type=int, default=0, help="KiB/s for every transfer (rsync --bwlimit), 0 = none")
    a = ap.parse_args()
    if not os.access(a.dmirr, os.X_OK):
        sys.exit(f"{a.dmirr} not found; build it with: swift build -c release")

    work = a.work or tempfile.mkdtemp(prefix="dmirr-bench-")
    os.makedirs(work, exist_ok=True)
    up = os.path.join(work, "upstream")
    daemon = None
    try:
        if not os.path.exists(os.path.join(up, "repodata/repomd.xml")):
            print(f"building {a.packages} packages of {a.kb} KiB with rpmbuild ...", flush=True)
            os.makedirs(os.path.join(up, "Packages"), exist_ok=True)
            specs = [f"bench{i:05d}:1.0:{a.kb}" for i in range(a.packages)]
            subprocess.run(["bash", MAKE_REPO, "build-rpms", os.path.join(up, "Packages")] + specs, check=True)
            subprocess.run(["bash", MAKE_REPO, "createrepo", up], check=True)
            with open(os.path.join(up, "CURRENT"), "w") as f:
                f.write("bench-1\n")
        files = sum(len(fs) for _, _, fs in os.walk(up))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(up) for f in fs)
        print(f"tree: {files} files, {size / 1e6:.0f} MB", flush=True)

        port = free_port()
        conf = os.path.join(work, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"use chroot = no\npid file = {work}/rsyncd.pid\nlock file = {work}/rsyncd.lock\n"
                    f"log file = {work}/rsyncd.log\ntimeout = 60\nuid = root\ngid = root\nreverse lookup = no\n"
                    f"[repo]\n    path = {up}\n    read only = yes\n")
        daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1",
                                   f"--port={port}"])
        wait_port(port)
        url = f"rsync://127.0.0.1:{port}/repo"

        results = {k: [] for k in ["rsync", "none", "metadata", "packages"]}
        verify = {k: [] for k in ["metadata", "packages"]}
        peaks = []
        bw = [f"--bwlimit={a.bwlimit}"] if a.bwlimit else []
        for run in range(a.runs):
            for kind in results:
                dest = os.path.join(work, f"m-{kind}")
                state = os.path.join(work, f"s-{kind}")
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(state, ignore_errors=True)
                os.sync()  # start every run with no dirty pages of the previous one still being written back
                if kind == "rsync":
                    t, _, _ = timed(["rsync", "-aH", "--delete"] + bw + [url + "/", dest + "/"])
                else:
                    cfg = os.path.join(work, f"{kind}.toml")
                    config(cfg, url, dest, state, kind, a.bwlimit)
                    t, peak, err = timed([a.dmirr, "sync", "-c", cfg], sample_rss=True)
                    peaks.append(peak)
                    if kind in verify:
                        verify[kind].append(verify_seconds(err))
                results[kind].append(t)
                print(f"  run {run + 1} {kind:9s} {t:7.2f} s", flush=True)

        # No-op: tokens match. Cron script: fetch CURRENT with rsync, compare with the local copy.
        noop_cron, noop_dmirr = [], []
        local = os.path.join(work, "m-metadata")
        cfg = os.path.join(work, "metadata.toml")
        tmp = os.path.join(work, "cron-CURRENT")
        for _ in range(a.noop_runs):
            t0 = time.perf_counter()
            subprocess.run(["rsync", "--contimeout=30", "--timeout=300", url + "/CURRENT", tmp], check=True)
            same = subprocess.run(["cmp", "-s", tmp, os.path.join(local, "CURRENT")]).returncode == 0
            noop_cron.append(time.perf_counter() - t0)
            assert same
            t, _, _ = timed([a.dmirr, "sync", "-c", cfg])
            noop_dmirr.append(t)

        med = {k: statistics.median(v) for k, v in results.items()}
        vmed = {k: statistics.median(v) for k, v in verify.items()}
        limit = f", --bwlimit={a.bwlimit} KiB/s" if a.bwlimit else ", no bandwidth limit"
        print(f"\n{a.packages} packages x {a.kb} KiB: {files} files, {size / 1e6:.0f} MB{limit}")
        print("\n| measurement | median | runs |")
        print("|---|---|---|")
        print(f"| plain `rsync -aH --delete` (fresh) | {med['rsync']:.2f} s | {', '.join(f'{x:.2f}' for x in results['rsync'])} |")
        for k in ["none", "metadata", "packages"]:
            print(f"| `dmirr sync`, verify = {k} (fresh) | {med[k]:.2f} s ({med[k] / med['rsync']:.2f}x) | "
                  f"{', '.join(f'{x:.2f}' for x in results[k])} |")
        for k in ["metadata", "packages"]:
            print(f"| `dmirr sync`, verify = {k}, without its verification step | {med[k] - vmed[k]:.2f} s "
                  f"({(med[k] - vmed[k]) / med['rsync']:.2f}x) | |")
            print(f"| verification step alone, verify = {k} | {vmed[k]:.2f} s | {', '.join(f'{x:.2f}' for x in verify[k])} |")
        print(f"| no-op: cron `rsync CURRENT` + cmp | {statistics.median(noop_cron) * 1000:.0f} ms | {a.noop_runs} runs |")
        print(f"| no-op: `dmirr sync` (up to date) | {statistics.median(noop_dmirr) * 1000:.0f} ms | {a.noop_runs} runs |")
        print(f"| peak RSS of `dmirr sync` (VmHWM, max over full syncs) | {max(p for p in peaks if p) / 1024:.1f} MiB | |")
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

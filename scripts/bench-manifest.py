#!/usr/bin/env python3
"""The cost of manifests (docs/benchmarks.md): how long `dmirr sync` spends listing and hashing the tree into
`.dmirr-manifest`, on a first sync and on a typical delta, and how big the manifest is.

Two trees, each served by a real `rsync --daemon` on loopback:
  1. a real yum repo built by rpmbuild + createrepo_c (default 2,000 packages x 256 KiB, 2,008 files); the delta is
     a push that adds --delta-add packages, removes --delta-remove, and regenerates the metadata;
  2. a synthetic tree of --files small files (default 100,000 x 1 KiB in 1,000 directories) plus CURRENT; the delta
     rewrites --delta-files of them (new content, new mtime).
For each: a first sync into an empty mirror, then the delta, each timed, with dmirr's own `manifest.*` log fields
(entries, files hashed, bytes hashed, files taken from the digest cache, seconds).

Usage: scripts/bench-manifest.py [--dmirr .build/release/dmirr] [--packages 2000] [--kb 256] [--files 100000]
                                 [--work DIR]
Needs: rsync, rpm, createrepo-c (scripts/setup-debian.sh), and a release build: swift build -c release.
"""
import argparse, os, random, re, shutil, subprocess, sys, tempfile, time
from benchlib import add_repo_args, free_port, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_REPO = os.path.join(ROOT, "Sources/DmirrFixtures/make-yum-repo.sh")


def daemon(work, modules):
    port = free_port()
    conf = os.path.join(work, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\npid file = {work}/rsyncd.pid\nlock file = {work}/rsyncd.lock\n"
                f"log file = {work}/rsyncd.log\ntimeout = 60\nuid = root\ngid = root\nreverse lookup = no\n")
        for name, path in modules.items():
            f.write(f"[{name}]\n    path = {path}\n    read only = yes\n")
    p = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1", f"--port={port}"])
    deadline = time.time() + 10
    while time.time() < deadline:
        if subprocess.run(["rsync", f"rsync://127.0.0.1:{port}/"], capture_output=True).returncode == 0:
            return p, port
        time.sleep(0.1)
    p.terminate()
    sys.exit("rsync daemon did not start")


def sync(dmirr, url, mirror, state, cfg):
    with open(cfg, "w") as f:
        f.write(f'node = "bench"\nfleet = "bench"\n[upstream]\nurl = "{url}"\n'
                f'[mirror]\npath = "{mirror}"\nverify = "metadata"\n[state]\ndir = "{state}"\n')
    os.sync()
    t0 = time.perf_counter()
    r = subprocess.run([dmirr, "sync", "-c", cfg], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"dmirr sync failed: {r.stderr}")
    fields = {}
    for line in r.stderr.splitlines():
        if " manifest." in line or line.find("manifest.root=") >= 0:
            for k, v in re.findall(r"(manifest\.[a-z_]+)=(\S+)", line):
                fields[k] = v
    return elapsed, fields


def row(label, elapsed, f, manifest_bytes):
    hashed_mb = int(f.get("manifest.hashed_bytes", 0)) / 1e6
    return (f"| {label} | {elapsed:.2f} s | {float(f.get('manifest.seconds', 0)):.2f} s | {f.get('manifest.entries')} | "
            f"{f.get('manifest.hashed')} ({hashed_mb:.0f} MB) | {f.get('manifest.cached')} | {manifest_bytes / 1e6:.2f} MB |")


def main():
    ap = argparse.ArgumentParser()
    add_repo_args(ap)
    ap.add_argument("--delta-add", type=int, default=20)
    ap.add_argument("--delta-remove", type=int, default=10)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--delta-files", type=int, default=200)
    a = ap.parse_args()
    if not os.access(a.dmirr, os.X_OK):
        sys.exit(f"{a.dmirr} not found; build it with: swift build -c release")
    work = a.work or tempfile.mkdtemp(prefix="dmirr-bench-manifest-")
    os.makedirs(work, exist_ok=True)
    yum, synth = os.path.join(work, "yum"), os.path.join(work, "synthetic")
    proc = None
    try:
        if not os.path.exists(os.path.join(yum, "repodata/repomd.xml")):
            print(f"building {a.packages} packages of {a.kb} KiB ...", flush=True)
            os.makedirs(os.path.join(yum, "Packages"), exist_ok=True)
            run(["bash", MAKE_REPO, "build-rpms", os.path.join(yum, "Packages")] + [f"bench{i:05d}:1.0:{a.kb}" for i in range(a.packages)])
            run(["bash", MAKE_REPO, "createrepo", yum])
        with open(os.path.join(yum, "CURRENT"), "w") as f:
            f.write("bench-1\n")
        if not os.path.exists(os.path.join(synth, "CURRENT")):
            print(f"writing {a.files} files ...", flush=True)
            rng = random.Random(1)
            for i in range(a.files):
                d = os.path.join(synth, f"d{i % 1000:03d}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
                    f.write(rng.randbytes(1024))
        with open(os.path.join(synth, "CURRENT"), "w") as f:
            f.write("synth-1\n")
        proc, port = daemon(work, {"yum": yum, "synth": synth})
        rows = []
        for name, tree in [("yum", yum), ("synth", synth)]:
            files = sum(len(fs) for _, _, fs in os.walk(tree))
            mirror, state = os.path.join(work, f"m-{name}"), os.path.join(work, f"s-{name}")
            shutil.rmtree(mirror, ignore_errors=True)
            shutil.rmtree(state, ignore_errors=True)
            url = f"rsync://127.0.0.1:{port}/{name}"
            cfg = os.path.join(work, f"{name}.toml")
            elapsed, f = sync(a.dmirr, url, mirror, state, cfg)
            size = os.path.getsize(os.path.join(mirror, ".dmirr-manifest"))
            rows.append(row(f"{name}: first sync ({files} files)", elapsed, f, size))
            # The delta.
            if name == "yum":
                pk = os.path.join(tree, "Packages")
                run(["bash", MAKE_REPO, "build-rpms", pk] + [f"delta{i:03d}:1.0:{a.kb}" for i in range(a.delta_add)])
                for old in sorted(os.listdir(pk))[:a.delta_remove]:
                    os.remove(os.path.join(pk, old))
                run(["bash", MAKE_REPO, "createrepo", tree])
                what = f"push: +{a.delta_add} packages, -{a.delta_remove}, new metadata"
            else:
                rng = random.Random(2)
                later = time.time() + 5
                for i in rng.sample(range(a.files), a.delta_files):
                    p = os.path.join(tree, f"d{i % 1000:03d}", f"f{i:06d}")
                    with open(p, "wb") as fh:
                        fh.write(rng.randbytes(1024))
                    os.utime(p, (later, later))
                what = f"{a.delta_files} files rewritten"
            with open(os.path.join(tree, "CURRENT"), "w") as fh:
                fh.write(f"{name}-2\n")
            elapsed, f = sync(a.dmirr, url, mirror, state, cfg)
            size = os.path.getsize(os.path.join(mirror, ".dmirr-manifest"))
            rows.append(row(f"{name}: delta ({what})", elapsed, f, size))
        print("\n| sync | `dmirr sync` total | manifest step | entries | files hashed | from the cache | manifest size |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(r)
    finally:
        if proc:
            proc.terminate()
            proc.wait()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

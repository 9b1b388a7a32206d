#!/usr/bin/env python3
"""Real fleet against the cron script it replaces (docs/benchmarks.md): one upstream push, taken by 8 real
`dmirr agent`s and, in the same run, by 8 copies of today's cron job, on identical trees.

The cron job is the one docs/design.md §1 describes, run as a loop: at the mirror's own minute and then every hour, take a
lock (flock), fetch upstream's CURRENT, stop when it equals ours, else `sleep $RANDOM % 3000` and
`rsync -aH --numeric-ids --delete --delete-after --delay-updates`. Time is scaled down by --scale (60: an hour becomes
60 s and the sleep at most 50 s); dmirr's poll is scaled the same way (60 s becomes 1 s). Transfers are not scaled:
every mirror downloads at --bwlimit KB/s, upstream's rsync daemon has `max connections = 2` and the fleet has
`[upstream] slots = 2`. The two fleets run one after the other, each against its own copy of the same upstream
(so that neither takes the other's connections), and each mirror starts holding push-1.

Reported per system: seconds after the push until 50 / 90 / 100 % of the mirrors hold push-2 (their CURRENT, with the
tree checked against upstream at the end), the most tree pulls upstream's daemon served at once (its log), the bytes it
sent, and the connections it refused.

Usage: scripts/bench-cron.py [--dmirr .build/release/dmirr] [--mirrors 8] [--scale 60] [--bwlimit 2000] [--seed 1]
"""
import argparse, datetime, filecmp, math, json, os, random, re, shutil, signal, socket, subprocess, sys, tempfile, time
from benchlib import free_port, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_REPO = os.path.join(ROOT, "Sources/DmirrFixtures/make-yum-repo.sh")

CRON_JOB = r"""#!/bin/bash
# One mirror's hourly cron job, looped: the lock, the token check, the random sleep, the rsync.
# usage: cron-job.sh UPSTREAM MIRROR PERIOD MAXSLEEP OFFSET BWLIMIT LOG
UPSTREAM=$1 MIRROR=$2 PERIOD=$3 MAXSLEEP=$4 OFFSET=$5 BW=$6 LOG=$7
sleep "$OFFSET"
while true; do
  (
    flock -n 9 || exit 0
    tmp=$(mktemp)
    rsync --no-motd "$UPSTREAM/CURRENT" "$tmp" 2>/dev/null || { rm -f "$tmp"; exit 0; }
    if cmp -s "$tmp" "$MIRROR/CURRENT"; then rm -f "$tmp"; exit 0; fi
    rm -f "$tmp"
    sleep $(( RANDOM % MAXSLEEP ))
    rsync -aH --numeric-ids --delete --delete-after --delay-updates --bwlimit="$BW" "$UPSTREAM/" "$MIRROR/" 2>/dev/null
    echo "$(date +%s.%N) rsync exit $?" >> "$LOG"
  ) 9>"$MIRROR.lock" &
  sleep "$PERIOD"
done
"""


def start_daemon(work, name, modules):
    """An rsync daemon on a free loopback port; modules: {module: (path, max_connections)}."""
    port = free_port()
    conf = f"{work}/{name}.conf"
    text = (f"use chroot = no\npid file = {work}/{name}.pid\nlock file = {work}/{name}.lock\nlog file = {work}/{name}.log\n"
            f"timeout = 60\nuid = root\ngid = root\nreverse lookup = no\n")
    for module, (path, limit) in modules.items():
        text += f"[{module}]\n    path = {path}\n    read only = yes\n    max connections = {limit}\n"
    open(conf, "w").write(text)
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1", f"--port={port}"],
                            start_new_session=True)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return port, proc
        except OSError:
            time.sleep(0.05)
    sys.exit(f"rsync daemon {name} did not start")


def daemon_log(path, since):
    """(peak concurrent tree pulls, bytes sent, refusals) from an rsync daemon log, counting sessions from `since`."""
    sessions, opened, sent, refused = [], {}, 0, 0
    for line in open(path):
        m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[(\d+)\] (.*)", line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").timestamp()
        pid, text = m.group(2), m.group(3)
        if at < since - 1:
            continue
        if "max connections" in text:
            refused += 1
        elif text.startswith("rsync on "):
            opened[pid] = (text[len("rsync on "):text.index(" from ")], at)
        elif text.startswith("sent ") and pid in opened:
            request, started = opened.pop(pid)
            sent += int(re.match(r"sent (\d+) bytes", text).group(1))
            if any(not r.endswith("/CURRENT") for r in request.split()):
                sessions.append((started, at))
    edges = sorted([(s, 1) for s, _ in sessions] + [(e, -1) for _, e in sessions], key=lambda x: (x[0], x[1]))
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak, sent, refused


def quantiles(times, n):
    times = sorted(times)
    def q(f):
        k = math.ceil(f * n)
        return times[k - 1] if k <= len(times) else None
    return q(0.5), q(0.9), q(1.0)


def watch(mirrors, pushed, limit):
    """Seconds after `pushed` at which each mirror's CURRENT read push-2 (polled every 0.2 s)."""
    reached = {}
    while len(reached) < len(mirrors) and time.time() - pushed < limit:
        for name, path in mirrors.items():
            if name not in reached:
                try:
                    if open(f"{path}/CURRENT").read().strip() == "push-2":
                        reached[name] = time.time() - pushed
                except OSError:
                    pass
        time.sleep(0.2)
    return reached


def same_tree(a, b):
    # dmirr's own manifest is not upstream content: a dmirr mirror writes one at its root, upstream has none.
    cmp = filecmp.dircmp(a, b, ignore=filecmp.DEFAULT_IGNORES + [".dmirr-manifest"])
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


def push(tree):
    run(["bash", MAKE_REPO, "build-rpms", f"{tree}/Packages"] + [f"delta{i}:1.0:2048" for i in range(4)])
    for old in ["base0-1.0-1.noarch.rpm", "base1-1.0-1.noarch.rpm"]:
        os.remove(f"{tree}/Packages/{old}")
    run(["bash", MAKE_REPO, "createrepo", tree])
    with open(f"{tree}/CURRENT", "w") as f:
        f.write("push-2\n")


def age(tree, seconds=3600):
    """Dates every file of `tree` `seconds` back. "push-2\n" has the size of "push-1\n" (and a regenerated metadata
    file may keep its size): a push written within the same second as the base tree would look unchanged to rsync's
    quick check (size and whole-second mtime), and the cron mirrors would never take it. A real upstream's pushes are
    far more than a second apart; an hour-old base tree makes that so here, for every file."""
    for directory, dirs, files in os.walk(tree):
        for name in files + dirs:
            os.utime(os.path.join(directory, name), (time.time() - seconds,) * 2, follow_symlinks=False)
    os.utime(tree, (time.time() - seconds,) * 2)


def finished(system, reached, names, detail):
    """Exits, naming what is missing, unless every mirror of `system` took the push: a comparison with a side that
    did not finish is not a result."""
    missing = [n for n in names if n not in reached]
    if missing:
        sys.exit(f"bench-cron: {system}: {len(missing)} of {len(names)} mirrors never took push-2 ({', '.join(missing)}); "
                 f"no table printed.\n{detail}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dmirr", default=os.path.join(ROOT, ".build/release/dmirr"))
    ap.add_argument("--mirrors", type=int, default=8)
    ap.add_argument("--scale", type=float, default=60, help="an hour of cron time becomes 3600/scale seconds")
    ap.add_argument("--bwlimit", type=int, default=2000, help="each mirror's download rate, KB/s")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    random.seed(a.seed)
    period, maxsleep = 3600 / a.scale, max(1, int(3000 / a.scale))
    limit = 4 * period + 120
    work = tempfile.mkdtemp(prefix="dmirr-cron-bench-")
    procs = []
    results = {}
    try:
        base = f"{work}/base"
        os.makedirs(f"{base}/Packages")
        run(["bash", MAKE_REPO, "build-rpms", f"{base}/Packages"] + [f"base{i}:1.0:512" for i in range(16)])
        run(["bash", MAKE_REPO, "createrepo", base])
        open(f"{base}/CURRENT", "w").write("push-1\n")
        age(base)
        names = [f"m{i}" for i in range(a.mirrors)]

        # --- cron ---
        cron = f"{work}/cron"
        os.makedirs(cron)
        shutil.copytree(base, f"{cron}/upstream", symlinks=True)
        port, daemon = start_daemon(cron, "upstream", {"repo": (f"{cron}/upstream", 2)})
        procs.append(daemon)
        job = f"{cron}/cron-job.sh"
        open(job, "w").write(CRON_JOB)
        mirrors = {}
        for n in names:
            mirrors[n] = f"{cron}/mirror-{n}"
            shutil.copytree(base, mirrors[n], symlinks=True)
        push(f"{cron}/upstream")
        pushed = time.time()
        for n in names:
            # Each mirror's own minute: where in the hour its job runs, relative to the push.
            offset = random.uniform(0, period)
            procs.append(subprocess.Popen(["bash", job, f"rsync://127.0.0.1:{port}/repo", mirrors[n], str(period),
                                           str(maxsleep), f"{offset:.2f}", str(a.bwlimit), f"{cron}/{n}.log"],
                                          start_new_session=True))
        reached = watch(mirrors, pushed, limit)
        time.sleep(2)  # let --delay-updates finish the last renames
        ok = len(reached) == len(mirrors) and all(same_tree(f"{cron}/upstream", mirrors[n]) for n in mirrors)
        for p in procs[1:]:
            os.killpg(p.pid, signal.SIGKILL)
        results["cron"] = (reached, daemon_log(f"{cron}/upstream.log", pushed), ok)
        print(f"cron: {len(reached)} of {len(names)} mirrors took push-2", flush=True)
        finished("cron", reached, names, "".join(f"--- {n}\n" + (open(f"{cron}/{n}.log").read() if os.path.exists(f"{cron}/{n}.log") else "(no rsync run)\n")
                                                for n in names if n not in reached))

        # --- dmirr ---
        fleet = f"{work}/dmirr"
        os.makedirs(fleet)
        shutil.copytree(base, f"{fleet}/upstream", symlinks=True)
        port, daemon = start_daemon(fleet, "upstream", {"repo": (f"{fleet}/upstream", 2)})
        procs.append(daemon)
        run([a.dmirr, "cert", "ca", "--fleet", "bench", "--out", f"{fleet}/ca"])
        peer_ports = {n: free_port() for n in names}
        mirrors = {n: f"{fleet}/mirror-{n}" for n in names}
        poll = max(1, round(60 / a.scale))
        for i, n in enumerate(names):
            shutil.copytree(base, mirrors[n], symlinks=True)
            sport, sproc = start_daemon(fleet, f"rsyncd-{n}", {"mirror": (mirrors[n], 2)})
            procs.append(sproc)
            run([a.dmirr, "cert", "issue", "--ca", f"{fleet}/ca", "--node", n, "--out", f"{fleet}/certs"])
            seed = names[(i - 1) % len(names)]
            open(f"{fleet}/{n}.toml", "w").write(f"""node = "{n}"
fleet = "bench"
[upstream]
url = "rsync://127.0.0.1:{port}/repo"
poll = "{poll}s"
slots = 2
[mirror]
path = "{mirrors[n]}"
rsync_url = "rsync://127.0.0.1:{sport}/mirror"
serve_slots = 2
rsync_args = ["--bwlimit={a.bwlimit}"]
[listen]
peer = "127.0.0.1:{peer_ports[n]}"
[tls]
ca = "{fleet}/ca/ca.pem"
cert = "{fleet}/certs/{n}.pem"
key = "{fleet}/certs/{n}.key"
[peers]
seeds = ["127.0.0.1:{peer_ports[seed]}"]
gossip = "200ms"
[state]
dir = "{fleet}/state-{n}"
""")
        for n in names:
            procs.append(subprocess.Popen([a.dmirr, "agent", "-c", f"{fleet}/{n}.toml"], stdout=subprocess.DEVNULL,
                                          stderr=open(f"{fleet}/{n}.log", "w"), start_new_session=True))

        def settled():
            for n in names:
                r = subprocess.run([a.dmirr, "status", "-c", f"{fleet}/{n}.toml", "--json"], capture_output=True, text=True, timeout=10)
                try:
                    s = json.loads(r.stdout)
                except ValueError:
                    return False
                if len(s["members"]) != len(names) or not all(m["state"] == "in_sync" and m["token"] == "push-1" for m in s["members"]):
                    return False
            return True
        deadline = time.time() + 120
        while not settled():
            if time.time() > deadline:
                r = subprocess.run([a.dmirr, "status", "-c", f"{fleet}/{names[0]}.toml"], capture_output=True, text=True)
                sys.exit(f"the dmirr fleet did not settle on push-1:\n{r.stdout}{r.stderr}\n"
                         + open(f"{fleet}/{names[0]}.log").read()[-3000:])
            time.sleep(0.5)
        time.sleep(2)
        push(f"{fleet}/upstream")
        pushed = time.time()
        reached = watch(mirrors, pushed, limit)
        time.sleep(2)
        ok = len(reached) == len(mirrors) and all(same_tree(f"{fleet}/upstream", mirrors[n]) for n in mirrors)
        sources = {"upstream": 0, "peer": 0}
        for n in names:
            r = subprocess.run([a.dmirr, "history", "-c", f"{fleet}/{n}.toml", "--json"], capture_output=True, text=True)
            for row in json.loads(r.stdout or "[]"):
                if row["token"] == "push-2" and row["outcome"] == "synced":
                    sources["upstream" if row["source"] == "upstream" else "peer"] += 1
        results["dmirr"] = (reached, daemon_log(f"{fleet}/upstream.log", pushed), ok)
        print(f"dmirr: {len(reached)} of {len(names)} mirrors took push-2 ({sources['upstream']} from upstream, "
              f"{sources['peer']} from peers)", flush=True)
        finished("dmirr", reached, names, "".join(f"--- {n}\n" + open(f"{fleet}/{n}.log").read()[-2000:] for n in names if n not in reached))
        for system, (_, _, equal) in results.items():
            if not equal:
                sys.exit(f"bench-cron: {system}: a mirror's tree differs from upstream's after the push; no table printed")

        print(f"\n{a.mirrors} mirrors, time scale 1/{a.scale:g} (cron period {period:g} s, sleep < {maxsleep} s; dmirr poll "
              f"{poll} s), {a.bwlimit} KB/s per mirror, upstream max connections 2, push of 8 MB\n")
        print("| system | t50 / t90 / t100 after the push | peak upstream tree pulls | upstream sent | refused | trees equal upstream |")
        print("|---|---|---|---|---|---|")
        for system, (reached, (peak, sent, refused), ok) in results.items():
            t = quantiles(list(reached.values()), a.mirrors)
            show = " / ".join("never" if x is None else f"{x:.1f}" for x in t)
            print(f"| {system} | {show} s | {peak} | {sent / 1e6:.1f} MB | {refused} | {'yes' if ok else 'NO'} |")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # every child leads its own process group
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

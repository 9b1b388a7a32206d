#!/usr/bin/env python3
"""Fleet benchmark (docs/benchmarks.md): N real `dmirr agent` processes on loopback, one real rsync daemon upstream.

Measures: time until every agent's status lists all N members; time from an upstream push until every agent reports
in_sync with the new token; then, idle, per agent: gossip bytes/s and messages-equivalent (TCP payload bytes on the
peer sockets, TLS included, from `ss -tin` bytes_acked over a window), RSS (VmRSS) and CPU (utime+stime).

Usage: scripts/bench-fleet.py [--dmirr .build/release/dmirr] [--agents 20] [--gossip 1s] [--window 60]
                              [--http] [--scrapes 200] [--screenshot FILE] [--lists]
With --http every agent also runs its HTTP listener (`[listen] metrics`), and after the idle window the benchmark
scrapes one agent's /metrics and /status.json `--scrapes` times each (a new connection each, as a scraper without
keep-alive does): latency percentiles and the agent's CPU per scrape. --screenshot saves the fleet page (needs
Playwright and Debian's chromium).
With --lists (implies --http) every mirror has a `public_url`, and from the push on the benchmark asks one agent's
/mirrorlist every 50 ms: for each mirror, the time from its publishing the push (`finished_at` in its history) to its
first appearance in a list of push-2 (the answer's `X-Dmirr-Token` header says which token a list is of).
(The window should cover a record refresh, the larger of down_after / 2 and 2 s per member: 40 s for 20 agents with
the default down_after, or it under-counts gossip.)
"""
import argparse, datetime, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request
from benchlib import free_port, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_REPO = os.path.join(ROOT, "Sources/DmirrFixtures/make-yum-repo.sh")


def status(dmirr, cfg):
    r = subprocess.run([dmirr, "status", "-c", cfg, "--json"], capture_output=True, text=True, timeout=10)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def wait(predicate, seconds):
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.2)
    return None


def peer_sockets(ports):
    """bytes_acked (bytes this end sent and the other acknowledged) of every established TCP socket whose local port
    is an agent's peer port or that connects to one, keyed by its address pair."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True, text=True).stdout
    sockets, lines = {}, out.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*\S+\s+\S+\s+(\S+:(\d+))\s+(\S+:(\d+))", line)
        if not m or (int(m.group(2)) not in ports and int(m.group(4)) not in ports):
            continue
        info = lines[i + 1] if i + 1 < len(lines) else ""
        b = re.search(r"bytes_acked:(\d+)", info)
        sockets[(m.group(1), m.group(3))] = int(b.group(1)) if b else 0
    return sockets


def sent_during(ports, seconds):
    """Bytes the peer sockets sent during `seconds`, sampled every second: links rotate, so sockets open and close
    inside the window (a socket's last second before it closes is not counted)."""
    first = peer_sockets(ports)
    last = dict(first)
    for _ in range(seconds):
        time.sleep(1)
        last.update(peer_sockets(ports))
    return sum(v - first.get(k, 0) for k, v in last.items())


def proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        status = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmRSS:", "RssAnon:", "RssFile:"))}
    return cpu, int(status["VmRSS"]), int(status["RssAnon"]), int(status["RssFile"])


def scrape(a, pid, port):
    """Latency of /metrics and /status.json on one agent, and that agent's CPU per scrape."""
    print(f"\n| scrape of one agent of {a.agents}, {a.scrapes} requests each | median | p95 | max | agent CPU per scrape | body |\n|---|---|---|---|---|---|")
    for path in ["/metrics", "/status.json"]:
        url = f"http://127.0.0.1:{port}{path}"
        times, size = [], 0
        c0 = proc_stats(pid)[0]
        for _ in range(a.scrapes):
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=10) as r:
                size = len(r.read())
            times.append((time.perf_counter() - t) * 1000)
        c1 = proc_stats(pid)[0]
        times.sort()
        print(f"| `{path}` | {statistics.median(times):.2f} ms | {times[int(len(times) * 0.95) - 1]:.2f} ms | {times[-1]:.2f} ms | "
              f"{(c1 - c0) / a.scrapes * 1000:.2f} ms | {size} B |", flush=True)
    if a.screenshot:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            for width, suffix in [(1100, ""), (390, "-phone")]:
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_timeout(2500)
                base, ext = os.path.splitext(a.screenshot)
                page.screenshot(path=f"{base}{suffix}{ext}", full_page=True)
            browser.close()


class ListWatcher(threading.Thread):
    """Asks one agent's /mirrorlist every 50 ms; records when each URL first appears in a list of `token`."""

    def __init__(self, port, token, expected, seconds=180):
        super().__init__(daemon=True)
        self.url, self.token, self.expected, self.seconds = f"http://127.0.0.1:{port}/mirrorlist?path=", token, set(expected), seconds
        self.first_seen, self.requests, self.errors = {}, 0, 0

    def run(self):
        end = time.time() + self.seconds
        while time.time() < end and set(self.first_seen) != self.expected:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    body, token = r.read().decode(), r.headers.get("X-Dmirr-Token")
                self.requests += 1
                now = time.time()
                if token == self.token:
                    for line in body.splitlines():
                        if line and not line.startswith("#"):
                            self.first_seen.setdefault(line, now)
            except OSError:
                self.errors += 1
            time.sleep(0.05)


def published_at(dmirr, cfg, token):
    """When this mirror finished its pull of `token` (its history's `finished_at`, Unix seconds), or None."""
    r = subprocess.run([dmirr, "history", "-c", cfg, "--json"], capture_output=True, text=True)
    for row in json.loads(r.stdout or "[]"):
        if row["token"] == token and row["outcome"] == "synced" and row.get("finished_at"):
            return datetime.datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00")).timestamp()
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dmirr", default=os.path.join(ROOT, ".build/release/dmirr"))
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--gossip", default="1s")
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--http", action="store_true")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--screenshot")
    ap.add_argument("--lists", action="store_true")
    a = ap.parse_args()
    a.http = a.http or a.lists
    work = tempfile.mkdtemp(prefix="dmirr-fleet-bench-")
    procs, daemon, serving = {}, None, {}
    try:
        up = os.path.join(work, "upstream")
        os.makedirs(os.path.join(up, "Packages"))
        run(["bash", MAKE_REPO, "build-rpms", os.path.join(up, "Packages"), "alpha:1.0:64", "beta:1.0:64"])
        run(["bash", MAKE_REPO, "createrepo", up])
        open(os.path.join(up, "CURRENT"), "w").write("push-1\n")
        port = free_port()
        conf = os.path.join(work, "rsyncd.conf")
        open(conf, "w").write(f"use chroot = no\npid file = {work}/rsyncd.pid\nlock file = {work}/rsyncd.lock\n"
                              f"timeout = 60\nuid = root\ngid = root\nreverse lookup = no\n"
                              f"[repo]\n    path = {up}\n    read only = yes\n")
        daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", "--address=127.0.0.1", f"--port={port}"])
        run([a.dmirr, "cert", "ca", "--fleet", "bench", "--out", f"{work}/ca"])
        names = [f"m{i:02d}" for i in range(a.agents)]
        ports = {n: free_port() for n in names}
        http = {n: free_port() for n in names} if a.http else {}
        for n in names:
            # Each agent serves its mirror to peers through its own rsync daemon (max connections = serve_slots).
            os.makedirs(f"{work}/mirror-{n}", exist_ok=True)
            sport = free_port()
            sconf = f"{work}/rsyncd-{n}.conf"
            open(sconf, "w").write(f"use chroot = no\npid file = {work}/rsyncd-{n}.pid\nlock file = {work}/rsyncd-{n}.lock\n"
                                   f"timeout = 60\nuid = root\ngid = root\nreverse lookup = no\n"
                                   f"[mirror]\n    path = {work}/mirror-{n}\n    read only = yes\n    max connections = 2\n")
            serving[n] = (sport, subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={sconf}",
                                                   "--address=127.0.0.1", f"--port={sport}"]))
        for i, n in enumerate(names):
            run([a.dmirr, "cert", "issue", "--ca", f"{work}/ca", "--node", n, "--out", f"{work}/certs"])
            seed = names[(i - 1) % len(names)]
            metrics_line = f'\nmetrics = "127.0.0.1:{http[n]}"' if a.http else ""
            # The watcher polls 20 times a second from one address: past the default per-client limit.
            metrics_line += "\nclient_rate = 0" if a.lists else ""
            public = f'\npublic_url = "http://{n}.mirror.test"' if a.lists else ""
            cfg = f"""node = "{n}"\nfleet = "bench"\n[upstream]\nurl = "rsync://127.0.0.1:{port}/repo"\npoll = "2s"
[mirror]\npath = "{work}/mirror-{n}"\nrsync_url = "rsync://127.0.0.1:{serving[n][0]}/mirror"\nserve_slots = 2{public}\n[listen]\npeer = "127.0.0.1:{ports[n]}"{metrics_line}
[tls]\nca = "{work}/ca/ca.pem"\ncert = "{work}/certs/{n}.pem"\nkey = "{work}/certs/{n}.key"
[peers]\nseeds = ["127.0.0.1:{ports[seed]}"]\ngossip = "{a.gossip}"\n[state]\ndir = "{work}/state-{n}"\n"""
            open(f"{work}/{n}.toml", "w").write(cfg)
        start = time.perf_counter()
        for n in names:
            procs[n] = subprocess.Popen([a.dmirr, "agent", "-c", f"{work}/{n}.toml"], stdout=subprocess.DEVNULL,
                                        stderr=open(f"{work}/{n}.log", "w"))

        def all_members():
            for n in names:
                s = status(a.dmirr, f"{work}/{n}.toml")
                if not s or len(s["members"]) != len(names):
                    return False
            return True

        def all_in_sync(token):
            for n in names:
                s = status(a.dmirr, f"{work}/{n}.toml")
                if not s or not all(m["state"] == "in_sync" and m["token"] == token for m in s["members"]) \
                        or len(s["members"]) != len(names):
                    return False
            return True

        def give_up(what):
            """A side that did not finish is not a result: exit naming it, with the first agent's view and log."""
            r = subprocess.run([a.dmirr, "status", "-c", f"{work}/{names[0]}.toml"], capture_output=True, text=True)
            sys.exit(f"bench-fleet: {what}; no table printed.\n{r.stdout}{r.stderr}\n" + open(f"{work}/{names[0]}.log").read()[-3000:])

        t_members = wait(all_members, 120)
        if t_members is None:
            give_up(f"not every agent listed all {len(names)} members within 120 s")
        t_first = wait(lambda: all_in_sync("push-1"), 120)
        if t_first is None:
            give_up("the fleet did not reach push-1 within 120 s")
        print(f"membership converged: {t_members:.1f} s after start; all in_sync push-1: "
              f"{t_first + t_members:.1f} s after start", flush=True)
        run(["bash", MAKE_REPO, "build-rpms", os.path.join(up, "Packages"), "gamma:1.0:64"])
        run(["bash", MAKE_REPO, "createrepo", up])
        watcher = None
        if a.lists:
            watcher = ListWatcher(http[names[0]], "push-2", [f"http://{n}.mirror.test/" for n in names])
        pushed = time.time()
        open(os.path.join(up, "CURRENT"), "w").write("push-2\n")
        if watcher:
            watcher.start()
        t_push = wait(lambda: all_in_sync("push-2"), 120)
        if t_push is None:
            give_up("push-2 did not reach every agent within 120 s")
        print(f"push-2 on every agent: {t_push:.1f} s after the push (poll = 2s, upstream slots = 2, serve slots = 2)", flush=True)

        sources = {"upstream": 0, "peer": 0}
        for n in names:
            r = subprocess.run([a.dmirr, "history", "-c", f"{work}/{n}.toml", "--json"], capture_output=True, text=True)
            for run_ in json.loads(r.stdout or "[]"):
                if run_["token"] == "push-2" and run_["outcome"] == "synced":
                    sources["upstream" if run_["source"] == "upstream" else "peer"] += 1
        print(f"push-2 sources: {sources['upstream']} from upstream, {sources['peer']} from peers", flush=True)
        time.sleep(5)
        peer_ports = set(ports.values())
        s0 = {n: proc_stats(p.pid) for n, p in procs.items()}
        sent = sent_during(peer_ports, a.window)
        s1 = {n: proc_stats(p.pid) for n, p in procs.items()}
        cpu = [(s1[n][0] - s0[n][0]) / a.window * 100 for n in names]
        rss = [s1[n][1] / 1024 for n in names]
        anon = [s1[n][2] / 1024 for n in names]
        filebacked = [s1[n][3] / 1024 for n in names]
        print(f"\n| {a.agents} agents, gossip {a.gossip}, idle window {a.window} s | value |\n|---|---|")
        print(f"| membership converged (every status lists all) | {t_members:.1f} s |")
        print(f"| push reaches all (poll 2 s, upstream slots 2, serve slots 2) | {t_push:.1f} s |")
        print(f"| pulls of the push from upstream / from peers | {sources['upstream']} / {sources['peer']} |")
        print(f"| gossip bytes per agent per second (TCP payload incl. TLS, sent) | {sent / a.window / a.agents:.0f} B/s |")
        print(f"| idle RSS per agent: median / max | {statistics.median(rss):.1f} / {max(rss):.1f} MiB |")
        print(f"| of which anonymous (heap, stacks) / file-backed (code, shared) | {statistics.median(anon):.1f} / "
              f"{statistics.median(filebacked):.1f} MiB |")
        print(f"| idle CPU per agent: median / max | {statistics.median(cpu):.2f} / {max(cpu):.2f} % of a core |")
        if watcher:
            watcher.join()
            missing = watcher.expected - set(watcher.first_seen)
            if missing:
                sys.exit(f"bench-fleet: {len(missing)} mirrors never appeared in {names[0]}'s list of push-2: {sorted(missing)}")
            delays, seen = [], sorted(watcher.first_seen.values())
            for n in names:
                done = published_at(a.dmirr, f"{work}/{n}.toml", "push-2")
                if done is None:
                    sys.exit(f"bench-fleet: {n} has no synced run of push-2 in its history")
                delays.append(watcher.first_seen[f"http://{n}.mirror.test/"] - done)
            delays.sort()
            print(f"\n| {names[0]}'s /mirrorlist after the push (asked every 50 ms, {watcher.requests} answers) | value |\n|---|---|")
            print(f"| push → first mirror listed / all {len(names)} listed | {seen[0] - pushed:.1f} / {seen[-1] - pushed:.1f} s |")
            print(f"| a mirror publishes → listed: median / p95 / max | {statistics.median(delays):.2f} / "
                  f"{delays[max(0, int(len(delays) * 0.95) - 1)]:.2f} / {delays[-1]:.2f} s |", flush=True)
        if a.http:
            scrape(a, procs[names[0]].pid, http[names[0]])
        logs = "".join(open(f"{work}/{n}.log").read() for n in names)
        print(f"| peer links rotated / false suspicions (whole run) | {logs.count('rotated a peer link')} / "
              f"{logs.count('member.liveness=suspect')} |")
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for _, p in serving.values():
            p.terminate()
            p.wait()
        if daemon:
            daemon.terminate()
            daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Helpers the benchmark scripts share (imported from the scripts' own directory)."""
import os, random, socket, subprocess, sys


_handed_out = set()


def free_port():
    """A loopback port that is free now, below the kernel's ephemeral range (32768 and up), so no process's outgoing
    connection can take it before the server it is for binds it, and never the same one twice in this process."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        _handed_out.add(port)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free loopback port between 20000 and 32000")


def add_repo_args(ap, packages=2000):
    """The arguments every benchmark of a built yum repo takes: the dmirr binary, the repo's size, a work directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--dmirr", default=os.path.join(root, ".build/release/dmirr"))
    ap.add_argument("--packages", type=int, default=packages)
    ap.add_argument("--kb", type=int, default=256)
    ap.add_argument("--work", default=None)


def run(argv, **kw):
    """Runs a command and returns its stdout; exits naming the command and its stderr if it fails."""
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {r.stderr}")
    return r.stdout

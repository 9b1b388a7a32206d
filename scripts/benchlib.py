"""Helpers the benchmark scripts share (imported from the scripts' own directory)."""
import os, socket, subprocess, sys


def free_port():
    """A loopback port that was free a moment ago (bound to 0, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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

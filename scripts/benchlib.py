"""Helpers the benchmark scripts share (imported from the scripts' own directory)."""
import socket, subprocess, sys


def free_port():
    """A loopback port that was free a moment ago (bound to 0, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(argv, **kw):
    """Runs a command and returns its stdout; exits naming the command and its stderr if it fails."""
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {r.stderr}")
    return r.stdout

"""Bounded traffic generators for the demo and the end-to-end test.

They run as separate processes of the system Python (stdlib only) so that a
sender can run as a slice's uid inside a namespace (``setpriv``); each stops by
itself after its byte or time bound.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import IO

from bwenforcer.files.tools import tool_path

# Discards whatever arrives on a TCP port (IPv4 and IPv6) until its time is up.
_SINK = """
import socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + seconds
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", port)); srv.listen(64); srv.settimeout(0.5)
def drain(conn):
    conn.settimeout(1.0)
    with conn:
        while time.monotonic() < deadline:
            try:
                if not conn.recv(1 << 16):
                    return
            except socket.timeout:
                continue
            except OSError:
                return
print("ready", flush=True)
while time.monotonic() < deadline:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
"""

# Sends up to max_bytes to host:port within seconds, paced to rate_bps if > 0.
_SENDER = """
import socket, sys, time
host, port, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seconds, rate_bps = float(sys.argv[4]), int(sys.argv[5])
start = time.monotonic(); deadline = start + seconds
chunk = b"x" * (16384 if rate_bps else 65536)
sent = 0
for _ in range(50):
    try:
        s = socket.create_connection((host, port), timeout=2); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("cannot connect")
s.settimeout(1.0)
while sent < max_bytes and time.monotonic() < deadline:
    if rate_bps and sent * 8 > rate_bps * (time.monotonic() - start):
        time.sleep(0.01); continue
    try:
        sent += s.send(chunk[: max_bytes - sent])
    except socket.timeout:
        continue
    except OSError as exc:
        sys.exit(f"sender {host}:{port}: {exc}")
try:  # wait until the sink has read everything, so no byte is left in flight
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    while s.recv(4096):
        pass
except OSError:
    pass
s.close()
"""


def system_python() -> str:
    """A Python any uid can execute (the venv's may live under /root)."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def in_cgroup(path: str | None) -> list[str]:
    """An argv prefix that moves the command into the cgroup directory ``path``.

    The shell joins before it execs the command, so every socket the command
    opens belongs to that cgroup (a socket keeps the cgroup it was created in).
    """
    if path is None:
        return []
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', path]


def _as_uid(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return [tool_path("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def start_sink(
    netns: str, port: int, seconds: float, cgroup: str | None = None, uid: int | None = None
) -> subprocess.Popen[str]:
    """Start a sink (in the cgroup directory ``cgroup``, as ``uid``, if given) and wait
    until it listens.
    """
    argv = [
        *in_cgroup(cgroup),
        *(tool_path("ip"), "netns", "exec", netns, *_as_uid(uid), system_python(), "-c", _SINK),
        *(str(port), str(seconds)),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def start_sender(
    netns: str,
    uid: int,
    host: str,
    port: int,
    *,
    max_bytes: int,
    seconds: float,
    rate_bps: int = 0,
    log: IO[bytes] | None = None,
    cgroup: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a sender as ``uid`` (in the cgroup directory ``cgroup`` if given); it stops
    by itself after its bounds. Errors go to ``log``.
    """
    argv = [
        *in_cgroup(cgroup),
        tool_path("ip"), "netns", "exec", netns,
        tool_path("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        system_python(), "-c", _SENDER,
        host, str(port), str(max_bytes), str(seconds), str(rate_bps),
    ]  # fmt: skip
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log if log is not None else subprocess.DEVNULL,
    )


# Serves downloads: every connection gets up to max_bytes within the time bound.
_SOURCE = """
import socket, sys, threading, time
port, max_bytes, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rate_bps = int(sys.argv[4])
deadline = time.monotonic() + seconds
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", port)); srv.listen(64); srv.settimeout(0.5)
chunk = b"x" * 65536
def serve(conn):
    conn.settimeout(1.0)
    sent = 0
    start = time.monotonic()
    with conn:
        while sent < max_bytes and time.monotonic() < deadline:
            if rate_bps:
                now = time.monotonic()
                ahead = sent * 8 - rate_bps * (now - start)
                if ahead > 0:
                    time.sleep(0.01); continue
                if ahead < -rate_bps / 4:  # held back (policed): no catching up afterwards
                    start = now - sent * 8 / rate_bps - 0.25
            try:
                sent += conn.send(chunk[: min(max_bytes - sent, 16384 if rate_bps else 65536)])
            except socket.timeout:
                continue
            except OSError:
                return
print("ready", flush=True)
while time.monotonic() < deadline:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# Downloads over nconns connections until each ends or the time is up; prints the
# bytes received.
_FETCH = """
import socket, sys, threading, time
host, port, nconns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + seconds
got = [0] * nconns
def fetch(i):
    for _ in range(50):
        try:
            s = socket.create_connection((host, port), timeout=2); break
        except OSError:
            time.sleep(0.1)
    else:
        return
    s.settimeout(0.5)
    with s:
        while time.monotonic() < deadline:
            try:
                data = s.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            got[i] += len(data)
threads = [threading.Thread(target=fetch, args=(i,)) for i in range(nconns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sum(got), flush=True)
"""


def start_source(
    netns: str, port: int, seconds: float, max_bytes: int, rate_bps: int = 0
) -> subprocess.Popen[str]:
    """Start a download server in ``netns`` (each connection gets up to ``max_bytes``
    within ``seconds``, at most ``rate_bps`` if given) and wait until it listens.
    """
    argv = [tool_path("ip"), "netns", "exec", netns, system_python(), "-c", _SOURCE]
    proc = subprocess.Popen(
        [*argv, str(port), str(max_bytes), str(seconds), str(rate_bps)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def start_fetch(
    netns: str,
    uid: int | None,
    host: str,
    port: int,
    *,
    conns: int = 1,
    seconds: float,
    cgroup: str | None = None,
) -> subprocess.Popen[str]:
    """Start ``conns`` downloads from ``host:port`` as ``uid`` (in the cgroup directory
    ``cgroup`` if given); they stop at the end of the data or after ``seconds``; the
    process prints the bytes received.
    """
    argv = [
        *in_cgroup(cgroup),
        *(tool_path("ip"), "netns", "exec", netns, *_as_uid(uid), system_python(), "-c"),
        *(_FETCH, host, str(port), str(conns), str(seconds)),
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

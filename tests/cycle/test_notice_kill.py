"""Early notices under `kill -9`: a real `bwenforcer sync` killed at random points while
it mails a real SMTP server (aiosmtpd) in its namespace; every notice arrives at most
once per period, class and share (docs/architecture.md "Notices").
"""

from __future__ import annotations

import email
import email.policy
import json
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from bwenforcer.store.state import StateStore
from tests.kernel_helpers import VENV_BIN, bwenforcer_in, mark_all_to
from tests.loopback import free_port
from tests.netns import Netns

pytestmark = pytest.mark.kernel

XIDS = (11, 12, 13)
# The server: every message a file of its own, written before the reply to the end of
# its DATA, which comes a little later (a kill then lands while the client waits).
SERVER = """
import asyncio, itertools, sys, pathlib
from aiosmtpd.controller import Controller

out = pathlib.Path(sys.argv[2])
counter = itertools.count()

class Keep:
    async def handle_DATA(self, server, session, envelope):
        (out / f"{next(counter):05d}.eml").write_bytes(envelope.content)
        await asyncio.sleep(0.03)
        return "250 OK"

controller = Controller(Keep(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"""
# <bwn.START.XID.WHAT.CLASSES.TAG@host>
MESSAGE_ID = re.compile(r"^<bwn\.(\d+)\.(\d+)\.([a-z0-9]+)\.([a-z-]+)\.[A-Za-z0-9_-]+@")


def _received(inbox: Path) -> list[tuple[int, int, str, str]]:
    """(period start, xid, kind+share, class) of every notice received, per class."""
    found = []
    for path in sorted(inbox.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        match = MESSAGE_ID.match(str(msg["Message-ID"]).strip())
        assert match, msg["Message-ID"]
        start, xid, what, classes = match.groups()
        found += [(int(start), int(xid), what, tc) for tc in classes.split("-")]
    return found


def test_notices_under_sync_killed_at_random_points_arrive_at_most_once(
    ns: Netns, tmp_path: Path
) -> None:
    port = free_port()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "server.py").write_text(SERVER)
    script = str(tmp_path / "server.py")
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, str(VENV_BIN / "python"), script, str(port), str(inbox)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        _run(ns, tmp_path, port, inbox)
    finally:
        server.kill()
        server.wait(timeout=10)


def _run(ns: Netns, tmp_path: Path, port: int, inbox: Path) -> None:
    (tmp_path / "slices.yaml").write_text(
        "slices:\n" + "".join(f"  - {{name: pl_s{x}, xid: {x}}}\n" for x in XIDS)
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 100mbit\nstate_file: {tmp_path}/state.json\n"
        f"slices_file: {tmp_path}/slices.yaml\nvanish_grace: 0s\nperiod: 6s\n"
        "metrics: {listen: null}\n"
        "defaults:\n"
        "  default: {limit: 60KiB, notices: '25%, 50%, 75%, lifted'}\n"
        "  exempt: {limit: 60KiB, notices: '50%, lifted'}\n"
        "mail: {transport: smtp, from: support@example.org, operators: [ops@example.org],\n"
        "       hostname: node1.example.org,\n"
        f"       smtp: {{host: 127.0.0.1, port: {port}, timeout: 5s}}}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    # each slice's classes get their own destination (a neighbour that never answers)
    ns.ip("addr", "add", "10.9.0.1/16", "dev", "v0")
    dests = []
    for x in XIDS:
        for net, tag in ((0, 0x1000), (1, 0x2000)):  # default, exempt
            addr = f"10.9.{net}.{x}"
            ns.ip("neigh", "add", addr, "lladdr", "02:00:00:00:00:02", "dev", "v0")
            mark_all_to(ns, addr, tag | x)
            dests.append(addr)
    burst = [
        str(VENV_BIN / "python"),
        "-c",
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for a in sys.argv[1:]:\n"
        "    for _ in range(10): s.sendto(bytes(1000), (a, 9))",
        *dests,
    ]
    sync = ["ip", "netns", "exec", ns.name, str(VENV_BIN / "bwenforcer"), "--config", str(cfg)]
    sync.append("sync")
    assert subprocess.run(sync, capture_output=True, check=False).returncode == 0
    start = time.monotonic()
    ns.run(*burst, timeout=30)
    assert subprocess.run(sync, capture_output=True, check=False).returncode in (0, 1)
    whole_s = time.monotonic() - start  # a run with notices to send, and a burst
    rng = random.Random(20)
    killed = 0
    for _ in range(45):
        proc = subprocess.Popen(sync, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 1.6) * whole_s)
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait(timeout=30)
        ns.run(*burst, timeout=30)
    assert killed >= 10  # most runs were really cut short
    for _ in range(2):  # clean runs: whatever is due is sent now
        done = bwenforcer_in(ns, "--config", str(cfg), "sync", "--json")
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mails_failed"] == 0

    got = _received(inbox)
    twice = [k for k, n in Counter(got).items() if n > 1]
    assert twice == []  # at most once per period, slice, class, kind and share
    kinds = Counter(what.rstrip("0123456789") for _, _, what, _ in got)
    assert kinds["threshold"] and kinds["share"] >= 6 and kinds["lifted"]  # a real test
    # and at least once: every notice the state says was sent this period arrived
    state = StateStore(f"{tmp_path}/state.json").load().state
    for x in XIDS:
        st = state.slices[x]
        for tc in ("default", "exempt"):
            cs = st.cls(tc)
            if cs.notified:
                assert (st.period_start_s, x, "threshold", tc) in got
            if cs.notice_bp:
                assert (st.period_start_s, x, f"share{cs.notice_bp}", tc) in got
            if cs.lift == "sent":
                assert (st.period_start_s, x, "lifted", tc) in got

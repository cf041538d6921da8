"""Helpers for tests that drive whole cycles on a namespace kernel."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from bwenforcer.core.units import parse_rate_bps
from bwenforcer.modes.traffic import start_sender, start_sink
from tests.netns import Netns, NetnsPair

VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
REPO = Path(__file__).resolve().parent.parent


class LogLines(logging.Handler):
    """Every log record of a process as ``(level, message)``, for a script's report."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))

    @classmethod
    def install(cls) -> LogLines:
        """Log INFO and up to stderr and into a new instance."""
        handler = cls()
        logging.basicConfig(level=logging.INFO)
        logging.getLogger().addHandler(handler)
        return handler


def bwenforcer_in(ns: Netns, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI inside a namespace, as an operator would."""
    return ns.run(str(VENV_BIN / "bwenforcer"), *args, check=False, timeout=timeout)


def mark_all_to(ns: Netns, daddr: str, mark: int) -> None:
    """Test-only marking: every connection from ``ns`` to ``daddr`` gets ``mark``."""
    script = f"""
table inet bwtest {{
  chain out {{
    type route hook output priority mangle; policy accept;
    ct mark == 0 ip daddr {daddr} ct mark set {mark:#x}
    meta mark set ct mark
  }}
}}
"""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "-f", "-"],
        input=script, text=True, capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def send_bytes(
    pair: NetnsPair, n_bytes: int, *, uid: int = 0, port: int = 5301, seconds: float = 10
) -> None:
    """Send ``n_bytes`` from a to b as ``uid`` and wait until the sender is done (bounded)."""
    sink = start_sink(pair.b.name, port, seconds + 2)
    try:
        sender = start_sender(
            pair.a.name, uid, pair.b_addr, port, max_bytes=n_bytes, seconds=seconds
        )
        sender.wait(timeout=seconds + 5)
    finally:
        sink.kill()
        sink.wait(timeout=5)


_CLASS = re.compile(r"class htb (1:[0-9a-f]+) (?:parent (1:[0-9a-f]+) )?.*?ceil (\S+)")


def tc_ceils(ns: Netns, dev: str) -> dict[str, int]:
    """``{classid: ceil bit/s}`` as `tc class show` prints it (the independent observer)."""
    out = ns.tc("class", "show", "dev", dev)
    return {m.group(1): parse_rate_bps(m.group(3)) for m in _CLASS.finditer(out)}


def tc_bytes(ns: Netns, dev: str, classid: str) -> int:
    """Sent bytes of one class as `tc -s class show` prints them."""
    out = ns.tc("-s", "class", "show", "dev", dev, "classid", classid)
    match = re.search(r"Sent (\d+) bytes", out)
    assert match, out
    return int(match.group(1))


_MARKED_SENDER = """
import socket
import sys
host, port, mark, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
for _ in range(count):
    s.sendto(b"x" * size, (host, port))
"""


def send_marked(ns: Netns, host: str, mark: int, count: int = 50, size: int = 1000) -> None:
    """``count`` UDP datagrams of ``size`` bytes from ``ns`` to ``host`` with skb mark
    ``mark`` (SO_MARK: the whole mark, as the node manager's ebtables rule sets it)."""
    ns.run(str(VENV_BIN / "python"), "-c", _MARKED_SENDER, host, "9", str(mark), str(count),
           str(size))  # fmt: skip

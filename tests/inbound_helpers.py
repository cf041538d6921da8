"""Namespaces, marking and bounded downloads for the inbound backend's kernel tests.

The node is namespace ``a`` (uid classifier, the inbound table on ``va``), the far
end ``b``. The far end's TCP sends wire-sized packets (``gso_max_segs 1``), so its
output counter towards ``a`` is the IP-layer byte count the inbound counters must
match: the reference.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bwenforcer.kernel.classifier import Classifier, ClassifierSpec
from bwenforcer.kernel.inbound import InboundBackend
from bwenforcer.modes.traffic import start_fetch, start_source
from tests.netns import NetnsPair, netns_pair

EXEMPT4 = "198.19.0.2"
EXEMPT6 = "2001:db8:e::2"
PREFIXES = ("198.19.0.0/16", "2001:db8:e::/64")


@dataclass
class Node:
    """The pair, the inbound backend on ``a`` and the slices the classifier marks."""

    pair: NetnsPair
    inbound: InboundBackend
    xids: tuple[int, ...]

    def reference_bytes(self) -> int:
        """IP-layer bytes ``b`` has sent to ``a`` (v4 and v6) so far."""
        out = self.pair.b.run("nft", "-j", "list", "table", "inet", "ref").stdout
        return sum(
            item["rule"]["expr"][-1]["counter"]["bytes"]
            for item in json.loads(out)["nftables"]
            if "rule" in item
        )

    def nft_objects(self) -> dict[str, dict]:
        """The inbound table's counters and limits as `nft -j` prints them (the
        independent observer of what nftobj decodes).
        """
        out = self.pair.a.run("nft", "-j", "list", "table", "inet", self.inbound.table).stdout
        found = {}
        for item in json.loads(out)["nftables"]:
            for kind in ("counter", "limit"):
                if kind in item:
                    found[item[kind]["name"]] = item[kind]
        return found

    def download(
        self, host: str, port: int, n_bytes: int, uid: int | None, cgroup: str | None = None
    ) -> int:
        """``n_bytes`` from ``b`` to ``a`` over a connection ``a`` opens as ``uid`` (in
        the cgroup directory ``cgroup``, if given); the bytes the application received.
        """
        source = start_source(self.pair.b.name, port, 20, n_bytes)
        try:
            fetch = start_fetch(self.pair.a.name, uid, host, port, seconds=15, cgroup=cgroup)
            out, _ = fetch.communicate(timeout=25)
        finally:
            source.kill()
            source.wait(timeout=5)
        return int(out.strip() or 0)


@contextmanager
def node(
    tag: str,
    xids: tuple[int, ...],
    mode: str = "uid",
    classify: Callable[[NetnsPair], object] | None = None,
) -> Iterator[Node]:
    """A pair with exempt addresses on ``b``, a classifier (by default the uid one,
    marking ``xids``) and the inbound table loaded on ``a``; everything deleted on
    every exit path.
    """
    with netns_pair(tag, extra_b_addrs=(f"{EXEMPT4}/32", f"{EXEMPT6}/128")) as pair:
        if classify is None:
            Classifier(netns=pair.a.name).apply(ClassifierSpec(xids, PREFIXES))
        else:
            classify(pair)
        pair.b.ip("link", "set", "vb", "gso_max_segs", "1")
        script = (
            "table inet ref {\n chain output {\n"
            "  type filter hook output priority 0; policy accept;\n"
            f"  ip daddr {pair.a_addr} counter\n  ip6 daddr {pair.a_addr6} counter\n }}\n}}\n"
        )
        _nft(pair.b.name, script)
        with InboundBackend("va", mode, PREFIXES, netns=pair.a.name) as inbound:
            inbound.ensure(xids)
            yield Node(pair, inbound, xids)


def _nft(netns: str, script: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=script, text=True, capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def average_bps(node_: Node, key: tuple[int, str], host: str, port: int, conns: int) -> float:
    """The class's inbound counter's average over 20 s of ``conns`` downloads from the
    start of the connections, in bit/s (the far end serves as fast as it can).
    """
    seconds = 20.0
    source = start_source(node_.pair.b.name, port, seconds + 8, 10**10)
    try:
        before = node_.inbound.dump().bytes_by_class[key]  # type: ignore[index]
        start = time.monotonic()
        fetch = start_fetch(node_.pair.a.name, key[0], host, port, conns=conns, seconds=seconds + 2)
        time.sleep(seconds - (time.monotonic() - start))
        after = node_.inbound.dump().bytes_by_class[key]  # type: ignore[index]
        elapsed = time.monotonic() - start
        fetch.communicate(timeout=15)
    finally:
        source.kill()
        source.wait(timeout=5)
    return (after - before) * 8 / elapsed

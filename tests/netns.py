"""Throwaway network namespaces for kernel tests and the demo's tests.

Every namespace this module creates carries the run's unique prefix and is
deleted on every exit path (context managers, plus a session-end sweep in
conftest). Addresses come from 198.18.0.0/15 and 2001:db8::/32, ranges reserved
for benchmarking and documentation, and exist only inside these namespaces.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

RUN_PREFIX = f"bwet{os.getpid() % 100000}{secrets.token_hex(2)}"
_counter = itertools.count()


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text; raise with its stderr on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Netns:
    """A namespace created by this test run."""

    name: str

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace."""
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NS args``."""
        return sh("ip", "-n", self.name, *args)

    def tc(self, *args: str) -> str:
        """``tc -n NS args`` output (the independent observer of the kernel)."""
        return sh("tc", "-n", self.name, *args).stdout


def _unique(tag: str) -> str:
    return f"{RUN_PREFIX}-{tag}{next(_counter)}"[:40]


def _delete(name: str) -> None:
    # kill anything left running inside, then the namespace itself
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        sh("kill", "-9", pid, check=False)
    sh("ip", "netns", "delete", name, check=False)


@contextmanager
def netns_with_veth(tag: str = "ns") -> Iterator[Netns]:
    """One namespace holding a veth pair ``v0``/``v1``, both up; HTB goes on ``v0``."""
    name = _unique(tag)
    sh("ip", "netns", "add", name)
    try:
        ns = Netns(name)
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.ip("link", "set", "v0", "up")
        ns.ip("link", "set", "v1", "up")
        yield ns
    finally:
        _delete(name)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (dev ``va``) and ``b`` (dev ``vb``)."""

    a: Netns
    b: Netns
    a_addr: str = "198.18.0.1"
    b_addr: str = "198.18.0.2"
    a_addr6: str = "2001:db8:b0e::1"
    b_addr6: str = "2001:db8:b0e::2"


@contextmanager
def netns_pair(tag: str = "pair", extra_b_addrs: Sequence[str] = ()) -> Iterator[NetnsPair]:
    """Two namespaces joined by veth, with IPv4 and IPv6 addresses; HTB goes on ``va``.

    ``extra_b_addrs`` are further CIDRs put on ``vb`` (e.g. an "exempt" destination).
    """
    name_a, name_b = _unique(f"{tag}a"), _unique(f"{tag}b")
    created = []
    try:
        for name in (name_a, name_b):
            sh("ip", "netns", "add", name)
            created.append(name)
        a, b = Netns(name_a), Netns(name_b)
        pair = NetnsPair(a, b)
        sh(
            "ip",
            "link",
            "add",
            "va",
            "netns",
            name_a,
            "type",
            "veth",
            "peer",
            "vb",
            "netns",
            name_b,
        )
        for ns, dev, addr, addr6 in (
            (a, "va", pair.a_addr, pair.a_addr6),
            (b, "vb", pair.b_addr, pair.b_addr6),
        ):
            ns.ip("link", "set", "lo", "up")
            ns.ip("addr", "add", f"{addr}/24", "dev", dev)
            ns.ip("-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            ns.ip("link", "set", dev, "up")
        for cidr in extra_b_addrs:
            family = "-6" if ":" in cidr else "-4"
            b.ip(family, "addr", "add", cidr, "dev", "vb", *(["nodad"] if family == "-6" else []))
            host = cidr.split("/")[0]
            a.ip(family, "route", "add", host, "dev", "va")
        yield pair
    finally:
        for name in created:
            _delete(name)


def leftover_namespaces() -> list[str]:
    """Namespaces of this run that still exist (should be none)."""
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(RUN_PREFIX)]

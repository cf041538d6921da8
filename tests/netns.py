"""Throwaway network namespaces for kernel tests, on top of :mod:`bwenforcer.kernel.sandbox`.

Every namespace this module creates carries the run's unique prefix and is
deleted on every exit path (the sandbox's context managers, plus a session-end
sweep in conftest). This module adds what tests need around the sandbox's
names: commands run inside a namespace and ``tc``/``ip`` as observers.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bwenforcer.kernel import sandbox

RUN_PREFIX = sandbox.unique_prefix("bwet")
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


@contextmanager
def netns_with_veth(tag: str = "ns") -> Iterator[Netns]:
    """One namespace holding a veth pair ``v0``/``v1``, both up; HTB goes on ``v0``."""
    with sandbox.namespace_with_veth(_unique(tag)) as name:
        yield Netns(name)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (dev ``va``) and ``b`` (dev ``vb``)."""

    a: Netns
    b: Netns
    a_addr: str  # the addresses are the sandbox's (kernel/sandbox.Pair)
    b_addr: str
    a_addr6: str
    b_addr6: str


@contextmanager
def netns_pair(tag: str = "pair", extra_b_addrs: Sequence[str] = ()) -> Iterator[NetnsPair]:
    """Two namespaces joined by veth, with IPv4 and IPv6 addresses; HTB goes on ``va``.

    ``extra_b_addrs`` are further CIDRs put on ``vb`` (e.g. an "exempt" destination).
    """
    with sandbox.namespace_pair(_unique(tag), extra_b_addrs, unique=False) as made:
        yield NetnsPair(
            Netns(made.a), Netns(made.b), made.a_addr, made.b_addr, made.a_addr6, made.b_addr6
        )


def leftover_namespaces() -> list[str]:
    """Namespaces of this run that still exist (should be none)."""
    return sandbox.namespaces_named(RUN_PREFIX)

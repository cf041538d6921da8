"""Throwaway network namespaces for the demo and the tests.

The one place namespaces are made and removed: the demo's pair and the tests'
fixtures (``tests/netns.py``) both come from here. Addresses are from
198.18.0.0/15 (reserved for benchmarking) and 2001:db8::/32 (documentation);
they exist only inside these namespaces. Every namespace is deleted on every
exit path, and nothing touches the host's own interfaces.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from bwenforcer.errors import Error
from bwenforcer.files.tools import tool_path


class SandboxError(Error):
    """A namespace or veth could not be set up."""


def _ip(*args: str) -> None:
    proc = subprocess.run([tool_path("ip"), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def unique_prefix(stem: str) -> str:
    """``stem`` plus this process and a random tag: names no other run can hold."""
    return f"{stem}{os.getpid() % 100000}{secrets.token_hex(2)}"


def delete_namespace(name: str) -> None:
    """Kill whatever still runs in a namespace, then delete it; absent is fine."""
    pids = subprocess.run(
        [tool_path("ip"), "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            continue
    subprocess.run([tool_path("ip"), "netns", "delete", name], capture_output=True, check=False)


def namespaces_named(prefix: str) -> list[str]:
    """The existing namespaces whose name starts with ``prefix``."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """Create namespace ``name`` with ``lo`` up; delete it on every exit path."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        delete_namespace(name)


@contextmanager
def namespace_with_veth(name: str) -> Iterator[str]:
    """A namespace holding a veth pair ``v0``/``v1``, both up (HTB goes on ``v0``)."""
    with namespace(name):
        _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", name, "link", "set", "v0", "up")
        _ip("-n", name, "link", "set", "v1", "up")
        yield name


@dataclass(frozen=True)
class Pair:
    """Namespace ``a`` (the node, HTB on ``va``) and ``b`` (the far end, ``vb``)."""

    a: str
    b: str
    a_addr: str = "198.18.0.1"
    b_addr: str = "198.18.0.2"
    a_addr6: str = "2001:db8:b0e::1"
    b_addr6: str = "2001:db8:b0e::2"
    dev: str = "va"


@contextmanager
def namespace_pair(
    prefix: str = "bwdemo", extra_b_addrs: Sequence[str] = (), unique: bool = True
) -> Iterator[Pair]:
    """Two namespaces joined by veth, IPv4 and IPv6 on both ends; deleted on every exit path.

    ``extra_b_addrs`` are further CIDRs on ``vb`` (e.g. an exempt destination),
    each routed from ``a``. ``unique=False`` takes ``prefix`` as it is (the
    caller made it unique already).
    """
    tag = unique_prefix(prefix) if unique else prefix
    pair = Pair(f"{tag}a", f"{tag}b")
    with namespace(pair.a), namespace(pair.b):
        _ip("link", "add", "va", "netns", pair.a, "type", "veth", "peer", "vb", "netns", pair.b)
        for name, dev, addr, addr6 in (
            (pair.a, "va", pair.a_addr, pair.a_addr6),
            (pair.b, "vb", pair.b_addr, pair.b_addr6),
        ):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", name, "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            _ip("-n", name, "link", "set", dev, "up")
        for cidr in extra_b_addrs:
            family = "-6" if ":" in cidr else "-4"
            nodad = ["nodad"] if family == "-6" else []
            _ip("-n", pair.b, family, "addr", "add", cidr, "dev", "vb", *nodad)
            _ip("-n", pair.a, family, "route", "add", cidr.split("/")[0], "dev", "va")
        yield pair


def remove_cgroup_tree(path: str) -> None:
    """Remove the cgroup ``path`` and every cgroup below it, deepest first, killing
    whatever still runs inside (a killed process leaves its cgroup once reaped).
    """
    if not os.path.isdir(path):
        return
    for here, _dirs, _files in os.walk(path, topdown=False):
        for _attempt in range(100):
            try:
                with open(os.path.join(here, "cgroup.procs")) as procs:
                    pids = [int(p) for p in procs.read().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    continue
            try:
                os.rmdir(here)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


@contextmanager
def cgroup_sandbox(prefix: str = "bwdemo") -> Iterator[str]:
    """A fresh cgroup directly below the cgroup v2 mount; removed with its subtree on
    every exit path. Its name (the directory's) is the first component of the
    demo's tenant patterns, so only cgroups the demo made are ever tenants.
    """
    from bwenforcer.inputs.cgroups import find_mount

    path = os.path.join(find_mount(), f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}")
    try:
        os.mkdir(path)
    except OSError as exc:
        raise SandboxError(f"cgroup {path}: {exc.strerror}") from None
    try:
        yield path
    finally:
        remove_cgroup_tree(path)

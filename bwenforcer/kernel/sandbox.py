"""Throwaway network namespaces for the demo (and the tests' end-to-end runs).

Two namespaces joined by a veth pair, with addresses from 198.18.0.0/15 (reserved
for benchmarking) and 2001:db8::/32 (documentation); an extra "exempt" address
on the far side. Deleted on every exit path; nothing touches the host's own
interfaces.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bwenforcer.errors import Error


class SandboxError(Error):
    """A namespace or veth could not be set up."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def delete_namespace(name: str) -> None:
    """Kill whatever still runs in a namespace, then delete it; absent is fine."""
    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            continue
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@dataclass(frozen=True)
class Pair:
    """Namespace ``a`` (the node, HTB on ``va``) and ``b`` (the far end, ``vb``)."""

    a: str
    b: str
    a_addr: str = "198.18.0.1"
    b_addr: str = "198.18.0.2"
    exempt_addr: str = "198.19.0.1"  # on b, in the exempt prefix set
    b_addr6: str = "2001:db8:b0e::2"
    dev: str = "va"


@contextmanager
def namespace_pair(prefix: str = "bwdemo") -> Iterator[Pair]:
    """Create the two namespaces; delete them on every exit path."""
    tag = f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}"
    pair = Pair(f"{tag}a", f"{tag}b")
    created: list[str] = []
    try:
        for name in (pair.a, pair.b):
            _ip("netns", "add", name)
            created.append(name)
        _ip("link", "add", "va", "netns", pair.a, "type", "veth", "peer", "vb", "netns", pair.b)
        _ip("-n", pair.a, "addr", "add", f"{pair.a_addr}/24", "dev", "va")
        _ip("-n", pair.b, "addr", "add", f"{pair.b_addr}/24", "dev", "vb")
        _ip("-n", pair.b, "addr", "add", f"{pair.exempt_addr}/32", "dev", "vb")
        _ip("-n", pair.a, "-6", "addr", "add", "2001:db8:b0e::1/64", "dev", "va", "nodad")
        _ip("-n", pair.b, "-6", "addr", "add", f"{pair.b_addr6}/64", "dev", "vb", "nodad")
        for name, dev in ((pair.a, "va"), (pair.b, "vb")):
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "set", dev, "up")
        _ip("-n", pair.a, "route", "add", f"{pair.exempt_addr}/32", "dev", "va")
        yield pair
    finally:
        for name in created:
            delete_namespace(name)


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

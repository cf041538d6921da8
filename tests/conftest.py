"""Shared fixtures: kernel gating and throwaway namespaces."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.cgroup_helpers import leftover_cgroups
from tests.netns import Netns, NetnsPair, leftover_namespaces, netns_pair, netns_with_veth

REQUIRE_KERNEL = os.environ.get("BWENFORCER_REQUIRE_KERNEL") == "1"


def _kernel_missing() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, HTB)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"kernel tests need {tool!r} (iproute2)"
    return None


@pytest.fixture(autouse=True)
def _gate_kernel(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    reason = _kernel_missing()
    if reason is None:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"BWENFORCER_REQUIRE_KERNEL=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def ns() -> Iterator[Netns]:
    """A namespace with veth pair v0/v1 (HTB on v0), deleted afterwards."""
    with netns_with_veth() as created:
        yield created


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    """Two namespaces joined by veth va/vb with addresses, deleted afterwards."""
    with netns_pair() as created:
        yield created


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail loudly if any namespace of this run survived its test."""
    del exitstatus
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return
    left = leftover_namespaces()
    if left:
        session.exitstatus = 1
        print(f"\nERROR: network namespaces left behind: {' '.join(left)}")
    cgroups = leftover_cgroups()
    if cgroups:
        session.exitstatus = 1
        print(f"\nERROR: cgroups left behind: {' '.join(cgroups)}")

"""The cgroup watcher: a known tenant's cgroup made again is bound before any cycle."""

from __future__ import annotations

import time

import pytest

from bwenforcer.kernel.cgroupwatch import CgroupWatcher
from bwenforcer.kernel.classifier import MAP_DEFAULT, MAP_EXEMPT, CgroupClassifier, CgroupSpec
from bwenforcer.kernel.nftsets import NftMaps
from tests.cgroup_helpers import cgroup_parent, v2_mount
from tests.netns import Netns

pytestmark = pytest.mark.kernel


def _wait_for(check, seconds: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)  # polling the kernel for the watcher thread's write
    return False


def test_a_restarted_tenant_is_bound_again_at_once_and_an_unknown_one_is_not(ns: Netns) -> None:
    with cgroup_parent("w") as parent:
        unit = parent / "system.slice" / "web.service"
        unit.mkdir(parents=True)
        rel = str(unit.relative_to(v2_mount()))
        classifier = CgroupClassifier(netns=ns.name)
        old = unit.stat().st_ino
        classifier.apply(CgroupSpec({old: 5}, (3,), ()))
        watcher = CgroupWatcher(str(v2_mount()), "bwenforcer", MAP_DEFAULT, MAP_EXEMPT, ns.name)
        maps = NftMaps("bwenforcer", ns.name)
        try:
            watcher.update({rel: (5, old)})
            unit.rmdir()
            assert _wait_for(lambda: maps.dump(MAP_DEFAULT) == {})  # the old id went
            unit.mkdir()
            new = unit.stat().st_ino
            assert _wait_for(lambda: maps.dump(MAP_DEFAULT) == {new: 0x1005})
            assert maps.dump(MAP_EXEMPT) == {new: 0x2005}
            # the watcher's thread counts the re-bind just after its map write
            assert _wait_for(lambda: watcher.rebound == 1)
            # a cgroup the last cycle did not bind waits for the cycle
            (parent / "system.slice" / "other.service").mkdir()
            time.sleep(0.2)  # long enough for the watcher to have acted, had it wrongly
            assert maps.dump(MAP_DEFAULT) == {new: 0x1005}
            # made again between the cycle's scan and its update: bound at the update
            unit.rmdir()
            unit.mkdir()
            newer = unit.stat().st_ino
            watcher.update({rel: (5, new)})
            assert _wait_for(lambda: maps.dump(MAP_DEFAULT) == {newer: 0x1005})
        finally:
            watcher.close()
            maps.close()
            classifier.close()

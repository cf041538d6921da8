"""Netlink requests per cycle grow with the changed classes over the batch size, never
with the slices: one class dump, one filter dump restricted to our filter's priority
(the mark → class filter is checked every cycle), plus one request per chunk of
changes. Counted on a namespace kernel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bwenforcer.core.model import ClassPolicy, DesiredSet, DesiredSlice
from bwenforcer.cycle.run import run_cycle
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import CHUNK_MESSAGES, HtbBackend
from bwenforcer.store.state import StateStore
from tests.netns import Netns

pytestmark = pytest.mark.kernel

N = 600  # slices: 1,200 classes, several chunks of CHUNK_MESSAGES
T0 = 1_767_225_600
DUMPS = 2  # the class dump and the filter check


def desired(n: int, capped: bool) -> DesiredSet:
    """``n`` slices; with ``capped`` all over their threshold, their ceil falling with time."""
    threshold = 0 if capped else 10**15
    default = ClassPolicy(10**10, threshold, 8_000, 100_000_000, 1)
    exempt = ClassPolicy(2 * 10**10, threshold, 8_000, 1_000_000_000, 1)
    return DesiredSet(tuple(DesiredSlice(f"s{x}", x, default, exempt) for x in range(1, n + 1)))


def test_requests_per_cycle_follow_the_changes_not_the_slices(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device: v0\nnode_cap: 100mbit\nbwmax: 1gbit\nstate_file: {tmp_path}/s.json\n")
    config = load_config(str(cfg))
    store = StateStore(config.state_file)
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)

        def cycle(want: DesiredSet, now_s: int) -> tuple[int, int]:
            """(netlink requests, kernel changes) of one cycle."""
            before = kernel.requests
            result = run_cycle(
                config, want, kernel=kernel, store=store, notifier=None, clock=lambda: now_s
            )
            assert not result.failures
            return kernel.requests - before, len(result.plan.kernel_ops())

        def chunks(messages: int) -> int:
            return math.ceil(messages / CHUNK_MESSAGES)

        # new slices: each create is two messages (class + leaf qdisc); one dump
        requests, ops = cycle(desired(N, capped=False), T0)
        assert ops == 2 * N and requests == DUMPS + chunks(2 * 2 * N)
        # nothing changed: the dumps alone, whatever the number of slices
        assert cycle(desired(N, capped=False), T0 + 60) == (DUMPS, 0)
        assert cycle(desired(N, capped=False), T0 + 120) == (DUMPS, 0)
        # every class capped: its ceil changes, one message each
        requests, ops = cycle(desired(N, capped=True), T0 + 180)
        assert ops == 2 * N and requests == DUMPS + chunks(2 * N)
        # a third of the slices back to their full rate
        back = DesiredSet(
            desired(N, capped=False).slices[: N // 3] + desired(N, True).slices[N // 3 :]
        )
        requests, ops = cycle(back, T0 + 240)
        changed_back = 2 * (N // 3)
        assert ops >= changed_back and requests == DUMPS + chunks(ops)
        # a tenth of the slices gone: two deletes each
        fewer = DesiredSet(back.slices[: N - N // 10])
        requests, ops = cycle(fewer, T0 + 300)
        assert ops >= 2 * (N // 10) and requests == DUMPS + chunks(ops)
        assert chunks(ops) < N // 10  # batched: far fewer requests than slices changed

"""A rolling window on a namespace kernel: real traffic caps a slice, and as the hours
pass (an injected clock: the cycle takes one) its bytes leave the window and the cap
lifts step by step, the kernel's ceil being the one `policy` publishes for that usage."""

from __future__ import annotations

from pathlib import Path

import pytest

from bwenforcer.core.policy import rate_rule, rule_ceil
from bwenforcer.core.window import bucket_s
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.inputs.config import load_config
from bwenforcer.store.state import StateStore
from tests.cycle.test_sync_kernel import Clock, init_tree, write_config
from tests.kernel_helpers import mark_all_to, send_bytes, tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

HOUR = 3600
NODE_CAP_BPS = 10_000_000
# 409,600 bytes over the last 6 hours (buckets of 15 minutes); tiers alone: past 30 %
# at most 3 Mbit/s, past 60 % at most 1 Mbit/s
WINDOWED = {
    "pl_win": (
        10,
        '{net_max_kbyte: 400, net_window: 6h, net_tiers: "30%:3mbit, 60%:1mbit", net_pacing: 0}',
    )
}
T0 = 1_800_000_000 // HOUR * HOUR
STRAY = 2_000  # bytes of a connection's close counted a cycle late (seen: 66)


def test_a_rolling_window_lifts_a_cap_as_hours_pass(pair: NetnsPair, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, period="1d", slices=WINDOWED)
    config = load_config(str(cfg))
    init_tree(pair, config)
    store = StateStore(config.state_file)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name)

    def cycle() -> tuple[int, int, bool]:
        agent.cycle(load_desired(config))
        st = store.load().state.slices[10]
        cs = st.default
        # the kernel holds the policy function's ceil for the usage in the window
        rule = rate_rule(cs.policy, config.node_cap_bps, config.bwmin_bps)
        expected = rule_ceil(rule, cs.used_bytes, int(clock.now), st.period_end_s)[1]
        ceil = tc_ceils(pair.a, "va")["1:100a"]
        assert ceil == cs.ceil_bps == expected
        return cs.used_bytes, ceil, cs.capped

    try:
        assert cycle() == (0, NODE_CAP_BPS, False)
        mark_all_to(pair.a, pair.b_addr, 0x100A)
        send_bytes(pair, 150_000)  # 36.6 % of the budget: the first tier
        first, ceil, capped = cycle()
        assert 150_000 <= first < 180_000 and ceil == 3_000_000 and capped

        clock.now += 3 * HOUR
        send_bytes(pair, 150_000)  # 73 %: the second tier
        both, ceil, capped = cycle()
        assert 300_000 <= both < 360_000 and ceil == 1_000_000 and capped

        # a connection's last packets (its close) can reach the counter a cycle later:
        # they are counted then, in a later bucket; STRAY bounds them
        clock.now += 2 * HOUR  # 5 hours after the first bytes: all still in the window
        still, ceil, capped = cycle()
        assert both <= still < both + STRAY and (ceil, capped) == (1_000_000, True)

        # 6 hours and a bucket after the first bytes: they have left; the cap lifts a step
        clock.now += HOUR + bucket_s(6 * HOUR)
        left, ceil, capped = cycle()
        assert 0 <= left - (both - first) < STRAY and ceil == 3_000_000 and capped

        # and once the second bytes have left too, it is lifted
        clock.now += 3 * HOUR
        rest, ceil, capped = cycle()
        assert rest < STRAY and (ceil, capped) == (NODE_CAP_BPS, False)
    finally:
        agent.close()

"""Rollover on a namespace kernel: a period left unused rolls over (an injected clock
moves the cycle into the next period), and real traffic that would cap the slice under
its limit alone leaves it uncapped in the kernel; past the limit and the carried bytes it
is capped, and with the rollover taken away the cap comes at once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bwenforcer.core.grants import counted_bytes
from bwenforcer.core.policy import rate_rule, rule_ceil
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.inputs.config import load_config
from bwenforcer.store.state import StateStore
from tests.cycle.test_sync_kernel import Clock, init_tree, write_config
from tests.kernel_helpers import mark_all_to, send_bytes, tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

HOUR = 3600
NODE_CAP_BPS = 10_000_000
LIMIT = 200 * 1024
RSPEC = "{net_max_kbyte: 200, net_thresh_kbyte: 100, net_rollover: 100%}"
T0 = 1_800_000_000 // HOUR * HOUR


def test_a_rolled_over_budget_keeps_a_slice_uncapped_in_the_next_period(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = write_config(tmp_path, period="1h", slices={"pl_roll": (10, RSPEC)})
    config = load_config(str(cfg))
    init_tree(pair, config)
    store = StateStore(config.state_file)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name)

    def cycle() -> tuple[int, int, int, bool]:
        """(used, carried, kernel ceil, capped) after one cycle; the kernel holds the
        policy function's ceil at the usage less the carried bytes.
        """
        agent.cycle(load_desired(config))
        st = store.load().state.slices[10]
        cs = st.default
        rule = rate_rule(cs.policy, config.node_cap_bps, config.bwmin_bps)
        counted = counted_bytes(cs.used_bytes, cs.carried_bytes)
        expected = rule_ceil(rule, counted, int(clock.now), st.period_end_s)[1]
        ceil = tc_ceils(pair.a, "va")["1:100a"]
        assert ceil == cs.ceil_bps == expected
        return cs.used_bytes, cs.carried_bytes, ceil, cs.capped

    try:
        assert cycle() == (0, 0, NODE_CAP_BPS, False)  # the first period: nothing sent
        clock.now += HOUR + 60  # the next period: the whole budget rolls over
        with caplog.at_level(logging.INFO, logger="bwenforcer.cycle.executor"):
            assert cycle() == (0, LIMIT, NODE_CAP_BPS, False)
        assert f"slice pl_roll xid 10 default: rolled over {LIMIT} bytes" in caplog.text

        mark_all_to(pair.a, pair.b_addr, 0x100A)
        send_bytes(pair, 150_000)  # past the threshold: capped, were it not for the rollover
        used, carried, ceil, capped = cycle()
        assert 150_000 <= used < 180_000 and carried == LIMIT
        cs = store.load().state.slices[10].default
        rule = rate_rule(cs.policy, config.node_cap_bps, config.bwmin_bps)
        assert rule_ceil(rule, used, int(clock.now), T0 + 2 * HOUR)[2]  # the limit alone caps
        assert ceil == NODE_CAP_BPS and not capped

        send_bytes(pair, 300_000)  # past the limit and the carried bytes: capped
        used, carried, ceil, capped = cycle()
        assert used > LIMIT + carried and ceil < NODE_CAP_BPS and capped

        # the rollover taken away: the carried bytes go at once, the cap stays
        (tmp_path / "slices.yaml").write_text(
            (tmp_path / "slices.yaml").read_text().replace("net_rollover: 100%", "net_rollover: 0")
        )
        _, carried, ceil, capped = cycle()
        assert carried == 0 and ceil < NODE_CAP_BPS and capped
    finally:
        agent.close()

"""Tiers on a namespace kernel: real traffic takes a slice down its tiers, and the
kernel's ceil is the one `bwenforcer policy` publishes for that usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bwenforcer.core.policy import rate_rule, rule_ceil
from bwenforcer.inputs.config import load_config
from bwenforcer.store.state import StateStore
from tests.cycle.test_sync_kernel import init_tree, write_config
from tests.kernel_helpers import bwenforcer_in, mark_all_to, send_bytes, tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

# 1,024,000 bytes a period, threshold 80 %; past 10 %: 3 Mbit/s, past 20 %: 1 Mbit/s
TIERED = {"pl_tier": (10, '{net_max_kbyte: 1000, net_tiers: "10%:3mbit, 20%:1mbit"}')}


def test_real_traffic_takes_a_slice_down_its_tiers(pair: NetnsPair, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, slices=TIERED)
    config = load_config(str(cfg))
    init_tree(pair, config)
    store = StateStore(config.state_file)

    def sync() -> dict[str, object]:
        done = bwenforcer_in(pair.a, "--config", str(cfg), "sync", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    sync()
    assert tc_ceils(pair.a, "va")["1:100a"] == 10_000_000  # the node cap: nothing used
    published = bwenforcer_in(pair.a, "--config", str(cfg), "policy", "pl_tier", "--json")
    assert published.returncode == 0, published.stderr
    rows = json.loads(published.stdout)["classes"]["default"]["rows"]
    by_share = {r["used_percent"]: (r["ceil"], r["rule"]) for r in rows}
    assert by_share["10%"] == (3_000_000, "tier 10%")
    assert by_share["20%"] == (1_000_000, "tier 20%")

    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 150_000)  # 14.6 % of the limit: the first tier
    sync()
    cs = store.load().state.slices[10].default
    assert 102_400 <= cs.used_bytes < 204_800 and cs.capped
    assert tc_ceils(pair.a, "va")["1:100a"] == cs.ceil_bps == 3_000_000

    send_bytes(pair, 100_000)  # past 20 %: the second tier
    sync()
    st = store.load().state.slices[10]
    cs = st.default
    assert cs.used_bytes >= 204_800 and cs.capped
    assert tc_ceils(pair.a, "va")["1:100a"] == cs.ceil_bps == 1_000_000
    # the ceil the kernel holds is the policy function's at that usage
    rule = rate_rule(cs.policy, config.node_cap_bps, config.bwmin_bps)
    assert rule_ceil(rule, cs.used_bytes, int(st.period_end_s) - 1, st.period_end_s)[1:] == (
        1_000_000,
        "tier 20%",
    )

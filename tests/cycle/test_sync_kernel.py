"""Whole cycles on a namespace kernel: slices file → HTB classes, caps, ledger, periods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bwenforcer.core.policy import capped_ceil_bps
from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import bwenforcer_in, mark_all_to, send_bytes, tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

SLICES = {
    "pl_small": (10, "{net_max_kbyte: 200, net_thresh_kbyte: 100}"),
    "pl_big": (11, "{}"),
    "pl_other": (12, "{net_max_rate: 2000}"),
}


def write_config(
    tmp: Path, period: str = "1h", slices: dict[str, tuple[int, str]] = SLICES
) -> Path:
    lines = [f"  - {{name: {n}, xid: {x}, rspec: {r}}}" for n, (x, r) in slices.items()]
    (tmp / "slices.yaml").write_text("slices:\n" + "\n".join(lines) + "\n")
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: va\nnode_cap: 10mbit\nbwmax: 100mbit\nperiod: {period}\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "lock_timeout: 5s\nvanish_grace: 0s\nmetrics: {listen: null}\n"
    )
    return cfg


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def init_tree(pair: NetnsPair, config: Config) -> None:
    with HtbBackend("va", netns=pair.a.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)


def test_sync_dry_run_then_sync_apply_exactly_one_ceil_change(
    pair: NetnsPair, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path)
    init_tree(pair, load_config(str(cfg)))
    first = bwenforcer_in(pair.a, "--config", str(cfg), "sync")
    assert first.returncode == 0, first.stderr
    assert set(tc_ceils(pair.a, "va")) >= {"1:100a", "1:200a", "1:100b", "1:100c"}

    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 150_000)

    dry = bwenforcer_in(pair.a, "--config", str(cfg), "sync", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    changes = [a for a in plan["actions"] if a["action"] == "set_rates"]
    assert [(c["xid"], c["traffic_class"]) for c in changes] == [(10, "default")]
    before = tc_ceils(pair.a, "va")["1:100a"]
    assert before == 10_000_000  # dry run changed nothing
    table = bwenforcer_in(pair.a, "--config", str(cfg), "sync", "--dry-run")
    assert "pl_small" in table.stdout and "set-rates" in table.stdout

    applied = bwenforcer_in(pair.a, "--config", str(cfg), "sync", "--json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert [a["xid"] for a in result["actions"] if a["action"] == "set_rates"] == [10]
    new_ceil = next(a for a in result["actions"] if a["action"] == "set_rates")["new"]["max_rate"]
    ceils = tc_ceils(pair.a, "va")
    assert abs(ceils["1:100a"] - new_ceil) <= max(8, new_ceil // 100)
    assert ceils["1:100a"] < 10_000_000
    assert ceils["1:100b"] == 10_000_000 and ceils["1:100c"] == 2_000_000


def test_lifecycle_on_the_kernel_ledger_revive_reinit_and_period_end(
    pair: NetnsPair, tmp_path: Path
) -> None:
    cfg_path = write_config(tmp_path, period="10m")
    config = load_config(str(cfg_path))
    init_tree(pair, config)
    clock = Clock(1_800_000_000)
    agent = Agent(config, clock=clock, netns=pair.a.name)
    store = StateStore(config.state_file)

    agent.cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 150_000)
    clock.now += 120
    result = agent.cycle(load_desired(config))
    st = store.load().state.slices[10]
    used = st.default.used_bytes
    assert used >= 150_000
    expected = capped_ceil_bps(
        used_bytes=used,
        limit_bytes=200 * 1024,
        now_s=int(clock.now),
        period_end_s=st.period_end_s,
        min_rate_bps=8_000,
        max_rate_bps=10_000_000,
    )
    assert abs(tc_ceils(pair.a, "va")["1:100a"] - expected) <= max(8, expected // 100)
    assert result.result == "ok"
    # every cycle's deltas went into the usage history as well
    from bwenforcer.history.reader import load_history

    rows = load_history(config.history_file).report("day", None, "pl_small")
    assert sum(r.default_bytes for r in rows) == used

    # removed from the slices file: classes gone, usage in the ledger
    write_config(
        tmp_path, period="10m", slices={k: v for k, v in SLICES.items() if k != "pl_small"}
    )
    clock.now += 60
    agent.cycle(load_desired(config))
    assert "1:100a" not in tc_ceils(pair.a, "va")
    state = store.load().state
    assert state.ledger["pl_small"].slice.default.used_bytes == used

    # added back: revived with its usage, capped again at once
    write_config(tmp_path, period="10m")
    clock.now += 60
    agent.cycle(load_desired(config))
    assert store.load().state.slices[10].default.used_bytes == used
    assert tc_ceils(pair.a, "va")["1:100a"] < 10_000_000

    # tree wiped and re-initialised (counters reset): usage kept
    with HtbBackend("va", netns=pair.a.name) as kernel:
        kernel.stop()
    init_tree(pair, config)
    clock.now += 60
    agent.cycle(load_desired(config))
    assert store.load().state.slices[10].default.used_bytes == used
    assert tc_ceils(pair.a, "va")["1:100a"] < 10_000_000

    # the period ends: caps lifted, usage 0
    clock.now = st.period_end_s + 1
    agent.cycle(load_desired(config))
    after = store.load().state.slices[10]
    assert after.default.used_bytes == 0 and not after.default.capped
    assert tc_ceils(pair.a, "va")["1:100a"] == 10_000_000

"""Grants on a namespace kernel: a slice capped by real traffic gets its cap lifted by a
grant, at once by the grant command, or by the next cycle when the command could not
reach the kernel; the cap returns once the traffic passes the granted budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bwenforcer.inputs.config import load_config
from bwenforcer.store.state import StateStore
from tests.cycle.test_sync_kernel import init_tree, write_config
from tests.kernel_helpers import bwenforcer_in, mark_all_to, send_bytes, tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

NODE_CAP_BPS = 10_000_000
SMALL = {"pl_small": (10, "{net_max_kbyte: 200, net_thresh_kbyte: 100}")}


def test_a_grant_lifts_a_cap_made_by_real_traffic(pair: NetnsPair, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, slices=SMALL)
    config = load_config(str(cfg))
    init_tree(pair, config)
    store = StateStore(config.state_file)
    # the same state, a device that exists nowhere: the kernel cannot be reached
    blind = tmp_path / "blind.yaml"
    blind.write_text(cfg.read_text().replace("device: va", "device: bwetnodev0"))

    def cli(*argv: str, config_path: Path = cfg) -> str:
        done = bwenforcer_in(pair.a, "--config", str(config_path), *argv)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("sync")
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 150_000)
    cli("sync")
    assert store.load().state.slices[10].default.capped
    assert tc_ceils(pair.a, "va")["1:100a"] < NODE_CAP_BPS

    # at once: the command sets the ceil a cycle would set
    cli("grant", "pl_small", "100KiB", "--reason", "test")
    assert tc_ceils(pair.a, "va")["1:100a"] == NODE_CAP_BPS
    cs = store.load().state.slices[10].default
    assert not cs.capped and cs.ceil_bps == NODE_CAP_BPS
    plan = json.loads(cli("sync", "--json"))
    assert not [a for a in plan["actions"] if a["action"] == "set_rates"]  # it stays lifted
    assert tc_ceils(pair.a, "va")["1:100a"] == NODE_CAP_BPS

    # past the granted budget too: capped again
    send_bytes(pair, 100_000)
    cli("sync")
    assert store.load().state.slices[10].default.capped
    assert tc_ceils(pair.a, "va")["1:100a"] < NODE_CAP_BPS

    # a grant made without the kernel: the next cycle lifts the cap
    cli("grant", "pl_small", "1MiB", config_path=blind)
    assert tc_ceils(pair.a, "va")["1:100a"] < NODE_CAP_BPS
    plan = json.loads(cli("sync", "--json"))
    assert [a["xid"] for a in plan["actions"] if a["action"] == "set_rates"] == [10]
    assert tc_ceils(pair.a, "va")["1:100a"] == NODE_CAP_BPS
    state = store.load().state
    assert not state.slices[10].default.capped
    assert [(a.what, a.size_bytes, a.reason) for a in state.audit] == [
        ("grant", 100 * 1024, "test"),
        ("grant", 2**20, ""),
    ]

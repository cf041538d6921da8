"""Inbound end to end, as an operator runs it: the documented YAML (``inbound.enabled``,
the uid classifier, a slice whose budget counts what it receives), the real
``bwenforcer sync`` command, real downloads into the slice's uid. The slice's
downloads are counted, its budget passes the threshold, the next cycle sets its
inbound limit in the kernel, and the downloads that follow keep to it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.inbound import InboundBackend
from bwenforcer.modes.traffic import start_fetch, start_source
from bwenforcer.store.state import StateStore
from tests.cycle.test_sync_kernel import init_tree
from tests.kernel_helpers import bwenforcer_in
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

XID = 3101  # the slice's uid (classifier.mode uid: a slice is the account with uid = xid)
PORT = 5301


def write_config(tmp: Path) -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        f"  - name: pl_down\n    xid: {XID}\n"
        "    rspec: {net_max_kbyte: 900000, net_thresh_kbyte: 200, net_direction: in}\n"
    )
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        "device: va\nnode_cap: 100mbit\nbwmax: 100mbit\nperiod: 1h\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "lock_timeout: 5s\nvanish_grace: 0s\nmetrics: {listen: null}\n"
        "classifier:\n  mode: uid\n"
        "inbound:\n  enabled: true\n"
    )
    return cfg


def download(pair: NetnsPair, n_bytes: int, seconds: float) -> tuple[int, float]:
    """``n_bytes`` (at most) from the far end into the slice's uid; bytes and seconds taken."""
    source = start_source(pair.b.name, PORT, seconds + 5, n_bytes)
    try:
        start = time.monotonic()
        fetch = start_fetch(pair.a.name, XID, pair.b_addr, PORT, seconds=seconds)
        out, _ = fetch.communicate(timeout=seconds + 15)
        elapsed = time.monotonic() - start
    finally:
        source.kill()
        source.wait(timeout=5)
    return int(out.strip() or 0), elapsed


def test_a_slice_capped_on_its_downloads_by_the_sync_command(
    pair: NetnsPair, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path)
    config = load_config(str(cfg))
    init_tree(pair, config)
    store = StateStore(config.state_file)

    def sync() -> dict:
        done = bwenforcer_in(pair.a, "--config", str(cfg), "sync", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    sync()  # the classes, the classifier and the inbound table
    got, _ = download(pair, 300_000, 10)
    assert got == 300_000
    plan = sync()
    cs = store.load().state.slices[XID].default
    # IP-layer bytes: the payload plus headers, within 1 % above it
    assert got <= cs.in_used_bytes <= got * 1.04, cs.in_used_bytes
    limits = [a for a in plan["actions"] if a["action"] == "set_inbound_limit"]
    assert [(a["xid"], a["traffic_class"]) for a in limits] == [(XID, "default")]
    assert cs.capped and cs.in_limit_bps > 0
    # the budget counts received bytes alone: the egress ceil stays at the class's max
    assert cs.ceil_bps == 100_000_000

    with InboundBackend("va", "uid", netns=pair.a.name) as inbound:
        assert inbound.dump().limits_bps[(XID, "default")] == cs.in_limit_bps
    # about 2 Mbit/s: the 900 MB left paced over the hour left
    assert 1_500_000 < cs.in_limit_bps < 2_100_000, cs.in_limit_bps
    # limited: a download of 8 s gets at most the limit over its time plus the 1 s bucket
    # a new limit object starts with and its burst (docs/inbound.md), and at least 80 %
    got, elapsed = download(pair, 10**9, 8)
    allowed_bytes = cs.in_limit_bps * (elapsed + 1) / 8 * 1.05 + 16_384
    assert cs.in_limit_bps * elapsed / 8 * 0.8 <= got <= allowed_bytes, (got, elapsed)
    sync()
    state = store.load().state
    assert state.slices[XID].default.in_used_bytes >= cs.in_used_bytes + got

    show = bwenforcer_in(pair.a, "--config", str(cfg), "show", "pl_down", "--json")
    assert show.returncode == 0, show.stderr
    assert json.dumps(json.loads(show.stdout)).count("in_used_bytes") >= 1

"""A tree that vanished under a running agent is built again; a missing device is said once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.modes.daemon import Daemon
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import bwenforcer_in, tc_ceils
from tests.netns import Netns

pytestmark = pytest.mark.kernel

T0 = 1_764_000_000
CAPPED, FINE = "1:103d", "1:103e"  # xid 61 and 62, default class
NODE_CAP_BPS = 10_000_000


def _config(tmp: Path) -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        "  - {name: pl_capped, xid: 61, rspec: {net_thresh_kbyte: 0}}\n"
        "  - {name: pl_fine, xid: 62, rspec: {}}\n"
    )
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp}/state.json\n"
        f"slices_file: {tmp}/slices.yaml\nlock_timeout: 5s\nmetrics: {{listen: null}}\n"
    )
    return cfg


def _daemon(ns: Netns, config: Config) -> Daemon:
    """The daemon's cycle code (run_once) with an agent in the test's namespace and clock."""
    return Daemon(None, config, agent=Agent(config, clock=lambda: T0, netns=ns.name))


def _recreate_veth(ns: Netns) -> None:
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    ns.ip("link", "set", "v1", "up")


def _capped_ceil_bps(config: Config) -> int:
    return StateStore(config.state_file).load().state.slices[61].default.ceil_bps


def test_daemon_rebuilds_a_deleted_qdisc_and_a_recreated_device(ns: Netns, tmp_path: Path) -> None:
    config = load_config(str(_config(tmp_path)))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    daemon = _daemon(ns, config)
    daemon.run_once()
    capped_bps = _capped_ceil_bps(config)
    assert capped_bps < NODE_CAP_BPS
    assert tc_ceils(ns, "v0")[CAPPED] == capped_bps

    ns.tc("qdisc", "del", "dev", "v0", "root")
    daemon.run_once()
    ceils = tc_ceils(ns, "v0")
    assert ceils[CAPPED] == capped_bps and ceils[FINE] == NODE_CAP_BPS
    assert ceils["1:1"] == config.bwmax_bps  # the tree itself, as `tc init` builds it

    ns.ip("link", "del", "v0")
    _recreate_veth(ns)
    daemon.run_once()
    ceils = tc_ceils(ns, "v0")
    assert ceils[CAPPED] == capped_bps and ceils[FINE] == NODE_CAP_BPS
    assert "bpf" in ns.tc("filter", "show", "dev", "v0")  # marks reach the classes again
    assert [daemon.metrics._cycles[r] for r in ("ok", "partial", "failed")] == [3, 0, 0]


def test_missing_device_is_said_once_then_healed(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path)
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    daemon = _daemon(ns, config)
    daemon.run_once()
    capped_bps = _capped_ceil_bps(config)

    ns.ip("link", "del", "v0")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            daemon.run_once()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == ["cycle failed: device 'v0' missing"]
    assert daemon.metrics._cycles["failed"] == 3  # each one still counted

    sync = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert (sync.returncode, sync.stderr) == (4, "bwenforcer: device 'v0' missing\n")

    _recreate_veth(ns)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        daemon.run_once()
    assert tc_ceils(ns, "v0")[CAPPED] == capped_bps
    assert any("cycle ok again" in r.getMessage() for r in caplog.records)


def test_sync_rebuilds_a_deleted_tree_too(ns: Netns, tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    assert bwenforcer_in(ns, "--config", str(cfg), "sync").returncode == 0
    ns.tc("qdisc", "del", "dev", "v0", "root")
    dry = bwenforcer_in(ns, "--config", str(cfg), "sync", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "htb" not in ns.tc("qdisc", "show", "dev", "v0")  # a dry run builds nothing
    sync = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert sync.returncode == 0, sync.stderr
    # still capped (a real clock: the ceil follows the time left, so compare with the state)
    assert tc_ceils(ns, "v0")[CAPPED] == _capped_ceil_bps(load_config(str(cfg))) < NODE_CAP_BPS


def test_the_daemon_follows_the_configured_name_of_a_renamed_device(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(str(_config(tmp_path)))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    daemon = _daemon(ns, config)
    daemon.run_once()
    capped_bps = _capped_ceil_bps(config)
    assert tc_ceils(ns, "v0")[CAPPED] == capped_bps

    ns.ip("link", "set", "v0", "name", "v0old")  # an operator's rename: the same interface
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            daemon.run_once()  # the configured v0 is gone: not enforced on v0old
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == ["cycle failed: device 'v0' missing"]  # once, until it changes
    assert daemon.metrics._cycles["failed"] == 3

    ns.ip("link", "set", "v1", "name", "v0")  # another interface takes the name
    caplog.clear()
    with caplog.at_level(logging.INFO):
        daemon.run_once()
    ceils = tc_ceils(ns, "v0")  # the tree built on the new v0, the slices' classes in it
    assert ceils[CAPPED] == capped_bps and ceils[FINE] == NODE_CAP_BPS
    assert any("cycle ok again" in r.getMessage() for r in caplog.records)
    ns.ip("link", "set", "v0old", "name", "v1")  # the old one comes back under another name
    daemon.run_once()
    assert tc_ceils(ns, "v0")[CAPPED] == capped_bps
    assert daemon.metrics._cycles["ok"] == 3


def test_a_foreign_filter_at_our_priority_is_a_failure_not_the_end_of_enforcement(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(tmp_path)
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    # someone's u32 filter at our priority 2: the kernel refuses our bpf one (EINVAL)
    ns.tc("filter", "del", "dev", "v0", "parent", "1:", "prio", "2")
    ns.tc("filter", "add", "dev", "v0", "parent", "1:", "protocol", "ip", "prio", "2",
          "u32", "match", "ip", "dst", "10.9.9.9/32", "flowid", "1:1fff")  # fmt: skip
    daemon = _daemon(ns, config)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            daemon.run_once()
    # planned and applied all the same: the capped slice is capped
    capped_bps = _capped_ceil_bps(config)
    ceils = tc_ceils(ns, "v0")
    assert ceils[CAPPED] == capped_bps < NODE_CAP_BPS and ceils[FINE] == NODE_CAP_BPS
    refused = [r.getMessage() for r in caplog.records if "mark → class filter" in r.getMessage()]
    assert len(refused) == 1 and refused[0].startswith("dev v0: mark → class filter not put")
    assert [daemon.metrics._cycles[r] for r in ("ok", "partial", "failed")] == [0, 3, 0]
    sync = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert sync.returncode == 1, sync.stderr
    assert "u32" in ns.tc("filter", "show", "dev", "v0")  # the foreign filter is left alone
    # the operator removes it: put back at the next cycle, said once
    ns.tc("filter", "del", "dev", "v0", "parent", "1:", "prio", "2")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        daemon.run_once()
    assert "bpf" in ns.tc("filter", "show", "dev", "v0")
    assert any("filter in place again" in r.getMessage() for r in caplog.records)
    assert daemon.metrics._cycles["ok"] == 1

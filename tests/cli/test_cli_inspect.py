"""``status``, ``show``, ``ledger`` and ``reset`` through the real command line.

Real state files in tmp_path, the clock fixed by $BWENFORCER_NOW. In-process runs get a
Config built in the test; their device exists nowhere, so the kernel is "unavailable".
The kernel tests run the installed CLI with a YAML config inside a throwaway namespace
holding a real HTB tree.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.commands.inspect import NOW_ENV, operator_name
from bwenforcer.core.model import ClassOp, ClassRates
from bwenforcer.core.settings import Config
from bwenforcer.history.fold import save_history
from bwenforcer.history.usage import CycleUsage, History
from bwenforcer.inputs.config import load_config
from bwenforcer.store.state import StateStore
from bwenforcer.views.table import use_colour
from tests.kernel_helpers import bwenforcer_in, tc_ceils
from tests.netns import Netns
from tests.views.test_inspection import (
    BWMAX_BPS,
    CAP_BPS,
    NOW,
    check_golden,
    check_status_json,
    fixed_state,
)

NO_DEVICE = "bwetnodev0"  # exists nowhere: the kernel is unavailable, nothing is touched

SLICES_YAML = """slices:
  - {name: pl_heavy, xid: 10, rspec: {net_max_kbyte: 200, net_thresh_kbyte: 100}}
  - {name: pl_light, xid: 11, rspec: {}}
"""


def write_config(tmp: Path, device: str) -> Path:
    """A YAML config file naming tmp's state and slices files, for the installed CLI."""
    (tmp / "slices.yaml").write_text(SLICES_YAML)
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: {device}\nnode_cap: 10mbit\nbwmax: 100mbit\nperiod: 1d\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "lock_timeout: 5s\nmetrics: {listen: null}\n"
    )
    return cfg


def make_config(tmp: Path, device: str = NO_DEVICE, lock_timeout_s: int = 5) -> Config:
    """The config of these tests: tmp's state and slices files."""
    (tmp / "slices.yaml").write_text(SLICES_YAML)
    return Config(
        device=device,
        node_cap_bps=CAP_BPS,
        bwmax_bps=BWMAX_BPS,
        state_file=str(tmp / "state.json"),
        slices_file=str(tmp / "slices.yaml"),
        lock_timeout_s=lock_timeout_s,
    )


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The config (what ``--config`` loads) + the fixed state saved 125 s before now."""
    monkeypatch.setenv(NOW_ENV, str(NOW))
    monkeypatch.delenv("NO_COLOR", raising=False)
    config = make_config(tmp_path)
    use_config(monkeypatch, config)
    StateStore(config.state_file).save(fixed_state(), NOW - 125)
    return config


def use_config(monkeypatch: pytest.MonkeyPatch, config: Config) -> None:
    """Make the commands load ``config`` (built here, not parsed from YAML)."""
    monkeypatch.setattr("bwenforcer.inputs.config.load_config", lambda path: config)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``bwenforcer ARGV`` in-process: exit code, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_golden_without_the_kernel(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", "cfg.yaml", "status")
    assert code == 0, err
    check_golden("status_cli.txt", out)  # last applied ceils, capped first, no colour
    lines = [line for line in err.splitlines() if "kernel unavailable" in line]
    assert len(lines) == 1 and lines[0].startswith("bwenforcer: kernel unavailable (")
    assert lines[0].endswith("ceils shown are the last applied")
    assert "\x1b[" not in out  # captured stdout is not a terminal


def test_status_json_parses_with_the_documented_keys(
    cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--config", "cfg.yaml", "status", "--json")
    assert code == 0
    doc = json.loads(out)
    check_status_json(doc)
    assert [s["name"] for s in doc["slices"]][:2] == ["pl_heavy", "pl_bulk"]
    assert doc["slices"][0]["classes"]["default"]["ceil"] == 72_000  # last applied


def test_ledger_golden_and_json(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", "cfg.yaml", "ledger")
    assert code == 0
    check_golden("ledger.txt", out)
    code, out, _ = run(capsys, "--config", "cfg.yaml", "ledger", "--json")
    assert code == 0
    assert [e["name"] for e in json.loads(out)["ledger"]] == ["pl_old", "pl_gone"]


def test_show_golden_and_unknown_slice(cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy")
    assert code == 0
    check_golden("show_cli.txt", out)
    code, out, _ = run(capsys, "--config", "cfg.yaml", "show", "10", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "pl_heavy" and doc["status"] == "live"
    assert doc["origin"] and set(doc["origin"].values()) <= {"rspec", "defaults"}
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_nobody")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "bwenforcer: slice 'pl_nobody': not in the state, the ledger or the slices file"
    ]


def test_show_has_the_last_24_hours_of_history(
    cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    history = History()
    for hours_ago, sent in ((30, 9_000), (2, 4_000), (1, 1_000)):
        usage = CycleUsage("pl_heavy", sent, 0, capped_default=hours_ago == 1, capped_exempt=False)
        history.record(NOW - hours_ago * 3600, 300, [usage])
    history.record(NOW - 3600, 300, [CycleUsage("pl_light", 5, 5, False, False)])
    save_history(history, cfg.history_file)
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy", "--json")
    assert code == 0, err
    rows = json.loads(out)["history"]
    assert [(r["default_bytes"], r["capped_default_s"]) for r in rows] == [(4_000, 0), (1_000, 300)]
    assert [r["bucket_start"] for r in rows] == [NOW - 7200, NOW - 3600]  # not the hour 30 h ago
    code, out, _ = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy")
    assert code == 0
    table = out[out.index("HOUR (UTC)") :].splitlines()
    assert table[1].split() == ["2027-01-15", "06:00Z", "3.91KiB", "0B", "-"]
    assert table[2].split() == ["2027-01-15", "07:00Z", "1000B", "0B", "default", "5m"]


def test_reset_forgives_keeps_the_period_and_logs_the_operator(
    cfg: Config,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    store = StateStore(cfg.state_file)
    before = store.read_unlocked().state.slices[10]
    resets_before = store.read_unlocked().state.resets
    code, out, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_heavy", "--class", "default")
    assert code == 0, err
    assert store.read_unlocked().state.resets == resets_before + 1  # for the metric
    after = store.read_unlocked().state.slices[10]
    assert after.default.used_bytes == 0 and after.default.notified == before.default.notified
    assert not after.default.capped
    assert after.default.lift == ("due" if before.default.capped else "")  # a lift to tell
    assert after.default.last_counter_bytes == before.default.last_counter_bytes  # no kernel
    assert after.exempt == before.exempt
    assert (after.period_start_s, after.period_end_s) == (
        before.period_start_s,
        before.period_end_s,
    )
    assert "caps lifted at the next cycle; the period still ends in 3h12m" in out
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "reset by operator alice: slice pl_heavy xid 10: default used 190KiB → 0,"
        " ceil 72kbit/s until the next cycle"
    ]


def test_reset_of_an_unknown_or_dead_slice_is_a_usage_error(
    cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_gone")
    assert code == 2 and "only in the ledger" in err
    code, _, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_nobody")
    assert code == 2 and "not in the state" in err


@pytest.fixture
def lock_holder(cfg: Config) -> Iterator[subprocess.Popen[str]]:
    """A process holding the state lock (as a running ``sync`` would) until its stdin closes."""
    script = (
        "import sys\n"
        "from bwenforcer.store.state import StateStore\n"
        "with StateStore(sys.argv[1]).lock(5):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, cfg.state_file],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_reset_respects_the_lock_of_a_running_cycle(
    tmp_path: Path,
    cfg: Config,
    lock_holder: subprocess.Popen[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_config(monkeypatch, make_config(tmp_path, lock_timeout_s=1))
    store = StateStore(cfg.state_file)
    code, out, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_heavy")
    assert code == 3 and out == ""
    assert err.strip().splitlines() == [
        f"bwenforcer: another bwenforcer cycle holds {store.lock_path}"
        f" (pid {lock_holder.pid}) after 1 s"
    ]
    assert store.read_unlocked().state.slices[10].default.used_bytes > 0  # nothing changed

    # status never waits for the lock
    code, out, _ = run(capsys, "--config", "cfg.yaml", "status", "--json")
    assert code == 0 and json.loads(out)["slices"][0]["name"] == "pl_heavy"

    assert lock_holder.stdin is not None
    lock_holder.stdin.close()
    assert lock_holder.wait(timeout=10) == 0
    code, out, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_heavy")
    assert code == 0, err
    heavy = store.read_unlocked().state.slices[10]
    for cs in (heavy.default, heavy.exempt):
        assert cs.used_bytes == 0 and not cs.capped


def test_colour_only_on_a_terminal_and_not_with_no_color(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert use_colour(tty)
            monkeypatch.setenv("NO_COLOR", "1")
            assert not use_colour(tty)
    finally:
        os.close(leader)
        os.close(follower)
    monkeypatch.delenv("NO_COLOR")
    with open(tmp_path / "out.txt", "w") as file:
        assert not use_colour(file)


def test_operator_name_prefers_the_sudo_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "bob")
    assert operator_name() == "bob"
    monkeypatch.delenv("SUDO_USER")
    assert operator_name()  # login name or the effective user's, never empty


# --- on a real kernel --------------------------------------------------------------


def capped_node(ns: Netns, tmp: Path) -> Path:
    """An HTB tree on the namespace's v0 with pl_heavy capped to 64 kbit/s, and its state."""
    from bwenforcer.kernel.htb import HtbBackend

    cfg = write_config(tmp, device="v0")
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
        ops = [
            ClassOp("create", 10, "default", ClassRates(8_000, 64_000, 1)),
            ClassOp("create", 10, "exempt", ClassRates(8_000, BWMAX_BPS, 1)),
            ClassOp("create", 11, "default", ClassRates(8_000, CAP_BPS, 1)),
            ClassOp("create", 11, "exempt", ClassRates(8_000, BWMAX_BPS, 1)),
            ClassOp("create", 13, "default", ClassRates(8_000, CAP_BPS, 1)),
            ClassOp("create", 13, "exempt", ClassRates(8_000, 2_000_000, 1)),
        ]
        assert kernel.apply(ops) == []
    state = fixed_state()
    StateStore(config.state_file).save(state, NOW - 125)
    return cfg


@pytest.mark.kernel
def test_status_on_a_node_shows_the_capped_slice_first_with_ceil_and_period_end(
    ns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = capped_node(ns, tmp_path)
    monkeypatch.setenv(NOW_ENV, str(NOW))  # inherited by the CLI run in the namespace
    table = bwenforcer_in(ns, "--config", str(cfg), "status")
    doc = bwenforcer_in(ns, "--config", str(cfg), "status", "--json")
    assert table.returncode == 0, table.stderr
    assert "kernel unavailable" not in table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "state saved 2m ago"
    first = lines[2].split()
    assert first[:2] == ["pl_heavy", "10"]
    assert "64kbit/s" in first  # the kernel's ceil, not the 72 kbit/s saved
    assert first[-2:] == ["in", "3h12m"]
    mid = next(line for line in lines if line.startswith("pl_mid"))
    assert "no class" in mid

    assert doc.returncode == 0, doc.stderr
    parsed = json.loads(doc.stdout)
    check_status_json(parsed)
    heavy = parsed["slices"][0]
    assert heavy["name"] == "pl_heavy" and heavy["classes"]["default"]["capped"]
    assert heavy["classes"]["default"]["ceil"] == 64_000
    assert heavy["period_end"] == NOW + 3 * 3600 + 12 * 60


@pytest.mark.kernel
def test_reset_on_a_node_lifts_the_cap_now_and_rebaselines_on_the_counter(
    ns: Netns, tmp_path: Path
) -> None:
    cfg = capped_node(ns, tmp_path)
    assert tc_ceils(ns, "v0")["1:100a"] == 64_000
    done = bwenforcer_in(ns, "--config", str(cfg), "reset", "10")
    assert done.returncode == 0, done.stderr
    assert "caps lifted now" in done.stdout
    assert tc_ceils(ns, "v0")["1:100a"] == CAP_BPS
    assert tc_ceils(ns, "v0")["1:200a"] == BWMAX_BPS
    heavy = StateStore(str(tmp_path / "state.json")).read_unlocked().state.slices[10]
    assert heavy.default.used_bytes == 0 and not heavy.default.capped
    assert heavy.default.ceil_bps == CAP_BPS
    assert heavy.default.last_counter_bytes == 0  # the new class's counter, not the saved one
    assert "reset by operator" in done.stderr


def test_status_and_show_name_cgroup_tenants_by_unit(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from bwenforcer.core.settings import CgroupConfig, CgroupPattern, ClassifierConfig

    mount = tmp_path / "cgroup"
    (mount / "machine.slice" / "heavy.scope").mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("")
    config = dataclasses.replace(
        cfg,
        classifier=ClassifierConfig("cgroup"),
        cgroups=CgroupConfig(str(mount), (CgroupPattern(("machine.slice", "*.scope"), "pl"),)),
    )
    use_config(monkeypatch, config)
    code, out, _ = run(capsys, "--config", "cfg.yaml", "status")
    assert code == 0
    header, *rows = out.splitlines()[1:]
    assert header.split()[:3] == ["SLICE", "UNIT", "XID"]
    assert [r.split()[:2] for r in rows if r.startswith("pl_heavy")] == [
        ["pl_heavy", "heavy.scope"]
    ] * 2
    assert all(r.split()[1] == "-" for r in rows if r.startswith("pl_light"))
    code, out, _ = run(capsys, "--config", "cfg.yaml", "status", "--json")
    units = {s["name"]: s["unit"] for s in json.loads(out)["slices"]}
    assert units["pl_heavy"] == "heavy.scope" and units["pl_light"] is None
    # show takes the unit's name, and says which cgroup it is
    code, out, _ = run(capsys, "--config", "cfg.yaml", "show", "heavy.scope")
    assert code == 0
    assert out.splitlines()[:2] == [
        "slice pl_heavy xid 10: live",
        "unit heavy.scope (cgroup machine.slice/heavy.scope)",
    ]
    code, out, _ = run(capsys, "--config", "cfg.yaml", "show", "--json", "pl_heavy")
    doc = json.loads(out)
    assert (doc["unit"], doc["cgroup"]) == ("heavy.scope", "machine.slice/heavy.scope")

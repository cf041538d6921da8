"""``bwenforcer explain``: the rule behind each ceil, against the kernel's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bwenforcer.core.model import AuditEntry
from bwenforcer.core.settings import Config
from bwenforcer.store.state import StateStore
from tests.cli.test_cli_inspect import capped_node, cfg, run  # noqa: F401 (a fixture)
from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns
from tests.views.test_inspection import NOW, fixed_state


def test_explain_without_the_kernel_gives_the_rule_and_its_numbers(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--config", "cfg.yaml", "explain", "pl_heavy")
    assert code == 0, err
    assert "kernel unavailable" in err
    lines = out.splitlines()
    assert lines[0] == "slice pl_heavy xid 10: the period ends in 3h12m"
    assert lines[2] == "default: used 190KiB of 200KiB"
    assert lines[3].startswith(
        "  pacing from the threshold 100KiB: (limit 200KiB − 190KiB) = 10KiB"
    )
    assert "in the kernel unavailable" in lines[4] and "DIFFERS" not in out
    assert lines[6].startswith("exempt: used 3MiB of") and "not capped" in lines[7]


def test_explain_counts_grants_in_force(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    grant = AuditEntry("grant", "pl_heavy", "default", 100 * 1024, "alice", NOW - 5, NOW + 60)
    StateStore(cfg.state_file).save(dataclasses.replace(fixed_state(), audit=(grant,)), NOW - 1)
    code, out, err = run(capsys, "--config", "cfg.yaml", "explain", "10", "--json")
    assert code == 0, err
    default = json.loads(out)["classes"]["default"]
    assert (default["used_bytes"], default["granted_bytes"], default["counted_bytes"]) == (
        190 * 1024,
        100 * 1024,
        90 * 1024,
    )
    assert default["rule"] is None and default["rule_ceil"] == 10_000_000  # lifted
    assert default["planned_ceil"] == 72_000 and default["kernel_ceil"] is None


def test_explain_of_a_slice_not_live_is_a_usage_error(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--config", "cfg.yaml", "explain", "pl_old")
    assert code == 2 and "only in the ledger" in err and out == ""


@pytest.mark.kernel
def test_explain_on_a_node_flags_a_kernel_ceil_that_is_not_the_planned_one(
    ns: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg_path = capped_node(ns, tmp_path)  # the kernel holds 64 kbit/s, the state planned 72
    monkeypatch.setenv("BWENFORCER_NOW", str(NOW))
    done = bwenforcer_in(ns, "--config", str(cfg_path), "explain", "pl_heavy", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    default, exempt = doc["classes"]["default"], doc["classes"]["exempt"]
    assert doc["kernel_available"]
    assert (default["planned_ceil"], default["kernel_ceil"], default["differs"]) == (
        72_000,
        64_000,
        True,
    )
    assert exempt["kernel_ceil"] == exempt["planned_ceil"] and not exempt["differs"]
    text = bwenforcer_in(ns, "--config", str(cfg_path), "explain", "pl_heavy").stdout
    assert "in the kernel 64kbit/s  ← DIFFERS from the plan" in text
    # a sync plans the kernel's ceil anew: no difference after it
    assert bwenforcer_in(ns, "--config", str(cfg_path), "sync").returncode in (0, 1)
    after = json.loads(
        bwenforcer_in(ns, "--config", str(cfg_path), "explain", "pl_heavy", "--json").stdout
    )
    assert not after["classes"]["default"]["differs"]

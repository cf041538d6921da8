"""``bwenforcer policy``: the published ceil by usage, through the real command line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bwenforcer.core.settings import Config
from bwenforcer.store.state import StateStore
from tests.cli.test_cli_inspect import cfg, run  # noqa: F401 (a fixture)
from tests.views.test_inspection import NOW, fixed_state


def test_the_defaults_table_without_a_slice(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--config", "cfg.yaml", "policy")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "policy of the config's defaults, pacing with 1d left in the period"
    assert "default: limit 5.4GiB, threshold 4.32GiB" in out and "tiers -, taper -" in out
    # today's rule: full rate below the threshold, pacing from it
    assert any(line.endswith("  pacing") for line in lines)


def test_a_slice_with_tiers_from_its_state(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = fixed_state()
    heavy = state.slices[10]
    tiered = dataclasses.replace(heavy.default.policy, tiers="25%:4mbit,40%:1mbit")
    heavy = dataclasses.replace(heavy, default=dataclasses.replace(heavy.default, policy=tiered))
    state = dataclasses.replace(state, slices={**state.slices, 10: heavy})
    StateStore(cfg.state_file).save(state, NOW - 60)

    code, out, err = run(capsys, "--config", "cfg.yaml", "policy", "pl_heavy", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["name"], doc["xid"], doc["period_end"]) == ("pl_heavy", 10, heavy.period_end_s)
    default = doc["classes"]["default"]
    assert default["tiers"] == "25%:4mbit,40%:1mbit"
    rows = {r["used_percent"]: (r["ceil"], r["rule"]) for r in default["rows"]}
    assert rows["0%"] == (default["max_rate"], None)
    assert rows["25%"] == (4_000_000, "tier 25%")
    assert rows["40%"] == (1_000_000, "tier 40%")
    assert rows["100%"][1] == "pacing"  # no budget left: the min rate, below the tier

    code, out, err = run(capsys, "--config", "cfg.yaml", "policy", "10", "--left", "2h")
    assert code == 0, err
    assert out.startswith("policy of slice pl_heavy xid 10, pacing with 2h00m left")
    assert any(line.split()[1:] == ["25%", "4Mbit/s", "tier", "25%"] for line in out.splitlines())


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("policy", "pl_nosuch"), "slice 'pl_nosuch': not in the state"),
        (("policy", "--left", "soon"), "--left: 'soon' is not a duration"),
    ],
)
def test_bad_arguments_are_one_line(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    problem: str,
) -> None:
    code, out, err = run(capsys, "--config", "cfg.yaml", *argv)
    assert code == 2 and problem in err and out == ""

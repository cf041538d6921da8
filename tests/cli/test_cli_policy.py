"""``bwenforcer policy``: the published ceil by usage, through the real command line."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bwenforcer.core.model import ClassState, SliceState, State
from bwenforcer.core.policy import rate_rule, rule_ceil
from bwenforcer.core.settings import Config
from bwenforcer.core.window import bucket_span, carried_ring
from bwenforcer.store.state import StateStore
from tests.cli.test_cli_inspect import cfg, run, use_config  # noqa: F401 (a fixture)
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


def _windowed() -> tuple[State, SliceState]:
    """fixed_state() with pl_heavy under a 30-day window (its ring holding its usage)."""
    state = fixed_state()
    heavy = state.slices[10]

    def windowed(cs: ClassState) -> ClassState:
        policy = dataclasses.replace(cs.policy, window_s=30 * 86400)
        return dataclasses.replace(cs, policy=policy, buckets=carried_ring(cs.used_bytes))

    start, end = bucket_span(NOW, 30 * 86400)
    heavy = dataclasses.replace(
        heavy,
        period_start_s=start,
        period_end_s=end,
        default=windowed(heavy.default),
        exempt=windowed(heavy.exempt),
    )
    return dataclasses.replace(state, slices={**state.slices, 10: heavy}), heavy


def test_a_slice_under_a_rolling_window_paces_until_its_oldest_bucket_leaves(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    state, heavy = _windowed()
    StateStore(cfg.state_file).save(state, NOW - 60)
    code, out, err = run(capsys, "--config", "cfg.yaml", "policy", "pl_heavy", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["period_end"] == heavy.period_end_s > NOW
    default = doc["classes"]["default"]
    assert default["window_s"] == 30 * 86400
    # the planner's function, with the end of the current bucket as the period's end
    rule = rate_rule(heavy.default.policy, cfg.node_cap_bps, cfg.bwmin_bps)
    for row in default["rows"]:
        expected = rule_ceil(rule, row["used_bytes"], NOW, heavy.period_end_s)
        assert (row["ceil"], row["rule"] or "") == expected[1:]
    code, out, err = run(capsys, "--config", "cfg.yaml", "policy", "pl_heavy")
    assert out.startswith("policy of slice pl_heavy xid 10, a rolling window of 30d, pacing with")
    assert "until its oldest bucket leaves it" in out.splitlines()[0]

    code, out, err = run(capsys, "--config", "cfg.yaml", "explain", "pl_heavy", "--json")
    assert code == 0, err
    assert json.loads(out)["window_s"] == 30 * 86400
    code, out, err = run(capsys, "--config", "cfg.yaml", "explain", "pl_heavy")
    assert "a rolling window of 30d: its oldest bucket leaves it in" in out.splitlines()[0]
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy", "--json")
    assert code == 0, err
    assert json.loads(out)["window_s"] == 30 * 86400
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy")
    assert "rolling window 30d: usage since" in out


def test_the_defaults_table_under_a_default_window(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_config(monkeypatch, dataclasses.replace(cfg, window_s=7 * 86400))
    code, out, err = run(capsys, "--config", "cfg.yaml", "policy", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["period_end"] == bucket_span(NOW, 7 * 86400)[1]
    assert doc["classes"]["exempt"]["window_s"] == 7 * 86400

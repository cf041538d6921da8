"""When a budget runs out at a rate (core/projection.py), and the metrics' hour window."""

from __future__ import annotations

import math

from bwenforcer.core.model import State
from bwenforcer.core.planner import plan
from bwenforcer.core.projection import exhausted_at_s, last_hour_bytes
from bwenforcer.cycle.run import CycleResult
from bwenforcer.metrics.collector import SLICE_GAUGES, AgentMetrics, slice_samples
from tests.planner_data import PARAMS, T0, desired, kslice, snapshot, want

P = {"limit_bytes": 1000, "now_s": T0, "period_end_s": T0 + 100}


def test_the_budget_runs_out_when_what_is_left_is_sent() -> None:
    assert exhausted_at_s(counted_bytes=600, rate_bytes_per_s=10.0, **P) == T0 + 40
    assert exhausted_at_s(counted_bytes=1000, rate_bytes_per_s=0.0, **P) == T0  # gone
    assert exhausted_at_s(counted_bytes=0, rate_bytes_per_s=5.0, **P) == math.inf  # lasts
    assert exhausted_at_s(counted_bytes=0, rate_bytes_per_s=0.0, **P) == math.inf
    assert math.isnan(exhausted_at_s(counted_bytes=0, rate_bytes_per_s=math.nan, **P))


def test_the_last_hour_is_the_current_bucket_and_the_rest_of_the_one_before() -> None:
    hour = 3600 * 500_000
    assert last_hour_bytes(hour, hour, 0, 3600) == 3600  # at the turn: all of the last
    assert last_hour_bytes(hour + 900, hour, 100, 3600) == 100 + 2700
    assert last_hour_bytes(hour + 3599, hour, 100, 3600) == 101


def _index(name: str) -> int:
    return [n for n, _ in SLICE_GAUGES].index(name)


def test_the_metric_projects_at_the_rate_of_the_last_whole_hour_observed() -> None:
    w = want("pl_a", 1, limit=10_000_000)
    metrics = AgentMetrics()
    first = plan(desired(w), snapshot(kslice(1)), State(), PARAMS, T0)
    metrics.observe(CycleResult(T0, 0.1, first, None))
    at = _index("budget_exhausted_timestamp_seconds")
    values = {tc: v for _, _, tc, v in slice_samples(metrics.snapshot().latest)}
    assert math.isnan(values["default"][at])  # no hour observed yet
    # 3.6 MB in the hour: 1,000 B/s; 6.4 MB left of 10 MB: 6,400 s
    second = plan(desired(w), snapshot(kslice(1, 3_600_000)), first.state, PARAMS, T0 + 3600)
    metrics.observe(CycleResult(T0 + 3600, 0.1, second, None))
    snap = metrics.snapshot()
    values = {tc: v for _, _, tc, v in slice_samples(snap.latest, snap.rates)}
    assert values["default"][at] == T0 + 3600 + 6400
    assert values["exempt"][at] == math.inf  # nothing sent

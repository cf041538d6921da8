"""Operators' grant and reset with budgets per direction (issue 19): plain data."""

from __future__ import annotations

import dataclasses

from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    ClassState,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
    SliceState,
    State,
)
from bwenforcer.views.grant import grant
from bwenforcer.views.reset import forgive

CAP, BWMAX, BWMIN, NOW = 10_000_000, 100_000_000, 8_000, 1_763_800_000
M = 1_000_000


def _state(direction: str, used: int, in_used: int) -> State:
    p = ClassPolicy(M, 800_000, BWMIN, CAP, 1, direction=direction)
    cs = ClassState(p, used, 0, 100_000, True, True, in_used_bytes=in_used, in_limit_bps=100_000)
    return State({10: SliceState("pl_a", 10, NOW - 600, NOW + 3000, cs, ClassState(p))})


def _snapshot(ceil: int) -> KernelSnapshot:
    k = KernelClass(ClassRates(BWMIN, ceil, 1), 0)
    return KernelSnapshot(CAP, BWMAX, {10: KernelSlice(10, k, k)})


def test_a_grant_to_an_inbound_budget_leaves_egress_uncapped_and_counts_received_bytes() -> None:
    state = _state("in", used=5 * M, in_used=900_000)
    kwargs = {"user": "op", "reason": "", "until_s": None, "now_s": NOW, "bwmin_bps": BWMIN}
    done = grant(
        state, 10, ("default",), 50_000, snapshot=_snapshot(100_000), inbound=True, **kwargs
    )
    cs = done.slice.default
    # 900 kB received less 50 kB granted is still past the 800 kB threshold: capped; but
    # the budget counts nothing sent, so egress gets its full rate back
    assert cs.capped and cs.ceil_bps == CAP
    assert [op.rates.max_rate_bps for op in done.ops if op.rates] == [CAP]
    # inbound off: today's rule on what was sent (5 MB: capped at the floor)
    off = grant(state, 10, ("default",), 50_000, snapshot=_snapshot(100_000), **kwargs)
    assert off.slice.default.capped and off.slice.default.ceil_bps == BWMIN


def test_a_reset_forgives_the_received_bytes_too() -> None:
    state = _state("both", used=300_000, in_used=600_000)
    done = forgive(
        state, 10, ("default",), _snapshot(100_000), BWMIN,
        user="op", reason="", now_s=NOW, inbound=True,
    )  # fmt: skip
    cs = done.slice.default
    assert (cs.used_bytes, cs.in_used_bytes, cs.capped) == (0, 0, False)
    assert done.state.audit[-1].size_bytes == 900_000
    kept = forgive(state, 10, ("default",), None, BWMIN, user="op", reason="", now_s=NOW)
    assert kept.slice.default.in_used_bytes == 600_000


def test_status_shows_both_directions_with_inbound_on_and_todays_table_without() -> None:
    from bwenforcer.views.status import status_json, status_table

    state = _state("in", used=5 * M, in_used=900_000)
    doc = status_json(state, _snapshot(CAP), inbound=True)
    cls = doc["slices"][0]["classes"]["default"]
    assert (cls["used_bytes"], cls["in_used_bytes"], cls["in_limit"], cls["direction"]) == (
        5 * M, 900_000, 100_000, "in",
    )  # fmt: skip
    table = status_table(state, _snapshot(CAP), NOW, inbound=True, fit=False)
    header, row = table.splitlines()[1], table.splitlines()[2]
    assert "RECEIVED" in header and "IN LIMIT" in header
    # USED is what the budget counts: 900 kB of 1 MB received, not the 5 MB sent
    assert "default in" in row and "90%" in row and "100kbit" in row
    off = status_json(state, _snapshot(CAP))
    assert "in_used_bytes" not in off["slices"][0]["classes"]["default"]
    assert "RECEIVED" not in status_table(state, _snapshot(CAP), NOW, fit=False)


def test_show_gives_both_directions_with_inbound_on() -> None:
    from bwenforcer.views.show import find_slice, show_json, show_text

    state = _state("both", used=300_000, in_used=600_000)
    report = dataclasses.replace(find_slice(state, (), "pl_a"), inbound=True)  # type: ignore[arg-type]
    cls = show_json(report, NOW)["classes"]["default"]
    assert (cls["direction"], cls["in_used_bytes"], cls["in_limit"]) == ("both", 600_000, 100_000)
    page = show_text(report, NOW)
    assert "90% of the limit, both" in page and "received" in page and "in limit" in page
    today = find_slice(state, (), "pl_a")
    assert today is not None and "received" not in show_text(today, NOW)
    assert "in_used_bytes" not in show_json(today, NOW)["classes"]["default"]


def test_the_policy_table_and_explain_give_a_budget_counting_both_half_the_spread() -> None:
    from bwenforcer.views.explain import explain_view
    from bwenforcer.views.policy import policy_view
    from bwenforcer.views.show import find_slice

    state = _state("both", used=300_000, in_used=600_000)
    p = state.slices[10].default.policy
    caps = {"default": CAP, "exempt": BWMAX}
    args = {"bwmin_bps": BWMIN, "now_s": NOW, "period_end_s": NOW + 3600}
    one = policy_view("pl_a", 10, {"default": p, "exempt": p}, caps, **args)
    two = policy_view("pl_a", 10, {"default": p, "exempt": p}, caps, inbound=True, **args)
    at_threshold = [r for r in one.classes[0].rows if r.used_bytes == 800_000]
    halved = [r for r in two.classes[0].rows if r.used_bytes == 800_000]
    assert halved[0].ceil_bps == max(BWMIN, at_threshold[0].ceil_bps // 2 // 8 * 8)
    report = dataclasses.replace(find_slice(state, (), "pl_a"), inbound=True)  # type: ignore[arg-type]
    view = explain_view(report, caps, bwmin_bps=BWMIN, now_s=NOW)
    default = view.classes[0]
    assert default.counted_bytes == 900_000
    assert "shared by sending and receiving" in default.why

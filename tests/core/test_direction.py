"""Budgets per direction (core/direction.py and the planner with inbound on): plain data
and hypothesis."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.direction import inbound_change, parse_direction
from bwenforcer.core.inbound import InboundLimit, InboundSnapshot
from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    DesiredSet,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    State,
)
from bwenforcer.core.plan import (
    Inherit,
    MoveToLedger,
    Notify,
    Plan,
    Revive,
    SetInboundLimit,
    SetRates,
)
from bwenforcer.core.planner import PlanParams, mark_sent, plan
from bwenforcer.core.policy import capped_ceil_bps, ceil_table, rate_rule, rule_ceil
from tests.core.test_tiers import policies
from tests.planner_data import (
    BWMAX_BPS,
    BWMIN_BPS,
    CAP_BPS,
    PERIOD_S,
    T0,
    desired,
    kslice,
    policy,
    snapshot,
)

ON = PlanParams(period_s=PERIOD_S, anchor=None, bwmin_bps=BWMIN_BPS, inbound=True)
OFF = PlanParams(period_s=PERIOD_S, anchor=None, bwmin_bps=BWMIN_BPS)
LIMIT = 1_000_000


def slice_(direction: str = "in", xid: int = 10, name: str = "pl_a") -> DesiredSlice:
    p = dataclasses.replace(policy(LIMIT), direction=direction)
    e = dataclasses.replace(policy(3 * LIMIT, max_rate=BWMAX_BPS), direction=direction)
    return DesiredSlice(name, xid, p, e)


def inb(xid: int = 10, d: int = 0, e: int = 0, **limits: int) -> InboundSnapshot:
    return InboundSnapshot(
        {(xid, "default"): d, (xid, "exempt"): e},
        {(xid, tc): bps for tc, bps in limits.items()},
    )


def two_cycles(
    want: DesiredSlice, out_bytes: int, in_bytes: int, params: PlanParams = ON, **limits: int
) -> tuple[Plan, Plan]:
    first = plan(desired(want), snapshot(), State(), params, T0, inbound=inb(want.xid))
    return first, plan(
        desired(want),
        snapshot(kslice(want.xid, out_bytes)),
        first.state,
        params,
        T0 + 3600,
        inbound=inb(want.xid, in_bytes, **limits),
    )


def test_directions_parse_and_bad_ones_are_refused() -> None:
    assert [parse_direction(t) for t in ("out", " IN ", "both")] == ["out", "in", "both"]
    for bad in ("down", "", 1, None):
        with pytest.raises(ValueError, match="not out, in or both"):
            parse_direction(bad)


def test_with_inbound_off_every_budget_counts_out_and_nothing_inbound_runs() -> None:
    """A policy saying ``in`` with inbound off: the plan is today's, whatever the backend
    would say (the inbound read is not even looked at)."""
    want = slice_("in")
    today = dataclasses.replace(want, default=policy(LIMIT), exempt=want.exempt)
    _, second = two_cycles(want, 900_000, 5_000_000, OFF)
    _, second_today = two_cycles(today, 900_000, 0, OFF)
    cs = second.state.slices[10].default
    assert cs.capped and cs.in_used_bytes == 0 and cs.in_limit_bps == 0
    assert cs.ceil_bps == second_today.state.slices[10].default.ceil_bps
    assert not second.inbound_limits()
    assert not any(line.inbound for line in second.live)


def test_an_inbound_budget_counts_received_bytes_and_limits_inbound_only() -> None:
    _, second = two_cycles(slice_("in"), 5_000_000, 900_000)
    cs = second.state.slices[10].default
    assert (cs.used_bytes, cs.in_used_bytes, cs.in_last_counter_bytes) == (
        5_000_000,
        900_000,
        900_000,
    )
    assert cs.capped
    paced = capped_ceil_bps(
        used_bytes=900_000, limit_bytes=LIMIT, now_s=T0 + 3600,
        period_end_s=T0 + PERIOD_S, min_rate_bps=BWMIN_BPS, max_rate_bps=CAP_BPS,
    )  # fmt: skip
    assert second.inbound_limits() == [InboundLimit(10, "default", max(paced, BWMIN_BPS))]
    assert cs.in_limit_bps == max(paced, BWMIN_BPS)
    # egress is left alone: 5 MB sent against a 1 MB inbound budget, ceil uncapped
    assert cs.ceil_bps == CAP_BPS
    assert not any(isinstance(a, SetRates) for a in second.actions)
    line = second.lines[0].default
    assert (line.in_used_bytes, line.in_delta_bytes, line.in_new_limit_bps) == (
        900_000, 900_000, cs.in_limit_bps,
    )  # fmt: skip


def test_an_inbound_counter_that_went_back_restarted_from_zero() -> None:
    _, second = two_cycles(slice_("in"), 0, 300_000)
    third = plan(
        desired(slice_("in")), snapshot(kslice(10)), second.state, ON, T0 + 7200,
        inbound=inb(10, 1_000),
    )  # fmt: skip
    cs = third.state.slices[10].default
    assert (cs.in_used_bytes, cs.in_last_counter_bytes) == (301_000, 1_000)


def test_hysteresis_changes_an_inbound_limit_only_by_a_real_margin() -> None:
    assert inbound_change(None, 1_000) and inbound_change(1_000, None)
    assert not inbound_change(None, None) and not inbound_change(1_000, 1_049)
    assert not inbound_change(1_000, 951)
    assert inbound_change(1_000, 1_050) and inbound_change(1_000, 950)
    _, second = two_cycles(slice_("in"), 0, 900_000)
    target = second.state.slices[10].default.in_limit_bps
    # the backend holds a limit 3 % off: kept, and the state says what is in force
    _, kept = two_cycles(slice_("in"), 0, 900_000, default=target * 103 // 100)
    assert not [a for a in kept.actions if isinstance(a, SetInboundLimit)]
    assert kept.state.slices[10].default.in_limit_bps == target * 103 // 100
    _, moved = two_cycles(slice_("in"), 0, 900_000, default=target * 2)
    assert moved.inbound_limits() == [InboundLimit(10, "default", target)]


def test_the_limit_is_lifted_at_period_end_and_below_the_threshold() -> None:
    _, second = two_cycles(slice_("in"), 0, 900_000)
    limit = second.state.slices[10].default.in_limit_bps
    later = plan(
        desired(slice_("in")), snapshot(kslice(10)), second.state, ON, T0 + PERIOD_S,
        inbound=inb(10, 900_000, default=limit),
    )  # fmt: skip
    assert later.inbound_limits() == [InboundLimit(10, "default", None)]
    cs = later.state.slices[10].default
    assert (cs.in_used_bytes, cs.in_limit_bps, cs.capped) == (0, 0, False)
    # a limit the backend has on a class under its budget: lifted
    _, stray = two_cycles(slice_("in"), 0, 10, exempt=50_000)
    assert stray.inbound_limits() == [InboundLimit(10, "exempt", None)]


def test_both_counts_the_sum_and_paces_each_direction_at_half_the_spread() -> None:
    _, second = two_cycles(slice_("both"), 500_000, 400_000)
    cs = second.state.slices[10].default
    assert cs.capped
    spread = (LIMIT - 900_000) * 8 // (PERIOD_S - 3600)
    half = max(BWMIN_BPS, spread // 2)
    assert cs.ceil_bps == cs.in_limit_bps == half
    # one direction alone under the same usage would have the whole spread
    _, alone = two_cycles(slice_("in"), 0, 900_000)
    assert alone.state.slices[10].default.in_limit_bps == max(BWMIN_BPS, spread)


def test_inbound_not_read_holds_usage_and_limits() -> None:
    _, second = two_cycles(slice_("in"), 0, 900_000)
    held = plan(desired(slice_("in")), snapshot(kslice(10)), second.state, ON, T0 + 7200)
    assert held.state.slices[10] == second.state.slices[10]
    assert not held.inbound_limits()


def test_the_ledger_carries_inbound_usage_and_a_revival_keeps_it() -> None:
    _, second = two_cycles(slice_("in"), 0, 600_000)
    gone = plan(
        DesiredSet(()), snapshot(kslice(10)), second.state, ON, T0 + 7200,
        inbound=inb(10, 700_000),
    )  # fmt: skip
    assert any(isinstance(a, MoveToLedger) for a in gone.actions)
    entry = gone.state.ledger["pl_a"].slice.default
    assert entry.in_used_bytes == 700_000  # the last bytes counted as it left
    back = plan(
        desired(slice_("in", xid=11)), snapshot(kslice(11)), gone.state, ON, T0 + 7300,
        inbound=inb(11, 123),
    )  # fmt: skip
    assert any(isinstance(a, Revive) for a in back.actions)
    cs = back.state.slices[11].default
    assert (cs.in_used_bytes, cs.in_last_counter_bytes) == (700_000, 123)


def test_a_rename_inherits_inbound_usage() -> None:
    _, second = two_cycles(slice_("in"), 0, 600_000)
    renamed = plan(
        desired(slice_("in", name="pl_b")), snapshot(kslice(10)), second.state, ON, T0 + 7200,
        inbound=inb(10, 650_000),
    )  # fmt: skip
    assert any(isinstance(a, Inherit) for a in renamed.actions)
    cs = renamed.state.slices[10].default
    assert (cs.in_used_bytes, cs.in_last_counter_bytes) == (650_000, 650_000)


# --- properties ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    direction=st.sampled_from(["out", "in", "both"]),
    cycles=st.lists(
        st.tuples(
            st.integers(1, 20_000),  # seconds to the next cycle
            st.integers(0, 400_000),  # bytes sent
            st.integers(0, 400_000),  # bytes received
            st.booleans(),  # the inbound counter restarts
            st.booleans(),  # the backend's limit is what was planned (else: none)
        ),
        max_size=8,
    ),
)
def test_the_quiet_path_plans_as_the_long_way_with_inbound_on(
    direction: str, cycles: list[tuple[int, int, int, bool, bool]]
) -> None:
    want = slice_(direction)
    state = plan(desired(want), snapshot(), State(), ON, T0, inbound=inb()).state
    now, out_c, in_c = T0, 0, 0
    limits: dict[str, int] = {}
    for step_s, sent, received, restart, kept in cycles:
        now += step_s
        out_c += sent
        in_c = received if restart else in_c + received
        kernel = KernelSlice(
            10,
            KernelClass(_rates(state, "default"), out_c),
            KernelClass(_rates(state, "exempt"), 0),
        )
        snap = inb(10, in_c, **(limits if kept else {}))
        quick = plan(desired(want), snapshot(kernel), state, ON, now, inbound=snap)
        slow = plan(desired(want), snapshot(kernel), state, ON, now, quiet=False, inbound=snap)
        assert quick == slow
        assert (quick.state.slices[10] is state.slices[10]) == (
            slow.state.slices[10] is state.slices[10]
        )
        state = quick.state
        limits = {
            tc: cs.in_limit_bps
            for tc, cs in (
                ("default", state.slices[10].default),
                ("exempt", state.slices[10].exempt),
            )
            if cs.in_limit_bps
        }


def _rates(state: State, tc: str) -> ClassRates:
    cs = state.slices[10].cls(tc)  # type: ignore[arg-type]
    cap = CAP_BPS if tc == "default" else BWMAX_BPS
    return ClassRates(BWMIN_BPS, cs.ceil_bps or cap, 1)


@settings(max_examples=300, deadline=None)
@given(
    default=policies(CAP_BPS),
    direction=st.sampled_from(["out", "in", "both"]),
    used=st.tuples(st.floats(0, 2.5), st.floats(0, 2.5)),
    elapsed=st.integers(0, 86_400),
)
def test_each_directions_rate_is_the_policy_tables(
    default: ClassPolicy, direction: str, used: tuple[float, float], elapsed: int
) -> None:
    """The planner's egress ceil and inbound limit are ``bwenforcer policy``'s table at the
    usage the budget counts, with the ways its direction gives (1, or 2 for both)."""
    pol = dataclasses.replace(default, direction=direction)
    want = DesiredSlice("pl_a", 10, pol, policy(LIMIT, max_rate=BWMAX_BPS))
    first = plan(desired(want), snapshot(), State(), ON, T0, inbound=inb())
    out_b, in_b = (int(pol.limit_bytes * f) for f in used)
    now = T0 + elapsed
    second = plan(
        desired(want), snapshot(kslice(10, out_b)), first.state, ON, now, inbound=inb(10, in_b)
    )
    cs = second.state.slices[10].default
    # from the state: at the period's end the usage starts again from 0
    counted = (cs.used_bytes if direction != "in" else 0) + (
        cs.in_used_bytes if direction != "out" else 0
    )
    rule = rate_rule(pol, CAP_BPS, BWMIN_BPS)
    ways = 2 if direction == "both" else 1
    (row,) = ceil_table(rule, (counted,), now, second.state.slices[10].period_end_s, ways)
    assert cs.capped == bool(row.applies)
    assert cs.ceil_bps == (row.ceil_bps if direction != "in" else rule.uncapped[1])
    assert cs.in_limit_bps == (row.ceil_bps if row.applies and direction != "out" else 0)


def _spend(
    ways: int, limit: int, start_used: int, left_s: int, interval_s: int, demand: tuple[bool, bool]
) -> int:
    """Bytes used by the end of a period by a slice whose budget counts both directions,
    each sending as fast as its rate lets it (if it wants to), the rate recomputed every
    ``interval_s`` by the pacing rule with ``ways``; no floor (min rate 0)."""
    used = start_used
    while left_s > 0:
        rate_bps = capped_ceil_bps(
            used_bytes=used, limit_bytes=limit, now_s=0, period_end_s=left_s,
            min_rate_bps=0, max_rate_bps=10**12, ways=ways,
        )  # fmt: skip
        step_s = min(interval_s, left_s)
        used += sum(demand) * rate_bps * step_s // 8
        left_s -= step_s
    return used


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(10**6, 10**12),
    share=st.floats(0, 1),
    left_s=st.integers(1, 86_400),
    interval_s=st.integers(1, 3600),
    demand=st.sampled_from([(True, True), (True, False), (False, True)]),
)
def test_both_paced_at_half_the_spread_never_exceeds_the_budget(
    limit: int, share: float, left_s: int, interval_s: int, demand: tuple[bool, bool]
) -> None:
    """Recomputed each cycle, the rule for ``both`` keeps the two directions together
    within the budget, wherever in the period the threshold is crossed."""
    assert _spend(2, limit, int(limit * share), left_s, interval_s, demand) <= limit


def test_the_full_spread_each_way_would_overshoot_near_the_end() -> None:
    """Why ``both`` halves the spread: with the whole spread each way, a slice that
    crosses its threshold a cycle and a half before the end spends a third more than
    its remainder."""
    limit, used = 1_000_000_000, 800_000_000
    assert _spend(1, limit, used, 450, 300, (True, True)) > limit + 60_000_000
    assert _spend(2, limit, used, 450, 300, (True, True)) <= limit


def test_the_ways_split_only_pacing_not_tiers() -> None:
    rule = rate_rule(
        dataclasses.replace(policy(LIMIT), tiers="50%:1mbit", pacing=False), CAP_BPS, BWMIN_BPS
    )
    assert rule_ceil(rule, LIMIT // 2, T0, T0 + 100, 2)[1] == 1_000_000


def test_limiting_off_lifts_every_inbound_limit() -> None:
    _, second = two_cycles(slice_("in"), 0, 900_000)
    limit = second.state.slices[10].default.in_limit_bps
    off = plan(
        desired(slice_("in"), off=True), snapshot(kslice(10)), second.state, ON, T0 + 7200,
        inbound=inb(10, 900_000, default=limit),
    )  # fmt: skip
    assert off.limiting_off and off.inbound_limits() == [InboundLimit(10, "default", None)]
    assert not plan(
        desired(slice_("in"), off=True), snapshot(kslice(10)), second.state, OFF, T0 + 7200,
        inbound=inb(10, 900_000, default=limit),
    ).inbound_limits()  # fmt: skip


def test_early_notices_of_an_inbound_budget_take_shares_of_the_received_bytes() -> None:
    """A budget of received bytes: 600 kB received of 1 MB passes 50 % (5 MB sent count
    for nothing); the share is told once, and the lift of its cap is due when lifted."""
    want = slice_("in")
    noticed = dataclasses.replace(
        want, default=dataclasses.replace(want.default, notices="50%,lifted")
    )
    _, second = two_cycles(noticed, 5_000_000, 600_000)
    shares = [a for a in second.actions if isinstance(a, Notify) and a.kind == "share"]
    assert [(a.classes, a.share_bp) for a in shares] == [(("default",), 5000)]
    cs = second.state.slices[10].default
    assert not cs.capped and cs.notice_bp == 0  # marked when delivered (mark_sent)
    told = mark_sent(second.state, shares)
    third = plan(
        desired(noticed), snapshot(kslice(10, 5_000_000)), told, ON, T0 + 7200,
        inbound=inb(10, 600_000),
    )  # fmt: skip
    assert not [a for a in third.actions if isinstance(a, Notify)]  # once per period
    # past the threshold: capped (inbound); a grant-free period end lifts it: due
    fourth = plan(
        desired(noticed), snapshot(kslice(10, 5_000_000)), third.state, ON, T0 + 7800,
        inbound=inb(10, 900_000),
    )  # fmt: skip
    assert fourth.state.slices[10].default.capped
    fifth = plan(
        desired(noticed), snapshot(kslice(10, 5_000_000)), fourth.state, ON,
        T0 + PERIOD_S + 60, inbound=inb(10, 900_000),
    )  # fmt: skip
    lifted = [a for a in fifth.actions if isinstance(a, Notify) and a.kind == "lifted"]
    assert [a.classes for a in lifted] == [("default",)]


def test_a_rolling_window_with_inbound_on_keeps_its_ring_of_sent_bytes() -> None:
    """Inbound accounting on, a budget of sent bytes under a window: the ring moves on as
    with inbound off (the sent bytes leave the window), and received bytes are counted."""
    window_s = 24 * 3600
    want = slice_("out")
    want = DesiredSlice(
        want.name, want.xid,
        dataclasses.replace(want.default, window_s=window_s),
        dataclasses.replace(want.exempt, window_s=window_s),
    )  # fmt: skip
    for params in (ON, OFF):
        _, second = two_cycles(want, 900_000, 300_000, params)
        cs = second.state.slices[10].default
        assert cs.buckets[-1] == 900_000 and cs.used_bytes == 900_000 and cs.capped
        assert cs.in_used_bytes == (300_000 if params is ON else 0)
        later = plan(
            desired(want), snapshot(kslice(10, 900_000)), second.state, params,
            T0 + 3600 + window_s + 2 * 3600, inbound=inb(10, 300_000),
        )  # fmt: skip
        cs = later.state.slices[10].default
        assert cs.used_bytes == 0 and not cs.capped and sum(cs.buckets) == 0

"""Planner properties (hypothesis): rates stay in bounds, budgets cannot be dodged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.model import ClassRates, DesiredSlice, KernelClass, KernelSlice, State
from bwenforcer.planner import PlanParams, plan
from tests.planner_data import BWMAX_BPS, BWMIN_BPS, CAP_BPS, T0, desired, policy, snapshot, want


@given(
    limit=st.integers(1, 10**12),
    used_frac=st.floats(0, 3),
    max_rate=st.integers(1, 10**11),
    min_rate=st.integers(0, 10**11),
    elapsed=st.integers(0, 86_399),
    period=st.integers(60, 10**7),
)
def test_ceil_always_within_bwmin_and_max_rate(
    limit: int, used_frac: float, max_rate: int, min_rate: int, elapsed: int, period: int
) -> None:
    elapsed = elapsed % period
    params = PlanParams(period, None, BWMIN_BPS)
    slice_ = DesiredSlice(
        "pl_a",
        10,
        policy(limit, min_rate=min_rate, max_rate=max_rate),
        policy(limit, max_rate=max_rate),
    )
    p1 = plan(desired(slice_), snapshot(), State(), params, T0)
    used = int(limit * used_frac)
    p2 = plan(
        desired(slice_),
        snapshot(KernelSlice(10, KernelClass(ClassRates(1, 1, 1), used), None)),
        p1.state,
        params,
        T0 + elapsed,
    )
    ceil = p2.state.slices[10].default.ceil_bps
    assert BWMIN_BPS <= ceil <= max(BWMIN_BPS, min(max_rate, CAP_BPS))
    rates = [
        a.rates if hasattr(a, "rates") else a.new
        for a in p2.actions
        if hasattr(a, "rates") or hasattr(a, "new")
    ]
    for r in rates:
        assert r.min_rate_bps <= r.max_rate_bps
        assert r.min_rate_bps >= BWMIN_BPS


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(10**6, 10**9),
    interval=st.sampled_from([60, 300, 900]),
    period=st.sampled_from([3600, 86_400]),
)
def test_sending_at_the_ceil_for_a_whole_period_ends_near_the_limit(
    limit: int, interval: int, period: int
) -> None:
    params = PlanParams(period, None, BWMIN_BPS)
    slice_ = DesiredSlice(
        "pl_a", 10, policy(limit, max_rate=CAP_BPS), policy(limit, max_rate=BWMAX_BPS)
    )
    p = plan(desired(slice_), snapshot(), State(), params, T0)
    counter = 0
    now = T0
    while now + interval < T0 + period:
        ceil = p.state.slices[10].default.ceil_bps
        counter += ceil * interval // 8  # as fast as the ceil allows
        now += interval
        k = KernelSlice(
            10,
            KernelClass(ClassRates(BWMIN_BPS, ceil, 1), counter),
            KernelClass(ClassRates(BWMIN_BPS, BWMAX_BPS, 1), 0),
        )
        p = plan(desired(slice_), snapshot(k), p.state, params, now)
    used = p.state.slices[10].default.used_bytes
    one_cycle_at_max = CAP_BPS * interval // 8
    assert abs(used - limit) <= one_cycle_at_max + BWMIN_BPS * period // 8


events = st.lists(
    st.sampled_from(["send", "delete", "recreate", "reinit", "reset_counter"]),
    min_size=1,
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(seq=events, chunk=st.integers(1, 400_000))
def test_delete_recreate_reinit_or_counter_reset_never_give_a_fresh_budget(
    seq: list[str], chunk: int
) -> None:
    """Usage equals every byte sent within the period, whatever happens to slice and tree."""
    params = PlanParams(86_400, None, BWMIN_BPS)
    present = True
    counter = 0
    sent = 0
    p = plan(desired(want("pl_a", 10)), snapshot(), State(), params, T0)
    now = T0
    for event in seq:
        now += 60
        if event == "send" and present:
            counter += chunk
            sent += chunk
        elif event == "delete":
            present = False
        elif event == "recreate":
            present = True
        elif event in ("reinit", "reset_counter"):
            counter = 0
        kernel = (
            [KernelSlice(10, KernelClass(ClassRates(BWMIN_BPS, CAP_BPS, 1), counter), None)]
            if counter or event != "reinit"
            else []
        )
        if not present:
            kernel = []
            counter = 0
        p = plan(
            desired(want("pl_a", 10)) if present else desired(),
            snapshot(*kernel),
            p.state,
            params,
            now,
        )
    if present:
        used = p.state.slices[10].default.used_bytes
    else:
        used = p.state.ledger["pl_a"].slice.default.used_bytes
    assert used == sent

"""Rolling windows (core/window.py and the planner): the ring, usage leaving the window as
it ages, a cap lifting gradually, clock steps, the ledger, policy changes. Time is passed
in, never slept for.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.layout import kernel_rate_bps
from bwenforcer.core.model import (
    BootClock,
    ClassRates,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    LedgerEntry,
    State,
)
from bwenforcer.core.plan import NewPeriod, Notify, PurgeLedger, Revive
from bwenforcer.core.planner import Plan, mark_notified, mark_sent, plan
from bwenforcer.core.projection import exhausted_at_s
from bwenforcer.core.window import (
    BUCKETS,
    RING,
    bucket_s,
    bucket_span,
    carried_ring,
    expiry_s,
    horizon_s,
    max_steps,
    moved,
)
from tests.planner_data import BWMAX_BPS, PARAMS, T0, desired, policy, snapshot

DAY_S = 86_400
W30_S = 30 * DAY_S
LIMIT = 10_000_000


def _want(window_s: int, limit: int = LIMIT, name: str = "pl_a", xid: int = 10) -> DesiredSlice:
    return DesiredSlice(
        name,
        xid,
        dataclasses.replace(policy(limit), window_s=window_s),
        dataclasses.replace(policy(3 * limit, max_rate=BWMAX_BPS), window_s=window_s),
    )


def _kernel(default_bytes: int, exempt_bytes: int = 0, xid: int = 10) -> KernelSlice:
    return KernelSlice(
        xid,
        KernelClass(ClassRates(1, 1, 1), default_bytes),
        KernelClass(ClassRates(1, 1, 1), exempt_bytes),
    )


def _cycle(
    want: DesiredSlice,
    state: State,
    now: int,
    counter: int | None,
    boot: BootClock | None = None,
    quiet: bool = True,
) -> Plan:
    kernel = () if counter is None else (_kernel(counter, xid=want.xid),)
    return plan(desired(want), snapshot(*kernel), state, PARAMS, now, boot=boot, quiet=quiet)


def test_the_ring_moves_on_and_the_oldest_buckets_leave() -> None:
    ring = tuple(range(1, RING + 1))
    assert moved(ring, 0) is ring
    assert moved(ring, 2) == (*range(3, RING + 1), 0, 0)
    assert moved(ring, RING) == moved(ring, 10 * RING) == (0,) * RING
    assert carried_ring(7)[-1] == 7 and sum(carried_ring(7)) == 7 and len(carried_ring(7)) == RING


def test_buckets_are_a_24th_of_the_window_rounded_up_and_aligned() -> None:
    assert bucket_s(W30_S) == 30 * 3600 and bucket_s(3601) == 151
    start, end = bucket_span(T0, W30_S)
    assert start <= T0 < end and start % bucket_s(W30_S) == 0 and end - start == 30 * 3600
    # the newest bytes leave a whole window after the current bucket ends
    assert expiry_s(end, W30_S) == end + BUCKETS * 30 * 3600 >= end + W30_S
    # a span of s seconds crosses at most s // w + 1 bucket boundaries
    assert max_steps(None, W30_S) is None and max_steps(0, W30_S) == 1
    assert max_steps(31 * 3600, W30_S) == 2


@settings(max_examples=200, deadline=None)
@given(
    window_s=st.sampled_from((3600, 6 * 3600, 7 * DAY_S, W30_S)),
    steps=st.lists(
        st.tuples(st.integers(1, 3 * DAY_S), st.integers(0, 5 * LIMIT)), min_size=1, max_size=30
    ),
    quiet=st.booleans(),
)
def test_usage_is_the_bytes_of_the_buckets_in_the_window(
    window_s: int, steps: list[tuple[int, int]], quiet: bool
) -> None:
    """Usage is what was counted in the current bucket and the BUCKETS before it: at
    least every byte of the last ``window_s``, none older than the window and a bucket.
    """
    want = _want(window_s)
    width = bucket_s(window_s)
    state = _cycle(want, State(), T0, 0).state
    now, counter, sent = T0, 0, []
    for gap_s, bytes_ in steps:
        now += gap_s
        counter += bytes_
        result = _cycle(want, state, now, counter, quiet=quiet)
        assert not any(isinstance(a, NewPeriod) for a in result.actions)
        state = result.state
        sent.append((now, bytes_))
        cs = state.slices[10].default
        assert cs.used_bytes == sum(cs.buckets) and len(cs.buckets) == RING
        assert cs.used_bytes == sum(b for t, b in sent if t // width >= now // width - BUCKETS)
        assert sum(b for t, b in sent if t > now - window_s) <= cs.used_bytes
        assert cs.used_bytes <= sum(b for t, b in sent if t > now - window_s - width)
        period = state.slices[10]
        assert (period.period_start_s, period.period_end_s) == bucket_span(now, window_s)


def test_a_cap_lifts_gradually_as_usage_leaves_the_window() -> None:
    """Day 0 sends 60 % of the budget, day 10 another 40 %: capped; past day 30 + a
    bucket the first bytes have left (usage 40 %: not capped), the others still count.
    """
    want = _want(W30_S)
    state = _cycle(want, State(), T0, 0).state
    state = _cycle(want, state, T0 + 60, 6 * LIMIT // 10).state
    state = _cycle(want, state, T0 + 10 * DAY_S, LIMIT).state
    cs = state.slices[10].default
    assert cs.capped and cs.used_bytes == LIMIT
    state = _cycle(want, state, T0 + 29 * DAY_S, LIMIT).state
    assert state.slices[10].default.capped  # the first bytes have not left yet
    state = _cycle(want, state, T0 + 31 * DAY_S + 6 * 3600, LIMIT).state
    cs = state.slices[10].default
    assert cs.used_bytes == 4 * LIMIT // 10 and not cs.capped
    state = _cycle(want, state, T0 + 42 * DAY_S, LIMIT).state
    assert state.slices[10].default.used_bytes == 0


def test_pacing_under_a_window_spreads_the_rest_until_the_oldest_bucket_leaves() -> None:
    limit = 1000 * LIMIT
    want = _want(W30_S, limit=limit)
    state = _cycle(want, State(), T0, 0).state
    result = _cycle(want, state, T0 + 3600, 9 * limit // 10)
    st_ = result.state.slices[10]
    left_s = st_.period_end_s - (T0 + 3600)
    assert 0 < left_s <= bucket_s(W30_S)
    assert st_.default.capped and st_.default.ceil_bps == kernel_rate_bps(
        (limit // 10) * 8 // left_s
    )


def test_a_stepped_clock_never_empties_the_window() -> None:
    """Same boot: a wall clock 40 days ahead of the boot clock is held; once it is
    trusted anyway (a day later, periods.reanchor_after_s), the ring moves on by no more
    than the boot clock says passed, so the usage stays.
    """
    want = _want(W30_S)
    boot0 = BootClock("b1", 1000)
    state = _cycle(want, State(), T0, 0, boot0).state
    state = _cycle(want, state, T0 + 300, LIMIT, BootClock("b1", 1300)).state
    assert state.slices[10].default.capped
    stepped = T0 + 40 * DAY_S
    held = _cycle(want, state, stepped, LIMIT, BootClock("b1", 1600))
    assert held.clock_step is not None
    assert held.state.slices[10].default.used_bytes == LIMIT
    trusted = _cycle(want, held.state, stepped + DAY_S, LIMIT, BootClock("b1", 1300 + DAY_S))
    assert trusted.clock_step is None
    cs = trusted.state.slices[10].default
    assert cs.used_bytes == LIMIT and cs.capped
    # and from there on the ring moves with the (now trusted) clock as time passes
    later = stepped + DAY_S + W30_S + 2 * bucket_s(W30_S)
    aged = _cycle(
        want, trusted.state, later, LIMIT, BootClock("b1", 1300 + DAY_S + later - stepped)
    )
    assert aged.state.slices[10].default.used_bytes == 0


def test_without_a_boot_clock_a_clock_step_holds_the_window() -> None:
    want = _want(W30_S)
    state = _cycle(want, State(), T0, 0).state
    state = dataclasses.replace(_cycle(want, state, T0 + 60, LIMIT).state, saved_s=T0 + 60)
    held = _cycle(want, state, T0 + 60 - 3600, LIMIT)  # went back
    assert held.clock_step is not None and held.state.slices[10].default.used_bytes == LIMIT


def test_a_deleted_slice_recreated_gets_no_fresh_budget_until_its_bytes_age_out() -> None:
    want = _want(W30_S)
    state = _cycle(want, State(), T0, 0).state
    state = _cycle(want, state, T0 + 60, LIMIT).state
    gone = plan(desired(), snapshot(_kernel(LIMIT)), state, PARAMS, T0 + 120).state
    entry = gone.ledger["pl_a"]
    assert entry.slice.default.buckets[-1] == LIMIT
    assert entry.expires_s == expiry_s(entry.slice.period_end_s, W30_S) > T0 + W30_S
    # a week later the name is back on a new xid: still capped, its bytes kept
    back = _cycle(_want(W30_S, xid=11), gone, T0 + 7 * DAY_S, 0)
    assert any(isinstance(a, Revive) for a in back.actions)
    cs = back.state.slices[11].default
    assert cs.used_bytes == LIMIT and cs.capped
    # the entry is kept for as long as its bytes are in the window, not the bucket
    kept = plan(desired(), snapshot(), gone, PARAMS, T0 + 20 * DAY_S)
    assert "pl_a" in kept.state.ledger
    purged = plan(desired(), snapshot(), gone, PARAMS, entry.expires_s)
    assert any(isinstance(a, PurgeLedger) for a in purged.actions)


def test_changing_between_a_period_and_a_window_keeps_the_usage() -> None:
    period = _want(0)
    state = _cycle(period, State(), T0, 0).state
    state = _cycle(period, state, T0 + 60, LIMIT).state
    windowed = _cycle(_want(W30_S), state, T0 + 120, LIMIT).state
    cs = windowed.slices[10].default
    assert cs.used_bytes == LIMIT and cs.buckets == carried_ring(LIMIT) and cs.capped
    shorter = _cycle(_want(7 * DAY_S), windowed, T0 + 180, LIMIT).state
    assert shorter.slices[10].default.buckets == carried_ring(LIMIT)
    back = _cycle(period, shorter, T0 + 240, LIMIT).state
    st_ = back.slices[10]
    assert st_.default.used_bytes == LIMIT and st_.default.buckets == () and st_.default.capped
    assert st_.period_end_s == T0 + 240 + PARAMS.period_s  # a period from now: no fresh budget


def test_a_class_no_longer_capped_under_a_window_is_notified_again() -> None:
    want = _want(6 * 3600)
    state = _cycle(want, State(), T0, 0).state
    capped = _cycle(want, state, T0 + 60, LIMIT)
    assert capped.state.slices[10].default.capped
    assert any(isinstance(a, Notify) for a in capped.actions)
    delivered = mark_notified(capped.state, {10: ("default",)})
    still = _cycle(want, delivered, T0 + 3600, LIMIT)  # capped: the flag holds, no mail
    assert still.state.slices[10].default.notified
    assert not any(isinstance(a, Notify) for a in still.actions)
    # 8 hours on, the bytes have left the window: not capped, the flag cleared...
    later = _cycle(want, still.state, T0 + 8 * 3600, LIMIT)
    cs = later.state.slices[10].default
    assert (cs.used_bytes, cs.capped, cs.notified) == (0, False, False)
    assert later == _cycle(want, still.state, T0 + 8 * 3600, LIMIT, quiet=False)
    # ...so the next cap is mailed again
    again = _cycle(want, later.state, T0 + 8 * 3600 + 60, 2 * LIMIT)
    assert [a.classes for a in again.actions if isinstance(a, Notify)] == [("default",)]


def test_a_share_under_a_window_is_told_once_until_the_usage_falls_below_it() -> None:
    """A rolling window's buckets turn over every 15 minutes here: a share already told
    is not told again at each turn while the usage stays past it, only after the usage
    fell below it and passes it again."""
    want = _want(6 * 3600)
    want = dataclasses.replace(
        want, default=dataclasses.replace(want.default, notices="50%", threshold_bytes=LIMIT)
    )

    def shares(p: Plan) -> list[int]:
        return [a.share_bp for a in p.actions if isinstance(a, Notify) and a.kind == "share"]

    state = _cycle(want, State(), T0, 0).state
    told = _cycle(want, state, T0 + 60, LIMIT * 6 // 10)
    assert shares(told) == [5_000]
    state = mark_sent(told.state, [a for a in told.actions if isinstance(a, Notify)])
    for hour in range(1, 5):  # still past 50 % while buckets turn over: told no more
        later = _cycle(want, state, T0 + hour * 3600, LIMIT * 6 // 10)
        assert shares(later) == [], hour
        state = later.state
    gone = _cycle(want, state, T0 + 8 * 3600, LIMIT * 6 // 10)  # the bytes left the window
    assert gone.state.slices[10].default.used_bytes == 0 and shares(gone) == []
    again = _cycle(want, gone.state, T0 + 8 * 3600 + 60, LIMIT * 12 // 10)
    assert shares(again) == [5_000]


def test_ledger_entry_expiry_without_a_window_is_the_period_end() -> None:
    want = _want(0)
    st_ = _cycle(want, State(), T0, 0).state.slices[10]
    assert LedgerEntry(st_, T0).expires_s == st_.period_end_s


def test_a_projection_under_a_window_looks_a_window_ahead_not_to_the_bucket_end() -> None:
    end = bucket_span(T0, W30_S)[1]
    # 10 days' bytes left at 1 byte/s: out after the current bucket, within the window
    at_s = exhausted_at_s(
        limit_bytes=LIMIT,
        counted_bytes=LIMIT - 10 * DAY_S,
        rate_bytes_per_s=1.0,
        now_s=T0,
        period_end_s=horizon_s(end, W30_S),
    )
    assert end < at_s == T0 + 10 * DAY_S
    assert horizon_s(end, 0) == end

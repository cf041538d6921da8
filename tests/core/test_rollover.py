"""Grant rollover (core/grants.py ``rolled_over`` and the planner): what a period leaves
unused carried into the next one, bounded, never negative, never compounding, never
gained by deleting and recreating a slice."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.grants import rolled_over, rollover_bound_bytes, rollover_text
from bwenforcer.core.model import AuditEntry, DesiredSlice, KernelSlice, State
from bwenforcer.core.plan import NewPeriod, Rollover
from bwenforcer.core.planner import plan
from tests.planner_data import (
    BWMAX_BPS,
    PARAMS,
    PERIOD_S,
    T0,
    desired,
    kclass,
    policy,
    snapshot,
)

LIMIT = 1_000_000


def _want(bound: int, limit: int = LIMIT, window_s: int = 0) -> DesiredSlice:
    d = dataclasses.replace(policy(limit), rollover_bytes=bound, window_s=window_s)
    e = dataclasses.replace(policy(3 * limit, max_rate=BWMAX_BPS), window_s=window_s)
    return DesiredSlice("pl_a", 1, d, e)


def _kernel(default_bytes: int) -> KernelSlice:
    return KernelSlice(1, kclass(default_bytes), kclass(0, max_rate=BWMAX_BPS))


# --- the rule ---------------------------------------------------------------------------


@given(
    limit=st.integers(0, 10**13),
    used=st.integers(0, 10**13),
    granted=st.integers(0, 10**13),
    carried=st.integers(0, 10**13),
    bound=st.integers(-5, 10**13),
)
def test_the_carried_bytes_are_the_unused_bounded_and_never_negative(
    limit: int, used: int, granted: int, carried: int, bound: int
) -> None:
    out = rolled_over(
        limit_bytes=limit, used_bytes=used, granted=granted, carried=carried, bound_bytes=bound
    )
    assert 0 <= out <= max(0, bound)
    assert out <= max(0, limit + granted + carried - used)
    if bound > 0:
        assert out == min(bound, max(0, limit + granted + carried - used))


@pytest.mark.parametrize(
    ("given_", "text", "bound"),
    [
        (None, "", 0),
        (0, "", 0),
        ("none", "", 0),
        ("0%", "", 0),
        ("25%", "25%", 250_000),
        (" 100 % ", "100%", 1_000_000),
        ("1GiB", str(2**30), 2**30),
        (4096, "4096", 4096),
    ],
)
def test_a_rollover_is_a_size_or_a_share_of_the_limit(
    given_: object, text: str, bound: int
) -> None:
    assert rollover_text(given_) == text
    assert rollover_bound_bytes(text, LIMIT) == bound


@pytest.mark.parametrize("bad", ["101%", "-1%", "x%", "1.5%", "ten", -1, "2EiB"])
def test_a_bad_rollover_is_a_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        rollover_text(bad)


# --- the planner ------------------------------------------------------------------------


def _run(want: DesiredSlice, used: int, next_at: int, audit: tuple[AuditEntry, ...] = ()) -> State:
    """pl_a created at T0, ``used`` bytes counted in its first period, planned again at
    ``next_at`` with no more bytes.
    """
    first = plan(desired(want), snapshot(_kernel(0)), State(), PARAMS, T0)
    second = plan(desired(want), snapshot(_kernel(used)), first.state, PARAMS, T0 + 60)
    state = dataclasses.replace(second.state, audit=audit)
    return plan(desired(want), snapshot(_kernel(used)), state, PARAMS, next_at).state


@settings(max_examples=200, deadline=None)
@given(
    used=st.integers(0, 3 * LIMIT),
    bound=st.integers(0, 2 * LIMIT),
    skipped=st.integers(0, 30),
    into_s=st.integers(0, PERIOD_S - 1),
)
def test_skipped_periods_roll_over_once_and_never_compound(
    used: int, bound: int, skipped: int, into_s: int
) -> None:
    """Down for ``skipped`` whole periods: the period that ended with usage rolls over
    once; the empty periods skipped add nothing, and the next period carries at most the
    bound whatever was carried before.
    """
    want = _want(bound)
    now = T0 + (1 + skipped) * PERIOD_S + into_s
    cs = _run(want, used, now).slices[1].default
    assert cs.used_bytes == 0
    assert cs.carried_bytes == min(bound, max(0, LIMIT - used))
    # nothing used in this period either: the next carries limit + carried, bounded
    later = plan(
        desired(want),
        snapshot(_kernel(used)),
        _run(want, used, now),
        PARAMS,
        now + PERIOD_S,
    ).state.slices[1]
    assert later.default.carried_bytes == min(bound, LIMIT + cs.carried_bytes)
    assert 0 <= later.default.carried_bytes <= bound
    assert later.exempt.carried_bytes == 0  # no rollover asked for in that class


def test_the_carried_bytes_count_like_a_grant_and_are_planned_as_an_action() -> None:
    want = _want(LIMIT // 2)
    state = _run(want, 100_000, T0 + PERIOD_S + 60)  # 900 kB unused: 500 kB carried
    assert state.slices[1].default.carried_bytes == 500_000
    # 1.2 MB sent in the new period: over the limit, not over limit + carried
    out = plan(desired(want), snapshot(_kernel(1_300_000)), state, PARAMS, T0 + PERIOD_S + 120)
    cs = out.state.slices[1].default
    assert cs.used_bytes == 1_200_000 and not cs.capped
    without = plan(
        desired(_want(0)), snapshot(_kernel(1_300_000)), state, PARAMS, T0 + PERIOD_S + 120
    )
    assert without.state.slices[1].default.capped  # the bound removed: carried gone at once
    assert without.state.slices[1].default.carried_bytes == 0
    first = plan(desired(want), snapshot(_kernel(0)), State(), PARAMS, T0)
    second = plan(desired(want), snapshot(_kernel(100_000)), first.state, PARAMS, T0 + 60)
    third = plan(desired(want), snapshot(_kernel(100_000)), second.state, PARAMS, T0 + PERIOD_S)
    assert Rollover("pl_a", 1, "default", 500_000) in third.actions
    assert any(isinstance(a, NewPeriod) for a in third.actions)


def test_the_grants_of_the_period_ending_are_unused_budget_too() -> None:
    grant = AuditEntry("grant", "pl_a", "default", 300_000, "alice", T0 + 30, T0 + PERIOD_S, "")
    state = _run(_want(2 * LIMIT), 1_100_000, T0 + PERIOD_S + 60, (grant,))
    assert state.slices[1].default.carried_bytes == 200_000  # 1 MB + 300 kB − 1.1 MB


def test_a_rolling_window_carries_nothing() -> None:
    want = _want(LIMIT, window_s=3600)
    state = _run(want, 0, T0 + 5 * 3600)
    assert state.slices[1].default.carried_bytes == 0


@settings(max_examples=150, deadline=None)
@given(
    used=st.integers(0, 2 * LIMIT),
    bound=st.integers(1, 2 * LIMIT),
    gone_s=st.integers(120, 3 * PERIOD_S),
    back_s=st.integers(0, 3 * PERIOD_S),
)
def test_deleting_and_recreating_a_slice_gains_no_rollover(
    used: int, bound: int, gone_s: int, back_s: int
) -> None:
    """A slice deleted (into the ledger) and recreated carries exactly what it would have
    carried had it stayed (or nothing, once its ledger entry expired), never more.
    """
    want = _want(bound)
    first = plan(desired(want), snapshot(_kernel(0)), State(), PARAMS, T0)
    second = plan(desired(want), snapshot(_kernel(used)), first.state, PARAMS, T0 + 60)
    gone = plan(desired(), snapshot(_kernel(used)), second.state, PARAMS, T0 + gone_s)
    back_at = T0 + gone_s + back_s
    back = plan(desired(want), snapshot(), gone.state, PARAMS, back_at).state
    stayed = plan(desired(want), snapshot(_kernel(used)), second.state, PARAMS, back_at).state
    carried = back.slices[1].default.carried_bytes
    assert carried <= stayed.slices[1].default.carried_bytes <= bound
    entry = gone.state.ledger.get("pl_a")
    if entry is not None and back_at < entry.expires_s:
        # revived from its ledger entry: carried as if it had stayed
        assert carried == stayed.slices[1].default.carried_bytes
    else:  # its entry expired: a fresh slice, nothing carried
        assert carried == 0


@pytest.mark.parametrize(("bound", "window_s"), [(100, 0), (LIMIT, 3600)])
def test_carried_bytes_a_policy_no_longer_allows_go_on_the_quiet_path_too(
    bound: int, window_s: int
) -> None:
    """A quiet slice (nothing sent) carrying more than its bound, or anything under a
    window, is not taken for quiet: both paths clip it.
    """
    want = _want(bound, window_s=window_s)
    first = plan(desired(want), snapshot(_kernel(0)), State(), PARAMS, T0)
    st_ = first.state.slices[1]
    st_ = dataclasses.replace(st_, default=dataclasses.replace(st_.default, carried_bytes=500))
    state = dataclasses.replace(first.state, slices={1: st_})
    kernel = snapshot(_kernel(0))
    now = st_.period_end_s - 1  # in the same period (or bucket): quiet, were it not carrying
    quick = plan(desired(want), kernel, state, PARAMS, now)
    slow = plan(desired(want), kernel, state, PARAMS, now, quiet=False)
    assert quick == slow
    assert quick.state.slices[1].default.carried_bytes == (0 if window_s else bound)

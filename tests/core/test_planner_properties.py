"""Planner properties (hypothesis): rates stay in bounds, budgets cannot be dodged, the
quiet path plans as the long way."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core import planner
from bwenforcer.core.model import (
    ClassRates,
    DesiredSet,
    DesiredSlice,
    InvalidRecord,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
    State,
)
from bwenforcer.core.plan import CreateClass, Notify, Plan, RemoveClasses, SetRates
from bwenforcer.core.planner import PlanParams, mark_sent, plan
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
@given(seq=events, chunk=st.integers(1, 400_000), window_s=st.sampled_from((0, 3600, 30 * 86_400)))
def test_delete_recreate_reinit_or_counter_reset_never_give_a_fresh_budget(
    seq: list[str], chunk: int, window_s: int
) -> None:
    """Usage equals every byte sent within the period (or the rolling window: 25 cycles
    a minute apart stay in its buckets), whatever happens to slice and tree.
    """
    params = PlanParams(86_400, None, BWMIN_BPS)
    present = True
    counter = 0
    sent = 0
    wanted = want("pl_a", 10)
    wanted = dataclasses.replace(
        wanted,
        default=dataclasses.replace(wanted.default, window_s=window_s),
        exempt=dataclasses.replace(wanted.exempt, window_s=window_s),
    )
    p = plan(desired(wanted), snapshot(), State(), params, T0)
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
            desired(wanted) if present else desired(),
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


# --- the quiet path: the same plan as the long way --------------------------------

XIDS = (10, 11, 12, 13)
# policies a class may be given: small budgets (two with the same rates); capped from the
# first byte with a budget so large the capped rates are the uncapped ones; min rate = max
# rate (capped rates again the uncapped ones); a low max rate
POLICIES = {
    "default": (
        policy(1_000_000),
        policy(2_000_000),
        policy(10**12, threshold=0),
        policy(1_000_000, min_rate=CAP_BPS // 8, max_rate=CAP_BPS // 8),
        policy(1_000_000, max_rate=CAP_BPS // 3),
        dataclasses.replace(policy(1_000_000), tiers="30%:2mbit,60%:100kbit"),
        dataclasses.replace(policy(2_000_000), taper="20%-70%:50kbit"),
        dataclasses.replace(policy(1_000_000), notices="20%,50%,100%,lifted"),
        dataclasses.replace(policy(2_000_000), tiers="30%:2mbit", notices="10%,lifted"),
        dataclasses.replace(policy(1_000_000), rollover_bytes=500_000),
        dataclasses.replace(policy(1_000_000), rollover_bytes=2_000_000, notices="50%,lifted"),
    ),
    "exempt": (
        policy(3_000_000, max_rate=BWMAX_BPS),
        policy(6_000_000, max_rate=BWMAX_BPS),
        policy(10**12, threshold=0, max_rate=BWMAX_BPS),
        policy(3_000_000, min_rate=BWMIN_BPS * 4, max_rate=BWMIN_BPS * 4),
        dataclasses.replace(policy(3_000_000, max_rate=BWMAX_BPS), tiers="10%:5mbit"),
        dataclasses.replace(policy(3_000_000, max_rate=BWMAX_BPS), notices="5%,90%,lifted"),
        dataclasses.replace(policy(3_000_000, max_rate=BWMAX_BPS), rollover_bytes=10**6),
    ),
}
EVENTS = st.sampled_from(
    [
        "idle",
        "idle",
        "idle",
        "idle",
        "send",
        "send_over",  # past the threshold
        "class_gone",  # someone deleted the class
        "rates_off",  # someone set the class's rates by hand
        "counter_reset",
        "policy",  # another policy
        "policy_copy",  # an equal policy, another object
        "state_ceil",  # a saved ceil that is not what was applied (a state from elsewhere)
        "state_capped",  # a saved capped flag the usage does not back
        "state_uncapped",  # and one missing
        "state_used",  # usage at the threshold (as an import may bring)
        "state_notified",
        "state_lift_due",  # a lift of a cap still to tell
        "state_told",  # a share told
        "state_carried",  # bytes carried over (maybe above the bound a state from elsewhere)
        "state_carried",
        "away",  # the slice is not in the desired set this cycle
        "invalid",  # its record is invalid: held under the saved policy
        "window",  # a rolling window (or none) for both classes
    ]
)
WINDOWS_S = (0, 3600, 2 * 3600, 30 * 86_400)
SLICE_EVENTS = st.tuples(EVENTS, st.sampled_from(["default", "exempt"]), st.integers(0, 4))
CYCLES = st.lists(
    st.tuples(
        st.sampled_from([60, 60, 60, 600, 1800, 3600, -300, 3 * 86_400]),  # clock step
        st.sampled_from([CAP_BPS, CAP_BPS, CAP_BPS // 2]),  # node cap (a config change)
        st.lists(SLICE_EVENTS, min_size=len(XIDS), max_size=len(XIDS)),
    ),
    min_size=1,
    max_size=12,
)


class _Kernel:
    """A kernel that does what a plan says: rates from its actions, counters counting.
    A class nothing happened to is passed on as the same object, as the dump does.
    """

    def __init__(self) -> None:
        self.classes: dict[tuple[int, str], KernelClass] = {}

    def snapshot(self, cap_bps: int) -> KernelSnapshot:
        get = self.classes.get
        slices = {
            xid: KernelSlice(xid, get((xid, "default")), get((xid, "exempt")))
            for xid in sorted({xid for xid, _ in self.classes})
        }
        return KernelSnapshot(cap_bps, BWMAX_BPS, slices)

    def apply(self, p: Plan) -> None:
        for action in p.actions:
            if isinstance(action, CreateClass):
                self.classes[action.xid, action.traffic_class] = KernelClass(action.rates, 0)
            elif isinstance(action, SetRates):
                key = (action.xid, action.traffic_class)
                self.classes[key] = KernelClass(action.new, self.classes[key].bytes)
            elif isinstance(action, RemoveClasses):
                self.classes.pop((action.xid, "default"), None)
                self.classes.pop((action.xid, "exempt"), None)

    def event(self, key: tuple[int, str], event: str, sent_bytes: int) -> None:
        kclass = self.classes.get(key)
        if kclass is None:
            return
        rates, counter = kclass.rates, kclass.bytes
        if event == "send":
            self.classes[key] = KernelClass(rates, counter + sent_bytes)
        elif event == "send_over":
            self.classes[key] = KernelClass(rates, counter + 3_000_000)
        elif event == "class_gone":
            del self.classes[key]
        elif event == "rates_off":
            off = ClassRates(rates.min_rate_bps, rates.max_rate_bps // 2 + 8, rates.share)
            self.classes[key] = KernelClass(off, counter)
        elif event == "counter_reset":
            self.classes[key] = KernelClass(rates, 0)


def _state_event(state: State, xid: int, tc: str, event: str) -> State:
    """A state as another program (an import, an older version, an edit) may have left it."""
    old = state.slices.get(xid)
    if old is None:
        return state
    cs = old.cls(tc)
    if event == "state_ceil":
        cs = dataclasses.replace(cs, ceil_bps=cs.ceil_bps // 2 + 8)
    elif event == "state_capped":
        cs = dataclasses.replace(cs, capped=True)
    elif event == "state_uncapped":
        cs = dataclasses.replace(cs, capped=False)
    elif event == "state_used":
        cs = dataclasses.replace(cs, used_bytes=cs.policy.threshold_bytes)
    elif event == "state_lift_due":
        cs = dataclasses.replace(cs, lift="due")
    elif event == "state_told":
        cs = dataclasses.replace(cs, notice_bp=2000)
    elif event == "state_carried":
        cs = dataclasses.replace(cs, carried_bytes=700_000)
    else:
        cs = dataclasses.replace(cs, notified=True)
    slices = dict(state.slices)
    slices[xid] = dataclasses.replace(old, **{tc: cs})
    return dataclasses.replace(state, slices=slices)


@settings(max_examples=300, deadline=None)
@given(cycles=CYCLES, sent_bytes=st.integers(1, 300_000))
def test_the_quiet_path_plans_as_the_long_way(
    cycles: list[tuple[int, int, list[tuple[str, str, int]]]], sent_bytes: int
) -> None:
    """``plan()`` equals ``plan(quiet=False)``: the same actions, live slices and state,
    and the same slice states passed on as the very same objects (the identity rule).
    """
    params = PlanParams(3600, None, BWMIN_BPS)
    wanted = {xid: want(f"pl_s{xid}", xid) for xid in XIDS}
    kernel = _Kernel()
    state = State()
    now = T0
    for step_s, cap_bps, events in cycles:
        slices: list[DesiredSlice] = []
        invalid: list[InvalidRecord] = []
        for xid, (event, tc, pick) in zip(XIDS, events, strict=True):
            kernel.event((xid, tc), event, sent_bytes)
            w = wanted[xid]
            if event == "policy":
                pool = POLICIES[tc]
                # a slice's classes have one window (a source never gives two)
                chosen = dataclasses.replace(pool[pick % len(pool)], window_s=w.default.window_s)
                w = wanted[xid] = dataclasses.replace(w, **{tc: chosen})
            elif event == "window":
                window_s = WINDOWS_S[pick % len(WINDOWS_S)]
                w = wanted[xid] = dataclasses.replace(
                    w,
                    default=dataclasses.replace(w.default, window_s=window_s),
                    exempt=dataclasses.replace(w.exempt, window_s=window_s),
                )
            elif event == "policy_copy":
                w = wanted[xid] = dataclasses.replace(w, **{tc: dataclasses.replace(w.policy(tc))})
            elif event.startswith("state_"):
                state = _state_event(state, xid, tc, event)
            if event == "invalid":
                invalid.append(InvalidRecord(w.name, xid, "bad rspec"))
            elif event != "away":
                slices.append(w)
        desired_set = DesiredSet(tuple(slices), invalid=tuple(invalid))
        snap = kernel.snapshot(cap_bps)
        quick = plan(desired_set, snap, state, params, now)
        slow = plan(desired_set, snap, state, params, now, quiet=False)
        assert quick == slow
        for xid, before in state.slices.items():
            assert (quick.state.slices.get(xid) is before) == (slow.state.slices.get(xid) is before)
        kernel.apply(quick)
        delivered = [a for a in quick.actions if isinstance(a, Notify)]
        state = dataclasses.replace(mark_sent(quick.state, delivered), saved_s=now)
        now += step_s


def test_quiet_false_takes_no_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above compares two paths only if ``quiet=False`` really is the long way."""
    calls: list[int] = []
    shortcut = planner.quiet_slice

    def counted(*args: object, **kw: bool) -> object:
        calls.append(1)
        return shortcut(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(planner, "quiet_slice", counted)
    params = PlanParams(3600, None, BWMIN_BPS)
    first = plan(desired(want("pl_a", 10)), snapshot(), State(), params, T0)
    kernel = _Kernel()
    kernel.apply(first)
    again = (desired(want("pl_a", 10)), kernel.snapshot(CAP_BPS), first.state, params, T0 + 60)
    assert plan(*again, quiet=False).live == plan(*again).live
    assert len(calls) == 1  # the default plan's, for its one idle slice

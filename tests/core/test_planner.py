"""Planner: one test per lifecycle case of docs/architecture.md, and per historic defect."""

from __future__ import annotations

import dataclasses

from bwenforcer.core.model import ClassRates, LedgerEntry, State
from bwenforcer.core.plan import (
    Adopt,
    CreateClass,
    Inherit,
    MoveToLedger,
    NewPeriod,
    Notify,
    PurgeLedger,
    RemoveClasses,
    Revive,
    SetRates,
)
from bwenforcer.core.planner import mark_notified, plan
from bwenforcer.cycle.executor import _describe
from tests.planner_data import (
    BWMAX_BPS,
    BWMIN_BPS,
    CAP_BPS,
    PARAMS,
    PERIOD_S,
    T0,
    desired,
    kslice,
    policy,
    snapshot,
    want,
)


def kinds(p) -> list[str]:
    return [type(a).__name__ for a in p.actions]


def first_cycle(*slices, kernel=()):
    return plan(desired(*slices), snapshot(*kernel), State(), PARAMS, T0)


def test_new_slice_gets_classes_fresh_usage_and_a_period_from_now() -> None:
    p = first_cycle(want("pl_a", 10))
    assert kinds(p) == ["CreateClass", "CreateClass"]
    creates = [a for a in p.actions if isinstance(a, CreateClass)]
    assert {a.traffic_class for a in creates} == {"default", "exempt"}
    assert creates[0].rates == ClassRates(BWMIN_BPS, CAP_BPS, 1)
    assert creates[1].rates == ClassRates(BWMIN_BPS, BWMAX_BPS, 1)
    st = p.state.slices[10]
    assert (st.period_start_s, st.period_end_s) == (T0, T0 + PERIOD_S)
    assert st.default.used_bytes == 0 and st.default.last_counter_bytes == 0


def test_each_plan_counts_a_cycle_and_nothing_else_does() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10, 100)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 400)), p1.state, PARAMS, T0 + 300)
    assert (p1.state.cycles, p2.state.cycles) == (1, 2)
    assert mark_notified(p2.state, {10: ["default"]}).cycles == 2
    # a plan of the same state again (its cycle never saved) is the same cycle again
    again = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 500)), p1.state, PARAMS, T0 + 300)
    assert again.state.cycles == 2


def test_adopt_class_without_state_counts_from_current_counter() -> None:
    p = first_cycle(want("pl_a", 10), kernel=[kslice(10, 5_000_000, 7)])
    assert Adopt("pl_a", 10) in p.actions
    assert not any(isinstance(a, CreateClass) for a in p.actions)
    st = p.state.slices[10]
    assert st.default.used_bytes == 0
    assert st.default.last_counter_bytes == 5_000_000
    assert st.exempt.last_counter_bytes == 7


def test_usage_accumulates_from_counter_deltas() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10, 100)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 400, 50)), p1.state, PARAMS, T0 + 300)
    assert p2.state.slices[10].default.used_bytes == 300
    assert p2.state.slices[10].exempt.used_bytes == 50
    assert p2.lines[0].default.delta_bytes == 300
    assert p2.actions == ()  # nothing to change


def test_recreate_state_without_class_keeps_usage_and_period() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10, 0)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 600_000)), p1.state, PARAMS, T0 + 60)
    # tree wiped (reboot): no classes at all
    p3 = plan(desired(want("pl_a", 10)), snapshot(), p2.state, PARAMS, T0 + 120)
    assert [a.reason for a in p3.actions if isinstance(a, CreateClass)] == ["recreate", "recreate"]
    st = p3.state.slices[10]
    assert st.default.used_bytes == 600_000
    assert st.default.last_counter_bytes == 0
    assert st.period_start_s == T0
    # new class counts from 0
    p4 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 1000)), p3.state, PARAMS, T0 + 180)
    assert p4.state.slices[10].default.used_bytes == 601_000


def test_dead_slice_goes_to_ledger_and_its_classes_are_removed() -> None:
    p1 = first_cycle(want("pl_a", 10), want("pl_b", 11), kernel=[kslice(10), kslice(11)])
    p2 = plan(
        desired(want("pl_b", 11)), snapshot(kslice(10, 5000), kslice(11)), p1.state, PARAMS, T0 + 60
    )
    assert MoveToLedger("pl_a", 10) in p2.actions
    assert RemoveClasses("pl_a", 10, "dead") in p2.actions
    assert 10 not in p2.state.slices
    entry = p2.state.ledger["pl_a"]
    assert entry.slice.default.used_bytes == 5000  # last delta counted before death
    assert entry.died_s == T0 + 60
    assert entry.expires_s == T0 + PERIOD_S


def test_revive_from_ledger_keeps_usage_period_and_flags_whatever_the_new_xid() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 900_000)), p1.state, PARAMS, T0 + 60)
    p2 = dataclasses.replace(p2, state=mark_notified(p2.state, {10: ["default"]}))
    p3 = plan(desired(), snapshot(kslice(10, 900_000)), p2.state, PARAMS, T0 + 120)
    assert "pl_a" in p3.state.ledger
    p4 = plan(desired(want("pl_a", 42)), snapshot(), p3.state, PARAMS, T0 + 180)
    assert Revive("pl_a", 42, 10) in p4.actions
    st = p4.state.slices[42]
    assert st.default.used_bytes == 900_000
    assert st.period_start_s == T0 and st.period_end_s == T0 + PERIOD_S
    assert st.default.notified is True
    assert "pl_a" not in p4.state.ledger
    assert not any(isinstance(a, Notify) for a in p4.actions)  # already told this period


def test_ledger_entry_expires_with_its_period() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(), snapshot(kslice(10)), p1.state, PARAMS, T0 + 60)
    p3 = plan(desired(), snapshot(), p2.state, PARAMS, T0 + PERIOD_S - 1)
    assert "pl_a" in p3.state.ledger
    p4 = plan(desired(), snapshot(), p3.state, PARAMS, T0 + PERIOD_S)
    assert PurgeLedger("pl_a") in p4.actions
    assert p4.state.ledger == {}


def test_orphan_class_is_removed_but_tree_slices_are_not() -> None:
    p = first_cycle(kernel=[kslice(77), kslice(0), kslice(0xFFF)])
    assert [a for a in p.actions if isinstance(a, RemoveClasses)] == [
        RemoveClasses(None, 77, "orphan")
    ]


def test_period_end_resets_usage_lifts_caps_and_clears_notified() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 950_000)), p1.state, PARAMS, T0 + 3600)
    assert p2.state.slices[10].default.capped
    p2s = mark_notified(p2.state, {10: ["default"]})
    capped_rate = p2.state.slices[10].default.ceil_bps
    p3 = plan(
        desired(want("pl_a", 10)),
        snapshot(kslice(10, 960_000, max_rate=capped_rate)),
        p2s,
        PARAMS,
        T0 + PERIOD_S + 5,
    )
    assert NewPeriod("pl_a", 10, T0 + PERIOD_S, T0 + 2 * PERIOD_S) in p3.actions
    st = p3.state.slices[10]
    assert st.default.used_bytes == 0 and not st.default.capped and not st.default.notified
    assert (
        SetRates(
            "pl_a",
            10,
            "default",
            ClassRates(BWMIN_BPS, capped_rate, 1),
            ClassRates(BWMIN_BPS, CAP_BPS, 1),
        )
        in p3.actions
    )


def test_rolling_period_keeps_its_phase_after_downtime() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(
        desired(want("pl_a", 10)), snapshot(kslice(10)), p1.state, PARAMS, T0 + 3 * PERIOD_S + 7
    )
    st = p2.state.slices[10]
    assert (st.period_start_s, st.period_end_s) == (T0 + 3 * PERIOD_S, T0 + 4 * PERIOD_S)


def test_counter_going_backwards_keeps_usage() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10, 0)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 500_000)), p1.state, PARAMS, T0 + 60)
    p3 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 1_000)), p2.state, PARAMS, T0 + 120)
    assert p3.state.slices[10].default.used_bytes == 501_000
    assert p3.state.slices[10].period_start_s == T0  # not a new period (historic defect)


def test_off_switch_removes_every_slice_class_and_does_nothing_else() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(
        desired(want("pl_a", 10), off=True),
        snapshot(kslice(10), kslice(0), kslice(0xFFF), kslice(77)),
        p1.state,
        PARAMS,
        T0 + 60,
    )
    assert p2.limiting_off
    # each removal names its slice; an xid no slice is known by says so
    assert p2.actions == (
        RemoveClasses("pl_a", 10, "limiting off"),
        RemoveClasses(None, 77, "limiting off"),
    )
    assert p2.state == p1.state
    lines = [_describe(a) for a in p2.actions]
    assert lines == [
        "slice pl_a xid 10: remove classes (limiting off)",
        "xid 77 (no slice known): remove classes (limiting off)",
    ]
    # a slice only the source knows (not in the state yet) is named from there
    p3 = plan(desired(want("pl_b", 11), off=True), snapshot(kslice(11)), State(), PARAMS, T0)
    assert _describe(p3.actions[0]) == "slice pl_b xid 11: remove classes (limiting off)"


def test_threshold_crossing_caps_with_the_formula_and_notifies_once() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    now = T0 + 43_200  # half the period left
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 820_000)), p1.state, PARAMS, now)
    change = next(a for a in p2.actions if isinstance(a, SetRates))
    expected = ((1_000_000 - 820_000) * 8 // 43_200) // 8 * 8
    expected = max(expected, BWMIN_BPS)
    assert change.new.max_rate_bps == expected
    assert Notify("pl_a", 10, ("default",)) in p2.actions
    notified = mark_notified(p2.state, {10: ["default"]})
    p3 = plan(
        desired(want("pl_a", 10)),
        snapshot(kslice(10, 830_000, max_rate=change.new.max_rate_bps)),
        notified,
        PARAMS,
        now + 60,
    )
    assert not any(isinstance(a, Notify) for a in p3.actions)


def test_both_classes_capped_in_one_cycle_give_one_notify_with_both() -> None:
    # historic defect: capped += True made the flag 2 and no mail was sent at all
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(
        desired(want("pl_a", 10)),
        snapshot(kslice(10, 900_000, 2_900_000)),
        p1.state,
        PARAMS,
        T0 + 60,
    )
    notifies = [a for a in p2.actions if isinstance(a, Notify)]
    assert notifies == [Notify("pl_a", 10, ("default", "exempt"))]


def test_class_capped_later_in_period_notifies_for_that_class_only() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 900_000)), p1.state, PARAMS, T0 + 60)
    s2 = mark_notified(p2.state, {10: ["default"]})
    p3 = plan(
        desired(want("pl_a", 10)), snapshot(kslice(10, 900_000, 2_900_000)), s2, PARAMS, T0 + 120
    )
    assert [a for a in p3.actions if isinstance(a, Notify)] == [Notify("pl_a", 10, ("exempt",))]


def test_over_limit_and_end_of_period_give_min_rate_never_zero_or_negative() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(
        desired(want("pl_a", 10)),
        snapshot(kslice(10, 5_000_000)),
        p1.state,
        PARAMS,
        T0 + PERIOD_S - 1,
    )
    assert p2.state.slices[10].default.ceil_bps == BWMIN_BPS


def test_min_rate_is_at_most_a_quarter_of_the_cap() -> None:
    greedy = dataclasses.replace(
        want("pl_a", 10),
        default=dataclasses.replace(want("pl_a", 10).default, min_rate_bps=CAP_BPS),
    )
    p = first_cycle(greedy)
    create = next(
        a for a in p.actions if isinstance(a, CreateClass) and a.traffic_class == "default"
    )
    assert create.rates.min_rate_bps == CAP_BPS // 4


def test_unchanged_rates_send_nothing() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 10)), p1.state, PARAMS, T0 + 60)
    assert p2.kernel_ops() == []


def test_xid_reused_by_another_slice_moves_the_old_one_to_the_ledger() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(want("pl_b", 10)), snapshot(kslice(10, 1234)), p1.state, PARAMS, T0 + 60)
    assert p2.state.ledger["pl_a"].slice.default.used_bytes == 1234
    assert p2.state.slices[10].name == "pl_b"
    assert p2.state.slices[10].default.used_bytes == 1234  # usage follows the class (issue 22)
    assert p2.state.slices[10].default.last_counter_bytes == 1234
    assert not any(isinstance(a, RemoveClasses) for a in p2.actions)


def test_revived_ledger_entry_revived_with_exact_usage_not_times_1000() -> None:
    # historic defect: revival multiplied the byte count by 1000 and restarted the period
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(desired(), snapshot(kslice(10, 4321)), p1.state, PARAMS, T0 + 60)
    p3 = plan(desired(want("pl_a", 10)), snapshot(), p2.state, PARAMS, T0 + 120)
    assert p3.state.slices[10].default.used_bytes == 4321
    assert p3.state.slices[10].period_start_s == T0


def test_ledger_entry_given_as_plain_state_is_revived_without_crashing() -> None:
    # historic defect: the ledger was indexed like a dict and crashed on revival
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    st = p1.state.slices[10]
    ledger_only = State({}, {"pl_a": LedgerEntry(st, T0)})
    p = plan(desired(want("pl_a", 11)), snapshot(), ledger_only, PARAMS, T0 + 5)
    assert 11 in p.state.slices


def test_exempt_class_change_carries_the_exempt_rates() -> None:
    # historic defect: the exempt log message used the default class's rate
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    p2 = plan(
        desired(want("pl_a", 10)), snapshot(kslice(10, 0, 2_900_000)), p1.state, PARAMS, T0 + 60
    )
    change = next(a for a in p2.actions if isinstance(a, SetRates))
    assert change.traffic_class == "exempt"
    assert change.old.max_rate_bps == BWMAX_BPS
    assert change.new.max_rate_bps < BWMAX_BPS


def test_share_change_is_applied_to_the_exempt_class() -> None:
    # historic defect: a typo'd attribute (i2Share) crashed when the exempt share changed
    base = want("pl_a", 10)
    p1 = first_cycle(base, kernel=[kslice(10)])
    more = dataclasses.replace(base, exempt=dataclasses.replace(base.exempt, share=3))
    p2 = plan(desired(more), snapshot(kslice(10)), p1.state, PARAMS, T0 + 60)
    change = next(a for a in p2.actions if isinstance(a, SetRates))
    assert (change.traffic_class, change.new.share) == ("exempt", 3)


def test_an_unchanged_slice_is_passed_on_as_the_very_same_objects() -> None:
    """What lets the state store re-encode only the slices that changed."""
    first = first_cycle(want("pl_a", 10), want("pl_b", 11))
    kernel = snapshot(kslice(10, 0, 0), kslice(11, 0, 0, max_rate=CAP_BPS))
    quiet = plan(desired(want("pl_a", 10), want("pl_b", 11)), kernel, first.state, PARAMS, T0 + 60)
    assert quiet.actions == ()
    assert quiet.state.slices[10] is first.state.slices[10]
    assert quiet.state.slices[11] is first.state.slices[11]
    busy = snapshot(kslice(10, 0, 0), kslice(11, 500, 0))
    moved = plan(desired(want("pl_a", 10), want("pl_b", 11)), busy, first.state, PARAMS, T0 + 120)
    assert moved.state.slices[10] is first.state.slices[10]
    b = moved.state.slices[11]
    assert b is not first.state.slices[11] and b.default.used_bytes == 500
    assert b.exempt is first.state.slices[11].exempt  # the idle class is kept as it was
    assert moved.lines[1].default.delta_bytes == 500


def test_without_a_mail_transport_no_notification_is_planned_until_there_is_one() -> None:
    from dataclasses import replace

    quiet = replace(PARAMS, notify=False)
    capped = desired(want("pl_a", 10, limit=1_000))
    first = plan(capped, snapshot(), State(), quiet, T0)
    over = snapshot(kslice(10, 5_000, 0))
    again = plan(capped, over, first.state, quiet, T0 + 60)
    assert not any(isinstance(a, Notify) for a in again.actions)
    assert again.state.slices[10].default.capped and not again.state.slices[10].default.notified
    mailed = plan(capped, over, again.state, PARAMS, T0 + 120)  # a transport configured
    assert Notify("pl_a", 10, ("default",)) in mailed.actions


# --- invalid records, clock steps -----------------------------------------------------


def test_a_live_slice_with_an_invalid_record_keeps_its_saved_limits_a_new_one_is_skipped() -> None:
    from bwenforcer.core.model import DesiredSet, InvalidRecord

    p1 = first_cycle(want("pl_a", 10))
    state = dataclasses.replace(p1.state, saved_s=T0)
    bad = DesiredSet(
        (),
        errors=("a", "b"),
        invalid=(InvalidRecord("pl_a", 10, "a"), InvalidRecord("pl_new", 11, "b")),
    )
    p2 = plan(bad, snapshot(kslice(10, 900_000)), state, PARAMS, T0 + 60)
    assert sorted(p2.state.slices) == [10] and not p2.state.ledger
    assert [w.name for w in p2.held] == ["pl_a"]
    st = p2.state.slices[10]
    assert st.default.policy is state.slices[10].default.policy
    assert st.default.used_bytes == 900_000 and st.default.capped  # still counted and capped
    assert not any(isinstance(a, RemoveClasses | MoveToLedger | CreateClass) for a in p2.actions)


def test_a_clock_step_ends_no_period_and_purges_no_ledger_entry() -> None:
    p1 = first_cycle(want("pl_a", 10), want("pl_b", 11))
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10), kslice(11)),
              dataclasses.replace(p1.state, saved_s=T0), PARAMS, T0 + 60)  # fmt: skip
    state = dataclasses.replace(p2.state, saved_s=T0 + 60)
    for now_s in (T0 + 60 + PERIOD_S + 86400 + 1, T0):  # forward past the bound; back
        p = plan(desired(want("pl_a", 10)), snapshot(kslice(10)), state, PARAMS, now_s)
        assert p.clock_step is not None
        assert not any(isinstance(a, NewPeriod | PurgeLedger) for a in p.actions)
        assert p.state.slices[10].period_end_s == T0 + PERIOD_S and "pl_b" in p.state.ledger
    p = plan(desired(want("pl_a", 10)), snapshot(kslice(10)), state, PARAMS,
             T0 + 60 + PERIOD_S + 86400)  # fmt: skip
    assert p.clock_step is None  # the node was down a period and a day: trusted
    assert any(isinstance(a, NewPeriod) for a in p.actions) and "pl_b" not in p.state.ledger


def test_two_names_on_one_xid_the_slice_in_the_state_keeps_it() -> None:
    p1 = first_cycle(want("pl_old", 10), kernel=[kslice(10, 100)])
    newcomer, incumbent = want("pl_new", 10), want("pl_old", 10)
    contested = dataclasses.replace(desired(newcomer), contested=(incumbent,))
    p2 = plan(contested, snapshot(kslice(10, 400)), p1.state, PARAMS, T0 + 300)
    assert p2.state.slices[10].name == "pl_old" and not p2.state.ledger
    assert p2.state.slices[10].default.used_bytes == 300
    assert not any(isinstance(a, MoveToLedger | NewPeriod | CreateClass) for a in p2.actions)
    # neither in the state: the first claim in file order has it, as before
    p3 = plan(contested, snapshot(), State(), PARAMS, T0)
    assert [st.name for st in p3.state.slices.values()] == ["pl_new"]


def test_a_refused_claim_of_a_live_capped_slice_keeps_its_classes_and_cap() -> None:
    # pl_b (capped, xid 6) gets pl_a's xid 5 by a typo and is refused: it stays as it
    # was on xid 6, past any grace, instead of vanishing and losing its cap
    params = dataclasses.replace(PARAMS, grace_s=600)
    a = dataclasses.replace(want("pl_a", 5), default=policy(10_000, 1_000))
    b = dataclasses.replace(want("pl_b", 6), default=policy(10_000, 1_000))
    p1 = plan(desired(a, b), snapshot(kslice(5), kslice(6)), State(), params, T0)
    p2 = plan(desired(a, b), snapshot(kslice(5), kslice(6, 9_000)), p1.state, params, T0 + 300)
    assert p2.state.slices[6].default.capped
    typo = dataclasses.replace(b, xid=5)
    for first, claims in ((typo, a), (a, typo)):  # either record first in the file
        contested = dataclasses.replace(desired(first), contested=(claims,))
        state = p2.state
        for t_s in (600, 900, 1300, 5000):
            p = plan(contested, snapshot(kslice(5), kslice(6, 9_500)), state, params, T0 + t_s)
            state = p.state
            assert not any(isinstance(x, RemoveClasses | MoveToLedger) for x in p.actions)
        st = state.slices[6]
        assert st.name == "pl_b" and st.default.capped and st.default.used_bytes == 9_500
        assert st.default.policy == b.default and state.slices[5].name == "pl_a"
        assert [h.name for h in p.held] == ["pl_b"] and not state.missing


def test_an_unread_source_holds_every_slice_of_the_state_past_the_grace() -> None:
    # a broken slices file with no last good version: no word on any slice
    capped = dataclasses.replace(want("pl_a", 10), default=policy(10_000, 1_000))
    p1 = plan(
        desired(capped, want("pl_b", 11)), snapshot(kslice(10), kslice(11)), State(), PARAMS, T0
    )
    p2 = plan(
        desired(capped, want("pl_b", 11)),
        snapshot(kslice(10, 9_000), kslice(11)),
        p1.state,
        PARAMS,
        T0 + 300,
    )
    assert p2.state.slices[10].default.capped
    unread = dataclasses.replace(desired(), errors=("s.yaml: broken",), unread=True)
    params = dataclasses.replace(PARAMS, grace_s=600)
    state = p2.state
    for t_s in (600, 1200, 5000):
        p = plan(unread, snapshot(kslice(10, 9_500), kslice(11)), state, params, T0 + t_s)
        state = p.state
        assert not any(isinstance(a, MoveToLedger | RemoveClasses) for a in p.actions)
    st = state.slices[10]
    assert st.default.capped and st.default.used_bytes == 9_500 and not state.missing
    assert st.default.policy == capped.default and sorted(state.slices) == [10, 11]
    assert [h.name for h in p.held] == ["pl_a", "pl_b"]


def test_a_rename_onto_a_name_waiting_in_the_ledger_keeps_the_larger_usage() -> None:
    capped = dataclasses.replace(want("pl_a", 10), default=policy(10_000, 1_000))
    gone = dataclasses.replace(want("pl_b", 20), default=policy(10_000, 1_000))
    p0 = plan(desired(gone), snapshot(kslice(20)), State(), PARAMS, T0)
    p0 = plan(desired(gone), snapshot(kslice(20, 0, 1_500)), p0.state, PARAMS, T0 + 10)
    p1 = plan(desired(capped), snapshot(kslice(10)), p0.state, PARAMS, T0 + 20)
    assert p1.state.ledger["pl_b"].slice.exempt.used_bytes == 1_500  # pl_b waits, exempt used
    p2 = plan(desired(capped), snapshot(kslice(10, 9_000)), p1.state, PARAMS, T0 + 300)
    assert p2.state.slices[10].default.capped
    # pl_a renamed to pl_b on the same xid: the class's usage, not the ledger's 0
    renamed = dataclasses.replace(capped, name="pl_b")
    p3 = plan(desired(renamed), snapshot(kslice(10, 9_100)), p2.state, PARAMS, T0 + 600)
    st = p3.state.slices[10]
    assert st.name == "pl_b" and st.default.capped and st.default.used_bytes == 9_100
    assert st.exempt.used_bytes == 1_500  # per class the larger: pl_b's exempt bytes kept
    assert Inherit("pl_b", 10, "pl_a") in p3.actions and "pl_b" not in p3.state.ledger
    assert not any(isinstance(a, Revive) for a in p3.actions)


def test_a_rename_undone_keeps_the_bytes_counted_under_the_other_name() -> None:
    a = dataclasses.replace(want("pl_a", 10), default=policy(10_000, 1_000))
    b = dataclasses.replace(a, name="pl_b")
    p1 = plan(desired(a), snapshot(kslice(10)), State(), PARAMS, T0)
    p2 = plan(desired(b), snapshot(kslice(10, 1_000)), p1.state, PARAMS, T0 + 300)
    p3 = plan(desired(b), snapshot(kslice(10, 9_000)), p2.state, PARAMS, T0 + 600)
    assert p3.state.slices[10].default.used_bytes == 9_000 and p3.state.slices[10].default.capped
    p4 = plan(desired(a), snapshot(kslice(10, 9_000)), p3.state, PARAMS, T0 + 900)
    st = p4.state.slices[10]
    assert st.name == "pl_a" and st.default.used_bytes == 9_000 and st.default.capped
    assert Inherit("pl_a", 10, "pl_b") in p4.actions


def test_a_slice_gone_from_its_source_is_kept_for_the_grace_then_goes_to_the_ledger() -> None:
    params = dataclasses.replace(PARAMS, grace_s=600)
    p1 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 100)), State(), params, T0)
    gone = desired()
    p2 = plan(gone, snapshot(kslice(10, 400)), p1.state, params, T0 + 300)
    assert p2.state.missing == {10: T0 + 300} and not p2.state.ledger
    assert p2.state.slices[10].default.used_bytes == 300  # still counted
    assert not any(isinstance(a, MoveToLedger | RemoveClasses) for a in p2.actions)
    assert [h.name for h in p2.held] == ["pl_a"]  # the classifier keeps marking it
    p3 = plan(gone, snapshot(kslice(10, 500)), p2.state, params, T0 + 899)
    assert p3.state.missing == {10: T0 + 300}
    p4 = plan(gone, snapshot(kslice(10, 600)), p3.state, params, T0 + 900)
    assert (
        MoveToLedger("pl_a", 10) in p4.actions and RemoveClasses("pl_a", 10, "dead") in p4.actions
    )
    assert p4.state.ledger["pl_a"].slice.default.used_bytes == 500 and not p4.state.missing
    back = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 500)), p3.state, params, T0 + 899)
    assert not back.state.missing and back.state.slices[10].default.used_bytes == 400


def test_a_new_name_on_a_slices_xid_goes_on_with_its_usage_and_period() -> None:
    capped = dataclasses.replace(want("pl_old", 10), default=policy(10_000, 1_000))
    p1 = plan(desired(capped), snapshot(kslice(10, 100)), State(), PARAMS, T0)
    p2 = plan(desired(capped), snapshot(kslice(10, 5_000)), p1.state, PARAMS, T0 + 300)
    assert p2.state.slices[10].default.capped
    renamed = dataclasses.replace(capped, name="pl_new")
    p3 = plan(desired(renamed), snapshot(kslice(10, 6_000)), p2.state, PARAMS, T0 + 600)
    st = p3.state.slices[10]
    assert st.name == "pl_new" and st.default.capped and st.default.used_bytes == 5_900
    assert (st.period_start_s, st.period_end_s) == (T0, T0 + PERIOD_S)
    assert p3.state.ledger["pl_old"].slice.default.used_bytes == 5_900  # the old name, too
    assert Inherit("pl_new", 10, "pl_old") in p3.actions
    assert not any(isinstance(a, NewPeriod | CreateClass | RemoveClasses) for a in p3.actions)
    assert not any(isinstance(a, SetRates) and a.new.max_rate_bps == CAP_BPS for a in p3.actions)


class _CountingLedger(dict):
    """A ledger that counts the entries anyone looks at."""

    looked = 0

    def items(self):
        for item in super().items():
            self.looked += 1
            yield item

    def values(self):
        for value in super().values():
            self.looked += 1
            yield value

    def __iter__(self):
        for key in super().__iter__():
            self.looked += 1
            yield key


def _waiting(n: int, first_expiry_s: int) -> _CountingLedger:
    p1 = first_cycle(want("pl_w", 10), kernel=[kslice(10)])
    st = p1.state.slices[10]
    ledger = _CountingLedger()
    for i in range(n):
        name = f"pl_w{i}"
        end = first_expiry_s + i
        dict.__setitem__(
            ledger, name, LedgerEntry(dataclasses.replace(st, name=name, period_end_s=end), T0)
        )
    return ledger


def test_a_cycle_with_40000_waiting_entries_looks_at_none_of_them() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    ledger = _waiting(40_000, T0 + PERIOD_S)
    state = dataclasses.replace(p1.state, ledger=ledger)
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10, 500)), state, PARAMS, T0 + 60)
    assert ledger.looked <= 1  # the head, to see that nothing is due
    assert p2.state.ledger is ledger  # handed on, not copied
    assert not any(isinstance(a, PurgeLedger) for a in p2.actions)


def test_the_due_entries_of_a_large_ledger_expire_and_the_rest_wait_in_order() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    ledger = _waiting(1_000, T0 + 100)
    state = dataclasses.replace(p1.state, ledger=ledger)
    p2 = plan(desired(want("pl_a", 10)), snapshot(kslice(10)), state, PARAMS, T0 + 109)
    assert [a.name for a in p2.actions if isinstance(a, PurgeLedger)] == [
        f"pl_w{i}" for i in range(10)
    ]
    assert ledger.looked <= 11 and len(p2.state.ledger) == 990


def test_an_entry_expiring_before_the_last_goes_where_its_expiry_puts_it() -> None:
    p1 = first_cycle(want("pl_a", 10), kernel=[kslice(10)])
    ledger = _waiting(3, T0 + 2 * PERIOD_S)  # a longer period's entries, then pl_a dies
    p2 = plan(desired(), snapshot(), dataclasses.replace(p1.state, ledger=ledger), PARAMS, T0 + 60)
    assert list(p2.state.ledger) == ["pl_a", "pl_w0", "pl_w1", "pl_w2"]
    p3 = plan(desired(), snapshot(), p2.state, PARAMS, T0 + PERIOD_S)
    assert PurgeLedger("pl_a") in p3.actions and list(p3.state.ledger) == [
        "pl_w0",
        "pl_w1",
        "pl_w2",
    ]


def test_the_loaded_ledger_is_ordered_by_expiry() -> None:
    from bwenforcer.core.model import ordered_ledger

    ledger = dict(reversed(list(_waiting(5, T0).items())))
    assert list(ordered_ledger(ledger)) == [f"pl_w{i}" for i in range(5)]
    ordered = dict(_waiting(5, T0))
    assert ordered_ledger(ordered) is ordered

"""Early notices (core/notices.py and the planner): shares of the budget, the lift of a
cap, once per period and class, and the outbox's marks honoured after a kill.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bwenforcer.core.model import AuditEntry, DesiredSlice, KernelSlice, State
from bwenforcer.core.notices import Mark, notice_id, notices_text, parse_notices, sent_marks
from bwenforcer.core.plan import Notify, Plan
from bwenforcer.core.planner import PlanParams, mark_sent, plan
from tests.planner_data import BWMAX_BPS, BWMIN_BPS, T0, desired, kclass, policy, snapshot

PERIOD_S = 3600
PARAMS = PlanParams(period_s=PERIOD_S, anchor=None, bwmin_bps=BWMIN_BPS)
M = 1_000_000


def _want(notices: str = "50%,80%,100%,lifted", exempt: str = "") -> DesiredSlice:
    return DesiredSlice(
        "pl_a",
        1,
        dataclasses.replace(policy(M), notices=notices),
        dataclasses.replace(policy(3 * M, max_rate=BWMAX_BPS), notices=exempt),
    )


def _cycle(
    state: State,
    used: int,
    now_s: int,
    want: DesiredSlice | None = None,
    sent: dict[tuple[int, str, int], object] | None = None,
    exempt_used: int = 0,
) -> tuple[Plan, list[Notify]]:
    snap = snapshot(KernelSlice(1, kclass(used), kclass(exempt_used, max_rate=BWMAX_BPS)))
    p = plan(desired(want or _want()), snap, state, PARAMS, now_s, sent=sent)  # type: ignore[arg-type]
    return p, [a for a in p.actions if isinstance(a, Notify)]


def _what(notes: list[Notify]) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(n.kind, n.share_bp, n.classes) for n in notes]


def test_notices_parse_to_canonical_text_and_bad_ones_are_one_line() -> None:
    assert parse_notices(" 50% , 87.5%,lifted ") == ((5000, 8750), True)
    assert notices_text(*parse_notices("lifted, 12.05%")) == "12.05%,lifted"
    assert parse_notices("") == ((), False)
    for bad, problem in [
        ("80%,50%", "notice 2: shares must rise (50%)"),
        ("lifted,lifted", "'lifted' given twice"),
        ("1001%", "not above 0% and at most 1000%"),
        ("half", "notice 1: 'half' is not a share"),
        (",".join(f"{n}%" for n in range(1, 11)), "more than 8 shares"),
    ]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            parse_notices(bad)


def test_each_share_is_told_once_a_period_and_a_jump_tells_the_highest_passed() -> None:
    first, notes = _cycle(State(), 0, T0)
    assert notes == []
    p, notes = _cycle(first.state, 400_000, T0 + 60)
    assert notes == []
    p, notes = _cycle(p.state, 550_000, T0 + 120)
    assert _what(notes) == [("share", 5000, ("default",))]
    p, notes = _cycle(p.state, 560_000, T0 + 180)  # not told yet (not delivered): again
    assert _what(notes) == [("share", 5000, ("default",))]
    state = mark_sent(p.state, notes)
    p, notes = _cycle(state, 600_000, T0 + 240)
    assert notes == [] and p.state.slices[1].default.notice_bp == 5000
    # from 60 % to 120 % in one cycle: capped (threshold 80 %) and past 100 %; 80 % is
    # not told on its own
    p, notes = _cycle(p.state, 1_200_000, T0 + 300)
    assert _what(notes) == [("threshold", 0, ("default",)), ("share", 10_000, ("default",))]
    state = mark_sent(p.state, notes)
    p, notes = _cycle(state, 1_300_000, T0 + 360)
    assert notes == []


def test_the_lift_of_a_cap_at_the_period_end_is_told_once_in_the_new_period() -> None:
    first, _ = _cycle(State(), 0, T0)
    p, notes = _cycle(first.state, 900_000, T0 + 60)
    assert p.state.slices[1].default.capped
    state = mark_sent(p.state, notes)
    end = state.slices[1].period_end_s
    p, notes = _cycle(state, 900_000, end + 5)
    assert _what(notes) == [("lifted", 0, ("default",))]
    assert p.state.slices[1].default.lift == "due" and not p.state.slices[1].default.capped
    p, notes = _cycle(p.state, 900_000, end + 65)  # not delivered: told again next cycle
    assert _what(notes) == [("lifted", 0, ("default",))]
    state = mark_sent(p.state, notes)
    assert state.slices[1].default.lift == "sent"
    p, notes = _cycle(state, 900_000, end + 125)
    assert notes == [] and p.state.slices[1] is state.slices[1]  # quiet again


def test_a_grant_lifting_a_cap_is_told_once_a_period_however_often_it_lifts() -> None:
    first, _ = _cycle(State(), 0, T0)
    p, notes = _cycle(first.state, 900_000, T0 + 60)
    state = mark_sent(p.state, notes)

    def grant(at_s: int, size: int) -> AuditEntry:
        return AuditEntry("grant", "pl_a", "default", size, "ops", at_s, at_s + 600)

    state = dataclasses.replace(state, audit=(grant(T0 + 100, 500_000),))
    p, notes = _cycle(state, 900_000, T0 + 120)
    assert _what(notes) == [("lifted", 0, ("default",))]
    state = mark_sent(p.state, notes)
    p, notes = _cycle(state, 1_400_000, T0 + 180)  # capped again: 900 kB counted
    assert p.state.slices[1].default.capped and notes == []
    state = dataclasses.replace(mark_sent(p.state, notes), audit=(grant(T0 + 200, 2 * M),))
    p, notes = _cycle(state, 1_400_000, T0 + 240)  # lifted again, the same period
    assert not p.state.slices[1].default.capped and notes == []


def test_without_notices_or_a_transport_only_the_threshold_notice_is_planned() -> None:
    plain = _want("")
    first, _ = _cycle(State(), 0, T0, plain)
    _, notes = _cycle(first.state, 900_000, T0 + 60, plain)
    assert _what(notes) == [("threshold", 0, ("default",))]
    silent = dataclasses.replace(PARAMS, notify=False)
    snap = snapshot(KernelSlice(1, kclass(900_000), kclass(0, max_rate=BWMAX_BPS)))
    quiet = plan(desired(_want()), snap, first.state, silent, T0 + 60)
    assert not [a for a in quiet.actions if isinstance(a, Notify)]
    assert quiet.state.slices[1].default.notice_bp == 0


def test_the_outboxs_marks_are_not_planned_again_even_across_a_period_end() -> None:
    """A cycle killed after its transport took the notices and before its save: the
    next cycle starts from the state before, and the outbox's marks stand for them.
    """
    first, _ = _cycle(State(), 0, T0)
    p, told = _cycle(first.state, 900_000, T0 + 60, exempt_used=2_800_000)
    assert _what(told) == [
        ("threshold", 0, ("default", "exempt")),
        ("share", 8000, ("default",)),
    ]
    marks = [
        Mark(p.state.slices[1].period_start_s, 1, tc, "threshold") for tc in ("default", "exempt")
    ] + [Mark(p.state.slices[1].period_start_s, 1, "default", "share", 8000)]
    # the state as saved before the killed cycle, and the same cycle again
    again, notes = _cycle(
        first.state, 900_000, T0 + 60, exempt_used=2_800_000, sent=sent_marks(marks)
    )
    assert notes == []
    assert again.state.slices[1].default.notified and again.state.slices[1].exempt.notified
    assert again.state.slices[1].default.notice_bp == 8000
    # a lift at the period end told by a killed cycle: its mark is for the new period
    saved = mark_sent(p.state, told)
    end = saved.slices[1].period_end_s
    killed, notes = _cycle(saved, 900_000, end + 1)
    assert _what(notes) == [("lifted", 0, ("default",))]
    new_start = killed.state.slices[1].period_start_s
    lifted = sent_marks([Mark(new_start, 1, "default", "lifted")])
    again, notes = _cycle(saved, 900_000, end + 2, sent=lifted)
    assert notes == [] and again.state.slices[1].default.lift == "sent"
    # a mark of another period is not this one's
    stale = sent_marks([Mark(new_start - PERIOD_S, 1, "default", "lifted")])
    _, notes = _cycle(saved, 900_000, end + 2, sent=stale)
    assert _what(notes) == [("lifted", 0, ("default",))]


def test_a_notice_id_names_its_period_slice_kind_and_classes() -> None:
    marks = (Mark(T0, 7, "default", "share", 8000), Mark(T0, 7, "exempt", "share", 8000))
    assert notice_id(marks) == f"bwn.{T0}.7.share8000.default-exempt"
    assert notice_id((Mark(T0, 7, "exempt", "lifted"),)) == f"bwn.{T0}.7.lifted.exempt"
    for m in marks:
        assert Mark.parse(m.line()) == m
    assert Mark.parse("1 2 default nope 0") is None and Mark.parse("x 2 default share 0") is None


# --- the protocol under kills ---------------------------------------------------------
#
# A cycle: plan (with the outbox's marks) → for each notice: commit (its marks to the
# outbox, durable) → the transport's point of no return → delivered; then the save and
# the outbox cleared. A kill may land between any two steps. Only a kill between a
# commit and the point of no return loses a notice (the documented window); nothing
# is ever delivered twice.

KILL_POINTS = st.sampled_from(["none", "before_commit", "after_commit", "after_send"])


@settings(max_examples=300, deadline=None)
@example(cycles=[(0, 0, 60, "none", 0, False), (900_000, 0, 60, "after_send", 0, False)])
@example(cycles=[(0, 0, 60, "none", 0, False), (900_000, 0, 3600, "after_send", 1, False)])
@given(
    cycles=st.lists(
        st.tuples(
            st.integers(0, 400_000),  # default bytes this cycle
            st.integers(0, 1_200_000),  # exempt bytes
            st.integers(1, 1500),  # seconds to the next cycle
            KILL_POINTS,
            st.integers(0, 3),  # at which notice of the cycle
            st.booleans(),  # a grant of 1 MB at this cycle
        ),
        max_size=25,
    )
)
def test_every_notice_is_delivered_at_most_once_and_only_the_window_loses_one(
    cycles: list[tuple[int, int, int, str, int, bool]],
) -> None:
    want = _want("25%,50%,90%,lifted", "50%,lifted")
    state, outbox = State(), []
    d_bytes = e_bytes = 0
    now = T0
    delivered: list[tuple[Mark, ...]] = []
    lost: list[tuple[Mark, ...]] = []
    grants: tuple[AuditEntry, ...] = ()

    def cycle(kill: str, at: int) -> bool:
        nonlocal state, outbox
        begun = dataclasses.replace(state, audit=grants)
        p, notes = _cycle(begun, d_bytes, now, want, sent_marks(outbox), e_bytes)
        done: list[Notify] = []
        for i, n in enumerate(notes):
            st_ = p.state.slices[n.xid]
            marks = tuple(
                Mark(st_.period_start_s, n.xid, tc, n.kind, n.share_bp) for tc in n.classes
            )  # type: ignore[arg-type]
            if kill == "before_commit" and i == at:
                return False
            outbox = [*outbox, *marks]
            if kill == "after_commit" and i == at:
                lost.append(marks)
                return False
            delivered.append(marks)
            done.append(n)
            if kill == "after_send" and i == at:
                return False
        state, outbox = mark_sent(p.state, done), []
        return True

    for d_add, e_add, dt_s, kill, at, grant in cycles:
        d_bytes += d_add
        e_bytes += e_add
        if grant:
            grants = (*grants, AuditEntry("grant", "pl_a", "default", M, "ops", now, now + 900))
        cycle(kill, at)
        now += dt_s
    for _ in range(3):  # clean cycles: whatever is due is sent
        assert cycle("none", 0)
        now += 1
    ids = [notice_id(m) for m in delivered]
    assert len(ids) == len(set(ids))  # at most once
    per_class = {
        (m.period_start_s, m.traffic_class, m.kind, m.share_bp) for ms in delivered for m in ms
    }
    assert len(per_class) == sum(len(ms) for ms in delivered)  # at most once per class too
    told = {m for ms in delivered + lost for m in ms}
    st_ = state.slices[1]
    for tc in ("default", "exempt"):
        cs = st_.cls(tc)
        if cs.notified:
            assert Mark(st_.period_start_s, 1, tc, "threshold") in told
        if cs.notice_bp:
            assert Mark(st_.period_start_s, 1, tc, "share", cs.notice_bp) in told
        if cs.lift == "sent":
            assert Mark(st_.period_start_s, 1, tc, "lifted") in told
        assert cs.lift != "due"  # the clean cycles told it


def test_a_lift_an_operator_made_due_is_told_by_the_next_cycle_once() -> None:
    """`reset` and `grant` lift a cap at once and leave the lift due (views/reset.py)."""
    first, _ = _cycle(State(), 0, T0)
    p, notes = _cycle(first.state, 900_000, T0 + 60)
    st_ = mark_sent(p.state, notes).slices[1]
    reset = dataclasses.replace(
        st_, default=dataclasses.replace(st_.default, used_bytes=0, capped=False, lift="due")
    )
    state = dataclasses.replace(p.state, slices={1: reset})
    p, notes = _cycle(state, 900_000, T0 + 120)
    assert _what(notes) == [("lifted", 0, ("default",))]
    p, notes = _cycle(mark_sent(p.state, notes), 900_000, T0 + 180)
    assert notes == [] and p.state.slices[1].default.lift == "sent"

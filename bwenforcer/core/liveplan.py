"""Planning one live slice: its period (or rolling window's bucket), its usage, the
rates and the notices of each class, with inbound accounting off or on.

Pure, like :mod:`bwenforcer.core.planner`, which calls :func:`plan_live` for every
slice it does not take for quiet (:mod:`bwenforcer.core.quietplan`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

from bwenforcer.core.accounting import class_usage
from bwenforcer.core.direction import counts, inbound_change, inbound_usage
from bwenforcer.core.grants import NO_GRANT, counted_bytes, granted_bytes, rolled_over
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import (
    AuditEntry,
    ClassPolicy,
    ClassState,
    DesiredSlice,
    KernelSlice,
    SliceState,
)
from bwenforcer.core.notices import NO_NOTICES, NoticeRule, Sent, SentMarks
from bwenforcer.core.periods import first_period, next_period
from bwenforcer.core.plan import (
    Action,
    CreateClass,
    LiveSlice,
    NewPeriod,
    Notify,
    Rollover,
    SetInboundLimit,
    SetRates,
)
from bwenforcer.core.settings import PlanParams
from bwenforcer.core.targets import RateTargets
from bwenforcer.core.window import added, bucket_span, carried_ring, max_steps, moved, steps_between

_NOT_SENT = Sent()

# the classes a Notify names: one tuple each, not one a capped slice
_NOTIFY_CLASSES: dict[tuple[TrafficClass, ...], tuple[TrafficClass, ...]] = {
    c: c for c in (("default",), ("exempt",), ("default", "exempt"))
}


class _Turn(NamedTuple):
    """Where a live slice stands in time this cycle (:func:`_turn`)."""

    want: DesiredSlice  # its exempt class under its default class's window
    st: SliceState  # conformed to a window changed by policy
    start_s: int
    end_s: int
    new_period: bool  # the period ended (or, under a window, the current bucket)
    window_s: int  # 0: under a period
    steps: int  # buckets the ring moves on (under a window)


def _turn(
    want: DesiredSlice,
    st: SliceState,
    params: PlanParams,
    now_s: int,
    *,
    actions: list[Action],
    hold_period: bool,
    elapsed_s: int | None,
) -> _Turn:
    """A live slice's period this cycle, the same for :func:`plan_live` and
    :func:`_plan_both`: under a rolling window the period is the current bucket, and
    when it ends the ring moves on at most as far as the boot clock's ``elapsed_s``
    allows (None: no bound); a NewPeriod for a period that ended.
    """
    window_s = want.default.window_s
    if want.exempt.window_s != window_s:  # the slice's window is its default class's
        want = dataclasses.replace(want, exempt=dataclasses.replace(want.exempt, window_s=window_s))
    if st.default.policy.window_s != window_s or st.exempt.policy.window_s != window_s:
        st = _conformed(st, window_s, params, now_s)
    start_s, end_s = st.period_start_s, st.period_end_s
    new_period = now_s >= end_s and not hold_period
    steps = 0
    if new_period and window_s:
        start_s, end_s = bucket_span(now_s, window_s)
        steps = steps_between(st.period_end_s, end_s, window_s, max_steps(elapsed_s, window_s))
    elif new_period:
        start_s, end_s = next_period(end_s, now_s, params.period_s, params.anchor)
        actions.append(NewPeriod(want.name, want.xid, start_s, end_s))
    return _Turn(want, st, start_s, end_s, new_period, window_s, steps)


def _grants_then(t: _Turn, grants_then: Iterable[AuditEntry]) -> tuple[int, int]:
    """The grants in force at the end of a period that ended, for its rollover."""
    want = t.want
    if (
        not t.new_period
        or t.window_s
        or not (want.default.rollover_bytes or want.exempt.rollover_bytes)
    ):
        return NO_GRANT
    return granted_bytes(grants_then, t.st.period_end_s - 1).get(want.name, NO_GRANT)


def _carried(
    old: ClassState,
    policy: ClassPolicy,
    tc: TrafficClass,
    t: _Turn,
    *,
    then: tuple[int, int],
    old_used_bytes: int,
    actions: list[Action],
) -> int:
    """What a class carries this cycle (core.grants.rolled_over): at a new period what
    the period that ended left unused (``old_used_bytes``: the usage its budget counted),
    at most the policy's bound; under a window nothing; a lowered bound at once.
    """
    carried = old.carried_bytes
    if t.window_s:
        return 0  # a window has no period end to carry over
    if t.new_period:
        carried = rolled_over(
            limit_bytes=old.policy.limit_bytes,
            used_bytes=old_used_bytes,
            granted=then[0] if tc == "default" else then[1],
            carried=old.carried_bytes,
            bound_bytes=policy.rollover_bytes,
        )
        if carried:
            actions.append(Rollover(t.want.name, t.want.xid, tc, carried))
        return carried
    return min(carried, policy.rollover_bytes)  # a bound lowered (or rollover off): at once


class _Told(NamedTuple):
    """A class's notice marks after this cycle (:func:`_notices`)."""

    notified: bool
    notice_bp: int
    lift: str


def _notices(
    old: ClassState,
    tc: TrafficClass,
    xid: int,
    t: _Turn,
    *,
    notified: bool,
    counted: int,
    capped: bool,
    rule: NoticeRule,
    marks: SentMarks | None,
    shares: list[tuple[int, TrafficClass]],
    lifted: list[TrafficClass],
) -> _Told:
    """A class's notice marks (core/notices.py) from the usage its budget counts
    (``counted``, after grants), shared by :func:`plan_live` and :func:`_plan_both`;
    the shares passed and the lift due are appended to ``shares`` and ``lifted``.
    """
    if t.window_s:
        # No period to end (its buckets turn over, and usage stays in the window): the
        # next cap is mailed again once the class was not capped, a share once the usage
        # fell below it, a lift once the class was capped again; never at each bucket.
        if not capped:
            notified = False
        notice_bp, lift = old.notice_bp, old.lift
        if notice_bp and rule.shares and t.new_period:  # a bucket turned: bytes left
            notice_bp = min(notice_bp, rule.passed_bp(counted))
        if capped and lift == "sent":
            lift = ""
    else:
        notice_bp, lift = (0, "") if t.new_period else (old.notice_bp, old.lift)
    if (
        rule.lifted
        and not capped
        and (old.capped or (t.new_period and old.lift == "due"))
        and (t.new_period or lift == "")
    ):
        lift = "due"  # a cap lifted (or still untold from the period before)
    if marks:  # what the outbox says was sent, by a cycle that did not save it
        sent = marks.get((xid, tc, t.start_s), _NOT_SENT)
        notified = notified or sent.threshold
        notice_bp = max(notice_bp, sent.share_bp)
        lift = "sent" if sent.lifted else lift
    if lift == "due" and (capped or not rule.lifted):
        lift = ""  # capped again before it was told, or no longer asked for
    if rule.shares:
        passed_bp = rule.passed_bp(counted)
        if passed_bp > notice_bp:
            shares.append((passed_bp, tc))
    if lift == "due":
        lifted.append(tc)
    return _Told(notified, notice_bp, lift)


def _notify(
    want: DesiredSlice,
    params: PlanParams,
    actions: list[Action],
    *,
    to_notify: list[TrafficClass],
    shares: list[tuple[int, TrafficClass]],
    lifted: list[TrafficClass],
) -> None:
    """A slice's Notify actions: the threshold, one per share passed (naming the
    classes that passed it), the lift of a cap.
    """
    if to_notify and params.notify:
        actions.append(Notify(want.name, want.xid, _NOTIFY_CLASSES[tuple(to_notify)]))
    if shares:
        for share_bp in sorted({bp for bp, _ in shares}):
            classes = tuple(tc for bp, tc in shares if bp == share_bp)
            actions.append(Notify(want.name, want.xid, _NOTIFY_CLASSES[classes], "share", share_bp))
    if lifted:
        actions.append(Notify(want.name, want.xid, _NOTIFY_CLASSES[tuple(lifted)], "lifted"))


def plan_live(
    want: DesiredSlice,
    *,
    st: SliceState,
    kernel: KernelSlice | None,
    account: bool,
    targets: RateTargets,
    params: PlanParams,
    now_s: int,
    actions: list[Action],
    reason: str,
    hold_period: bool = False,
    granted: tuple[int, int] = NO_GRANT,
    elapsed_s: int | None = None,
    marks: SentMarks | None = None,
    inbound: InboundSnapshot | None = None,
    grants_then: Iterable[AuditEntry] = (),
) -> LiveSlice:
    """Plan one live slice; with ``account``, first add its bytes since the last cycle.

    Hot path, run for every slice every cycle. Identity rule (see
    :class:`~bwenforcer.core.model.SliceState`): a class whose usage, counter, policy,
    ceil and flags did not change is passed on as its very ClassState, and a
    slice whose classes, name, xid and period did not change as its very
    SliceState, never as an equal copy: the state encoder re-encodes only the
    slices that are not the object it encoded last time.

    Under a rolling window (``want``'s ``window_s``, core/window.py) the period is the
    current bucket: when it ends, each class's ring moves on (at most as far as the
    boot clock's ``elapsed_s`` allows, None: no bound) and its usage is what is left
    in the ring; a class no longer capped may be notified again.

    With ``params.inbound``, each class's inbound bytes are counted too and its
    budget counts the directions its policy says (core.direction, :func:`_plan_both`);
    ``inbound`` is the backend's read (None: not read this cycle: the inbound usage
    and limits are held as they are).

    Under a period, a new period carries into each class what the period that ended left
    unused, at most its policy's rollover bound (core.grants.rolled_over; the grants of
    the period that ended are the slice's audit entries ``grants_then``); the carried
    bytes count like a grant.
    """
    t = _turn(
        want, st, params, now_s, actions=actions, hold_period=hold_period, elapsed_s=elapsed_s
    )
    if params.inbound:
        return _plan_both(
            t, kernel=kernel, account=account, targets=targets, params=params, now_s=now_s,
            actions=actions, reason=reason, granted=granted, marks=marks, inbound=inbound,
            then=_grants_then(t, grants_then),
        )  # fmt: skip
    want, st, start_s, end_s, new_period, window_s, steps = t
    then = _grants_then(t, grants_then)
    out: list[tuple[ClassState, int, int | None]] = []
    was_capped: list[bool] = []
    to_notify: list[TrafficClass] = []
    shares: list[tuple[int, TrafficClass]] = []
    lifted: list[TrafficClass] = []
    for tc in TRAFFIC_CLASSES:
        if tc == "default":
            old, policy, grant = st.default, want.default, granted[0]
            current = None if kernel is None else kernel.default
        else:
            old, policy, grant = st.exempt, want.exempt, granted[1]
            current = None if kernel is None else kernel.exempt
        carried = _carried(
            old, policy, tc, t, then=then, old_used_bytes=old.used_bytes, actions=actions
        )
        used, last, delta, notified = class_usage(
            old, current, account, new_period and not window_s
        )
        buckets = old.buckets
        if window_s:
            buckets = added(moved(buckets, steps), delta)
            if steps:
                used = sum(buckets)
        was_capped.append(account and old.capped and current is not None)
        counted = counted_bytes(used, grant + carried) if grant or carried else used
        rates, capped = targets.rates(policy, tc, counted, end_s, now_s)
        rule = targets.notices(policy) if params.notify else NO_NOTICES
        notified, notice_bp, lift = _notices(
            old, tc, want.xid, t, notified=notified, counted=counted, capped=capped, rule=rule,
            marks=marks, shares=shares, lifted=lifted,
        )  # fmt: skip
        ceil_bps = rates.max_rate_bps
        if current is None:
            actions.append(CreateClass(want.name, want.xid, tc, rates, reason))
            old_ceil_bps = None
        else:
            if current.rates is not rates and current.rates != rates:
                actions.append(SetRates(want.name, want.xid, tc, current.rates, rates))
            old_ceil_bps = current.rates.max_rate_bps
        if capped and not notified:
            to_notify.append(tc)
        if (
            used == old.used_bytes
            and last == old.last_counter_bytes
            and ceil_bps == old.ceil_bps
            and capped == old.capped
            and notified == old.notified
            and buckets is old.buckets
            and notice_bp == old.notice_bp
            and lift == old.lift
            and carried == old.carried_bytes
            and (policy is old.policy or policy == old.policy)
        ):
            out.append((old, delta, old_ceil_bps))  # the very object: the identity rule
        else:
            new_cs = ClassState(
                policy, used, last, ceil_bps, capped, notified, notice_bp, lift, buckets, carried
            )  # fmt: skip
            out.append((new_cs, delta, old_ceil_bps))
    _notify(want, params, actions, to_notify=to_notify, shares=shares, lifted=lifted)
    (default, d_delta, d_ceil), (exempt, e_delta, e_ceil) = out
    if (
        default is st.default
        and exempt is st.exempt
        and start_s == st.period_start_s
        and end_s == st.period_end_s
        and want.name == st.name
        and want.xid == st.xid
    ):
        new_st = st
    else:
        new_st = SliceState(want.name, want.xid, start_s, end_s, default, exempt)
    return LiveSlice(new_st, d_delta, e_delta, d_ceil, e_ceil, was_capped[0], was_capped[1])


def _plan_both(
    t: _Turn,
    *,
    kernel: KernelSlice | None,
    account: bool,
    targets: RateTargets,
    params: PlanParams,
    now_s: int,
    actions: list[Action],
    reason: str,
    granted: tuple[int, int],
    marks: SentMarks | None,
    inbound: InboundSnapshot | None,
    then: tuple[int, int] = NO_GRANT,
) -> LiveSlice:
    """:func:`plan_live` with inbound accounting on: each class's budget counts the
    directions its policy says; past its rule's start the rule's rate caps each of them
    (egress: the HTB ceil; inbound: a limit, changed only by a real margin). The
    period, the notices and the rolling window's ring are :func:`plan_live`'s
    (:func:`_turn`, :func:`_notices`); a rolling window counts sent bytes alone (one
    counting received bytes is refused by the config and the slices file), and under
    one the received bytes are counted from the slice's start, for show.
    """
    want, st, start_s, end_s, new_period, window_s, steps = t
    out: list[ClassState] = []
    deltas: list[int] = []
    in_deltas: list[int] = []
    old_ceils: list[int | None] = []
    old_limits: list[int | None] = []
    was_capped: list[bool] = []
    to_notify: list[TrafficClass] = []
    shares: list[tuple[int, TrafficClass]] = []
    lifted: list[TrafficClass] = []
    in_reset = new_period and not window_s
    for tc in TRAFFIC_CLASSES:
        old, policy = st.cls(tc), want.policy(tc)
        grant = granted[0] if tc == "default" else granted[1]
        current = None if kernel is None else kernel.cls(tc)
        old_out, old_in = counts(old.policy, True)
        old_used = (old.used_bytes if old_out else 0) + (old.in_used_bytes if old_in else 0)
        carried = _carried(old, policy, tc, t, then=then, old_used_bytes=old_used, actions=actions)
        used, last, delta, notified = class_usage(old, current, account, in_reset)
        buckets = old.buckets
        if window_s:
            buckets = added(moved(buckets, steps), delta)
            if steps:
                used = sum(buckets)
        if inbound is None:  # not read: held as it is
            in_used = 0 if in_reset else old.in_used_bytes
            in_last, in_delta = old.in_last_counter_bytes, 0
            in_old: int | None = old.in_limit_bps or None
        else:
            counter = inbound.bytes_by_class.get((want.xid, tc))
            in_used, in_last, in_delta = inbound_usage(old, counter, account, in_reset)
            in_old = inbound.limits_bps.get((want.xid, tc))
        count_out, count_in = counts(policy, True)
        raw = (used if count_out else 0) + (in_used if count_in else 0)
        counted = counted_bytes(raw, grant + carried) if grant or carried else raw
        ways = 2 if count_out and count_in else 1
        rates, capped = targets.rates(policy, tc, counted, end_s, now_s, ways=ways)
        in_target = rates.max_rate_bps if capped and count_in else None
        if not count_out:
            rates = targets.limits(policy, tc)[1]  # the budget leaves egress alone
        was_capped.append(account and old.capped and (current is not None or count_in))
        rule = targets.notices(policy) if params.notify else NO_NOTICES
        notified, notice_bp, lift = _notices(
            old, tc, want.xid, t, notified=notified, counted=counted, capped=capped, rule=rule,
            marks=marks, shares=shares, lifted=lifted,
        )  # fmt: skip
        in_limit = in_old
        if inbound is not None and inbound_change(in_old, in_target):
            actions.append(SetInboundLimit(want.name, want.xid, tc, in_old, in_target))
            in_limit = in_target
        ceil_bps = rates.max_rate_bps
        if current is None:
            actions.append(CreateClass(want.name, want.xid, tc, rates, reason))
            old_ceils.append(None)
        else:
            if current.rates is not rates and current.rates != rates:
                actions.append(SetRates(want.name, want.xid, tc, current.rates, rates))
            old_ceils.append(current.rates.max_rate_bps)
        if capped and not notified:
            to_notify.append(tc)
        in_limit_bps = in_limit or 0
        if (
            used == old.used_bytes
            and last == old.last_counter_bytes
            and in_used == old.in_used_bytes
            and in_last == old.in_last_counter_bytes
            and ceil_bps == old.ceil_bps
            and in_limit_bps == old.in_limit_bps
            and capped == old.capped
            and notified == old.notified
            and buckets is old.buckets
            and notice_bp == old.notice_bp
            and lift == old.lift
            and carried == old.carried_bytes
            and (policy is old.policy or policy == old.policy)
        ):
            out.append(old)  # the very object: the identity rule
        else:
            new_cs = ClassState(
                policy, used, last, ceil_bps, capped, notified, notice_bp, lift, buckets,
                carried, in_used, in_last, in_limit_bps,
            )  # fmt: skip
            out.append(new_cs)
        deltas.append(delta)
        in_deltas.append(in_delta)
        old_limits.append(in_old)
    _notify(want, params, actions, to_notify=to_notify, shares=shares, lifted=lifted)
    default, exempt = out
    if (
        default is st.default
        and exempt is st.exempt
        and start_s == st.period_start_s
        and end_s == st.period_end_s
        and want.name == st.name
        and want.xid == st.xid
    ):
        new_st = st
    else:
        new_st = SliceState(want.name, want.xid, start_s, end_s, default, exempt)
    return LiveSlice(
        new_st, deltas[0], deltas[1], old_ceils[0], old_ceils[1], was_capped[0], was_capped[1],
        in_deltas[0], in_deltas[1], old_limits[0], old_limits[1], True,
    )  # fmt: skip


def _conformed(st: SliceState, window_s: int, params: PlanParams, now_s: int) -> SliceState:
    """``st`` under a rolling window of ``window_s`` (0: under a period) now that its
    policy changed from a period to a window, a window to a period, or one window to
    another: its usage is kept whole, as if sent now (in the current bucket, or in a
    period that starts now), so a change of policy never hands out a fresh budget.
    """
    if window_s:
        start, end = bucket_span(now_s, window_s)
    else:
        start, end = first_period(now_s, params.period_s, params.anchor)

    def conform(cs: ClassState) -> ClassState:
        return dataclasses.replace(
            cs, buckets=carried_ring(cs.used_bytes) if window_s else (), carried_bytes=0
        )

    return dataclasses.replace(
        st,
        period_start_s=start,
        period_end_s=end,
        default=conform(st.default),
        exempt=conform(st.exempt),
    )

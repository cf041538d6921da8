"""The pure planner: desired slices × kernel classes × saved state → a plan.

No I/O and no clock: ``now_s`` is passed in. The plan is a list of typed actions
for the executor and the state the cycle saves if every action succeeds; each
slice is planned on its own, so one slice's odd data cannot stop the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

from bwenforcer.core.accounting import (
    account_slice,
    class_usage,
    inbound_counter,
    kernel_counter,
    rebaseline,
)
from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.direction import counts, inbound_change, inbound_usage
from bwenforcer.core.grants import NO_GRANT, counted_bytes, granted_bytes, pruned, rolled_over
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID, TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.ledger import LazyLedger, due_names, editable
from bwenforcer.core.model import (
    AuditEntry,
    BootClock,
    ClassPolicy,
    ClassState,
    DesiredSet,
    DesiredSlice,
    InvalidRecord,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    LedgerXids,
    SliceState,
    State,
    ledger_xids,
)
from bwenforcer.core.notices import NO_NOTICES, NoticeRule, Sent, SentMarks
from bwenforcer.core.periods import CLOCK_SLACK_S, clock_check, first_period, next_period
from bwenforcer.core.plan import (
    Action,
    Adopt,
    CreateClass,
    Inherit,
    LiveSlice,
    MoveToLedger,
    NewPeriod,
    Notify,
    Plan,
    PurgeLedger,
    RemoveClasses,
    Revive,
    Rollover,
    SetInboundLimit,
    SetRates,
    UsageRow,
)
from bwenforcer.core.settings import Config, PeriodAnchor
from bwenforcer.core.targets import RateTargets
from bwenforcer.core.window import (
    added,
    bucket_span,
    carried_ring,
    empty_ring,
    max_steps,
    moved,
    steps_between,
)

# The tree's own slices: created by `tc init`, never removed as orphans.
SYSTEM_XIDS = frozenset({ROOT_XID, DEFAULT_XID})


@dataclass(frozen=True, slots=True)
class PlanParams:
    """The parts of the config the planner needs."""

    period_s: int
    anchor: PeriodAnchor | None
    bwmin_bps: int
    # False with mail.transport none: nothing would deliver a Notify, and thousands of
    # capped slices would each get one every cycle. A transport set later mails the
    # classes capped and not yet notified, as ever.
    notify: bool = True
    # how long a slice gone from its source keeps its classes and cap (0: none)
    grace_s: int = 0
    # inbound accounting on (config ``inbound.enabled``): budgets count the direction
    # their policy says (core.direction); off: every budget counts what is sent
    inbound: bool = False

    @classmethod
    def from_config(cls, config: Config) -> PlanParams:
        """Planner parameters of a config."""
        return cls(
            config.period_s,
            config.period_anchor,
            config.bwmin_bps,
            notify=config.mail.transport != "none",
            grace_s=config.grace_s,
            inbound=config.inbound.enabled,
        )


# --- planning --------------------------------------------------------------


def _fresh_class(policy: ClassPolicy, counter_bytes: int) -> ClassState:
    return ClassState(policy=policy, last_counter_bytes=counter_bytes)


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
    """A live slice's period this cycle, the same for :func:`_plan_live` and
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
    (``counted``, after grants), shared by :func:`_plan_live` and :func:`_plan_both`;
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


def _plan_live(
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
    """:func:`_plan_live` with inbound accounting on: each class's budget counts the
    directions its policy says; past its rule's start the rule's rate caps each of them
    (egress: the HTB ceil; inbound: a limit, changed only by a real margin). The
    period, the notices and the rolling window's ring are :func:`_plan_live`'s
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


def _quiet_inbound(
    want: DesiredSlice,
    st: SliceState,
    kernel: KernelSlice,
    targets: RateTargets,
    now_s: int,
    *,
    notify: bool,
    inbound: InboundSnapshot | None,
) -> LiveSlice | None:
    """:func:`_quiet` with inbound accounting on: its conditions with the usage each
    budget counts, and besides: each class's inbound counter equals its last reading
    (or was not read this cycle) and no inbound limit is in force, by the state or the
    backend. Then :func:`_plan_both` adds no action and keeps the state.
    """
    d, e, kd, ke = st.default, st.exempt, kernel.default, kernel.exempt
    if (
        kd is None
        or ke is None
        or now_s >= st.period_end_s
        or kd.bytes != d.last_counter_bytes
        or ke.bytes != e.last_counter_bytes
        or d.capped
        or e.capped
        or d.in_limit_bps
        or e.in_limit_bps
        or d.lift == "due"
        or e.lift == "due"
        or (d.policy is not want.default and d.policy != want.default)
        or (e.policy is not want.exempt and e.policy != want.exempt)
        or ((d.notified or e.notified) and want.default.window_s)
        or (
            (d.carried_bytes or e.carried_bytes)
            and (
                want.default.window_s
                or d.carried_bytes > want.default.rollover_bytes
                or e.carried_bytes > want.exempt.rollover_bytes
            )
        )
    ):
        return None
    if inbound is not None:
        for key, cs in (((st.xid, "default"), d), ((st.xid, "exempt"), e)):
            if (
                inbound.bytes_by_class.get(key) != cs.in_last_counter_bytes
                or key in inbound.limits_bps
            ):
                return None
    d_start, d_rates = targets.limits(want.default, "default")
    e_start, e_rates = targets.limits(want.exempt, "exempt")
    d_counted = direction_bytes(d, want.default, True)
    e_counted = direction_bytes(e, want.exempt, True)
    if (
        d_counted >= d_start
        or e_counted >= e_start
        or d.ceil_bps != d_rates.max_rate_bps
        or e.ceil_bps != e_rates.max_rate_bps
        or (kd.rates is not d_rates and kd.rates != d_rates)
        or (ke.rates is not e_rates and ke.rates != e_rates)
    ):
        return None
    if (
        notify
        and (d.policy.notices or e.policy.notices)
        and _notice_due(((d, d_counted), (e, e_counted)), targets)
    ):
        return None
    return LiveSlice(
        st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps, False, False, 0, 0, None, None,
        True,
    )  # fmt: skip


def _quiet(
    want: DesiredSlice,
    st: SliceState,
    kernel: KernelSlice,
    targets: RateTargets,
    now_s: int,
    *,
    notify: bool,
) -> LiveSlice | None:
    """The plan of a slice nothing happened to since the last cycle, or None.

    Most slices of a large node are idle at any moment: no bytes, same policy,
    not capped, rates as they should be. Telling so takes a few comparisons,
    and what :func:`_plan_live` would make of it is known: the very same state,
    no action.

    The rule this shortcut rests on: it must take exactly the decisions
    :func:`_plan_live` (with ``account``) would take for the slice, and so
    answers only when all of these hold, each of which fixes one of them:

    - both classes are in the kernel (else: a CreateClass);
    - the period has not ended (else: a NewPeriod, usage back to 0);
    - each kernel counter equals the last reading (else: bytes to add, or a
      counter that restarted);
    - neither class is capped nor where its rule starts capping (the threshold,
      a tier, a taper; else: capped rates, maybe a Notify); with the usage
      unchanged, it stays under;
    - each policy equals the wanted one (else: new limits and rates);
    - under a rolling window, neither class is flagged notified (else, not capped, its
      flag is cleared);
    - neither class carries more than its policy's rollover bound, nor anything under a
      rolling window (else it is clipped);
    - with notices on, no lift is due and neither usage is past a share not yet
      told (else: a Notify);
    - the saved ceil and the kernel's rates equal the policy's uncapped rates
      (else: a SetRates, or a state to update).

    Then :func:`_plan_live` adds no action, keeps both ClassStates and so the
    SliceState itself, counts 0 bytes and reports the kernel's ceils: what this
    returns. A change to :func:`_plan_live`'s decisions must change these
    conditions with it; ``plan(..., quiet=False)`` runs without the shortcut,
    and tests/test_planner_properties.py holds the two to the same plan.
    """
    d, e, kd, ke = st.default, st.exempt, kernel.default, kernel.exempt
    if (
        kd is None
        or ke is None
        or now_s >= st.period_end_s
        or kd.bytes != d.last_counter_bytes
        or ke.bytes != e.last_counter_bytes
        or d.capped
        or e.capped
        or d.lift == "due"
        or e.lift == "due"
        or (d.policy is not want.default and d.policy != want.default)
        or (e.policy is not want.exempt and e.policy != want.exempt)
        or ((d.notified or e.notified) and want.default.window_s)
        or (
            (d.carried_bytes or e.carried_bytes)
            and (
                want.default.window_s
                or d.carried_bytes > want.default.rollover_bytes
                or e.carried_bytes > want.exempt.rollover_bytes
            )
        )
    ):
        return None
    d_start, d_rates = targets.limits(want.default, "default")
    e_start, e_rates = targets.limits(want.exempt, "exempt")
    if (
        d.used_bytes >= d_start
        or e.used_bytes >= e_start
        or d.ceil_bps != d_rates.max_rate_bps
        or e.ceil_bps != e_rates.max_rate_bps
        or (kd.rates is not d_rates and kd.rates != d_rates)
        or (ke.rates is not e_rates and ke.rates != e_rates)
    ):
        return None
    if (
        notify
        and (d.policy.notices or e.policy.notices)
        and _notice_due(((d, d.used_bytes), (e, e.used_bytes)), targets)
    ):
        return None
    return LiveSlice(st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps)


def _notice_due(classes: Iterable[tuple[ClassState, int]], targets: RateTargets) -> bool:
    """Whether a class of a quiet slice (with the usage its budget counts) has a share
    passed and not told: then it is not quiet.
    """
    for cs, counted in classes:
        next_bytes = targets.notices(cs.policy).next_bytes(cs.notice_bp)
        if next_bytes is not None and counted >= next_bytes:
            return True
    return False


def _no_shortcut(
    want: DesiredSlice,
    st: SliceState,
    kernel: KernelSlice,
    targets: RateTargets,
    now_s: int,
    *,
    notify: bool,
) -> None:
    """:func:`_quiet` for ``plan(..., quiet=False)``: no slice is taken for quiet."""
    return None


def _limiting_off(
    desired: DesiredSet,
    snapshot: KernelSnapshot,
    state: State,
    now_s: int,
    inbound: InboundSnapshot | None = None,
) -> Plan:
    # each removal names its slice: the state's, else the source's, else the ledger's
    # (found by its xids, without a walk of the ledger)
    names: dict[int, str] = {}
    names.update((r.xid, r.name) for r in desired.invalid if r.xid is not None)
    names.update((s.xid, s.name) for s in desired.slices)
    names.update((xid, st.name) for xid, st in state.slices.items())
    waiting = ledger_xids(state)

    def name_of(xid: int) -> str | None:
        if xid in names:
            return names[xid]
        on = waiting.get(xid)
        if not on:
            return None
        return max(reversed(on), key=lambda name: state.ledger[name].expires_s)

    actions: list[Action] = [
        RemoveClasses(name_of(xid), xid, "limiting off")
        for xid in sorted(snapshot.slices)
        if xid not in SYSTEM_XIDS
    ]
    if inbound is not None:  # limiting off lifts the inbound limits too
        actions.extend(
            SetInboundLimit(names.get(xid), xid, tc, bps, None)
            for (xid, tc), bps in sorted(inbound.limits_bps.items())
        )
    return Plan(now_s, tuple(actions), state, (), limiting_off=True)


def plan(
    desired: DesiredSet,
    snapshot: KernelSnapshot,
    state: State,
    params: PlanParams,
    now_s: int,
    *,
    quiet: bool = True,
    boot: BootClock | None = None,
    sent: SentMarks | None = None,
    inbound: InboundSnapshot | None = None,
) -> Plan:
    """Reconcile one cycle (docs/architecture.md "Policy" and "Slice lifecycle").

    ``quiet=False`` plans every slice the long way (:func:`_plan_live`), without
    the shortcut for slices nothing happened to: the same plan, slower; for tests
    that hold the shortcut to that. ``boot``: the node's boot id and boot clock,
    read by the caller, which tell a stepped wall clock from time that passed
    (:func:`~bwenforcer.core.periods.clock_check`). ``sent``: the notices the outbox
    journal says were handed to the transport (by a cycle killed before its save):
    not planned again (core/notices.py). ``inbound``: the inbound backend's read, with
    ``params.inbound`` (None: not read this cycle, inbound usage and limits held as
    they are); without ``params.inbound`` it is not looked at.
    """
    if not params.inbound:
        inbound = None
    if desired.limiting_off:
        return _limiting_off(desired, snapshot, state, now_s, inbound)
    wanted = {s.xid: s for s in desired.slices}
    losers: list[DesiredSlice] = []
    for claim in desired.contested:
        # two names on one xid: the slice the state has on it keeps it (and its cap)
        st = state.slices.get(claim.xid)
        if st is not None and st.name == claim.name:
            losers.append(wanted[claim.xid])
            wanted[claim.xid] = claim
        else:
            losers.append(claim)
    # A refused record (bad, or a losing claim) of a live slice keeps that slice as it
    # was: a typo must not drop a capped slice's classes.
    refused: tuple[InvalidRecord | DesiredSlice | SliceState, ...] = (*desired.invalid, *losers)
    if desired.unread:  # no word from the source: every slice stays as it is
        refused = (*refused, *state.slices.values())
    held = _held(refused, wanted, state) if refused else ()
    for want in held:
        wanted[want.xid] = want
    # A wall clock not to be trusted (stepped, by the boot clock's word): no period
    # ends, no ledger entry expires and no grace runs out on it; caps follow the usage.
    step, clock_ref = clock_check(state, now_s, boot, params.period_s, params.anchor)
    # how far a live slice's rolling window may move on: no further than the boot clock
    # says time passed since the reference (None: another boot, or none to tell)
    elapsed_s = None
    if boot is not None and state.boot_id and boot.boot_id == state.boot_id:
        elapsed_s = boot.boottime_s - state.boottime_s + CLOCK_SLACK_S
    actions: list[Action] = []
    ledger = _Ledger(state)
    carried: dict[int, SliceState] = {}  # accounted while planned, below
    left: list[UsageRow] = []
    renamed: dict[int, SliceState] = {}  # xid -> the slice that left it, counted

    # Slices in the state: still wanted under the same name, gone a while, or dead.
    names = {want.name for want in wanted.values()}
    missing: dict[int, int] = {}
    vanished: list[DesiredSlice] = []
    for xid, st in state.slices.items():
        want = wanted.get(xid)
        if want is not None and want.name == st.name:
            carried[xid] = st
            continue
        if want is None and st.name not in names and params.grace_s > 0:
            # An editor's half-saved file drops slices for a cycle: a slice gone from
            # its source keeps its classes and cap (and is counted) for the grace.
            since_s = state.missing.get(xid, now_s)
            if now_s - since_s < params.grace_s or step is not None:
                missing[xid] = since_s
                kept = DesiredSlice(st.name, xid, st.default.policy, st.exempt.policy)
                wanted[xid] = kept
                vanished.append(kept)
                carried[xid] = st
                continue
        kernel = snapshot.slices.get(xid)
        gone = account_slice(st, kernel, inbound)
        ledger.put(st.name, LedgerEntry(gone, died_s=now_s))
        actions.append(MoveToLedger(st.name, xid))
        usage = _left_usage(st, gone, kernel)
        if usage is not None:
            left.append(usage)
        if want is None and kernel is not None:
            actions.append(RemoveClasses(st.name, xid, "dead"))
        if want is not None:
            renamed[xid] = gone

    for name in ledger.due(now_s) if step is None else ():
        ledger.pop(name)
        actions.append(PurgeLedger(name))

    targets = RateTargets(snapshot, params.bwmin_bps)
    # grants lower the usage the rules see; the quiet path needs none of them: a slice
    # under its rule's start stays there with less usage counted (core/grants.py)
    granted = granted_bytes(state.audit, now_s) if state.audit else {}
    # each slice's grants, for the unused budget of a period that ends (its rollover)
    audit_of: dict[str, list[AuditEntry]] = {}
    for made in state.audit:
        audit_of.setdefault(made.slice, []).append(made)
    shortcut = _quiet if quiet else _no_shortcut  # chosen once, not tested per slice
    if quiet and params.inbound:

        def shortcut(
            want: DesiredSlice,
            st: SliceState,
            kernel: KernelSlice,
            t: RateTargets,
            now_s: int,
            *,
            notify: bool,
        ) -> LiveSlice | None:
            return _quiet_inbound(want, st, kernel, t, now_s, notify=notify, inbound=inbound)

    marked = {xid for xid, _, _ in sent} if sent else None
    slices: dict[int, SliceState] = {}
    live: list[LiveSlice] = []
    for want in sorted(wanted.values(), key=attrgetter("xid")):
        kernel = snapshot.slices.get(want.xid)
        st = carried.get(want.xid)
        if st is not None and kernel is not None and not (marked and want.xid in marked):
            planned = shortcut(want, st, kernel, targets, now_s, notify=params.notify)
            if planned is not None:
                slices[want.xid] = st  # the very object: the identity rule (SliceState)
                live.append(planned)
                continue
        account = st is not None
        reason = "recreate"
        if st is None:
            entry = ledger.pop(want.name)
            if want.xid in renamed:
                # another name on the same class: usage follows the class within its
                # period (a recycled uid inheriting it for the rest of one is the safe
                # side); a ledger entry of the new name only ever adds to it
                st = _inherited(renamed[want.xid], want.name, entry)
                actions.append(Inherit(want.name, want.xid, renamed[want.xid].name))
                reason = "inherit"  # not counted again: its bytes went with the old name
            elif entry is not None:
                st = rebaseline(entry.slice, kernel, want.xid, inbound)
                actions.append(Revive(want.name, want.xid, entry.slice.xid))
                reason = "revive"
            else:
                st = _new_slice(want, kernel, params, now_s, inbound)
                if kernel is not None:
                    actions.append(Adopt(want.name, want.xid))
                reason = "new"
        planned = _plan_live(
            want,
            st=st,
            kernel=kernel,
            account=account,
            targets=targets,
            params=params,
            now_s=now_s,
            actions=actions,
            reason=reason,
            hold_period=step is not None,
            granted=granted.get(want.name, NO_GRANT),
            elapsed_s=elapsed_s if account else None,
            marks=sent,
            grants_then=audit_of.get(want.name, ()),
            inbound=inbound,
        )
        slices[want.xid] = planned.state
        live.append(planned)

    for xid in sorted(snapshot.slices):
        if xid not in wanted and xid not in state.slices and xid not in SYSTEM_XIDS:
            actions.append(RemoveClasses(None, xid, "orphan"))

    boot_id, boottime_s, clock_ref_s = clock_ref
    audit = pruned(state.audit, now_s) if state.audit else ()
    new_state = State(
        slices,
        ledger.entries,
        state.saved_s,
        state.resets,
        boot_id,
        boottime_s,
        clock_ref_s,
        missing,
        grants=state.grants,
        audit=audit,
        ledger_index=ledger.index(),
    )
    return Plan(
        now_s,
        tuple(actions),
        new_state,
        tuple(live),
        clock_step=step,
        held=(*held, *vanished),
        left=tuple(left),
    )


class _Ledger:
    """The state's ledger as a cycle changes it: copied at its first change only (a
    cycle where no slice dies, expires or is revived hands the very mapping on; the
    copy shares the saved entries' text, :func:`~bwenforcer.core.ledger.editable`),
    and kept ordered by expiry (:class:`~bwenforcer.core.model.State`), so the entries
    due are found at its head without a look at the others. Its xids
    (:func:`~bwenforcer.core.model.ledger_xids`), if the state has them, follow each
    change (never built here: that would look at every entry).
    """

    __slots__ = ("_own", "entries", "xids")

    def __init__(self, state: State) -> None:
        self.entries: Mapping[str, LedgerEntry] = state.ledger
        kept = state.ledger_index
        self.xids: dict[int, tuple[str, ...]] | None = (
            kept[1] if kept is not None and kept[0] is state.ledger else None  # type: ignore[assignment]
        )
        self._own: LazyLedger | None = None

    def _mine(self) -> LazyLedger:
        if self._own is None:
            self.entries = self._own = editable(self.entries)
            self.xids = None if self.xids is None else dict(self.xids)
        return self._own

    def _index(self, name: str, xid: int, add: bool) -> None:
        if self.xids is None:
            return
        names = tuple(n for n in self.xids.get(xid, ()) if n != name)
        names = (*names, name) if add else names
        if names:
            self.xids[xid] = names
        else:
            self.xids.pop(xid, None)

    def put(self, name: str, entry: LedgerEntry) -> None:
        """Add (or replace) ``name``'s entry where its expiry puts it."""
        entries = self._mine()
        old = entries.pop(name)
        if old is not None:
            self._index(name, old.slice.xid, add=False)
        entries.put(name, entry)
        self._index(name, entry.slice.xid, add=True)

    def pop(self, name: str) -> LedgerEntry | None:
        if name not in self.entries:
            return None
        entry = self._mine().pop(name)
        assert entry is not None
        self._index(name, entry.slice.xid, add=False)
        return entry

    def index(self) -> tuple[Mapping[str, LedgerEntry], LedgerXids] | None:
        """The ledger and its xids, for the state that carries them on (None: not known)."""
        return None if self.xids is None else (self.entries, self.xids)

    def due(self, now_s: int) -> list[str]:
        """The names whose entries expire by ``now_s``: the head of the ledger."""
        return due_names(self.entries, now_s)


def _left_usage(st: SliceState, gone: SliceState, kernel: KernelSlice | None) -> UsageRow | None:
    """The history row of a slice leaving for the ledger: the bytes counted as it left
    (sent and received) and the caps in force since the last cycle (None: nothing to
    record).
    """
    d_bytes = gone.default.used_bytes - st.default.used_bytes
    e_bytes = gone.exempt.used_bytes - st.exempt.used_bytes
    d_in = gone.default.in_used_bytes - st.default.in_used_bytes
    e_in = gone.exempt.in_used_bytes - st.exempt.in_used_bytes
    d_capped = st.default.capped and kernel is not None and kernel.default is not None
    e_capped = st.exempt.capped and kernel is not None and kernel.exempt is not None
    if not (d_bytes or e_bytes or d_capped or e_capped or d_in or e_in):
        return None
    return st.name, d_bytes, e_bytes, d_capped, e_capped, d_in, e_in


def _inherited(gone: SliceState, name: str, entry: LedgerEntry | None) -> SliceState:
    """The state of ``name`` taking over the class ``gone`` left: its usage, period and
    counters; per class the larger usage if ``name`` waits in the ledger from the same
    period (a rename onto a deleted name, or a rename undone), never less.
    """
    st = dataclasses.replace(gone, name=name)
    if entry is None:
        return st
    old = entry.slice
    window_s = gone.default.policy.window_s
    if not window_s and old.period_end_s <= gone.period_start_s:
        return st
    if window_s and entry.expires_s <= gone.period_start_s:
        return st

    def larger(cs: ClassState, waiting: ClassState) -> ClassState:
        in_used = max(cs.in_used_bytes, waiting.in_used_bytes)
        if cs.buckets:  # a window: bucket by bucket (the waiting ring moved on to cs's)
            if waiting.buckets and waiting.policy.window_s == cs.policy.window_s:
                steps = steps_between(old.period_end_s, st.period_end_s, window_s, None)
                ring = moved(waiting.buckets, steps)
            else:
                ring = carried_ring(waiting.used_bytes)
            buckets = tuple(map(max, cs.buckets, ring))
            return dataclasses.replace(
                cs, used_bytes=sum(buckets), buckets=buckets, in_used_bytes=in_used
            )
        carried = min(cs.carried_bytes, waiting.carried_bytes)  # never more budget
        if (
            waiting.used_bytes <= cs.used_bytes
            and waiting.in_used_bytes <= cs.in_used_bytes
            and carried == cs.carried_bytes
        ):
            return cs
        return dataclasses.replace(
            cs,
            used_bytes=max(cs.used_bytes, waiting.used_bytes),
            in_used_bytes=max(cs.in_used_bytes, waiting.in_used_bytes),
            carried_bytes=carried,
        )

    return dataclasses.replace(
        st, default=larger(st.default, old.default), exempt=larger(st.exempt, old.exempt)
    )


def _held(
    refused: Iterable[InvalidRecord | DesiredSlice | SliceState],
    wanted: Mapping[int, DesiredSlice],
    state: State,
) -> tuple[DesiredSlice, ...]:
    """The slices of refused records (invalid ones, losing claims of an xid) that stay
    as they are: those live in the state (by name), under the limits saved there. A
    record whose name or xid another, valid record holds is not one of them.
    """
    live = {st.name: st for st in state.slices.values()}
    names = {want.name for want in wanted.values()}
    held: dict[int, DesiredSlice] = {}
    for record in refused:
        st = live.get(record.name)
        if st is None or record.name in names or st.xid in wanted or st.xid in held:
            continue
        held[st.xid] = DesiredSlice(st.name, st.xid, st.default.policy, st.exempt.policy)
    return tuple(held.values())


def _new_slice(
    want: DesiredSlice,
    kernel: KernelSlice | None,
    params: PlanParams,
    now_s: int,
    inbound: InboundSnapshot | None = None,
) -> SliceState:
    window_s = want.default.window_s
    if window_s:
        start, end = bucket_span(now_s, window_s)
    else:
        start, end = first_period(now_s, params.period_s, params.anchor)
    ring = empty_ring() if window_s else ()

    def fresh(tc: TrafficClass) -> ClassState:
        cs = _fresh_class(want.policy(tc), kernel_counter(kernel, tc) or 0)
        if window_s:
            cs = dataclasses.replace(cs, buckets=ring)
        in_counter = inbound_counter(inbound, want.xid, tc)
        if in_counter:  # adopted: counted from the counter the backend has
            cs = dataclasses.replace(cs, in_last_counter_bytes=in_counter)
        return cs

    return SliceState(want.name, want.xid, start, end, fresh("default"), fresh("exempt"))


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


def mark_notified(state: State, delivered: Mapping[int, Iterable[TrafficClass]]) -> State:
    """The state with the delivered classes of each xid flagged as notified (threshold)."""
    return mark_sent(state, [Notify("", xid, tuple(classes)) for xid, classes in delivered.items()])


def mark_sent(state: State, notices: Iterable[Notify]) -> State:
    """The state with each delivered notice marked on its classes: the threshold flag,
    the share told, the lift told (core/notices.py).
    """
    slices = dict(state.slices)  # the slices not marked stay the very same objects
    for notice in notices:
        st = slices.get(notice.xid)
        if st is None:
            continue
        marked = {}
        for tc in notice.classes:
            cs = st.cls(tc)
            if notice.kind == "share":
                cs = dataclasses.replace(cs, notice_bp=max(cs.notice_bp, notice.share_bp))
            elif notice.kind == "lifted":
                cs = dataclasses.replace(cs, lift="sent")
            else:
                cs = dataclasses.replace(cs, notified=True)
            marked[tc] = cs
        slices[notice.xid] = dataclasses.replace(
            st,
            default=marked.get("default", st.default),
            exempt=marked.get("exempt", st.exempt),
        )
    return dataclasses.replace(state, slices=slices)

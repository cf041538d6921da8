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

from bwenforcer.core.accounting import (
    account_slice,
    class_usage,
    inbound_counter,
    kernel_counter,
    rebaseline,
)
from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.direction import counts, inbound_change, inbound_usage
from bwenforcer.core.grants import NO_GRANT, counted_bytes, granted_bytes, pruned
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID, TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import (
    BootClock,
    ClassPolicy,
    ClassState,
    DesiredSet,
    DesiredSlice,
    InvalidRecord,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.periods import clock_check, first_period, next_period
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
    SetInboundLimit,
    SetRates,
    UsageRow,
)
from bwenforcer.core.settings import Config, PeriodAnchor
from bwenforcer.core.targets import RateTargets

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


# the classes a Notify names: one tuple each, not one a capped slice
_NOTIFY_CLASSES: dict[tuple[TrafficClass, ...], tuple[TrafficClass, ...]] = {
    c: c for c in (("default",), ("exempt",), ("default", "exempt"))
}


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
    inbound: InboundSnapshot | None = None,
) -> LiveSlice:
    """Plan one live slice; with ``account``, first add its bytes since the last cycle.

    Hot path, run for every slice every cycle. Identity rule (see
    :class:`~bwenforcer.core.model.SliceState`): a class whose usage, counter, policy,
    ceil and flags did not change is passed on as its very ClassState, and a
    slice whose classes, name, xid and period did not change as its very
    SliceState, never as an equal copy: the state encoder re-encodes only the
    slices that are not the object it encoded last time.

    With ``params.inbound``, each class's inbound bytes are counted too and its
    budget counts the directions its policy says (core.direction); ``inbound`` is
    the backend's read (None: not read this cycle: the inbound usage and limits are
    held as they are).
    """
    if params.inbound:
        return _plan_both(
            want, st=st, kernel=kernel, account=account, targets=targets, params=params,
            now_s=now_s, actions=actions, reason=reason, hold_period=hold_period,
            granted=granted, inbound=inbound,
        )  # fmt: skip
    start_s, end_s = st.period_start_s, st.period_end_s
    new_period = now_s >= end_s and not hold_period
    if new_period:
        start_s, end_s = next_period(end_s, now_s, params.period_s, params.anchor)
        actions.append(NewPeriod(want.name, want.xid, start_s, end_s))
    out: list[tuple[ClassState, int, int | None]] = []
    was_capped: list[bool] = []
    to_notify: list[TrafficClass] = []
    for tc in TRAFFIC_CLASSES:
        if tc == "default":
            old, policy, grant = st.default, want.default, granted[0]
            current = None if kernel is None else kernel.default
        else:
            old, policy, grant = st.exempt, want.exempt, granted[1]
            current = None if kernel is None else kernel.exempt
        used, last, delta, notified = class_usage(old, current, account, new_period)
        was_capped.append(account and old.capped and current is not None)
        counted = counted_bytes(used, grant) if grant else used
        rates, capped = targets.rates(policy, tc, counted, end_s, now_s)
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
            and (policy is old.policy or policy == old.policy)
        ):
            out.append((old, delta, old_ceil_bps))  # the very object: the identity rule
        else:
            out.append(
                (ClassState(policy, used, last, ceil_bps, capped, notified), delta, old_ceil_bps)
            )
    if to_notify and params.notify:
        actions.append(Notify(want.name, want.xid, _NOTIFY_CLASSES[tuple(to_notify)]))
    (default, d_delta, d_ceil), (exempt, e_delta, e_ceil) = out
    if (
        default is st.default
        and exempt is st.exempt
        and not new_period
        and want.name == st.name
        and want.xid == st.xid
    ):
        new_st = st
    else:
        new_st = SliceState(want.name, want.xid, start_s, end_s, default, exempt)
    return LiveSlice(new_st, d_delta, e_delta, d_ceil, e_ceil, was_capped[0], was_capped[1])


def _plan_both(
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
    hold_period: bool,
    granted: tuple[int, int],
    inbound: InboundSnapshot | None,
) -> LiveSlice:
    """:func:`_plan_live` with inbound accounting on: each class's budget counts the
    directions its policy says; past its rule's start the rule's rate caps each of them
    (egress: the HTB ceil; inbound: a limit, changed only by a real margin).
    """
    start_s, end_s = st.period_start_s, st.period_end_s
    new_period = now_s >= end_s and not hold_period
    if new_period:
        start_s, end_s = next_period(end_s, now_s, params.period_s, params.anchor)
        actions.append(NewPeriod(want.name, want.xid, start_s, end_s))
    out: list[ClassState] = []
    deltas: list[int] = []
    in_deltas: list[int] = []
    old_ceils: list[int | None] = []
    old_limits: list[int | None] = []
    was_capped: list[bool] = []
    to_notify: list[TrafficClass] = []
    for tc in TRAFFIC_CLASSES:
        old, policy = st.cls(tc), want.policy(tc)
        grant = granted[0] if tc == "default" else granted[1]
        current = None if kernel is None else kernel.cls(tc)
        used, last, delta, notified = class_usage(old, current, account, new_period)
        if inbound is None:  # not read: held as it is
            in_used = 0 if new_period else old.in_used_bytes
            in_last, in_delta = old.in_last_counter_bytes, 0
            in_old: int | None = old.in_limit_bps or None
        else:
            counter = inbound.bytes_by_class.get((want.xid, tc))
            in_used, in_last, in_delta = inbound_usage(old, counter, account, new_period)
            in_old = inbound.limits_bps.get((want.xid, tc))
        count_out, count_in = counts(policy, True)
        raw = (used if count_out else 0) + (in_used if count_in else 0)
        counted = counted_bytes(raw, grant) if grant else raw
        ways = 2 if count_out and count_in else 1
        rates, capped = targets.rates(policy, tc, counted, end_s, now_s, ways=ways)
        in_target = rates.max_rate_bps if capped and count_in else None
        if not count_out:
            rates = targets.limits(policy, tc)[1]  # the budget leaves egress alone
        was_capped.append(account and old.capped and (current is not None or count_in))
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
            and (policy is old.policy or policy == old.policy)
        ):
            out.append(old)  # the very object: the identity rule
        else:
            out.append(
                ClassState(
                    policy, used, last, ceil_bps, capped, notified, in_used, in_last, in_limit_bps
                )
            )
        deltas.append(delta)
        in_deltas.append(in_delta)
        old_limits.append(in_old)
    if to_notify and params.notify:
        actions.append(Notify(want.name, want.xid, _NOTIFY_CLASSES[tuple(to_notify)]))
    default, exempt = out
    if (
        default is st.default
        and exempt is st.exempt
        and not new_period
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
        or (d.policy is not want.default and d.policy != want.default)
        or (e.policy is not want.exempt and e.policy != want.exempt)
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
    if (
        direction_bytes(d, want.default, True) >= d_start
        or direction_bytes(e, want.exempt, True) >= e_start
        or d.ceil_bps != d_rates.max_rate_bps
        or e.ceil_bps != e_rates.max_rate_bps
        or (kd.rates is not d_rates and kd.rates != d_rates)
        or (ke.rates is not e_rates and ke.rates != e_rates)
    ):
        return None
    return LiveSlice(
        st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps, False, False, 0, 0, None, None,
        True,
    )  # fmt: skip


def _quiet(
    want: DesiredSlice, st: SliceState, kernel: KernelSlice, targets: RateTargets, now_s: int
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
        or (d.policy is not want.default and d.policy != want.default)
        or (e.policy is not want.exempt and e.policy != want.exempt)
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
    return LiveSlice(st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps)


def _no_shortcut(
    want: DesiredSlice, st: SliceState, kernel: KernelSlice, targets: RateTargets, now_s: int
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
    names: dict[int, str] = {e.slice.xid: name for name, e in state.ledger.items()}
    names.update((r.xid, r.name) for r in desired.invalid if r.xid is not None)
    names.update((s.xid, s.name) for s in desired.slices)
    names.update((xid, st.name) for xid, st in state.slices.items())
    actions: list[Action] = [
        RemoveClasses(names.get(xid), xid, "limiting off")
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
    inbound: InboundSnapshot | None = None,
) -> Plan:
    """Reconcile one cycle (docs/architecture.md "Policy" and "Slice lifecycle").

    ``quiet=False`` plans every slice the long way (:func:`_plan_live`), without
    the shortcut for slices nothing happened to: the same plan, slower; for tests
    that hold the shortcut to that. ``boot``: the node's boot id and boot clock,
    read by the caller, which tell a stepped wall clock from time that passed
    (:func:`~bwenforcer.core.periods.clock_check`). ``inbound``: the inbound backend's
    read, with ``params.inbound`` (None: not read this cycle, inbound usage and limits
    held as they are); without ``params.inbound`` it is not looked at.
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
    actions: list[Action] = []
    ledger = _Ledger(state.ledger)
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
    shortcut = _quiet if quiet else _no_shortcut  # chosen once, not tested per slice
    if quiet and params.inbound:

        def shortcut(
            want: DesiredSlice, st: SliceState, kernel: KernelSlice, t: RateTargets, now_s: int
        ) -> LiveSlice | None:
            return _quiet_inbound(want, st, kernel, t, now_s, inbound=inbound)

    slices: dict[int, SliceState] = {}
    live: list[LiveSlice] = []
    for want in sorted(wanted.values(), key=attrgetter("xid")):
        kernel = snapshot.slices.get(want.xid)
        st = carried.get(want.xid)
        if st is not None and kernel is not None:
            planned = shortcut(want, st, kernel, targets, now_s)
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
    cycle where no slice dies, expires or is revived hands the very mapping on), and
    kept ordered by expiry (:class:`~bwenforcer.core.model.State`), so the entries due
    are found at its head without a look at the others.
    """

    __slots__ = ("_own", "entries")

    def __init__(self, entries: Mapping[str, LedgerEntry]) -> None:
        self.entries = entries
        self._own = False

    def _mine(self) -> dict[str, LedgerEntry]:
        if not self._own:
            self.entries = dict(self.entries)
            self._own = True
        return self.entries  # type: ignore[return-value]

    def put(self, name: str, entry: LedgerEntry) -> None:
        """Add (or replace) ``name``'s entry where its expiry puts it."""
        entries = self._mine()
        entries.pop(name, None)
        last = next(reversed(entries.values()), None)
        entries[name] = entry
        if last is not None and last.expires_s > entry.expires_s:  # rare: periods changed
            ordered = sorted(entries.items(), key=lambda item: item[1].expires_s)
            entries.clear()
            entries.update(ordered)

    def pop(self, name: str) -> LedgerEntry | None:
        return self._mine().pop(name) if name in self.entries else None

    def due(self, now_s: int) -> list[str]:
        """The names whose entries expire by ``now_s``: the head of the ledger."""
        names = []
        for name, entry in self.entries.items():
            if now_s < entry.expires_s:
                break
            names.append(name)
        return names


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
    if entry is None or entry.slice.period_end_s <= gone.period_start_s:
        return st
    old = entry.slice

    def larger(cs: ClassState, waiting: ClassState) -> ClassState:
        if waiting.used_bytes <= cs.used_bytes and waiting.in_used_bytes <= cs.in_used_bytes:
            return cs
        return dataclasses.replace(
            cs,
            used_bytes=max(cs.used_bytes, waiting.used_bytes),
            in_used_bytes=max(cs.in_used_bytes, waiting.in_used_bytes),
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
    start, end = first_period(now_s, params.period_s, params.anchor)

    def fresh(tc: TrafficClass) -> ClassState:
        cs = _fresh_class(want.policy(tc), kernel_counter(kernel, tc) or 0)
        in_counter = inbound_counter(inbound, want.xid, tc)
        if in_counter:  # adopted: counted from the counter the backend has
            cs = dataclasses.replace(cs, in_last_counter_bytes=in_counter)
        return cs

    return SliceState(
        name=want.name,
        xid=want.xid,
        period_start_s=start,
        period_end_s=end,
        default=fresh("default"),
        exempt=fresh("exempt"),
    )


def mark_notified(state: State, delivered: Mapping[int, Iterable[TrafficClass]]) -> State:
    """The state with the delivered classes of each xid flagged as notified."""
    slices = dict(state.slices)  # the slices not flagged stay the very same objects
    for xid, classes in delivered.items():
        st = slices.get(xid)
        if st is None:
            continue
        flagged = {tc: dataclasses.replace(st.cls(tc), notified=True) for tc in classes}
        slices[xid] = dataclasses.replace(
            st,
            default=flagged.get("default", st.default),
            exempt=flagged.get("exempt", st.exempt),
        )
    return dataclasses.replace(state, slices=slices)

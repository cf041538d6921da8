"""The pure planner: desired slices × kernel classes × saved state → a plan.

No I/O and no clock: ``now_s`` is passed in. The plan is a list of typed actions
for the executor and the state the cycle saves if every action succeeds; each
slice is planned on its own, so one slice's odd data cannot stop the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import ClassVar, NamedTuple

from .config import Config, PeriodAnchor
from .layout import DEFAULT_XID, ROOT_XID, TRAFFIC_CLASSES, TrafficClass
from .model import (
    ClassOp,
    ClassPolicy,
    ClassRates,
    ClassState,
    DesiredSet,
    DesiredSlice,
    InvalidRecord,
    KernelClass,
    KernelOp,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
    fast_init,
)
from .periods import clock_step, first_period, next_period
from .policy import (
    capped_ceil_bps,
    clamp_rates,
    class_cap_bps,
    class_limits,
    counter_delta,
    uncapped_rates,
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

    @classmethod
    def from_config(cls, config: Config) -> PlanParams:
        """Planner parameters of a config."""
        return cls(
            config.period_s,
            config.period_anchor,
            config.bwmin_bps,
            notify=config.mail.transport != "none",
        )


# --- actions ---------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class CreateClass:
    """Create one class of a slice (and its leaf qdisc); a KernelOp as it is."""

    name: str
    xid: int
    traffic_class: TrafficClass
    rates: ClassRates
    reason: str  # "new" | "recreate" | "revive"
    kind: ClassVar[str] = "create"


@fast_init
@dataclass(frozen=True, slots=True)
class SetRates:
    """Change one existing class's rates; a KernelOp as it is."""

    name: str
    xid: int
    traffic_class: TrafficClass
    old: ClassRates
    new: ClassRates
    kind: ClassVar[str] = "change"

    @property
    def rates(self) -> ClassRates:
        """The rates to set: :attr:`new`."""
        return self.new


@dataclass(frozen=True, slots=True)
class RemoveClasses:
    """Remove both classes of an xid."""

    name: str | None
    xid: int
    reason: str  # "dead" | "orphan" | "limiting off"


@dataclass(frozen=True, slots=True)
class Adopt:
    """A class found without state: counted from its current counter."""

    name: str
    xid: int


@dataclass(frozen=True, slots=True)
class MoveToLedger:
    """A slice left the desired set: its usage is kept by name."""

    name: str
    xid: int


@dataclass(frozen=True, slots=True)
class Revive:
    """A slice came back while its ledger entry was live: it keeps that usage."""

    name: str
    xid: int
    old_xid: int


@dataclass(frozen=True, slots=True)
class PurgeLedger:
    """A ledger entry whose period has ended."""

    name: str


@dataclass(frozen=True, slots=True)
class NewPeriod:
    """A slice's period ended: usage back to 0, caps lifted."""

    name: str
    xid: int
    start_s: int
    end_s: int


@fast_init
@dataclass(frozen=True, slots=True)
class Notify:
    """Mail the slice about classes capped and not yet notified this period."""

    name: str
    xid: int
    classes: tuple[TrafficClass, ...]


Action = (
    CreateClass
    | SetRates
    | RemoveClasses
    | Adopt
    | MoveToLedger
    | Revive
    | PurgeLedger
    | NewPeriod
    | Notify
)


@dataclass(frozen=True, slots=True)
class ClassLine:
    """One class of one slice as planned, for dry-run output, status and metrics."""

    traffic_class: TrafficClass
    used_bytes: int
    delta_bytes: int  # counted this cycle
    threshold_bytes: int
    limit_bytes: int
    old_ceil_bps: int | None  # what the kernel has (None: no class)
    new_ceil_bps: int
    capped: bool


@dataclass(frozen=True, slots=True)
class SliceLine:
    """One live slice as planned."""

    name: str
    xid: int
    period_start_s: int
    period_end_s: int
    default: ClassLine
    exempt: ClassLine


class LiveSlice(NamedTuple):
    """One live slice as planned, compactly: what its SliceLine is made of."""

    state: SliceState  # after this cycle
    default_delta_bytes: int  # counted this cycle
    exempt_delta_bytes: int
    default_old_ceil_bps: int | None  # what the kernel had (None: no class)
    exempt_old_ceil_bps: int | None


def _class_line(cs: ClassState, tc: TrafficClass, delta: int, old_ceil: int | None) -> ClassLine:
    policy = cs.policy
    return ClassLine(
        tc, cs.used_bytes, delta, policy.threshold_bytes, policy.limit_bytes, old_ceil,
        cs.ceil_bps, cs.capped,
    )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """What one cycle will do."""

    now_s: int
    actions: tuple[Action, ...]
    state: State  # to save if every action succeeds (notified flags: set on delivery)
    live: tuple[LiveSlice, ...]  # by xid
    limiting_off: bool = False
    # why the clock is not to be trusted this cycle (None: it is): periods were not
    # rolled over nor the ledger purged, and the history is not rolled up
    clock_step: str | None = None
    # slices whose record is invalid, kept with the policy saved in their state
    held: tuple[DesiredSlice, ...] = ()

    @cached_property
    def lines(self) -> tuple[SliceLine, ...]:
        """Every live slice as planned, by xid (built on first use: a cycle needs none)."""
        return tuple(
            SliceLine(
                st.name,
                st.xid,
                st.period_start_s,
                st.period_end_s,
                _class_line(st.default, "default", d_delta, d_ceil),
                _class_line(st.exempt, "exempt", e_delta, e_ceil),
            )
            for st, d_delta, e_delta, d_ceil, e_ceil in self.live
        )

    def usage(self) -> Iterator[tuple[str, int, int, bool, bool]]:
        """``(name, default bytes, exempt bytes, default capped, exempt capped)`` of each
        live slice that sent something this cycle or is capped (idle ones are left out).
        """
        for st, d_delta, e_delta, _, _ in self.live:
            if d_delta or e_delta or st.default.capped or st.exempt.capped:
                yield st.name, d_delta, e_delta, st.default.capped, st.exempt.capped

    def kernel_ops(self) -> list[KernelOp]:
        """The kernel changes of the plan, in order."""
        return list(self._kernel_ops)

    @cached_property
    def _kernel_ops(self) -> tuple[KernelOp, ...]:
        ops: list[KernelOp] = []
        for action in self.actions:
            if isinstance(action, CreateClass | SetRates):
                ops.append(action)
            elif isinstance(action, RemoveClasses):
                ops.extend(ClassOp("delete", action.xid, tc) for tc in TRAFFIC_CLASSES)
        return tuple(ops)


# --- planning --------------------------------------------------------------


def _fresh_class(policy: ClassPolicy, counter_bytes: int) -> ClassState:
    return ClassState(policy=policy, last_counter_bytes=counter_bytes)


def _counter(kernel: KernelSlice | None, traffic_class: TrafficClass) -> int | None:
    if kernel is None:
        return None
    cls = kernel.cls(traffic_class)
    return None if cls is None else cls.bytes


def _account(cs: ClassState, counter_bytes: int | None) -> ClassState:
    """Add the bytes since the last reading; a missing class restarts its counter at 0."""
    if counter_bytes is None:
        return ClassState(cs.policy, cs.used_bytes, 0, cs.ceil_bps, cs.capped, cs.notified)
    used = cs.used_bytes + counter_delta(counter_bytes, cs.last_counter_bytes)
    return ClassState(cs.policy, used, counter_bytes, cs.ceil_bps, cs.capped, cs.notified)


def _account_slice(st: SliceState, kernel: KernelSlice | None) -> SliceState:
    default = _account(st.default, _counter(kernel, "default"))
    exempt = _account(st.exempt, _counter(kernel, "exempt"))
    return SliceState(st.name, st.xid, st.period_start_s, st.period_end_s, default, exempt)


def _rebaseline(st: SliceState, kernel: KernelSlice | None, xid: int) -> SliceState:
    """A revived slice: same usage, counted from the counters its (new) xid has now."""

    def rebase(cs: ClassState, tc: TrafficClass) -> ClassState:
        return dataclasses.replace(cs, last_counter_bytes=_counter(kernel, tc) or 0)

    return dataclasses.replace(
        st, xid=xid, default=rebase(st.default, "default"), exempt=rebase(st.exempt, "exempt")
    )


class _Targets:
    """The rates a class should have, memoised for one plan.

    Rates depend on the policy, the class cap and, for a capped class, the usage
    and the time left. Thousands of slices share a few policies: each policy's
    limits (and its uncapped rates) are worked out once, and equal rates share
    one ClassRates.
    """

    def __init__(self, snapshot: KernelSnapshot, bwmin_bps: int) -> None:
        self.caps = {
            tc: class_cap_bps(tc, snapshot.cap_bps, snapshot.bwmax_bps) for tc in TRAFFIC_CLASSES
        }
        self.bwmin_bps = bwmin_bps
        # class → id(policy) → (policy, min rate, max rate, share, uncapped rates); by id, as
        # hashing a policy costs more than the rest of a steady class's planning
        self._limits: dict[str, dict[int, tuple[ClassPolicy, int, int, int, ClassRates]]] = {
            tc: {} for tc in TRAFFIC_CLASSES
        }
        self._rates: dict[tuple[int, int, int], ClassRates] = {}

    def _limits_of(
        self, policy: ClassPolicy, traffic_class: TrafficClass
    ) -> tuple[ClassPolicy, int, int, int, ClassRates]:
        cap_bps = self.caps[traffic_class]
        min_rate, max_rate, share = class_limits(
            policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps
        )
        uncapped = self._shared(
            *uncapped_rates(
                policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps, self.bwmin_bps
            )
        )
        limits = (policy, min_rate, max_rate, share, uncapped)
        self._limits[traffic_class][id(policy)] = limits
        return limits

    def _shared(self, rate_bps: int, ceil_bps: int, share: int) -> ClassRates:
        key = (rate_bps, ceil_bps, share)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = ClassRates(rate_bps, ceil_bps, share)
        return rates

    def _limits_for(
        self, policy: ClassPolicy, traffic_class: TrafficClass
    ) -> tuple[ClassPolicy, int, int, int, ClassRates]:
        limits = self._limits[traffic_class].get(id(policy))
        if limits is None or limits[0] is not policy:
            limits = self._limits_of(policy, traffic_class)
        return limits

    def uncapped(self, policy: ClassPolicy, traffic_class: TrafficClass) -> ClassRates:
        """The rates of a class under ``policy`` while it is not capped."""
        return self._limits_for(policy, traffic_class)[4]

    def rates(
        self,
        policy: ClassPolicy,
        traffic_class: TrafficClass,
        used_bytes: int,
        period_end_s: int,
        now_s: int,
    ) -> tuple[ClassRates, bool]:
        """``(rates, capped)`` of a class with ``used_bytes`` under ``policy`` at ``now_s``."""
        limits = self._limits_for(policy, traffic_class)
        if used_bytes < policy.threshold_bytes:
            return limits[4], False
        _, min_rate, max_rate, share, _ = limits
        ceil = capped_ceil_bps(
            used_bytes=used_bytes,
            limit_bytes=policy.limit_bytes,
            now_s=now_s,
            period_end_s=period_end_s,
            min_rate_bps=min_rate,
            max_rate_bps=max_rate,
        )
        return self._shared(
            *clamp_rates(min_rate, ceil, self.caps[traffic_class], self.bwmin_bps), share
        ), True


def _plan_class(
    old: ClassState,
    policy: ClassPolicy,
    current: KernelClass | None,
    account: bool,
    new_period: bool,
) -> tuple[int, int, int, bool]:
    """``(used, last counter, delta, notified)`` of a class after this cycle's bytes."""
    used, last, delta = old.used_bytes, old.last_counter_bytes, 0
    if account:
        if current is None:
            last = 0  # the class is gone: its next counter starts from 0
        else:
            delta = counter_delta(current.bytes, last)
            used += delta
            last = current.bytes
    if new_period:
        return 0, last, delta, False
    return used, last, delta, old.notified


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
    targets: _Targets,
    params: PlanParams,
    now_s: int,
    actions: list[Action],
    reason: str,
    hold_period: bool = False,
) -> LiveSlice:
    """Plan one live slice; with ``account``, first add its bytes since the last cycle.

    Hot path, run for every slice every cycle: a class whose usage, policy and
    rates did not change keeps its very ClassState (and an unchanged slice its
    SliceState), so a steady cycle builds few objects and the state store can
    tell unchanged slices by identity.
    """
    start_s, end_s = st.period_start_s, st.period_end_s
    new_period = now_s >= end_s and not hold_period
    if new_period:
        start_s, end_s = next_period(end_s, now_s, params.period_s, params.anchor)
        actions.append(NewPeriod(want.name, want.xid, start_s, end_s))
    out: list[tuple[ClassState, int, int | None]] = []
    to_notify: list[TrafficClass] = []
    for tc in TRAFFIC_CLASSES:
        if tc == "default":
            old, policy = st.default, want.default
            current = None if kernel is None else kernel.default
        else:
            old, policy = st.exempt, want.exempt
            current = None if kernel is None else kernel.exempt
        used, last, delta, notified = _plan_class(old, policy, current, account, new_period)
        rates, capped = targets.rates(policy, tc, used, end_s, now_s)
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
            out.append((old, delta, old_ceil_bps))
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
    return LiveSlice(new_st, d_delta, e_delta, d_ceil, e_ceil)


def _quiet(
    want: DesiredSlice, st: SliceState, kernel: KernelSlice, targets: _Targets, now_s: int
) -> LiveSlice | None:
    """The plan of a slice nothing happened to since the last cycle, or None.

    Most slices of a large node are idle at any moment: no bytes, same policy,
    not capped, rates as they should be. Telling so takes a few comparisons,
    and what :func:`_plan_live` would make of it is known: the very same state,
    no action.
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
        or d.used_bytes >= want.default.threshold_bytes
        or e.used_bytes >= want.exempt.threshold_bytes
        or (d.policy is not want.default and d.policy != want.default)
        or (e.policy is not want.exempt and e.policy != want.exempt)
    ):
        return None
    d_rates = targets.uncapped(want.default, "default")
    e_rates = targets.uncapped(want.exempt, "exempt")
    if (
        d.ceil_bps != d_rates.max_rate_bps
        or e.ceil_bps != e_rates.max_rate_bps
        or (kd.rates is not d_rates and kd.rates != d_rates)
        or (ke.rates is not e_rates and ke.rates != e_rates)
    ):
        return None
    return LiveSlice(st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps)


def _limiting_off(snapshot: KernelSnapshot, state: State, now_s: int) -> Plan:
    actions: list[Action] = [
        RemoveClasses(None, xid, "limiting off")
        for xid in sorted(snapshot.slices)
        if xid not in SYSTEM_XIDS
    ]
    return Plan(now_s, tuple(actions), state, (), limiting_off=True)


def plan(
    desired: DesiredSet,
    snapshot: KernelSnapshot,
    state: State,
    params: PlanParams,
    now_s: int,
) -> Plan:
    """Reconcile one cycle (docs/architecture.md "Policy" and "Slice lifecycle")."""
    if desired.limiting_off:
        return _limiting_off(snapshot, state, now_s)
    wanted = {s.xid: s for s in desired.slices}
    held = _held(desired.invalid, wanted, state) if desired.invalid else ()
    for want in held:
        wanted[want.xid] = want
    # A clock that stepped (back, or forward by more than a period): no period ends
    # and no ledger entry expires on its word; caps still follow the usage.
    step = clock_step(state.saved_s, now_s, params.period_s, params.anchor)
    actions: list[Action] = []
    ledger: dict[str, LedgerEntry] = dict(state.ledger)
    carried: dict[int, SliceState] = {}  # accounted while planned, below

    # Slices in the state: still wanted under the same name, or dead.
    for xid, st in state.slices.items():
        want = wanted.get(xid)
        if want is not None and want.name == st.name:
            carried[xid] = st
            continue
        kernel = snapshot.slices.get(xid)
        ledger[st.name] = LedgerEntry(_account_slice(st, kernel), died_s=now_s)
        actions.append(MoveToLedger(st.name, xid))
        if want is None and kernel is not None:
            actions.append(RemoveClasses(st.name, xid, "dead"))

    for name in [n for n, e in ledger.items() if now_s >= e.expires_s and step is None]:
        del ledger[name]
        actions.append(PurgeLedger(name))

    targets = _Targets(snapshot, params.bwmin_bps)
    slices: dict[int, SliceState] = {}
    live: list[LiveSlice] = []
    for want in sorted(wanted.values(), key=attrgetter("xid")):
        kernel = snapshot.slices.get(want.xid)
        st = carried.get(want.xid)
        if st is not None and kernel is not None:
            planned = _quiet(want, st, kernel, targets, now_s)
            if planned is not None:
                slices[want.xid] = st
                live.append(planned)
                continue
        account = st is not None
        reason = "recreate"
        if st is None:
            entry = ledger.pop(want.name, None)
            if entry is not None:
                st = _rebaseline(entry.slice, kernel, want.xid)
                actions.append(Revive(want.name, want.xid, entry.slice.xid))
                reason = "revive"
            else:
                st = _new_slice(want, kernel, params, now_s)
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
        )
        slices[want.xid] = planned.state
        live.append(planned)

    for xid in sorted(snapshot.slices):
        if xid not in wanted and xid not in state.slices and xid not in SYSTEM_XIDS:
            actions.append(RemoveClasses(None, xid, "orphan"))

    new_state = State(slices, ledger, state.saved_s, state.resets)
    return Plan(now_s, tuple(actions), new_state, tuple(live), clock_step=step, held=held)


def _held(
    invalid: tuple[InvalidRecord, ...], wanted: Mapping[int, DesiredSlice], state: State
) -> tuple[DesiredSlice, ...]:
    """The slices of invalid records that stay as they are: those live in the state
    (by name), under the limits saved there. A record whose name or xid another,
    valid record holds is not one of them.
    """
    live = {st.name: st for st in state.slices.values()}
    names = {want.name for want in wanted.values()}
    held: dict[int, DesiredSlice] = {}
    for record in invalid:
        st = live.get(record.name)
        if st is None or record.name in names or st.xid in wanted or st.xid in held:
            continue
        held[st.xid] = DesiredSlice(st.name, st.xid, st.default.policy, st.exempt.policy)
    return tuple(held.values())


def _new_slice(
    want: DesiredSlice, kernel: KernelSlice | None, params: PlanParams, now_s: int
) -> SliceState:
    start, end = first_period(now_s, params.period_s, params.anchor)
    return SliceState(
        name=want.name,
        xid=want.xid,
        period_start_s=start,
        period_end_s=end,
        default=_fresh_class(want.default, _counter(kernel, "default") or 0),
        exempt=_fresh_class(want.exempt, _counter(kernel, "exempt") or 0),
    )


def mark_notified(state: State, delivered: Mapping[int, Iterable[TrafficClass]]) -> State:
    """The state with the delivered classes of each xid flagged as notified."""
    slices = dict(state.slices)
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

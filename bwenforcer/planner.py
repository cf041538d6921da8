"""The pure planner: desired slices × kernel classes × saved state → a plan.

No I/O and no clock: ``now_s`` is passed in. The plan is a list of typed actions
for the executor and the state the cycle saves if every action succeeds; each
slice is planned on its own, so one slice's odd data cannot stop the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import Config, PeriodAnchor
from .layout import DEFAULT_XID, ROOT_XID, TRAFFIC_CLASSES, TrafficClass
from .model import (
    ClassOp,
    ClassPolicy,
    ClassRates,
    ClassState,
    DesiredSet,
    DesiredSlice,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
)
from .periods import first_period, next_period
from .policy import capped_ceil_bps, clamp_rates, counter_delta

# The tree's own slices: created by `tc init`, never removed as orphans.
SYSTEM_XIDS = frozenset({ROOT_XID, DEFAULT_XID})
MIN_RATE_SHARE_OF_CAP = 4  # min rate ≤ 25 % of the node cap


@dataclass(frozen=True)
class PlanParams:
    """The parts of the config the planner needs."""

    period_s: int
    anchor: PeriodAnchor | None
    bwmin_bps: int

    @classmethod
    def from_config(cls, config: Config) -> PlanParams:
        """Planner parameters of a config."""
        return cls(config.period_s, config.period_anchor, config.bwmin_bps)


# --- actions ---------------------------------------------------------------


@dataclass(frozen=True)
class CreateClass:
    """Create one class of a slice (and its leaf qdisc)."""

    name: str
    xid: int
    traffic_class: TrafficClass
    rates: ClassRates
    reason: str  # "new" | "recreate" | "revive"


@dataclass(frozen=True)
class SetRates:
    """Change one existing class's rates."""

    name: str
    xid: int
    traffic_class: TrafficClass
    old: ClassRates
    new: ClassRates


@dataclass(frozen=True)
class RemoveClasses:
    """Remove both classes of an xid."""

    name: str | None
    xid: int
    reason: str  # "dead" | "orphan" | "limiting off"


@dataclass(frozen=True)
class Adopt:
    """A class found without state: counted from its current counter."""

    name: str
    xid: int


@dataclass(frozen=True)
class MoveToLedger:
    """A slice left the desired set: its usage is kept by name."""

    name: str
    xid: int


@dataclass(frozen=True)
class Revive:
    """A slice came back while its ledger entry was live: it keeps that usage."""

    name: str
    xid: int
    old_xid: int


@dataclass(frozen=True)
class PurgeLedger:
    """A ledger entry whose period has ended."""

    name: str


@dataclass(frozen=True)
class NewPeriod:
    """A slice's period ended: usage back to 0, caps lifted."""

    name: str
    xid: int
    start_s: int
    end_s: int


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class SliceLine:
    """One live slice as planned."""

    name: str
    xid: int
    period_start_s: int
    period_end_s: int
    default: ClassLine
    exempt: ClassLine


@dataclass(frozen=True)
class Plan:
    """What one cycle will do."""

    now_s: int
    actions: tuple[Action, ...]
    state: State  # to save if every action succeeds (notified flags: set on delivery)
    lines: tuple[SliceLine, ...]
    limiting_off: bool = False

    def kernel_ops(self) -> list[ClassOp]:
        """The kernel changes of the plan, in order."""
        ops: list[ClassOp] = []
        for action in self.actions:
            if isinstance(action, CreateClass):
                ops.append(ClassOp("create", action.xid, action.traffic_class, action.rates))
            elif isinstance(action, SetRates):
                ops.append(ClassOp("change", action.xid, action.traffic_class, action.new))
            elif isinstance(action, RemoveClasses):
                ops.extend(ClassOp("delete", action.xid, tc) for tc in TRAFFIC_CLASSES)
        return ops


# --- planning --------------------------------------------------------------


def _fresh_class(policy: ClassPolicy, counter_bytes: int) -> ClassState:
    return ClassState(policy=policy, last_counter_bytes=counter_bytes)


def _counter(kernel: KernelSlice | None, traffic_class: TrafficClass) -> int | None:
    if kernel is None:
        return None
    cls = kernel.cls(traffic_class)
    return None if cls is None else cls.bytes


def _account(cs: ClassState, counter_bytes: int | None) -> tuple[ClassState, int]:
    """Add the bytes since the last reading; a missing class restarts its counter at 0."""
    # Direct construction: dataclasses.replace costs ~10 µs a call, 8 calls a slice.
    if counter_bytes is None:
        return ClassState(cs.policy, cs.used_bytes, 0, cs.ceil_bps, cs.capped, cs.notified), 0
    delta = counter_delta(counter_bytes, cs.last_counter_bytes)
    used = cs.used_bytes + delta
    return ClassState(cs.policy, used, counter_bytes, cs.ceil_bps, cs.capped, cs.notified), delta


def _account_slice(st: SliceState, kernel: KernelSlice | None) -> tuple[SliceState, int, int]:
    default, d_delta = _account(st.default, _counter(kernel, "default"))
    exempt, e_delta = _account(st.exempt, _counter(kernel, "exempt"))
    moved = SliceState(st.name, st.xid, st.period_start_s, st.period_end_s, default, exempt)
    return moved, d_delta, e_delta


def _rebaseline(st: SliceState, kernel: KernelSlice | None, xid: int) -> SliceState:
    """A revived slice: same usage, counted from the counters its (new) xid has now."""

    def rebase(cs: ClassState, tc: TrafficClass) -> ClassState:
        return dataclasses.replace(cs, last_counter_bytes=_counter(kernel, tc) or 0)

    return dataclasses.replace(
        st, xid=xid, default=rebase(st.default, "default"), exempt=rebase(st.exempt, "exempt")
    )


def _target_rates(
    cs: ClassState, class_cap_bps: int, period_end_s: int, now_s: int, bwmin_bps: int
) -> tuple[ClassRates, bool]:
    policy = cs.policy
    min_rate = min(policy.min_rate_bps, class_cap_bps // MIN_RATE_SHARE_OF_CAP)
    max_rate = min(policy.max_rate_bps, class_cap_bps)
    capped = cs.used_bytes >= policy.threshold_bytes
    ceil = max_rate
    if capped:
        ceil = capped_ceil_bps(
            used_bytes=cs.used_bytes,
            limit_bytes=policy.limit_bytes,
            now_s=now_s,
            period_end_s=period_end_s,
            min_rate_bps=min_rate,
            max_rate_bps=max_rate,
        )
    rate_bps, ceil_bps = clamp_rates(min_rate, ceil, class_cap_bps, bwmin_bps)
    return ClassRates(rate_bps, ceil_bps, max(1, policy.share)), capped


def _plan_live(
    want: DesiredSlice,
    *,
    st: SliceState,
    kernel: KernelSlice | None,
    snapshot: KernelSnapshot,
    params: PlanParams,
    now_s: int,
    deltas: tuple[int, int],
    actions: list[Action],
    reason: str,
) -> tuple[SliceState, SliceLine]:
    if now_s >= st.period_end_s:
        start, end = next_period(st.period_end_s, now_s, params.period_s, params.anchor)
        actions.append(NewPeriod(want.name, want.xid, start, end))
        reset = {
            tc: dataclasses.replace(st.cls(tc), used_bytes=0, capped=False, notified=False)
            for tc in TRAFFIC_CLASSES
        }
        st = dataclasses.replace(
            st,
            period_start_s=start,
            period_end_s=end,
            default=reset["default"],
            exempt=reset["exempt"],
        )
    caps = {"default": snapshot.cap_bps, "exempt": snapshot.bwmax_bps}
    new_classes: dict[TrafficClass, ClassState] = {}
    lines: dict[TrafficClass, ClassLine] = {}
    to_notify: list[TrafficClass] = []
    for tc, delta in zip(TRAFFIC_CLASSES, deltas, strict=True):
        old = st.cls(tc)
        policy = want.policy(tc)
        cs = ClassState(
            policy, old.used_bytes, old.last_counter_bytes, old.ceil_bps, old.capped, old.notified
        )
        rates, capped = _target_rates(cs, caps[tc], st.period_end_s, now_s, params.bwmin_bps)
        current = None if kernel is None else kernel.cls(tc)
        if current is None:
            actions.append(CreateClass(want.name, want.xid, tc, rates, reason))
        elif current.rates != rates:
            actions.append(SetRates(want.name, want.xid, tc, current.rates, rates))
        if capped and not cs.notified:
            to_notify.append(tc)
        new_classes[tc] = ClassState(
            policy, cs.used_bytes, cs.last_counter_bytes, rates.max_rate_bps, capped, cs.notified
        )
        lines[tc] = ClassLine(
            tc,
            cs.used_bytes,
            delta,
            policy.threshold_bytes,
            policy.limit_bytes,
            None if current is None else current.rates.max_rate_bps,
            rates.max_rate_bps,
            capped,
        )
    if to_notify:
        actions.append(Notify(want.name, want.xid, tuple(to_notify)))
    st = SliceState(
        want.name,
        want.xid,
        st.period_start_s,
        st.period_end_s,
        new_classes["default"],
        new_classes["exempt"],
    )
    line = SliceLine(
        want.name, want.xid, st.period_start_s, st.period_end_s, lines["default"], lines["exempt"]
    )
    return st, line


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
    """Reconcile one cycle (DESIGN.md "Policy" and "Slice lifecycle")."""
    if desired.limiting_off:
        return _limiting_off(snapshot, state, now_s)
    wanted = {s.xid: s for s in desired.slices}
    actions: list[Action] = []
    ledger: dict[str, LedgerEntry] = dict(state.ledger)
    carried: dict[int, tuple[SliceState, int, int]] = {}

    # Slices in the state: still wanted under the same name, or dead.
    for xid, st in state.slices.items():
        kernel = snapshot.slices.get(xid)
        accounted, d_delta, e_delta = _account_slice(st, kernel)
        want = wanted.get(xid)
        if want is not None and want.name == st.name:
            carried[xid] = (accounted, d_delta, e_delta)
            continue
        ledger[st.name] = LedgerEntry(accounted, died_s=now_s)
        actions.append(MoveToLedger(st.name, xid))
        if want is None and kernel is not None:
            actions.append(RemoveClasses(st.name, xid, "dead"))

    for name in [n for n, e in ledger.items() if now_s >= e.expires_s]:
        del ledger[name]
        actions.append(PurgeLedger(name))

    slices: dict[int, SliceState] = {}
    lines: list[SliceLine] = []
    for want in sorted(desired.slices, key=lambda s: s.xid):
        kernel = snapshot.slices.get(want.xid)
        reason = "recreate"
        if want.xid in carried:
            st, d_delta, e_delta = carried[want.xid]
        else:
            d_delta = e_delta = 0
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
        st, line = _plan_live(
            want,
            st=st,
            kernel=kernel,
            snapshot=snapshot,
            params=params,
            now_s=now_s,
            deltas=(d_delta, e_delta),
            actions=actions,
            reason=reason,
        )
        slices[want.xid] = st
        lines.append(line)

    for xid in sorted(snapshot.slices):
        if xid not in wanted and xid not in state.slices and xid not in SYSTEM_XIDS:
            actions.append(RemoveClasses(None, xid, "orphan"))

    new_state = State(slices, ledger, state.saved_s, state.resets)
    return Plan(now_s, tuple(actions), new_state, tuple(lines))


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

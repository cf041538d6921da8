"""The pure planner: desired slices × kernel classes × saved state → a plan.

No I/O and no clock: ``now_s`` is passed in. The plan is a list of typed actions
for the executor and the state the cycle saves if every action succeeds; each
slice is planned on its own, so one slice's odd data cannot stop the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from operator import attrgetter

from bwenforcer.core.accounting import account_slice, rebaseline
from bwenforcer.core.grants import NO_GRANT, granted_bytes, pruned
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID, TrafficClass
from bwenforcer.core.ledgerplan import CycleLedger, held_slices, inherited, left_usage, new_slice
from bwenforcer.core.liveplan import plan_live
from bwenforcer.core.model import (
    AuditEntry,
    BootClock,
    DesiredSet,
    DesiredSlice,
    InvalidRecord,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
    ledger_xids,
)
from bwenforcer.core.notices import SentMarks
from bwenforcer.core.periods import CLOCK_SLACK_S, clock_check
from bwenforcer.core.plan import (
    Action,
    Adopt,
    Inherit,
    LiveSlice,
    MoveToLedger,
    Notify,
    Plan,
    PurgeLedger,
    RemoveClasses,
    Revive,
    SetInboundLimit,
    UsageRow,
)
from bwenforcer.core.quietplan import no_shortcut, quiet_slice, quiet_slice_inbound
from bwenforcer.core.settings import PlanParams
from bwenforcer.core.targets import RateTargets

# The tree's own slices: created by `tc init`, never removed as orphans.
SYSTEM_XIDS = frozenset({ROOT_XID, DEFAULT_XID})


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

    ``quiet=False`` plans every slice the long way (:func:`plan_live`), without
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
    held = held_slices(refused, wanted, state) if refused else ()
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
    ledger = CycleLedger(state)
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
        usage = left_usage(st, gone, kernel)
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
    shortcut = quiet_slice if quiet else no_shortcut  # chosen once, not tested per slice
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
            return quiet_slice_inbound(want, st, kernel, t, now_s, notify=notify, inbound=inbound)

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
                st = inherited(renamed[want.xid], want.name, entry)
                actions.append(Inherit(want.name, want.xid, renamed[want.xid].name))
                reason = "inherit"  # not counted again: its bytes went with the old name
            elif entry is not None:
                st = rebaseline(entry.slice, kernel, want.xid, inbound)
                actions.append(Revive(want.name, want.xid, entry.slice.xid))
                reason = "revive"
            else:
                st = new_slice(want, kernel, params, now_s, inbound)
                if kernel is not None:
                    actions.append(Adopt(want.name, want.xid))
                reason = "new"
        planned = plan_live(
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
        cycles=state.cycles + 1,
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

"""The ``reset`` verb's pure part: forgive a live slice's usage and lift its caps now.

:func:`forgive` gives the state to save and the kernel changes to apply;
:func:`reset_line` is the operator's WARNING log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from bwenforcer.core.grants import pruned
from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import (
    AuditEntry,
    ClassOp,
    ClassState,
    KernelClass,
    KernelSnapshot,
    SliceState,
    State,
)
from bwenforcer.core.targets import RateTargets
from bwenforcer.core.units import human_size
from bwenforcer.core.window import empty_ring
from bwenforcer.views.status import ceil_text, last_applied_bps


@dataclass(frozen=True)
class Forgiven:
    """A reset slice: the state to save and the kernel changes that lift its caps now."""

    state: State
    slice: SliceState
    ops: tuple[ClassOp, ...]


def rates_now(
    cs: ClassState,
    kc: KernelClass | None,
    targets: RateTargets | None,
    xid: int,
    tc: TrafficClass,
    *,
    counted_bytes: int,
    period_end_s: int,
    now_s: int,
) -> tuple[ClassState, ClassOp | None]:
    """``cs`` with the ceil and capped flag the planner's rule gives at ``counted_bytes``
    now, and the op that sets the kernel class ``kc`` to those rates if it differs;
    ``cs`` unchanged without a kernel class or targets (the next cycle sets them).
    """
    if kc is None or targets is None:
        return cs, None
    rates, capped = targets.rates(cs.policy, tc, counted_bytes, period_end_s, now_s)
    op = ClassOp("change", xid, tc, rates) if kc.rates != rates else None
    return dataclasses.replace(cs, ceil_bps=rates.max_rate_bps, capped=capped), op


def with_lift(cs: ClassState, was_capped: bool) -> ClassState:
    """``cs`` with its lift due if an operator's change lifted its cap (the next cycle
    tells it, once a period, if the policy asks for it: core/notices.py).
    """
    if was_capped and not cs.capped and cs.lift == "":
        return dataclasses.replace(cs, lift="due")
    return cs


def forgive(
    state: State,
    xid: int,
    classes: Iterable[TrafficClass],
    snapshot: KernelSnapshot | None,
    bwmin_bps: int,
    *,
    user: str,
    reason: str,
    now_s: int,
) -> Forgiven:
    """Reset the budget of a live slice's classes now; its period is kept.

    Usage goes to 0 from the kernel's current counter (or the last counter seen
    when there is no snapshot), so bytes sent before the reset are never counted;
    caps are cleared (a lift to tell, core/notices.py), the notices told this period
    stay told (each goes out once per period and class). With a snapshot, the classes that are
    capped in the kernel get their ceil lifted (the ops to apply): the rates a
    cycle would set at a usage of 0 (a tier from 0 % still holds). Each class's
    reset joins the audit (who, when, why, the usage forgiven).
    """
    st = state.slices[xid]
    kernel = None if snapshot is None else snapshot.slices.get(xid)
    targets = None if snapshot is None else RateTargets(snapshot, bwmin_bps)
    new: dict[TrafficClass, ClassState] = {}
    ops: list[ClassOp] = []
    entries: list[AuditEntry] = []
    for tc in dict.fromkeys(classes):
        cs = was = st.cls(tc)
        entries.append(AuditEntry("reset", st.name, tc, cs.used_bytes, user, now_s, now_s, reason))
        kc = None if kernel is None else kernel.cls(tc)
        counter = cs.last_counter_bytes if kc is None else kc.bytes
        # notified stays: each notice goes out once per period and class (a notice the
        # same period again would carry the same id: core.notices.notice_id)
        cs = dataclasses.replace(
            cs,
            used_bytes=0,
            last_counter_bytes=counter,
            capped=False,
            buckets=empty_ring() if cs.buckets else (),  # a window forgets it all too
        )
        cs, op = rates_now(
            cs, kc, targets, xid, tc, counted_bytes=0, period_end_s=st.period_end_s, now_s=now_s
        )
        if op is not None:
            ops.append(op)
        new[tc] = with_lift(cs, was.capped)
    reset = dataclasses.replace(
        st, default=new.get("default", st.default), exempt=new.get("exempt", st.exempt)
    )
    slices = dict(state.slices)
    slices[xid] = reset
    forgiven = dataclasses.replace(
        state,
        slices=slices,
        resets=state.resets + 1,
        audit=pruned((*state.audit, *entries), now_s),
    )
    return Forgiven(forgiven, reset, tuple(ops))


def reset_line(
    user: str, before: SliceState, after: SliceState, classes: Iterable[str], reason: str = ""
) -> str:
    """The WARNING logged for a reset: who, which slice, and what was forgiven."""
    parts = []
    for tc in dict.fromkeys(classes):
        old, new = before.cls(tc), after.cls(tc)
        old_ceil, new_ceil = ceil_text(last_applied_bps(old)), ceil_text(last_applied_bps(new))
        ceil = ""
        if old_ceil != new_ceil:
            ceil = f", ceil {old_ceil} → {new_ceil}"
        elif old.capped:
            ceil = f", ceil {old_ceil} until the next cycle"
        parts.append(f"{tc} used {human_size(old.used_bytes)} → 0{ceil}")
    why = f" (reason: {reason!r})" if reason else ""
    return (
        f"reset by operator {user}: slice {after.name} xid {after.xid}: " + "; ".join(parts) + why
    )

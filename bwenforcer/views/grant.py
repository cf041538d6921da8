"""The ``grant`` verb's pure part: add budget to a live slice's classes and lift its caps now.

:func:`grant` gives the state to save (the grant in the audit) and the kernel
changes to apply; :func:`grant_line` is the operator's WARNING log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from bwenforcer.core.grants import class_granted, counted_bytes, pruned
from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import AuditEntry, ClassOp, ClassState, KernelSnapshot, SliceState, State
from bwenforcer.core.targets import RateTargets
from bwenforcer.core.units import human_size
from bwenforcer.core.window import expiry_s
from bwenforcer.views.reset import rates_now, with_lift
from bwenforcer.views.show import utc
from bwenforcer.views.status import ceil_text, last_applied_bps


@dataclass(frozen=True)
class Granted:
    """A grant made: the state to save, the slice after it, the kernel changes."""

    state: State
    slice: SliceState
    ops: tuple[ClassOp, ...]
    entries: tuple[AuditEntry, ...]


def grant(
    state: State,
    xid: int,
    classes: Iterable[TrafficClass],
    size_bytes: int,
    *,
    snapshot: KernelSnapshot | None,
    bwmin_bps: int,
    user: str,
    reason: str,
    until_s: int | None,
    now_s: int,
) -> Granted:
    """Grant ``size_bytes`` to each of a live slice's ``classes`` from ``now_s`` until
    ``until_s`` (None: the end of its period; under a rolling window, when bytes sent
    now have left the window: a grant that ended with the current bucket would lift a
    cap for a day of a month's window), kept in the audit.

    With a snapshot, each class gets the rates a cycle would now set (the planner's
    rule at its usage less the grants in force), so a cap is lifted at once.
    """
    st = state.slices[xid]
    until = until_s
    if until is None:
        window_s = st.default.policy.window_s
        until = expiry_s(st.period_end_s, window_s) if window_s else st.period_end_s
    entries = tuple(
        AuditEntry("grant", st.name, tc, size_bytes, user, now_s, until, reason)
        for tc in dict.fromkeys(classes)
    )
    audit = pruned((*state.audit, *entries), now_s)
    kernel = None if snapshot is None else snapshot.slices.get(xid)
    targets = None if snapshot is None else RateTargets(snapshot, bwmin_bps)
    new: dict[TrafficClass, ClassState] = {}
    ops: list[ClassOp] = []
    for entry in entries:
        tc = entry.traffic_class
        cs = st.cls(tc)
        kc = None if kernel is None else kernel.cls(tc)
        granted = class_granted(audit, st.name, tc, now_s) + cs.carried_bytes
        counted = counted_bytes(cs.used_bytes, granted)
        cs, op = rates_now(
            cs,
            kc,
            targets,
            xid,
            tc,
            counted_bytes=counted,
            period_end_s=st.period_end_s,
            now_s=now_s,
        )
        if op is not None:
            ops.append(op)
        new[tc] = with_lift(cs, st.cls(tc).capped)
    after = dataclasses.replace(
        st, default=new.get("default", st.default), exempt=new.get("exempt", st.exempt)
    )
    granted = dataclasses.replace(
        state,
        slices={**state.slices, xid: after},
        grants=state.grants + len(entries),
        audit=audit,
    )
    return Granted(granted, after, tuple(ops), entries)


def grant_line(before: SliceState, done: Granted) -> str:
    """The WARNING logged for a grant: who, which slice, how much, until when, why, and the
    ceils changed.
    """
    parts = []
    for entry in done.entries:
        old, new = before.cls(entry.traffic_class), done.slice.cls(entry.traffic_class)
        old_ceil, new_ceil = ceil_text(last_applied_bps(old)), ceil_text(last_applied_bps(new))
        ceil = f", ceil {old_ceil} → {new_ceil}" if old_ceil != new_ceil else ""
        parts.append(f"{entry.traffic_class} +{human_size(entry.size_bytes)}{ceil}")
    first = done.entries[0]
    why = f" (reason: {first.reason!r})" if first.reason else ""
    return (
        f"grant by operator {first.user}: slice {before.name} xid {before.xid}: "
        + "; ".join(parts)
        + f" until {utc(first.until_s)}{why}"
    )

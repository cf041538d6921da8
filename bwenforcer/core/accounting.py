"""Counting: a class's usage from the kernel's byte counters, one reading a cycle.

What a class's counter went up by since the last reading is added to its usage;
a counter that went back restarted from 0 (:func:`~bwenforcer.core.policy.counter_delta`),
and a class that is gone is counted from 0 when it is back. Pure functions over
the model's frozen states, for the planner.
"""

from __future__ import annotations

import dataclasses

from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import ClassState, KernelClass, KernelSlice, SliceState
from bwenforcer.core.policy import counter_delta
from bwenforcer.core.window import added


def kernel_counter(kernel: KernelSlice | None, traffic_class: TrafficClass) -> int | None:
    """The byte counter of one class of a kernel slice; None if the class is missing."""
    if kernel is None:
        return None
    cls = kernel.cls(traffic_class)
    return None if cls is None else cls.bytes


def class_usage(
    old: ClassState, current: KernelClass | None, account: bool, new_period: bool
) -> tuple[int, int, int, bool]:
    """``(used, last counter, delta, notified)`` of a class after this cycle's bytes:
    with ``account``, what ``current`` counted since ``old``'s reading is added;
    a new period starts the usage at 0, not notified.

    Hot path: run for every class every cycle.
    """
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


def account_slice(st: SliceState, kernel: KernelSlice | None) -> SliceState:
    """A slice's state with the bytes its classes counted since the last reading."""

    def account(cs: ClassState, current: KernelClass | None) -> ClassState:
        used, last, delta, _ = class_usage(cs, current, True, False)
        buckets = added(cs.buckets, delta) if cs.buckets else cs.buckets
        return ClassState(
            cs.policy,
            used,
            last,
            cs.ceil_bps,
            cs.capped,
            cs.notified,
            cs.notice_bp,
            cs.lift,
            buckets,
            cs.carried_bytes,
        )

    default = account(st.default, None if kernel is None else kernel.default)
    exempt = account(st.exempt, None if kernel is None else kernel.exempt)
    return SliceState(st.name, st.xid, st.period_start_s, st.period_end_s, default, exempt)


def rebaseline(st: SliceState, kernel: KernelSlice | None, xid: int) -> SliceState:
    """A revived slice: same usage, counted from the counters its (new) xid has now."""

    def rebase(cs: ClassState, tc: TrafficClass) -> ClassState:
        return dataclasses.replace(cs, last_counter_bytes=kernel_counter(kernel, tc) or 0)

    return dataclasses.replace(
        st, xid=xid, default=rebase(st.default, "default"), exempt=rebase(st.exempt, "exempt")
    )

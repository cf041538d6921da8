"""The shortcut for quiet slices: the plan of a slice nothing happened to since the
last cycle, without the long way of :func:`~bwenforcer.core.liveplan.plan_live`.
"""

from __future__ import annotations

from collections.abc import Iterable

from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.model import ClassState, DesiredSlice, KernelClass, KernelSlice, SliceState
from bwenforcer.core.plan import LiveSlice
from bwenforcer.core.targets import RateTargets


def quiet_slice_inbound(
    want: DesiredSlice,
    st: SliceState,
    kernel: KernelSlice,
    targets: RateTargets,
    now_s: int,
    *,
    notify: bool,
    inbound: InboundSnapshot | None,
) -> LiveSlice | None:
    """:func:`quiet_slice` with inbound accounting on: its conditions with the usage each
    budget counts, and besides: each class's inbound counter equals its last reading
    (or was not read this cycle) and no inbound limit is in force, by the state or the
    backend. Then :func:`~bwenforcer.core.liveplan._plan_both` adds no action and keeps the state.
    """
    d, e, kd, ke = st.default, st.exempt, kernel.default, kernel.exempt
    if (
        kd is None
        or ke is None
        or d.in_limit_bps
        or e.in_limit_bps
        or _stirred(want, st, kd, ke, now_s)
    ):
        return None
    if inbound is not None:
        for key, cs in (((st.xid, "default"), d), ((st.xid, "exempt"), e)):
            if (
                inbound.bytes_by_class.get(key) != cs.in_last_counter_bytes
                or key in inbound.limits_bps
            ):
                return None
    d_counted = direction_bytes(d, want.default, True)
    e_counted = direction_bytes(e, want.exempt, True)
    if not _uncapped(want, st, kd, ke, targets, counted=(d_counted, e_counted), notify=notify):
        return None
    return LiveSlice(
        st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps, False, False, 0, 0, None, None,
        True,
    )  # fmt: skip


def quiet_slice(
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
    and what :func:`plan_live` would make of it is known: the very same state,
    no action.

    The rule this shortcut rests on: it must take exactly the decisions
    :func:`plan_live` (with ``account``) would take for the slice, and so
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

    Then :func:`plan_live` adds no action, keeps both ClassStates and so the
    SliceState itself, counts 0 bytes and reports the kernel's ceils: what this
    returns. A change to :func:`plan_live`'s decisions must change these
    conditions with it; ``plan(..., quiet=False)`` runs without the shortcut,
    and tests/test_planner_properties.py holds the two to the same plan.
    """
    d, e, kd, ke = st.default, st.exempt, kernel.default, kernel.exempt
    if kd is None or ke is None or _stirred(want, st, kd, ke, now_s):
        return None
    counted = (d.used_bytes, e.used_bytes)
    if not _uncapped(want, st, kd, ke, targets, counted=counted, notify=notify):
        return None
    return LiveSlice(st, 0, 0, kd.rates.max_rate_bps, ke.rates.max_rate_bps)


def _uncapped(
    want: DesiredSlice,
    st: SliceState,
    kd: KernelClass,
    ke: KernelClass,
    targets: RateTargets,
    *,
    counted: tuple[int, int],
    notify: bool,
) -> bool:
    """Whether both classes, with the usage their budgets count (``counted``: default,
    exempt), are below where their rules start capping, their saved ceils and the
    kernel's rates are the policies' uncapped rates, and (with ``notify``) no notice is
    due: the conditions both shortcuts share past :func:`_stirred`.
    """
    d, e = st.default, st.exempt
    d_start, d_rates = targets.limits(want.default, "default")
    e_start, e_rates = targets.limits(want.exempt, "exempt")
    if (
        counted[0] >= d_start
        or counted[1] >= e_start
        or d.ceil_bps != d_rates.max_rate_bps
        or e.ceil_bps != e_rates.max_rate_bps
        or (kd.rates is not d_rates and kd.rates != d_rates)
        or (ke.rates is not e_rates and ke.rates != e_rates)
    ):
        return False
    return not (
        notify
        and (d.policy.notices or e.policy.notices)
        and _notice_due(((d, counted[0]), (e, counted[1])), targets)
    )


def _stirred(
    want: DesiredSlice, st: SliceState, kd: KernelClass, ke: KernelClass, now_s: int
) -> bool:
    """The conditions of :func:`quiet_slice` (and its inbound twin) on the period, the
    counters, the caps, the notices due, the policies and the carried bytes: whether any
    of them says the slice is not quiet.
    """
    d, e = st.default, st.exempt
    return bool(
        now_s >= st.period_end_s
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
    )


def _notice_due(classes: Iterable[tuple[ClassState, int]], targets: RateTargets) -> bool:
    """Whether a class of a quiet slice (with the usage its budget counts) has a share
    passed and not told: then it is not quiet.
    """
    for cs, counted in classes:
        next_bytes = targets.notices(cs.policy).next_bytes(cs.notice_bp)
        if next_bytes is not None and counted >= next_bytes:
            return True
    return False


def no_shortcut(
    want: DesiredSlice,
    st: SliceState,
    kernel: KernelSlice,
    targets: RateTargets,
    now_s: int,
    *,
    notify: bool,
) -> None:
    """:func:`quiet_slice` for ``plan(..., quiet=False)``: no slice is taken for quiet."""
    return None

"""The plan's types: the actions a cycle takes and the plan that holds them.

The planner makes these; the executor applies the actions, the views print
them, the agent and the cycle read the plan's state, lines and usage. Plain
frozen data, no planning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, NamedTuple

from bwenforcer.core.inbound import InboundLimit
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import (
    ClassOp,
    ClassRates,
    ClassState,
    DesiredSlice,
    KernelOp,
    SliceState,
    State,
    fast_init,
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
class Inherit:
    """A new name on the xid of a slice that left (renamed, or a recycled uid): it goes
    on with that slice's usage and period on the same classes (the old name is in the
    ledger too). A fresh budget on a capped class would lift its cap.
    """

    name: str
    xid: int
    old_name: str


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


@dataclass(frozen=True, slots=True)
class Rollover:
    """At a new period, a class carries bytes its period before left unused (core.grants)."""

    name: str
    xid: int
    traffic_class: TrafficClass
    carried_bytes: int


@fast_init
@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the slice about its classes: capped (``threshold``), past a share of the limit
    (``share``) or no longer capped (``lifted``), not yet told this period (core.notices).
    """

    name: str
    xid: int
    classes: tuple[TrafficClass, ...]
    kind: str = "threshold"  # core.notices.NoticeKind
    share_bp: int = 0  # kind share: the share passed, in basis points


@fast_init
@dataclass(frozen=True, slots=True)
class SetInboundLimit:
    """Set (``in_new_limit_bps``) or lift (None) the inbound limit of one slice class;
    ``in_old_limit_bps`` is the backend's (None: none). Planned only with inbound
    accounting on, and for a change of rate only by a real margin
    (core.direction.inbound_change).
    """

    name: str | None  # None: no slice known by the xid (limiting off)
    xid: int
    traffic_class: TrafficClass
    in_old_limit_bps: int | None
    in_new_limit_bps: int | None

    def limit(self) -> InboundLimit:
        """The change as the inbound backend takes it."""
        return InboundLimit(self.xid, self.traffic_class, self.in_new_limit_bps)


Action = (
    CreateClass
    | SetRates
    | RemoveClasses
    | Adopt
    | MoveToLedger
    | Revive
    | Inherit
    | PurgeLedger
    | NewPeriod
    | Rollover
    | Notify
    | SetInboundLimit
)


# --- the plan --------------------------------------------------------------


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
    # inbound (only with inbound accounting on; else 0 and None)
    in_used_bytes: int = 0
    in_delta_bytes: int = 0
    in_old_limit_bps: int | None = None  # what the backend had (None: no limit)
    in_new_limit_bps: int | None = None  # after this cycle (None: no limit)
    direction: str = "out"  # what the budget counts, as in force (core.direction)


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
    # whether the class was capped in the kernel since the last cycle: what the
    # history's capped time counts (the cycle that caps is not capped time yet)
    default_was_capped: bool = False
    exempt_was_capped: bool = False
    # inbound bytes counted this cycle and the backend's limits before it (None: none);
    # 0 and None with inbound accounting off
    default_in_delta_bytes: int = 0
    exempt_in_delta_bytes: int = 0
    default_in_old_limit_bps: int | None = None
    exempt_in_old_limit_bps: int | None = None
    inbound: bool = False  # planned with inbound accounting on


def _class_line(
    cs: ClassState,
    tc: TrafficClass,
    delta: int,
    old_ceil: int | None,
    *,
    inbound: bool = False,
    in_delta: int = 0,
    in_old: int | None = None,
) -> ClassLine:
    policy = cs.policy
    if not inbound:
        return ClassLine(
            tc, cs.used_bytes, delta, policy.threshold_bytes, policy.limit_bytes, old_ceil,
            cs.ceil_bps, cs.capped,
        )  # fmt: skip
    return ClassLine(
        tc, cs.used_bytes, delta, policy.threshold_bytes, policy.limit_bytes, old_ceil,
        cs.ceil_bps, cs.capped, cs.in_used_bytes, in_delta, in_old, cs.in_limit_bps or None,
        policy.direction,
    )  # fmt: skip


# a slice's usage of one cycle, for the history (Plan.usage)
UsageRow = tuple[str, int, int, bool, bool, int, int]


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
    # the usage rows (as :meth:`usage`) of the slices that went to the ledger this
    # cycle: the bytes counted in the cycle a slice leaves are history too
    left: tuple[UsageRow, ...] = ()

    @cached_property
    def lines(self) -> tuple[SliceLine, ...]:
        """Every live slice as planned, by xid (built on first use: a cycle needs none)."""
        return tuple(
            SliceLine(
                live.state.name,
                live.state.xid,
                live.state.period_start_s,
                live.state.period_end_s,
                _class_line(
                    live.state.default,
                    "default",
                    live.default_delta_bytes,
                    live.default_old_ceil_bps,
                    inbound=live.inbound,
                    in_delta=live.default_in_delta_bytes,
                    in_old=live.default_in_old_limit_bps,
                ),
                _class_line(
                    live.state.exempt,
                    "exempt",
                    live.exempt_delta_bytes,
                    live.exempt_old_ceil_bps,
                    inbound=live.inbound,
                    in_delta=live.exempt_in_delta_bytes,
                    in_old=live.exempt_in_old_limit_bps,
                ),
            )
            for live in self.live
        )

    def usage(self) -> Iterator[UsageRow]:
        """``(name, default bytes, exempt bytes, default capped, exempt capped, default
        bytes received, exempt bytes received)`` of each slice that sent or received
        something this cycle or was capped since the last one (idle ones are left out),
        live or gone to the ledger this cycle. "Capped" is the cap in force since the
        last cycle, not the one this cycle sets: the span up to the cycle that caps was
        not capped time.
        """
        for live in self.live:
            st, d_delta, e_delta, _, _, d_capped, e_capped, d_in, e_in, *_ = live
            if d_delta or e_delta or d_capped or e_capped or d_in or e_in:
                yield st.name, d_delta, e_delta, d_capped, e_capped, d_in, e_in
        yield from self.left

    def inbound_limits(self) -> list[InboundLimit]:
        """The inbound limit changes of the plan, in order (none with inbound off)."""
        return [a.limit() for a in self.actions if isinstance(a, SetInboundLimit)]

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

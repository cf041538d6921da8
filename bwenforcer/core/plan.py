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
    # the usage rows (as :meth:`usage`) of the slices that went to the ledger this
    # cycle: the bytes counted in the cycle a slice leaves are history too
    left: tuple[tuple[str, int, int, bool, bool], ...] = ()

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
            for st, d_delta, e_delta, d_ceil, e_ceil, _, _ in self.live
        )

    def usage(self) -> Iterator[tuple[str, int, int, bool, bool]]:
        """``(name, default bytes, exempt bytes, default capped, exempt capped)`` of each
        slice that sent something this cycle or was capped since the last one (idle
        ones are left out), live or gone to the ledger this cycle. "Capped" is the cap
        in force since the last cycle, not the one this cycle sets: the span up to the
        cycle that caps was not capped time.
        """
        for st, d_delta, e_delta, _, _, d_capped, e_capped in self.live:
            if d_delta or e_delta or d_capped or e_capped:
                yield st.name, d_delta, e_delta, d_capped, e_capped
        yield from self.left

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

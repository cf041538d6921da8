"""Frozen data shared by the pure core and the shell.

Units are in the names: ``_bytes``, ``_bps`` (bits per second), ``_s`` (seconds,
Unix time for instants). Mappings inside frozen dataclasses are never mutated;
the planner builds new ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.window import expiry_s

_T = TypeVar("_T")


def fast_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass a constructor twice as fast as the generated one.

    The ``__init__`` that dataclasses generate for a frozen class sets each
    field through ``object.__setattr__``; setting the slots through their own
    descriptors does the same for half the cost. Thousands of these objects are
    made every cycle (states, rates, kernel classes, actions): a fifth of a
    4,000-slice cycle's planning. Fields with a default factory are refused.
    """
    params, lines, scope = [], [], {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: fast_init takes no default factories")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            params.append(f"{f.name}=_default_{f.name}")
            scope[f"_default_{f.name}"] = f.default
        scope[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        lines.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """The budget and rates in force for one traffic class of one slice."""

    limit_bytes: int
    threshold_bytes: int
    min_rate_bps: int
    max_rate_bps: int
    share: int
    # canonical texts of the tiers and the taper (core.policy.parse_tiers/parse_taper);
    # "" = none: pacing from the threshold alone
    tiers: str = ""
    taper: str = ""
    pacing: bool = True  # False (only with tiers or a taper): no pacing from the threshold
    # a rolling window's length (core.window; both classes of a slice have the same):
    # the budget is over the last window_s seconds; 0: over the period
    window_s: int = 0
    # canonical text of the early notices (core.notices.parse_notices), e.g. "50%,80%,lifted";
    # "" = the threshold notice alone
    notices: str = ""
    # the most a new period takes over of what the period before left unused (core.grants,
    # rolled_over); 0: no rollover (always 0 under a rolling window)
    rollover_bytes: int = 0
    # what the budget counts (core.direction): "out" (sent, PlanetLab's meaning), "in"
    # (received) or "both" (their sum); with inbound accounting off, "out" whatever it says
    direction: str = "out"


@dataclass(frozen=True, slots=True)
class DesiredSlice:
    """A slice that should exist on the node, from the slices file or the node manager."""

    name: str
    xid: int
    default: ClassPolicy
    exempt: ClassPolicy
    # attribute name -> "rspec" or "defaults": where each value in force came from
    origin: Mapping[str, str] = field(default_factory=dict)
    # the source's own attributes, as given (a cgroup tenant named in the slices file
    # resolves them again over its pattern's defaults); None: none given
    rspec: Mapping[str, object] | None = None

    def policy(self, traffic_class: TrafficClass) -> ClassPolicy:
        """The policy of one traffic class."""
        return self.default if traffic_class == "default" else self.exempt


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A source record with a valid slice name whose other fields are invalid.

    The planner keeps such a slice enforced with the policy saved in its state
    (one typo in an rspec must not lift a cap); a slice it never saw is skipped.
    """

    name: str
    xid: int | None  # None: the xid itself is what is invalid
    error: str


@dataclass(frozen=True, slots=True)
class DesiredSet:
    """Everything the sources say should exist this cycle."""

    slices: tuple[DesiredSlice, ...]
    limiting_off: bool = False  # node manager's <prefix>_default net_max_rate == -1
    errors: tuple[str, ...] = ()  # one line per slice that was skipped as invalid
    invalid: tuple[InvalidRecord, ...] = ()  # those of them that name a slice
    # node-manager records left out as the historic bwmon did (no _rspec yet, no
    # account): not errors, one line each for the caller to log when they change
    skipped: tuple[str, ...] = ()
    # valid slices whose xid an earlier record of another name claims (one error line
    # each, naming both): the slice already enforced on the xid keeps it (planner)
    contested: tuple[DesiredSlice, ...] = ()
    # the source could not be read and has no last good version: every slice of the
    # state is held as it is (its classes, saved limits and cap), none added or dropped
    unread: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class ClassRates:
    """What one HTB class is set to: guaranteed rate, ceil, share."""

    min_rate_bps: int
    max_rate_bps: int
    share: int


@fast_init
@dataclass(frozen=True, slots=True)
class KernelClass:
    """One slice class as dumped from the kernel."""

    rates: ClassRates
    bytes: int  # 64-bit byte counter from the class's basic stats


@fast_init
@dataclass(frozen=True, slots=True)
class KernelSlice:
    """Both classes of one xid as found in the kernel (either may be missing).

    Identity rule: a dump passes a class whose kernel record did not change since
    the last dump on as the very same KernelClass, and a slice whose two classes
    are those very objects as the very same KernelSlice; equal rates share one
    ClassRates. HtbBackend's snapshot cache tells unchanged ones by ``is``, so a
    dump of an idle tree of thousands of classes builds no new kernel objects.
    """

    xid: int
    default: KernelClass | None
    exempt: KernelClass | None

    def cls(self, traffic_class: TrafficClass) -> KernelClass | None:
        """The kernel class of one traffic class, if present."""
        return self.default if traffic_class == "default" else self.exempt


@dataclass(frozen=True, slots=True)
class KernelSnapshot:
    """One class dump of the device: node cap, line rate and every slice class."""

    cap_bps: int
    bwmax_bps: int
    slices: Mapping[int, KernelSlice]


@fast_init
@dataclass(frozen=True, slots=True)
class ClassState:
    """Usage of one traffic class of one slice in its current period.

    ``policy`` is the DesiredSlice's very ClassPolicy object (slices sharing an
    rspec share one), which the state encoder's policy text cache looks up by
    ``is``. See :class:`SliceState` for the identity rule.
    """

    policy: ClassPolicy
    used_bytes: int = 0
    last_counter_bytes: int = 0
    ceil_bps: int = 0  # last ceil applied (0: never applied)
    capped: bool = False
    notified: bool = False  # the threshold notice of this period was sent
    notice_bp: int = 0  # the highest share of the limit told this period (core.notices)
    lift: str = ""  # the lift of a cap: "" none, "due" to tell, "sent" told this period
    # under a rolling window (policy.window_s): the ring of bytes per bucket, oldest
    # first, the current bucket last (core.window.RING of them; used_bytes is their sum);
    # () under a period
    buckets: tuple[int, ...] = ()
    # bytes rolled over from the period before (policy.rollover_bytes): they count like a
    # grant for this period; the rollover's only record
    carried_bytes: int = 0
    # inbound (received) bytes, counted as the sent ones (core.direction): only with
    # inbound accounting on; 0 in states written before it (schema 8)
    in_used_bytes: int = 0
    in_last_counter_bytes: int = 0
    in_limit_bps: int = 0  # the inbound limit in force after the last cycle (0: none)


@fast_init
@dataclass(frozen=True, slots=True)
class SliceState:
    """Saved state of one slice: its period and both classes.

    Identity rule: an unchanged slice is passed on as the very same object, from
    the state loaded (or the last cycle's plan) through the plan to the state
    saved: the planner keeps a ClassState whose usage, counter, ceil, flags and
    policy did not change, and a SliceState whose classes, name, xid and period
    did not change, never an equal copy (and a changed one is a new object, as
    these are frozen). The state encoder (``StateEncoder``) re-encodes only the
    slices that are not the object it encoded last time (``is``), and the state
    store hands the state it last wrote to the next load: a copy costs a steady
    4,000-slice cycle its speed, never its correctness.
    """

    name: str
    xid: int
    period_start_s: int
    period_end_s: int
    default: ClassState
    exempt: ClassState

    def cls(self, traffic_class: TrafficClass) -> ClassState:
        """The state of one traffic class."""
        return self.default if traffic_class == "default" else self.exempt


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A deleted slice's state, kept by name until its period would have ended."""

    slice: SliceState
    died_s: int

    @property
    def expires_s(self) -> int:
        """When the entry is purged: the end of the dead slice's period; under a rolling
        window, when its last bytes have left the window.
        """
        st = self.slice
        window_s = st.default.policy.window_s
        return expiry_s(st.period_end_s, window_s) if window_s else st.period_end_s


def ordered_ledger(ledger: Mapping[str, LedgerEntry]) -> dict[str, LedgerEntry]:
    """``ledger`` ordered by expiry (State's order; ties keep their order): the
    mapping itself when it already is, else a sorted copy.
    """
    last = None
    for entry in ledger.values():
        if last is not None and entry.expires_s < last:
            return dict(sorted(ledger.items(), key=lambda item: item[1].expires_s))
        last = entry.expires_s
    return ledger if isinstance(ledger, dict) else dict(ledger)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An operator's change to a slice's budget, kept in the state for the audit.

    A ``grant`` adds ``size_bytes`` to the budget of the class in every period it
    is in force in, from ``at_s`` until ``until_s``; a ``reset`` forgave
    ``size_bytes`` of usage at ``at_s`` (``until_s`` = ``at_s``).
    """

    what: str  # "grant" | "reset"
    slice: str  # the slice's name
    traffic_class: TrafficClass
    size_bytes: int
    user: str  # who: the invoking user
    at_s: int
    until_s: int
    reason: str = ""

    def in_force(self, now_s: int) -> bool:
        """A grant that adds to the budget at ``now_s``."""
        return self.what == "grant" and self.at_s <= now_s < self.until_s


@dataclass(frozen=True, slots=True)
class State:
    """Everything the agent keeps between cycles."""

    slices: Mapping[int, SliceState] = field(default_factory=dict)  # by xid
    # by slice name, ordered by expiry (earliest first): the planner finds the entries
    # due at the head and never looks at the others (ordered_ledger)
    ledger: Mapping[str, LedgerEntry] = field(default_factory=dict)
    saved_s: int | None = None
    resets: int = 0  # operator resets ever made (`bwenforcer reset`), for the metric
    # The clock reference: at CLOCK_BOOTTIME ``boottime_s`` of boot ``boot_id`` the
    # wall clock was trusted to read ``clock_ref_s`` ("" and 0: not known). Within
    # one boot, the time elapsed since is known whatever the wall clock says.
    boot_id: str = ""
    boottime_s: int = 0
    clock_ref_s: int = 0
    # xid -> when the slice was first found gone from its source: it keeps its
    # classes and cap for the grace (PlanParams.grace_s), then goes to the ledger
    missing: Mapping[int, int] = field(default_factory=dict)

    grants: int = 0  # operator grants ever made (`bwenforcer grant`), for the metric
    audit: tuple[AuditEntry, ...] = ()  # grants in force and recent grants and resets, oldest first
    # cycles planned (each plan counts one; its save keeps the count): the usage
    # history's journal names each record by it, to tell a cycle whose save never
    # happened from one that saved, whatever the clock says
    cycles: int = 0
    # the ledger's xids (see ledger_xids), with the very ledger they index: built at
    # the first use, handed on by the planner with the ledger it changes
    ledger_index: tuple[Mapping[str, LedgerEntry], Mapping[int, tuple[str, ...]]] | None = field(
        default=None, compare=False, repr=False
    )


LedgerXids = Mapping[int, tuple[str, ...]]


def ledger_xids(state: State) -> LedgerXids:
    """The xids of ``state``'s ledger entries, each with the names waiting on it (in the
    order they came), kept with the ledger: built once for a ledger (a look at every
    entry: at load), then handed on by the planner with the ledger it changes (see
    :func:`ledger_index_of`), so a cycle never walks the ledger to know its xids.
    """
    kept = state.ledger_index
    if kept is not None and kept[0] is state.ledger:
        return kept[1]
    index: dict[int, tuple[str, ...]] = {}
    ledger = state.ledger
    # a saved ledger (core.ledger.LazyLedger) gives its xids without decoding an entry
    pairs = getattr(ledger, "xid_pairs", None)
    for xid, name in (
        pairs() if pairs is not None else ((e.slice.xid, n) for n, e in ledger.items())
    ):
        index[xid] = (*index[xid], name) if xid in index else (name,)
    # a cache of what the ledger holds, not a change of the state: set in place
    object.__setattr__(state, "ledger_index", (state.ledger, index))
    return index


@dataclass(frozen=True, slots=True)
class BootClock:
    """The node's boot as read at a cycle: its id (``/proc/sys/kernel/random/boot_id``)
    and ``CLOCK_BOOTTIME`` (seconds since boot, suspend included; steps of the wall
    clock do not move it).
    """

    boot_id: str
    boottime_s: int
    # whether the kernel says the wall clock is synchronised (adjtimex: no
    # STA_UNSYNC); True when it cannot tell. No reference is taken from a clock not
    # synchronised: a node's first cycles may run on the RTC's time before NTP steps it.
    synced: bool = True


class KernelOp(Protocol):
    """What the HTB backend needs of a kernel change: a ClassOp, or a planned action
    that is one (the planner's class creations and rate changes go to the kernel as
    they are, without a copy each).
    """

    @property
    def kind(self) -> str:
        """``create``, ``change`` or ``delete``."""
        ...

    @property
    def xid(self) -> int:
        """The slice."""
        ...

    @property
    def traffic_class(self) -> TrafficClass:
        """Which of its classes."""
        ...

    @property
    def rates(self) -> ClassRates | None:
        """The rates to set (None only for ``delete``)."""
        ...


@dataclass(frozen=True, slots=True)
class ClassOp:
    """One kernel change to one slice class.

    ``create`` adds the class and its leaf pfifo; ``change`` sets new rates on an
    existing class; ``delete`` removes the class (and its leaf qdisc with it).
    """

    kind: str  # "create" | "change" | "delete"
    xid: int
    traffic_class: TrafficClass
    rates: ClassRates | None = None  # None only for "delete"


@dataclass(frozen=True, slots=True)
class OpFailure:
    """A kernel change the kernel refused; the rest of its batch went through."""

    op: KernelOp
    errno: int
    message: str

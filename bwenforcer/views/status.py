"""The ``status`` and ``ledger`` views: every live slice and every dead one, as JSON and tables.

Pure functions over the saved state and a kernel snapshot, with the time passed in;
:mod:`bwenforcer.commands.inspect` does the reading and printing. The wording of
times and ceils here (``until``, ``ceil_text``) is shared by ``show`` and ``reset``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import (
    ClassState,
    KernelClass,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.units import human_duration, human_rate, human_size
from bwenforcer.store.schema import dict_maker, json_key
from bwenforcer.views.table import COLUMN_GAP, column_widths, render_table


@dataclass(frozen=True)
class ClassView:
    """One class of one slice as the operator sees it."""

    traffic_class: TrafficClass
    used_bytes: int
    limit_bytes: int
    threshold_bytes: int
    ceil_bps: int | None  # the kernel's when it could be read, else the last applied
    capped: bool
    notified: bool
    # with inbound accounting on (core.direction): what was received, the inbound limit
    # in force (None: none), what the budget counts; ``counted_bytes`` is its usage
    in_used_bytes: int = 0
    in_limit_bps: int | None = None
    direction: str = "out"
    counted_bytes: int = 0

    @property
    def fraction(self) -> float:
        """Share of the budget used (1.0 = the whole limit)."""
        if self.limit_bytes <= 0:
            return 1.0 if self.counted_bytes > 0 else 0.0
        return self.counted_bytes / self.limit_bytes

    @property
    def percent(self) -> int:
        """Whole percent of the budget used, rounded down so 100 % means the limit is reached."""
        if self.limit_bytes <= 0:
            return 100 if self.counted_bytes > 0 else 0
        return self.counted_bytes * 100 // self.limit_bytes


@dataclass(frozen=True)
class SliceView:
    """One live slice as the operator sees it."""

    name: str
    xid: int
    period_start_s: int
    period_end_s: int
    default: ClassView
    exempt: ClassView

    @property
    def classes(self) -> tuple[ClassView, ClassView]:
        """Both classes, default first."""
        return (self.default, self.exempt)

    @property
    def capped(self) -> bool:
        """True when either class is capped."""
        return self.default.capped or self.exempt.capped


def last_applied_bps(cs: ClassState) -> int | None:
    """The ceil the agent last applied to the class, None if it never applied one."""
    return cs.ceil_bps or None  # 0: the agent never applied a ceil


def _kernel_class(
    snapshot: KernelSnapshot | None, xid: int, traffic_class: TrafficClass
) -> KernelClass | None:
    if snapshot is None:
        return None
    found = snapshot.slices.get(xid)
    return None if found is None else found.cls(traffic_class)


def class_view(
    cs: ClassState, traffic_class: TrafficClass, ceil_bps: int | None, inbound: bool = False
) -> ClassView:
    """A class state with the ceil to show (``inbound``: inbound accounting on, the
    usage is what the budget counts).
    """
    return ClassView(
        traffic_class,
        cs.used_bytes,
        cs.policy.limit_bytes,
        cs.policy.threshold_bytes,
        ceil_bps,
        cs.capped,
        cs.notified,
        cs.in_used_bytes,
        cs.in_limit_bps or None,
        cs.policy.direction,
        direction_bytes(cs, cs.policy, inbound),
    )


def slice_view(st: SliceState, snapshot: KernelSnapshot | None, inbound: bool = False) -> SliceView:
    """A slice with its current ceils: the kernel's, or the last applied without a snapshot."""

    def view(tc: TrafficClass) -> ClassView:
        cs = st.cls(tc)
        if snapshot is None:
            return class_view(cs, tc, last_applied_bps(cs), inbound)
        kc = _kernel_class(snapshot, st.xid, tc)
        return class_view(cs, tc, None if kc is None else kc.rates.max_rate_bps, inbound)

    return SliceView(
        st.name, st.xid, st.period_start_s, st.period_end_s, view("default"), view("exempt")
    )


def status_order(view: SliceView) -> tuple[bool, float, str]:
    """Sort key: capped slices first, then by share of budget used, highest first."""
    return (not view.capped, -max(c.fraction for c in view.classes), view.name)


@dataclass(frozen=True)
class StatusFilter:
    """Which slices ``status`` shows: only capped ones, only one name (None: all)."""

    capped: bool = False
    name: str | None = None

    def keeps(self, name: str, capped: bool) -> bool:
        """Whether a slice of this name, capped or not, is shown."""
        return (not self.capped or capped) and (self.name is None or name == self.name)


ALL = StatusFilter()


def slice_views(
    state: State, snapshot: KernelSnapshot | None, only: StatusFilter = ALL, inbound: bool = False
) -> list[SliceView]:
    """Every live slice ``only`` keeps, in status order."""
    views = (
        slice_view(st, snapshot, inbound)
        for st in state.slices.values()
        if only.name is None or st.name == only.name
    )
    return sorted((v for v in views if only.keeps(v.name, v.capped)), key=status_order)


# One class's --json keys, named by the state's field table (docs/interfaces.md: ceil in
# bit/s, null if unknown).
class_json: Callable[[ClassView], dict[str, Any]] = dict_maker(
    "class_json",
    (
        (json_key(attr), f"o.{attr}")
        for attr in (
            "used_bytes",
            "limit_bytes",
            "threshold_bytes",
            "ceil_bps",
            "capped",
            "notified",
        )
    ),
)


# with inbound accounting on, each class also has what it received, its inbound limit
# and what its budget counts
inbound_class_json: Callable[[ClassView], dict[str, Any]] = dict_maker(
    "inbound_class_json",
    (
        (json_key(attr), f"o.{attr}")
        for attr in (
            "used_bytes",
            "in_used_bytes",
            "limit_bytes",
            "threshold_bytes",
            "ceil_bps",
            "in_limit_bps",
            "direction",
            "capped",
            "notified",
        )
    ),
)


def _classes_json(views: Iterable[ClassView], inbound: bool = False) -> dict[str, Any]:
    maker = inbound_class_json if inbound else class_json
    return {v.traffic_class: maker(v) for v in views}


def ledger_entry_json(name: str, entry: LedgerEntry, inbound: bool = False) -> dict[str, Any]:
    """A ledger entry: ``name xid died_at expires_at`` and its classes (last applied ceils)."""
    st = entry.slice
    return {
        "name": name,
        "xid": st.xid,
        "died_at": entry.died_s,
        "expires_at": entry.expires_s,
        "classes": _classes_json(
            (
                class_view(st.cls(tc), tc, last_applied_bps(st.cls(tc)), inbound)
                for tc in TRAFFIC_CLASSES
            ),
            inbound,
        ),
    }


def ledger_entries(state: State) -> list[tuple[str, LedgerEntry]]:
    """Ledger entries, the soonest to expire first."""
    return sorted(state.ledger.items(), key=lambda item: (item[1].expires_s, item[0]))


def status_json(
    state: State,
    snapshot: KernelSnapshot | None,
    only: StatusFilter = ALL,
    *,
    units: Mapping[str, str] | None = None,
    inbound: bool = False,
) -> dict[str, Any]:
    """``status --json``: ``{"slices": [...], "ledger": [...]}`` as in docs/interfaces.md,
    the slices and ledger entries ``only`` keeps.

    With ``units`` (cgroup tenants: slice name -> unit), each slice also has ``unit``
    (null for a slice that is no cgroup's). With ``inbound`` (inbound accounting on),
    each class also has ``in_used_bytes``, ``in_limit`` and ``direction``.
    """
    return {
        "slices": [
            {
                "name": v.name,
                **({} if units is None else {"unit": units.get(v.name)}),
                "xid": v.xid,
                "period_start": v.period_start_s,
                "period_end": v.period_end_s,
                "classes": _classes_json(v.classes, inbound),
            }
            for v in slice_views(state, snapshot, only, inbound)
        ],
        "ledger": [
            ledger_entry_json(name, entry, inbound)
            for name, entry in ledger_entries(state)
            if only.keeps(name, entry.slice.default.capped or entry.slice.exempt.capped)
        ],
    }


def until(instant_s: int, now_s: int) -> str:
    """``in 3h12m`` for a future instant, ``5m ago`` for a past one."""
    if instant_s > now_s:
        return f"in {human_duration(instant_s - now_s)}"
    return f"{human_duration(now_s - instant_s)} ago"


def state_age(saved_s: int | None, now_s: int) -> str:
    """How old the state is, for the line above the tables."""
    if saved_s is None:
        return "state never saved (no cycle has run yet)"
    return f"state saved {until(saved_s, now_s)}"


def ceil_text(ceil_bps: int | None, unknown: str = "-") -> str:
    """A ceil as a rate, or ``unknown`` when there is none to show."""
    return unknown if ceil_bps is None else human_rate(ceil_bps)


def _usage(view: ClassView) -> str:
    return f"{human_size(view.used_bytes)}/{human_size(view.limit_bytes)} {view.percent}%"


STATUS_HEADER = (
    "SLICE",
    "XID",
    "CLASS",
    "USED",
    "LIMIT",
    "THRESHOLD",
    "CEIL",
    "CAPPED",
    "NOTIFIED",
    "PERIOD END",
)
STATUS_WIDTH = 100  # columns of a terminal the table must fit
UNIT_WIDTH = 24  # a unit name longer than this is cut in the middle (show has it whole)
MIN_NAME_WIDTH = 8


def _used_percent(view: ClassView) -> str:
    percent = f"{view.percent}%" if view.percent <= 999 else ">999%"
    return f"{human_size(view.used_bytes)} {percent}"


def fit_names(names: Sequence[str], room: int) -> list[str]:
    """Names cut to ``room`` characters (at least MIN_NAME_WIDTH) in the middle, marked ``…``.

    The middle, so that slices named alike (``site_web_1``, ``site_web_2``) stay apart.
    """
    room = max(MIN_NAME_WIDTH, room)
    tail = (room - 1) // 2
    return [n if len(n) <= room else f"{n[: room - 1 - tail]}…{n[len(n) - tail :]}" for n in names]


def _per_class(views: Sequence[SliceView], values: Sequence[str]) -> list[str]:
    return [value for v, value in zip(views, values, strict=True) for _c in v.classes]


def status_table(
    state: State,
    snapshot: KernelSnapshot | None,
    now_s: int,
    colour: bool = False,
    *,
    fit: bool = True,
    only: StatusFilter = ALL,
    units: Mapping[str, str] | None = None,
    inbound: bool = False,
) -> str:
    """``status``: a row per slice class of the slices ``only`` keeps, capped slices first.

    With ``fit`` (a terminal), within STATUS_WIDTH columns: long slice names are cut
    (``show`` has the whole name); without (a pipe), names are whole, for grep.
    ``colour`` marks capped classes in red. With ``units`` (cgroup tenants: slice
    name -> unit) a UNIT column follows the name. With ``inbound`` (inbound accounting
    on) USED is what the budget counts (its direction follows the class: ``default
    in``), and RECEIVED and IN LIMIT follow the ceil.
    """
    views = slice_views(state, snapshot, only, inbound)
    missing = "-" if snapshot is None else "no class"  # a cycle will create it
    lines = [state_age(state.saved_s, now_s)]
    if not views:
        lines.append("no live slices" if only == ALL else "no live slice matches")
    else:
        rows = [
            [
                v.name,
                str(v.xid),
                c.traffic_class,
                _used_percent(c),
                human_size(c.limit_bytes),
                human_size(c.threshold_bytes),
                ceil_text(c.ceil_bps, missing),
                "yes" if c.capped else "-",
                "yes" if c.notified else "-",
                until(v.period_end_s, now_s),
            ]
            for v in views
            for c in v.classes
        ]
        header = STATUS_HEADER
        if inbound:
            at = STATUS_HEADER.index("CEIL") + 1
            header = (*STATUS_HEADER[:at], "RECEIVED", "IN LIMIT", *STATUS_HEADER[at:])
            classes = [c for v in views for c in v.classes]
            for row, c in zip(rows, classes, strict=True):
                row[2] = f"{c.traffic_class} {c.direction}"
                row[at:at] = [human_size(c.in_used_bytes), ceil_text(c.in_limit_bps)]
        if units is not None:
            header = (STATUS_HEADER[0], "UNIT", *STATUS_HEADER[1:])
            whole = [units.get(v.name, "-") for v in views]
            shown = [fit_names([u], UNIT_WIDTH)[0] for u in whole] if fit else whole
            rows = [
                [row[0], unit, *row[1:]]
                for row, unit in zip(rows, _per_class(views, shown), strict=True)
            ]
        # what the columns after the name take, each with its two-space gap
        others = sum(w + len(COLUMN_GAP) for w in column_widths(header, rows)[1:])
        if fit:
            for row, name in zip(
                rows, fit_names([r[0] for r in rows], STATUS_WIDTH - others), strict=True
            ):
                row[0] = name
        highlight = [colour and c.capped for v in views for c in v.classes]
        lines += render_table(header, rows, highlight)
    if state.ledger:
        lines.append(f"{len(state.ledger)} dead slice(s) in the ledger (bwenforcer ledger)")
    return "\n".join(lines)


LEDGER_HEADER = ("SLICE", "LAST XID", "DIED", "DEFAULT USED/LIMIT", "EXEMPT USED/LIMIT", "EXPIRES")


def ledger_json(state: State) -> dict[str, Any]:
    """``ledger --json``: ``{"ledger": [...]}``, entries as in ``status --json``."""
    return {"ledger": [ledger_entry_json(name, entry) for name, entry in ledger_entries(state)]}


def ledger_table(state: State, now_s: int) -> str:
    """``ledger``: dead slices with their usage and when their entry expires."""
    lines = [state_age(state.saved_s, now_s)]
    entries = ledger_entries(state)
    if not entries:
        lines.append("the ledger is empty")
        return "\n".join(lines)
    rows = []
    for name, entry in entries:
        st = entry.slice
        views = [class_view(st.cls(tc), tc, None) for tc in TRAFFIC_CLASSES]
        expires = until(entry.expires_s, now_s)
        rows.append(
            (
                name,
                str(st.xid),
                until(entry.died_s, now_s),
                _usage(views[0]),
                _usage(views[1]),
                expires if entry.expires_s > now_s else f"due ({expires}), purged next cycle",
            )
        )
    return "\n".join(lines + render_table(LEDGER_HEADER, rows))

"""What operators see and do by hand: status, show, ledger and reset, as pure functions.

Everything here works on plain data (the saved state, a kernel snapshot, the
desired slices) with the time passed in; the ``status``/``show``/``ledger``/``reset``
verbs in :mod:`bwenforcer.commands.inspect` do the reading and writing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .layout import TRAFFIC_CLASSES, TrafficClass
from .model import (
    ClassOp,
    ClassPolicy,
    ClassRates,
    ClassState,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
)
from .policy import class_cap_bps, counter_delta, uncapped_rates
from .slices import ATTRIBUTES
from .textable import render_table
from .units import human_duration, human_rate, human_size

# --- status ------------------------------------------------------------------


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

    @property
    def fraction(self) -> float:
        """Share of the budget used (1.0 = the whole limit)."""
        if self.limit_bytes <= 0:
            return 1.0 if self.used_bytes > 0 else 0.0
        return self.used_bytes / self.limit_bytes

    @property
    def percent(self) -> int:
        """Whole percent of the budget used, rounded down so 100 % means the limit is reached."""
        if self.limit_bytes <= 0:
            return 100 if self.used_bytes > 0 else 0
        return self.used_bytes * 100 // self.limit_bytes


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


def _last_applied(cs: ClassState) -> int | None:
    return cs.ceil_bps or None  # 0: the agent never applied a ceil


def _kernel_class(
    snapshot: KernelSnapshot | None, xid: int, traffic_class: TrafficClass
) -> KernelClass | None:
    if snapshot is None:
        return None
    found = snapshot.slices.get(xid)
    return None if found is None else found.cls(traffic_class)


def class_view(cs: ClassState, traffic_class: TrafficClass, ceil_bps: int | None) -> ClassView:
    """A class state with the ceil to show."""
    return ClassView(
        traffic_class,
        cs.used_bytes,
        cs.policy.limit_bytes,
        cs.policy.threshold_bytes,
        ceil_bps,
        cs.capped,
        cs.notified,
    )


def slice_view(st: SliceState, snapshot: KernelSnapshot | None) -> SliceView:
    """A slice with its current ceils: the kernel's, or the last applied without a snapshot."""

    def view(tc: TrafficClass) -> ClassView:
        cs = st.cls(tc)
        if snapshot is None:
            return class_view(cs, tc, _last_applied(cs))
        kc = _kernel_class(snapshot, st.xid, tc)
        return class_view(cs, tc, None if kc is None else kc.rates.max_rate_bps)

    return SliceView(
        st.name, st.xid, st.period_start_s, st.period_end_s, view("default"), view("exempt")
    )


def status_order(view: SliceView) -> tuple[bool, float, str]:
    """Sort key: capped slices first, then by share of budget used, highest first."""
    return (not view.capped, -max(c.fraction for c in view.classes), view.name)


def slice_views(state: State, snapshot: KernelSnapshot | None) -> list[SliceView]:
    """Every live slice, in status order."""
    return sorted((slice_view(st, snapshot) for st in state.slices.values()), key=status_order)


def class_json(view: ClassView) -> dict[str, Any]:
    """One class with the keys of DESIGN.md "Interfaces" (ceil in bit/s, null if unknown)."""
    return {
        "used_bytes": view.used_bytes,
        "limit_bytes": view.limit_bytes,
        "threshold_bytes": view.threshold_bytes,
        "ceil": view.ceil_bps,
        "capped": view.capped,
        "notified": view.notified,
    }


def _classes_json(views: Iterable[ClassView]) -> dict[str, Any]:
    return {v.traffic_class: class_json(v) for v in views}


def ledger_entry_json(name: str, entry: LedgerEntry) -> dict[str, Any]:
    """A ledger entry: ``name xid died_at expires_at`` and its classes (last applied ceils)."""
    st = entry.slice
    return {
        "name": name,
        "xid": st.xid,
        "died_at": entry.died_s,
        "expires_at": entry.expires_s,
        "classes": _classes_json(
            class_view(st.cls(tc), tc, _last_applied(st.cls(tc))) for tc in TRAFFIC_CLASSES
        ),
    }


def ledger_entries(state: State) -> list[tuple[str, LedgerEntry]]:
    """Ledger entries, the soonest to expire first."""
    return sorted(state.ledger.items(), key=lambda item: (item[1].expires_s, item[0]))


def status_json(state: State, snapshot: KernelSnapshot | None) -> dict[str, Any]:
    """``status --json``: ``{"slices": [...], "ledger": [...]}`` as in DESIGN.md."""
    return {
        "slices": [
            {
                "name": v.name,
                "xid": v.xid,
                "period_start": v.period_start_s,
                "period_end": v.period_end_s,
                "classes": _classes_json(v.classes),
            }
            for v in slice_views(state, snapshot)
        ],
        "ledger": [ledger_entry_json(name, entry) for name, entry in ledger_entries(state)],
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


def _ceil_text(ceil_bps: int | None, unknown: str = "-") -> str:
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


def status_table(
    state: State, snapshot: KernelSnapshot | None, now_s: int, colour: bool = False
) -> str:
    """``status``: a row per slice class, capped slices first, within STATUS_WIDTH columns.

    Long slice names are cut (``show`` has the whole name); ``colour`` marks capped
    classes in red.
    """
    views = slice_views(state, snapshot)
    missing = "-" if snapshot is None else "no class"  # a cycle will create it
    lines = [state_age(state.saved_s, now_s)]
    if not views:
        lines.append("no live slices")
    else:
        rows = [
            [
                v.name,
                str(v.xid),
                c.traffic_class,
                _used_percent(c),
                human_size(c.limit_bytes),
                human_size(c.threshold_bytes),
                _ceil_text(c.ceil_bps, missing),
                "yes" if c.capped else "-",
                "yes" if c.notified else "-",
                until(v.period_end_s, now_s),
            ]
            for v in views
            for c in v.classes
        ]
        others = sum(max(len(r[i]) for r in [STATUS_HEADER, *rows]) + 2 for i in range(1, 10))
        for row, name in zip(
            rows, fit_names([r[0] for r in rows], STATUS_WIDTH - others), strict=True
        ):
            row[0] = name
        highlight = [colour and c.capped for v in views for c in v.classes]
        lines += render_table(STATUS_HEADER, rows, highlight)
    if state.ledger:
        lines.append(f"{len(state.ledger)} dead slice(s) in the ledger (bwenforcer ledger)")
    return "\n".join(lines)


# --- ledger ------------------------------------------------------------------

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


# --- show --------------------------------------------------------------------


@dataclass(frozen=True)
class HourUsage:
    """Bytes one slice sent in one hour, and how long each class was capped in it."""

    start_s: int
    default_bytes: int
    exempt_bytes: int
    capped_default_s: int = 0
    capped_exempt_s: int = 0


@dataclass(frozen=True)
class SliceReport:
    """Everything known about one slice, gathered by the ``show`` verb."""

    name: str
    xid: int | None
    live: SliceState | None = None
    ledger: LedgerEntry | None = None
    desired: DesiredSlice | None = None
    kernel: KernelSlice | None = None
    kernel_available: bool = False
    history: tuple[HourUsage, ...] = ()

    @property
    def status(self) -> str:
        """``live``, ``dead`` (in the ledger) or ``new`` (not yet seen by a cycle)."""
        if self.live is not None:
            return "live"
        return "dead" if self.ledger is not None else "new"


def _parse_xid(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def find_slice(state: State, desired: Sequence[DesiredSlice], text: str) -> SliceReport | None:
    """The slice named by ``text`` (a name or an xid) in the state, ledger or desired set."""
    xid = _parse_xid(text)
    live = next((st for st in state.slices.values() if st.name == text or st.xid == xid), None)
    want = next((d for d in desired if d.name == text or d.xid == xid), None)
    name = live.name if live else want.name if want else text
    entry = state.ledger.get(name)
    if entry is None and xid is not None and live is None and want is None:
        name, entry = next(
            ((n, e) for n, e in state.ledger.items() if e.slice.xid == xid), (text, None)
        )
    if live is None and want is None and entry is None:
        return None
    found_xid = live.xid if live else want.xid if want else entry.slice.xid if entry else None
    return SliceReport(name=name, xid=found_xid, live=live, ledger=entry, desired=want)


@dataclass(frozen=True)
class ShowClass:
    """One class of a shown slice: saved state, policy, what the kernel has."""

    traffic_class: TrafficClass
    state: ClassState | None  # None: the slice has not been seen by a cycle yet
    policy: ClassPolicy  # in force: the saved one, or the desired one for a new slice
    pending: ClassPolicy | None  # the desired policy when it differs: applied next cycle
    kernel: KernelClass | None
    origin: Mapping[str, str]  # policy field ("limit", "min_rate", …) -> "rspec" | "defaults"

    @property
    def ceil_bps(self) -> int | None:
        """The kernel's ceil, else the last applied one."""
        if self.kernel is not None:
            return self.kernel.rates.max_rate_bps
        return None if self.state is None else _last_applied(self.state)

    @property
    def uncounted_bytes(self) -> int | None:
        """Bytes the kernel counted since the last cycle read it (counted next cycle)."""
        if self.kernel is None or self.state is None:
            return None
        return counter_delta(self.kernel.bytes, self.state.last_counter_bytes)


def _shown_state(report: SliceReport) -> SliceState | None:
    if report.live is not None:
        return report.live
    return None if report.ledger is None else report.ledger.slice


def show_classes(report: SliceReport) -> tuple[ShowClass, ...]:
    """Both classes of a found slice, default first."""
    st = _shown_state(report)
    out = []
    for tc in TRAFFIC_CLASSES:
        cs = None if st is None else st.cls(tc)
        wanted = None if report.desired is None else report.desired.policy(tc)
        policy = cs.policy if cs is not None else wanted
        assert policy is not None  # find_slice finds nothing without state or desired slice
        kc = None if report.kernel is None else report.kernel.cls(tc)
        origin = {} if report.desired is None else report.desired.origin
        fields = {f: origin[a] for f, a in ATTRIBUTES[tc].items() if a in origin}
        out.append(ShowClass(tc, cs, policy, wanted if wanted != policy else None, kc, fields))
    return tuple(out)


def _policy_json(policy: ClassPolicy) -> dict[str, int]:
    return {
        "limit_bytes": policy.limit_bytes,
        "threshold_bytes": policy.threshold_bytes,
        "min_rate": policy.min_rate_bps,
        "max_rate": policy.max_rate_bps,
        "share": policy.share,
    }


def rates_json(rates: ClassRates) -> dict[str, int]:
    """A class's rates with the keys of ``tc get --json``: ``min_rate max_rate share``."""
    return {"min_rate": rates.min_rate_bps, "max_rate": rates.max_rate_bps, "share": rates.share}


def _show_class_json(c: ShowClass) -> dict[str, Any]:
    cs = c.state
    return {
        "used_bytes": None if cs is None else cs.used_bytes,
        **_policy_json(c.policy),
        "ceil": c.ceil_bps,
        "capped": cs is not None and cs.capped,
        "notified": cs is not None and cs.notified,
        "last_counter_bytes": None if cs is None else cs.last_counter_bytes,
        "kernel": None
        if c.kernel is None
        else {
            "bytes": c.kernel.bytes,
            **rates_json(c.kernel.rates),
            "uncounted_bytes": c.uncounted_bytes,
        },
        "next_cycle": None if c.pending is None else _policy_json(c.pending),
    }


def show_json(report: SliceReport) -> dict[str, Any]:
    """``show --json``: the slice, its classes, attribute origins, ledger entry and history."""
    st = _shown_state(report)
    entry = report.ledger
    return {
        "name": report.name,
        "xid": report.xid,
        "status": report.status,
        "period_start": None if st is None else st.period_start_s,
        "period_end": None if st is None else st.period_end_s,
        "kernel_available": report.kernel_available,
        "classes": {c.traffic_class: _show_class_json(c) for c in show_classes(report)},
        "origin": None if report.desired is None else dict(sorted(report.desired.origin.items())),
        "ledger": None
        if entry is None
        else {"xid": entry.slice.xid, "died_at": entry.died_s, "expires_at": entry.expires_s},
        "history": [
            {
                "bucket_start": h.start_s,
                "default_bytes": h.default_bytes,
                "exempt_bytes": h.exempt_bytes,
                "capped_default_s": h.capped_default_s,
                "capped_exempt_s": h.capped_exempt_s,
            }
            for h in report.history
        ],
    }


def utc(instant_s: int) -> str:
    """An instant as ``2027-01-15 08:00Z``."""
    return dt.datetime.fromtimestamp(instant_s, dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def _used_text(c: ShowClass) -> str:
    if c.state is None:
        return "-"
    view = class_view(c.state, c.traffic_class, None)
    return f"{human_size(view.used_bytes)} ({view.percent}% of the limit)"


def _kernel_text(c: ShowClass, available: bool) -> str:
    if not available:
        return "unavailable"
    if c.kernel is None:
        return "no class"
    k = c.kernel
    text = f"{human_size(k.bytes)}, rate {human_rate(k.rates.min_rate_bps)}, share {k.rates.share}"
    uncounted = c.uncounted_bytes
    return text if uncounted is None else f"{text}, {human_size(uncounted)} not yet counted"


def _pending_text(c: ShowClass) -> str:
    p = c.pending
    if p is None:
        return "-"
    return (
        f"limit {human_size(p.limit_bytes)}, threshold {human_size(p.threshold_bytes)},"
        f" max {human_rate(p.max_rate_bps)}"
    )


def _class_rows(report: SliceReport) -> list[tuple[str, ...]]:
    classes = show_classes(report)

    def attr(field: str, text: str, c: ShowClass) -> str:
        return f"{text} ({c.origin[field]})" if field in c.origin else text

    cells = {
        "used": _used_text,
        "limit": lambda c: attr("limit", human_size(c.policy.limit_bytes), c),
        "threshold": lambda c: attr("threshold", human_size(c.policy.threshold_bytes), c),
        "min rate": lambda c: attr("min_rate", human_rate(c.policy.min_rate_bps), c),
        "max rate": lambda c: attr("max_rate", human_rate(c.policy.max_rate_bps), c),
        "share": lambda c: attr("share", str(c.policy.share), c),
        "ceil": lambda c: _ceil_text(c.ceil_bps),
        "capped": lambda c: "yes" if c.state is not None and c.state.capped else "no",
        "notified": lambda c: "yes" if c.state is not None and c.state.notified else "no",
        "baseline": lambda c: "-" if c.state is None else human_size(c.state.last_counter_bytes),
        "kernel": lambda c: _kernel_text(c, report.kernel_available),
        "next cycle": _pending_text,
    }
    rows = [(label, *(cell(c) for c in classes)) for label, cell in cells.items()]
    return [r for r in rows if r[0] != "next cycle" or any(c.pending for c in classes)]


def _capped_time(hour: HourUsage) -> str:
    parts = [
        f"{tc} {human_duration(seconds)}"
        for tc, seconds in (("default", hour.capped_default_s), ("exempt", hour.capped_exempt_s))
        if seconds
    ]
    return ", ".join(parts) or "-"


def show_text(report: SliceReport, now_s: int) -> str:
    """``show``: the slice as a readable page."""
    st = _shown_state(report)
    xid = "-" if report.xid is None else report.xid
    lines = [f"slice {report.name} xid {xid}: {report.status}"]
    if st is not None:
        lines.append(
            f"period {utc(st.period_start_s)} → {utc(st.period_end_s)}"
            f" (ends {until(st.period_end_s, now_s)})"
        )
    else:
        lines.append("not seen by a cycle yet: its period starts at the next sync")
    if report.ledger is not None:
        entry = report.ledger
        lines.append(
            f"ledger: died {until(entry.died_s, now_s)} as xid {entry.slice.xid},"
            f" entry expires {until(entry.expires_s, now_s)}"
        )
    lines.append("")
    lines += render_table(("", "DEFAULT", "EXEMPT"), _class_rows(report))
    lines.append("")
    if report.desired is None:
        lines.append("not in the desired slices: where its attributes came from is unknown")
    else:
        lines.append("(rspec): from the slice's attributes; (defaults): from the config")
    if not report.history:
        lines.append("history: nothing recorded in the last 24 h")
        return "\n".join(lines)
    lines.append("")
    lines += render_table(
        ("HOUR (UTC)", "DEFAULT", "EXEMPT", "CAPPED"),
        [
            (
                utc(h.start_s),
                human_size(h.default_bytes),
                human_size(h.exempt_bytes),
                _capped_time(h),
            )
            for h in report.history
        ],
    )
    return "\n".join(lines)


# --- reset -------------------------------------------------------------------


@dataclass(frozen=True)
class Forgiven:
    """A reset slice: the state to save and the kernel changes that lift its caps now."""

    state: State
    slice: SliceState
    ops: tuple[ClassOp, ...]


def lifted_rates(cs: ClassState, cap_bps: int, bwmin_bps: int) -> ClassRates:
    """The rates of an uncapped class, as a cycle would set them."""
    policy = cs.policy
    return ClassRates(
        *uncapped_rates(policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps, bwmin_bps)
    )


def forgive(
    state: State,
    xid: int,
    classes: Iterable[TrafficClass],
    snapshot: KernelSnapshot | None,
    bwmin_bps: int,
) -> Forgiven:
    """Reset the budget of a live slice's classes now; its period is kept.

    Usage goes to 0 from the kernel's current counter (or the last counter seen
    when there is no snapshot), so bytes sent before the reset are never counted;
    caps and notified flags are cleared. With a snapshot, the classes that are
    capped in the kernel get their ceil lifted (the ops to apply).
    """
    st = state.slices[xid]
    kernel = None if snapshot is None else snapshot.slices.get(xid)
    caps = (
        {}
        if snapshot is None
        else {tc: class_cap_bps(tc, snapshot.cap_bps, snapshot.bwmax_bps) for tc in TRAFFIC_CLASSES}
    )
    new: dict[TrafficClass, ClassState] = {}
    ops: list[ClassOp] = []
    for tc in dict.fromkeys(classes):
        cs = st.cls(tc)
        kc = None if kernel is None else kernel.cls(tc)
        counter = cs.last_counter_bytes if kc is None else kc.bytes
        cs = dataclasses.replace(
            cs, used_bytes=0, last_counter_bytes=counter, capped=False, notified=False
        )
        if kc is not None:
            lifted = lifted_rates(cs, caps[tc], bwmin_bps)
            if kc.rates != lifted:
                ops.append(ClassOp("change", xid, tc, lifted))
            cs = dataclasses.replace(cs, ceil_bps=lifted.max_rate_bps)
        new[tc] = cs
    reset = dataclasses.replace(
        st, default=new.get("default", st.default), exempt=new.get("exempt", st.exempt)
    )
    slices = dict(state.slices)
    slices[xid] = reset
    forgiven = dataclasses.replace(state, slices=slices, resets=state.resets + 1)
    return Forgiven(forgiven, reset, tuple(ops))


def reset_line(user: str, before: SliceState, after: SliceState, classes: Iterable[str]) -> str:
    """The WARNING logged for a reset: who, which slice, and what was forgiven."""
    parts = []
    for tc in dict.fromkeys(classes):
        old, new = before.cls(tc), after.cls(tc)
        old_ceil, new_ceil = _ceil_text(_last_applied(old)), _ceil_text(_last_applied(new))
        ceil = ""
        if old_ceil != new_ceil:
            ceil = f", ceil {old_ceil} → {new_ceil}"
        elif old.capped:
            ceil = f", ceil {old_ceil} until the next cycle"
        parts.append(f"{tc} used {human_size(old.used_bytes)} → 0{ceil}")
    return f"reset by operator {user}: slice {after.name} xid {after.xid}: " + "; ".join(parts)

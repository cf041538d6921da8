"""The ``show`` view: everything known about one slice, as JSON and as a readable page.

Finds the slice by name or xid in the state, the ledger or the desired slices, then
lays out its saved classes, the policy in force and where it came from, what the
kernel has and its last 24 hours. Pure functions, the time passed in.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bwenforcer.core.grants import class_granted, counted_bytes
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import (
    AuditEntry,
    ClassPolicy,
    ClassRates,
    ClassState,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.policy import counter_delta
from bwenforcer.core.projection import HOUR_S, exhausted_at_s, last_hour_bytes
from bwenforcer.core.units import human_duration, human_rate, human_size
from bwenforcer.core.window import RING, bucket_s, horizon_s
from bwenforcer.inputs.slices import ATTRIBUTES
from bwenforcer.store.codec import audit_dict
from bwenforcer.views.report import row_json
from bwenforcer.views.status import ceil_text, class_view, last_applied_bps, until
from bwenforcer.views.table import render_table

if TYPE_CHECKING:
    from bwenforcer.history.usage import ReportRow

# The columns of ``report --json`` that ``show --json`` gives for each hour.
HISTORY_KEYS = (
    "bucket_start",
    "default_bytes",
    "exempt_bytes",
    "capped_default_s",
    "capped_exempt_s",
)


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
    history: tuple[ReportRow, ...] = ()  # hourly, the last 24 h
    unit: str | None = None  # a cgroup tenant's unit (nginx.service), as the tree has it now
    cgroup: str | None = None  # and its cgroup, below the cgroup2 mount
    audit: tuple[AuditEntry, ...] = ()  # its grants and resets kept in the state

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
    audit = tuple(a for a in state.audit if a.slice == name)
    return SliceReport(name=name, xid=found_xid, live=live, ledger=entry, desired=want, audit=audit)


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
        return None if self.state is None else last_applied_bps(self.state)

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


def _rates_json(rates: ClassRates | ClassPolicy) -> dict[str, int]:
    """A class's rates with the keys of ``tc get --json``: ``min_rate max_rate share``."""
    return {"min_rate": rates.min_rate_bps, "max_rate": rates.max_rate_bps, "share": rates.share}


def _policy_json(policy: ClassPolicy) -> dict[str, int | str | bool]:
    return {
        "limit_bytes": policy.limit_bytes,
        "threshold_bytes": policy.threshold_bytes,
        **_rates_json(policy),
        "tiers": policy.tiers,
        "taper": policy.taper,
        "pacing": policy.pacing,
        "rollover_bytes": policy.rollover_bytes,
    }


@dataclass(frozen=True)
class Projection:
    """When a live class's budget runs out at the last hour's rate."""

    rate_bps: float  # the last hour's, from the hourly history
    exhausted_at_s: float  # exhausted_at_s's: an instant, inf (not this period)


def projections(report: SliceReport, now_s: int) -> dict[TrafficClass, Projection]:
    """Each class of a live slice at the last hour's rate (from ``report.history``, the
    hourly buckets); none for a slice not live.
    """
    st = report.live
    if st is None:
        return {}
    current_s = now_s - now_s % HOUR_S
    rows = {h.bucket_start_s: h for h in report.history}
    out = {}
    for tc in TRAFFIC_CLASSES:
        current, previous = rows.get(current_s), rows.get(current_s - HOUR_S)
        last_hour = last_hour_bytes(
            now_s,
            current_s,
            0 if current is None else getattr(current, f"{tc}_bytes"),
            0 if previous is None else getattr(previous, f"{tc}_bytes"),
        )
        cs = st.cls(tc)
        granted = class_granted(report.audit, st.name, tc, now_s)
        at_s = exhausted_at_s(
            limit_bytes=cs.policy.limit_bytes,
            counted_bytes=counted_bytes(cs.used_bytes, granted + cs.carried_bytes),
            rate_bytes_per_s=last_hour / HOUR_S,
            now_s=now_s,
            period_end_s=horizon_s(st.period_end_s, cs.policy.window_s),
        )
        out[tc] = Projection(last_hour * 8 / HOUR_S, at_s)
    return out


def _show_class_json(c: ShowClass, projection: Projection | None) -> dict[str, Any]:
    cs = c.state
    at_s = None if projection is None else projection.exhausted_at_s
    return {
        "last_hour_rate": None if projection is None else round(projection.rate_bps),
        "exhausted_at": None if at_s is None or not math.isfinite(at_s) else int(at_s),
        "used_bytes": None if cs is None else cs.used_bytes,
        "carried_bytes": None if cs is None else cs.carried_bytes,
        **_policy_json(c.policy),
        "ceil": c.ceil_bps,
        "capped": cs is not None and cs.capped,
        "notified": cs is not None and cs.notified,
        "last_counter_bytes": None if cs is None else cs.last_counter_bytes,
        "kernel": None
        if c.kernel is None
        else {
            "bytes": c.kernel.bytes,
            **_rates_json(c.kernel.rates),
            "uncounted_bytes": c.uncounted_bytes,
        },
        "next_cycle": None if c.pending is None else _policy_json(c.pending),
    }


def show_json(report: SliceReport, now_s: int) -> dict[str, Any]:
    """``show --json``: the slice, its classes, attribute origins, ledger entry and history."""
    st = _shown_state(report)
    ahead = projections(report, now_s)
    entry = report.ledger
    return {
        "name": report.name,
        "xid": report.xid,
        "status": report.status,
        **({} if report.unit is None else {"unit": report.unit, "cgroup": report.cgroup}),
        "period_start": None if st is None else st.period_start_s,
        "period_end": None if st is None else st.period_end_s,
        "window_s": None if st is None else st.default.policy.window_s,
        "kernel_available": report.kernel_available,
        "classes": {
            c.traffic_class: _show_class_json(c, ahead.get(c.traffic_class))
            for c in show_classes(report)
        },
        "origin": None if report.desired is None else dict(sorted(report.desired.origin.items())),
        "ledger": None
        if entry is None
        else {"xid": entry.slice.xid, "died_at": entry.died_s, "expires_at": entry.expires_s},
        "history": [row_json(h, HISTORY_KEYS) for h in report.history],
        "audit": [audit_dict(a) for a in report.audit],
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
        "tiers": lambda c: attr("tiers", c.policy.tiers or "-", c),
        "taper": lambda c: attr("taper", c.policy.taper or "-", c),
        "pacing": lambda c: attr("pacing", "on" if c.policy.pacing else "off", c),
        "rollover": lambda c: attr(
            "rollover",
            human_size(c.policy.rollover_bytes) if c.policy.rollover_bytes else "-",
            c,
        ),
        "carried": lambda c: "-" if c.state is None else f"+{human_size(c.state.carried_bytes)}",
        "ceil": lambda c: ceil_text(c.ceil_bps),
        "capped": lambda c: "yes" if c.state is not None and c.state.capped else "no",
        "notified": lambda c: "yes" if c.state is not None and c.state.notified else "no",
        "baseline": lambda c: "-" if c.state is None else human_size(c.state.last_counter_bytes),
        "kernel": lambda c: _kernel_text(c, report.kernel_available),
        "next cycle": _pending_text,
    }
    rows = [(label, *(cell(c) for c in classes)) for label, cell in cells.items()]
    # rows of what no class has are left out: a page of today's policies stays as it was
    shown = {
        "next cycle": any(c.pending for c in classes),
        "tiers": any(c.policy.tiers for c in classes),
        "taper": any(c.policy.taper for c in classes),
        "pacing": any(not c.policy.pacing for c in classes),
        "rollover": any(c.policy.rollover_bytes for c in classes),
        "carried": any(c.state is not None and c.state.carried_bytes for c in classes),
    }
    return [r for r in rows if shown.get(r[0], True)]


def _projection_text(traffic_class: TrafficClass, p: Projection, now_s: int) -> str:
    rate = human_rate(round(p.rate_bps))
    if math.isinf(p.exhausted_at_s):
        return f"{traffic_class} {rate}, the budget lasts the period"
    if p.exhausted_at_s <= now_s:
        return f"{traffic_class} {rate}, the budget is gone"
    at_s = int(p.exhausted_at_s)
    return f"{traffic_class} {rate}, the budget runs out {until(at_s, now_s)} ({utc(at_s)})"


def _audit_text(entry: AuditEntry, now_s: int) -> str:
    """One grant or reset of the slice, for people."""
    why = f": {entry.reason}" if entry.reason else ""
    head = f"{entry.what} {entry.traffic_class}"
    if entry.what == "reset":
        forgiven = human_size(entry.size_bytes)
        return f"{head}: {forgiven} forgiven by {entry.user} {utc(entry.at_s)}{why}"
    state = "in force" if entry.in_force(now_s) else "ended"
    return (
        f"{head}: +{human_size(entry.size_bytes)} by {entry.user} {utc(entry.at_s)},"
        f" until {utc(entry.until_s)} ({state}){why}"
    )


def _capped_time(hour: ReportRow) -> str:
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
    if report.unit is not None:
        lines.append(f"unit {report.unit} (cgroup {report.cgroup})")
    if st is not None and st.default.policy.window_s:
        lines.append(
            f"rolling window {human_duration(st.default.policy.window_s)}: usage since"
            f" {utc(st.period_end_s - RING * bucket_s(st.default.policy.window_s))}; its"
            f" oldest bucket leaves {until(st.period_end_s, now_s)}"
        )
    elif st is not None:
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
    lines += [_audit_text(a, now_s) for a in report.audit]
    ahead = projections(report, now_s)
    if ahead:
        lines.append(
            "at the last hour's rate: "
            + "; ".join(_projection_text(tc, p, now_s) for tc, p in ahead.items())
        )
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
                utc(h.bucket_start_s),
                human_size(h.default_bytes),
                human_size(h.exempt_bytes),
                _capped_time(h),
            )
            for h in report.history
        ],
    )
    return "\n".join(lines)

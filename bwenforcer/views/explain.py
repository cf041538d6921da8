"""The ``explain`` view: why a slice's classes have the ceil they have.

Per class: usage, limit, grants in force, the rule that sets the ceil with its
numbers (from :func:`bwenforcer.core.policy.rule_ceil`, the planner's own), the
ceil the last cycle planned, and the ceil the kernel holds now (from a dump),
flagged where the two differ. Pure functions, the time passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bwenforcer.core.grants import class_granted, counted_bytes
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import ClassState, KernelClass, SliceState
from bwenforcer.core.policy import RateRule, format_share, rate_rule, rule_ceil, share_bytes
from bwenforcer.core.units import human_duration, human_rate, human_size
from bwenforcer.views.show import SliceReport
from bwenforcer.views.status import ceil_text


@dataclass(frozen=True)
class ExplainClass:
    """One class: its numbers, the rule in force and the ceils to compare."""

    traffic_class: TrafficClass
    state: ClassState
    rule: RateRule
    granted_bytes: int
    counted_bytes: int  # what the rules see: used less granted and carried
    applies: str  # rule_ceil's: "" (not capped), "pacing", "tier P%", "taper P%-Q%"
    ceil_now_bps: int  # the rule's ceil at now, at the usage counted by the last cycle
    why: str  # the rule with its numbers
    kernel: KernelClass | None  # None: no class, or the kernel unreadable

    @property
    def planned_bps(self) -> int:
        """The ceil the last cycle planned (and applied)."""
        return self.state.ceil_bps

    @property
    def differs(self) -> bool:
        """The kernel holds another ceil than the one planned (or no class at all)."""
        return self.kernel is None or self.kernel.rates.max_rate_bps != self.planned_bps


@dataclass(frozen=True)
class ExplainView:
    """What ``bwenforcer explain`` prints."""

    slice: SliceState
    now_s: int
    kernel_available: bool
    classes: tuple[ExplainClass, ...]


def _why(rule: RateRule, counted: int, applies: str, ceil_bps: int, left_s: int) -> str:
    if not applies:
        return (
            f"not capped: below {human_size(rule.start_bytes)}, where the first rule starts;"
            f" the max rate {human_rate(ceil_bps)}"
        )
    if applies == "pacing":
        left_bytes = max(0, rule.limit_bytes - counted)
        return (
            f"pacing from the threshold {human_size(rule.threshold_bytes)}: (limit"
            f" {human_size(rule.limit_bytes)} − {human_size(counted)}) = {human_size(left_bytes)}"
            f" over {human_duration(left_s)} left, at least the min rate"
            f" {human_rate(rule.min_rate_bps)}, at most the max rate"
            f" {human_rate(rule.max_rate_bps)}: {human_rate(ceil_bps)}"
        )
    if applies.startswith("tier"):
        tier = [t for start, t in rule.tiers if counted >= start][-1]
        return (
            f"tier: past {format_share(tier.share_bp)} of the limit"
            f" ({human_size(share_bytes(rule.limit_bytes, tier.share_bp))}) at most"
            f" {human_rate(tier.ceil_bps)}: {human_rate(ceil_bps)}"
        )
    assert rule.taper is not None
    low, high, taper = rule.taper
    return (
        f"taper: from {human_rate(rule.max_rate_bps)} at {format_share(taper.from_bp)}"
        f" ({human_size(low)}) to {human_rate(taper.ceil_bps)} at {format_share(taper.to_bp)}"
        f" ({human_size(high)}): {human_rate(ceil_bps)} at {human_size(counted)}"
    )


def explain_view(
    report: SliceReport,
    caps_bps: Mapping[TrafficClass, int],
    *,
    bwmin_bps: int,
    now_s: int,
) -> ExplainView:
    """The explanation of a live slice (``report.live`` must be set) at ``now_s``."""
    st = report.live
    assert st is not None
    classes = []
    for tc in TRAFFIC_CLASSES:
        cs = st.cls(tc)
        rule = rate_rule(cs.policy, caps_bps[tc], bwmin_bps)
        granted = class_granted(report.audit, st.name, tc, now_s)
        counted = counted_bytes(cs.used_bytes, granted + cs.carried_bytes)
        _, ceil_bps, applies = rule_ceil(rule, counted, now_s, st.period_end_s)
        why = _why(rule, counted, applies, ceil_bps, st.period_end_s - now_s)
        kernel = None if report.kernel is None else report.kernel.cls(tc)
        classes.append(ExplainClass(tc, cs, rule, granted, counted, applies, ceil_bps, why, kernel))
    return ExplainView(st, now_s, report.kernel_available, tuple(classes))


def explain_json(view: ExplainView) -> dict[str, Any]:
    """``explain --json``."""
    st = view.slice
    return {
        "name": st.name,
        "xid": st.xid,
        "now": view.now_s,
        "period_end": st.period_end_s,
        "window_s": st.default.policy.window_s,
        "kernel_available": view.kernel_available,
        "classes": {
            c.traffic_class: {
                "used_bytes": c.state.used_bytes,
                "limit_bytes": c.rule.limit_bytes,
                "threshold_bytes": c.rule.threshold_bytes,
                "granted_bytes": c.granted_bytes,
                "carried_bytes": c.state.carried_bytes,
                "counted_bytes": c.counted_bytes,
                "rule": c.applies or None,
                "explanation": c.why,
                "planned_ceil": c.planned_bps,
                "rule_ceil": c.ceil_now_bps,
                "kernel_ceil": None if c.kernel is None else c.kernel.rates.max_rate_bps,
                "differs": view.kernel_available and c.differs,
            }
            for c in view.classes
        },
    }


def explain_text(view: ExplainView) -> str:
    """``explain``: per class, the numbers, the rule and the ceils, differences flagged."""
    st = view.slice
    left = human_duration(st.period_end_s - view.now_s)
    window_s = st.default.policy.window_s
    if window_s:
        head = (
            f"a rolling window of {human_duration(window_s)}: its oldest bucket leaves it in {left}"
        )
    else:
        head = f"the period ends in {left}"
    lines = [f"slice {st.name} xid {st.xid}: {head}"]
    for c in view.classes:
        granted = f" + {human_size(c.granted_bytes)} granted" if c.granted_bytes else ""
        if c.state.carried_bytes:
            granted += f" + {human_size(c.state.carried_bytes)} rolled over"
        kernel = (
            "unavailable"
            if not view.kernel_available
            else ("no class" if c.kernel is None else ceil_text(c.kernel.rates.max_rate_bps))
        )
        flag = "  ← DIFFERS from the plan" if view.kernel_available and c.differs else ""
        lines += [
            "",
            f"{c.traffic_class}: used {human_size(c.state.used_bytes)} of"
            f" {human_size(c.rule.limit_bytes)}{granted}",
            f"  {c.why}",
            f"  ceil planned by the last cycle {ceil_text(c.planned_bps)}, by the rule now"
            f" {ceil_text(c.ceil_now_bps)}, in the kernel {kernel}{flag}",
        ]
    return "\n".join(lines)

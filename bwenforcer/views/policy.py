"""The ``policy`` view: the ceil by usage a class's policy gives, the table operators publish.

Every row comes from :func:`bwenforcer.core.policy.rule_ceil`, the function the
planner's rates come from, so the table and the kernel cannot disagree. Pure
functions, the time passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bwenforcer.core.direction import counts
from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import ClassPolicy
from bwenforcer.core.policy import (
    CeilRow,
    RateRule,
    ceil_table,
    format_share,
    rate_rule,
    table_usages,
)
from bwenforcer.core.units import human_duration, human_rate, human_size
from bwenforcer.views.table import render_table


@dataclass(frozen=True)
class PolicyClass:
    """One class's policy, its rule and its table."""

    traffic_class: TrafficClass
    policy: ClassPolicy
    rule: RateRule
    rows: tuple[CeilRow, ...]


@dataclass(frozen=True)
class PolicyView:
    """What ``bwenforcer policy`` prints: whose policy, at which time, both classes."""

    name: str | None  # None: the config's defaults
    xid: int | None
    now_s: int
    period_end_s: int
    classes: tuple[PolicyClass, ...]


def policy_view(
    name: str | None,
    xid: int | None,
    policies: Mapping[TrafficClass, ClassPolicy],
    caps_bps: Mapping[TrafficClass, int],
    *,
    bwmin_bps: int,
    now_s: int,
    period_end_s: int,
    inbound: bool = False,
) -> PolicyView:
    """The table of both classes at ``now_s`` in a period ending at ``period_end_s``
    (``inbound``: inbound accounting on; a budget counting both directions gives each
    the rate of its table, paced at half the spread as the planner does).
    """
    classes = []
    for tc in TRAFFIC_CLASSES:
        rule = rate_rule(policies[tc], caps_bps[tc], bwmin_bps)
        out, in_ = counts(policies[tc], inbound)
        rows = ceil_table(rule, table_usages(rule), now_s, period_end_s, 2 if out and in_ else 1)
        classes.append(PolicyClass(tc, policies[tc], rule, rows))
    return PolicyView(name, xid, now_s, period_end_s, tuple(classes))


def used_percent(used_bytes: int, limit_bytes: int) -> str:
    """Usage as a share of the limit, as tiers are written (``"75%"``); "-" for no limit."""
    if limit_bytes <= 0:
        return "-"
    return format_share(used_bytes * 10_000 // limit_bytes)


def _row_json(row: CeilRow, limit_bytes: int) -> dict[str, Any]:
    return {
        "used_bytes": row.used_bytes,
        "used_percent": used_percent(row.used_bytes, limit_bytes),
        "min_rate": row.rate_bps,
        "ceil": row.ceil_bps,
        "capped": bool(row.applies),
        "rule": row.applies or None,
    }


def policy_json(view: PolicyView) -> dict[str, Any]:
    """``policy --json``."""
    return {
        "name": view.name,
        "xid": view.xid,
        "now": view.now_s,
        "period_end": view.period_end_s,
        "classes": {
            c.traffic_class: {
                "limit_bytes": c.policy.limit_bytes,
                "threshold_bytes": c.policy.threshold_bytes,
                "min_rate": c.rule.min_rate_bps,
                "max_rate": c.rule.max_rate_bps,
                "tiers": c.policy.tiers,
                "taper": c.policy.taper,
                "pacing": c.rule.pacing,
                "window_s": c.policy.window_s,
                "rows": [_row_json(r, c.policy.limit_bytes) for r in c.rows],
            }
            for c in view.classes
        },
    }


def policy_text(view: PolicyView) -> str:
    """``policy``: per class, its rules in a line and the ceil by usage."""
    whose = "the config's defaults" if view.name is None else f"slice {view.name} xid {view.xid}"
    left_s = max(0, view.period_end_s - view.now_s)
    window_s = view.classes[0].policy.window_s if view.classes else 0
    if window_s:
        pacing = (
            f"a rolling window of {human_duration(window_s)}, pacing with"
            f" {human_duration(left_s)} until its oldest bucket leaves it"
        )
    else:
        pacing = f"pacing with {human_duration(left_s)} left in the period"
    lines = [
        f"policy of {whose}, {pacing}",
        "ceil = the lowest of the rules reached: pacing from the threshold (if on)"
        " ((limit − used)·8 / time left, at least the min rate), the tier reached,"
        " the taper",
    ]
    for c in view.classes:
        p = c.policy
        lines += [
            "",
            f"{c.traffic_class}: limit {human_size(p.limit_bytes)},"
            f" threshold {human_size(p.threshold_bytes)}, max rate"
            f" {human_rate(c.rule.max_rate_bps)}, min rate {human_rate(c.rule.min_rate_bps)},"
            f" tiers {p.tiers or '-'}, taper {p.taper or '-'}, pacing"
            f" {'on' if c.rule.pacing else 'off'}",
        ]
        lines += render_table(
            ("USED", "OF LIMIT", "CEIL", "RULE"),
            [
                (
                    human_size(r.used_bytes),
                    used_percent(r.used_bytes, p.limit_bytes),
                    human_rate(r.ceil_bps),
                    r.applies or "-",
                )
                for r in c.rows
            ],
        )
    return "\n".join(lines)

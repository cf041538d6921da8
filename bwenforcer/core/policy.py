"""The budget and rate rules (docs/architecture.md, "Policy"): pure functions of plain numbers.

Every rule about a class's rates lives here and nowhere else: which cap a class
is under, the share of the cap a min rate may take, the default threshold, the
rates of an uncapped and of a capped class. The planner, the operator views,
the slice sources, the legacy importer and ``tc`` all call these.
"""

from __future__ import annotations

from bwenforcer.core.layout import TrafficClass, kernel_rate_bps
from bwenforcer.core.model import ClassRates

MIN_RATE_SHARE_OF_CAP = 4  # a class's min rate is at most 25 % of its cap
THRESHOLD_PERCENT = 80  # threshold when none is given: 80 % of the limit


def class_cap_bps(traffic_class: TrafficClass, node_cap_bps: int, bwmax_bps: int) -> int:
    """The ceiling a slice class lives under: the node cap for default traffic, the
    line rate (bwmax) for exempt traffic (HTB parents 1:100 and 1:20).
    """
    return node_cap_bps if traffic_class == "default" else bwmax_bps


def tree_rates_bps(node_cap_bps: int, bwmax_bps: int) -> tuple[int, int]:
    """``(node cap, line rate)`` of the tree: the line rate (bwmax) is never below the
    node cap (raised to it, as bwlimit did).
    """
    return node_cap_bps, max(bwmax_bps, node_cap_bps)


def threshold_bytes(
    limit_bytes: int, given_bytes: int | None, default_bytes: int | None, limit_given: bool
) -> int:
    """A class's threshold: the one given; else the configured default, unless the
    limit was given without one (a default threshold belongs to the default limit);
    else 80 % of the limit. Never above the limit.
    """
    if given_bytes is not None:
        threshold = given_bytes
    elif default_bytes is not None and not limit_given:
        threshold = default_bytes
    else:
        threshold = limit_bytes * THRESHOLD_PERCENT // 100
    return min(threshold, limit_bytes)


def class_limits(
    min_rate_bps: int, max_rate_bps: int, share: int, cap_bps: int
) -> tuple[int, int, int]:
    """``(min rate, max rate, share)`` a policy may have under its class cap: the min
    rate at most a quarter of the cap, the max rate at most the cap, a share ≥ 1.
    """
    return (
        min(min_rate_bps, cap_bps // MIN_RATE_SHARE_OF_CAP),
        min(max_rate_bps, cap_bps),
        max(1, share),
    )


def uncapped_rates(
    min_rate_bps: int, max_rate_bps: int, share: int, cap_bps: int, bwmin_bps: int
) -> tuple[int, int, int]:
    """``(rate, ceil, share)`` of a class that is not capped, as the kernel holds them."""
    lo, hi, share = class_limits(min_rate_bps, max_rate_bps, share, cap_bps)
    return (*clamp_rates(lo, hi, cap_bps, bwmin_bps), share)


def clamp_rates(
    min_rate_bps: int, max_rate_bps: int, cap_bps: int, bwmin_bps: int
) -> tuple[int, int]:
    """Clamp a class's (rate, ceil) like bwlimit: ceil ≤ cap, rate ≤ ceil, both ≥ bwmin.

    The result is what the kernel will hold (whole bytes per second).
    """
    floor_bps = kernel_rate_bps(max(bwmin_bps, 8))
    ceil_bps = max(floor_bps, kernel_rate_bps(min(max_rate_bps, cap_bps)))
    rate_bps = max(floor_bps, kernel_rate_bps(min(min_rate_bps, ceil_bps)))
    return rate_bps, ceil_bps


def capped_ceil_bps(
    *,
    used_bytes: int,
    limit_bytes: int,
    now_s: int,
    period_end_s: int,
    min_rate_bps: int,
    max_rate_bps: int,
) -> int:
    """Ceil that spreads the rest of the budget over the rest of the period.

    ``max(min_rate, (limit − used)·8 / (period_end − now))``, never above the max
    rate. Safe where the historic formula was not: no time left (division by
    zero) and a budget already overdrawn (negative rate) both give the min rate.
    """
    left_s = period_end_s - now_s
    left_bytes = limit_bytes - used_bytes
    if left_s <= 0 or left_bytes <= 0:
        return min(min_rate_bps, max_rate_bps)
    spread_bps = (left_bytes * 8) // left_s
    return min(max_rate_bps, max(min_rate_bps, spread_bps))


def counter_delta(counter_bytes: int, last_counter_bytes: int) -> int:
    """Bytes sent since the last reading; a counter that went back restarted from 0."""
    if counter_bytes >= last_counter_bytes:
        return counter_bytes - last_counter_bytes
    return counter_bytes


def manual_rates(
    base: ClassRates | None,
    min_rate_bps: int | None,
    max_rate_bps: int | None,
    share: int | None,
    *,
    cap_bps: int,
    bwmin_bps: int,
) -> ClassRates:
    """A class's rates as ``tc on`` sets them: each value given replaces ``base``'s (the
    class's current rates; for a new class bwmin, the cap, share 1), then clamped like
    bwlimit under the class cap ``cap_bps``; a share is at least 1.
    """
    if base is None:
        base = ClassRates(bwmin_bps, cap_bps, 1)
    rate_bps, ceil_bps = clamp_rates(
        base.min_rate_bps if min_rate_bps is None else min_rate_bps,
        base.max_rate_bps if max_rate_bps is None else max_rate_bps,
        cap_bps,
        bwmin_bps,
    )
    return ClassRates(rate_bps, ceil_bps, base.share if share is None else max(1, share))


def system_class_rates(
    traffic_class: TrafficClass, node_cap_bps: int, bwmax_bps: int, bwmin_bps: int
) -> ClassRates:
    """Rates of a class of the tree's own slices (root and default): bwmin guaranteed,
    the whole class cap as ceil, share 1.
    """
    cap_bps = class_cap_bps(traffic_class, node_cap_bps, bwmax_bps)
    return manual_rates(None, None, None, None, cap_bps=cap_bps, bwmin_bps=bwmin_bps)

"""The rate rules of DESIGN.md "Policy": pure functions of plain numbers."""

from __future__ import annotations

from .layout import kernel_rate_bps


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

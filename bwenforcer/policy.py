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

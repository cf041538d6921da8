"""When a class's budget runs out at a given rate: the projection ``show`` and the
metrics give at the last hour's rate.
"""

from __future__ import annotations

import math

HOUR_S = 3600


def exhausted_at_s(
    *, limit_bytes: int, counted_bytes: int, rate_bytes_per_s: float, now_s: int, period_end_s: int
) -> float:
    """The instant the budget runs out sending ``rate_bytes_per_s`` from ``now_s``: ``now_s``
    if it is gone already, ``inf`` if not before the period ends (or nothing is sent),
    ``nan`` if the rate is unknown. ``counted_bytes`` is the usage the rules see (used
    less grants in force).
    """
    left_bytes = limit_bytes - counted_bytes
    if left_bytes <= 0:
        return float(now_s)
    if math.isnan(rate_bytes_per_s):
        return math.nan
    if rate_bytes_per_s <= 0:
        return math.inf
    at_s = now_s + left_bytes / rate_bytes_per_s
    return at_s if at_s < period_end_s else math.inf


def last_hour_bytes(
    now_s: int, current_start_s: int, current_bytes: int, previous_bytes: int
) -> float:
    """Bytes of the hour before ``now_s`` from two hourly buckets: the current one (from
    ``current_start_s``, all of it in that hour) and the share of the one before it that
    falls in the hour, its bytes taken as spread evenly.
    """
    elapsed_s = min(HOUR_S, max(0, now_s - current_start_s))
    return current_bytes + previous_bytes * (HOUR_S - elapsed_s) / HOUR_S

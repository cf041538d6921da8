"""Recording periods: rolling and calendar-anchored."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.periods import anchored_period, first_period, next_period
from bwenforcer.core.settings import PeriodAnchor

UTC = ZoneInfo("UTC")


def ts(*args: int, tz: str = "UTC") -> int:
    return int(dt.datetime(*args, tzinfo=ZoneInfo(tz)).timestamp())


def test_rolling_first_period_starts_now() -> None:
    assert first_period(1000, 86400, None) == (1000, 87400)


def test_daily_anchor_at_time_of_day_in_zone() -> None:
    anchor = PeriodAnchor("day", at_s=2 * 3600, tz="Europe/Berlin")
    now = ts(2026, 11, 22, 1, 0, tz="Europe/Berlin")  # before today's 02:00
    assert anchored_period(now, anchor) == (
        ts(2026, 11, 21, 2, 0, tz="Europe/Berlin"),
        ts(2026, 11, 22, 2, 0, tz="Europe/Berlin"),
    )
    later = ts(2026, 11, 22, 2, 0, tz="Europe/Berlin")  # exactly at the boundary: new period
    assert anchored_period(later, anchor)[0] == later


def test_daily_anchor_across_dst_is_23_hours() -> None:
    anchor = PeriodAnchor("day", tz="Europe/Berlin")
    start, end = anchored_period(ts(2026, 3, 29, 12, 0, tz="Europe/Berlin"), anchor)
    assert end - start == 23 * 3600


def test_weekly_anchor_on_monday() -> None:
    anchor = PeriodAnchor("week", weekday=0)
    start, end = anchored_period(ts(2026, 11, 22, 12, 0), anchor)  # a Sunday
    assert start == ts(2026, 11, 16) and end == ts(2026, 11, 23)


def test_monthly_anchor_on_a_day() -> None:
    anchor = PeriodAnchor("month", day=15)
    assert anchored_period(ts(2026, 11, 22), anchor) == (ts(2026, 11, 15), ts(2026, 12, 15))
    assert anchored_period(ts(2026, 1, 3), anchor) == (ts(2025, 12, 15), ts(2026, 1, 15))


def test_next_rolling_period_keeps_phase() -> None:
    assert next_period(1000, 1000, 100, None) == (1000, 1100)
    assert next_period(1000, 1250, 100, None) == (1200, 1300)


@given(
    now=st.integers(0, 4_000_000_000),
    every=st.sampled_from(["day", "week", "month"]),
    at_s=st.integers(0, 86_399),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    weekday=st.integers(0, 6),
    day=st.integers(1, 28),
)
def test_anchored_period_contains_now(
    now: int, every: str, at_s: int, tz: str, weekday: int, day: int
) -> None:
    start, end = anchored_period(now, PeriodAnchor(every, at_s, tz, weekday, day))  # type: ignore[arg-type]
    assert start <= now < end
    assert end - start >= 22 * 3600

"""Recording periods: rolling and calendar-anchored."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.model import BootClock, State
from bwenforcer.core.periods import (
    anchored_period,
    clock_check,
    first_period,
    next_period,
    reanchor_after_s,
)
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


# --- clock references: a stepped clock and a real outage -------------------------------

DAY_S = 86_400
T0 = 1_800_000_000


def _held_twice_then(boot_after: BootClock, now_after: int) -> tuple[str | None, ...]:
    """Clock checks of a state saved at T0 in boot "b1" at boottime 1000: two cycles with the
    wall clock 2 days ahead of the boot clock, then one at ``now_after`` / ``boot_after``.
    """
    state = State(saved_s=T0, boot_id="b1", boottime_s=1000, clock_ref_s=T0)
    reasons = []
    for i in (1, 2):
        now = T0 + 2 * DAY_S + 300 * i
        reason, ref = clock_check(state, now, BootClock("b1", 1000 + 300 * i), DAY_S, None)
        reasons.append(reason)
        state = State(saved_s=now, boot_id=ref[0], boottime_s=ref[1], clock_ref_s=ref[2])
    reason, ref = clock_check(state, now_after, boot_after, DAY_S, None)
    return (*reasons, reason, *ref)


def test_a_wrong_clock_is_held_for_as_long_as_it_stays_wrong_in_the_same_boot() -> None:
    checks = _held_twice_then(BootClock("b1", 1900), T0 + 2 * DAY_S + 900)
    first, second, third = checks[:3]
    assert first is not None and "ahead of the boot clock" in first
    assert second is not None  # not only the first cycle after the step
    assert third is not None
    corrected = _held_twice_then(BootClock("b1", 1900), T0 + 905)  # set right again
    assert corrected[2] is None and corrected[3:] == ("b1", 1900, T0 + 905)


def test_a_real_outage_is_trusted_a_reboot_or_a_boot_clock_that_kept_pace() -> None:
    state = State(saved_s=T0, boot_id="b1", boottime_s=1000, clock_ref_s=T0)
    three_days = T0 + 3 * DAY_S
    # rebooted: another boot id, the clock ahead (more than a period and a day)
    assert clock_check(state, three_days, BootClock("b2", 40), DAY_S, None) == (
        None,
        ("b2", 40, three_days),
    )
    # suspended three days: the boot clock counted them too
    suspended = BootClock("b1", 1000 + 3 * DAY_S)
    assert clock_check(state, three_days, suspended, DAY_S, None)[0] is None
    # rebooted with a clock behind the last one trusted: held, the reference kept
    reason, ref = clock_check(state, T0 - DAY_S, BootClock("b2", 40), DAY_S, None)
    assert reason is not None and "behind" in reason and ref == ("b1", 1000, T0)
    # no reference (a schema-2 state): the last save decides, as before
    old = State(saved_s=T0)
    assert clock_check(old, three_days, BootClock("b2", 40), DAY_S, None)[0] is not None
    assert clock_check(old, T0 + 300, BootClock("b2", 40), DAY_S, None) == (
        None,
        ("b2", 40, T0 + 300),
    )


def test_a_wrong_reference_is_given_up_after_a_period_not_held_for_the_whole_boot() -> None:
    # the first cycle after a boot ran on the RTC's time, an hour behind; then NTP
    # stepped the clock: the reference was the wrong one, the wall clock is right
    state = State(saved_s=T0, boot_id="b1", boottime_s=30, clock_ref_s=T0)
    held = 0
    for i in range(1, 400):  # every 5 minutes, well past a day
        now, boottime = T0 + 3600 + 300 * i, 30 + 300 * i
        reason, ref = clock_check(state, now, BootClock("b1", boottime), DAY_S, None)
        held += reason is not None
        if reason is None:
            assert ref == ("b1", boottime, now)  # the wall clock is the new reference
            break
        state = State(saved_s=now, boot_id=ref[0], boottime_s=ref[1], clock_ref_s=ref[2])
    assert held == DAY_S // 300 - 1  # held a whole period (here a day), then trusted
    # with hourly periods, held an hour; with monthly anchors, a day at most
    assert reanchor_after_s(3600, None) == 3600
    assert reanchor_after_s(DAY_S, PeriodAnchor("month", day=1)) == DAY_S


def test_no_reference_is_taken_from_a_clock_the_kernel_says_is_not_synchronised() -> None:
    # first cycle of a boot before NTP: trusted as before, but no reference taken
    empty = State()
    rtc = BootClock("b2", 30, synced=False)
    assert clock_check(empty, T0, rtc, DAY_S, None) == (None, ("", 0, 0))
    # NTP steps the clock an hour forward and synchronises it: trusted, reference taken
    synced = BootClock("b2", 330)
    assert clock_check(empty, T0 + 3900, synced, DAY_S, None) == (None, ("b2", 330, T0 + 3900))
    # a reference of an earlier boot is kept while the clock is not synchronised
    old = State(saved_s=T0, boot_id="b1", boottime_s=1000, clock_ref_s=T0)
    assert clock_check(old, T0 + 900, rtc, DAY_S, None) == (None, ("b1", 1000, T0))
    # same boot, not synchronised: trusted within the slack, the reference kept
    same = State(saved_s=T0, boot_id="b2", boottime_s=30, clock_ref_s=T0)
    later = BootClock("b2", 330, synced=False)
    assert clock_check(same, T0 + 300, later, DAY_S, None) == (None, ("b2", 30, T0))

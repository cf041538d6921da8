"""Recording periods: rolling per slice, or aligned to the calendar (pure)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from bwenforcer.core.model import BootClock, State
from bwenforcer.core.settings import PeriodAnchor

DAY_S = 86400
# The longest period of each calendar anchor (a month of 31 days, a week, a day
# of 25 hours across a DST change).
_ANCHOR_LONGEST_S = {"day": DAY_S + 3600, "week": 7 * DAY_S, "month": 31 * DAY_S}


def _local_start(day: dt.date, anchor: PeriodAnchor, tz: ZoneInfo) -> dt.datetime:
    hours, rest = divmod(anchor.at_s, 3600)
    return dt.datetime(day.year, day.month, day.day, hours, rest // 60, rest % 60, tzinfo=tz)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, day.day)


def _anchor_days(anchor: PeriodAnchor, today: dt.date) -> tuple[dt.date, dt.date, dt.date]:
    """The period's first day on or before ``today``, the one before it and the one after it."""
    if anchor.every == "day":
        return today, today - dt.timedelta(days=1), today + dt.timedelta(days=1)
    if anchor.every == "week":
        first = today - dt.timedelta(days=(today.weekday() - anchor.weekday) % 7)
        return first, first - dt.timedelta(days=7), first + dt.timedelta(days=7)
    first = dt.date(today.year, today.month, anchor.day)
    if first > today:
        first = _add_months(first, -1)
    return first, _add_months(first, -1), _add_months(first, 1)


def anchored_period(now_s: int, anchor: PeriodAnchor) -> tuple[int, int]:
    """``(start_s, end_s)`` of the calendar period that contains ``now_s``.

    Boundaries are local wall-clock times in the anchor's zone, so a daily period
    across a DST change is 23 or 25 hours long, as a billing cycle would be.
    """
    tz = ZoneInfo(anchor.tz)
    today = dt.datetime.fromtimestamp(now_s, tz).date()
    first, before, after = _anchor_days(anchor, today)
    start = _local_start(first, anchor, tz)
    if start.timestamp() > now_s:  # today's boundary is later today: we are in the previous one
        return int(_local_start(before, anchor, tz).timestamp()), int(start.timestamp())
    return int(start.timestamp()), int(_local_start(after, anchor, tz).timestamp())


def first_period(now_s: int, period_s: int, anchor: PeriodAnchor | None) -> tuple[int, int]:
    """The period of a slice seen for the first time at ``now_s``."""
    if anchor is not None:
        return anchored_period(now_s, anchor)
    return now_s, now_s + period_s


def next_period(
    end_s: int, now_s: int, period_s: int, anchor: PeriodAnchor | None
) -> tuple[int, int]:
    """The period containing ``now_s`` after one that ended at ``end_s`` (≤ now).

    Rolling periods keep their phase: an agent that was down for several periods
    lands in the one that contains now, not in one that starts now.
    """
    if anchor is not None:
        return anchored_period(now_s, anchor)
    skipped = (now_s - end_s) // period_s
    start = end_s + skipped * period_s
    return start, start + period_s


def clock_step(
    saved_s: int | None, now_s: int, period_s: int, anchor: PeriodAnchor | None
) -> str | None:
    """Why ``now_s`` cannot follow the state's save at ``saved_s``, or None if it can.

    A clock that went back, or jumped forward by more than the longest period
    and a day, has most likely been stepped (a bad NTP answer, an RTC reset);
    a cycle must not end periods or purge the ledger on its word. A node that
    was really down that long loses one cycle: the next one trusts the clock.
    """
    if saved_s is None:
        return None
    if now_s < saved_s:
        return f"clock went back {saved_s - now_s} s since the state was saved"
    bound_s = (period_s if anchor is None else _ANCHOR_LONGEST_S[anchor.every]) + DAY_S
    if now_s - saved_s > bound_s:
        return (
            f"clock jumped {now_s - saved_s} s forward since the state was saved"
            f" (more than {bound_s} s)"
        )
    return None


# Within one boot, a wall clock this far from the reference plus the boot clock's
# elapsed time has been stepped (an NTP correction of a few seconds or minutes is not).
CLOCK_SLACK_S = 900

ClockRef = tuple[str, int, int]  # (boot id, CLOCK_BOOTTIME s, wall clock s then)


def reanchor_after_s(period_s: int, anchor: PeriodAnchor | None) -> int:
    """How long a wall clock may disagree with the reference (same boot) before it is
    taken as the new reference: a whole period, at most a day. A reference taken from
    a wrong clock (an RTC's time before NTP stepped it) must not hold every cycle for
    the whole boot: no period would end, no ledger entry expire, no grace run out.
    """
    return min(period_s if anchor is None else _ANCHOR_LONGEST_S[anchor.every], DAY_S)


def clock_offset_s(state: State, now_s: int, boot: BootClock | None) -> int | None:
    """How far the wall clock ``now_s`` is from the state's reference plus the boot
    clock's elapsed time (None: no reference of this boot to tell)."""
    if boot is None or not state.boot_id or boot.boot_id != state.boot_id:
        return None
    return now_s - (state.clock_ref_s + boot.boottime_s - state.boottime_s)


def clock_check(
    state: State, now_s: int, boot: BootClock | None, period_s: int, anchor: PeriodAnchor | None
) -> tuple[str | None, ClockRef]:
    """Why the wall clock ``now_s`` is not to be trusted this cycle (None: it is), and
    the clock reference to save (:class:`~bwenforcer.core.model.State`'s ``boot_id``,
    ``boottime_s``, ``clock_ref_s``).

    - Same boot as the reference: the boot clock says how much time passed. A wall
      clock that disagrees by more than :data:`CLOCK_SLACK_S` is wrong (stepped);
      the reference is kept, so the cycle is held while it stays wrong, but for no
      longer than :func:`reanchor_after_s` since the reference: then the reference
      is what was wrong (taken before NTP stepped the clock), and ``now_s`` the new one.
    - Another boot: a wall clock behind the last trusted one went back (held, the
      reference kept); ahead, it was a real outage.
    - No boot reading, or no reference yet (a state of schema 2):
      :func:`clock_step` against the last save.

    A trusted cycle makes ``now_s`` the new reference, if the kernel says the clock is
    synchronised (``boot.synced``); else the reference is kept as it is.
    """
    kept: ClockRef = (state.boot_id, state.boottime_s, state.clock_ref_s)
    if boot is not None and not boot.synced:
        new: ClockRef = kept
    else:
        new = kept if boot is None else (boot.boot_id, boot.boottime_s, now_s)
    if boot is not None and state.boot_id:
        if boot.boot_id == state.boot_id:
            elapsed_s = boot.boottime_s - state.boottime_s
            off_s = now_s - (state.clock_ref_s + elapsed_s)
            if elapsed_s >= 0 and abs(off_s) <= CLOCK_SLACK_S:
                return None, new
            if elapsed_s >= reanchor_after_s(period_s, anchor):
                return None, (boot.boot_id, boot.boottime_s, now_s)
            side = "ahead of" if off_s > 0 else "behind"
            return (
                f"clock {abs(off_s)} s {side} the boot clock's time since it was last"
                f" trusted ({elapsed_s} s ago, same boot)",
                kept,
            )
        if now_s < state.clock_ref_s:
            return (
                f"clock {state.clock_ref_s - now_s} s behind the last time it was trusted"
                " (before a reboot)",
                kept,
            )
        return None, new
    reason = clock_step(state.saved_s, now_s, period_s, anchor)
    return reason, (new if reason is None else kept)

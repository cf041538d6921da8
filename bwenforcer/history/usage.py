"""Usage history, the model: bytes and capped time per slice, hourly → daily → monthly.

Each cycle adds the bytes every slice sent (and, with inbound accounting on,
received) per traffic class (deltas, never
counters, so counter resets and reboots add nothing twice) to the UTC hour of
the cycle. :meth:`History.roll_up` folds the hours of a UTC day into one day
bucket once the whole day is older than ``history.hourly_keep`` (so hours are
kept at least that long, and a day is never split across tiers), folds days
older than ``daily_keep`` into their UTC month, and drops months older than
``monthly_keep``; a bucket is "older than keep" once it *ended* at least
``keep`` ago. Day and month buckets also keep their busiest hour's total
(default + exempt): the peak hour. A deleted slice's history stays, by name,
until it ages out; once it left the ledger too, the fold keeps only its months
(:func:`~.fold.fold_history`). Idle slices cost nothing: a cycle with no bytes and no
capped time adds no bucket.

Pure: time is passed in, nothing is read or written. The file is
:mod:`.format` (decoded by :mod:`.decode`, read by :mod:`.reader`, written and folded
by :mod:`.fold`), the per-cycle journal :mod:`.journal`, and the
cycle's writer :mod:`.recorder`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from bwenforcer.core.model import fast_init
from bwenforcer.core.settings import HistoryConfig

log = logging.getLogger(__name__)

HOUR_S = 3600
DAY_S = 86400
# The longest slice name the history keeps (the file and the journal store its
# length in a byte): longer names are refused by record() and encode_cycle().
NAME_MAX_BYTES = 255
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

Bucketing = Literal["hour", "day", "month"]


@dataclass(frozen=True, slots=True)
class CycleUsage:
    """What one cycle reports for one slice: byte deltas and whether each class was capped."""

    slice_name: str
    default_bytes: int
    exempt_bytes: int
    capped_default: bool
    capped_exempt: bool
    # bytes received (inbound accounting on; 0 otherwise)
    in_default_bytes: int = 0
    in_exempt_bytes: int = 0


def capped_span_s(
    now_s: int, previous_s: int | None, interval_s: int, clock_stepped: bool = False
) -> int:
    """Capped time a class capped at ``now_s`` adds: the time since the previous cycle.

    Cron and node-manager cycles come at irregular times: ``interval_s`` per cycle
    would record fiction. The span is at most an hour, the bucket it goes to (a
    long pause of the agent is not all counted). The first cycle has no span (0);
    after a clock step the span is not known: ``interval_s``.
    """
    if previous_s is None:
        return 0
    if clock_stepped or now_s < previous_s:
        return interval_s
    return min(now_s - previous_s, HOUR_S)


@fast_init  # a report makes millions
@dataclass(frozen=True, slots=True)
class ReportRow:
    """One slice's usage in one hour, day or month (UTC)."""

    slice_name: str
    by: Bucketing
    bucket_start_s: int
    default_bytes: int
    exempt_bytes: int
    peak_hour_bytes: int  # the busiest hour in the bucket, default + exempt
    capped_default_s: int
    capped_exempt_s: int
    in_default_bytes: int = 0  # received (history format 5; 0 before, or with inbound off)
    in_exempt_bytes: int = 0


def usage_deltas(u: CycleUsage) -> tuple[int, int, bool]:
    """``(default, exempt, negative)`` bytes sent of a usage; a negative delta, sent or
    received, counts as 0 (logged: counters only go up, so it is a bug upstream).
    """
    default, exempt = u.default_bytes, u.exempt_bytes
    if default >= 0 and exempt >= 0 and u.in_default_bytes >= 0 and u.in_exempt_bytes >= 0:
        return default, exempt, False
    log.warning(
        "history: slice %s: negative delta ignored (default %d, exempt %d bytes; received %d, %d)",
        u.slice_name,
        default,
        exempt,
        u.in_default_bytes,
        u.in_exempt_bytes,
    )
    return max(0, default), max(0, exempt), True


def received_deltas(u: CycleUsage) -> tuple[int, int]:
    """``(default, exempt)`` bytes received of a usage, a negative one as 0 (logged by
    :func:`usage_deltas`).
    """
    return max(0, u.in_default_bytes), max(0, u.in_exempt_bytes)


def _day_of_hour(hour: int) -> int:
    return hour // 24


@functools.lru_cache(maxsize=8192)  # reports ask it of every day of every slice
def _day_to_month(day: int) -> int:
    date = dt.date.fromordinal(_EPOCH_ORDINAL + day)
    return date.year * 12 + date.month - 1


def _month_of_instant(instant_s: int) -> int:
    return _day_to_month(instant_s // DAY_S)


def month_start_s(month: int) -> int:
    year, index = divmod(month, 12)
    return (dt.date(year, index + 1, 1).toordinal() - _EPOCH_ORDINAL) * DAY_S


def _new_row(buckets: dict[int, list[int]], key: int, width: int) -> list[int]:
    """A zero row for ``key``, keeping ``buckets`` in ascending key order."""
    row = [0] * width
    out_of_order = bool(buckets) and key < next(reversed(buckets))
    buckets[key] = row
    if out_of_order:  # the clock went back: rare, so re-sorting is cheap enough
        ordered = sorted(buckets.items())
        buckets.clear()
        buckets.update(ordered)
    return row


class SliceHistory:
    """One slice's buckets, each tier a dict in ascending key order.

    Hour rows: [default, exempt, capped default s, capped exempt s, received default,
    received exempt].
    Day and month rows: [default, exempt, peak hour, capped default s, capped exempt s,
    received default, received exempt]. Bytes without "received" are sent; the peak
    hour is of the bytes sent.
    """

    __slots__ = ("days", "hours", "months")

    def __init__(self) -> None:
        self.hours: dict[int, list[int]] = {}
        self.days: dict[int, list[int]] = {}
        self.months: dict[int, list[int]] = {}

    def empty(self) -> bool:
        return not (self.hours or self.days or self.months)


def _merge(acc: dict[int, list[int]], key: int, row: list[int]) -> None:
    """Add a day/month-shaped row into ``acc[key]``; the peak is a maximum, not a sum."""
    into = acc.get(key)
    if into is None:
        into = _new_row(acc, key, 7)
    into[0] += row[0]
    into[1] += row[1]
    into[2] = max(into[2], row[2])
    into[3] += row[3]
    into[4] += row[4]
    into[5] += row[5]
    into[6] += row[6]


def _due(tier: dict[int, list[int]], cutoff: int) -> list[int]:
    """The keys below ``cutoff``: the first ones, as tiers are in ascending order."""
    due = []
    for key in tier:
        if key >= cutoff:
            break
        due.append(key)
    return due


def _as_day_row(hour_row: list[int]) -> list[int]:
    default, exempt, capped_d, capped_e, in_d, in_e = hour_row
    return [default, exempt, default + exempt, capped_d, capped_e, in_d, in_e]


class History:
    """The usage history in memory. Pure: time is passed in, nothing is read or written."""

    def __init__(self) -> None:
        self._slices: dict[str, SliceHistory] = {}
        self._cutoffs: tuple[int, int, int] | None = None  # of the last roll-up
        # Rows of the hour last recorded into, by slice: the hot path of record().
        self._hour: int | None = None
        self._hour_rows: dict[str, list[int]] = {}
        self.ignored = 0  # negative deltas and unstorable names refused by record()
        self.generation = 0  # of the file it was read from; its journal names it

    def record(self, now_s: int, interval_s: int, usage: Iterable[CycleUsage]) -> None:
        """Add one cycle's deltas (and ``interval_s`` of capped time per capped class:
        see :func:`capped_span_s`).

        Everything goes to the UTC hour of ``now_s``. A negative delta is ignored (logged
        and counted in :attr:`ignored`); the slice's other class still counts.
        """
        hour = now_s // HOUR_S
        if hour != self._hour:
            self._hour = hour
            self._hour_rows = {}
        capped_s = max(0, interval_s)
        rows = self._hour_rows
        get = rows.get
        # The fast path (a slice already seen this hour, no negative delta) runs
        # for every slice every cycle: keep it to a few operations.
        for u in usage:
            row = get(u.slice_name)
            default, exempt = u.default_bytes, u.exempt_bytes
            in_d, in_e = u.in_default_bytes, u.in_exempt_bytes
            if row is None or default < 0 or exempt < 0 or in_d < 0 or in_e < 0:
                self._record_slow(hour, capped_s, u)
                continue
            row[0] += default
            row[1] += exempt
            row[4] += in_d
            row[5] += in_e
            if u.capped_default:
                row[2] += capped_s
            if u.capped_exempt:
                row[3] += capped_s

    def _record_slow(self, hour: int, capped_s: int, u: CycleUsage) -> None:
        default, exempt, negative = usage_deltas(u)
        in_d, in_e = received_deltas(u)
        self.ignored += negative
        capped_d = capped_s if u.capped_default else 0
        capped_e = capped_s if u.capped_exempt else 0
        row = self._hour_rows.get(u.slice_name)
        if row is None:
            if not (default or exempt or capped_d or capped_e or in_d or in_e):
                return  # idle slices cost nothing
            sh = self._slices.get(u.slice_name)
            if sh is None:
                if len(u.slice_name.encode()) > NAME_MAX_BYTES:
                    log.error("history: slice %s: name too long to store, skipped", u.slice_name)
                    self.ignored += 1
                    return
                sh = self._slices[u.slice_name] = SliceHistory()
            row = sh.hours.get(hour)
            if row is None:
                row = _new_row(sh.hours, hour, 6)
                if self._cutoffs is not None and hour < self._cutoffs[0]:
                    self._cutoffs = None  # an hour already due for roll-up: redo it
            self._hour_rows[u.slice_name] = row
        row[0] += default
        row[1] += exempt
        row[2] += capped_d
        row[3] += capped_e
        row[4] += in_d
        row[5] += in_e

    def roll_up(self, now_s: int, cfg: HistoryConfig) -> None:
        """Fold old hours into days, old days into months, and drop old months.

        Cheap to call every cycle: it does nothing until a cutoff moves.
        """
        cutoffs = roll_up_cutoffs(now_s, cfg)
        if cutoffs == self._cutoffs:
            return
        self._hour = None  # the rows it caches may move to the daily tier
        for name in list(self._slices):
            if roll_up_slice(self._slices[name], cutoffs):
                log.info("history: slice %s aged out", name)
                del self._slices[name]
        self._cutoffs = cutoffs

    @classmethod
    def from_slices(cls, slices: dict[str, SliceHistory], generation: int) -> History:
        """A history holding ``slices`` (taken, not copied), as read from a file of
        ``generation``; each tier in ascending key order.
        """
        history = cls()
        history._slices = slices
        history.generation = generation
        return history

    def slice_items(self) -> list[tuple[str, SliceHistory]]:
        """Each slice's buckets, by name: the history's own, for a writer to read."""
        return sorted(self._slices.items())

    def slice_names(self) -> list[str]:
        """Names of the slices with any history, sorted."""
        return sorted(self._slices)

    def report(
        self, by: Bucketing, since_s: int | None = None, slice_name: str | None = None
    ) -> list[ReportRow]:
        """Totals per slice per UTC bucket, by slice then time (see :func:`slice_report`)."""
        rows: list[ReportRow] = []
        for name in sorted(self._slices):
            if slice_name is None or name == slice_name:
                rows.extend(slice_report(name, self._slices[name], by, since_s))
        return rows


def roll_up_cutoffs(now_s: int, cfg: HistoryConfig) -> tuple[int, int, int]:
    """The first hour, day and month a roll-up at ``now_s`` keeps in their tier."""
    return (
        24 * ((now_s - cfg.hourly_keep_s) // DAY_S),  # an hour: days are folded whole
        (now_s - cfg.daily_keep_s) // DAY_S,
        _month_of_instant(now_s - cfg.monthly_keep_s),
    )


def roll_up_slice(sh: SliceHistory, cutoffs: tuple[int, int, int]) -> bool:
    """Roll one slice's buckets up at ``cutoffs`` (:func:`roll_up_cutoffs`); True if
    nothing is left of it.
    """
    cut_hour, cut_day, cut_month = cutoffs
    hours, days, months = sh.hours, sh.days, sh.months
    due_hours, due_days = _due(hours, cut_hour), _due(days, cut_day)
    due_months = _due(months, cut_month)
    if not (due_hours or due_days or due_months):
        return sh.empty()
    for day, due in groupby(due_hours, _day_of_hour):
        _merge(days, day, _summed_hours([hours.pop(h) for h in due]))
    for day in _due(days, cut_day):
        _merge(months, _day_to_month(day), days.pop(day))
    for month in _due(months, cut_month):
        del months[month]
    return sh.empty()


def add_hours(sh: SliceHistory, hours: dict[int, list[int]]) -> None:
    """Add hour rows (as :meth:`History.record` adds a cycle's, none of them idle) to ``sh``."""
    tier = sh.hours
    for hour, row in hours.items():
        add_hour_row(tier, hour, row)


def slice_report(
    name: str, sh: SliceHistory, by: Bucketing, since_s: int | None = None
) -> list[ReportRow]:
    """One slice's totals per UTC bucket, in time order; every tier is included.

    ``by="day"`` sums the hours still kept hourly, ``by="month"`` also the days, so
    the totals are everything recorded within the retention. With ``since_s``, only
    buckets that end after it (the bucket holding ``since_s`` is shown whole).
    """
    return bucket_report(name, slice_buckets(sh, by), by, since_s)


def bucket_report(
    name: str, buckets: dict[int, list[int]], by: Bucketing, since_s: int | None = None
) -> list[ReportRow]:
    """:func:`slice_report` of buckets already summed (day-shaped rows by bucket key)."""
    rows = []
    for key, row in sorted(buckets.items()):
        start_s, end_s = _bounds(by, key)
        if since_s is not None and end_s <= since_s:
            continue
        rows.append(ReportRow(name, by, start_s, *row))
    return rows


def bucket_rows(
    buckets: dict[int, list[int]], by: Bucketing, since_s: int | None = None
) -> list[tuple[int, ...]]:
    """:func:`bucket_report`'s rows as plain tuples: the bucket's key (see
    :func:`bucket_start_s`), then the seven figures of a :class:`ReportRow`.
    """
    return since_rows([(key, *row) for key, row in sorted(buckets.items())], by, since_s)


def since_rows(
    rows: list[tuple[int, ...]], by: Bucketing, since_s: int | None
) -> list[tuple[int, ...]]:
    """Of plain rows (bucket key first, in key order), those of buckets that end after
    ``since_s`` (None: all).
    """
    if since_s is None or not rows:
        return rows
    return [row for row in rows if _bounds(by, row[0])[1] > since_s]


def bucket_start_s(by: Bucketing, key: int) -> int:
    """The start (Unix s, UTC) of the bucket ``key`` by ``by``."""
    return _bounds(by, key)[0]


def days_of_hours(hours: Iterable[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Hour records (hour key, default, exempt, capped default s, capped exempt s[,
    received default, received exempt]; in key order, all of one width) as plain day
    rows (day key, default, exempt, peak hour, capped s ×2[, received ×2]).
    """
    days = []
    for day, group in groupby(hours, lambda item: item[0] // 24):
        _, default, exempt, *rest = zip(*group, strict=True)
        peak = max(map(operator.add, default, exempt))
        days.append((day, sum(default), sum(exempt), peak, *map(sum, rest)))
    return days


def month_sums(days: dict[int, list[int]], hours: dict[int, list[int]]) -> dict[int, list[int]]:
    """Each month's total of a slice's ``days`` and ``hours`` (day-shaped rows): what its
    monthly report adds to its months tier.
    """
    acc: dict[int, list[int]] = {}
    for month, rows in groupby(days.items(), lambda item: _day_to_month(item[0])):
        _merge(acc, month, _summed_days([row for _, row in rows]))
    for month, rows in groupby(hours.items(), lambda item: _day_to_month(item[0] // 24)):
        _merge(acc, month, _summed_hours([row for _, row in rows]))
    return acc


def add_hours_to_sums(
    sums: dict[int, list[int]], before: dict[int, list[int]], added: dict[int, list[int]]
) -> None:
    """Update month sums (:func:`month_sums`) for hour rows ``added`` to a slice whose
    rows for those hours were ``before`` (absent: none). Exact without the other
    hours: an hour's total only grows, so the month's peak is the larger of the
    old peak and the hour's new total.
    """
    for hour, row in added.items():
        old = before.get(hour)
        new_total = row[0] + row[1] + (old[0] + old[1] if old is not None else 0)
        _merge(
            sums,
            _day_to_month(hour // 24),
            [row[0], row[1], new_total, row[2], row[3], row[4], row[5]],
        )


def month_of_day(day: int) -> int:
    """The month key (year*12+month-1) of a day since 1970."""
    return _day_to_month(day)


def slice_buckets(sh: SliceHistory, by: Bucketing) -> dict[int, list[int]]:
    """A slice's day-shaped rows by bucket key (every tier summed in; see
    :func:`slice_report`).
    """
    if by == "hour":
        return {hour: _as_day_row(row) for hour, row in sh.hours.items()}
    if by not in ("day", "month"):
        raise ValueError(f"history report by {by!r}: expected hour, day or month")
    # Each tier's rows are summed a bucket at a time (a tier is in key order), then
    # merged once per bucket: a report reads every row of every slice.
    if by == "day":
        acc = {day: list(row) for day, row in sh.days.items()}
        for day, rows in groupby(sh.hours.items(), lambda item: item[0] // 24):
            _merge(acc, day, _summed_hours([row for _, row in rows]))
        return acc
    acc = {month: list(row) for month, row in sh.months.items()}
    for month, row in month_sums(sh.days, sh.hours).items():
        _merge(acc, month, row)
    return acc


def merge_row(acc: dict[int, list[int]], key: int, row: list[int]) -> None:
    """Add a day/month-shaped row into ``acc[key]`` (the peak: the larger)."""
    _merge(acc, key, row)


def add_hour_row(acc: dict[int, list[int]], key: int, row: list[int]) -> None:
    """Add an hour row into ``acc[key]``."""
    into = acc.get(key)
    if into is None:
        into = _new_row(acc, key, 6)
    into[0] += row[0]
    into[1] += row[1]
    into[2] += row[2]
    into[3] += row[3]
    into[4] += row[4]
    into[5] += row[5]


def hours_to_days(hours: list[tuple[int, list[int]]]) -> dict[int, list[int]]:
    """Hour rows (in key order) rolled up into day rows, as :func:`roll_up_slice` does."""
    return {
        day: _summed_hours([row for _, row in rows])
        for day, rows in groupby(hours, lambda item: item[0] // 24)
    }


def days_to_months(days: list[tuple[int, list[int]]]) -> dict[int, list[int]]:
    """Day rows (in key order) rolled up into month rows, as :func:`roll_up_slice` does."""
    acc: dict[int, list[int]] = {}
    for day, row in days:
        _merge(acc, _day_to_month(day), row)
    return acc


def _summed_hours(rows: list[list[int]]) -> list[int]:
    """Hour rows as one day-shaped row (the peak: the busiest of them)."""
    default, exempt, capped_d, capped_e, in_d, in_e = zip(*rows, strict=True)
    peak = max(map(operator.add, default, exempt))
    return [
        sum(default), sum(exempt), peak, sum(capped_d), sum(capped_e), sum(in_d), sum(in_e)
    ]  # fmt: skip


def _summed_days(rows: list[list[int]]) -> list[int]:
    """Day-shaped rows as one."""
    default, exempt, peak, capped_d, capped_e, in_d, in_e = zip(*rows, strict=True)
    return [
        sum(default), sum(exempt), max(peak), sum(capped_d), sum(capped_e), sum(in_d), sum(in_e)
    ]  # fmt: skip


def _bounds(by: Bucketing, key: int) -> tuple[int, int]:
    if by == "hour":
        return key * HOUR_S, (key + 1) * HOUR_S
    if by == "day":
        return key * DAY_S, (key + 1) * DAY_S
    return month_start_s(key), month_start_s(key + 1)

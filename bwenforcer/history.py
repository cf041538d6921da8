"""Usage history: bytes and capped time per slice, hourly → daily → monthly, in a small file.

Each cycle adds the bytes every slice sent per traffic class (deltas, never
counters, so counter resets and reboots add nothing twice) to the UTC hour of
the cycle. :meth:`History.roll_up` folds the hours of a UTC day into one day
bucket once the whole day is older than ``history.hourly_keep`` (so hours are
kept at least that long, and a day is never split across tiers), folds days
older than ``daily_keep`` into their UTC month, and drops months older than
``monthly_keep``; a bucket is "older than keep" once it *ended* at least
``keep`` ago. Day and month buckets also keep their busiest hour's total
(default + exempt): the peak hour. A deleted slice's history stays, by name,
until it ages out.

File format, version 1 (little endian, fixed-size records, no compression)::

    header   "BWHS"  u16 version  u16 generation  u32 slice count  u32 CRC-32 of the rest
    slice    u8 name length, name (UTF-8, ≤ 255 bytes),
             u32 hour count, u32 day count, u32 month count, then the records:
    hour     u32 hours since 1970, u64 default, u64 exempt,
             u32 capped default s, u32 capped exempt s                        (28 bytes)
    day      u32 days since 1970, u64 default, u64 exempt, u64 peak hour,
             u32 capped default s, u32 capped exempt s                        (36 bytes)
    month    u32 year*12+month-1, then as a day                              (36 bytes)

Size: an hour costs 28 bytes, a day or a month 36 bytes, a slice's header at
most 268. With the default retention a slice that sends something every hour
holds at most 384 hours (15 days, plus the day being filled) and, in its first
year, 365 days: at most 24,160 bytes per slice for the first year. However old
the node, a slice never exceeds ``MAX_BYTES_PER_SLICE`` = 40,252 bytes (384
hours, 715 days, 97 months), so the file stays under that times the number of
slices plus a 16-byte header. These bounds hold after :meth:`History.roll_up`
at the time of the latest :meth:`History.record`; counts saturate at their
field's maximum. Idle slices cost nothing: a cycle with no bytes and no capped
time adds no bucket.

A cycle does not rewrite that file: it appends its usage to a journal beside it
(``<file>.journal``), one checksummed record per cycle holding only the slices
that sent something or are capped, so a cycle costs what it recorded, however
old and large the history. Readers replay the journal onto the file. Once a day
(the first cycle of a UTC day, when buckets become due to roll up) or when the
journal outgrows a quarter of the file, the journal is folded in: the file is
rewritten with its generation incremented and a new, empty journal is started
for that generation. A journal whose generation is not the file's was already
folded in (the writer stopped between the two steps) and is ignored::

    journal  "BWHJ"  u16 version (2)  u16 generation of the file it extends
    record   u32 payload length, u32 CRC-32 of the payload, then the payload:
             u64 cycle time (Unix s), u32 capped s, u64 save time of the state
             the cycle started from (0: none), then per slice:
             u8 name length, name, u64 default bytes, u64 exempt bytes,
             u8 capped (bit 0 default, bit 1 exempt)

(Version 1 records lack the state's save time; such a journal is read, and
folded in before anything is appended.) A record cut short by a crash is
dropped (and cut off before the next append). A cycle appends its record before
it saves its state; the next cycle cuts the record off if that save never
happened (see :meth:`HistoryRecorder.record`), so the history and the state
count the same bytes whatever instant the agent is killed at.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import operator
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from .atomicfile import (
    FileIdentity,
    disk_full,
    file_identity,
    make_dir,
    move_aside,
    open_own,
    read_own,
    replace_file,
)
from .config import HistoryConfig
from .errors import HistoryCorrupt, HistoryError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"BWHS"
HOUR_S = 3600
DAY_S = 86400
NAME_MAX_BYTES = 255

_HEADER = struct.Struct("<4sHHII")
_SLICE = struct.Struct("<B")
_COUNTS = struct.Struct("<III")
_HOUR = struct.Struct("<IQQII")
_DAY = struct.Struct("<IQQQII")  # days and months
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_U64_STRUCT = struct.Struct("<Q")
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

HEADER_BYTES = _HEADER.size
SLICE_HEADER_MAX_BYTES = _SLICE.size + NAME_MAX_BYTES + _COUNTS.size

Bucketing = Literal["hour", "day", "month"]


def _months_spanned_max(length_s: int) -> int:
    """Most calendar months an interval of ``length_s`` can touch.

    The months strictly inside the interval are shorter than it; any 12 consecutive
    months last at least 365 days and any month at least 28.
    """
    if length_s <= 0:
        return 1
    inside = 0
    while 365 * DAY_S * ((inside + 1) // 12) + 28 * DAY_S * ((inside + 1) % 12) < length_s:
        inside += 1
    return inside + 2


def max_bytes_per_slice(cfg: HistoryConfig) -> int:
    """Upper bound of one slice's share of the file right after a roll-up, for ``cfg``."""
    hours = math.ceil(cfg.hourly_keep_s / HOUR_S) + 24
    days = max(0, math.ceil((cfg.daily_keep_s - cfg.hourly_keep_s) / DAY_S))
    months = _months_spanned_max(cfg.monthly_keep_s - cfg.daily_keep_s)
    return SLICE_HEADER_MAX_BYTES + hours * _HOUR.size + (days + months) * _DAY.size


MAX_BYTES_PER_SLICE = max_bytes_per_slice(HistoryConfig())


@dataclass(frozen=True, slots=True)
class CycleUsage:
    """What one cycle reports for one slice: byte deltas and whether each class was capped."""

    slice_name: str
    default_bytes: int
    exempt_bytes: int
    capped_default: bool
    capped_exempt: bool


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


@dataclass(frozen=True)
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


def _deltas(u: CycleUsage) -> tuple[int, int, bool]:
    """``(default, exempt, negative)`` bytes of a usage; a negative delta counts as 0
    (logged: counters only go up, so it is a bug upstream).
    """
    default, exempt = u.default_bytes, u.exempt_bytes
    if default >= 0 and exempt >= 0:
        return default, exempt, False
    log.warning(
        "history: slice %s: negative delta ignored (default %d, exempt %d bytes)",
        u.slice_name,
        default,
        exempt,
    )
    return max(0, default), max(0, exempt), True


def _day_of_hour(hour: int) -> int:
    return hour // 24


def _day_to_month(day: int) -> int:
    date = dt.date.fromordinal(_EPOCH_ORDINAL + day)
    return date.year * 12 + date.month - 1


def _month_of_instant(instant_s: int) -> int:
    return _day_to_month(instant_s // DAY_S)


def _month_start_s(month: int) -> int:
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


class _SliceHistory:
    """One slice's buckets, each tier a dict in ascending key order.

    Hour rows: [default, exempt, capped default s, capped exempt s].
    Day and month rows: [default, exempt, peak hour, capped default s, capped exempt s].
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
        into = _new_row(acc, key, 5)
    into[0] += row[0]
    into[1] += row[1]
    into[2] = max(into[2], row[2])
    into[3] += row[3]
    into[4] += row[4]


def _due(tier: dict[int, list[int]], cutoff: int) -> list[int]:
    """The keys below ``cutoff``: the first ones, as tiers are in ascending order."""
    due = []
    for key in tier:
        if key >= cutoff:
            break
        due.append(key)
    return due


def _as_day_row(hour_row: list[int]) -> list[int]:
    default, exempt, capped_d, capped_e = hour_row
    return [default, exempt, default + exempt, capped_d, capped_e]


class History:
    """The usage history in memory. Pure: time is passed in, nothing is read or written."""

    def __init__(self) -> None:
        self._slices: dict[str, _SliceHistory] = {}
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
            if row is None or default < 0 or exempt < 0:
                self._record_slow(hour, capped_s, u)
                continue
            row[0] += default
            row[1] += exempt
            if u.capped_default:
                row[2] += capped_s
            if u.capped_exempt:
                row[3] += capped_s

    def _record_slow(self, hour: int, capped_s: int, u: CycleUsage) -> None:
        default, exempt, negative = _deltas(u)
        self.ignored += negative
        capped_d = capped_s if u.capped_default else 0
        capped_e = capped_s if u.capped_exempt else 0
        row = self._hour_rows.get(u.slice_name)
        if row is None:
            if not (default or exempt or capped_d or capped_e):
                return  # idle slices cost nothing
            sh = self._slices.get(u.slice_name)
            if sh is None:
                if len(u.slice_name.encode()) > NAME_MAX_BYTES:
                    log.error("history: slice %s: name too long to store, skipped", u.slice_name)
                    self.ignored += 1
                    return
                sh = self._slices[u.slice_name] = _SliceHistory()
            row = sh.hours.get(hour)
            if row is None:
                row = _new_row(sh.hours, hour, 4)
                if self._cutoffs is not None and hour < self._cutoffs[0]:
                    self._cutoffs = None  # an hour already due for roll-up: redo it
            self._hour_rows[u.slice_name] = row
        row[0] += default
        row[1] += exempt
        row[2] += capped_d
        row[3] += capped_e

    def roll_up(self, now_s: int, cfg: HistoryConfig) -> None:
        """Fold old hours into days, old days into months, and drop old months.

        Cheap to call every cycle: it does nothing until a cutoff moves.
        """
        cutoffs = (
            24 * ((now_s - cfg.hourly_keep_s) // DAY_S),  # an hour: days are folded whole
            (now_s - cfg.daily_keep_s) // DAY_S,
            _month_of_instant(now_s - cfg.monthly_keep_s),
        )
        if cutoffs == self._cutoffs:
            return
        self._hour = None  # the rows it caches may move to the daily tier
        cut_hour, cut_day, cut_month = cutoffs
        for name in list(self._slices):
            sh = self._slices[name]
            hours, days, months = sh.hours, sh.days, sh.months
            due_hours, due_days = _due(hours, cut_hour), _due(days, cut_day)
            due_months = _due(months, cut_month)
            if not (due_hours or due_days or due_months):
                continue
            for day, due in groupby(due_hours, _day_of_hour):
                default, exempt, capped_d, capped_e = zip(*(hours.pop(h) for h in due), strict=True)
                peak = max(map(operator.add, default, exempt))
                row = [sum(default), sum(exempt), peak, sum(capped_d), sum(capped_e)]
                _merge(days, day, row)
            for day in _due(days, cut_day):
                _merge(months, _day_to_month(day), days.pop(day))
            for month in _due(months, cut_month):
                del months[month]
            if sh.empty():
                log.info("history: slice %s aged out", name)
                del self._slices[name]
        self._cutoffs = cutoffs

    def slice_names(self) -> list[str]:
        """Names of the slices with any history, sorted."""
        return sorted(self._slices)

    def report(
        self, by: Bucketing, since_s: int | None = None, slice_name: str | None = None
    ) -> list[ReportRow]:
        """Totals per slice per UTC bucket, by slice then time; every tier is included.

        ``by="day"`` sums the hours still kept hourly, ``by="month"`` also the days, so
        the totals are everything recorded within the retention. With ``since_s``, only
        buckets that end after it (the bucket holding ``since_s`` is shown whole).
        """
        rows: list[ReportRow] = []
        for name in sorted(self._slices):
            if slice_name is not None and name != slice_name:
                continue
            for key, row in sorted(self._buckets(self._slices[name], by).items()):
                start_s, end_s = _bounds(by, key)
                if since_s is not None and end_s <= since_s:
                    continue
                rows.append(ReportRow(name, by, start_s, *row))
        return rows

    @staticmethod
    def _buckets(sh: _SliceHistory, by: Bucketing) -> dict[int, list[int]]:
        if by == "hour":
            return {hour: _as_day_row(row) for hour, row in sh.hours.items()}
        if by not in ("day", "month"):
            raise ValueError(f"history report by {by!r}: expected hour, day or month")
        acc: dict[int, list[int]] = {}
        if by == "month":
            for month, row in sh.months.items():
                _merge(acc, month, row)
        for day, row in sh.days.items():
            _merge(acc, day if by == "day" else _day_to_month(day), row)
        for hour, row in sh.hours.items():
            day = hour // 24
            _merge(acc, day if by == "day" else _day_to_month(day), _as_day_row(row))
        return acc

    def size_bytes(self) -> int:
        """Size of the saved file, in bytes."""
        return HEADER_BYTES + sum(
            _SLICE.size
            + len(name.encode())
            + _COUNTS.size
            + len(sh.hours) * _HOUR.size
            + (len(sh.days) + len(sh.months)) * _DAY.size
            for name, sh in self._slices.items()
        )

    def encode(self) -> bytes:
        """The file's bytes (format version :data:`FORMAT_VERSION`)."""
        parts: list[bytes] = []
        for name, sh in sorted(self._slices.items()):
            raw = name.encode()
            parts.append(_SLICE.pack(len(raw)) + raw)
            parts.append(_COUNTS.pack(len(sh.hours), len(sh.days), len(sh.months)))
            parts.extend(
                _HOUR.pack(key, *_saturated(row, (_U64, _U64, _U32, _U32)))
                for key, row in sh.hours.items()
            )
            for tier in (sh.days, sh.months):
                parts.extend(
                    _DAY.pack(key, *_saturated(row, (_U64, _U64, _U64, _U32, _U32)))
                    for key, row in tier.items()
                )
        body = b"".join(parts)
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, self.generation, len(self._slices), zlib.crc32(body)
        )
        return header + body

    @classmethod
    def decode(cls, data: bytes, source: str) -> History:
        """Parse the file's bytes; :class:`HistoryCorrupt` names ``source`` and the problem."""
        if len(data) < HEADER_BYTES:
            raise HistoryCorrupt(f"{source}: truncated header ({len(data)} bytes)")
        magic, version, generation, count, crc = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise HistoryCorrupt(f"{source}: not a bwenforcer history file")
        if version != FORMAT_VERSION:
            raise HistoryCorrupt(f"{source}: format version {version}, expected {FORMAT_VERSION}")
        body = memoryview(data)[HEADER_BYTES:]
        if zlib.crc32(body) != crc:
            raise HistoryCorrupt(f"{source}: checksum mismatch")
        history = cls()
        history.generation = generation
        reader = _Reader(body, source)
        for _ in range(count):
            name = reader.name()
            if name in history._slices:
                raise HistoryCorrupt(f"{source}: slice {name} appears twice")
            sh = history._slices[name] = _SliceHistory()
            n_hours, n_days, n_months = reader.unpack(_COUNTS)
            sh.hours = reader.tier(_HOUR, n_hours, name, "hours")
            sh.days = reader.tier(_DAY, n_days, name, "days")
            sh.months = reader.tier(_DAY, n_months, name, "months")
        if reader.offset != len(body):
            raise HistoryCorrupt(f"{source}: {len(body) - reader.offset} bytes after the end")
        return history


def _saturated(row: list[int], limits: tuple[int, ...]) -> Iterator[int]:
    return (min(value, limit) for value, limit in zip(row, limits, strict=True))


def _bounds(by: Bucketing, key: int) -> tuple[int, int]:
    if by == "hour":
        return key * HOUR_S, (key + 1) * HOUR_S
    if by == "day":
        return key * DAY_S, (key + 1) * DAY_S
    return _month_start_s(key), _month_start_s(key + 1)


class _Reader:
    """Walks the body of a history file, raising HistoryCorrupt on any inconsistency."""

    def __init__(self, body: memoryview, source: str) -> None:
        self.body = body
        self.source = source
        self.offset = 0

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.body):
            raise HistoryCorrupt(f"{self.source}: truncated at byte {HEADER_BYTES + self.offset}")
        chunk = self.body[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, shape: struct.Struct) -> tuple[int, ...]:
        return shape.unpack(self.take(shape.size))

    def name(self) -> str:
        (length,) = self.unpack(_SLICE)
        try:
            return bytes(self.take(length)).decode()
        except UnicodeDecodeError as exc:
            raise HistoryCorrupt(f"{self.source}: slice name is not UTF-8") from exc

    def tier(self, shape: struct.Struct, count: int, name: str, what: str) -> dict[int, list[int]]:
        tier: dict[int, list[int]] = {}
        previous = -1
        for key, *row in shape.iter_unpack(self.take(count * shape.size)):
            if key <= previous:
                raise HistoryCorrupt(f"{self.source}: slice {name}: {what} out of order")
            previous = key
            tier[key] = row
        return tier


# --- the file ------------------------------------------------------------------


def _read_bytes(path: str) -> bytes | None:
    """The bytes of a file of the history; None if there is none."""
    try:
        return read_own(path, "history file")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read history: {exc.strerror or exc}") from exc


def _read_file(path: str) -> History | None:
    """The history file alone; None if there is none."""
    data = _read_bytes(path)
    return None if data is None else History.decode(data, path)


def read_history(path: str) -> History:
    """Read the history (the file and its journal) without changing anything.

    Missing → empty. Raises :class:`HistoryCorrupt` for a damaged file and
    :class:`HistoryError` when it cannot be read; a damaged journal record ends
    what is read of the journal (logged).
    """
    history = _read_file(path)
    return _with_journal(history or History(), path, history is None)


def load_history(path: str, clock: Callable[[], float] = time.time) -> History:
    """Read the history to fold its journal in: damaged file → moved aside, then empty.

    The damaged file goes to ``<path>.corrupt-<UTC time>`` so the next save cannot
    overwrite what an operator may want to inspect.
    """
    try:
        history = _read_file(path)
    except HistoryCorrupt as exc:
        try:
            target = move_aside(path, "corrupt", clock())
        except OSError as move:
            raise HistoryError(f"{path}: cannot move aside: {move.strerror or move}") from exc
        log.error("history unusable (%s): moved to %s, starting an empty history", exc, target)
        history = None
    return _with_journal(history or History(), path, history is None)


def save_history(history: History, path: str) -> None:
    """Write the history atomically, mode 0600; on failure the previous file stays intact."""
    payload = history.encode()
    try:
        make_history_dir(path)
        replace_file(path, payload)
    except OSError as exc:
        what = f"{path}: cannot save history"
        raise disk_full(exc, what) or HistoryError(f"{what}: {exc.strerror or exc}") from exc
    log.debug("saved history %s: %d bytes", path, len(payload))


def make_history_dir(path: str) -> None:
    """Create the directory of the history file ``path`` (0700) if needed; refuse one
    others could write (UnsafePath).
    """
    make_dir(os.path.dirname(os.path.abspath(path)), "history directory")


# --- the journal ---------------------------------------------------------------

JOURNAL_MAGIC = b"BWHJ"
JOURNAL_VERSION = 2
# Fold the journal in before its day is out once it is past both of these.
JOURNAL_FOLD_MIN_BYTES = 1 << 20
JOURNAL_FOLD_SHARE = 4  # a quarter of the history file
_JOURNAL_HEADER = struct.Struct("<4sHH")
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
# cycle time, capped seconds, and (version 2) the save time of the state the cycle
# started from: the cycle's own save either follows the record or never happened
_CYCLES = {1: struct.Struct("<QI"), 2: struct.Struct("<QIQ")}
_CYCLE = _CYCLES[JOURNAL_VERSION]
_ENTRY = struct.Struct("<QQB")  # default bytes, exempt bytes, capped bits
_GENERATION_MASK = 0xFFFF


def journal_path(path: str) -> str:
    """Where the journal of the history file ``path`` is."""
    return f"{path}.journal"


def _journal_header(generation: int) -> bytes:
    return _JOURNAL_HEADER.pack(JOURNAL_MAGIC, JOURNAL_VERSION, generation)


def encode_cycle(
    now_s: int,
    interval_s: int,
    usage: Iterable[CycleUsage],
    names: dict[str, bytes | None] | None = None,
    base_s: int | None = None,
) -> bytes:
    """One journal record: the cycle's usage, as :meth:`History.record` would take it.

    Refuses what record() refuses, with the same log lines: negative deltas
    (counted as 0) and names too long to store (left out). ``names`` keeps each
    slice name's encoded form (None: too long) across calls. ``base_s`` is the
    save time of the state the cycle started from (0: there was none; None: not
    known, the record is never taken for an unsaved cycle's).
    """
    names = {} if names is None else names
    base = _U64 if base_s is None else min(base_s, _U64 - 1)
    parts = [_CYCLE.pack(now_s, min(max(0, interval_s), _U32), base)]
    pack_entry = _ENTRY.pack
    for u in usage:
        name = u.slice_name
        prefix = names.get(name)
        if prefix is None and name not in names:
            raw = name.encode()
            prefix = _SLICE.pack(len(raw)) + raw if len(raw) <= NAME_MAX_BYTES else None
            names[name] = prefix
        if prefix is None:
            log.error("history: slice %s: name too long to store, skipped", name)
            continue
        default, exempt, _ = _deltas(u)
        flags = (1 if u.capped_default else 0) | (2 if u.capped_exempt else 0)
        parts.append(prefix)
        parts.append(pack_entry(min(default, _U64), min(exempt, _U64), flags))
    payload = b"".join(parts)
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_cycle(
    payload: bytes, source: str, cycle: struct.Struct
) -> tuple[int, int, list[CycleUsage]]:
    now_s, interval_s = cycle.unpack_from(payload)[:2]
    usage: list[CycleUsage] = []
    offset, end = cycle.size, len(payload)
    while offset < end:
        length = payload[offset]
        start, offset = offset + 1, offset + 1 + length
        if offset + _ENTRY.size > end:
            raise HistoryCorrupt(f"{source}: journal record cut short")
        name = payload[start:offset].decode("utf-8", "replace")
        default, exempt, flags = _ENTRY.unpack_from(payload, offset)
        offset += _ENTRY.size
        usage.append(CycleUsage(name, default, exempt, bool(flags & 1), bool(flags & 2)))
    return now_s, interval_s, usage


@dataclass(frozen=True)
class _JournalEnd:
    """Where a journal's sound records end, and what a writer needs to know of it."""

    generation: int
    end: int  # offset after the last sound record: the next one goes here
    size: int  # of the file: more than ``end`` if a record was cut short
    first_s: int | None  # cycle time of the first record (None: no record yet)
    version: int = JOURNAL_VERSION
    # the last record: (offset, save time of the state its cycle started from, cycle
    # time); None if unknown (no record, or version 1 records, which carry no base)
    last: tuple[int, int, int] | None = None


def _journal_end(fd: int, source: str) -> _JournalEnd | None:
    """Walk a journal's record headers (not their payloads); None if it is not a journal.

    Only the last record can have been cut short by a crash (records are
    appended and synced one at a time), so only its checksum is verified.
    """
    size = os.fstat(fd).st_size
    header = os.pread(fd, _JOURNAL_HEADER.size, 0)
    if len(header) < _JOURNAL_HEADER.size:
        return None
    magic, version, generation = _JOURNAL_HEADER.unpack(header)
    cycle = _CYCLES.get(version)
    if magic != JOURNAL_MAGIC or cycle is None:
        return None
    offset, first_s = _JOURNAL_HEADER.size, None
    last: tuple[int, int, int] | None = None
    while offset + _RECORD.size + cycle.size <= size:
        length, crc = _RECORD.unpack(os.pread(fd, _RECORD.size, offset))
        end = offset + _RECORD.size + length
        if length < cycle.size or end > size:
            break
        if first_s is None:
            first_s = _U64_STRUCT.unpack(os.pread(fd, 8, offset + _RECORD.size))[0]
        last = (offset, length, crc)
        offset = end
    tag: tuple[int, int, int] | None = None
    if last is not None:
        start, length, crc = last
        payload = os.pread(fd, length, start + _RECORD.size)
        if zlib.crc32(payload) != crc:
            log.warning("history journal %s: last record damaged, dropped", source)
            offset = start
            if start == _JOURNAL_HEADER.size:
                first_s = None
        elif version == JOURNAL_VERSION:
            now_s, _, base_s = cycle.unpack_from(payload)
            tag = (start, base_s, now_s)
    return _JournalEnd(generation, offset, size, first_s, version, tag)


def _journal_records(
    data: bytes, source: str, cycle: struct.Struct
) -> Iterator[tuple[int, int, list[CycleUsage]]]:
    """The sound records of a journal's bytes, up to the first damaged one (logged)."""
    offset = _JOURNAL_HEADER.size
    while offset + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, offset)
        start, end = offset + _RECORD.size, offset + _RECORD.size + length
        payload = data[start:end]
        if end > len(data) or length < cycle.size or zlib.crc32(payload) != crc:
            log.warning(
                "history journal %s: damaged record at byte %d, rest ignored", source, offset
            )
            return
        try:
            yield _decode_cycle(payload, source, cycle)
        except HistoryCorrupt as exc:
            log.warning("history journal %s: %s, rest ignored", source, exc)
            return
        offset = end


def _with_journal(history: History, path: str, no_file: bool) -> History:
    """``history`` (read from ``path``, or empty if ``no_file``) with its journal replayed.

    A journal is replayed if it extends this very file (same generation), or if
    there is no file to have folded it into.
    """
    journal = journal_path(path)
    data = _read_bytes(journal)
    if data is None:
        return history
    if len(data) < _JOURNAL_HEADER.size or data[:4] != JOURNAL_MAGIC:
        log.warning("history journal %s: not a journal, ignored", journal)
        return history
    _, version, generation = _JOURNAL_HEADER.unpack_from(data)
    cycle = _CYCLES.get(version)
    if cycle is None:
        log.warning("history journal %s: version %d, ignored", journal, version)
        return history
    if generation != history.generation and not no_file:
        return history  # folded in already
    for now_s, interval_s, usage in _journal_records(data, journal, cycle):
        history.record(now_s, interval_s, usage)
    return history


class HistoryRecorder:
    """Adds each cycle's usage to the history: a journal append, the fold when due.

    Kept by an agent across cycles, it remembers the journal it last wrote, so a
    daemon's cycle reads nothing back; a new process walks the journal's record
    headers once.
    """

    def __init__(
        self,
        path: str,
        cfg: HistoryConfig,
        clock: Callable[[], float] = time.time,
        fold_min_bytes: int = JOURNAL_FOLD_MIN_BYTES,
    ) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.cfg = cfg
        self._clock = clock  # names of moved-aside files only
        self._fold_min_bytes = fold_min_bytes
        # each slice name as the journal writes it; forgotten at each fold, so names
        # of slices long gone do not pile up in a daemon
        self._names: dict[str, bytes | None] = {}
        self._known: tuple[FileIdentity | None, _JournalEnd] | None = None

    def record(
        self,
        now_s: int,
        capped_s: int,
        usage: list[CycleUsage],
        *,
        base_s: int | None = None,
        roll_up: bool = True,
    ) -> None:
        """Record one cycle; HistoryError (the history as it was) if it cannot be written.

        A cycle records before it saves its state; ``base_s`` is the save time of the
        state it started from (0: none; None: not known, nothing is checked). A last
        record that started from that same state, and is not the cycle that saved it,
        is of a cycle whose state was never saved (killed, or its save failed): this
        cycle counts its bytes again, so that record is cut off first. ``capped_s``
        is what each capped class adds to its capped time. Without ``roll_up`` (the
        clock stepped), the journal is not folded: nothing ages out on the clock's word.
        """
        self._known, known = None, self._known
        base = _U64 if base_s is None else min(base_s, _U64 - 1)
        try:
            end = self._end(known)
            if base_s is not None:
                end = self._drop_unsaved(end, base)
            if end.version != JOURNAL_VERSION or (roll_up and self._fold_due(end, now_s)):
                end = self._fold(now_s, roll_up)
            if usage:
                record = encode_cycle(now_s, capped_s, usage, self._names, base_s)
                self._append(end, record)
                after = end.end + len(record)
                first_s = now_s if end.first_s is None else end.first_s
                end = _JournalEnd(end.generation, after, after, first_s, end.version,
                                  (end.end, base, now_s))  # fmt: skip
        except OSError as exc:
            what = f"{self.journal}: cannot record"
            raise disk_full(exc, what) or HistoryError(f"{what}: {exc.strerror or exc}") from exc
        self._known = (file_identity(self.journal), end)

    def _drop_unsaved(self, end: _JournalEnd, base_s: int) -> _JournalEnd:
        """``end`` without its last record if that record's cycle never saved its state.

        Only the last record can be such: every cycle checks before it appends.
        (Two cycles in the same second cannot be told apart: that record is kept.)
        """
        last = end.last
        if last is None or last[1] != base_s or last[2] == base_s:
            return end
        offset, _, cycle_s = last
        log.warning(
            "history journal %s: the cycle of %d never saved its state: its record dropped"
            " (the next cycle counts those bytes)",
            self.journal,
            cycle_s,
        )
        fd = os.open(self.journal, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        first_s = None if offset == _JOURNAL_HEADER.size else end.first_s
        return _JournalEnd(end.generation, offset, offset, first_s, end.version)

    def _end(self, known: tuple[FileIdentity | None, _JournalEnd] | None) -> _JournalEnd:
        """The journal's end, starting a journal for the file's generation if needed."""
        if known is not None and known[0] is not None and file_identity(self.journal) == known[0]:
            return known[1]
        generation = self._file_generation()
        try:
            fd = open_own(self.journal, os.O_RDONLY, "history journal")
        except FileNotFoundError:
            return self._start_journal(generation or 0)
        try:
            end = _journal_end(fd, self.journal)
        finally:
            os.close(fd)
        if end is None or (generation is not None and end.generation != generation):
            # not a journal, or one already folded in (the last fold stopped halfway)
            return self._start_journal(generation or 0)
        return end

    def _file_generation(self) -> int | None:
        """The history file's generation; None without a usable file (its journal is
        then all there is, and is kept).
        """
        try:
            header = read_own(self.path, "history file", _HEADER.size)
        except FileNotFoundError:
            return None
        if len(header) < _HEADER.size or header[:4] != MAGIC:
            return None  # damaged: the fold moves it aside
        return _HEADER.unpack(header)[2]

    def _start_journal(self, generation: int) -> _JournalEnd:
        make_history_dir(self.journal)
        replace_file(self.journal, _journal_header(generation))
        header = _JOURNAL_HEADER.size
        return _JournalEnd(generation, header, header, None)

    def _fold_due(self, end: _JournalEnd, now_s: int) -> bool:
        if end.first_s is None:
            return False
        if end.first_s // DAY_S != now_s // DAY_S:
            return True  # a new UTC day: buckets are due to roll up
        try:
            file_bytes = os.stat(self.path).st_size
        except FileNotFoundError:
            file_bytes = 0
        return end.end > max(self._fold_min_bytes, file_bytes // JOURNAL_FOLD_SHARE)

    def _append(self, end: _JournalEnd, record: bytes) -> None:
        make_history_dir(self.journal)
        fd = open_own(self.journal, os.O_WRONLY, "history journal")
        try:
            if end.size != end.end:
                log.warning("history journal %s: cut back to byte %d", self.journal, end.end)
                os.ftruncate(fd, end.end)
            view = memoryview(record)
            offset = end.end
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fold(self, now_s: int, roll_up: bool) -> _JournalEnd:
        """Fold the journal (every record of a saved cycle) into the file, rolled up
        at ``now_s`` if ``roll_up``; start the next journal and return its end.
        """
        self._names.clear()
        history = load_history(self.path, self._clock)
        if roll_up:
            history.roll_up(now_s, self.cfg)
        history.generation = (history.generation + 1) & _GENERATION_MASK
        save_history(history, self.path)
        end = self._start_journal(history.generation)
        log.info("history %s: journal folded in (generation %d)", self.path, history.generation)
        return end

"""Usage history, the binary file: its format, its size bound, reading and writing it.

Format version 1 (little endian, fixed-size records, no compression)::

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
field's maximum.

The file is rewritten only when its journal (:mod:`.historyjournal`) is folded
in; readers replay that journal onto it. A damaged file is moved aside by the
next fold (:func:`load_history`), never overwritten.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import disk_full, make_dir, move_aside, read_own, replace_file
from bwenforcer.history.journal import journal_path, replay_journal
from bwenforcer.history.usage import DAY_S, HOUR_S, NAME_MAX_BYTES, History, SliceHistory

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"BWHS"

_HEADER = struct.Struct("<4sHHII")
_SLICE = struct.Struct("<B")
_COUNTS = struct.Struct("<III")
_HOUR = struct.Struct("<IQQII")
_DAY = struct.Struct("<IQQQII")  # days and months
_U32 = 2**32 - 1
_U64 = 2**64 - 1

HEADER_BYTES = _HEADER.size
SLICE_HEADER_MAX_BYTES = _SLICE.size + NAME_MAX_BYTES + _COUNTS.size


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


def size_bytes(history: History) -> int:
    """Size of the file that saves ``history``, in bytes."""
    return HEADER_BYTES + sum(
        _SLICE.size
        + len(name.encode())
        + _COUNTS.size
        + len(sh.hours) * _HOUR.size
        + (len(sh.days) + len(sh.months)) * _DAY.size
        for name, sh in history.slice_items()
    )


def encode_history(history: History) -> bytes:
    """The bytes of the file that saves ``history`` (format version :data:`FORMAT_VERSION`)."""
    parts: list[bytes] = []
    slices = history.slice_items()
    for name, sh in slices:
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
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, history.generation, len(slices), zlib.crc32(body))
    return header + body


def decode_history(data: bytes, source: str) -> History:
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
    slices: dict[str, SliceHistory] = {}
    reader = _Reader(body, source)
    for _ in range(count):
        name = reader.name()
        if name in slices:
            raise HistoryCorrupt(f"{source}: slice {name} appears twice")
        sh = slices[name] = SliceHistory()
        n_hours, n_days, n_months = reader.unpack(_COUNTS)
        sh.hours = reader.tier(_HOUR, n_hours, name, "hours")
        sh.days = reader.tier(_DAY, n_days, name, "days")
        sh.months = reader.tier(_DAY, n_months, name, "months")
    if reader.offset != len(body):
        raise HistoryCorrupt(f"{source}: {len(body) - reader.offset} bytes after the end")
    return History.from_slices(slices, generation)


def _saturated(row: list[int], limits: tuple[int, ...]) -> Iterator[int]:
    return (min(value, limit) for value, limit in zip(row, limits, strict=True))


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
    return None if data is None else decode_history(data, path)


def file_generation(path: str) -> int | None:
    """The generation in the header of the history file ``path``; None without a
    usable file (missing, or not a history file's header).
    """
    try:
        header = read_own(path, "history file", _HEADER.size)
    except FileNotFoundError:
        return None
    if len(header) < _HEADER.size or header[:4] != MAGIC:
        return None
    return _HEADER.unpack(header)[2]


def _with_journal(history: History, path: str, no_file: bool) -> History:
    """``history`` (read from ``path``, or empty if ``no_file``) with its journal replayed."""
    journal = journal_path(path)
    data = _read_bytes(journal)
    return history if data is None else replay_journal(history, data, journal, no_file)


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
    payload = encode_history(history)
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

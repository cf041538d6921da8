"""Usage history, the binary file: its format, its size bound, reading and writing it.

Format version 2 (little endian, fixed-size records, no compression)::

    header   "BWHS"  u16 version  u16 generation  u32 slice count
             u64 offset of the index  u32 CRC-32 of the index                (24 bytes)
    slice    u32 CRC-32 of the rest of the slice's block,
             u8 name length, name (UTF-8, ≤ 255 bytes), u32 hour count,
             u32 day count, u32 month count, u32 month sum count, then the records:
    hour     u32 hours since 1970, u64 default, u64 exempt,
             u32 capped default s, u32 capped exempt s                        (28 bytes)
    day      u32 days since 1970, u64 default, u64 exempt, u64 peak hour,
             u32 capped default s, u32 capped exempt s                        (36 bytes)
    month    u32 year*12+month-1, then as a day                              (36 bytes)
    sum      as a month: the month's total of the slice's days and hours     (36 bytes)
    index    per slice, in name order: u8 name length, name,
             u64 offset of its block, u32 length of its block,
             u32 the last hour it has a bucket for (hours since 1970)

Slices are in name order (of their UTF-8 bytes). Each slice's block carries its
own checksum and the index says where it is, so a reader takes one slice
without reading the others; the month sums let a monthly report read a slice's
months and sums alone. The fold and the reports go slice by slice:
their memory is one slice's, however old and large the history. Version 1 (a
16-byte header "BWHS" u16 version u16 generation u32 slice count u32 CRC-32 of
the body, then the slices without their checksums, no index) is read, and the
next fold writes it again as version 2.

Size: an hour costs 28 bytes, a day, a month or a month sum 36 bytes, a slice's
header and index entry at most 548. With the default retention a slice that sends
something every hour holds at most 384 hours (15 days, plus the day being
filled) and, in its first year, 365 days and 14 month sums:
at most 24,944 bytes per slice for the first year. However old the node, a slice never exceeds
``MAX_BYTES_PER_SLICE`` = 41,468 bytes (384 hours, 715 days, 97 months, 26 month
sums), so the file stays under that times the number of slices plus a 24-byte header. These
bounds hold after a roll-up at the time of the latest record; counts saturate at
their field's maximum.

In total: a slice that departed (neither live nor in the ledger, as the fold is
told) keeps only its months from the fold on, and only the
:data:`DEPARTED_MAX_SLICES` departed slices that sent last are kept (the
index's last hour says which), so churn does not grow the file without end.

The file is rewritten only when its journal (:mod:`.journal`) is folded in
(:func:`fold_history`: slice by slice, from the old file to a new one renamed
over it); readers (:class:`HistoryReader`) replay that journal onto it. A
damaged file is moved aside by the next fold, never overwritten.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import BinaryIO

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import (
    disk_full,
    fsync_dir,
    make_dir,
    move_aside,
    new_temp,
    open_own,
    read_own,
    remove_stale_temps,
    replace_file,
)
from bwenforcer.history.journal import journal_hours, journal_path
from bwenforcer.history.usage import (
    DAY_S,
    HOUR_S,
    NAME_MAX_BYTES,
    Bucketing,
    History,
    SliceHistory,
    add_hour_row,
    add_hours,
    add_hours_to_sums,
    days_to_months,
    hours_to_days,
    merge_row,
    month_of_day,
    month_start_s,
    month_sums,
    roll_up_slice,
    slice_buckets,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAGIC = b"BWHS"

_PREFIX = struct.Struct("<4sHH")  # magic, version, generation: every version's
_HEADER = struct.Struct("<4sHHIQI")
_HEADER_V1 = struct.Struct("<4sHHII")
_CRC = struct.Struct("<I")
_SLICE = struct.Struct("<B")
_COUNTS = struct.Struct("<IIII")  # hours, days, months, month sums
_COUNTS_V1 = struct.Struct("<III")
_HOUR = struct.Struct("<IQQII")
_DAY = struct.Struct("<IQQQII")  # days and months
_PLACE = struct.Struct("<QII")  # an index entry after its name: offset, length, last hour
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_CHUNK_BYTES = 1 << 20

HEADER_BYTES = _HEADER.size
SLICE_HEADER_MAX_BYTES = _CRC.size + _SLICE.size + NAME_MAX_BYTES + _COUNTS.size
INDEX_ENTRY_MAX_BYTES = _SLICE.size + NAME_MAX_BYTES + _PLACE.size


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
    sums = _months_spanned_max(cfg.daily_keep_s + DAY_S)  # the months of the days and hours
    return (
        SLICE_HEADER_MAX_BYTES
        + INDEX_ENTRY_MAX_BYTES
        + hours * _HOUR.size
        + (days + months + sums) * _DAY.size
    )


MAX_BYTES_PER_SLICE = max_bytes_per_slice(HistoryConfig())


def size_bytes(history: History) -> int:
    """Size of the file that saves ``history``, in bytes."""
    return HEADER_BYTES + sum(
        _CRC.size
        + 2 * (_SLICE.size + len(name.encode()))
        + _COUNTS.size
        + _PLACE.size
        + len(sh.hours) * _HOUR.size
        + (len(sh.days) + len(sh.months) + len(month_sums(sh.days, sh.hours))) * _DAY.size
        for name, sh in history.slice_items()
    )


def _saturated(row: list[int], limits: tuple[int, ...]) -> Iterator[int]:
    return (min(value, limit) for value, limit in zip(row, limits, strict=True))


def last_hour(sh: SliceHistory) -> int:
    """The last hour ``sh`` has a bucket for (0: none)."""
    last = 0
    if sh.months:
        month = next(reversed(sh.months))
        last = month_start_s(month + 1) // HOUR_S - 1
    if sh.days:
        last = max(last, (next(reversed(sh.days)) + 1) * 24 - 1)
    if sh.hours:
        last = max(last, next(reversed(sh.hours)))
    return min(last, _U32)


def _pack_tier(shape: struct.Struct, tier: dict[int, list[int]]) -> bytes:
    """A tier's records, packed in one call; counts past their field saturate."""
    flat: list[int] = []
    for key, row in tier.items():
        flat.append(key)
        flat.extend(row)
    try:
        return struct.pack("<" + shape.format[1:] * len(tier), *flat)
    except struct.error:  # a count past its field's maximum: rare, so the slow way
        limits = (_U64, _U64, _U32, _U32) if shape is _HOUR else (_U64, _U64, _U64, _U32, _U32)
        return b"".join(shape.pack(key, *_saturated(row, limits)) for key, row in tier.items())


def encode_slice(name: str, sh: SliceHistory) -> bytes:
    """One slice's block: its checksum, name, counts and records."""
    raw = name.encode()
    sums = month_sums(sh.days, sh.hours)
    body = b"".join((
        _SLICE.pack(len(raw)),
        raw,
        _COUNTS.pack(len(sh.hours), len(sh.days), len(sh.months), len(sums)),
        _pack_tier(_HOUR, sh.hours),
        _pack_tier(_DAY, sh.days),
        _pack_tier(_DAY, sh.months),
        _pack_tier(_DAY, sums),
    ))  # fmt: skip
    return _CRC.pack(zlib.crc32(body)) + body


class _Writer:
    """Writes a file slice by slice to ``out`` (from its start); :meth:`finish` writes
    the index and returns the header, for the caller to put at offset 0.
    """

    def __init__(self, out: BinaryIO, generation: int) -> None:
        self.out = out
        self.generation = generation
        self.offset = HEADER_BYTES
        self.index: list[bytes] = []
        self.last: bytes | None = None
        out.write(bytes(HEADER_BYTES))

    def add(self, name: str, sh: SliceHistory, last: int | None = None) -> None:
        """Write ``sh``; ``last`` is the last hour it sent in (default: its last bucket's)."""
        raw = name.encode()
        if self.last is not None and raw <= self.last:
            raise ValueError(f"history: slice {name} out of order")
        self.last = raw
        block = encode_slice(name, sh)
        self.out.write(block)
        last = last_hour(sh) if last is None else min(last, _U32)
        place = _PLACE.pack(self.offset, len(block), last)
        self.index.append(_SLICE.pack(len(raw)) + raw + place)
        self.offset += len(block)

    def add_block(self, name: str, block: bytes, last: int) -> None:
        """Write a slice's block as it is (see :func:`encode_slice`)."""
        raw = name.encode()
        if self.last is not None and raw <= self.last:
            raise ValueError(f"history: slice {name} out of order")
        self.last = raw
        self.out.write(block)
        place = _PLACE.pack(self.offset, len(block), min(last, _U32))
        self.index.append(_SLICE.pack(len(raw)) + raw + place)
        self.offset += len(block)

    def finish(self) -> bytes:
        index = b"".join(self.index)
        self.out.write(index)
        return _HEADER.pack(
            MAGIC, FORMAT_VERSION, self.generation, len(self.index), self.offset, zlib.crc32(index)
        )


def encode_history(history: History) -> bytes:
    """The bytes of the file that saves ``history`` (format version :data:`FORMAT_VERSION`)."""
    out = io.BytesIO()
    writer = _Writer(out, history.generation)
    for name, sh in history.slice_items():
        writer.add(name, sh)
    header = writer.finish()
    data = out.getbuffer()
    data[:HEADER_BYTES] = header
    return bytes(data)


def decode_history(data: bytes, source: str) -> History:
    """Parse a whole file's bytes; :class:`HistoryCorrupt` names ``source`` and the problem."""
    with HistoryFile(io.BytesIO(data), source, len(data)) as hf:
        return History.from_slices(dict(hf.slices()), hf.generation)


class _Reader:
    """Walks a slice's bytes, raising HistoryCorrupt on any inconsistency."""

    def __init__(self, body: memoryview, source: str, base: int) -> None:
        self.body = body
        self.source = source
        self.base = base  # the body's offset in the file, for messages
        self.offset = 0

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.body):
            raise HistoryCorrupt(f"{self.source}: truncated at byte {self.base + self.offset}")
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

    def slice_counts(self, shape: struct.Struct = _COUNTS) -> tuple[str, tuple[int, ...]]:
        name = self.name()
        return name, self.unpack(shape)

    def records(self, name: str, counts: tuple[int, ...]) -> SliceHistory:
        """The slice's tiers (its month sums, version 2, are skipped: derived data)."""
        n_hours, n_days, n_months = counts[:3]
        sh = SliceHistory()
        sh.hours = self.tier(_HOUR, n_hours, name, "hours")
        sh.days = self.tier(_DAY, n_days, name, "days")
        sh.months = self.tier(_DAY, n_months, name, "months")
        if len(counts) > 3:
            self.take(counts[3] * _DAY.size)
        return sh


def _records_bytes(counts: tuple[int, ...]) -> int:
    return counts[0] * _HOUR.size + sum(counts[1:]) * _DAY.size


class HistoryFile:
    """A history file opened to be read slice by slice (either format version).

    Opening it reads the header and the index (version 1: checks the whole file's
    checksum, reading it in chunks); each slice is read, checked and parsed when
    it is asked for. HistoryCorrupt names the source and the problem.
    """

    def __init__(self, f: BinaryIO, source: str, size: int) -> None:
        self.f = f
        self.source = source
        self.size = size
        prefix = self._read(0, _PREFIX.size, "header")
        magic, self.version, self.generation = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise HistoryCorrupt(f"{source}: not a bwenforcer history file")
        # version 2: (name, offset, length) per slice, in name order; version 1: None
        self.index: list[tuple[str, int, int]] | None = None
        self.last_hours: list[int] = []  # version 2: each slice's last hour, as the index
        if self.version == FORMAT_VERSION:
            self._read_index()
        elif self.version == 1:
            self._check_v1()
        else:
            raise HistoryCorrupt(
                f"{source}: format version {self.version}, expected {FORMAT_VERSION} (or 1)"
            )

    def __enter__(self) -> HistoryFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.f.close()

    def _read(self, offset: int, size: int, what: str) -> bytes:
        self.f.seek(offset)
        data = self.f.read(size)
        if len(data) != size:
            raise HistoryCorrupt(f"{self.source}: truncated {what} at byte {offset}")
        return data

    def _read_index(self) -> None:
        _, _, _, count, index_at, crc = _HEADER.unpack(self._read(0, _HEADER.size, "header"))
        if not HEADER_BYTES <= index_at <= self.size:
            raise HistoryCorrupt(f"{self.source}: index offset {index_at} out of the file")
        data = self._read(index_at, self.size - index_at, "index")
        if zlib.crc32(data) != crc:
            raise HistoryCorrupt(f"{self.source}: index checksum mismatch")
        reader = _Reader(memoryview(data), self.source, index_at)
        index: list[tuple[str, int, int]] = []
        expected, previous = HEADER_BYTES, b""
        for _ in range(count):
            name = reader.name()
            offset, length, last = reader.unpack(_PLACE)
            self.last_hours.append(last)
            raw = name.encode()
            if index and raw <= previous:
                raise HistoryCorrupt(f"{self.source}: slice {name} out of order in the index")
            if offset != expected:
                raise HistoryCorrupt(f"{self.source}: slice {name}: block not where expected")
            previous, expected = raw, offset + length
            index.append((name, offset, length))
        if reader.offset != len(data) or expected != index_at:
            raise HistoryCorrupt(f"{self.source}: index does not match the slices")
        self.index = index
        self.names = [name for name, _, _ in index]

    def _check_v1(self) -> None:
        _, _, _, self.count_v1, crc = _HEADER_V1.unpack(self._read(0, _HEADER_V1.size, "header"))
        running = 0
        self.f.seek(_HEADER_V1.size)
        while chunk := self.f.read(_CHUNK_BYTES):
            running = zlib.crc32(chunk, running)
        if running != crc:
            raise HistoryCorrupt(f"{self.source}: checksum mismatch")

    def _block(self, name: str, offset: int, length: int) -> SliceHistory:
        data = self._read(offset, length, f"slice {name}")
        if length < _CRC.size or zlib.crc32(data[_CRC.size :]) != _CRC.unpack_from(data)[0]:
            raise HistoryCorrupt(f"{self.source}: slice {name}: checksum mismatch")
        reader = _Reader(memoryview(data)[_CRC.size :], self.source, offset + _CRC.size)
        found, counts = reader.slice_counts()
        if found != name:
            raise HistoryCorrupt(f"{self.source}: slice {name}: block holds {found}")
        sh = reader.records(name, counts)
        if reader.offset != length - _CRC.size:
            raise HistoryCorrupt(f"{self.source}: slice {name}: bytes after its records")
        return sh

    def raw_block(self, name: str, offset: int, length: int) -> bytes:
        """A version 2 slice's block after its checksum, checked (not parsed)."""
        data = self._read(offset, length, f"slice {name}")
        body = data[_CRC.size :]
        if length < _CRC.size or zlib.crc32(body) != _CRC.unpack_from(data)[0]:
            raise HistoryCorrupt(f"{self.source}: slice {name}: checksum mismatch")
        raw = name.encode()
        at = _SLICE.size + len(raw)
        if body[:at] != _SLICE.pack(len(raw)) + raw or len(body) < at + _COUNTS.size:
            raise HistoryCorrupt(f"{self.source}: slice {name}: block holds another")
        if len(body) != at + _COUNTS.size + _records_bytes(_COUNTS.unpack_from(body, at)):
            raise HistoryCorrupt(f"{self.source}: slice {name}: counts do not match its block")
        return body

    def slices(self) -> Iterator[tuple[str, SliceHistory]]:
        """Each slice, in name order, read one at a time."""
        if self.index is not None:
            for name, offset, length in self.index:
                yield name, self._block(name, offset, length)
            return
        yield from self._slices_v1()

    def _slices_v1(self) -> Iterator[tuple[str, SliceHistory]]:
        offset, previous = _HEADER_V1.size, None
        for _ in range(self.count_v1):
            head = self.f
            head.seek(offset)
            length = head.read(1)
            if not length:
                raise HistoryCorrupt(f"{self.source}: truncated at byte {offset}")
            size = _SLICE.size + length[0] + _COUNTS_V1.size
            reader = _Reader(memoryview(self._read(offset, size, "slice")), self.source, offset)
            name, counts = reader.slice_counts(_COUNTS_V1)
            if previous is not None and name.encode() <= previous.encode():
                raise HistoryCorrupt(f"{self.source}: slice {name} out of order")
            previous = name
            body = self._read(offset + size, _records_bytes(counts), f"slice {name}")
            offset += size + len(body)
            yield name, _Reader(memoryview(body), self.source, offset).records(name, counts)
        if offset != self.size:
            raise HistoryCorrupt(f"{self.source}: {self.size - offset} bytes after the end")

    def months(self, name: str, hours: dict[int, list[int]]) -> dict[int, list[int]] | None:
        """Version 2: the slice ``name``'s months (its months tier and month sums: the
        rest of its records are not decoded), with ``hours`` of the journal added;
        None if it is not in the file.
        """
        assert self.index is not None
        i = bisect.bisect_left(self.names, name)
        if i == len(self.names) or self.names[i] != name:
            return None
        return self._months(self.raw_block(*self.index[i]), hours)

    def month_slices(
        self, journal: dict[str, dict[int, list[int]]]
    ) -> Iterator[tuple[str, dict[int, list[int]] | SliceHistory]]:
        """Version 2: each slice's months (see :meth:`months`), with the journal's hours;
        a slice of the journal alone as its buckets, in name order.
        """
        assert self.index is not None
        pending = sorted(journal, key=str.encode, reverse=True)
        for name, offset, length in self.index:
            encoded = name.encode()
            while pending and pending[-1].encode() < encoded:
                yield pending[-1], _fresh(journal[pending.pop()])
            hours = journal[pending.pop()] if pending and pending[-1] == name else {}
            yield name, self._months(self.raw_block(name, offset, length), hours)
        for new in reversed(pending):
            yield new, _fresh(journal[new])

    @staticmethod
    def _months(body: bytes, hours: dict[int, list[int]]) -> dict[int, list[int]]:
        _, (packed_h, _, packed_m, packed_s) = _tiers(body)
        acc = {key: row for key, *row in _DAY.iter_unpack(packed_m)}
        for key, *row in _DAY.iter_unpack(packed_s):
            merge_row(acc, key, row)
        add_hours_to_sums(acc, _hour_rows(packed_h, sorted(hours)), hours)
        return acc

    def find(self, name: str) -> SliceHistory | None:
        """The slice ``name``'s buckets (version 2: reading only them); None if absent."""
        if self.index is None:
            return next((sh for found, sh in self._slices_v1() if found == name), None)
        i = bisect.bisect_left(self.names, name)
        if i == len(self.names) or self.names[i] != name:
            return None
        return self._block(*self.index[i])


def _open_file(path: str) -> HistoryFile | None:
    """The history file ``path`` opened for reading; None if there is none."""
    try:
        fd = open_own(path, os.O_RDONLY, "history file")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read history: {exc.strerror or exc}") from exc
    f = os.fdopen(fd, "rb", buffering=_CHUNK_BYTES)
    try:
        return HistoryFile(f, path, os.fstat(fd).st_size)
    except OSError as exc:
        f.close()
        raise HistoryError(f"{path}: cannot read history: {exc.strerror or exc}") from exc
    except BaseException:
        f.close()
        raise


def _read_bytes(path: str) -> bytes | None:
    """The bytes of a file of the history; None if there is none."""
    try:
        return read_own(path, "history file")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read history: {exc.strerror or exc}") from exc


def _journal(
    path: str, generation: int, no_file: bool, only: str | None = None
) -> dict[str, dict[int, list[int]]]:
    journal = journal_path(path)
    data = _read_bytes(journal)
    return {} if data is None else journal_hours(data, journal, generation, no_file, only)


def _merged(
    slices: Iterable[tuple[str, SliceHistory]], journal: dict[str, dict[int, list[int]]]
) -> Iterator[tuple[str, SliceHistory]]:
    """The file's ``slices`` (in name order) with the journal's hours added, and the
    journal's new slices, in name order.
    """
    pending = sorted(journal, key=str.encode, reverse=True)
    for name, sh in slices:
        raw = name.encode()
        while pending and pending[-1].encode() < raw:
            new = pending.pop()
            fresh = SliceHistory()
            add_hours(fresh, journal[new])
            yield new, fresh
        if pending and pending[-1] == name:
            add_hours(sh, journal[pending.pop()])
        yield name, sh
    while pending:
        new = pending.pop()
        fresh = SliceHistory()
        add_hours(fresh, journal[new])
        yield new, fresh


class HistoryReader:
    """The history (the file and its journal) read slice by slice, changing nothing.

    Missing → empty. Raises :class:`HistoryCorrupt` for a damaged file (when
    opened, or when the damaged slice is reached) and :class:`HistoryError` when
    it cannot be read; a damaged journal record ends what is read of the journal
    (logged). With ``only``, just that slice's journal entries are kept.
    """

    def __init__(self, path: str, only: str | None = None) -> None:
        self.path = path
        self._file = _open_file(path)
        try:
            generation = 0 if self._file is None else self._file.generation
            self._journal = _journal(path, generation, self._file is None, only)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def slices(self) -> Iterator[tuple[str, SliceHistory]]:
        """Each slice's buckets (journal included), in name order, one at a time."""
        return _merged(() if self._file is None else self._file.slices(), self._journal)

    def buckets(
        self, by: Bucketing, only: str | None = None
    ) -> Iterator[tuple[str, dict[int, list[int]]]]:
        """Each slice's buckets by ``by`` (see :func:`~.usage.slice_buckets`), in name
        order, or only ``only``'s. By month, a version 2 file's slices are read from
        their months and month sums alone.
        """
        f = self._file
        if by == "month" and f is not None and f.index is not None:
            if only is None:
                items: Iterable[tuple[str, dict[int, list[int]] | SliceHistory | None]]
                items = f.month_slices(self._journal)
            else:
                found = f.months(only, self._journal.get(only, {}))
                if found is None and only in self._journal:
                    found = _fresh(self._journal[only])  # type: ignore[assignment]
                items = [(only, found)]
            for name, got in items:
                if got is not None:
                    yield name, slice_buckets(got, by) if isinstance(got, SliceHistory) else got
            return
        if only is None:
            for name, sh in self.slices():
                yield name, slice_buckets(sh, by)
            return
        sh = self.slice(only)
        if sh is not None:
            yield only, slice_buckets(sh, by)

    def slice(self, name: str) -> SliceHistory | None:
        """The slice ``name``'s buckets (journal included); None if it has no history."""
        sh = None if self._file is None else self._file.find(name)
        hours = self._journal.get(name)
        if hours is not None:
            sh = sh or SliceHistory()
            add_hours(sh, hours)
        return sh


def file_generation(path: str) -> int | None:
    """The generation in the header of the history file ``path``; None without a
    usable file (missing, or not a history file's header).
    """
    try:
        header = read_own(path, "history file", _PREFIX.size)
    except FileNotFoundError:
        return None
    if len(header) < _PREFIX.size or header[:4] != MAGIC:
        return None
    return _PREFIX.unpack(header)[2]


def read_history(path: str) -> History:
    """The whole history (the file and its journal) in memory, changing nothing: for
    small histories and tests; the CLI reads with :class:`HistoryReader`.
    """
    with HistoryReader(path) as reader:
        generation = 0 if reader._file is None else reader._file.generation
        return History.from_slices(dict(reader.slices()), generation)


def load_history(path: str, clock: Callable[[], float] = time.time) -> History:
    """:func:`read_history`, but a damaged file is moved aside (see :func:`fold_history`)
    and the history is its journal alone.
    """
    try:
        return read_history(path)
    except HistoryCorrupt as exc:
        _move_aside(path, exc, clock)
    history = History.from_slices(
        {name: _fresh(hours) for name, hours in _journal(path, 0, True).items()}, 0
    )
    return history


def _fresh(hours: dict[int, list[int]]) -> SliceHistory:
    sh = SliceHistory()
    add_hours(sh, hours)
    return sh


def _move_aside(path: str, exc: HistoryCorrupt, clock: Callable[[], float]) -> None:
    """Move the damaged file to ``<path>.corrupt-<UTC time>``, so the next save cannot
    overwrite what an operator may want to inspect.
    """
    try:
        target = move_aside(path, "corrupt", clock())
    except OSError as move:
        raise HistoryError(f"{path}: cannot move aside: {move.strerror or move}") from exc
    log.error("history unusable (%s): moved to %s, starting an empty history", exc, target)


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


# Departed slices (neither live nor in the ledger) keep only their monthly totals;
# beyond this many, the ones that sent last the longest ago are dropped first.
DEPARTED_MAX_SLICES = 10_000
_BEYOND = 2**62  # a cutoff past every hour and day: all of them roll up


def fold_history(
    path: str,
    generation_mask: int,
    cutoffs: tuple[int, int, int] | None,
    clock: Callable[[], float] = time.time,
    *,
    live: Collection[str] | None = None,
    departed_max: int = DEPARTED_MAX_SLICES,
) -> int:
    """Fold the journal into the file, slice by slice, rolled up at ``cutoffs``
    (:func:`~.usage.roll_up_cutoffs`; None: no roll-up); return the new file's
    generation (the old one's plus one, within ``generation_mask``).

    With ``live`` (the names of the live slices and of the ledger's entries),
    every other slice has departed for good: its hours and days are rolled up
    into its months, and of the departed slices at most ``departed_max`` are kept,
    those that sent something last (the index says when, so nothing else is read
    to choose). So the file is bounded in total, not only per slice.

    The new file is written beside the old one, fsynced and renamed over it, so a
    kill at any instant leaves the old file (its journal still extending it) or
    the new one (the journal then of an older generation: ignored, and replaced by
    the caller). Memory: one slice's buckets, the index and the journal's hours.
    A damaged file (found at any slice) is moved aside and the journal alone is
    folded. OSError is the caller's to report.
    """
    make_history_dir(path)
    args = (path, generation_mask, cutoffs)
    try:
        return _fold(*args, live=live, departed_max=departed_max, use_file=True)
    except HistoryCorrupt as exc:
        _move_aside(path, exc, clock)
    return _fold(*args, live=live, departed_max=departed_max, use_file=False)


def _dropped(
    old: HistoryFile | None,
    journal: dict[str, dict[int, list[int]]],
    live: Collection[str],
    departed_max: int,
) -> set[str]:
    """The departed slices beyond the ``departed_max`` that sent something last."""
    last: dict[str, int] = {}
    if old is not None and old.index is not None:
        for (name, _, _), hour in zip(old.index, old.last_hours, strict=True):
            if name not in live:
                last[name] = hour
    for name, hours in journal.items():
        if name not in live:
            last[name] = max(last.get(name, 0), *hours)
    if len(last) <= departed_max:
        return set()
    by_age = sorted(last, key=lambda name: (last[name], name.encode()))
    return set(by_age[: len(last) - departed_max])


def _fold(
    path: str,
    generation_mask: int,
    cutoffs: tuple[int, int, int] | None,
    *,
    live: Collection[str] | None,
    departed_max: int,
    use_file: bool,
) -> int:
    old = _open_file(path) if use_file else None
    try:
        generation = 0 if old is None else old.generation
        journal = _journal(path, generation, old is None)
        generation = (generation + 1) & generation_mask
        departed = cutoffs is not None and live is not None
        dropped = _dropped(old, journal, live, departed_max) if departed else set()  # type: ignore[arg-type]

        def treated(name: str, sh: SliceHistory, last: int) -> Iterator[tuple[str, bytes, int]]:
            if name in dropped:
                log.info("history: slice %s dropped: departed, sent the longest ago", name)
                return
            if cutoffs is not None:
                if departed and name not in live:  # type: ignore[operator]
                    roll_up_slice(sh, (_BEYOND, _BEYOND, cutoffs[2]))  # months only
                if roll_up_slice(sh, cutoffs):
                    log.info("history: slice %s aged out", name)
                    return
            if not sh.empty():
                yield name, encode_slice(name, sh), last

        def parsed() -> Iterator[tuple[str, bytes, int]]:
            for name, sh in _merged(() if old is None else old.slices(), journal):
                yield from treated(name, sh, last_hour(sh))

        def raw() -> Iterator[tuple[str, bytes, int]]:
            """Version 2: each slice's block worked on as bytes (see :func:`_fold_block`)."""
            assert old is not None and old.index is not None
            pending = sorted(journal, key=str.encode, reverse=True)
            for (name, offset, length), known in zip(old.index, old.last_hours, strict=True):
                encoded = name.encode()
                while pending and pending[-1].encode() < encoded:
                    new = pending.pop()
                    fresh = SliceHistory()
                    add_hours(fresh, journal[new])
                    yield from treated(new, fresh, last_hour(fresh))
                hours = journal[pending.pop()] if pending and pending[-1] == name else {}
                if name in dropped:
                    log.info("history: slice %s dropped: departed, sent the longest ago", name)
                    continue
                at = cutoffs or (0, 0, 0)
                if departed and name not in live:  # type: ignore[operator]
                    at = (_BEYOND, _BEYOND, at[2])  # months only
                body = _fold_block(old.raw_block(name, offset, length), hours, at)
                if body is None:
                    log.info("history: slice %s aged out", name)
                    continue
                yield name, _CRC.pack(zlib.crc32(body)) + body, max([known, *hours])
            for new in reversed(pending):
                fresh = SliceHistory()
                add_hours(fresh, journal[new])
                yield from treated(new, fresh, last_hour(fresh))

        v2 = old is not None and old.index is not None
        _write_blocks(path, generation, raw() if v2 else parsed())
    finally:
        if old is not None:
            old.close()
    return generation


def write_history(
    path: str, generation: int, slices: Iterable[tuple[str, SliceHistory, int | None]]
) -> None:
    """Write a history file of ``generation`` holding ``slices`` (in name order, each
    with the last hour it sent in, None: its last bucket's), as they come: to a temp
    file beside ``path``, fsynced, then renamed over it. OSError is the caller's to
    report (the temp file is gone, the old file intact).
    """
    _write_blocks(
        path,
        generation,
        (
            (name, encode_slice(name, sh), last_hour(sh) if last is None else last)
            for name, sh, last in slices
        ),
    )


def _write_blocks(path: str, generation: int, blocks: Iterable[tuple[str, bytes, int]]) -> None:
    """:func:`write_history` of slices' blocks as they are."""
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(directory, (f"{os.path.basename(path)}.tmp-",))
    fd, tmp = new_temp(path)
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK_BYTES) as out:
            writer = _Writer(out, generation)
            for name, block, last in blocks:
                writer.add_block(name, block, last)
            header = writer.finish()
            out.flush()
            os.pwrite(out.fileno(), header, 0)
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_KEY = struct.Struct("<I")


def _first_at(view: memoryview, size: int, key: int) -> int:
    """How many of the records (of ``size`` bytes, in key order) in ``view`` are below ``key``."""
    lo, hi = 0, len(view) // size
    while lo < hi:
        mid = (lo + hi) // 2
        if _KEY.unpack_from(view, mid * size)[0] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _fold_tier(
    view: memoryview,
    shape: struct.Struct,
    cutoff: int,
    incoming: dict[int, list[int]],
    merge: Callable[[dict[int, list[int]], int, list[int]], None],
) -> tuple[bytes, list[tuple[int, list[int]]], int]:
    """One tier's records (packed, in key order) with ``incoming`` rows merged in and
    those below ``cutoff`` taken out: ``(the kept records packed, the taken ones,
    how many are kept)``. Only the records below the cutoff and from the first
    incoming key on are decoded; those between are copied as they are.
    """
    size = shape.size
    due_end = _first_at(view, size, cutoff)
    hot_start = (
        max(due_end, _first_at(view, size, min(incoming))) if incoming else len(view) // size
    )
    hot: dict[int, list[int]] = {}
    for key, *row in shape.iter_unpack(view[: due_end * size]):
        hot[key] = row
    for key, *row in shape.iter_unpack(view[hot_start * size :]):
        hot[key] = row
    for key in sorted(incoming):
        merge(hot, key, incoming[key])
    keys = sorted(hot)
    due = [(key, hot[key]) for key in keys if key < cutoff]
    kept = {key: hot[key] for key in keys if key >= cutoff}
    packed = bytes(view[due_end * size : hot_start * size]) + _pack_tier(shape, kept)
    return packed, due, hot_start - due_end + len(kept)


def _tiers(body: bytes) -> tuple[int, list[memoryview]]:
    """Where a version 2 block body's counts are, and its four tiers' records."""
    view = memoryview(body)
    at = _SLICE.size + body[0]
    start = at + _COUNTS.size
    tiers = []
    for count, shape in zip(_COUNTS.unpack_from(body, at), (_HOUR, _DAY, _DAY, _DAY), strict=True):
        tiers.append(view[start : start + count * shape.size])
        start += count * shape.size
    return at, tiers


def _range(view: memoryview, shape: struct.Struct, lo: int, hi: int) -> memoryview:
    """The records of ``view`` with keys in ``[lo, hi)``."""
    return view[
        _first_at(view, shape.size, lo) * shape.size : _first_at(view, shape.size, hi) * shape.size
    ]


def _hour_rows(hours: memoryview, keys: Iterable[int]) -> dict[int, list[int]]:
    """The rows of those ``keys`` among the packed ``hours`` (a few, at its end)."""
    found = {}
    for key in keys:
        i = _first_at(hours, _HOUR.size, key)
        if i * _HOUR.size < len(hours):
            got, *row = _HOUR.unpack_from(hours, i * _HOUR.size)
            if got == key:
                found[key] = row
    return found


def _month_sum(hours: memoryview, days: memoryview, month: int) -> list[int] | None:
    """One month's sum (see :func:`~.usage.month_sums`) from the packed tiers."""
    first, last = month_start_s(month) // DAY_S, month_start_s(month + 1) // DAY_S
    day_rows = {k: row for k, *row in _DAY.iter_unpack(_range(days, _DAY, first, last))}
    hour_rows = {
        k: row for k, *row in _HOUR.iter_unpack(_range(hours, _HOUR, first * 24, last * 24))
    }
    return month_sums(day_rows, hour_rows).get(month)


def _fold_block(
    body: bytes, hours: dict[int, list[int]], cutoffs: tuple[int, int, int]
) -> bytes | None:
    """A slice's block (after its checksum) with the journal's ``hours`` added and
    rolled up at ``cutoffs``, as :func:`~.usage.roll_up_slice` would; None if nothing
    is left. Worked on its bytes: a fold rolls up only the ends of each tier, so
    the years of records between are copied, not decoded and encoded again. The
    month sums follow: the journal's hours are added to them, hours rolled up into
    days leave them as they are, and a month whose days move to the months tier is
    summed again from what is left of it.
    """
    at, (old_h, old_d, old_m, old_s) = _tiers(body)
    cut_hour, cut_day, cut_month = cutoffs
    sums = {key: row for key, *row in _DAY.iter_unpack(old_s)}
    add_hours_to_sums(sums, _hour_rows(old_h, sorted(hours)), hours)
    packed_h, due_h, kept_h = _fold_tier(old_h, _HOUR, cut_hour, hours, add_hour_row)
    packed_d, due_d, kept_d = _fold_tier(old_d, _DAY, cut_day, hours_to_days(due_h), merge_row)
    packed_m, _, kept_m = _fold_tier(old_m, _DAY, cut_month, days_to_months(due_d), merge_row)
    for month in {month_of_day(day) for day, _ in due_d}:
        row = _month_sum(memoryview(packed_h), memoryview(packed_d), month)
        if row is None:
            sums.pop(month, None)
        else:
            sums[month] = row
    if not (kept_h or kept_d or kept_m):
        return None
    sums = dict(sorted(sums.items()))
    counts = _COUNTS.pack(kept_h, kept_d, kept_m, len(sums))
    return b"".join((body[:at], counts, packed_h, packed_d, packed_m, _pack_tier(_DAY, sums)))


def make_history_dir(path: str) -> None:
    """Create the directory of the history file ``path`` (0700) if needed; refuse one
    others could write (UnsafePath).
    """
    make_dir(os.path.dirname(os.path.abspath(path)), "history directory")

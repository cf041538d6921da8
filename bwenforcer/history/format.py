"""Usage history, the binary file's format: its layout, its size bound, encoding a
slice's block and writing a file slice by slice, and walking packed records.

Decoding a file is :mod:`.decode`, reading the history (file and journal)
:mod:`.reader`, saving and folding it :mod:`.fold`.

Format version 6 (little endian, fixed-size records, no compression)::

    header   "BWHS"  u16 version  u16 generation  u32 slice count
             u64 offset of the index  u32 CRC-32 of the index
             u32 CRC-32 of the header's first 24 bytes                       (28 bytes)
    slice    u32 CRC-32 of the rest of the slice's block,
             u8 name length, name (UTF-8, ≤ 255 bytes), u32 hour count,
             u32 day count, u32 month count, u32 month sum count,
             u8 flags (bit 0: wide, the records carry received bytes), then the
             records, narrow or wide as the flags say:
    hour     u32 hours since 1970, u64 default, u64 exempt,
             u32 capped default s, u32 capped exempt s                 (narrow: 28 bytes)
             then, wide, u64 received default, u64 received exempt       (wide: 44 bytes)
    day      u32 days since 1970, u64 default, u64 exempt, u64 peak hour,
             u32 capped default s, u32 capped exempt s                 (narrow: 36 bytes)
             then, wide, u64 received default, u64 received exempt       (wide: 52 bytes)
    month    u32 year*12+month-1, then as a day                       (36 or 52 bytes)
    sum      as a month: the month's total of the slice's days and hours
    index    per slice, in name order: u8 name length, name,
             u64 offset of its block, u32 length of its block,
             u32 the last hour it has a bucket for (hours since 1970)

(default and exempt without "received": bytes sent; the peak hour is of the bytes
sent.) A block is written narrow when none of its records received anything (most
nodes count no inbound bytes: the received columns would be a third of the file's
zeros) and wide otherwise; the journal's first received bytes for a narrow block
make the fold write it wide. A wide block stays wide while the fold works on its
bytes, even once its received bytes have aged out, until it is written anew.

Slices are in name order (of their UTF-8 bytes). Each slice's block carries its
own checksum and the index says where it is, so a reader takes one slice
without reading the others (and a fold skips a damaged block alone, keeping the
rest); the header's own checksum covers the generation, which tells whether the
journal extends this file (a flipped bit there would have the journal dropped);
the month sums let a monthly report read a slice's months and sums alone. The
fold and the reports go slice by slice: their memory is one slice's, however old
and large the history. Older versions are read, and the next fold writes them
again as version 6: version 5 (the layout above without the flags, every block
wide: the reports work on its blocks as bytes, given their flags; its fold
parses each block once, to write those that received nothing narrow), version
4 (as version 5 with every block narrow), version 2 (as version 4 but for a
24-byte header, without its checksum) and version 1 (a 16-byte header "BWHS"
u16 version u16 generation u32 slice count u32 CRC-32 of the body, then the
slices without their checksums, no index, narrow); narrow records are read
widened (received 0). (Version 3 was never written by a release.)

Size: a wide hour costs 44 bytes, a wide day, month or month sum 52 bytes (narrow:
28 and 36), a slice's header and index entry at most 549. With the default
retention a slice that sends something every hour holds at most 384 hours (15
days, plus the day being filled) and, in its first year, 365 days and 14 month
sums: at most 37,153 bytes per slice for the first year (24,945 narrow). However
old the node, a slice never exceeds ``MAX_BYTES_PER_SLICE`` = 61,021 bytes (384
hours, 715 days, 97 months, 26 month sums; 41,469 narrow), so the file stays
under that times the number of slices plus a 28-byte header. These bounds hold
after a roll-up at the time of the latest record; counts saturate at their
field's maximum.

In total: a slice that departed (neither live nor in the ledger, as the fold is
told) keeps only its months from the fold on, and only the
:data:`~.fold.DEPARTED_MAX_SLICES` departed slices that sent last are kept (the
index's last hour says which), so churn does not grow the file without end.

The file is rewritten only when its journal (:mod:`.journal`) is folded in
(:func:`~.fold.fold_history`: slice by slice, from the old file to a new one renamed
over it); readers (:class:`~.reader.HistoryReader`) replay that journal onto it. A
damaged file is moved aside by the next fold, never overwritten.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.usage import (
    DAY_S,
    HOUR_S,
    NAME_MAX_BYTES,
    History,
    SliceHistory,
    month_start_s,
    month_sums,
)

FORMAT_VERSION = 6
MAGIC = b"BWHS"

_PREFIX = struct.Struct("<4sHH")  # magic, version, generation: every version's
_HEADER = struct.Struct("<4sHHIQII")  # versions 4 on: the last field checksums the others
_HEADER_V2 = struct.Struct("<4sHHIQI")
_HEADER_V1 = struct.Struct("<4sHHII")
_CRC = struct.Struct("<I")
_SLICE = struct.Struct("<B")
_COUNTS = struct.Struct("<IIII")  # hours, days, months, month sums
_COUNTS_V1 = struct.Struct("<III")
_FLAGS = struct.Struct("<B")  # version 6, after the counts
_WIDE = 1  # the flag of a block whose records carry received bytes
# wide records: version 5's, version 6's wide blocks'
_HOUR = struct.Struct("<IQQIIQQ")
_DAY = struct.Struct("<IQQQIIQQ")  # days and months
# narrow records (nothing received): versions 1, 2 and 4's, version 6's narrow blocks';
# read widened with zeros
_HOUR_V2 = struct.Struct("<IQQII")
_DAY_V2 = struct.Struct("<IQQQII")
_PLACE = struct.Struct("<QII")  # an index entry after its name: offset, length, last hour
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_CHUNK_BYTES = 1 << 20

HEADER_BYTES = _HEADER.size
SLICE_HEADER_MAX_BYTES = _CRC.size + _SLICE.size + NAME_MAX_BYTES + _COUNTS.size + _FLAGS.size
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
    """Upper bound of one slice's share of the file right after a roll-up, for ``cfg``
    (its block wide: a narrow one is smaller).
    """
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


def shapes(wide: bool) -> tuple[struct.Struct, struct.Struct]:
    """The hour and day records of a wide block, or of a narrow one."""
    return (_HOUR, _DAY) if wide else (_HOUR_V2, _DAY_V2)


def receives(sh: SliceHistory) -> bool:
    """Whether any of ``sh``'s records has received bytes: its block is then wide."""
    return any(row[-1] or row[-2] for row in sh.hours.values()) or any(
        row[-1] or row[-2] for tier in (sh.days, sh.months) for row in tier.values()
    )


def size_bytes(history: History) -> int:
    """Size of the file that saves ``history``, in bytes."""
    total = HEADER_BYTES
    for name, sh in history.slice_items():
        hour, day = shapes(receives(sh))
        total += (
            _CRC.size
            + 2 * (_SLICE.size + len(name.encode()))
            + _COUNTS.size
            + _FLAGS.size
            + _PLACE.size
            + len(sh.hours) * hour.size
            + (len(sh.days) + len(sh.months) + len(month_sums(sh.days, sh.hours))) * day.size
        )
    return total


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
    """A tier's records, packed in one call (narrow: the rows' received bytes, all 0,
    left out); counts past their field saturate.
    """
    width = len(shape.format) - 2  # the fields after "<" and the key
    flat: list[int] = []
    for key, row in tier.items():
        flat.append(key)
        flat.extend(row if len(row) == width else row[:width])
    try:
        return struct.pack("<" + shape.format[1:] * len(tier), *flat)
    except struct.error:  # a count past its field's maximum: rare, so the slow way
        limits = tuple(_U64 if field == "Q" else _U32 for field in shape.format[2:])
        return b"".join(
            shape.pack(key, *_saturated(row[:width], limits)) for key, row in tier.items()
        )


def encode_slice(name: str, sh: SliceHistory) -> bytes:
    """One slice's block: its checksum, name, counts, flags and records (wide if any
    of them received bytes, else narrow).
    """
    raw = name.encode()
    sums = month_sums(sh.days, sh.hours)
    wide = receives(sh)
    hour, day = shapes(wide)
    body = b"".join((
        _SLICE.pack(len(raw)),
        raw,
        _COUNTS.pack(len(sh.hours), len(sh.days), len(sh.months), len(sums)),
        _FLAGS.pack(_WIDE if wide else 0),
        _pack_tier(hour, sh.hours),
        _pack_tier(day, sh.days),
        _pack_tier(day, sh.months),
        _pack_tier(day, sums),
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
        return pack_header(self.generation, len(self.index), self.offset, zlib.crc32(index))


def pack_header(generation: int, count: int, index_at: int, index_crc: int) -> bytes:
    """A version :data:`FORMAT_VERSION` header, its own checksum last."""
    head = _HEADER_V2.pack(MAGIC, FORMAT_VERSION, generation, count, index_at, index_crc)
    return head + _CRC.pack(zlib.crc32(head))


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


def is_wide(body: bytes) -> bool:
    """Whether a current version block body (after its checksum) is wide."""
    return bool(body[_SLICE.size + body[0] + _COUNTS.size] & _WIDE)


def _tiers(body: bytes) -> tuple[int, bool, list[memoryview]]:
    """Where a current version block body's counts are, whether it is wide, and its
    four tiers' records.
    """
    view = memoryview(body)
    at = _SLICE.size + body[0]
    start = at + _COUNTS.size + _FLAGS.size
    wide = is_wide(body)
    hour, day = shapes(wide)
    tiers = []
    for count, shape in zip(_COUNTS.unpack_from(body, at), (hour, day, day, day), strict=True):
        tiers.append(view[start : start + count * shape.size])
        start += count * shape.size
    return at, wide, tiers


def _range(view: memoryview, shape: struct.Struct, lo: int, hi: int) -> memoryview:
    """The records of ``view`` with keys in ``[lo, hi)``."""
    return view[
        _first_at(view, shape.size, lo) * shape.size : _first_at(view, shape.size, hi) * shape.size
    ]


def _hour_rows(
    hours: memoryview, keys: Sequence[int], shape: struct.Struct
) -> dict[int, list[int]]:
    """The rows of those ``keys`` (in order) among the packed ``hours`` (a few, at its
    end; records of ``shape``): the first found by a binary search, the rest by
    walking on from it.
    """
    if not keys:
        return {}
    wanted = set(keys)
    at = _first_at(hours, shape.size, keys[0]) * shape.size
    found = {}
    for key, *row in shape.iter_unpack(hours[at:]):
        if key > keys[-1]:
            break
        if key in wanted:
            found[key] = row
    return found

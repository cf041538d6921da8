"""Usage history, the binary file decoded (see :mod:`.format` for its layout): a
file opened and read slice by slice, checked as it goes (:class:`HistoryFile`,
either format version), a whole file's bytes parsed, a file's generation.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import open_own, read_own
from bwenforcer.history.format import (
    _CHUNK_BYTES,
    _COUNTS,
    _COUNTS_V1,
    _CRC,
    _FLAGS,
    _HEADER,
    _HEADER_V1,
    _HEADER_V2,
    _PLACE,
    _PREFIX,
    _SLICE,
    _WIDE,
    FORMAT_VERSION,
    MAGIC,
    _first_at,
    _hour_rows,
    _tiers,
    shapes,
)
from bwenforcer.history.usage import (
    History,
    SliceHistory,
    add_hour_row,
    add_hours,
    add_hours_to_sums,
    days_of_hours,
    merge_row,
)

log = logging.getLogger(__name__)


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

    def tier(
        self, shape: struct.Struct, count: int, name: str, what: str, pad: int = 0
    ) -> dict[int, list[int]]:
        """``count`` records of ``shape``, each row widened by ``pad`` zeros (the received
        bytes records before version 5 do not have).
        """
        tier: dict[int, list[int]] = {}
        previous = -1
        zeros = [0] * pad
        for key, *row in shape.iter_unpack(self.take(count * shape.size)):
            if key <= previous:
                raise HistoryCorrupt(f"{self.source}: slice {name}: {what} out of order")
            previous = key
            tier[key] = row + zeros if pad else row
        return tier

    def slice_counts(self, shape: struct.Struct = _COUNTS) -> tuple[str, tuple[int, ...]]:
        name = self.name()
        return name, self.unpack(shape)

    def flags(self, name: str, version: int) -> bool:
        """Whether the block's records are wide: a version 6 block's flags (after its
        counts) say so; every version 5 block is, no block of an older one.
        """
        if version != FORMAT_VERSION:
            return version == 5
        (flags,) = self.unpack(_FLAGS)
        if flags & ~_WIDE:
            raise HistoryCorrupt(f"{self.source}: slice {name}: unknown flags {flags:#x}")
        return bool(flags)

    def records(self, name: str, counts: tuple[int, ...], wide: bool) -> SliceHistory:
        """The slice's tiers (its month sums, version 2 on, are skipped: derived data);
        narrow records are widened with 0 bytes received.
        """
        hour, day = shapes(wide)
        pad = 0 if wide else 2
        n_hours, n_days, n_months = counts[:3]
        sh = SliceHistory()
        sh.hours = self.tier(hour, n_hours, name, "hours", pad)
        sh.days = self.tier(day, n_days, name, "days", pad)
        sh.months = self.tier(day, n_months, name, "months", pad)
        if len(counts) > 3:
            self.take(counts[3] * day.size)
        return sh


def _records_bytes(counts: tuple[int, ...], wide: bool) -> int:
    hour, day = shapes(wide)
    return counts[0] * hour.size + sum(counts[1:]) * day.size


# the versions with an index: their header's layout (the blocks follow it); version
# 2's header has no checksum of its own; version 4's records have no received bytes,
# version 5's all have, version 6's blocks say which
_INDEXED = {FORMAT_VERSION: _HEADER, 5: _HEADER, 4: _HEADER, 2: _HEADER_V2}


def _checked_header(data: bytes, source: str) -> bytes:
    """A version 4 on header's bytes, its own checksum checked (HistoryCorrupt)."""
    (crc,) = _CRC.unpack_from(data, _HEADER.size - _CRC.size)
    if zlib.crc32(data[: _HEADER.size - _CRC.size]) != crc:
        raise HistoryCorrupt(f"{source}: header checksum mismatch")
    return data


class HistoryFile:
    """A history file opened to be read slice by slice (any format version).

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
        # version 2 on: (name, offset, length) per slice, in name order; version 1: None
        self.index: list[tuple[str, int, int]] | None = None
        self.last_hours: list[int] = []  # version 2 on: each slice's last hour, as the index
        if self.version in _INDEXED:
            self._read_index()
        elif self.version == 1:
            self._check_v1()
        else:
            raise HistoryCorrupt(
                f"{source}: format version {self.version}, expected {FORMAT_VERSION}"
                " (or 1, 2, 4, 5)"
            )

    @property
    def packed(self) -> bool:
        """Whether its blocks are worked on as bytes in the current version's layout
        (:meth:`raw_block`, :meth:`months`): the current version's, and version 5's
        (given their flags, wide, as they are read); else each slice is parsed.
        """
        return self.version in (5, FORMAT_VERSION)

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
        layout = _INDEXED[self.version]
        header = self._read(0, layout.size, "header")
        if layout is _HEADER:
            _checked_header(header, self.source)
        _, _, _, count, index_at, crc = _HEADER_V2.unpack_from(header)
        if not layout.size <= index_at <= self.size:
            raise HistoryCorrupt(f"{self.source}: index offset {index_at} out of the file")
        data = self._read(index_at, self.size - index_at, "index")
        if zlib.crc32(data) != crc:
            raise HistoryCorrupt(f"{self.source}: index checksum mismatch")
        reader = _Reader(memoryview(data), self.source, index_at)
        index: list[tuple[str, int, int]] = []
        expected, previous = layout.size, b""
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

    def block(self, name: str, offset: int, length: int) -> SliceHistory:
        """A slice's block (an index entry), checked and parsed (HistoryCorrupt)."""
        data = self._read(offset, length, f"slice {name}")
        if length < _CRC.size or zlib.crc32(data[_CRC.size :]) != _CRC.unpack_from(data)[0]:
            raise HistoryCorrupt(f"{self.source}: slice {name}: checksum mismatch")
        reader = _Reader(memoryview(data)[_CRC.size :], self.source, offset + _CRC.size)
        found, counts = reader.slice_counts()
        if found != name:
            raise HistoryCorrupt(f"{self.source}: slice {name}: block holds {found}")
        sh = reader.records(name, counts, reader.flags(name, self.version))
        if reader.offset != length - _CRC.size:
            raise HistoryCorrupt(f"{self.source}: slice {name}: bytes after its records")
        return sh

    def raw_block(self, name: str, offset: int, length: int) -> bytes:
        """A slice's block after its checksum, checked (not parsed), in the current
        version's layout (:attr:`packed`: a version 5 block, wide, gains its flags).
        """
        data = self._read(offset, length, f"slice {name}")
        body = data[_CRC.size :]
        if length < _CRC.size or zlib.crc32(body) != _CRC.unpack_from(data)[0]:
            raise HistoryCorrupt(f"{self.source}: slice {name}: checksum mismatch")
        raw = name.encode()
        at = _SLICE.size + len(raw)
        head = _COUNTS.size + (_FLAGS.size if self.version == FORMAT_VERSION else 0)
        if body[:at] != _SLICE.pack(len(raw)) + raw or len(body) < at + head:
            raise HistoryCorrupt(f"{self.source}: slice {name}: block holds another")
        reader = _Reader(memoryview(body)[at:], self.source, offset + _CRC.size + at)
        counts = reader.unpack(_COUNTS)
        wide = reader.flags(name, self.version)
        if len(body) != at + reader.offset + _records_bytes(counts, wide):
            raise HistoryCorrupt(f"{self.source}: slice {name}: counts do not match its block")
        if self.version != FORMAT_VERSION:  # version 5: every block wide, no flags
            flags_at = at + _COUNTS.size
            return body[:flags_at] + _FLAGS.pack(_WIDE) + body[flags_at:]
        return body

    def check(self) -> None:
        """Check every slice's block (its checksum and counts) without parsing it, a
        block at a time; HistoryCorrupt at the first damaged one. (Version 1: its
        whole checksum was checked when it was opened.)
        """
        for entry in self.index or ():
            self.raw_block(*entry)

    def slices(self) -> Iterator[tuple[str, SliceHistory]]:
        """Each slice, in name order, read one at a time."""
        if self.index is not None:
            for name, offset, length in self.index:
                yield name, self.block(name, offset, length)
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
            body = self._read(offset + size, _records_bytes(counts, False), f"slice {name}")
            offset += size + len(body)
            yield name, _Reader(memoryview(body), self.source, offset).records(name, counts, False)
        if offset != self.size:
            raise HistoryCorrupt(f"{self.source}: {self.size - offset} bytes after the end")

    def months(self, name: str, hours: dict[int, list[int]]) -> dict[int, list[int]] | None:
        """A file in the current layout (:attr:`packed`): the slice ``name``'s months (its
        months tier and month sums: the rest of its records are not decoded), with
        ``hours`` of the journal added; None if it is not in the file.
        """
        assert self.index is not None and self.packed
        i = bisect.bisect_left(self.names, name)
        if i == len(self.names) or self.names[i] != name:
            return None
        return self._months(self.raw_block(*self.index[i]), hours)

    def month_slices(
        self, journal: dict[str, dict[int, list[int]]]
    ) -> Iterator[tuple[str, dict[int, list[int]] | SliceHistory]]:
        """A file in the current layout: each slice's months (see :meth:`months`), with
        the journal's hours; a slice of the journal alone as its buckets, in name order.
        """
        assert self.index is not None and self.packed
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
        _, wide, (packed_h, _, packed_m, packed_s) = _tiers(body)
        hour, day = shapes(wide)
        zeros = [] if wide else [0, 0]  # a narrow block's rows widened: a few dozen
        acc = {key: row + zeros for key, *row in day.iter_unpack(packed_m)}
        for key, *row in day.iter_unpack(packed_s):
            merge_row(acc, key, row + zeros)
        add_hours_to_sums(acc, _hour_rows(packed_h, sorted(hours), hour), hours)
        return acc

    def day_slices(
        self, journal: dict[str, dict[int, list[int]]], *, received: bool = True
    ) -> Iterator[tuple[str, list[tuple[int, ...]]]]:
        """A file in the current layout: each slice's plain day rows (day key, default,
        exempt, peak hour, capped default s, capped exempt s, received default and exempt;
        in key order) with the journal's hours added, a slice of the journal alone too,
        in name order. Its days are taken as stored; only its hours are summed (by day).
        Without ``received`` a narrow block's rows may stop before the bytes received
        (all 0), which are then not added to them.
        """
        assert self.index is not None and self.packed
        pending = sorted(journal, key=str.encode, reverse=True)
        for name, offset, length in self.index:
            encoded = name.encode()
            while pending and pending[-1].encode() < encoded:
                yield pending[-1], _day_rows(b"", b"", journal[pending.pop()], True, received)
            hours = journal[pending.pop()] if pending and pending[-1] == name else {}
            _, wide, (packed_h, packed_d, _, _) = _tiers(self.raw_block(name, offset, length))
            yield name, _day_rows(packed_d, packed_h, hours, wide, received)
        for new in reversed(pending):
            yield new, _day_rows(b"", b"", journal[new], True, received)

    def find(self, name: str) -> SliceHistory | None:
        """The slice ``name``'s buckets (version 2 on: reading only them); None if absent."""
        if self.index is None:
            return next((sh for found, sh in self._slices_v1() if found == name), None)
        i = bisect.bisect_left(self.names, name)
        if i == len(self.names) or self.names[i] != name:
            return None
        return self.block(*self.index[i])


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


def _day_rows(
    packed_d: bytes | memoryview,
    packed_h: bytes | memoryview,
    hours: dict[int, list[int]],
    wide: bool,
    received: bool,
) -> list[tuple[int, ...]]:
    """A slice's plain day rows (see :meth:`HistoryFile.day_slices`) from its packed
    days and hours (``wide`` records or narrow) and the journal's ``hours``: as
    :func:`~.usage.slice_buckets` sums them by day, the stored days unpacked as they
    are. Narrow records are widened only if the bytes ``received`` are asked for: the
    common case (nothing received, nor shown) pays nothing for columns of zeros.
    """
    hour, day = shapes(wide)
    widen = received and not wide
    days = list(day.iter_unpack(packed_d))
    if widen:
        days = [(*row, 0, 0) for row in days]
    at = len(packed_h)
    if hours:  # the journal's hours are the last ones: the records from the first on
        at = _first_at(packed_h, hour.size, min(hours)) * hour.size
    records = list(hour.iter_unpack(packed_h[:at]))
    if widen:
        records = [(*row, 0, 0) for row in records]
    if hours:
        zeros = [] if wide else [0, 0]  # as wide as the journal's rows, to add them
        tail = {key: row + zeros for key, *row in hour.iter_unpack(packed_h[at:])}
        for key, row in hours.items():
            add_hour_row(tail, key, row)
        width = 6 if wide or received else 4  # as the records before them
        records.extend((key, *row[:width]) for key, row in sorted(tail.items()))
    summed = days_of_hours(records)
    if summed and days and summed[0][0] <= days[-1][0]:  # days held twice: merged
        pad = [0] * (8 - len(days[0]))  # narrow rows widened, to be merged (rare)
        acc = {key: list(row) + pad for key, *row in days}
        for key, *row in summed:
            merge_row(acc, key, row + pad)
        return [(key, *row) for key, row in sorted(acc.items())]
    return days + summed


def _fresh(hours: dict[int, list[int]]) -> SliceHistory:
    sh = SliceHistory()
    add_hours(sh, hours)
    return sh


def file_generation(path: str) -> int | None:
    """The generation in the header of the history file ``path``; None without a
    usable file (missing, not a history file's header, or, version 4 or 5, a header
    whose checksum fails: its generation cannot be trusted, logged).
    """
    try:
        header = read_own(path, "history file", _HEADER.size)
    except FileNotFoundError:
        return None
    if len(header) < _PREFIX.size or header[:4] != MAGIC:
        return None
    _, version, generation = _PREFIX.unpack_from(header)
    if _INDEXED.get(version) is _HEADER:
        try:
            _checked_header(header.ljust(_HEADER.size, b"\0"), path)
        except HistoryCorrupt as exc:
            log.error("history %s: generation unknown (%s): its journal is kept", path, exc)
            return None
    return generation

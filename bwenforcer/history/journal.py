"""Usage history, the journal: one checksummed record per cycle, appended beside the file.

A cycle does not rewrite the history file (:mod:`.format`): it appends its
usage to a journal beside it (``<file>.journal``), one record per cycle holding
only the slices that sent something or are capped, so a cycle costs what it
recorded, however old and large the history. Readers replay the journal onto
the file. The journal names the generation of the file it extends: once folded
in, the file's generation moves on, and a journal whose generation is not the
file's was already folded in (the writer stopped between the two steps) and is
ignored. When it is folded in, and which records are cut off, is
:mod:`.recorder`'s::

    journal  "BWHJ"  u16 version (4)  u16 generation of the file it extends
    record   u32 payload length, u32 CRC-32 of the payload, then the payload:
             u64 cycle time (Unix s), u32 capped s, u64 the cycle's number (the
             count of cycles its state's save brings the state to; 2**64-1: not
             known), u32 count of slices, u32 length of their names, then
             the names:   per slice, u8 name length, name
             the figures: per slice, in the names' order, u64 default bytes,
                          u64 exempt bytes, u8 capped (bit 0 default, bit 1 exempt),
                          u64 received default bytes, u64 received exempt bytes

The figures are one packed array, summed by column (a cycle's records carry the
same names in the same order while the same slices send): a reader's cost is
per record and per slice of an hour, not per entry. (Versions 1 to 3 put each
slice's figures after its name; version 3 records hold the save time of the
state the cycle started from where version 4 has the cycle's number, version 1
records neither, and versions 1 and 2 lack the received bytes; such a journal is
read, and folded in before anything is appended.) A record cut short by a crash
is dropped (and cut off before the next append). Readers read it a record at a
time: their memory is a record's and the journal's hour rows, not the journal.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from bwenforcer.errors import HistoryCorrupt
from bwenforcer.history.usage import (
    NAME_MAX_BYTES,
    CycleUsage,
    add_hour_row,
    received_deltas,
    usage_deltas,
)

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"BWHJ"
JOURNAL_VERSION = 4
_JOURNAL_HEADER = struct.Struct("<4sHH")
JOURNAL_HEADER_BYTES = _JOURNAL_HEADER.size
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
# cycle time, capped seconds, and (versions 2 and 3) the save time of the state the
# cycle started from or (version 4) the cycle's number: the cycle's own save either
# follows the record or never happened; version 4: the count and length of the names
_CYCLES = {v: struct.Struct("<QIQ") for v in (2, 3)} | {
    1: struct.Struct("<QI"),
    4: struct.Struct("<QIQII"),
}
_CYCLE = _CYCLES[JOURNAL_VERSION]
_NAME = struct.Struct("<B")  # the name's length, then the name
# default bytes, exempt bytes, capped bits (and, version 3, received default and exempt)
_ENTRIES = {v: struct.Struct("<QQBQQ") for v in (3, 4)} | {v: struct.Struct("<QQB") for v in (1, 2)}
_ENTRY = _ENTRIES[JOURNAL_VERSION]
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_U64_STRUCT = struct.Struct("<Q")


def journal_path(path: str) -> str:
    """Where the journal of the history file ``path`` is."""
    return f"{path}.journal"


def journal_header(generation: int) -> bytes:
    """The first bytes of a journal extending the file of ``generation``."""
    return _JOURNAL_HEADER.pack(JOURNAL_MAGIC, JOURNAL_VERSION, generation)


def record_cycle(cycle: int | None) -> int:
    """The cycle-number field of a record for ``cycle`` (None: not known, stored as the
    field's maximum, which no cycle reaches).
    """
    return _U64 if cycle is None else min(cycle, _U64 - 1)


def encode_cycle(
    now_s: int,
    interval_s: int,
    usage: Iterable[CycleUsage],
    names: dict[str, bytes | None] | None = None,
    cycle: int | None = None,
) -> bytes:
    """One journal record: the cycle's usage, as :meth:`History.record` would take it.

    Refuses what record() refuses, with the same log lines: negative deltas
    (counted as 0) and names too long to store (left out). ``names`` keeps each
    slice name's encoded form (None: too long) across calls. ``cycle`` is the
    cycle's number (see :meth:`~.recorder.HistoryRecorder.record`; None: not known,
    the record is never taken for an unsaved cycle's).
    """
    names = {} if names is None else names
    prefixes: list[bytes] = []
    figures: list[int] = []
    for u in usage:
        name = u.slice_name
        prefix = names.get(name)
        if prefix is None and name not in names:
            raw = name.encode()
            prefix = _NAME.pack(len(raw)) + raw if len(raw) <= NAME_MAX_BYTES else None
            names[name] = prefix
        if prefix is None:
            log.error("history: slice %s: name too long to store, skipped", name)
            continue
        default, exempt, _ = usage_deltas(u)
        in_d, in_e = received_deltas(u)
        flags = (1 if u.capped_default else 0) | (2 if u.capped_exempt else 0)
        prefixes.append(prefix)
        figures += (min(default, _U64), min(exempt, _U64), flags, min(in_d, _U64), min(in_e, _U64))
    blob = b"".join(prefixes)
    head = _CYCLE.pack(
        now_s, min(max(0, interval_s), _U32), record_cycle(cycle), len(prefixes), len(blob)
    )
    parts = [head, blob, _figures_shape(len(prefixes)).pack(*figures)]
    payload = b"".join(parts)
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class JournalEnd:
    """Where a journal's sound records end, and what a writer needs to know of it."""

    generation: int
    end: int  # offset after the last sound record: the next one goes here
    size: int  # of the file: more than ``end`` if a record was cut short
    first_s: int | None  # cycle time of the first record (None: no record yet)
    version: int = JOURNAL_VERSION
    # the last record: (offset, its cycle's number, cycle time); None if unknown (no
    # record, or records of an older version, which carry no cycle number)
    last: tuple[int, int, int] | None = None


def journal_end(fd: int, source: str) -> JournalEnd | None:
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
            now_s, _, number = cycle.unpack_from(payload)[:3]
            tag = (start, number, now_s)
    return JournalEnd(generation, offset, size, first_s, version, tag)


@functools.lru_cache(maxsize=4)  # a journal's records mostly have one count
def _figures_shape(count: int) -> struct.Struct:
    """The packed figures of ``count`` slices (a version 4 record's array)."""
    return struct.Struct("<" + _ENTRY.format[1:] * count)


def _journal_payloads(f: BinaryIO, source: str, cycle: struct.Struct) -> Iterator[bytes]:
    """The payloads of the sound records read from ``f`` (after the journal's header),
    one at a time, up to the first damaged one (logged).
    """
    offset = _JOURNAL_HEADER.size
    while len(head := f.read(_RECORD.size)) == _RECORD.size:
        length, crc = _RECORD.unpack(head)
        payload = f.read(length)
        if len(payload) < length or length < cycle.size or zlib.crc32(payload) != crc:
            log.warning(
                "history journal %s: damaged record at byte %d, rest ignored", source, offset
            )
            return
        yield payload
        offset += _RECORD.size + length


def journal_hours(
    f: BinaryIO, journal: str, generation: int, no_file: bool, only: str | None = None
) -> dict[str, dict[int, list[int]]]:
    """What the journal read from ``f`` (the file ``journal``, at its start) adds to the
    file of ``generation`` (or to no file, if ``no_file``): each slice's hour rows
    ([default, exempt, capped default s, capped exempt s, received default, received
    exempt], none idle), or only ``only``'s. Empty if the journal was folded in already
    (its generation is not the file's and there is a file).

    Read a record at a time: its memory is the journal's slices times the hours it
    spans (a day or so: it is folded in daily), however old and large the history.
    """
    head = f.read(_JOURNAL_HEADER.size)
    if len(head) < _JOURNAL_HEADER.size or head[:4] != JOURNAL_MAGIC:
        log.warning("history journal %s: not a journal, ignored", journal)
        return {}
    _, version, extends = _JOURNAL_HEADER.unpack(head)
    cycle = _CYCLES.get(version)
    if cycle is None:
        log.warning("history journal %s: version %d, ignored", journal, version)
        return {}
    if extends != generation and not no_file:
        return {}  # folded in already
    entry = _ENTRIES[version]
    wanted = None if only is None else only.encode()
    raw: dict[bytes, dict[int, list[int]]] = {}
    columns = _Columns(raw, wanted) if version == JOURNAL_VERSION else None
    for payload in _journal_payloads(f, journal, cycle):
        now_s, interval_s = cycle.unpack_from(payload)[:2]
        hour, capped_s = now_s // 3600, max(0, interval_s)
        try:
            if columns is not None:
                columns.add(payload, hour, capped_s)
            else:
                _add_interleaved(
                    raw, payload, cycle.size, hour, capped_s, wanted=wanted, entry=entry
                )
        except HistoryCorrupt as exc:
            log.warning("history journal %s: %s, rest ignored", journal, exc)
            break
    if columns is not None:
        columns.flush()
    return {name.decode("utf-8", "replace"): hours for name, hours in raw.items()}


class _Columns:
    """Sums version 4 records into ``out`` (name's bytes → hour → row, as
    :func:`_add_entry` adds one), or only the entries of the name ``wanted``.

    A run of records of one hour with the same names (the same slices sending, in
    the same order) is summed by column, each record's figures unpacked as one
    array; each name's row is added once per run. A record with other names, or of
    another hour, starts a new run. The names of the last record are kept parsed
    (the next one most likely has the same).
    """

    def __init__(self, out: dict[bytes, dict[int, list[int]]], wanted: bytes | None) -> None:
        self.out = out
        self.wanted = wanted
        self.blob = b""
        self.names: list[bytes] = []
        self.found: list[int] = []  # where ``wanted`` is among the names
        self.hour = -1
        self.run: list[bytes] | None = None  # the names of the run (the very list)
        self.sums: list[list[int] | None] = []

    def _parse(self, blob: bytes, count: int) -> list[bytes]:
        if blob == self.blob:
            return self.names
        names, at, end = [], 0, len(blob)
        while at < end:
            start = at + 1
            at = start + blob[at]
            names.append(blob[start:at])
        if at != end or len(names) != count:
            raise HistoryCorrupt("journal record's names cut short")
        self.blob, self.names = blob, names
        self.found = [i for i, name in enumerate(names) if name == self.wanted]
        return names

    def add(self, payload: bytes, hour: int, capped_s: int) -> None:
        """Add one record's figures (HistoryCorrupt, nothing added, if it is not whole)."""
        count, names_bytes = _CYCLE.unpack_from(payload)[3:]
        at = _CYCLE.size + names_bytes
        blob = payload[_CYCLE.size : at]
        if len(blob) != names_bytes or len(payload) - at != count * _ENTRY.size:
            raise HistoryCorrupt("journal record cut short")
        names = self._parse(blob, count)
        if self.wanted is not None:
            for i in self.found:
                figures = _ENTRY.unpack_from(payload, at + i * _ENTRY.size)
                _add_entry(self.out, self.wanted, hour, capped_s, figures)
            return
        flat = _figures_shape(count).unpack_from(payload, at)
        default, exempt, flags, in_d, in_e = (flat[i::5] for i in range(5))
        capped_d = capped_e = None
        if capped_s and any(flags):  # capped bits: 1 default, 2 exempt
            capped_d = [capped_s if f & 1 else 0 for f in flags]
            capped_e = [capped_s if f & 2 else 0 for f in flags]
        columns = (default, exempt, capped_d, capped_e, in_d, in_e)
        if hour != self.hour or names is not self.run:
            self.flush()
            self.hour, self.run = hour, names
            self.sums = [None if c is None else list(c) for c in columns]
            return
        for i, column in enumerate(columns):
            if column is not None:
                kept = self.sums[i]
                self.sums[i] = list(column if kept is None else map(operator.add, kept, column))

    def flush(self) -> None:
        """Add the run's rows to ``out`` (a name idle all the run adds none)."""
        if self.run is None:
            return
        zeros = itertools.repeat(0)
        columns = [zeros if c is None else c for c in self.sums]
        hour, out = self.hour, self.out
        for name, *row in zip(self.run, *columns, strict=False):
            if any(row):
                add_hour_row(out.setdefault(name, {}), hour, row)
        self.run, self.sums = None, []


def _add_interleaved(
    out: dict[bytes, dict[int, list[int]]],
    payload: bytes,
    offset: int,
    hour: int,
    capped_s: int,
    *,
    wanted: bytes | None,
    entry: struct.Struct,
) -> None:
    """Add a record of versions 1 to 3 (each slice's figures after its name, from
    ``offset``) to ``out``, or only the entries of the name ``wanted``; nothing unless
    the entries end where the record does. Such journals are read once, at an upgrade.
    """
    end, size = len(payload), entry.size
    found = []
    while offset < end:
        start = offset + 1
        offset = start + payload[offset]
        if wanted is None or payload[start:offset] == wanted:
            found.append((start, offset))
        offset += size
    if offset != end:
        raise HistoryCorrupt("journal record cut short")
    for start, at in found:
        _add_entry(out, payload[start:at], hour, capped_s, entry.unpack_from(payload, at))


def _add_entry(
    out: dict[bytes, dict[int, list[int]]],
    name: bytes,
    hour: int,
    capped_s: int,
    entry: tuple[int, ...],
) -> None:
    default, exempt, flags, *received = entry
    in_d, in_e = received or (0, 0)  # before version 3: nothing received
    capped_d = capped_s if flags & 1 else 0
    capped_e = capped_s if flags & 2 else 0
    if not (default or exempt or capped_d or capped_e or in_d or in_e):
        return  # idle: adds no bucket
    hours = out.get(name)
    if hours is None:
        hours = out[name] = {}
    row = hours.get(hour)
    if row is None:
        hours[hour] = [default, exempt, capped_d, capped_e, in_d, in_e]
        return
    row[0] += default
    row[1] += exempt
    row[2] += capped_d
    row[3] += capped_e
    row[4] += in_d
    row[5] += in_e

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
             known), then per slice:
             u8 name length, name, u64 default bytes, u64 exempt bytes,
             u8 capped (bit 0 default, bit 1 exempt),
             u64 received default bytes, u64 received exempt bytes

(Version 3 records hold the save time of the state the cycle started from where
version 4 has the cycle's number, version 1 records neither, and versions 1 and 2
lack the received bytes; such a journal is read, and folded in before anything is
appended.) A record cut short by a crash is dropped (and cut off before the next
append).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bwenforcer.errors import HistoryCorrupt
from bwenforcer.history.usage import (
    NAME_MAX_BYTES,
    CycleUsage,
    History,
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
# follows the record or never happened
_CYCLES = {v: struct.Struct("<QIQ") for v in (2, 3, 4)} | {1: struct.Struct("<QI")}
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
    parts = [_CYCLE.pack(now_s, min(max(0, interval_s), _U32), record_cycle(cycle))]
    pack_entry = _ENTRY.pack
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
        parts.append(prefix)
        parts.append(
            pack_entry(
                min(default, _U64), min(exempt, _U64), flags, min(in_d, _U64), min(in_e, _U64)
            )
        )
    payload = b"".join(parts)
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_cycle(
    payload: bytes, source: str, cycle: struct.Struct, entry: struct.Struct
) -> tuple[int, int, list[CycleUsage]]:
    now_s, interval_s = cycle.unpack_from(payload)[:2]
    usage: list[CycleUsage] = []
    offset, end = cycle.size, len(payload)
    while offset < end:
        length = payload[offset]
        start, offset = offset + 1, offset + 1 + length
        if offset + entry.size > end:
            raise HistoryCorrupt(f"{source}: journal record cut short")
        name = payload[start:offset].decode("utf-8", "replace")
        default, exempt, flags, *received = entry.unpack_from(payload, offset)
        offset += entry.size
        usage.append(CycleUsage(name, default, exempt, bool(flags & 1), bool(flags & 2), *received))
    return now_s, interval_s, usage


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
            now_s, _, number = cycle.unpack_from(payload)
            tag = (start, number, now_s)
    return JournalEnd(generation, offset, size, first_s, version, tag)


def _journal_payloads(data: bytes, source: str, cycle: struct.Struct) -> Iterator[bytes]:
    """The payloads of a journal's sound records, up to the first damaged one (logged)."""
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
        yield payload
        offset = end


def _journal_records(
    data: bytes, source: str, cycle: struct.Struct, entry: struct.Struct
) -> Iterator[tuple[int, int, list[CycleUsage]]]:
    """The sound records of a journal's bytes, up to the first damaged one (logged)."""
    for payload in _journal_payloads(data, source, cycle):
        try:
            yield _decode_cycle(payload, source, cycle, entry)
        except HistoryCorrupt as exc:
            log.warning("history journal %s: %s, rest ignored", source, exc)
            return


def journal_hours(
    data: bytes, journal: str, generation: int, no_file: bool, only: str | None = None
) -> dict[str, dict[int, list[int]]]:
    """What the journal's bytes ``data`` (read from ``journal``) add to the file of
    ``generation`` (or to no file, if ``no_file``): each slice's hour rows
    ([default, exempt, capped default s, capped exempt s, received default, received
    exempt], none idle), or only
    ``only``'s. Empty if the journal was folded in already (see :func:`replay_journal`).

    Its size is the journal's slices times the hours it spans (a day or so: it is
    folded in daily), however old the history.
    """
    if len(data) < _JOURNAL_HEADER.size or data[:4] != JOURNAL_MAGIC:
        log.warning("history journal %s: not a journal, ignored", journal)
        return {}
    _, version, extends = _JOURNAL_HEADER.unpack_from(data)
    cycle = _CYCLES.get(version)
    if cycle is None:
        log.warning("history journal %s: version %d, ignored", journal, version)
        return {}
    if extends != generation and not no_file:
        return {}  # folded in already
    entry = _ENTRIES[version]
    wanted = None if only is None else only.encode()
    raw: dict[bytes, dict[int, list[int]]] = {}
    for payload in _journal_payloads(data, journal, cycle):
        now_s, interval_s = cycle.unpack_from(payload)[:2]
        try:
            if wanted is None:  # (with one name wanted, its walk checks the record)
                _check_entries(payload, cycle.size, entry.size)
            _add_payload(
                raw,
                payload,
                cycle.size,
                now_s // 3600,
                max(0, interval_s),
                wanted=wanted,
                entry=entry,
            )
        except HistoryCorrupt as exc:
            log.warning("history journal %s: %s, rest ignored", journal, exc)
            break
    return {name.decode("utf-8", "replace"): hours for name, hours in raw.items()}


def _check_entries(payload: bytes, offset: int, size: int) -> None:
    """HistoryCorrupt if a record's entries (of ``size`` bytes after their names) do not
    end where it does (nothing of such a record is counted).
    """
    end = len(payload)
    while offset < end:
        offset += 1 + payload[offset] + size
    if offset != end:
        raise HistoryCorrupt("journal record cut short")


def _add_payload(
    out: dict[bytes, dict[int, list[int]]],
    payload: bytes,
    offset: int,
    hour: int,
    capped_s: int,
    *,
    wanted: bytes | None,
    entry: struct.Struct = _ENTRY,
) -> None:
    """Add one record's entries (after its cycle fields at ``offset``) to ``out``, by the
    name's bytes; with ``wanted``, only that name's (the others are stepped over, and
    nothing is added unless the entries end where the record does: the one walk of
    ``report --slice``).

    The hot loop of every reader of the journal (a day at 4,000 slices is a million
    entries): no object per entry.
    """
    end = len(payload)
    unpack = entry.unpack_from
    size = entry.size
    if wanted is not None:
        length = len(wanted)
        found = []
        while offset < end:
            start = offset + 1
            offset = start + payload[offset]
            if offset - start == length and payload[start:offset] == wanted:
                found.append(offset)
            offset += size
        if offset != end:
            raise HistoryCorrupt("journal record cut short")
        for at in found:
            _add_entry(out, wanted, hour, capped_s, unpack(payload, at))
        return
    while offset < end:
        start = offset + 1
        offset = start + payload[offset]
        if offset + size > end:
            raise HistoryCorrupt("journal record cut short")
        _add_entry(out, payload[start:offset], hour, capped_s, unpack(payload, offset))
        offset += size


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


def replay_journal(history: History, data: bytes, journal: str, no_file: bool) -> History:
    """``history`` (read from a file, or empty if ``no_file``) with the journal's bytes
    ``data`` (read from ``journal``) replayed onto it.

    A journal is replayed if it extends this very file (same generation), or if
    there is no file to have folded it into.
    """
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
    for now_s, interval_s, usage in _journal_records(data, journal, cycle, _ENTRIES[version]):
        history.record(now_s, interval_s, usage)
    return history

"""A generated history for the golden comparison of reports (see test_report_golden.py).

The history is built with the pure model (:class:`History`), written as a format
version 1 file (the encoder below is the one of version 1, kept here to make such
files) and a journal of a few more cycles. The digests in ``golden_reports.json``
were taken with the reports as they were before they streamed.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.format import last_hour
from bwenforcer.history.journal import encode_cycle, journal_header
from bwenforcer.history.usage import DAY_S, HOUR_S, CycleUsage, History

GiB = 2**30
START_S = 1_700_006_400  # 2023-11-15 00:00 UTC
END_S = START_S + 900 * DAY_S + 13 * HOUR_S  # file written here, same UTC day as the journal
JOURNAL_CYCLES = 5
GENERATION = 3

NAMES = [
    "pl_alpha",
    "pl_beta",
    "a" * 40,
    "pl_départ",  # leaves after a year: days and months only
    "pl_new",  # comes in the last week
    "pl_z",
    "x" * 255,
    "pl_idle_capped",
]


def _usage(rng: random.Random, now_s: int) -> list[CycleUsage]:
    out = []
    for name in NAMES:
        if name == "pl_départ" and now_s > START_S + 365 * DAY_S:
            continue
        if name == "pl_new" and now_s < END_S - 7 * DAY_S:
            continue
        if name == "pl_idle_capped":
            out.append(CycleUsage(name, 0, 0, rng.random() < 0.5, rng.random() < 0.2))
            continue
        if rng.random() < 0.15:
            continue
        big = rng.random() < 0.05
        out.append(
            CycleUsage(
                name,
                rng.randrange(GiB * (40 if big else 1)),
                rng.randrange(GiB // 4),
                rng.random() < 0.1,
                rng.random() < 0.05,
            )
        )
    return out


def build() -> tuple[History, list[tuple[int, int, list[CycleUsage]]]]:
    """The history as saved at END_S, and the journal's cycles after it."""
    rng = random.Random(23)
    cfg = HistoryConfig()
    history = History()
    now_s = START_S
    while now_s <= END_S:
        history.record(now_s, 300, _usage(rng, now_s))
        # old times: a few cycles a day; the last three weeks: every 20 minutes
        step = 20 * 60 if now_s > END_S - 21 * DAY_S else rng.choice((5, 7, 11)) * HOUR_S
        now_s += step
        history.roll_up(now_s, cfg)
    history.roll_up(END_S, cfg)
    history.generation = GENERATION
    journal = [(END_S + (i + 1) * 600, 300, _usage(rng, END_S)) for i in range(JOURNAL_CYCLES)]
    return history, journal


_HEADER = struct.Struct("<4sHHII")
_HOUR = struct.Struct("<IQQII")
_DAY = struct.Struct("<IQQQII")


def encode_v1(history: History) -> bytes:
    """A format version 1 file of ``history``."""
    parts: list[bytes] = []
    slices = history.slice_items()
    for name, sh in slices:
        raw = name.encode()
        parts.append(struct.pack("<B", len(raw)) + raw)
        parts.append(struct.pack("<III", len(sh.hours), len(sh.days), len(sh.months)))
        # version 1 records carry no received bytes
        parts.extend(_HOUR.pack(k, *row[:4]) for k, row in sh.hours.items())
        for tier in (sh.days, sh.months):
            parts.extend(_DAY.pack(k, *row[:5]) for k, row in tier.items())
    body = b"".join(parts)
    return _HEADER.pack(b"BWHS", 1, history.generation, len(slices), zlib.crc32(body)) + body


_HEADER_V2 = struct.Struct("<4sHHIQI")
_HOUR_V5 = struct.Struct("<IQQIIQQ")
_DAY_V5 = struct.Struct("<IQQQIIQQ")


def encode_v2(history: History, version: int = 2) -> bytes:
    """A format version 2 file of ``history`` (records without received bytes, month
    sums, an index, a 24-byte header without a checksum of its own), or with
    ``version`` 4 the same after a 28-byte header with its checksum, or with 5 as 4
    with every record's received bytes: the layouts before version 6.
    """
    from bwenforcer.history.usage import month_sums

    head = _HEADER_V2.size + (4 if version >= 4 else 0)
    hour, day, width = (_HOUR_V5, _DAY_V5, 2) if version == 5 else (_HOUR, _DAY, 0)
    blocks, index = [], []
    offset = head
    for name, sh in history.slice_items():
        raw = name.encode()
        sums = month_sums(sh.days, sh.hours)
        body = b"".join((
            struct.pack("<B", len(raw)) + raw,
            struct.pack("<IIII", len(sh.hours), len(sh.days), len(sh.months), len(sums)),
            *(hour.pack(k, *row[:4 + width]) for k, row in sh.hours.items()),
            *(day.pack(k, *row[:5 + width]) for tier in (sh.days, sh.months, sums)
              for k, row in tier.items()),
        ))  # fmt: skip
        block = struct.pack("<I", zlib.crc32(body)) + body
        index.append(
            struct.pack("<B", len(raw))
            + raw
            + struct.pack("<QII", offset, len(block), last_hour(sh))
        )
        blocks.append(block)
        offset += len(block)
    idx = b"".join(index)
    header = _HEADER_V2.pack(
        b"BWHS", version, history.generation, len(index), offset, zlib.crc32(idx)
    )
    if version >= 4:
        header += struct.pack("<I", zlib.crc32(header))
    return header + b"".join(blocks) + idx


def write(path: Path) -> None:
    """Write the version 1 file at ``path`` and its journal beside it."""
    history, journal = build()
    path.write_bytes(encode_v1(history))
    records = [encode_cycle(now_s, cap_s, usage, cycle=None) for now_s, cap_s, usage in journal]
    Path(f"{path}.journal").write_bytes(journal_header(GENERATION) + b"".join(records))

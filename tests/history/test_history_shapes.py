"""History format 6: each slice's block is narrow (records without received bytes)
or wide, as its records need; both read back to the same history, and the fast
paths (the day report's rows, the fold on the blocks' bytes) read either shape.
"""

from __future__ import annotations

import re
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.errors import HistoryCorrupt
from bwenforcer.history.decode import HistoryFile
from bwenforcer.history.fold import fold_history, save_history
from bwenforcer.history.format import (
    _COUNTS,
    _CRC,
    _SLICE,
    FORMAT_VERSION,
    is_wide,
    receives,
    size_bytes,
)
from bwenforcer.history.journal import encode_cycle, journal_header, journal_path
from bwenforcer.history.reader import HistoryReader, read_history
from bwenforcer.history.usage import (
    DAY_S,
    HOUR_S,
    CycleUsage,
    History,
    SliceHistory,
    bucket_rows,
    month_sums,
    slice_buckets,
)

U64 = 2**64 - 1
U32 = 2**32 - 1
NOW_S = 1_790_000_000 // DAY_S * DAY_S + 13 * HOUR_S


def hour_rows(received: bool) -> st.SearchStrategy[list[int]]:
    big = st.integers(0, U64 // 4)
    got = st.integers(0, U64 // 4) if received else st.just(0)
    return st.tuples(big, big, st.integers(0, U32 // 4), st.integers(0, U32 // 4), got, got).map(
        list
    )


def day_rows(received: bool) -> st.SearchStrategy[list[int]]:
    big = st.integers(0, U64 // 4)
    got = st.integers(0, U64 // 4) if received else st.just(0)
    capped = st.integers(0, U32 // 4)
    return st.tuples(big, big, big, capped, capped, got, got).map(list)


@st.composite
def slice_histories(draw: st.DrawFn) -> SliceHistory:
    """A slice's tiers (hours after its days, days after its months), received bytes
    in any of them or in none.
    """
    received = draw(st.booleans())
    sh = SliceHistory()
    months = draw(st.lists(st.integers(24_000, 24_400), max_size=5, unique=True))
    days = draw(st.lists(st.integers(20_000, 21_000), max_size=8, unique=True))
    hours = draw(st.lists(st.integers(21_001 * 24, 21_020 * 24), max_size=8, unique=True))
    sh.months = {key: draw(day_rows(received)) for key in sorted(months)}
    sh.days = {key: draw(day_rows(received)) for key in sorted(days)}
    sh.hours = {key: draw(hour_rows(received)) for key in sorted(hours)}
    return sh


def block_bytes(name: str, sh: SliceHistory, wide: bool) -> int:
    """The length of ``sh``'s block, narrow or wide, as the format's docstring says."""
    hour, day = (44, 52) if wide else (28, 36)
    tiers = len(sh.days) + len(sh.months) + len(month_sums(sh.days, sh.hours))
    return _CRC.size + 1 + len(name.encode()) + 16 + 1 + len(sh.hours) * hour + tiers * day


def blocks(path: Path) -> dict[str, tuple[int, bool]]:
    """Each slice's block in a current version file: its length, whether it is wide."""
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.version == FORMAT_VERSION and hf.index is not None
        return {
            name: (length, is_wide(hf.raw_block(name, offset, length)))
            for name, offset, length in hf.index
        }


def tiers(history: History) -> dict[str, tuple[dict[int, list[int]], ...]]:
    return {name: (sh.hours, sh.days, sh.months) for name, sh in history.slice_items()}


@settings(max_examples=100, deadline=None)
@given(
    slices=st.dictionaries(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
        slice_histories(),
        max_size=5,
    )
)
def test_any_history_round_trips_each_block_narrow_unless_it_received(
    slices: dict[str, SliceHistory],
) -> None:
    slices = {name: sh for name, sh in slices.items() if not sh.empty()}
    history = History.from_slices(slices, 4)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "h"
        save_history(history, str(path))
        assert path.stat().st_size == size_bytes(history)
        expected = {
            name: (block_bytes(name, sh, receives(sh)), receives(sh))
            for name, sh in history.slice_items()
        }
        assert blocks(path) == expected
        assert tiers(read_history(str(path))) == tiers(history)


def hourly(received: int) -> History:
    """Two slices of 20 days of hours and 200 days, ``pl_in`` receiving ``received``
    bytes an hour, ``pl_out`` nothing.
    """
    slices = {}
    first_hour = NOW_S // HOUR_S - 20 * 24
    for name, got in (("pl_in", received), ("pl_out", 0)):
        sh = SliceHistory()
        sh.hours = {h: [h, 7, 300, 0, got, 0] for h in range(first_hour, NOW_S // HOUR_S)}
        first_day = first_hour // 24
        sh.days = {d: [d, 9, d, 0, 60, got, got] for d in range(first_day - 200, first_day)}
        slices[name] = sh
    return History.from_slices(slices, 2)


def journal(path: Path, generation: int, received: int) -> None:
    cycles = [
        [
            CycleUsage("pl_in", 1000, 5, True, False, received, 0),
            CycleUsage("pl_out", 2000, 0, False, False),
            CycleUsage("pl_new", 3, 0, False, False),
        ]
        for _ in range(6)
    ]
    records = b"".join(
        encode_cycle(NOW_S - 1800 + 300 * n, 300, cycle, cycle=None)
        for n, cycle in enumerate(cycles)
    )
    Path(journal_path(str(path))).write_bytes(journal_header(generation) + records)


def test_a_narrow_block_stays_narrow_its_middle_copied_and_turns_wide_on_receiving(
    tmp_path: Path,
) -> None:
    """Folded on its bytes, a narrow block stays narrow, its records before the
    journal's as they were; the journal's first received bytes make it wide; the day report's rows, with and
    without the bytes received asked for, and the monthly one equal the model's.
    """
    path = tmp_path / "h"
    history = hourly(0)
    save_history(history, str(path))
    assert {name: wide for name, (_, wide) in blocks(path).items()} == {
        "pl_in": False,
        "pl_out": False,
    }
    old = path.read_bytes()
    journal(path, history.generation, 0)
    fold_history(str(path), 0xFFFF, None)
    assert not any(wide for _, wide in blocks(path).values())
    assert old[1000:10_000] in path.read_bytes()  # hours the journal did not touch

    journal(path, history.generation + 1, 11)
    reference = read_history(str(path))
    fold_history(str(path), 0xFFFF, None)
    assert {name: wide for name, (_, wide) in blocks(path).items()} == {
        "pl_in": True,
        "pl_new": False,
        "pl_out": False,
    }
    folded = read_history(str(path))
    for by in ("hour", "day", "month"):
        assert folded.report(by) == reference.report(by)  # type: ignore[arg-type]
    assert [r.in_default_bytes for r in folded.report("day", None, "pl_in")][-1] == 66

    journal(path, history.generation + 2, 5)  # more on top of the wide block
    reference = read_history(str(path))
    expected = {
        name: bucket_rows(slice_buckets(sh, "day"), "day") for name, sh in reference.slice_items()
    }
    with HistoryReader(str(path)) as reader:
        wide_rows = dict(reader.day_rows(received=True))
    with HistoryReader(str(path)) as reader:
        narrow_rows = dict(reader.day_rows(received=False))
        months = dict(reader.buckets("month"))
    assert wide_rows == expected
    assert {name: [row[:6] for row in rows] for name, rows in narrow_rows.items()} == {
        name: [row[:6] for row in rows] for name, rows in expected.items()
    }
    assert {len(row) for row in narrow_rows["pl_out"]} == {6}  # not widened for nothing
    assert months == {name: slice_buckets(sh, "month") for name, sh in reference.slice_items()}


def test_a_block_with_unknown_flags_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "h"
    save_history(hourly(0), str(path))
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.index is not None
        name, offset, length = hf.index[0]
    data = bytearray(path.read_bytes())
    body_at = offset + _CRC.size
    flags_at = body_at + _SLICE.size + len(name.encode()) + _COUNTS.size
    data[flags_at] = 0x03
    data[offset:body_at] = _CRC.pack(zlib.crc32(data[body_at : offset + length]))
    path.write_bytes(bytes(data))
    with pytest.raises(
        HistoryCorrupt, match=rf"^{re.escape(str(path))}: slice {name}: unknown flags 0x3$"
    ):
        read_history(str(path))
    with (
        HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf,
        pytest.raises(HistoryCorrupt, match="unknown flags"),
    ):
        hf.check()


def test_a_version_5_file_is_read_on_its_bytes_and_its_fold_narrows_it(tmp_path: Path) -> None:
    """A version 5 file (every block wide, no flags) is worked on as bytes by the
    reports (its blocks given their flags, wide), with the same rows as the parsed
    model; its first fold parses each block once and writes those that received
    nothing narrow.
    """
    from tests.history.golden import encode_v2

    history = hourly(received=5)
    path = tmp_path / "h"
    path.write_bytes(encode_v2(history, 5))
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.version == 5 and hf.packed
        assert all(is_wide(hf.raw_block(*place)) for place in hf.index or ())
    with HistoryReader(str(path)) as reader:
        days = dict(reader.day_rows())
    model = {
        name: bucket_rows(slice_buckets(sh, "day"), "day") for name, sh in history.slice_items()
    }
    assert days == model
    fold_history(str(path), 0xFFFF, None)
    assert {name: wide for name, (_, wide) in blocks(path).items()} == {
        "pl_in": True, "pl_out": False,
    }  # fmt: skip
    assert tiers(read_history(str(path))) == tiers(history)

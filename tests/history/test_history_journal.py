"""The history journal: a cycle appends only what it recorded; folds keep every byte once."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import UnsafePath
from bwenforcer.history.decode import decode_history
from bwenforcer.history.fold import save_history
from bwenforcer.history.journal import JOURNAL_VERSION, encode_cycle, journal_path
from bwenforcer.history.reader import read_history
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.history.usage import CycleUsage, History

T0 = 1_767_229_200  # 2026-01-01 01:00 UTC
DAY = 86400
CFG = HistoryConfig()


def totals(history: History, by: str = "day") -> list[tuple[int | str, ...]]:
    return [
        (r.slice_name, r.bucket_start_s, r.default_bytes, r.exempt_bytes,
         r.capped_default_s, r.capped_exempt_s, r.in_default_bytes, r.in_exempt_bytes)
        for r in history.report(by)  # type: ignore[arg-type]
    ]  # fmt: skip


def usage(*rows: tuple[str, int, int]) -> list[CycleUsage]:
    return [CycleUsage(name, d, e, False, False) for name, d, e in rows]


def identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def test_a_cycle_appends_one_record_and_leaves_the_history_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "h"
    save_history(History(), str(path))
    before = identity(path)
    recorder = HistoryRecorder(str(path), CFG)
    recorder.record(T0, 300, usage(("pl_a", 100, 1), ("pl_b", 5, 0)))
    recorder.record(T0 + 300, 300, usage(("pl_a", 50, 0)))
    recorder.record(T0 + 600, 300, [])  # nothing sent: nothing written
    assert identity(path) == before
    journal = Path(journal_path(str(path)))
    first = encode_cycle(T0, 300, usage(("pl_a", 100, 1), ("pl_b", 5, 0)))
    second = encode_cycle(T0 + 300, 300, usage(("pl_a", 50, 0)))
    assert journal.read_bytes()[8:] == first + second
    got = read_history(str(path))
    assert totals(got) == [
        ("pl_a", T0 // DAY * DAY, 150, 1, 0, 0, 0, 0),
        ("pl_b", T0 // DAY * DAY, 5, 0, 0, 0, 0, 0),
    ]


def test_a_new_process_continues_the_journal_it_finds(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 1, 0)))
    HistoryRecorder(path, CFG).record(T0 + 300, 300, usage(("pl_a", 2, 0)))  # a cron run
    assert totals(read_history(path))[0][2] == 3
    assert not os.path.exists(path)  # no fold yet: the journal is all there is


def test_the_first_cycle_of_a_day_folds_the_journal_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "h"
    recorder = HistoryRecorder(str(path), CFG)
    recorder.record(T0, 300, usage(("pl_a", 7, 0)))
    assert not recorder.fold_if_due()
    recorder.record(T0 + DAY, 300, usage(("pl_a", 9, 0)))
    assert not path.exists()  # recording does not fold: the cycle's state is not saved yet
    assert recorder.fold_if_due()  # once it is
    assert [row[2] for row in totals(decode_history(path.read_bytes(), "h"))] == [7, 9]
    journal = Path(journal_path(str(path))).read_bytes()
    assert journal[8:] == b""  # a new, empty journal
    assert int.from_bytes(path.read_bytes()[6:8], "little") == 1  # the file's generation
    assert [row[2] for row in totals(read_history(str(path)))] == [7, 9]
    assert not recorder.fold_if_due()


def test_a_fold_cut_short_between_its_two_writes_counts_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "h"
    recorder = HistoryRecorder(str(path), CFG)
    recorder.record(T0, 300, usage(("pl_a", 7, 0)))
    journal = Path(journal_path(str(path)))
    recorder.record(T0 + DAY, 300, usage(("pl_a", 9, 0)))
    old_journal = journal.read_bytes()
    assert recorder.fold_if_due()
    journal.write_bytes(old_journal)  # as if the writer died before starting the new one
    assert [row[2] for row in totals(read_history(str(path)))] == [7, 9]
    HistoryRecorder(str(path), CFG).record(T0 + DAY + 300, 300, usage(("pl_a", 10, 0)))
    assert [row[2] for row in totals(read_history(str(path)))] == [7, 19]


def test_a_record_cut_short_is_dropped_and_cut_off_before_the_next(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 7, 0)))
    journal = Path(journal_path(path))
    torn = encode_cycle(T0 + 300, 300, usage(("pl_a", 1000, 0)))
    with journal.open("ab") as f:
        f.write(torn[:-3])  # the writer died mid-append
    assert totals(read_history(path))[0][2] == 7
    HistoryRecorder(path, CFG).record(T0 + 600, 300, usage(("pl_a", 2, 0)))
    assert totals(read_history(path))[0][2] == 9
    damaged = bytearray(journal.read_bytes())
    damaged[-2] ^= 0xFF  # the last record's bytes, not its length: its checksum fails
    journal.write_bytes(bytes(damaged))
    assert totals(read_history(path))[0][2] == 7
    HistoryRecorder(path, CFG).record(T0 + 900, 300, usage(("pl_a", 4, 0)))
    assert totals(read_history(path))[0][2] == 11


def test_a_journal_past_a_quarter_of_the_file_is_folded_before_its_day_is_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h"
    recorder = HistoryRecorder(str(path), CFG, fold_min_bytes=1000)
    many = usage(*((f"pl_{i}", 1, 0) for i in range(50)))  # a record of ~1.2 kB
    recorder.record(T0, 300, many)
    assert not path.exists()
    assert recorder.fold_if_due()
    recorder.record(T0 + 300, 300, many)  # the first record folded in; this one journaled
    journal = Path(journal_path(str(path))).read_bytes()
    assert path.exists() and journal[8:] == encode_cycle(T0 + 300, 300, many)
    assert {row[2] for row in totals(read_history(str(path)))} == {2}


def test_a_damaged_history_file_keeps_its_journal(tmp_path: Path) -> None:
    path = tmp_path / "h"
    recorder = HistoryRecorder(str(path), CFG, clock=lambda: 1_790_000_000.0)
    recorder.record(T0, 300, usage(("pl_a", 7, 0)))
    path.write_bytes(b"garbage")
    HistoryRecorder(str(path), CFG).record(T0 + 300, 300, usage(("pl_a", 1, 0)))
    recorder = HistoryRecorder(str(path), CFG, clock=lambda: 1_790_000_000.0)
    recorder.record(T0 + DAY, 300, usage(("pl_a", 2, 0)))
    assert recorder.fold_if_due()  # moves the damaged file aside and keeps the journal's bytes
    assert (tmp_path / "h.corrupt-20260921T141320Z").read_bytes() == b"garbage"
    assert [row[2] for row in totals(read_history(str(path)))] == [8, 2]


cycles = st.lists(
    st.tuples(
        st.integers(min_value=60, max_value=DAY // 2),  # time to the next cycle
        st.lists(
            st.tuples(st.sampled_from(["pl_a", "pl_b", "pl_c"]), st.integers(0, 10**12),
                      st.integers(0, 10**9), st.booleans(),
                      st.integers(0, 10**12), st.integers(0, 10**9)),  # received
            max_size=3,
        ),
    ),
    max_size=40,
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(cycles, st.integers(min_value=200, max_value=5000))
def test_recorded_through_the_journal_equals_recorded_in_memory(
    tmp_path_factory: object, fed: list[tuple[int, list[tuple[str, int, int, bool, int, int]]]],
    fold_min_bytes: int,
) -> None:  # fmt: skip
    path = str(tmp_path_factory.mktemp("j") / "h")  # type: ignore[attr-defined]
    reference = History()
    now = T0
    recorder = HistoryRecorder(path, CFG, fold_min_bytes=fold_min_bytes)
    for step, rows in fed:
        now += step
        cycle = [
            CycleUsage(name, d, e, capped, False, rd, re) for name, d, e, capped, rd, re in rows
        ]
        reference.record(now, 300, cycle)
        if step % 3 == 0:
            recorder = HistoryRecorder(path, CFG, fold_min_bytes=fold_min_bytes)  # a restart
        recorder.record(now, 300, cycle)
        recorder.fold_if_due()
    assert totals(read_history(path), "day") == totals(reference, "day")
    assert totals(read_history(path), "month") == totals(reference, "month")


def test_a_name_too_long_to_store_is_left_out_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "h")
    recorder = HistoryRecorder(path, CFG)
    long_name = "pl_" + "x" * 300
    for step in (0, 300):
        recorder.record(T0 + step, 300, usage((long_name, 5, 0), ("pl_a", 1, 0)))
    assert [row[0] for row in totals(read_history(path))] == ["pl_a"]
    assert caplog.text.count("name too long to store") == 2


def test_a_version_1_journal_left_by_an_upgrade_is_folded_in_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "h"
    payload = (
        struct.pack("<QI", T0, 300) + bytes([4]) + b"pl_a" + struct.pack("<QQB", 70, 1, 0)
    )  # version 1: no save time of a state in the record
    record = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    Path(journal_path(str(path))).write_bytes(b"BWHJ" + struct.pack("<HH", 1, 0) + record)
    assert totals(read_history(str(path)))[0][2] == 70  # readers read it as it is
    HistoryRecorder(str(path), CFG).record(T0 + 300, 300, usage(("pl_a", 5, 0)), cycle=2)
    assert totals(read_history(str(path)))[0][2:4] == (75, 1)
    journal = Path(journal_path(str(path))).read_bytes()
    assert journal[4:6] == struct.pack("<H", JOURNAL_VERSION)  # the new journal is this version


def test_the_record_of_a_cycle_whose_state_was_never_saved_is_dropped(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 7, 0)), cycle=1)  # saved: 1
    HistoryRecorder(path, CFG).record(T0 + 300, 300, usage(("pl_a", 5, 0)), cycle=2)  # killed
    # the next cycle starts from the state of cycle 1 again (it is cycle 2 again) and
    # counts those 5 bytes anew
    recorder = HistoryRecorder(path, CFG)
    recorder.record(T0 + 600, 300, [], cycle=2)  # nothing new, but the check is made
    assert totals(read_history(path))[0][2] == 7
    recorder.record(T0 + 900, 300, usage(("pl_a", 6, 0)), cycle=3)  # a daemon's next
    assert totals(read_history(path))[0][2] == 13


@pytest.mark.parametrize("gap_s", [0, 300])
def test_a_cycle_killed_in_the_second_of_the_last_save_is_told_by_its_number(
    tmp_path: Path, gap_s: int
) -> None:
    """Two runs in one wall-clock second (or a clock that did not move): the record of
    the one killed before its save is dropped all the same, and a record whose cycle
    saved is kept, however close the next cycle comes.
    """
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 7, 0)), cycle=1)  # saved: 1
    HistoryRecorder(path, CFG).record(T0 + gap_s, 300, usage(("pl_a", 5, 0)), cycle=2)  # killed
    HistoryRecorder(path, CFG).record(T0 + gap_s, 300, usage(("pl_a", 5, 0)), cycle=2)  # saved: 2
    assert totals(read_history(path))[0][2] == 12
    HistoryRecorder(path, CFG).record(T0 + gap_s, 300, usage(("pl_a", 1, 0)), cycle=3)
    assert totals(read_history(path))[0][2] == 13


def test_saves_that_are_not_cycles_do_not_hide_an_unsaved_cycle(tmp_path: Path) -> None:
    """A grant or reset saves the state between two cycles without counting a cycle:
    a record of the killed cycle's number is still the unsaved one's; and a saved
    cycle with nothing to record leaves the last record as it is.
    """
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 7, 0)), cycle=1)  # saved: 1
    HistoryRecorder(path, CFG).record(T0 + 300, 300, usage(("pl_a", 5, 0)), cycle=2)  # killed
    # (a grant saved the state of cycle 1 here: still 1 cycle)
    HistoryRecorder(path, CFG).record(T0 + 600, 300, usage(("pl_a", 6, 0)), cycle=2)
    assert totals(read_history(path))[0][2] == 13
    HistoryRecorder(path, CFG).record(T0 + 900, 300, [], cycle=3)  # saved, nothing sent
    HistoryRecorder(path, CFG).record(T0 + 1200, 300, usage(("pl_a", 1, 0)), cycle=4)
    assert totals(read_history(path))[0][2] == 14


def test_a_version_3_journal_is_folded_in_before_the_first_numbered_record(
    tmp_path: Path,
) -> None:
    """Version 3 records name the save time of their cycle's state, not its number:
    nothing is dropped on their word, they are folded in and the journal starts again
    at this version.
    """
    path = str(tmp_path / "h")
    entry = bytes([4]) + b"pl_a" + struct.pack("<QQBQQ", 70, 1, 0, 0, 0)
    records = b""
    for now_s, base_s in ((T0, 0), (T0 + 300, T0)):
        payload = struct.pack("<QIQ", now_s, 300, base_s) + entry
        records += struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    Path(journal_path(path)).write_bytes(b"BWHJ" + struct.pack("<HH", 3, 0) + records)
    assert totals(read_history(path))[0][2] == 140
    HistoryRecorder(path, CFG).record(T0 + 600, 300, usage(("pl_a", 5, 0)), cycle=3)
    assert totals(read_history(path))[0][2] == 145
    assert Path(journal_path(path)).read_bytes()[4:6] == struct.pack("<H", JOURNAL_VERSION)


def test_dropping_an_unsaved_record_refuses_a_hard_linked_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    HistoryRecorder(path, CFG).record(T0, 300, usage(("pl_a", 7, 0)), cycle=1)  # saved: 1
    HistoryRecorder(path, CFG).record(T0 + 300, 300, usage(("pl_a", 5, 0)), cycle=2)  # killed
    journal = Path(journal_path(path))
    other = tmp_path / "someone-elses-file"
    os.link(journal, other)  # a second name of the journal's inode
    before = other.read_bytes()
    with pytest.raises(UnsafePath, match="hard links"):
        HistoryRecorder(path, CFG).record(T0 + 600, 300, usage(("pl_a", 1, 0)), cycle=2)
    assert other.read_bytes() == before  # not truncated through the link


@pytest.mark.parametrize("only", [None, "pl_a", "pl_b"])
def test_a_record_whose_entries_overrun_it_counts_nothing_of_it_or_after_it(
    tmp_path: Path, only: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that passes its checksum but whose entries do not end where it does (a
    writer's bug, not a crash): neither the whole journal's readers nor one slice's
    (which step over the other names in the same walk) count any of it, nor what
    follows; what came before stands.
    """
    from bwenforcer.history.journal import journal_header, journal_hours

    good = encode_cycle(T0, 300, usage(("pl_a", 7, 0), ("pl_b", 3, 0)))
    bad_payload = encode_cycle(T0 + 300, 300, usage(("pl_a", 5, 0), ("pl_b", 2, 0)))[8:-1]
    bad = struct.pack("<II", len(bad_payload), zlib.crc32(bad_payload)) + bad_payload
    after = encode_cycle(T0 + 600, 300, usage(("pl_a", 1, 0), ("pl_b", 1, 0)))
    data = journal_header(0) + good + bad + after
    with caplog.at_level("WARNING"):
        hours = journal_hours(io.BytesIO(data), "j", 0, no_file=True, only=only)
    expected = {"pl_a": 7, "pl_b": 3}
    assert {name: sum(row[0] for row in h.values()) for name, h in hours.items()} == {
        name: n for name, n in expected.items() if only in (None, name)
    }
    assert "journal record cut short, rest ignored" in caplog.text


steady = st.tuples(
    st.lists(st.sampled_from(["pl_a", "pl_b", "pl_c", "pl_d"]), min_size=1, max_size=4),
    st.lists(
        st.tuples(
            st.integers(min_value=60, max_value=900),  # time to the next cycle
            st.lists(
                st.tuples(st.integers(0, 10**12), st.integers(0, 3), st.integers(0, 10**9)),
                min_size=4, max_size=4,
            ),
            st.booleans(),  # the first slice idle this cycle (other names: a new run)
        ),
        max_size=60,
    ),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(steady)
def test_runs_of_records_with_the_same_names_sum_as_each_record_would(
    tmp_path_factory: object,
    fed: tuple[list[str], list[tuple[int, list[tuple[int, int, int]], bool]]],
) -> None:
    """A node whose slices send every cycle writes records of the same names in the same
    order (a name may come twice): the reader sums such runs by column. Capped classes
    (either, both), idle entries and a slice that falls silent for a cycle (a record of
    other names) give the hour rows that recording each cycle in memory gives.
    """
    names, cycles_fed = fed
    path = str(tmp_path_factory.mktemp("r") / "h")  # type: ignore[attr-defined]
    reference = History()
    recorder = HistoryRecorder(path, CFG, fold_min_bytes=10**9)
    now = T0
    for step, figures, first_idle in cycles_fed:
        now += step
        rows = [
            CycleUsage(name, sent, sent // 7, bool(capped & 1), bool(capped & 2), received, 0)
            for name, (sent, capped, received) in zip(names, figures, strict=False)
        ]
        rows = rows[1:] if first_idle else rows
        reference.record(now, 300, rows)
        recorder.record(now, 300, rows)
    for by in ("hour", "day"):
        assert totals(read_history(path), by) == totals(reference, by)

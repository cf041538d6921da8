"""Damage in an indexed history file costs only what it hit: a damaged slice's block
is skipped alone by the fold, a damaged header (its generation) keeps the journal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import HistoryCorrupt
from bwenforcer.history.decode import HistoryFile, file_generation
from bwenforcer.history.fold import fold_history, save_history
from bwenforcer.history.format import FORMAT_VERSION
from bwenforcer.history.journal import journal_path
from bwenforcer.history.reader import read_history
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.history.usage import CycleUsage, History
from tests.history import golden

T0 = 1_767_229_200  # 2026-01-01 01:00 UTC
DAY = 86_400
STAMP_S = 1_790_000_000.0  # 2026-09-21T14:13:20Z
ASIDE = "h.corrupt-20260921T141320Z"


def totals(history: History) -> dict[str, tuple[int, int]]:
    """Each slice's bytes over its whole history (default, exempt)."""
    out: dict[str, tuple[int, int]] = {}
    for row in history.report("month", None, None):
        d, e = out.get(row.slice_name, (0, 0))
        out[row.slice_name] = (d + row.default_bytes, e + row.exempt_bytes)
    return out


def three_slices(path: Path) -> HistoryRecorder:
    """A file of pl_a, pl_b, pl_c (folded), then a journal record for pl_b and pl_c."""
    recorder = HistoryRecorder(str(path), HistoryConfig(), clock=lambda: STAMP_S)
    recorder.record(T0, 300, [CycleUsage(n, 1000 * (i + 1), i, False, False)
                              for i, n in enumerate(("pl_a", "pl_b", "pl_c"))])  # fmt: skip
    recorder.fold(T0 + 300)
    recorder.record(T0 + 600, 300, [CycleUsage("pl_b", 5, 0, False, False),
                                    CycleUsage("pl_c", 7, 0, False, False)])  # fmt: skip
    return recorder


def flip_in_block(path: Path, name: str) -> bytes:
    """Flip a byte inside ``name``'s first record; the damaged file's bytes."""
    raw = bytearray(path.read_bytes())
    raw[raw.index(name.encode()) + len(name) + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    return bytes(raw)


def test_a_damaged_slice_is_skipped_alone_by_the_fold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h"
    recorder = three_slices(path)
    assert totals(read_history(str(path))) == {
        "pl_a": (1000, 0), "pl_b": (2005, 1), "pl_c": (3007, 2)
    }  # fmt: skip
    damaged = flip_in_block(path, "pl_b")
    with caplog.at_level(logging.ERROR, logger="bwenforcer.history.fold"):
        recorder.fold(T0 + 900)
    # pl_b keeps the journal's hours alone; pl_a and pl_c are whole
    assert totals(read_history(str(path))) == {
        "pl_a": (1000, 0), "pl_b": (5, 0), "pl_c": (3007, 2)
    }  # fmt: skip
    assert recorder.damaged_slices == 1
    assert (tmp_path / ASIDE).read_bytes() == damaged  # the old file, for an operator
    messages = [r.getMessage() for r in caplog.records]
    assert any("slice pl_b: damaged" in m and "checksum mismatch" in m for m in messages)
    assert any(str(tmp_path / ASIDE) in m and "pl_b" in m for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", ASIDE, "h.journal"]


def test_the_fold_returns_the_damaged_slices(tmp_path: Path) -> None:
    path = tmp_path / "h"
    three_slices(path)
    flip_in_block(path, "pl_a")
    folded = fold_history(str(path), 0xFFFF, None, lambda: STAMP_S)
    assert folded.damaged == ("pl_a",)
    assert folded.generation == file_generation(str(path))
    assert set(totals(read_history(str(path)))) == {"pl_b", "pl_c"}


def test_a_damaged_generation_keeps_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One bit of the header's generation flipped: the journal, which no longer seems
    to extend the file, is kept (not replaced), and the next fold takes it."""
    path = tmp_path / "h"
    three_slices(path)
    raw = bytearray(path.read_bytes())
    raw[6] ^= 0x04  # the generation field
    path.write_bytes(bytes(raw))
    with pytest.raises(HistoryCorrupt, match="header checksum mismatch"):
        read_history(str(path))
    with caplog.at_level(logging.ERROR, logger="bwenforcer.history.decode"):
        recorder = HistoryRecorder(str(path), HistoryConfig(), clock=lambda: STAMP_S)
        recorder.record(T0 + 900, 300, [CycleUsage("pl_c", 11, 0, False, False)])
    assert any("generation unknown" in r.getMessage() for r in caplog.records)
    recorder.fold(T0 + 1200)  # the damaged file moved aside; the journal folded in
    assert (tmp_path / ASIDE).read_bytes() == bytes(raw)
    assert totals(read_history(str(path))) == {"pl_b": (5, 0), "pl_c": (18, 0)}


def test_a_version_2_file_is_read_and_folded_into_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "h"
    history, _ = golden.build()
    path.write_bytes(golden.encode_v2(history))
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.version == 2 and hf.generation == golden.GENERATION
        hf.check()
    expected = totals(read_history(str(path)))
    assert expected == totals(history)
    fold_history(str(path), 0xFFFF, None)
    assert int.from_bytes(path.read_bytes()[4:6], "little") == FORMAT_VERSION == 6
    assert file_generation(str(path)) == golden.GENERATION + 1
    assert totals(read_history(str(path))) == expected
    assert not Path(journal_path(str(path))).exists()


def test_save_and_read_round_trip_with_the_header_checksum(tmp_path: Path) -> None:
    path = tmp_path / "h"
    history, _ = golden.build()
    save_history(history, str(path))
    assert totals(read_history(str(path))) == totals(history)
    raw = bytearray(path.read_bytes())
    raw[24] ^= 0x01  # the header's own checksum
    path.write_bytes(bytes(raw))
    assert file_generation(str(path)) is None
    with pytest.raises(HistoryCorrupt, match="header checksum mismatch"):
        read_history(str(path))


def test_a_fold_goes_on_when_the_damaged_file_cannot_be_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file system without hard links (none here: os.link made to fail as one does)."""
    import errno
    import os

    def no_link(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    path = tmp_path / "h"
    recorder = three_slices(path)
    flip_in_block(path, "pl_c")
    monkeypatch.setattr(os, "link", no_link)
    with caplog.at_level(logging.ERROR, logger="bwenforcer.history.fold"):
        recorder.fold(T0 + 900)
    assert totals(read_history(str(path))) == {
        "pl_a": (1000, 0), "pl_b": (2005, 1), "pl_c": (7, 0)
    }  # fmt: skip
    assert any("kept as nowhere (cannot link it" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h", "h.journal"]


def test_a_damaged_slice_of_a_version_4_file_is_skipped_alone_by_the_fold(
    tmp_path: Path,
) -> None:
    """A version 4 file (a header checksum, records without received bytes): a damaged
    block is skipped alone, the others are widened and written as the current version."""
    path = tmp_path / "h"
    history = History()
    history.record(T0, 300, [CycleUsage(n, 1000 * (i + 1), i, False, False)
                             for i, n in enumerate(("pl_a", "pl_b", "pl_c"))])  # fmt: skip
    path.write_bytes(golden.encode_v2(history, 4))
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.version == 4 and not hf.packed
        hf.check()
    assert totals(read_history(str(path))) == {
        "pl_a": (1000, 0), "pl_b": (2000, 1), "pl_c": (3000, 2)
    }  # fmt: skip
    flip_in_block(path, "pl_b")
    folded = fold_history(str(path), 0xFFFF, None, lambda: STAMP_S)
    assert folded.damaged == ("pl_b",)
    assert int.from_bytes(path.read_bytes()[4:6], "little") == FORMAT_VERSION
    assert totals(read_history(str(path))) == {"pl_a": (1000, 0), "pl_c": (3000, 2)}

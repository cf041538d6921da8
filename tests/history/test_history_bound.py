"""The history is bounded in total: slices that departed (neither live nor in the
ledger) keep only their monthly totals, and only the newest few of them."""

from __future__ import annotations

import os
from pathlib import Path

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.fold import fold_history
from bwenforcer.history.reader import read_history
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.history.usage import DAY_S, HOUR_S, CycleUsage, roll_up_cutoffs

T0 = 1_790_000_000 // DAY_S * DAY_S + 10 * HOUR_S
CFG = HistoryConfig()


def cycle(names: list[str], sent: int = 1000) -> list[CycleUsage]:
    return [CycleUsage(name, sent, 1, False, False) for name in names]


def test_departed_slices_keep_their_months_only(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    recorder = HistoryRecorder(path, CFG)
    for step in range(6):
        recorder.record(T0 + step * HOUR_S, 300, cycle(["pl_live", "pl_ledger", "pl_gone"]))
    before = read_history(path)
    recorder.fold(T0 + 6 * HOUR_S, live={"pl_live", "pl_ledger"})
    after = read_history(path)
    assert after.report("month") == before.report("month")  # not a byte lost
    assert [r.slice_name for r in after.report("hour")] == ["pl_ledger"] * 6 + ["pl_live"] * 6
    assert after.report("day", None, "pl_gone") == []  # its detail is gone
    assert [r.default_bytes for r in after.report("month", None, "pl_gone")] == [6000]


def test_of_the_departed_only_the_newest_are_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "h")
    recorder = HistoryRecorder(path, CFG)
    for i in range(5):  # pl_gone0 sent last the longest ago
        recorder.record(T0 + i * HOUR_S, 300, cycle([f"pl_gone{i}", "pl_live"]))
    recorder.fold(T0 + 5 * HOUR_S, live={"pl_live"})
    for i in range(5, 7):  # two more depart: in the journal only when folded
        recorder.record(T0 + i * HOUR_S, 300, cycle([f"pl_gone{i}", "pl_live"]))
    cutoffs = roll_up_cutoffs(T0 + 7 * HOUR_S, CFG)
    fold_history(path, 0xFFFF, cutoffs, live={"pl_live"}, departed_max=3)
    assert read_history(path).slice_names() == ["pl_gone4", "pl_gone5", "pl_gone6", "pl_live"]


def test_churn_does_not_grow_the_history_without_end(tmp_path: Path) -> None:
    """4 live slices, one replaced every cycle: the file levels off at the bound."""
    path = str(tmp_path / "h")
    recorder = HistoryRecorder(path, CFG, departed_max=20)
    sizes = []
    for n in range(300):
        live = [f"pl_{n - k:05d}" for k in range(4)]
        recorder.record(T0 + n * 300, 300, cycle(live))
        if n % 10 == 9:
            recorder.fold(T0 + n * 300, live=set(live))
            sizes.append(os.path.getsize(path))
    assert sizes[0] < sizes[2] < sizes[4]  # grows to the bound
    assert max(sizes[5:]) - min(sizes[5:]) <= 4 * 2 * 28  # then stays (live slices' hours)
    folded = read_history(path)
    names = folded.slice_names()
    assert names == [f"pl_{n:05d}" for n in range(299 - 23, 300)]  # the newest departed
    for row in folded.report("month"):
        if row.slice_name < "pl_00296":  # departed: every byte it sent, by month
            assert row.default_bytes == 4 * 1000

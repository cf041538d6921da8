"""A fold killed at any instant leaves the history as it was recorded: the old file
with its journal, or the new file (its journal then of an older generation,
ignored), never both counted nor one lost; the next fold completes it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.decode import HistoryFile
from bwenforcer.history.fold import save_history
from bwenforcer.history.format import FORMAT_VERSION, is_wide, receives
from bwenforcer.history.journal import encode_cycle, journal_header, journal_path
from bwenforcer.history.reader import HistoryReader, read_history
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.history.usage import (
    DAY_S,
    HOUR_S,
    CycleUsage,
    History,
    SliceHistory,
    roll_up_cutoffs,
    roll_up_slice,
    slice_buckets,
)
from tests.history import golden

NOW_S = 1_790_000_000 // DAY_S * DAY_S + 13 * HOUR_S
SLICES = 150
FOLD = "import sys\nfrom bwenforcer.core.settings import HistoryConfig\nfrom bwenforcer.history.recorder import HistoryRecorder\nHistoryRecorder(sys.argv[1], HistoryConfig()).fold(int(sys.argv[2]))\n"


def big_history(received: bool = False) -> History:
    """150 slices of 15 days of hours and 300 days: about 3.5 MB, nothing due to roll up;
    with ``received``, every third slice has received bytes in its first hour (its
    block wide).
    """
    rng = random.Random(5)
    slices = {}
    first_hour = (NOW_S - 15 * DAY_S) // DAY_S * 24
    for i in range(SLICES):
        sh = SliceHistory()
        sh.hours = {h: [rng.randrange(2**40), rng.randrange(2**30), 300, 0, 0, 0]
                    for h in range(first_hour, NOW_S // HOUR_S)}  # fmt: skip
        first_day = first_hour // 24 - 300
        sh.days = {
            d: [rng.randrange(2**44), 7, 2**40, 0, 600, 0, 0]  # v1 files receive nothing
            for d in range(first_day, first_hour // 24)
        }
        if received and i % 3 == 0:
            sh.hours[first_hour][4] = 1 + i
        slices[f"pl_{i:04d}"] = sh
    return History.from_slices(slices, 9)


def write_journal(path: Path, generation: int, received: bool = True) -> None:
    cycles = [
        [
            CycleUsage(f"pl_{i:04d}", 1000 + i, 5, i % 3 == 0, False, (70 + i) * received, 0)
            for i in range(0, SLICES + 20, 2)
        ]
        for _ in range(4)
    ]  # pl_0150 and on: new slices, in the journal only
    records = b"".join(
        encode_cycle(NOW_S - 900 + 300 * n, 300, cycle, cycle=None)
        for n, cycle in enumerate(cycles)
    )
    Path(journal_path(str(path))).write_bytes(journal_header(generation) + records)


def reports(path: Path) -> dict[str, list[object]]:
    history = read_history(str(path))
    return {by: history.report(by) for by in ("hour", "day", "month")}  # type: ignore[arg-type]


def fold(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", FOLD, str(path), str(NOW_S)])


def kill_folds(path: Path, runs: int, rng: random.Random) -> int:
    expected = reports(path)
    start = time.monotonic()
    probe = fold(path.with_name("probe"))  # on a copy: how long one takes
    probe.wait(timeout=120)
    whole_s = time.monotonic() - start
    killed = 0
    for _ in range(runs):
        proc = fold(path)
        time.sleep(rng.uniform(0.0, 1.1) * whole_s)
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait(timeout=120)
        assert reports(path) == expected
    done = fold(path)
    assert done.wait(timeout=120) == 0
    assert reports(path) == expected
    assert int.from_bytes(path.read_bytes()[4:6], "little") == FORMAT_VERSION
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    return killed


def test_a_fold_killed_at_random_points_keeps_every_byte_once(tmp_path: Path) -> None:
    rng = random.Random(11)
    history = big_history()
    path = tmp_path / "h"
    probe = tmp_path / "probe"
    for target in (path, probe):
        target.write_bytes(golden.encode_v1(history))  # the first fold also migrates it
        write_journal(target, history.generation)
    killed = kill_folds(path, 12, rng)
    # and a version 2 file with a new journal
    history = read_history(str(path))
    write_journal(path, history.generation)
    save_history(history, str(probe))
    write_journal(probe, history.generation)
    killed += kill_folds(path, 12, rng)
    assert killed >= 8  # most folds were really cut short


@pytest.mark.parametrize("case", ["v1", "v5", "narrow", "widened", "wide"])
@pytest.mark.parametrize("days", [0, 3, 40, 800])
def test_the_fold_leaves_what_a_whole_history_in_memory_would(
    tmp_path: Path, case: str, days: int
) -> None:
    """The fold equals the model's roll-up, departed slices included (their months
    only), however much is due: of a version 1 or 5 file (parsed), and of the current
    version on the blocks' bytes: narrow blocks and a journal that received nothing
    (they stay narrow), narrow blocks the journal's received bytes make wide, wide
    and narrow blocks and a journal with received bytes.
    """
    history = big_history(received=case == "wide")
    path = tmp_path / "h"
    if case == "v1":
        path.write_bytes(golden.encode_v1(history))
    elif case == "v5":
        path.write_bytes(golden.encode_v2(history, 5))
    else:
        save_history(history, str(path))
    write_journal(path, history.generation, received=case != "narrow")
    reference = read_history(str(path))
    now_s = NOW_S + days * DAY_S
    live = {name for name in reference.slice_names() if not name.endswith("7")}
    departed = {name for name in reference.slice_names() if name not in live}
    for name, sh in reference.slice_items():
        if name in departed:
            roll_up_slice(sh, (2**62, 2**62, roll_up_cutoffs(now_s, HistoryConfig())[2]))
    reference.roll_up(now_s, HistoryConfig())
    HistoryRecorder(str(path), HistoryConfig()).fold(now_s, live=live)
    folded = read_history(str(path))
    assert folded.generation == history.generation + 1
    for by in ("hour", "day", "month"):
        assert folded.report(by) == reference.report(by)  # type: ignore[arg-type]
    assert folded.report("day", None, "pl_0017") == []  # departed: months only
    # the month sums the fold kept up to date: the monthly report reads them alone
    with HistoryReader(str(path)) as reader:
        assert dict(reader.buckets("month")) == {
            name: slice_buckets(sh, "month") for name, sh in reference.slice_items()
        }
    # each block wide exactly if it received something (narrow ones kept narrow)
    slices = dict(folded.slice_items())
    with HistoryFile(path.open("rb"), str(path), path.stat().st_size) as hf:
        assert hf.index is not None
        shapes = {entry[0]: is_wide(hf.raw_block(*entry)) for entry in hf.index}
    assert shapes == {name: receives(sh) for name, sh in slices.items()}
    assert any(shapes.values()) == (case != "narrow")
    assert not all(shapes.values())

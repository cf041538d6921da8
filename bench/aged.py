"""Aged histories for the benchmark: 4,000 slices that sent every 5 minutes for a
year or ten, and the costs that must stay flat as they age (fold, reports).

The file is what the recorder leaves: one slice's buckets are made by the
history model itself, an hour at a time over the years with a roll-up each day
(an injected clock, not the wall clock), and written for every slice through the
history file's own encoder; today's cycles (since midnight UTC, every 5 minutes)
go through :class:`HistoryRecorder` into the journal: the reports read the day's
first 13 hours (156 cycles), the daily fold a whole day's journal (288 cycles, as
the first cycle after midnight folds it). Made once and cached (a 10-year file
is ~230 MB) under ``$BWENFORCER_BENCH_CACHE`` or /tmp.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.launch import launched
from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.fold import write_history
from bwenforcer.history.format import FORMAT_VERSION
from bwenforcer.history.journal import JOURNAL_VERSION
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.history.usage import DAY_S, HOUR_S, CycleUsage, History, SliceHistory

NOW_S = 1_800_000_000 // DAY_S * DAY_S + 13 * HOUR_S  # 13:00 UTC: half a day in the journal
CYCLE_S = 300
# The daily fold: the first cycle of the next day, a day's hours due to roll up.
FOLD_AT_S = NOW_S // DAY_S * DAY_S + DAY_S
CACHE = Path(os.environ.get("BWENFORCER_BENCH_CACHE", tempfile.gettempdir())) / "bwenforcer-bench"


def slice_template(years: int, rng: random.Random) -> SliceHistory:
    """One slice's buckets after ``years`` of 5-minute cycles, as the recorder rolls them
    up: the model fed an hour (12 cycles) at a time, rolled up daily.
    """
    history, cfg = History(), HistoryConfig()
    start_s = NOW_S // DAY_S * DAY_S - years * 365 * DAY_S
    for hour_s in range(start_s, NOW_S // DAY_S * DAY_S, HOUR_S):
        sent = rng.randrange(12 * 2**20, 12 * 2**27)
        history.record(hour_s, 12 * CYCLE_S * (rng.random() < 0.1), [
            CycleUsage("t", sent, sent // 9, True, False)
        ])  # fmt: skip
        if hour_s % DAY_S == DAY_S - HOUR_S:
            history.roll_up(hour_s + HOUR_S, cfg)
    history.roll_up(NOW_S, cfg)
    ((_, sh),) = history.slice_items()
    return sh


def names(n: int) -> list[str]:
    return [f"pl_slice{i:05d}" for i in range(n)]


def make(n: int, years: int) -> Path:
    """The history file of ``n`` slices aged ``years`` (its journal of 13 hours beside it,
    and a whole day's in ``day.journal``), cached.
    """
    # s: with month sums; j: the journal's version; d: with a day's journal
    where = CACHE / f"n{n}-y{years}-v{FORMAT_VERSION}j{JOURNAL_VERSION}sd"
    path = where / "history"
    if (where / "done").exists():
        return path
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, mode=0o700)
    template = slice_template(years, random.Random(years))
    write_history(str(path), 1, ((name, template, None) for name in sorted(names(n))))
    recorder = HistoryRecorder(str(path), HistoryConfig())
    rng = random.Random(n)
    journal = Path(f"{path}.journal")
    midnight_s = NOW_S // DAY_S * DAY_S
    for now_s in range(midnight_s, midnight_s + DAY_S, CYCLE_S):
        if now_s == NOW_S:
            shutil.copyfile(journal, where / "reports.journal")
        usage = [
            CycleUsage(name, rng.randrange(2**26), rng.randrange(2**20), False, False)
            for name in names(n)
        ]
        recorder.record(now_s, CYCLE_S, usage, cycle=None)
    journal.rename(where / "day.journal")
    (where / "reports.journal").rename(journal)
    (where / "done").write_text("")
    return path


_FOLD = """
import sys
from bench.launch import launched
from bwenforcer.core.settings import HistoryConfig
from bwenforcer.history.recorder import HistoryRecorder
HistoryRecorder(sys.argv[1], HistoryConfig()).fold(int(sys.argv[2]))
"""

_IMPORTS = "import bwenforcer.history.recorder, bwenforcer.cli"


def measured(cmd: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak RSS (KiB) of ``cmd``."""
    rc, wall, rss, err = launched(cmd)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed (exit {rc}): {err[-300:]}")
    return wall, rss


def medians(cmd: list[str], runs: int, before: object = None) -> tuple[float, int]:
    walls, rss = [], []
    for _ in range(runs):
        if callable(before):
            before()
        wall, peak = measured(cmd)
        walls.append(wall)
        rss.append(peak)
    return statistics.median(walls), max(rss)


def aged_figures(n: int, years: int, runs: int, reports: tuple[str, ...]) -> dict[str, float]:
    """Fold and report costs on the aged history (n slices, ``years`` old)."""
    source = make(n, years)
    python = str(Path(sys.executable))
    bwenforcer = str(Path(sys.executable).with_name("bwenforcer"))
    out: dict[str, float] = {"n": n, "years": years}
    out["file_bytes"] = source.stat().st_size
    out["journal_bytes"] = Path(f"{source}.journal").stat().st_size
    out["day_journal_bytes"] = source.with_name("day.journal").stat().st_size
    _, out["python_rss_kib"] = medians([python, "-c", _IMPORTS], 1)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o700)
        work = tmp / "state.json.history"

        day_journal = source.with_name("day.journal")

        def fresh(journal: Path = day_journal) -> None:
            shutil.copyfile(source, work)
            shutil.copyfile(journal, f"{work}.journal")
            os.sync()  # the copies' writeback is not the fold's

        out["fold_s"], out["fold_rss_kib"] = medians(
            [python, "-c", _FOLD, str(work), str(FOLD_AT_S)], runs, fresh
        )
        fresh(Path(f"{source}.journal"))
        cfg = tmp / "bwenforcer.yaml"
        cfg.write_text(f"state_file: {tmp}/state.json\nslices_file: null\n")
        argv = {
            "day": [],
            "month": ["--by", "month"],
            "hour": ["--by", "hour"],
            "slice": ["--slice", names(n)[n // 2]],
            "json": ["--json"],
            "csv": ["--csv"],
        }
        for name in reports:
            cmd = [bwenforcer, "--config", str(cfg), "report", *argv[name]]
            out[f"report_{name}_s"], out[f"report_{name}_rss_kib"] = medians(cmd, runs)
    return out


def aged_table(rows: list[dict[str, float]]) -> str:
    """Markdown: one line per aged history."""
    lines = [
        "| slices | age | file | fold | `report` (by day) | `--by month` | `--slice` | `--json`"
        " | `--csv` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict[str, float], key: str) -> str:
        if f"{key}_s" not in r:
            return "—"
        return f"{r[f'{key}_s']:.2f} s, {r[f'{key}_rss_kib'] / 1024:.0f} MiB"

    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {int(r['years'])} y | {r['file_bytes'] / 2**20:.0f} MiB"
            f" + journal {r['journal_bytes'] / 2**20:.0f} MiB (a day's"
            f" {r['day_journal_bytes'] / 2**20:.0f} MiB) | {cell(r, 'fold')} "
            f"| {cell(r, 'report_day')} | {cell(r, 'report_month')} | {cell(r, 'report_slice')} "
            f"| {cell(r, 'report_json')} | {cell(r, 'report_csv')} |"
        )
    if rows:
        lines.append("")
        lines.append(
            f"Peak RSS of a Python process that only imports bwenforcer's CLI and history:"
            f" {rows[0]['python_rss_kib'] / 1024:.0f} MiB."
        )
    return "\n".join(lines)


def churn_figures(n: int, cycles: int, share: float) -> dict[str, float]:
    """``n`` live slices, ``share`` of them replaced every 5-minute cycle for ``cycles``
    cycles, through the recorder, folded every 12 cycles as the agent does (told the
    live names): the names and size of the history at the end, and the last fold.
    """
    import time

    replaced = max(1, int(n * share))
    with tempfile.TemporaryDirectory() as tmpdir:
        path = str(Path(tmpdir) / "history")
        recorder = HistoryRecorder(path, HistoryConfig())
        rng = random.Random(3)
        first = 0
        fold_s = 0.0
        for c in range(cycles):
            live = [f"pl_{i:07d}" for i in range(first, first + n)]
            usage = [CycleUsage(name, rng.randrange(2**26), 0, False, False) for name in live]
            recorder.record(NOW_S + c * CYCLE_S, CYCLE_S, usage, cycle=None)
            if c % 12 == 11:
                start = time.perf_counter()
                recorder.fold(NOW_S + c * CYCLE_S, live=set(live))
                fold_s = time.perf_counter() - start
            first += replaced
        with open(path, "rb") as f:
            names = int.from_bytes(f.read(12)[8:12], "little")
        return {
            "n": n,
            "cycles": cycles,
            "replaced": replaced,
            "ever": first + n - replaced,
            "names": names,
            "file_bytes": os.path.getsize(path),
            "fold_s": fold_s,
        }


def churn_line(r: dict[str, float]) -> str:
    """One sentence for the churn figures."""
    return (
        f"Churn: {int(r['n']):,} live slices, {int(r['replaced']):,} replaced every cycle for"
        f" {int(r['cycles'])} cycles ({int(r['ever']):,} slices ever): the history holds"
        f" {int(r['names']):,} names (departed ones: months only, at most 10,000),"
        f" {r['file_bytes'] / 2**20:.1f} MiB; its last fold {r['fold_s']:.2f} s."
    )


# The reports timed on each aged history: at 10 years the day, --json and --csv reports
# print 2.9 million rows; their cost per row is the 1-year figure's.
AGED_REPORTS = {1: ("day", "month", "slice", "json", "csv"), 10: ("month", "slice")}


if __name__ == "__main__":
    import json

    # python -m bench.aged (no root): the aged rows and the churn line alone
    rows = [aged_figures(4000, years, 3, AGED_REPORTS[years]) for years in (1, 10)]
    print(aged_table(rows))
    churn = churn_figures(4000, 300, 0.05)
    print()
    print(churn_line(churn))
    out = Path(__file__).with_name("results") / "aged.json"
    out.write_text(json.dumps({"aged": rows, "churn": churn}, indent=2) + "\n")

"""Usage history: totals survive roll-ups and restarts, the file stays bounded, saves are atomic."""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import re
import stat
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import move_aside
from bwenforcer.history import format as historyformat
from bwenforcer.history.decode import decode_history
from bwenforcer.history.fold import save_history
from bwenforcer.history.format import (
    FORMAT_VERSION,
    HEADER_BYTES,
    MAX_BYTES_PER_SLICE,
    encode_history,
    max_bytes_per_slice,
    size_bytes,
)
from bwenforcer.history.reader import HistoryReader, load_history, read_history
from bwenforcer.history.usage import CycleUsage, History, ReportRow, SliceHistory, slice_report
from tests.history import golden

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC
HOUR = 3600
DAY = 86400
SHORT = HistoryConfig(hourly_keep_s=2 * DAY, daily_keep_s=40 * DAY, monthly_keep_s=200 * DAY)

# (slice, hour index) -> [default, exempt, capped default s, capped exempt s]
Fed = dict[tuple[str, int], list[int]]
# (slice, bucket start) -> (default, exempt, peak hour, capped default s, capped exempt s)
Totals = dict[tuple[str, int], tuple[int, int, int, int, int]]


def bucket_start(by: str, hour: int) -> int:
    start = dt.datetime.fromtimestamp(hour * HOUR, dt.UTC)
    if by == "hour":
        return hour * HOUR
    if by == "day":
        return hour // 24 * DAY
    return int(start.replace(day=1, hour=0).timestamp())


def retained_from(by: str, now_s: int, cfg: HistoryConfig) -> int:
    """Start of the oldest bucket the documented retention keeps at ``now_s``."""
    if by == "hour":  # whole days are folded once older than the hourly keep
        return (now_s - cfg.hourly_keep_s) // DAY * DAY
    if by == "day":
        return (now_s - cfg.daily_keep_s) // DAY * DAY
    return bucket_start("month", (now_s - cfg.monthly_keep_s) // HOUR)


def expected(fed: Fed, by: str, since_s: int = 0) -> Totals:
    """Totals computed straight from what was fed, hour by hour."""
    acc: dict[tuple[str, int], list[int]] = {}
    for (name, hour), (d, e, cd, ce) in fed.items():
        if not (d or e or cd or ce):
            continue
        key = (name, bucket_start(by, hour))
        if key[1] < since_s:
            continue
        row = acc.setdefault(key, [0, 0, 0, 0, 0])
        row[0] += d
        row[1] += e
        row[2] = max(row[2], d + e)
        row[3] += cd
        row[4] += ce
    return {k: (a, b, c, d, e) for k, (a, b, c, d, e) in acc.items()}


def reported(rows: Iterable[ReportRow]) -> Totals:
    out: Totals = {}
    for r in rows:
        key = (r.slice_name, r.bucket_start_s)
        assert key not in out, f"bucket reported twice: {key}"
        out[key] = (
            r.default_bytes,
            r.exempt_bytes,
            r.peak_hour_bytes,
            r.capped_default_s,
            r.capped_exempt_s,
        )
    return out


def simulate(
    history: History,
    cfg: HistoryConfig,
    names: Sequence[str],
    cycles: int,
    rng: random.Random,
    *,
    interval_s: int = 300,
    roll_each_cycle: bool = True,
    restart_every: int | None = None,
    path: Path | None = None,
) -> tuple[History, Fed, int]:
    """Feed random deltas on a simulated clock; return the history, what was fed and the end."""
    fed: Fed = defaultdict(lambda: [0, 0, 0, 0])
    now_s = T0
    for cycle in range(cycles):
        now_s = T0 + cycle * interval_s
        usage = []
        for name in names:
            d = rng.randrange(1, 40_000_000) if rng.random() < 0.9 else 0
            e = rng.randrange(1, 9_000_000) if rng.random() < 0.5 else 0
            cd, ce = rng.random() < 0.1, rng.random() < 0.05
            usage.append(CycleUsage(name, d, e, cd, ce))
            row = fed[(name, now_s // HOUR)]
            row[0] += d
            row[1] += e
            row[2] += interval_s if cd else 0
            row[3] += interval_s if ce else 0
        history.record(now_s, interval_s, usage)
        if roll_each_cycle or now_s // HOUR != (now_s + interval_s) // HOUR:
            history.roll_up(now_s, cfg)
        if restart_every and path and cycle % restart_every == restart_every - 1:
            save_history(history, str(path))
            history = load_history(str(path))
    history.roll_up(now_s, cfg)
    return history, fed, now_s


def retained(fed: Fed, by: str, now_s: int, cfg: HistoryConfig) -> Totals:
    return expected(fed, by, since_s=retained_from(by, now_s, cfg))


@pytest.mark.parametrize(
    ("cfg", "roll_each_cycle"), [(HistoryConfig(), True), (SHORT, False)], ids=["default", "short"]
)
def test_400_days_totals_equal_what_was_fed(
    tmp_path: Path, cfg: HistoryConfig, roll_each_cycle: bool
) -> None:
    rng = random.Random(400)
    names = ["pl_alpha", "pl_beta", "site_gamma"]
    history, fed, now_s = simulate(
        History(),
        cfg,
        names,
        400 * 288,
        rng,
        roll_each_cycle=roll_each_cycle,
        restart_every=37 * 288,  # an agent restart (save, load) now and then
        path=tmp_path / "h",
    )
    for by in ("month", "day", "hour"):
        want = retained(fed, by, now_s, cfg)
        assert want, by
        assert reported(history.report(by, None, None)) == want, by
    if cfg == SHORT:  # old months are gone; the months kept are whole
        assert len(history.report("month", None, None)) < len(expected(fed, "month"))
    else:  # nothing is old enough to be dropped: every byte fed is in the monthly totals
        rows = history.report("month", None, None)
        assert sum(r.default_bytes for r in rows) == sum(v[0] for v in fed.values())
        assert sum(r.exempt_bytes for r in rows) == sum(v[1] for v in fed.values())
        assert sum(r.capped_default_s for r in rows) == sum(v[2] for v in fed.values())
        assert sum(r.capped_exempt_s for r in rows) == sum(v[3] for v in fed.values())
    day_start = (now_s - 10 * DAY) // DAY * DAY
    assert reported(history.report("day", day_start + 5 * HOUR, "pl_beta")) == {
        k: v
        for k, v in retained(fed, "day", now_s, cfg).items()
        if k[0] == "pl_beta" and k[1] >= day_start
    }


def test_a_year_of_100_slices_stays_under_the_size_bound_and_adds_up(tmp_path: Path) -> None:
    """A year of 5-minute cycles for 100 slices: the file stays under the documented bound."""
    cfg = HistoryConfig()
    rng = random.Random(2026)
    names = [f"site{i % 7}_slice{i:03d}" for i in range(100)]
    # Cycles are drawn from a pool of recorded random cycles, so the expected totals are
    # counted per pool entry rather than re-added slice by slice (that would dominate).
    pool = [
        [
            CycleUsage(
                n,
                rng.randrange(1, 60_000_000),
                rng.randrange(0, 20_000_000),
                rng.random() < 0.2,
                rng.random() < 0.1,
            )
            for n in names
        ]
        for _ in range(97)
    ]
    drawn: dict[tuple[int, int], int] = defaultdict(int)  # (month start, pool index) -> count
    history = History()
    bound = MAX_BYTES_PER_SLICE * 100 + HEADER_BYTES
    largest = 0
    now_s = T0
    month = T0
    for cycle in range(365 * 288):
        now_s = T0 + cycle * 300
        if cycle % 288 == 0:
            month = bucket_start("month", now_s // HOUR)
        pick = rng.randrange(len(pool))
        drawn[(month, pick)] += 1
        history.record(now_s, 300, pool[pick])
        history.roll_up(now_s, cfg)
        if cycle % 288 == 287:
            largest = max(largest, size_bytes(history))
    path = tmp_path / "state.json.history"
    save_history(history, str(path))
    size = path.stat().st_size
    assert size == size_bytes(history) <= bound
    assert largest <= bound
    totals: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (month, pick), count in drawn.items():
        for u in pool[pick]:
            row = totals[(u.slice_name, month)]
            row[0] += u.default_bytes * count
            row[1] += u.exempt_bytes * count
            row[2] += 300 * count if u.capped_default else 0
            row[3] += 300 * count if u.capped_exempt else 0
    rows = load_history(str(path)).report("month", None, None)
    assert len(rows) == 100 * 12
    got = {
        (r.slice_name, r.bucket_start_s): [
            r.default_bytes,
            r.exempt_bytes,
            r.capped_default_s,
            r.capped_exempt_s,
        ]
        for r in rows
    }
    assert got == totals


@pytest.mark.parametrize("received", [1, 0])
def test_the_bound_holds_for_ever_and_is_near_tight(received: int) -> None:
    """Twelve years of hourly activity: the slice never outgrows MAX_BYTES_PER_SLICE,
    nearly reached by a slice that receives (its block wide); one that receives
    nothing (narrow) nears the documented narrow bound.
    """
    cfg = HistoryConfig()
    name = "s" * 255  # the longest storable name
    history = History()
    largest = 0
    for hour in range(12 * 365 * 24):
        now_s = T0 + hour * HOUR + 1800
        history.record(now_s, HOUR, [CycleUsage(name, 1, 1, False, False, received, 0)])
        history.roll_up(now_s, cfg)
        # within a day the file only grows (an hour, a month sum), and a day's roll-up
        # comes with its first hour: its last hour and its first are the day's largest
        if (now_s // HOUR) % 24 in (0, 23):
            largest = max(largest, size_bytes(history))
    bound = MAX_BYTES_PER_SLICE if received else 549 + 384 * 28 + (715 + 97 + 26) * 36
    assert largest <= bound + HEADER_BYTES
    assert largest > 0.97 * bound


def test_documented_bound_matches_the_constant() -> None:
    doc = historyformat.__doc__ or ""
    assert f"MAX_BYTES_PER_SLICE`` = {MAX_BYTES_PER_SLICE:,} bytes" in doc
    assert max_bytes_per_slice(HistoryConfig()) == MAX_BYTES_PER_SLICE
    per_year = re.search(r"at most ([\d,]+) bytes per slice for the first year", doc)
    assert per_year is not None
    assert int(per_year.group(1).replace(",", "")) == 549 + 384 * 44 + 365 * 52 + 14 * 52
    narrow = re.search(r"first year \(([\d,]+) narrow\)", doc)
    assert narrow is not None
    assert int(narrow.group(1).replace(",", "")) == 549 + 384 * 28 + (365 + 14) * 36
    assert f"26 month sums; {549 + 384 * 28 + (715 + 97 + 26) * 36:,} narrow" in doc
    assert max_bytes_per_slice(SHORT) < MAX_BYTES_PER_SLICE


def test_peaks_are_the_busiest_hour_across_tiers() -> None:
    history = History()
    day1 = T0 + 3 * DAY
    for offset_h, d, e in ((1, 10, 0), (2, 20, 30), (2, 0, 0), (5, 25, 5)):
        history.record(day1 + offset_h * HOUR, 300, [CycleUsage("pl_a", d, e, False, False)])
    history.record(day1 + DAY + 7 * HOUR, 300, [CycleUsage("pl_a", 60, 10, False, False)])
    history.record(day1 + DAY + 7 * HOUR + 300, 300, [CycleUsage("pl_a", 0, 5, False, False)])
    keep_one_day = HistoryConfig(
        hourly_keep_s=DAY, daily_keep_s=400 * DAY, monthly_keep_s=800 * DAY
    )
    history.roll_up(day1 + 2 * DAY + HOUR, keep_one_day)  # day 1 folded, day 2 still hourly
    assert [r.bucket_start_s for r in history.report("hour", None, None)] == [day1 + DAY + 7 * HOUR]
    days = history.report("day", None, None)
    assert [
        (r.bucket_start_s, r.default_bytes, r.exempt_bytes, r.peak_hour_bytes) for r in days
    ] == [
        (day1, 55, 35, 50),
        (day1 + DAY, 60, 15, 75),
    ]
    (month,) = history.report("month", None, None)
    assert (month.default_bytes, month.exempt_bytes, month.peak_hour_bytes) == (115, 50, 75)
    history.roll_up(day1 + 500 * DAY, keep_one_day)  # both days folded into their month
    assert history.report("day", None, None) == []
    (month,) = history.report("month", None, None)
    assert (month.bucket_start_s, month.peak_hour_bytes, month.default_bytes) == (T0, 75, 115)


def test_capped_time_adds_the_interval_per_capped_class() -> None:
    history = History()
    for i, (cd, ce) in enumerate([(True, False), (True, True), (False, False), (True, False)]):
        history.record(T0 + i * 300, 300, [CycleUsage("pl_a", 1, 1, cd, ce)])
    history.record(T0 + 1200, 60, [CycleUsage("pl_b", 0, 0, False, True)])  # capped, idle
    rows = {r.slice_name: r for r in history.report("hour", None, None)}
    assert (rows["pl_a"].capped_default_s, rows["pl_a"].capped_exempt_s) == (900, 300)
    assert (
        rows["pl_b"].capped_default_s,
        rows["pl_b"].capped_exempt_s,
        rows["pl_b"].default_bytes,
    ) == (0, 60, 0)


def test_negative_deltas_are_ignored_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    history = History()
    history.record(T0, 300, [CycleUsage("pl_a", 100, 7, False, False)])
    with caplog.at_level(logging.WARNING, logger="bwenforcer.history.usage"):
        history.record(
            T0 + 300,
            300,
            [CycleUsage("pl_a", -50, 3, False, False), CycleUsage("pl_b", -1, -1, False, False)],
        )
    (row,) = history.report("hour", None, None)
    assert (row.slice_name, row.default_bytes, row.exempt_bytes) == ("pl_a", 100, 10)
    assert history.ignored == 2
    assert history.slice_names() == ["pl_a"]
    assert any("pl_b" in r.getMessage() and "negative" in r.getMessage() for r in caplog.records)


def test_idle_slices_and_unstorable_names_cost_nothing() -> None:
    history = History()
    history.record(
        T0,
        300,
        [CycleUsage("pl_idle", 0, 0, False, False), CycleUsage("x" * 256, 5, 5, False, False)],
    )
    assert history.slice_names() == []
    assert size_bytes(history) == HEADER_BYTES
    assert history.ignored == 1


def test_deleted_slices_stay_until_they_age_out() -> None:
    history = History()
    history.record(T0, 300, [CycleUsage("pl_gone", 5, 0, False, False)])
    cfg = HistoryConfig(hourly_keep_s=DAY, daily_keep_s=10 * DAY, monthly_keep_s=60 * DAY)
    history.roll_up(T0 + 59 * DAY, cfg)
    assert history.slice_names() == ["pl_gone"]
    assert [r.default_bytes for r in history.report("month", None, "pl_gone")] == [5]
    history.roll_up(T0 + 90 * DAY, cfg)  # January ended 59 days ago: still kept
    assert history.slice_names() == ["pl_gone"]
    history.roll_up(T0 + 91 * DAY, cfg)  # and now 60
    assert history.slice_names() == []
    assert history.report("month", None, None) == []


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(-3 * HOUR, 40 * HOUR),
            st.sampled_from(["a", "b"]),
            st.integers(-5, 10**12),
            st.integers(-5, 10**12),
            st.booleans(),
            st.booleans(),
        ),
        max_size=60,
    ),
    hourly_keep_s=st.integers(0, 3 * DAY),
    daily_keep_s=st.integers(0, 70 * DAY),
)
def test_nothing_lost_or_counted_twice_within_retention(
    steps: list[tuple[int, str, int, int, bool, bool]], hourly_keep_s: int, daily_keep_s: int
) -> None:
    cfg = HistoryConfig(
        hourly_keep_s=hourly_keep_s, daily_keep_s=daily_keep_s, monthly_keep_s=100 * 365 * DAY
    )
    history = History()
    fed: Fed = defaultdict(lambda: [0, 0, 0, 0])
    now_s = T0
    for step_s, name, d, e, cd, ce in steps:
        now_s += step_s  # sometimes backwards: a clock set back
        history.record(now_s, 300, [CycleUsage(name, d, e, cd, ce)])
        history.roll_up(now_s, cfg)
        row = fed[(name, now_s // HOUR)]
        row[0] += max(d, 0)
        row[1] += max(e, 0)
        row[2] += 300 if cd else 0
        row[3] += 300 if ce else 0
    for name in ("a", "b"):
        mine = [v for (n, _), v in fed.items() if n == name]
        rows = history.report("month", None, name)
        assert [sum(r.default_bytes for r in rows), sum(r.exempt_bytes for r in rows)] == [
            sum(v[0] for v in mine),
            sum(v[1] for v in mine),
        ]
        assert sum(r.capped_default_s + r.capped_exempt_s for r in rows) == sum(
            v[2] + v[3] for v in mine
        )
    if all(step >= 0 for step, *_ in steps):
        assert reported(history.report("month", None, None)) == expected(fed, "month")
    restored = decode_history(encode_history(history), "test")
    for by in ("hour", "day", "month"):
        assert restored.report(by, None, None) == history.report(by, None, None)


# --- the file ----------------------------------------------------------------


def small_history() -> History:
    history = History()
    history.record(
        T0, 300, [CycleUsage("pl_a", 1000, 20, True, False), CycleUsage("pl_b", 5, 0, False, True)]
    )
    history.record(T0 + 3 * DAY, 300, [CycleUsage("pl_a", 7, 0, False, False)])
    history.roll_up(T0 + 3 * DAY, HistoryConfig(hourly_keep_s=DAY))
    return history


def test_save_is_atomic_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "state.json.history"
    (tmp_path / "lib").mkdir()
    path.write_bytes(b"old")
    path.chmod(0o644)
    old = os.umask(0)  # a permissive umask must not leak into the file mode
    try:
        save_history(small_history(), str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == [path.name]
    data = path.read_bytes()
    assert data[:4] == b"BWHS" and int.from_bytes(data[4:6], "little") == FORMAT_VERSION
    assert len(data) == size_bytes(small_history())
    loaded = load_history(str(path))
    for by in ("hour", "day", "month"):
        assert loaded.report(by, None, None) == small_history().report(by, None, None)


def test_save_creates_the_directory_and_removes_dead_writers_temps(tmp_path: Path) -> None:
    path = tmp_path / "new" / "h"
    save_history(History(), str(path))
    dead = path.parent / f"h.tmp-{2**22 + 7}"  # above pid_max's default: no such process
    dead.write_bytes(b"partial")
    save_history(small_history(), str(path))
    assert sorted(os.listdir(path.parent)) == ["h"]
    assert read_history(str(path)).slice_names() == ["pl_a", "pl_b"]


def test_failed_save_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "h"
    save_history(small_history(), str(path))
    before = path.read_bytes()
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "x").write_text("a directory cannot be replaced by a file")
    with pytest.raises(HistoryError, match=r"blocked: cannot save history"):
        save_history(History(), str(blocker))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["blocked", "h"]


def test_missing_file_is_an_empty_history(tmp_path: Path) -> None:
    assert load_history(str(tmp_path / "none")).slice_names() == []
    assert size_bytes(read_history(str(tmp_path / "none"))) == HEADER_BYTES


def damaged(good: bytes) -> list[tuple[bytes, str]]:
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    newer = bytearray(good)
    newer[4:6] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    return [
        (b"", "truncated header"),
        (b'{"schema_version": 1}\n' * 2, "not a bwenforcer history file"),
        (bytes(flipped), "checksum mismatch"),
        (bytes(newer), f"format version {FORMAT_VERSION + 1}, expected {FORMAT_VERSION}"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_corrupt_file_is_moved_aside_and_history_starts_empty(
    tmp_path: Path, case: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h"
    save_history(small_history(), str(path))
    raw, problem = damaged(path.read_bytes())[case]
    path.write_bytes(raw)
    with pytest.raises(HistoryCorrupt, match=re.escape(problem)):
        read_history(str(path))
    assert path.read_bytes() == raw  # reading alone moves nothing
    stamp_s = 1_790_000_000.0  # 2026-09-21T14:13:20Z
    with caplog.at_level(logging.ERROR, logger="bwenforcer.history.reader"):
        loaded = load_history(str(path), clock=lambda: stamp_s)
    assert loaded.slice_names() == []
    aside = tmp_path / "h.corrupt-20260921T141320Z"
    assert aside.read_bytes() == raw and not path.exists()
    assert any(str(aside) in r.getMessage() for r in caplog.records)
    path.write_bytes(raw)  # damaged again in the same second: a second name
    load_history(str(path), clock=lambda: stamp_s)
    assert (tmp_path / "h.corrupt-20260921T141320Z.2").read_bytes() == raw


def test_move_aside_moves_a_symlink_itself_and_never_reuses_a_taken_name(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"kept")
    link = tmp_path / "h"
    link.symlink_to(target)
    taken = tmp_path / "h.corrupt-20260921T141320Z"
    taken.symlink_to(tmp_path / "nowhere")  # dangling: still a taken name
    aside = move_aside(str(link), "corrupt", 1_790_000_000.0)
    assert aside == f"{taken}.2"
    assert os.readlink(aside) == str(target) and not os.path.lexists(link)
    assert target.read_bytes() == b"kept" and os.readlink(taken) == str(tmp_path / "nowhere")


def test_truncated_and_padded_bodies_are_corrupt(tmp_path: Path) -> None:
    v1 = golden.encode_v1(small_history())
    for raw in (v1[:-5], v1 + b"\0"):
        body = raw[16:]
        fixed = raw[:12] + zlib.crc32(body).to_bytes(4, "little") + body
        with pytest.raises(HistoryCorrupt, match=r"truncated|after the end"):
            decode_history(fixed, "h")
    good = encode_history(small_history())
    for raw in (good[:-5], good + b"\0"):
        with pytest.raises(HistoryCorrupt, match=r"index"):
            decode_history(raw, "h")


def test_a_damaged_slice_is_found_when_it_is_read(tmp_path: Path) -> None:
    """Version 2: each slice has its checksum; one slice is read without the others."""
    history = small_history()
    path = tmp_path / "h"
    save_history(history, str(path))
    raw = bytearray(path.read_bytes())
    names = history.slice_names()
    first = raw.index(names[0].encode()) + len(names[0]) + 20  # inside its first record
    raw[first] ^= 0xFF
    path.write_bytes(bytes(raw))
    with HistoryReader(str(path)) as reader:
        for name in names[1:]:
            assert slice_report(name, reader.slice(name) or SliceHistory(), "hour") == (
                history.report("hour", None, name)
            )
        with pytest.raises(HistoryCorrupt, match=rf"slice {names[0]}: checksum mismatch"):
            reader.slice(names[0])


def test_counts_saturate_instead_of_failing_the_save(tmp_path: Path) -> None:
    history = History()
    history.record(T0, 2**40, [CycleUsage("pl_big", 2**70, 1, True, False)])
    path = tmp_path / "h"
    save_history(history, str(path))
    (row,) = read_history(str(path)).report("hour", None, None)
    assert (row.default_bytes, row.capped_default_s) == (2**64 - 1, 2**32 - 1)

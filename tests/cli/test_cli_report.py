"""``bwenforcer report`` through the real command line, on a history file written by save_history."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.commands.inspect import NOW_ENV
from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import ExitCode
from bwenforcer.history.fold import save_history
from bwenforcer.history.usage import CycleUsage, History
from bwenforcer.inputs.config import load_config
from bwenforcer.views.report import JSON_KEYS

KiB, MiB, GiB = 2**10, 2**20, 2**30


def at(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def fixed_history() -> History:
    history = History()
    history.record(
        at("2026-10-30T10:05"), 300, [CycleUsage("pl_alpha", GiB, 150 * MiB, True, False)]
    )
    history.record(
        at("2026-10-30T10:10"), 300, [CycleUsage("pl_alpha", GiB // 2, 50 * MiB, True, False)]
    )
    history.record(
        at("2026-11-01T09:00"),
        300,
        [
            CycleUsage("pl_alpha", 300 * MiB, 0, False, False),
            CycleUsage("pl_beta", 10 * KiB, 5 * MiB, False, True),
        ],
    )
    history.record(
        at("2026-11-01T14:30"), 300, [CycleUsage("pl_alpha", 700 * MiB, 100 * MiB, False, False)]
    )
    # 30 October is folded into a day bucket, 1 November is still hourly.
    history.roll_up(at("2026-11-02T12:00"), HistoryConfig(hourly_keep_s=86400))
    return history


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "bwenforcer.yaml"
    path.write_text(f"state_file: {tmp_path}/lib/state.json\nslices_file: null\n")
    history_file = load_config(str(path)).history_file
    assert history_file == f"{tmp_path}/lib/state.json.history"
    save_history(fixed_history(), history_file)
    return path


def run(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(cfg), "report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


GOLDEN_DAY = """\
SLICE     DAY (UTC)   DEFAULT  EXEMPT  PEAK HOUR  CAPPED DEFAULT  CAPPED EXEMPT
pl_alpha  2026-10-30  1.5GiB   200MiB  1.7GiB     10m             -
pl_alpha  2026-11-01  1000MiB  100MiB  800MiB     -               -
pl_alpha  total       2.48GiB  300MiB  1.7GiB     10m             -
pl_beta   2026-11-01  10KiB    5MiB    5.01MiB    -               5m
pl_beta   total       10KiB    5MiB    5.01MiB    -               5m
"""

GOLDEN_MONTH = """\
SLICE     MONTH (UTC)  DEFAULT  EXEMPT  PEAK HOUR  CAPPED DEFAULT  CAPPED EXEMPT
pl_alpha  2026-10      1.5GiB   200MiB  1.7GiB     10m             -
pl_alpha  2026-11      1000MiB  100MiB  800MiB     -               -
pl_alpha  total        2.48GiB  300MiB  1.7GiB     10m             -
pl_beta   2026-11      10KiB    5MiB    5.01MiB    -               5m
pl_beta   total        10KiB    5MiB    5.01MiB    -               5m
"""

GOLDEN_HOUR_ALPHA = """\
SLICE     HOUR (UTC)        DEFAULT  EXEMPT  PEAK HOUR  CAPPED DEFAULT  CAPPED EXEMPT
pl_alpha  2026-11-01 09:00  300MiB   0B      300MiB     -               -
pl_alpha  2026-11-01 14:00  700MiB   100MiB  800MiB     -               -
pl_alpha  total             1000MiB  100MiB  800MiB     -               -
"""


def test_tables_golden(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, cfg) == (0, GOLDEN_DAY, "")  # --by day is the default
    assert run(capsys, cfg, "--by", "day") == (0, GOLDEN_DAY, "")
    assert run(capsys, cfg, "--by", "month") == (0, GOLDEN_MONTH, "")
    assert run(capsys, cfg, "--by", "hour", "--slice", "pl_alpha") == (0, GOLDEN_HOUR_ALPHA, "")


def test_json_has_the_documented_keys(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, cfg, "--by", "month", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert [list(obj) for obj in doc] == [list(JSON_KEYS)] * 3
    assert set(JSON_KEYS) == {
        "slice",
        "bucket_start",
        "by",
        "default_bytes",
        "exempt_bytes",
        "peak_hour_bytes",
        "capped_default_s",
        "capped_exempt_s",
    }
    assert doc[0] == {
        "slice": "pl_alpha",
        "bucket_start": at("2026-10-01T00:00"),
        "by": "month",
        "default_bytes": GiB + GiB // 2,
        "exempt_bytes": 200 * MiB,
        "peak_hour_bytes": GiB + GiB // 2 + 200 * MiB,
        "capped_default_s": 600,
        "capped_exempt_s": 0,
    }
    assert [(o["slice"], o["bucket_start"]) for o in doc[1:]] == [
        ("pl_alpha", at("2026-11-01T00:00")),
        ("pl_beta", at("2026-11-01T00:00")),
    ]


def test_csv_header_and_rows_match_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, cfg, "--by", "hour", "--csv")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert (
        lines[0]
        == "slice,bucket_start,by,default_bytes,exempt_bytes,peak_hour_bytes,capped_default_s,capped_exempt_s"
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    _, as_json, _ = run(capsys, cfg, "--by", "hour", "--json")
    assert rows == [{k: str(v) for k, v in obj.items()} for obj in json.loads(as_json)]
    assert len(rows) == 3


def test_since_and_slice_filter(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, cfg, "--by", "hour", "--since", "2026-11-01T09:30", "--json")
    assert code == 0
    assert [(o["slice"], o["bucket_start"]) for o in json.loads(out)] == [
        ("pl_alpha", at("2026-11-01T09:00")),  # the hour holding --since is shown whole
        ("pl_alpha", at("2026-11-01T14:00")),
        ("pl_beta", at("2026-11-01T09:00")),
    ]
    code, out, _ = run(capsys, cfg, "--since", "2026-10-31", "--slice", "pl_alpha", "--json")
    assert [o["bucket_start"] for o in json.loads(out)] == [at("2026-11-01T00:00")]


@pytest.mark.parametrize(
    ("since", "first_bucket"),
    [
        ("24h", "2026-11-01"),  # now is 2026-11-02 12:00: from 2026-11-01 12:00
        ("1d", "2026-11-01"),
        ("3d", "2026-10-30"),  # from 2026-10-30 12:00: that day's bucket whole
        ("7d", "2026-10-30"),
        ("1h30m", None),
        ("yesterday", "2026-11-01"),  # from 2026-11-01 00:00 UTC
        ("today", None),
    ],
)
def test_since_takes_times_before_now_and_days(
    cfg: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    since: str,
    first_bucket: str | None,
) -> None:
    monkeypatch.setenv(NOW_ENV, str(at("2026-11-02T12:00")))
    code, out, err = run(capsys, cfg, "--since", since, "--json")
    assert code == 0, err
    starts = [o["bucket_start"] for o in json.loads(out)]
    assert (min(starts) if starts else None) == (first_bucket and at(first_bucket + "T00:00"))


@pytest.mark.parametrize("fmt", [(), ("--json",), ("--csv",), ("--by", "month")])
def test_an_unknown_slice_is_an_error(
    cfg: Path, capsys: pytest.CaptureFixture[str], fmt: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, cfg, "--slice", "pl_nobody", *fmt)
    assert (code, out) == (int(ExitCode.USAGE), "")
    assert err.startswith(
        "bwenforcer: report: no history for slice 'pl_nobody' (unknown, or aged out)"
    )
    assert err.count("\n") == 1


def test_empty_results_are_not_errors(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, cfg, "--slice", "pl_beta", "--by", "hour", "--since", "2026-11-01T10:00", "--csv"
    )
    assert (code, out) == (0, ",".join(JSON_KEYS) + "\n")
    assert err.startswith("bwenforcer: report: nothing recorded since 2026-11-01 10:00 UTC in ")


def test_missing_history_file_and_history_file_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bwenforcer.yaml"
    path.write_text(
        f"state_file: {tmp_path}/state.json\nslices_file: null\nhistory:\n  file: {tmp_path}/usage.bin\n"
    )
    code, out, err = run(capsys, path)
    assert (code, out) == (0, "")
    assert err == f"bwenforcer: report: nothing recorded in {tmp_path}/usage.bin\n"
    save_history(fixed_history(), str(tmp_path / "usage.bin"))
    assert run(capsys, path, "--by", "month") == (0, GOLDEN_MONTH, "")


def test_damaged_history_exits_5_and_is_left_in_place(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history_file = Path(load_config(str(cfg)).history_file)
    raw = bytearray(history_file.read_bytes())
    raw[-1] ^= 0xFF
    history_file.write_bytes(bytes(raw))
    code, out, err = run(capsys, cfg)
    assert (code, out) == (5, "")
    assert err == f"bwenforcer: {history_file}: index checksum mismatch\n"
    assert history_file.read_bytes() == bytes(raw)
    assert sorted(p.name for p in history_file.parent.iterdir()) == [history_file.name]


def damage_a_block(history_file: Path, name: str) -> bytes:
    """Flip a byte inside ``name``'s first record; the file's bytes as they were."""
    raw = history_file.read_bytes()
    damaged = bytearray(raw)
    damaged[raw.index(name.encode()) + len(name) + 20] ^= 0xFF
    history_file.write_bytes(bytes(damaged))
    return raw


@pytest.mark.parametrize("fmt", ["--json", "--csv"])
@pytest.mark.parametrize("by", ["hour", "day", "month"])
def test_a_damaged_slice_prints_nothing_of_a_json_or_csv_report(
    cfg: Path, capsys: pytest.CaptureFixture[str], fmt: str, by: str
) -> None:
    """pl_beta is damaged, after pl_alpha's rows: none of them is printed."""
    history_file = Path(load_config(str(cfg)).history_file)
    damage_a_block(history_file, "pl_beta")
    code, out, err = run(capsys, cfg, fmt, "--by", by)
    assert (code, out) == (int(ExitCode.STATE), "")
    assert err == f"bwenforcer: {history_file}: slice pl_beta: checksum mismatch\n"
    code, out, err = run(capsys, cfg, fmt, "--slice", "pl_alpha", "--by", by)  # read alone
    assert code == 0 and "pl_alpha" in out and err == ""


def test_a_json_report_cut_short_is_still_a_json_list(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damage found only as the rows are printed (the check before them left out
    here) closes the list: stdout is JSON still, with the rows printed so far."""
    from bwenforcer.history.decode import HistoryFile

    history_file = Path(load_config(str(cfg)).history_file)
    damage_a_block(history_file, "pl_beta")
    monkeypatch.setattr(HistoryFile, "check", lambda self: None)
    code, out, err = run(capsys, cfg, "--json")
    assert code == int(ExitCode.STATE)
    assert {row["slice"] for row in json.loads(out)} == {"pl_alpha"}
    assert err == f"bwenforcer: {history_file}: slice pl_beta: checksum mismatch\n"


@pytest.mark.parametrize(
    "argv",
    [
        ("--since", "last tuesday"),
        ("--since", "2026-13-01"),
        ("--since", "3600"),
        ("--by", "week"),
        ("--json", "--csv"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    cfg: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    try:
        code = main(["--config", str(cfg), "report", *argv])
    except SystemExit as exit_info:  # argparse's own checks
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("bwenforcer: ") and err.count("\n") == 1

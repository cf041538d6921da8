"""Golden comparison: the streamed reports print what the reports printed when they
read the whole history (digests taken before they streamed, on the history of
tests/history/golden.py: a version 1 file and its journal), before and after the
fold that rewrites the file in the current format.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.inputs.config import load_config
from tests.history import golden

GOLDEN = Path(__file__).with_name("golden_reports.json")
SINCE = ("", "2026-04-20", "2026-05-02T13:30")
SLICES = ("", "pl_alpha", "pl_départ", "x" * 255, "pl_unknown")


def arguments() -> list[tuple[str, ...]]:
    runs = []
    for by, fmt, name, since in itertools.product(
        ("hour", "day", "month"), ("", "--json", "--csv"), SLICES, SINCE
    ):
        argv = ["--by", by]
        argv += [fmt] if fmt else []
        argv += ["--slice", name] if name else []
        argv += ["--since", since] if since else []
        runs.append(tuple(argv))
    return runs


def digests(cfg: Path) -> dict[str, str]:
    """Each report's exit code, stdout and stderr (the path taken out), digested."""
    history_file = load_config(str(cfg)).history_file
    out = {}
    for argv in arguments():
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["--config", str(cfg), "report", *argv])
        text = f"{code}\n{stdout.getvalue()}\n--\n{stderr.getvalue()}"
        text = text.replace(history_file, "<HISTORY>")
        out[" ".join(argv)] = hashlib.sha256(text.encode()).hexdigest()
    return out


def make_config(tmp_path: Path) -> Path:
    path = tmp_path / "bwenforcer.yaml"
    path.write_text(f"state_file: {tmp_path}/state.json\nslices_file: null\n")
    golden.write(Path(load_config(str(path)).history_file))
    return path


if __name__ == "__main__":  # regenerate: python -m tests.history.test_report_golden DIR
    import sys

    work = Path(sys.argv[1])
    os.makedirs(work, exist_ok=True)
    GOLDEN.write_text(json.dumps(digests(make_config(work)), indent=1, sort_keys=True) + "\n")


def test_reports_equal_the_golden_ones(tmp_path: Path) -> None:
    assert digests(make_config(tmp_path)) == json.loads(GOLDEN.read_text())


def test_reports_equal_the_golden_ones_after_the_fold_to_the_current_version(
    tmp_path: Path,
) -> None:
    from bwenforcer.core.settings import HistoryConfig
    from bwenforcer.history.format import FORMAT_VERSION
    from bwenforcer.history.recorder import HistoryRecorder

    cfg = make_config(tmp_path)
    history_file = load_config(str(cfg)).history_file
    last_s = golden.END_S + golden.JOURNAL_CYCLES * 600  # same UTC day: nothing rolls up
    HistoryRecorder(history_file, HistoryConfig()).fold(last_s)
    data = Path(history_file).read_bytes()
    assert int.from_bytes(data[4:6], "little") == FORMAT_VERSION == 5
    assert Path(f"{history_file}.journal").stat().st_size == 8  # folded in: empty
    assert digests(cfg) == json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("version", [2, 4, 5])
def test_reports_equal_the_golden_ones_from_an_indexed_file_and_its_journal(
    tmp_path: Path, version: int
) -> None:
    """An indexed file (version 2; 4 with its header's checksum; 5 with the bytes
    received too) is read with the journal's hours added (some of them hours the file
    has too); by month a version 5 file is read from its months and month sums alone.
    """
    from bwenforcer.history.fold import save_history

    cfg = make_config(tmp_path)
    history_file = load_config(str(cfg)).history_file
    history, _ = golden.build()
    if version == 5:
        save_history(history, history_file)  # the same generation: the journal extends it
    else:
        Path(history_file).write_bytes(golden.encode_v2(history, version))
    assert int.from_bytes(Path(history_file).read_bytes()[4:6], "little") == version
    assert digests(cfg) == json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("version", [2, 4])
def test_reports_equal_the_golden_ones_from_an_older_file_and_after_its_fold(
    tmp_path: Path, version: int
) -> None:
    """A version 2 or 4 file (before received bytes) is read with its records widened
    (0 received), and the next fold writes it as version 5: the same reports."""
    from bwenforcer.core.settings import HistoryConfig
    from bwenforcer.history.recorder import HistoryRecorder

    cfg = make_config(tmp_path)
    history_file = load_config(str(cfg)).history_file
    history, _ = golden.build()
    Path(history_file).write_bytes(golden.encode_v2(history, version))
    assert digests(cfg) == json.loads(GOLDEN.read_text())
    HistoryRecorder(history_file, HistoryConfig()).fold(golden.END_S + golden.JOURNAL_CYCLES * 600)
    assert int.from_bytes(Path(history_file).read_bytes()[4:6], "little") == 5
    assert digests(cfg) == json.loads(GOLDEN.read_text())

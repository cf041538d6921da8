"""Golden comparison: the streamed reports print what the reports printed when they
read the whole history (digests taken before they streamed, on the history of
tests/history/golden.py: a version 1 file and its journal), before and after the
fold that rewrites the file in the current format.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    assert int.from_bytes(data[4:6], "little") == FORMAT_VERSION == 6
    assert Path(f"{history_file}.journal").stat().st_size == 8  # folded in: empty
    assert digests(cfg) == json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("version", [2, 4, 5, 6])
def test_reports_equal_the_golden_ones_from_an_indexed_file_and_its_journal(
    tmp_path: Path, version: int
) -> None:
    """An indexed file (version 2; 4 with its header's checksum; 5 with the bytes
    received too; 6 with narrow blocks, as nothing was received) is read with the
    journal's hours added (some of them hours the file has too); by month a version 6
    file is read from its months and month sums alone.
    """
    from bwenforcer.history.fold import save_history

    cfg = make_config(tmp_path)
    history_file = load_config(str(cfg)).history_file
    history, _ = golden.build()
    if version == 6:
        save_history(history, history_file)  # the same generation: the journal extends it
        assert not any(wide_blocks(history_file).values())
    else:
        Path(history_file).write_bytes(golden.encode_v2(history, version))
    assert int.from_bytes(Path(history_file).read_bytes()[4:6], "little") == version
    assert digests(cfg) == json.loads(GOLDEN.read_text())


def wide_blocks(history_file: str) -> dict[str, bool]:
    """Whether each slice's block in a current version file is wide."""
    from bwenforcer.history.decode import HistoryFile
    from bwenforcer.history.format import is_wide

    path = Path(history_file)
    with HistoryFile(path.open("rb"), history_file, path.stat().st_size) as hf:
        assert hf.packed and hf.index is not None
        return {entry[0]: is_wide(hf.raw_block(*entry)) for entry in hf.index}


@pytest.mark.parametrize("version", [2, 4, 5])
def test_reports_equal_the_golden_ones_from_an_older_file_and_after_its_fold(
    tmp_path: Path, version: int
) -> None:
    """A version 2 or 4 file (before received bytes) is read with its records widened
    (0 received), a version 5 file (every record with received bytes, all 0 here) as
    it is, and the next fold writes it as version 6, every block narrow: the same
    reports, in a smaller file for version 5."""
    from bwenforcer.core.settings import HistoryConfig
    from bwenforcer.history.recorder import HistoryRecorder

    cfg = make_config(tmp_path)
    history_file = load_config(str(cfg)).history_file
    history, _ = golden.build()
    Path(history_file).write_bytes(golden.encode_v2(history, version))
    before = Path(history_file).stat().st_size
    assert digests(cfg) == json.loads(GOLDEN.read_text())
    HistoryRecorder(history_file, HistoryConfig()).fold(golden.END_S + golden.JOURNAL_CYCLES * 600)
    assert int.from_bytes(Path(history_file).read_bytes()[4:6], "little") == 6
    assert not any(wide_blocks(history_file).values())
    if version == 5:
        assert Path(history_file).stat().st_size < 0.7 * before
    assert digests(cfg) == json.loads(GOLDEN.read_text())


RECEIVED = "pl_alpha"  # the slice the journal adds received bytes to


def config_at(directory: Path, history_file: str, inbound: bool) -> Path:
    """A config in ``directory`` of ``history_file``, inbound accounting on or off."""
    cfg = directory / f"inbound-{inbound}.yaml"
    text = f"state_file: {directory}/state.json\nslices_file: null\nhistory: {{file: {history_file}}}\n"
    if inbound:
        text += "classifier: {mode: uid}\ninbound: {enabled: true}\n"
    cfg.write_text(text)
    return cfg


def inbound_digests(directory: Path, history_file: str) -> dict[str, str]:
    """:func:`digests` of the reports of ``history_file`` with inbound accounting on
    (their received columns and keys), and the JSON day report of the slice that
    received.
    """
    cfg = config_at(directory, history_file, inbound=True)
    out = digests(cfg)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--config", str(cfg), "report", "--json", "--slice", RECEIVED]) == 0
    out["received"] = stdout.getvalue()
    return out


def test_received_bytes_in_the_journal_make_a_narrow_block_wide(tmp_path: Path) -> None:
    """The journal adds received bytes to a slice whose block is narrow: the reports
    (inbound on) show them read from the file and journal, from the folded file (the
    block then wide, the others narrow still) and from a version 1 file and the same
    journal (read through the model, not the blocks' bytes): the same reports. With
    inbound off, the golden ones: they do not show received bytes.
    """
    from bwenforcer.core.settings import HistoryConfig
    from bwenforcer.history.fold import save_history
    from bwenforcer.history.journal import encode_cycle, journal_header
    from bwenforcer.history.recorder import HistoryRecorder

    history, cycles = golden.build()
    records, received = [], 0
    for now_s, cap_s, usage in cycles:
        for i, u in enumerate(usage):
            if u.slice_name == RECEIVED:
                usage[i] = dataclasses.replace(u, in_default_bytes=7_000_000, in_exempt_bytes=3)
                received += 7_000_000
        records.append(encode_cycle(now_s, cap_s, usage, cycle=None))
    assert received
    journal = journal_header(golden.GENERATION) + b"".join(records)
    reports = {}
    for version in (1, 6):
        work = tmp_path / f"v{version}"
        work.mkdir()
        history_file = str(work / "history.bin")
        if version == 1:
            Path(history_file).write_bytes(golden.encode_v1(history))
        else:
            save_history(history, history_file)
            assert not any(wide_blocks(history_file).values())
        Path(f"{history_file}.journal").write_bytes(journal)
        reports[version] = inbound_digests(work, history_file)
        if version == 6:
            plain = config_at(work, history_file, inbound=False)
            assert digests(plain) == json.loads(GOLDEN.read_text())
            HistoryRecorder(history_file, HistoryConfig()).fold(
                golden.END_S + golden.JOURNAL_CYCLES * 600
            )
            wide = wide_blocks(history_file)
            assert wide == {name: name == RECEIVED for name in wide}
            reports["folded"] = inbound_digests(work, history_file)
            assert digests(plain) == json.loads(GOLDEN.read_text())
    assert f'"in_default_bytes": {received}' in reports[1]["received"]
    assert reports[1] == reports[6] == reports["folded"]

"""``bwenforcer state check | show | import-legacy`` through the real command line."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.commands.state import operator_json
from bwenforcer.core.model import ClassState
from bwenforcer.inputs.config import load_config
from bwenforcer.store.codec import state_to_json
from bwenforcer.store.state import StateStore
from tests.store.test_legacy import VERSION, Py2Instance, bwmon_slice, legacy_data, py2_dumps
from tests.store.test_statestore import NOW_S, lock_holder, make_state, saved


def write_config(tmp: Path, lock_timeout: str = "5s") -> Path:
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"state_file: {tmp}/lib/state.json\nslices_file: null\nlock_timeout: {lock_timeout}\n"
    )
    return cfg


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    # Never let a command fall back to the host's /var/lib/bwenforcer.
    if load_config(str(path)).state_file != f"{tmp_path}/lib/state.json":
        pytest.skip("the YAML config loader has not landed: state_file is not read yet")
    return path


def state_path(cfg: Path) -> Path:
    return cfg.parent / "lib" / "state.json"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_first_run_and_good_file(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--config", str(cfg), "state", "check") == (
        0,
        f"ok: 0 slices, 0 ledger entries, saved never ({state_path(cfg)})\n",
        "",
    )
    StateStore(str(state_path(cfg))).save(make_state(2), NOW_S)
    code, out, _ = run(capsys, "--config", str(cfg), "state", "check")
    assert code == 0
    assert out == (
        f"ok: 2 slices, 1 ledger entries, saved 2025-11-22 08:26:40 UTC ({state_path(cfg)})\n"
    )


def test_check_reports_problems_with_exit_5(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore(str(state_path(cfg)))
    store.save(make_state(2), NOW_S)
    store.save(make_state(2), NOW_S)
    # the state's object is the file's first line, the ledger's lines follow
    head, _, lines = state_path(cfg).read_text().partition("\n")
    data = json.loads(head)
    data["slices"]["1"]["classes"]["exempt"]["share"] = -1
    state_path(cfg).write_text(f"{json.dumps(data)}\n{lines}")
    Path(store.backup).write_text("")
    code, out, _ = run(capsys, "--config", str(cfg), "state", "check")
    assert code == 5
    assert out.splitlines() == [
        f"{store.path}: slices.1.classes.exempt.share: expected a non-negative integer",
        f"{store.backup}: not valid JSON: Expecting value: line 1 column 1 (char 0)",
    ]


def test_show_text_and_json(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = make_state(2, used_bytes=3 * 2**20)
    StateStore(str(state_path(cfg))).save(state, NOW_S)
    code, out, _ = run(capsys, "--config", str(cfg), "state", "show")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"state file {state_path(cfg)}: saved 2025-11-22 08:26:40 UTC"
    assert "2 slices" in lines and "1 ledger entries" in lines
    assert any(
        line.startswith("  pl_s1 xid 1: period 2025-11-22 07:26:40 UTC + 1d") for line in lines
    )
    assert any("default used 3MiB of 4.77MiB" in line and "capped" in line for line in lines)
    assert any(line.startswith("  pl_dead0 xid 3000: died") for line in lines)
    code, out, _ = run(capsys, "--config", str(cfg), "state", "show", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc == operator_json(state_to_json(saved(state), NOW_S, view=True))
    assert (
        doc["slices"]["1"]["classes"]["default"]["ceil"] == saved(state).slices[1].default.ceil_bps
    )


def test_show_names_a_rolling_window_and_prints_its_ring(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = make_state(1, used_bytes=7)
    st_ = state.slices[1]

    def windowed(cs: ClassState) -> ClassState:
        policy = dataclasses.replace(cs.policy, window_s=7 * 86400)
        return dataclasses.replace(cs, policy=policy, buckets=(*[0] * 24, cs.used_bytes))

    st_ = dataclasses.replace(st_, default=windowed(st_.default), exempt=windowed(st_.exempt))
    state = dataclasses.replace(state, slices={1: st_})
    StateStore(str(state_path(cfg))).save(state, NOW_S)
    code, out, _ = run(capsys, "--config", str(cfg), "state", "show")
    assert code == 0
    assert any(
        line.startswith("  pl_s1 xid 1: rolling window 7d, bucket") for line in out.splitlines()
    )
    code, out, _ = run(capsys, "--config", str(cfg), "state", "show", "--json")
    default = json.loads(out)["slices"]["1"]["classes"]["default"]
    assert (default["window_s"], default["buckets"]) == (7 * 86400, [*[0] * 24, 7])


def test_show_reads_the_backup_of_a_corrupt_file_and_moves_nothing(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StateStore(str(state_path(cfg)))
    store.save(make_state(1), NOW_S)
    store.save(make_state(2), NOW_S)
    state_path(cfg).write_text("{")
    code, out, _ = run(capsys, "--config", str(cfg), "state", "show")
    assert code == 0
    assert f"(file unusable: read from its backup {store.backup})" in out
    assert "1 slices" in out.splitlines()
    assert state_path(cfg).read_text() == "{"


def test_show_with_nothing_usable_is_a_one_line_error(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_path(cfg).parent.mkdir()
    state_path(cfg).write_text("nope")
    code, out, err = run(capsys, "--config", str(cfg), "state", "show")
    assert (code, out) == (5, "")
    assert err.startswith(f"bwenforcer: {state_path(cfg)}: not valid JSON")
    assert err.count("\n") == 1


def legacy_file(tmp_path: Path) -> Path:
    now = int(time.time())
    live = {
        12: Py2Instance(bwmon_slice(12, "pl_alpha", now - 3600, 1000, 2000)),
        13: Py2Instance(bwmon_slice(13, "pl_beta", now - 60, 5, 6)),
    }
    deaddb = {"pl_gone": Py2Instance(bwmon_slice(7, "pl_gone", now - 600, 1, 2))}
    path = tmp_path / "bwmon.dat"
    path.write_bytes(py2_dumps((VERSION, live, deaddb), 0))
    return path


def test_import_legacy_writes_the_state_file(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = legacy_file(tmp_path)
    code, out, _ = run(capsys, "--config", str(cfg), "state", "import-legacy", str(legacy))
    assert code == 0
    assert out == (f"imported 2 slices and 1 ledger entries from {legacy} into {state_path(cfg)}\n")
    state = StateStore(str(state_path(cfg))).load().state
    assert sorted(state.slices) == [12, 13] and list(state.ledger) == ["pl_gone"]
    assert state.slices[12].default.last_counter_bytes == 1000
    assert run(capsys, "--config", str(cfg), "state", "check")[0] == 0


def test_import_legacy_refuses_to_replace_a_state_without_force(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StateStore(str(state_path(cfg)))
    store.save(make_state(3), NOW_S)
    before = state_path(cfg).read_bytes()
    legacy = legacy_file(tmp_path)
    code, out, err = run(capsys, "--config", str(cfg), "state", "import-legacy", str(legacy))
    assert (code, out) == (2, "")
    assert err == (
        f"bwenforcer: {state_path(cfg)} already holds 3 slices and 1 ledger entries;"
        " use --force to replace it\n"
    )
    assert state_path(cfg).read_bytes() == before
    argv = ["--config", str(cfg), "state", "import-legacy", str(legacy), "--force"]
    assert run(capsys, *argv)[0] == 0
    assert sorted(store.load().state.slices) == [12, 13]
    assert Path(store.backup).read_bytes() == before  # the replaced state is the backup


def test_import_legacy_replaces_an_empty_state_without_force(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    StateStore(str(state_path(cfg))).save(make_state(0, dead=0), NOW_S)
    legacy = legacy_file(tmp_path)
    assert run(capsys, "--config", str(cfg), "state", "import-legacy", str(legacy))[0] == 0


def test_import_legacy_of_an_unsafe_pickle_writes_nothing(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "bwmon.dat"
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    code, out, err = run(capsys, "--config", str(cfg), "state", "import-legacy", str(evil))
    assert (code, out) == (5, "")
    assert err == f"bwenforcer: {evil}: refusing to load os.system: not a bwmon.Slice\n"
    assert not marker.exists() and not state_path(cfg).exists()


def test_import_legacy_waits_for_the_cycle_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, lock_timeout="1s")
    if load_config(str(cfg)).state_file != str(state_path(cfg)):
        pytest.skip("the YAML config loader has not landed: state_file is not read yet")
    holder = lock_holder(state_path(cfg))
    try:
        legacy = tmp_path / "bwmon.dat"
        legacy.write_bytes(py2_dumps(legacy_data("slice"), 2))
        code, _, err = run(capsys, "--config", str(cfg), "state", "import-legacy", str(legacy))
        assert code == 3
        assert err == (
            f"bwenforcer: another bwenforcer cycle holds {state_path(cfg)}.lock"
            f" (pid {holder.pid}) after 1 s\n"
        )
        assert not state_path(cfg).exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def test_bad_legacy_slice_is_logged_by_name(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    live = {
        5: Py2Instance(bwmon_slice(5, "pl_ok", now, 1, 2)),
        6: Py2Instance(bwmon_slice(6, "pl_bad", now, 1, 2, MaxRate=-1)),
    }
    legacy = tmp_path / "bwmon.dat"
    legacy.write_bytes(py2_dumps((VERSION, live, {}), 2))
    code, out, _ = run(capsys, "--config", str(cfg), "state", "import-legacy", str(legacy))
    assert code == 0 and out.startswith("imported 1 slices")
    assert "skipping slice pl_bad (6): MaxRate = -1" in caplog.text


def test_check_of_a_5000_digit_number_is_one_line(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StateStore(str(state_path(cfg)))
    store.save(make_state(2), NOW_S)
    text = state_path(cfg).read_text()
    assert '"used_bytes":' in text
    state_path(cfg).write_text(
        text.replace('"used_bytes":', '"used_bytes":' + "9" * 5000 + ',"x":', 1)
    )
    code, out, err = run(capsys, "--config", str(cfg), "state", "check")
    assert code == 5, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith(f"{store.path}: a number too long to read"), out

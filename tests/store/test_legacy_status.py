"""A legacy pickle built from scratch imports to a state whose
`status --json` shows the same slices, period starts and ledger entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.inputs.config import load_config
from bwenforcer.store.legacy import import_legacy
from bwenforcer.store.state import StateStore
from tests.store.test_legacy import NOW_S, legacy_data, py2_dumps


def test_imported_pickle_shows_in_status_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickle_path = tmp_path / "bwmon.dat"
    pickle_path.write_bytes(py2_dumps(legacy_data("dict"), 2))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device: nosuch0\nstate_file: {tmp_path}/state.json\nslices_file: null\n")
    config = load_config(str(cfg))
    StateStore(config.state_file).save(import_legacy(str(pickle_path), config, NOW_S), NOW_S)

    code = main(["--config", str(cfg), "status", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    slices = {s["name"]: s for s in out["slices"]}
    assert set(slices) == {"pl_alpha", "pl_beta"}
    assert (slices["pl_alpha"]["xid"], slices["pl_alpha"]["period_start"]) == (12, NOW_S - 3601)
    assert (slices["pl_beta"]["xid"], slices["pl_beta"]["period_start"]) == (345, NOW_S - 60)
    assert slices["pl_alpha"]["classes"]["default"]["notified"] is True
    assert [(e["name"], e["xid"]) for e in out["ledger"]] == [("pl_gone", 77)]


def test_pickle_calling_os_system_is_refused_by_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.dat"
    # protocol 0: GLOBAL os.system, REDUCE with one string argument
    evil.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_file: {tmp_path}/state.json\nslices_file: null\n")
    code = main(["--config", str(cfg), "state", "import-legacy", str(evil)])
    err = capsys.readouterr().err
    assert code != 0
    assert "os.system" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()

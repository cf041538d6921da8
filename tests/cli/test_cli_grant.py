"""``bwenforcer grant`` and the audit of ``reset``, through the real command line."""

from __future__ import annotations

import json
import logging

import pytest

from bwenforcer.core.model import AuditEntry
from bwenforcer.core.settings import Config
from bwenforcer.store.state import StateStore
from tests.cli.test_cli_inspect import cfg, run  # noqa: F401 (a fixture)
from tests.views.test_inspection import NOW


def test_grant_is_audited_in_state_log_show_and_json(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    store = StateStore(cfg.state_file)
    before = store.read_unlocked().state
    argv = ("grant", "pl_heavy", "1MiB", "--reason", "conference demo", "--json")
    code, out, err = run(capsys, "--config", "cfg.yaml", *argv)
    assert code == 0, err
    assert "kernel unavailable" in err and "apply at the next cycle" in err
    heavy = before.slices[10]
    entry = AuditEntry(
        "grant", "pl_heavy", "default", 2**20, "alice", NOW, heavy.period_end_s, "conference demo"
    )
    after = store.read_unlocked().state
    assert after.audit == (entry,) and after.grants == before.grants + 1
    assert json.loads(out) == {
        "audit": [
            {
                "what": "grant",
                "slice": "pl_heavy",
                "traffic_class": "default",
                "size_bytes": 2**20,
                "user": "alice",
                "at": NOW,
                "until": heavy.period_end_s,
                "reason": "conference demo",
            }
        ]
    }
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "grant by operator alice: slice pl_heavy xid 10: default +1MiB until"
        " 2027-01-15 11:12Z (reason: 'conference demo')"
    ]
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy")
    assert code == 0, err
    assert (
        "grant default: +1MiB by alice 2027-01-15 08:00Z, until 2027-01-15 11:12Z (in force):"
        " conference demo" in out
    )
    code, out, err = run(capsys, "--config", "cfg.yaml", "show", "pl_heavy", "--json")
    assert json.loads(out)["audit"][0]["user"] == "alice"


def test_grant_until_a_duration_or_a_time_and_reset_with_a_reason(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUDO_USER", "bob")
    store = StateStore(cfg.state_file)
    code, _, err = run(
        capsys, "--config", "cfg.yaml", "grant", "10", "2GB", "--class", "exempt", "--until", "3d"
    )
    assert code == 0, err
    code, _, err = run(
        capsys, "--config", "cfg.yaml", "grant", "pl_light", "1GB", "--until", "2030-01-01"
    )
    assert code == 0, err
    code, _, err = run(capsys, "--config", "cfg.yaml", "reset", "pl_heavy", "--reason", "bug")
    assert code == 0, err
    audit = store.read_unlocked().state.audit
    assert [(a.what, a.slice, a.traffic_class, a.until_s) for a in audit] == [
        ("grant", "pl_heavy", "exempt", NOW + 3 * 86400),
        ("grant", "pl_light", "default", 1_893_456_000),
        ("reset", "pl_heavy", "default", NOW),
        ("reset", "pl_heavy", "exempt", NOW),
    ]
    assert audit[2].size_bytes == 190 * 1024 and audit[2].reason == "bug"
    assert all(a.user == "bob" for a in audit)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("grant", "pl_heavy", "lots"), "SIZE: 'lots' is not a size"),
        (("grant", "pl_heavy", "0"), "SIZE: must be above 0"),
        (("grant", "pl_heavy", "1GB", "--until", "soonish"), "--until: 'soonish' is neither"),
        (("grant", "pl_heavy", "1GB", "--until", "2020-01-01"), "is not in the future"),
        (
            ("grant", "pl_heavy", "1GB", "--until", "9999-12-31T23:59:59-12:00"),
            "is more than 100 years away",
        ),
        (("grant", "pl_heavy", "1GB", "--until", "200y"), "--until: '200y' is neither"),
        (("grant", "pl_heavy", "2000000TiB"), "SIZE: '2000000TiB' is above the maximum"),
        (("grant", "pl_heavy", "1GB", "--reason", "a\nb"), "--reason: only printable"),
        (("grant", "pl_heavy", "1GB", "--reason", "x" * 201), "--reason: longer than 200"),
        (("grant", "pl_nobody", "1GB"), "slice 'pl_nobody': not in the state"),
        (("grant", "pl_old", "1GB"), "slice 'pl_old': only in the ledger"),
    ],
)
def test_a_bad_grant_is_one_line_and_changes_nothing(
    cfg: Config,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    problem: str,
) -> None:
    store = StateStore(cfg.state_file)
    before = store.read_unlocked().state
    code, out, err = run(capsys, "--config", "cfg.yaml", *argv)
    assert code == 2 and out == "" and problem in err, err
    assert store.read_unlocked().state == before

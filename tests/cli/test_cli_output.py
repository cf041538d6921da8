"""What operators read: status within 100 columns, one unit style in show, tc get's
slice names and the one-line summaries of the verbs that change something."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest

from bwenforcer.cli import main
from bwenforcer.commands.inspect import NOW_ENV
from bwenforcer.core.model import (
    ClassOp,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    OpFailure,
    State,
)
from bwenforcer.core.units import human_size
from bwenforcer.store.state import StateStore
from bwenforcer.views.show import SliceReport, show_text
from bwenforcer.views.status import STATUS_WIDTH, status_table
from tests.cli.test_cli_inspect import make_config, use_config, write_config
from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns
from tests.views.test_inspection import (
    ANSI,
    BWMAX_BPS,
    CAP_BPS,
    NOW,
    GiB,
    cls,
    exempt,
    fixed_snapshot,
    fixed_state,
    kclass,
    live,
)

TiB = 1024 * GiB
LONG = "princeton_" + "a_very_long_slice_name_" * 3  # 79 characters: a site prefix + 64


def big_state() -> State:
    """Long names, TiB budgets, huge counters, >999 % used, a past period end."""
    huge = live(
        LONG,
        4094,
        cls(999 * TiB, 16 * TiB, ceil=10_500_000_000, capped=True, notified=True,
            max_rate=10**12, counter=10**18),
        exempt(1023 * TiB, ceil=999_999_999_999, capped=True, notified=True),
        end=NOW - 86_000,
    )  # fmt: skip
    other = live(LONG + "_2", 4093, cls(1023 * 1024**2, 1023 * 1024**2), end=NOW + 30 * 86_400)
    return State(
        slices={4094: huge, 4093: other},
        ledger={LONG: LedgerEntry(huge, NOW - 5)},
        saved_s=NOW - 10**7,
    )


@pytest.mark.parametrize("with_kernel", [False, True])
def test_status_fits_100_columns_with_long_names_and_big_numbers(with_kernel: bool) -> None:
    snapshot = None
    if with_kernel:
        snapshot = KernelSnapshot(
            CAP_BPS,
            BWMAX_BPS,
            {4094: KernelSlice(4094, kclass(10**18, 10_500_000_000), kclass(0, 10**12))},
        )
    table = status_table(big_state(), snapshot, NOW, colour=True)
    lines = ANSI.sub("", table).splitlines()
    assert len(lines) == 1 + 1 + 4 + 1, table
    assert all(len(line) <= STATUS_WIDTH for line in lines), [len(x) for x in lines]
    rows = lines[2:6]
    names = [row.split()[0] for row in rows]
    assert names[0] == f"{LONG[:4]}…{LONG[-3:]}"  # cut in the middle, the cut marked
    assert names[2] != names[0]  # slices named alike stay apart
    assert ">999%" in rows[0] and "yes" in rows[0]
    assert all(len(r.split()) >= 10 for r in rows)  # every column still there


def test_status_keeps_names_whole_when_they_fit() -> None:
    table = status_table(fixed_state(), None, NOW)
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["pl_heavy", "pl_heavy"]
    name = "princeton_codeen_cdn"
    state = State(slices={7: live(name, 7, cls(0, GiB))}, ledger={}, saved_s=NOW)
    assert status_table(state, None, NOW).splitlines()[2].split()[0] == name


def test_show_prints_bytes_in_the_units_status_uses() -> None:
    huge = big_state().slices[4094]
    report = SliceReport(
        huge.name,
        huge.xid,
        live=huge,
        kernel=KernelSlice(4094, kclass(10**18 + 10**15, 10**9), kclass(5_000_000, BWMAX_BPS)),
        kernel_available=True,
    )
    text = show_text(report, NOW)
    assert not re.search(r"\d{4,} ?B\b", text), text  # no raw byte counts: 888PiB style only
    baseline = next(line for line in text.splitlines() if line.startswith("baseline"))
    assert human_size(10**18) in baseline
    kernel = next(line for line in text.splitlines() if line.startswith("kernel"))
    assert "4.77MiB, rate" in kernel


# --- on a real kernel: tc names and summaries ------------------------------------------

SLICES = """slices:
  - {name: pl_alice, xid: 1201, rspec: {}}
"""


def node_config(tmp: Path) -> Path:
    """A config for the namespace's v0 with a slices file naming xid 1201."""
    cfg = write_config(tmp, device="v0")
    (tmp / "slices.yaml").write_text(SLICES)
    return cfg


@pytest.mark.kernel
def test_tc_verbs_print_one_summary_line_and_none_with_q(ns: Netns, tmp_path: Path) -> None:
    cfg = str(node_config(tmp_path))
    init = bwenforcer_in(ns, "tc", "init", "--config", cfg)
    assert init.returncode == 0, init.stderr
    assert init.stdout == "tc init: HTB tree on v0: cap 10Mbit/s, line rate 100Mbit/s\n"
    on = bwenforcer_in(ns, "tc", "on", "1201", "--max", "2mbit", "--config", cfg)
    assert on.returncode == 0, on.stderr
    assert on.stdout.count("\n") == 1 and on.stdout.startswith("tc on: xid 1201 on v0: ")
    assert "default created: rate 8kbit/s, ceil 2Mbit/s, share 1" in on.stdout
    again = bwenforcer_in(ns, "tc", "on", "1201", "--max", "2mbit", "--config", cfg)
    assert again.stdout == "tc on: xid 1201 on v0: unchanged\n"
    quiet = bwenforcer_in(ns, "tc", "on", "1201", "--max", "3mbit", "-q", "--config", cfg)
    assert (quiet.returncode, quiet.stdout) == (0, "")

    table = bwenforcer_in(ns, "tc", "get", "--config", cfg)
    row = next(line for line in table.stdout.splitlines() if line.startswith("1201"))
    assert row.split()[:2] == ["1201", "pl_alice"]  # the slices file's name, not "1201"
    rows = json.loads(bwenforcer_in(ns, "tc", "get", "--json", "--config", cfg).stdout)
    assert [r["slice"] for r in rows if r["xid"] == 1201] == ["pl_alice"]

    sync = bwenforcer_in(ns, "sync", "--config", cfg)
    assert sync.returncode == 0, sync.stderr
    assert re.fullmatch(
        r"sync ok in \d+\.\d\ds: 1 slices, 0 class\(es\) capped, \d+ kernel change\(s\),"
        r" 0 mail\(s\) sent, 0 failure\(s\)\n",
        sync.stdout,
    ), sync.stdout
    assert bwenforcer_in(ns, "--quiet", "sync", "--config", cfg).stdout == ""
    assert bwenforcer_in(ns, "sync", "-q", "--config", cfg).stdout == ""

    off = bwenforcer_in(ns, "tc", "off", "1201", "--config", cfg)
    assert off.stdout == "tc off: xid 1201 on v0: classes removed\n"
    stop = bwenforcer_in(ns, "tc", "stop", "--config", cfg)
    assert (stop.returncode, stop.stdout) == (0, "tc stop: HTB tree removed from v0\n")
    assert bwenforcer_in(ns, "tc", "init", "-q", "--config", cfg).stdout == ""


@pytest.mark.kernel
def test_tc_verbs_take_slice_names_before_unix_accounts(ns: Netns, tmp_path: Path) -> None:
    cfg = str(node_config(tmp_path))
    # "daemon" is also a Unix account (uid 1): the slices file's name comes first
    (tmp_path / "slices.yaml").write_text(SLICES + "  - {name: daemon, xid: 1202, rspec: {}}\n")
    assert bwenforcer_in(ns, "tc", "init", "--config", cfg).returncode == 0
    for name, xid in (("pl_alice", 1201), ("daemon", 1202)):
        on = bwenforcer_in(ns, "tc", "on", name, "--max", "2mbit", "--config", cfg)
        assert on.returncode == 0, on.stderr
        assert on.stdout.startswith(f"tc on: xid {xid} on v0: "), on.stdout
        rows = json.loads(bwenforcer_in(ns, "tc", "get", name, "--json", "--config", cfg).stdout)
        assert [(r["xid"], r["slice"], r["max_rate"]) for r in rows] == [(xid, name, 2_000_000)]
        off = bwenforcer_in(ns, "tc", "off", name, "--config", cfg)
        assert off.stdout == f"tc off: xid {xid} on v0: classes removed\n", off.stderr
    (tmp_path / "slices.yaml").write_text("slices: []\n")  # only the state knows it now
    StateStore(str(tmp_path / "state.json")).save(
        State(slices={1201: live("pl_alice", 1201, cls(0, 10**9))}), NOW
    )
    on = bwenforcer_in(ns, "tc", "on", "pl_alice", "--config", cfg)
    assert on.returncode == 0 and on.stdout.startswith("tc on: xid 1201 on v0: "), on.stderr


@pytest.mark.kernel
def test_a_failed_slice_is_reported_once_on_stderr(ns: Netns, tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    (tmp_path / "slices.yaml").write_text(
        SLICES + "  - {name: pl_bad, xid: 1202, rspec: {net_max_rate: lots}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    done = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert done.returncode == 1, done.stderr
    hits = [line for line in done.stderr.splitlines() if "pl_bad" in line]
    assert len(hits) == 1, done.stderr
    assert "1 failure(s)" in done.stdout


@pytest.mark.kernel
def test_a_failed_spool_mail_is_counted_in_the_summary_line(ns: Netns, tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o770)
    spool.chmod(0o770)  # others could plant files: every mail into it fails
    with cfg.open("a") as f:
        f.write(
            f"mail: {{transport: spool, operators: [ops@example.org], spool: {{dir: {spool}}}}}\n"
        )
    (tmp_path / "slices.yaml").write_text(
        "slices:\n  - {name: pl_alice, xid: 1201, rspec: {net_thresh_kbyte: 0}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    done = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert done.returncode == 1, done.stderr
    assert "notification failed" in done.stderr
    assert ", 0 mail(s) sent, 1 failure(s)\n" in done.stdout, done.stdout


class RefusingKernel:
    """A node whose kernel refuses every change (no real kernel refuses one on demand)."""

    def __init__(self, dev: str) -> None:
        self.dev = dev

    def __enter__(self) -> RefusingKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def dump(self) -> KernelSnapshot:
        return fixed_snapshot()

    def apply(self, ops: list[ClassOp]) -> list[OpFailure]:
        return [OpFailure(op, errno.EPERM, f"class of xid {op.xid}: refused") for op in ops]


def test_a_refused_reset_is_reported_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path)
    use_config(monkeypatch, config)
    monkeypatch.setattr("bwenforcer.kernel.htb.HtbBackend", RefusingKernel)
    monkeypatch.setenv(NOW_ENV, str(NOW))
    StateStore(config.state_file).save(fixed_state(), NOW - 125)
    assert main(["reset", "pl_heavy", "--config", "cfg.yaml"]) == 1
    err = capsys.readouterr().err
    logged = [r.getMessage() for r in caplog.records if "ceil not lifted" in r.getMessage()]
    assert len(logged) == 1 and "refused" in logged[0]  # the log line is the report
    assert "ceil not lifted" not in err  # not printed a second time


def test_status_piped_has_whole_names_and_filters_by_capped_and_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(NOW_ENV, str(NOW))
    config = make_config(tmp_path)
    use_config(monkeypatch, config)
    state = big_state()
    StateStore(config.state_file).save(state, NOW - 10)

    def status(*argv: str) -> str:
        assert main(["status", *argv]) == 0
        return capsys.readouterr().out

    piped = status()  # captured stdout is no terminal: what `status | grep` reads
    assert f"\n{LONG} " in piped and f"\n{LONG}_2 " in piped and "…" not in piped
    capped = status("--capped")
    assert LONG in capped and f"{LONG}_2" not in capped  # the second slice is not capped
    only = status("--slice", f"{LONG}_2")
    assert f"{LONG}_2" in only and f"\n{LONG} " not in only
    assert "no live slice matches" in status("--slice", "pl_nobody")
    doc = json.loads(status("--json", "--capped"))
    assert [s["name"] for s in doc["slices"]] == [LONG]
    assert [e["name"] for e in doc["ledger"]] == [LONG]  # capped when it died
    doc = json.loads(status("--json", "--slice", f"{LONG}_2"))
    assert [s["name"] for s in doc["slices"]] == [f"{LONG}_2"] and doc["ledger"] == []

"""`bwenforcer tc …` as an operator runs it, inside a namespace; `tc` as the observer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bwenforcer.commands.tc import GET_KEYS, get_rows, get_table
from bwenforcer.core.model import ClassRates, KernelClass, KernelSlice, KernelSnapshot
from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns


@pytest.mark.kernel
def test_tc_init_on_get_json_off_against_the_kernel(ns: Netns) -> None:
    assert bwenforcer_in(ns, "tc", "init", "--dev", "v0", "--cap", "10mbit").returncode == 0
    on = bwenforcer_in(ns, "tc", "on", "1234", "--dev", "v0", "--max", "2mbit", "--share", "2")
    assert on.returncode == 0, on.stderr
    got = bwenforcer_in(ns, "tc", "get", "--dev", "v0", "--json")
    rows = {r["xid"]: r for r in json.loads(got.stdout)}
    assert rows[1234]["max_rate"] == 2_000_000
    assert set(rows[1234]) == {
        "xid",
        "slice",
        "share",
        "min_rate",
        "max_rate",
        "exempt_min_rate",
        "exempt_max_rate",
        "bytes",
        "exempt_bytes",
    }
    shown = ns.tc("-d", "class", "show", "dev", "v0")
    assert re.search(
        r"class htb 1:14d2 parent 1:100 leaf 14d2: prio 0 quantum 3200 rate 8Kbit ceil 2Mbit", shown
    ), shown
    assert re.search(r"class htb 1:24d2 parent 1:20 ", shown)
    filters = [
        line for line in ns.tc("filter", "show", "dev", "v0").splitlines() if "handle" in line
    ]
    assert len(filters) == 1 and "bpf" in filters[0]
    table = bwenforcer_in(ns, "tc", "get", "1234", "--dev", "v0")
    assert "2Mbit/s" in table.stdout and "1234" in table.stdout
    numeric = bwenforcer_in(ns, "tc", "get", "1234", "--dev", "v0", "--numeric")
    assert "2000000" in numeric.stdout
    absent = bwenforcer_in(ns, "tc", "get", "77", "--dev", "v0")
    assert absent.returncode == 2 and "xid 77) has no classes on dev v0" in absent.stderr
    assert bwenforcer_in(ns, "tc", "off", "1234", "--dev", "v0").returncode == 0
    assert "1:14d2" not in ns.tc("class", "show", "dev", "v0")
    assert bwenforcer_in(ns, "tc", "stop", "--dev", "v0").returncode == 0
    assert "htb" not in ns.tc("qdisc", "show", "dev", "v0")


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["tc", "get", "--dev", "nosuch0"], "device 'nosuch0' missing", 4),
        (["tc", "init", "--dev", "v0", "--cap", "fast"], "'fast' is not a rate", 2),
        (["tc", "on", "70000", "--dev", "v0"], "xid 70000 out of range", 2),
        (["tc", "get", "--dev", "v0"], "no bwenforcer HTB tree on dev v0", 4),
        (["tc", "on", "no_such_account_x", "--dev", "v0"], "'no_such_account_x'", 2),
        (["tc", "on", "5", "--dev", "v0", "--share", "0"], "not a share", 2),
        (["tc", "on", "5", "--dev", "v0", "--share", "1" + "0" * 30], "not a share", 2),
        (["tc", "init", "--dev", "v0", "--cap", "0"], "--cap 0bit is below bwmin 8kbit", 2),
        (["tc", "init", "--dev", "v0", "--bwmax", "1bit"], "--bwmax 1bit is below bwmin", 2),
        (
            ["tc", "init", "--dev", "v0", "--cap", "20mbit", "--bwmax", "10mbit"],
            "--cap 20mbit is above --bwmax 10mbit",
            2,
        ),
        (["tc", "init", "--dev", "v0", "--cap", "1" + "0" * 30], "above the maximum 10tbit", 2),
        (["tc", "on", "5", "--dev", "v0", "--max", "1" + "0" * 30], "above the maximum", 2),
        (["tc", "on", "0", "--dev", "v0"], "xid 0 is the root class; name it 'root'", 2),
        (
            ["tc", "on", "4095", "--dev", "v0"],
            "xid 4095 is the default class; name it 'default'",
            2,
        ),
        (["tc", "off", "0xfff", "--dev", "v0"], "name it 'default'", 2),
        (["tc", "on", "5", "1", "2", "3", "4", "5", "6", "--dev", "v0"], "at most 5", 2),
        (["tc", "on", "5", "2", "--dev", "v0", "--share", "3"], "share given both", 2),
        (["tc", "on", "5", "-", "fast", "--dev", "v0"], "min rate: 'fast' is not a rate", 2),
    ],
)
def test_bad_input_gives_one_clear_line(ns: Netns, args: list[str], needle: str, code: int) -> None:
    proc = bwenforcer_in(ns, *args)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.kernel
@pytest.mark.parametrize(("mode", "bare"), [("uid", False), ("cgroup", False), ("none", True)])
def test_tc_init_puts_the_mark_program_of_the_configs_classifier_mode(
    ns: Netns, tmp_path: Path, mode: str, bare: bool
) -> None:
    from bwenforcer.kernel import wire as w
    from bwenforcer.kernel.htb import HtbBackend

    cfg = tmp_path / "c.yaml"
    tenants = "cgroups: {tenants: [{match: x.slice}]}\n" if mode == "cgroup" else ""
    cfg.write_text(f"device: v0\nclassifier: {{mode: {mode}}}\n{tenants}")
    got = bwenforcer_in(ns, "--config", str(cfg), "tc", "init", "--cap", "10mbit")
    assert got.returncode == 0, got.stderr
    with HtbBackend("v0", netns=ns.name) as k:
        (ours,) = [f for f in k.filters() if f.handle == 1]
    assert ours.ops == w.bpf_ops(w.mark_program(bare))


@pytest.mark.kernel
def test_bwlimit_positional_forms_keep_operators_scripts_working(ns: Netns) -> None:
    assert bwenforcer_in(ns, "tc", "init", "--dev", "v0", "--cap", "10mbit").returncode == 0
    # bwlimit on SLICE share minrate maxrate minexemptrate maxexemptrate, "-" = unchanged
    on = bwenforcer_in(ns, "tc", "on", "1234", "2", "-", "3mbit", "-", "50mbit", "--dev", "v0")
    assert on.returncode == 0, on.stderr
    shown = bwenforcer_in(ns, "tc", "show", "1234", "--dev", "v0", "--json")
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)
    assert (row["share"], row["max_rate"], row["exempt_max_rate"]) == (2, 3_000_000, 50_000_000)
    assert bwenforcer_in(ns, "tc", "set", "1234", "-", "1mbit", "--dev", "v0").returncode == 0
    (row,) = json.loads(bwenforcer_in(ns, "tc", "get", "1234", "--dev", "v0", "--json").stdout)
    assert (row["share"], row["min_rate"], row["max_rate"]) == (2, 1_000_000, 3_000_000)
    assert bwenforcer_in(ns, "tc", "del", "1234", "--dev", "v0").returncode == 0
    assert "1:14d2" not in ns.tc("class", "show", "dev", "v0")


def test_get_table_human_and_numeric() -> None:
    rows = [
        {
            "xid": 7,
            "slice": "pl_x",
            "share": 1,
            "min_rate": 8000,
            "max_rate": 2_000_000,
            "exempt_min_rate": 8000,
            "exempt_max_rate": None,
            "bytes": 2048,
            "exempt_bytes": 0,
        }
    ]
    human = get_table(rows, numeric=False).splitlines()
    assert human[0].split() == [
        "XID",
        "SLICE",
        "SHARE",
        "MIN_RATE",
        "MAX_RATE",
        "EXEMPT_MIN_RATE",
        "EXEMPT_MAX_RATE",
        "BYTES",
        "EXEMPT_BYTES",
    ]
    assert human[1].split() == [
        "7",
        "pl_x",
        "1",
        "8kbit/s",
        "2Mbit/s",
        "8kbit/s",
        "-",
        "2KiB",
        "0B",
    ]
    assert get_table(rows, numeric=True).splitlines()[1].split()[4] == "2000000"


def test_get_rows_are_the_documented_objects() -> None:
    default = KernelClass(ClassRates(8000, 2_000_000, 2), 4096)
    exempt = KernelClass(ClassRates(16_000, 1_000_000_000, 1), 10)
    snapshot = KernelSnapshot(
        10_000_000,
        1_000_000_000,
        {
            0xFFF: KernelSlice(0xFFF, default, None),
            1234: KernelSlice(1234, default, exempt),
        },
    )
    rows = get_rows(snapshot, None)
    assert [r["xid"] for r in rows] == [1234, 0xFFF]
    assert rows[0] == {
        "xid": 1234,
        "slice": rows[0]["slice"],  # an account name if uid 1234 exists here, else "1234"
        "share": 2,
        "min_rate": 8000,
        "max_rate": 2_000_000,
        "exempt_min_rate": 16_000,
        "exempt_max_rate": 1_000_000_000,
        "bytes": 4096,
        "exempt_bytes": 10,
    }
    assert tuple(rows[1]) == GET_KEYS
    assert rows[1]["slice"] == "default"
    assert (rows[1]["exempt_max_rate"], rows[1]["exempt_bytes"]) == (None, 0)
    assert get_rows(snapshot, 0xFFF) == [rows[1]]
    assert get_rows(snapshot, 7) == []


def test_an_empty_table_still_has_every_column() -> None:
    assert get_table([], numeric=False).split() == [k.upper() for k in GET_KEYS]

"""The state file: JSON schema, migrations, recovery, atomic saves, backup and lock."""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from bwenforcer.core.layout import DEFAULT_XID, TRAFFIC_CLASSES
from bwenforcer.core.model import (
    AuditEntry,
    ClassPolicy,
    ClassState,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.window import RING
from bwenforcer.errors import LockBusy, StateCorrupt, StateError, StateTooNew
from bwenforcer.store.codec import (
    StateEncoder,
    _slice_fast,
    _slice_from,
    state_from_json,
    state_to_json,
)
from bwenforcer.store.ledgercodec import LedgerEncoder, _entry_fast, _entry_from, _policy_from
from bwenforcer.store.schema import (
    AUDIT_ENTRY,
    CLASS,
    ECLASS_MIN,
    ENTRY_CLASS,
    LEDGER,
    LEDGER_ENTRY,
    MIGRATIONS,
    POLICY,
    SCHEMA_VERSION,
    SLICE,
    TOP,
    WRITER,
    Field,
    _v3_to_v4,
)
from bwenforcer.store.state import StateStore, check

NOW_S = 1_763_800_000
REPO = Path(__file__).resolve().parents[2]


def policy(limit_bytes: int = 5_000_000) -> ClassPolicy:
    return ClassPolicy(limit_bytes, limit_bytes * 8 // 10, 8_000, 10_000_000, 1)


def slice_state(xid: int, name: str | None = None, used_bytes: int = 0) -> SliceState:
    return SliceState(
        name=name or f"pl_s{xid}",
        xid=xid,
        period_start_s=NOW_S - 3600,
        period_end_s=NOW_S + 82_800,
        default=ClassState(policy(), used_bytes, 10 * used_bytes, 2_000_000, True, False),
        exempt=ClassState(policy(16_000_000), 7, 77),
    )


def make_state(n: int, used_bytes: int = 0, dead: int = 1) -> State:
    slices = {xid: slice_state(xid, used_bytes=used_bytes) for xid in range(1, n + 1)}
    ledger = {
        f"pl_dead{i}": LedgerEntry(slice_state(3000 + i, f"pl_dead{i}", 99), NOW_S - 60)
        for i in range(dead)
    }
    return State(slices, ledger)


def saved(state: State, now_s: int = NOW_S) -> State:
    return dataclasses.replace(state, saved_s=now_s)


_V7_KEYS = ("notice_bp", "lift", "notices")
_V8_KEYS = ("carried_bytes", "rollover_bytes")


def before_v7(view: dict[str, Any]) -> dict[str, Any]:
    """A state's view form (``state show --json``) without schema 7's and 10's keys, as
    schema 6 and before wrote a class (changed in place, and returned).
    """
    slices = [*view["slices"].values(), *(e["slice"] for e in view["ledger"].values())]
    for sl in slices:
        for cls in sl["classes"].values():
            for key in (*_V7_KEYS, *_V8_KEYS):
                del cls[key]
    return view


_V9_KEYS = ("in_used_bytes", "in_last_counter_bytes", "in_limit_bps", "direction")


def before_v9(view: dict[str, Any]) -> dict[str, Any]:
    """A state's view form without schema 8's keys (inbound usage and the budget's
    direction), as schema 7 and before wrote a class (changed in place, and returned).
    """
    slices = [*view["slices"].values(), *(e["slice"] for e in view["ledger"].values())]
    for sl in slices:
        for cls in sl["classes"].values():
            for key in _V9_KEYS:
                del cls[key]
    return view


def before_v6(view: dict[str, Any]) -> dict[str, Any]:
    """A state's view form as schema 5 and before wrote it: without the keys of the
    rolling windows (6), the notices (7) and inbound accounting (8).
    """
    return before_v9(before_v7(before_windows(view)))


def without_notices(state: State) -> State:
    """``state`` with no early notices asked for or told and no rollover (what schema 6
    knew).
    """

    def plain(cs: ClassState) -> ClassState:
        policy = dataclasses.replace(cs.policy, notices="", rollover_bytes=0)
        return dataclasses.replace(cs, policy=policy, notice_bp=0, lift="", carried_bytes=0)

    def slice_(st: SliceState) -> SliceState:
        return dataclasses.replace(st, default=plain(st.default), exempt=plain(st.exempt))

    return dataclasses.replace(
        state,
        slices={x: slice_(st) for x, st in state.slices.items()},
        ledger={n: dataclasses.replace(e, slice=slice_(e.slice)) for n, e in state.ledger.items()},
    )


def read_json(path: Path | str) -> Any:
    """A state file as its dict form (state_to_json): the ledger's lines after the object
    put back in it as the list of its entries' lines.
    """
    return file_json(Path(path).read_bytes())


def ledger_rows(data: dict[str, Any]) -> dict[str, list[Any]]:
    """The dict form's ledger lines by name, each ``[expires_at, name, ENTRY]``."""
    return {row[1]: row for row in map(json.loads, data["ledger"]["entries"])}


def put_rows(data: dict[str, Any], rows: dict[str, list[Any]]) -> None:
    """Write ``rows`` (as :func:`ledger_rows`) back as the dict form's ledger lines."""
    data["ledger"]["entries"] = [json.dumps(r, separators=(",", ":")) for r in rows.values()]


def v10_class(c: list[Any]) -> list[Any]:
    """An ECLASS as schema 10 (and 9) wrote it: every value, the policy index last."""
    full = [*c, *(json.loads(f.default) for f in ENTRY_CLASS[len(c) :])]
    return [*full[1:], full[0]]


def as_v10(data: dict[str, Any]) -> dict[str, Any]:
    """The dict form with its ledger's lines as schema 10 wrote them (``data`` changed in
    place; its version is the caller's to set).
    """
    rows = ledger_rows(data)
    for row in rows.values():
        row[2][4:] = [v10_class(c) for c in row[2][4:]]
    put_rows(data, rows)
    return data


def as_v6(data: dict[str, Any]) -> dict[str, Any]:
    """The dict form with its ledger as schema 6 to 9 wrote it, ``{"<name>": ENTRY}`` in
    the object, each ECLASS as schema 10 wrote it (``data`` changed in place; its version
    is the caller's to set).
    """
    rows = ledger_rows(as_v10(data))
    data["ledger"]["entries"] = {name: row[2] for name, row in rows.items()}
    return data


def file_text(data: dict[str, Any]) -> bytes:
    """The state file of a dict form (state_to_json): the object, then the ledger's lines."""
    lines = data["ledger"]["entries"]
    head = {**data, "ledger": {**data["ledger"], "entries": len(lines)}}
    return "\n".join([json.dumps(head, separators=(",", ":")), *lines]).encode()


def file_json(text: bytes) -> Any:
    head, _, tail = text.partition(b"\n")
    data = json.loads(head)
    if isinstance(data.get("ledger"), dict) and isinstance(data["ledger"].get("entries"), int):
        data["ledger"]["entries"] = tail.decode().splitlines()
    return data


# --- JSON round trip and validation ----------------------------------------------------

names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=20)
counts = st.integers(min_value=0, max_value=2**64)


TIERS = st.sampled_from(["", "75%:50mbit,100%:2mbit", "87.5%:1kbit"])
TAPERS = st.sampled_from(["", "75%-100%:2mbit", "0%-1000%:8bit"])
NOTICES = st.sampled_from(["", "50%,80%,100%", "lifted", "12.5%,lifted"])


WINDOWS = st.sampled_from([0, 0, 3600, 30 * 86_400])


@st.composite
def class_states(draw: st.DrawFn, window_s: int = 0) -> ClassState:
    """A class; under a rolling window, with a ring summing to its usage."""
    ring = tuple(draw(st.lists(counts, min_size=RING, max_size=RING))) if window_s else ()
    return ClassState(
        ClassPolicy(
            *(draw(counts) for _ in range(5)),
            tiers=draw(TIERS),
            taper=draw(TAPERS),
            pacing=draw(st.booleans()),
            window_s=window_s,
            notices=draw(NOTICES),
            direction=draw(st.sampled_from(["out", "in", "both"])),
        ),
        sum(ring) if window_s else draw(counts),
        draw(counts),
        draw(counts),
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.integers(0, 100_000)),
        draw(st.sampled_from(["", "due", "sent"])),
        ring,
        draw(counts),
        draw(counts),
        draw(counts),
    )


def without_inbound(state: State) -> State:
    """``state`` as a file before schema 8 would hold it: nothing received, budgets out."""

    def cls(cs: ClassState) -> ClassState:
        policy = dataclasses.replace(cs.policy, direction="out")
        return dataclasses.replace(
            cs, policy=policy, in_used_bytes=0, in_last_counter_bytes=0, in_limit_bps=0
        )

    def sl(st: SliceState) -> SliceState:
        return dataclasses.replace(st, default=cls(st.default), exempt=cls(st.exempt))

    return dataclasses.replace(
        state,
        slices={x: sl(st) for x, st in state.slices.items()},
        ledger={n: dataclasses.replace(e, slice=sl(e.slice)) for n, e in state.ledger.items()},
    )


@st.composite
def slice_states(draw: st.DrawFn, xid: int | None = None, name: str | None = None) -> SliceState:
    start = draw(st.integers(min_value=0, max_value=2**40))
    window_s = draw(WINDOWS)  # one for both classes
    return SliceState(
        name if name is not None else draw(names),
        xid if xid is not None else draw(st.integers(min_value=0, max_value=DEFAULT_XID)),
        start,
        start + draw(st.integers(min_value=0, max_value=10**8)),
        draw(class_states(window_s)),
        draw(class_states(window_s)),
    )


@st.composite
def audit_entries(draw: st.DrawFn) -> AuditEntry:
    at_s = draw(counts)
    return AuditEntry(
        draw(st.sampled_from(["grant", "reset"])),
        draw(names),
        draw(st.sampled_from(TRAFFIC_CLASSES)),
        draw(counts),
        draw(st.text(max_size=10)),
        at_s,
        at_s + draw(counts),
        draw(st.text(max_size=30)),
    )


@st.composite
def states(draw: st.DrawFn) -> State:
    xids = draw(st.sets(st.integers(min_value=0, max_value=DEFAULT_XID), max_size=8))
    dead = draw(st.sets(names, max_size=5))
    return State(
        {xid: draw(slice_states(xid=xid)) for xid in xids},
        {name: LedgerEntry(draw(slice_states(name=name)), draw(counts)) for name in dead},
        draw(st.none() | counts),
        draw(counts),
        draw(st.text(max_size=40)),
        draw(counts),
        draw(counts),
        draw(st.dictionaries(st.integers(min_value=0, max_value=DEFAULT_XID), counts, max_size=3)),
        draw(counts),
        tuple(draw(st.lists(audit_entries(), max_size=4))),
        draw(counts),
    )


@given(states(), st.integers(min_value=0, max_value=2**40))
def test_json_round_trip_keeps_every_field(state: State, now_s: int) -> None:
    text = json.dumps(state_to_json(state, now_s))
    assert state_from_json(json.loads(text), "state.json") == saved(state, now_s)


def test_json_layout_is_the_documented_one() -> None:
    data = state_to_json(make_state(1), NOW_S)
    assert data["schema_version"] == SCHEMA_VERSION == 11
    assert (data["boot_id"], data["boottime_s"], data["clock_ref_at"]) == ("", 0, 0)
    assert data["saved_at"] == NOW_S and data["writer"] == WRITER
    assert set(data["slices"]) == {"1"}
    sl = data["slices"]["1"]
    assert sl["name"] == "pl_s1" and sl["xid"] == 1
    assert (sl["period_start"], sl["period_end"]) == (NOW_S - 3600, NOW_S + 82_800)
    assert sl["classes"]["default"] == {
        "used_bytes": 0,
        "last_counter_bytes": 0,
        "ceil_bps": 2_000_000,
        "capped": True,
        "notified": False,
        "buckets": [],
        "notice_bp": 0,
        "lift": "",
        "carried_bytes": 0,
        "in_used_bytes": 0,
        "in_last_counter_bytes": 0,
        "in_limit_bps": 0,
        "limit_bytes": 5_000_000,
        "threshold_bytes": 4_000_000,
        "min_rate_bps": 8_000,
        "max_rate_bps": 10_000_000,
        "share": 1,
        "tiers": "",
        "taper": "",
        "pacing": True,
        "window_s": 0,
        "notices": "",
        "rollover_bytes": 0,
        "direction": "out",
    }
    assert (data["grants"], data["audit"]) == (0, [])
    assert data["ledger"] == {
        "policies": [
            [5_000_000, 4_000_000, 8_000, 10_000_000, 1, "", "", True, 0, "", 0, "out"],
            [16_000_000, 12_800_000, 8_000, 10_000_000, 1, "", "", True, 0, "", 0, "out"],
        ],
        # each entry a line after the state's object: [expires_at, name, ENTRY]
        "entries": [
            f'[{NOW_S + 82_800},"pl_dead0",[{NOW_S - 60},3000,{NOW_S - 3600},{NOW_S + 82_800},'
            "[0,99,990,2000000,true,false],[1,7,77,0,false,false]]]"
        ],
    }


def _set(data: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()
_CLS = "slices.1.classes.default"

BAD_FILES = [
    (f"{_CLS}.used_bytes", -1, f"{_CLS}.used_bytes: expected a non-negative integer"),
    (f"{_CLS}.used_bytes", True, f"{_CLS}.used_bytes: expected a non-negative integer"),
    (f"{_CLS}.used_bytes", 1.5, f"{_CLS}.used_bytes: expected a non-negative integer"),
    (f"{_CLS}.used_bytes", "12", f"{_CLS}.used_bytes: expected a non-negative integer"),
    (f"{_CLS}.capped", 1, f"{_CLS}.capped: expected true or false"),
    (f"{_CLS}.share", _DELETE, f"{_CLS}: missing key 'share'"),
    (f"{_CLS}.bytes_used", 5, f"{_CLS}: unknown key 'bytes_used'"),
    ("slices.1.classes.exempt", [], "slices.1.classes.exempt: expected an object"),
    ("slices.1.classes.exempt", _DELETE, "slices.1.classes: missing key 'exempt'"),
    ("slices.1.name", "", "slices.1.name: expected a non-empty string"),
    ("slices.1.xid", 2, "slices.1: key does not match xid 2"),
    ("slices.1.xid", 0x1000, "slices.1.xid: 4096 out of range 0..4095"),
    ("slices.1.period_end", NOW_S - 7200, "slices.1.period_end: before period_start"),
    ("slices", [], "slices: expected an object"),
    ("ledger.entries", {}, "ledger.entries: expected the count of the lines after it"),
    ("ledger.entries", [3], "ledger.entries: expected a list of ASCII lines"),
    ("ledger.policies", {}, "ledger.policies: expected a list"),
    (
        "ledger.entries",
        ['[1,"pl_dead0",{}]'],
        "ledger.entries.pl_dead0: expected a list of 6 values",
    ),
    ("ledger.entries", ['[1,"pl_dead0"'], "ledger.entries[0]: not a JSON line"),
    ("ledger.entries", ['[1,"pl_dead0"]'], "ledger.entries[0]: expected [expires_at, name, ENTRY]"),
    ("ledger.extra", 1, "ledger: unknown key 'extra'"),
    ("writer", 3, "writer: expected a string"),
    ("saved_at", _DELETE, "missing key 'saved_at'"),
    ("extra", {}, "unknown key 'extra'"),
    ("schema_version", "1", "schema_version: expected an integer"),
    ("schema_version", -1, "schema_version: unknown version -1"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_FILES)
def test_strict_validation_names_file_and_json_path(path: str, value: object, message: str) -> None:
    data = state_to_json(make_state(2), NOW_S)
    _set(data, path, value)
    with pytest.raises(StateCorrupt) as info:
        state_from_json(data, "state.json")
    assert str(info.value).startswith("state.json: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_documented_example_message() -> None:
    data = state_to_json(State({1234: slice_state(1234)}), NOW_S)
    data["slices"]["1234"]["classes"]["default"]["used_bytes"] = -5
    with pytest.raises(StateCorrupt) as info:
        state_from_json(data, "state.json")
    assert str(info.value) == (
        "state.json: slices.1234.classes.default.used_bytes: expected a non-negative integer"
    )


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_top_level_must_be_an_object(data: object) -> None:
    with pytest.raises(StateCorrupt, match=r"^state.json: expected a JSON object$"):
        state_from_json(data, "state.json")


@given(slice_states())
def test_fast_and_strict_decoders_build_the_same_slice(sl: SliceState) -> None:
    raw = state_to_json(State({sl.xid: sl}), NOW_S)["slices"][str(sl.xid)]
    assert _slice_fast(raw, {}) == _slice_from(raw, "f", "s") == sl


# the problems inside one slice (the others are found around the slices)
SLICE_PROBLEMS = [
    (path, value) for path, value, message in BAD_FILES if path.startswith("slices.1.")
    and "key does not match" not in message
]  # fmt: skip


@pytest.mark.parametrize(("path", "value"), SLICE_PROBLEMS)
def test_the_fast_decoder_gives_up_wherever_the_strict_one_finds_a_problem(
    path: str, value: object
) -> None:
    data = state_to_json(make_state(2), NOW_S)
    _set(data, path, value)
    assert _slice_fast(data["slices"]["1"], {}) is None
    with pytest.raises(StateCorrupt):
        _slice_from(data["slices"]["1"], "f", "slices.1")


def test_top_level_problems_name_the_key_without_a_leading_dot() -> None:
    data = state_to_json(make_state(1), NOW_S)
    data["saved_at"] = -1
    with pytest.raises(StateCorrupt) as info:
        state_from_json(data, "state.json")
    assert str(info.value) == "state.json: saved_at: expected a non-negative integer"


# --- the field table --------------------------------------------------------------------


def _attrs(fields: tuple[Field, ...]) -> set[str]:
    return {f.attr for f in fields if f.attr}


def _names(cls: type) -> set[str]:
    # a field left out of comparisons is a cache of the others (State.ledger_index), not saved
    return {f.name for f in dataclasses.fields(cls) if f.compare}


def test_every_field_of_the_saved_dataclasses_is_in_the_state_table() -> None:
    assert _names(State) == _attrs(TOP)
    assert _names(LedgerEntry) == {a.split(".")[0] for a in _attrs(LEDGER_ENTRY)}
    assert _names(SliceState) - {"name"} == {
        a.removeprefix("slice.") for a in _attrs(LEDGER_ENTRY) if a.startswith("slice.")
    }  # the name is the entry's key
    assert _names(SliceState) == _attrs(SLICE) | set(TRAFFIC_CLASSES)  # via "classes"
    assert _names(ClassState) == {a.split(".")[0] for a in _attrs(CLASS)}
    assert _names(ClassPolicy) == {
        a.removeprefix("policy.") for a in _attrs(CLASS) if a.startswith("policy.")
    }
    assert _names(AuditEntry) == _attrs(AUDIT_ENTRY)


_DOC_SCOPES = {
    "": TOP,
    "ledger.": LEDGER,
    "ENTRY ": LEDGER_ENTRY,
    "ECLASS ": ENTRY_CLASS,
    "SLICE ": SLICE,
    "CLASS ": CLASS,
    "AUDIT ": AUDIT_ENTRY,
}
_DOC_TYPES = {
    "uint": "int",
    "version": "int",
    "bool": "bool",
    "str": "string",
    "name": "string",
    "tiers": "string",
    "direction": "string",
    "taper": "string",
    "window": "int",
    "buckets": "list",
    "notices": "string",
    "lift": "string",
    "what": "string",
    "traffic_class": "string",
    "audit": "list",
    "slices": "object",
    "ledger": "object",
    "missing": "object",
    "classes": "object",
    "slice": "SLICE",
    "policies": "list",
    "entries": "int",
    "entry_class": "ECLASS",
}


def test_the_documented_key_table_is_the_state_table() -> None:
    doc = (REPO / "docs" / "state-format.md").read_text()
    section = doc.split("## State file", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ((?:[A-Z]+ )?)`([^`]+)` \| ([^|]*)\| ([^|]*)\|(.*)$", section, re.M)
    documented = set()
    for scope, key, kind, unit, _ in rows:
        prefix, _, name = key.rpartition(".")
        documented.add((scope or (prefix and f"{prefix}."), name, kind.strip(), unit.strip()))
    table = {
        (scope, f.key, _DOC_TYPES[f.kind], f.unit)
        for scope, fields in _DOC_SCOPES.items()
        for f in fields
    }
    assert documented == table
    # the arrays' keys are positions: in the table's order; an ECLASS's defaults are said
    for scope, fields in (("ENTRY ", LEDGER_ENTRY), ("ECLASS ", ENTRY_CLASS)):
        assert [row[1] for row in rows if row[0] == scope] == [f.key for f in fields]
    meanings = {row[1]: row[4] for row in rows if row[0] == "ECLASS "}
    for f in ENTRY_CLASS:
        assert ("default `" in meanings[f.key]) == bool(f.default), f.key
        assert not f.default or f"default `{f.default}`" in meanings[f.key]


# --- migrations -------------------------------------------------------------------------


def before_windows(data: dict[str, Any]) -> dict[str, Any]:
    """A ``state show --json`` document as schemas before 6 wrote it: no class has a
    ``buckets`` or a ``window_s`` (``data`` changed in place).
    """
    slices = [*data["slices"].values(), *(e["slice"] for e in data["ledger"].values())]
    for sl in slices:
        for cls in sl["classes"].values():
            del cls["buckets"], cls["window_s"]
    return data


def v0_document(state: State) -> dict[str, Any]:
    """What a schema-0 (pre-release) file looked like: no writer, older class key names."""
    data = before_v6(state_to_json(state, NOW_S, view=True))
    data["schema_version"] = 0
    del data["writer"], data["grants"], data["audit"]
    slices = [*data["slices"].values(), *(e["slice"] for e in data["ledger"].values())]
    for sl in slices:
        for cls in sl["classes"].values():
            del cls["tiers"], cls["taper"], cls["pacing"]
            cls["bytes_used"] = cls.pop("used_bytes")
            cls["last_counter"] = cls.pop("last_counter_bytes")
    return data


def test_migrations_form_a_chain_to_the_current_version() -> None:
    version, seen = 0, []
    while version < SCHEMA_VERSION:
        seen.append(version)
        version = MIGRATIONS[version]({"schema_version": version})["schema_version"]
        assert version > seen[-1]
    assert version == SCHEMA_VERSION and sorted(MIGRATIONS) == seen


def test_v0_migrates_to_v1() -> None:
    state = make_state(3, used_bytes=1234)
    v0 = v0_document(state)
    before = copy.deepcopy(v0)
    migrated = MIGRATIONS[0](v0)
    assert v0 == before  # the step builds a new object
    assert migrated["schema_version"] == 1 and isinstance(migrated["writer"], str)
    assert state_from_json(v0, "state.json") == saved(state)


def test_v0_file_with_bad_fields_is_reported_after_migration() -> None:
    v0 = v0_document(make_state(1))
    v0["slices"]["1"]["classes"]["default"]["bytes_used"] = "lots"
    with pytest.raises(StateCorrupt, match=r"slices\.1\.classes\.default\.used_bytes"):
        state_from_json(v0, "state.json")


def test_v0_file_on_disk_loads_and_is_saved_as_current(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = make_state(2, used_bytes=10)
    path.write_text(json.dumps(v0_document(state)))
    store = StateStore(str(path))
    loaded = store.load()
    assert loaded.state == saved(state) and loaded.recovered_from is None
    store.save(loaded.state, NOW_S + 300)
    assert read_json(path)["schema_version"] == SCHEMA_VERSION


def test_newer_schema_is_refused() -> None:
    data = state_to_json(make_state(1), NOW_S)
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(StateTooNew, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        state_from_json(data, "state.json")


# --- load, recovery ---------------------------------------------------------------------


def test_missing_file_is_a_first_run(tmp_path: Path) -> None:
    loaded = StateStore(str(tmp_path / "none" / "state.json")).load()
    assert loaded.state == State() and loaded.recovered_from is None
    assert loaded.moved_aside is None


def test_missing_file_with_a_backup_uses_the_backup(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    store.save(make_state(1), NOW_S)
    store.save(make_state(2), NOW_S + 1)
    path.unlink()
    loaded = store.load()
    assert loaded.state == saved(make_state(1))
    assert loaded.recovered_from == store.backup


def _two_generations(tmp_path: Path) -> tuple[StateStore, State]:
    clock = iter(range(NOW_S, NOW_S + 10**6)).__next__
    store = StateStore(str(tmp_path / "state.json"), clock=lambda: float(clock()))
    older = make_state(3, used_bytes=111)
    store.save(older, NOW_S)
    store.save(make_state(4, used_bytes=222), NOW_S + 300)
    return store, saved(older)


def test_truncated_file_is_moved_aside_and_the_backup_used(tmp_path: Path) -> None:
    store, older = _two_generations(tmp_path)
    good = Path(store.path).read_bytes()
    offsets = range(0, len(good.rstrip()), 97)
    assert len(offsets) > 20
    for cut in offsets:
        Path(store.path).write_bytes(good[:cut])
        loaded = store.load()
        assert loaded.state == older, cut
        assert loaded.recovered_from == store.backup
        assert loaded.moved_aside is not None and ".corrupt-" in loaded.moved_aside
        assert Path(loaded.moved_aside).read_bytes() == good[:cut]
        assert not Path(store.path).exists()
    asides = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(asides) == len(offsets)  # never overwrote an earlier one


def test_moved_aside_name_is_the_utc_time(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path), clock=lambda: 1_763_800_000.0)
    store.save(make_state(1), NOW_S)
    store.save(make_state(1), NOW_S)
    path.write_text("{")
    assert store.load().moved_aside == f"{path}.corrupt-20251122T082640Z"


def test_too_new_file_is_moved_aside_never_overwritten(tmp_path: Path) -> None:
    store, older = _two_generations(tmp_path)
    newer = state_to_json(make_state(9), NOW_S)
    newer["schema_version"] = SCHEMA_VERSION + 1
    text = json.dumps(newer)
    Path(store.path).write_text(text)
    loaded = store.load()
    assert loaded.state == older and loaded.recovered_from == store.backup
    assert loaded.moved_aside is not None and ".newer-" in loaded.moved_aside
    assert Path(loaded.moved_aside).read_text() == text


def test_too_new_file_without_backup_is_refused_and_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = state_to_json(make_state(1), NOW_S)
    data["schema_version"] = SCHEMA_VERSION + 2
    path.write_text(json.dumps(data))
    store = StateStore(str(path))
    with pytest.raises(StateTooNew, match="no backup"):
        store.load()
    assert read_json(path) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_corrupt_file_and_corrupt_backup_raise_and_move_nothing(tmp_path: Path) -> None:
    store, _ = _two_generations(tmp_path)
    Path(store.path).write_text("garbage")
    Path(store.backup).write_text("{}")
    with pytest.raises(StateError) as info:
        store.load()
    message = str(info.value)
    assert "not valid JSON" in message and "backup unusable too" in message
    assert "\n" not in message
    assert Path(store.path).read_text() == "garbage"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.1"]


def test_read_unlocked_recovers_without_moving_anything(tmp_path: Path) -> None:
    store, older = _two_generations(tmp_path)
    Path(store.path).write_text("[")
    loaded = store.read_unlocked()
    assert loaded.state == older and loaded.recovered_from == store.backup
    assert loaded.moved_aside is None
    assert Path(store.path).read_text() == "["


def test_unreadable_file_is_an_error_not_a_recovery(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()
    with pytest.raises(StateError, match="cannot read"):
        StateStore(str(path)).load()
    assert path.is_dir()


# --- save -------------------------------------------------------------------------------


def test_save_creates_directory_0700_and_file_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "state.json"
    old_umask = os.umask(0)
    try:
        StateStore(str(path)).save(make_state(2), NOW_S)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert StateStore(str(path)).load().state == saved(make_state(2))


def test_save_fixes_the_mode_of_a_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    stale = tmp_path / f"state.json.tmp-{os.getpid()}"
    stale.write_text("old")
    stale.chmod(0o644)
    StateStore(str(path)).save(make_state(1), NOW_S)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not stale.exists()


def test_one_backup_generation_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    generations = [make_state(n, used_bytes=n) for n in (1, 2, 3)]
    for i, state in enumerate(generations):
        store.save(state, NOW_S + i)
    assert state_from_json(read_json(path), "f") == saved(generations[2], NOW_S + 2)
    assert state_from_json(read_json(store.backup), "f") == saved(generations[1], NOW_S + 1)
    assert stat.S_IMODE(Path(store.backup).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.1"]


def test_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        child_alive_tmp = tmp_path / f"state.json.tmp-{child.pid}"
        child_alive_tmp.write_text("busy")
        finished = subprocess.Popen(["true"])
        finished.wait()
        gone = tmp_path / f"state.json.tmp-{finished.pid}"
        gone.write_text("partial")
        gone_link = tmp_path / f"state.json.1.tmp-{finished.pid}"
        gone_link.write_text("partial")
        StateStore(str(tmp_path / "state.json")).save(make_state(1), NOW_S)
        assert not gone.exists() and not gone_link.exists()
        assert child_alive_tmp.exists()
    finally:
        child.kill()
        child.wait()


# A failing disk cannot be produced by the test otherwise: this is where mocks are allowed.
@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_failed_write_leaves_the_previous_state_intact(
    tmp_path: Path, mocker: Any, failing: str
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    store.save(make_state(1), NOW_S)
    store.save(make_state(2), NOW_S + 1)
    before = path.read_bytes(), Path(store.backup).read_bytes()
    real = getattr(os, failing)

    def full_disk(fd: int, *args: Any) -> Any:
        if ".tmp-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *args)

    mocker.patch.object(os, failing, side_effect=full_disk)
    with pytest.raises(StateError, match="cannot save state: No space left on device"):
        store.save(make_state(500), NOW_S + 2)
    mocker.stopall()
    assert (path.read_bytes(), Path(store.backup).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.1"]
    assert store.load().state == saved(make_state(2), NOW_S + 1)


_FULL_DISK_SCRIPT = """
import json, os, subprocess, sys
sys.path.insert(0, {repo!r})
from bwenforcer.errors import StateError
from bwenforcer.store.state import StateStore
from tests.store.test_statestore import make_state, saved
mnt = {mnt!r}
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt], check=True)
store = StateStore(os.path.join(mnt, "state.json"))
store.save(make_state(3), 1)
with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
error = None
try:
    store.save(make_state(400), 2)
except StateError as exc:
    error = str(exc)
print(json.dumps({{"error": error, "intact": store.load().state == saved(make_state(3), 1),
                   "files": sorted(os.listdir(mnt))}}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_real_full_disk_leaves_the_previous_state_intact(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = _FULL_DISK_SCRIPT.format(repo=str(REPO), mnt=str(mnt))
    # A private mount namespace: the tmpfs vanishes with the process, whatever happens.
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["error"] and "No space left on device" in result["error"]
    assert result["intact"] is True
    assert result["files"] == ["filler", "state.json"]


_WRITER_SCRIPT = """
import dataclasses, os, sys, time
sys.path.insert(0, {repo!r})
from bwenforcer.core.ledger import editable
from bwenforcer.store.state import StateStore

real_write = os.write
def slow_disk_write(fd, data):  # short writes, as POSIX allows: widens every window
    time.sleep(0.002)
    return real_write(fd, data[:65536])
os.write = slow_disk_write

store = StateStore({path!r})
states = [StateStore(source).load().state for source in {sources!r}]
# the second with its saved ledger changed as a plan changes it: lines taken out, one added
ledger = editable(states[1].ledger)
for name in list(ledger)[:100]:
    ledger.pop(name)
ledger.put("pl_new", next(iter(states[0].ledger.values())))
states[1] = dataclasses.replace(states[1], ledger=ledger)
i = 0
while True:
    store.save(states[i % 2], i)
    if i == 0:
        print("saving", flush=True)
    i += 1
"""


def test_writer_killed_at_random_points_always_leaves_a_loadable_file(tmp_path: Path) -> None:
    sources = []
    for used in (1, 2):
        source = tmp_path / f"source{used}" / "state.json"
        # ledgers of saved lines (issue 23): the state and its ledger are one file
        StateStore(str(source)).save(make_state(4000, used_bytes=used, dead=1200 - 200 * used), 0)
        sources.append(str(source))
    work = tmp_path / "work"
    path = work / "state.json"
    store = StateStore(str(path))
    store.save(make_state(1), 0)
    rng = random.Random(1234)
    script = _WRITER_SCRIPT.format(repo=str(REPO), path=str(path), sources=sources)
    seen_used = set()
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"saving\n"
        time.sleep(rng.uniform(0, 0.25))  # a random point of the write-fsync-link-rename loop
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert check(str(path)) == []
        loaded = store.load()
        assert loaded.recovered_from is None and loaded.moved_aside is None
        assert len(loaded.state.slices) == 4000
        used = loaded.state.slices[1].default.used_bytes
        seen_used.add(used)
        ledger = loaded.state.ledger  # the ledger of the same save as the slices
        assert len(ledger) == (1000 if used == 1 else 800 - 100 + 1)
        assert ("pl_new" in ledger) == (used == 2) and ledger["pl_dead799"].slice.xid == 3799
    assert seen_used <= {1, 2}
    store.save(make_state(1), 1)  # the next writer cleans up after the killed ones
    assert sorted(p.name for p in work.iterdir()) == ["state.json", "state.json.1"]


def test_state_of_4000_slices_round_trips_through_the_file(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    state = make_state(4000, used_bytes=5, dead=50)
    store.save(state, NOW_S)
    assert StateStore(store.path).load().state == saved(state)


# --- encoding slice by slice, and the copy of what a store wrote ---------------------------

any_names = st.text(min_size=1, max_size=12)  # quotes, backslashes, control and non-ASCII


@st.composite
def states_any_names(draw: st.DrawFn) -> State:
    xids = draw(st.sets(st.integers(min_value=0, max_value=DEFAULT_XID), max_size=6))
    dead = draw(st.sets(any_names, max_size=4))
    return State(
        {xid: draw(slice_states(xid=xid, name=draw(any_names))) for xid in xids},
        {name: LedgerEntry(draw(slice_states(name=name)), draw(counts)) for name in dead},
        None,
        draw(counts),
        grants=draw(counts),
        audit=tuple(draw(st.lists(audit_entries(), max_size=3))),
    )


@given(states_any_names(), states_any_names(), st.integers(min_value=0, max_value=2**40))
def test_encoder_writes_exactly_the_json_of_state_to_json(
    first: State, second: State, now_s: int
) -> None:
    encoder = StateEncoder()

    def reference(state: State) -> bytes:
        return file_text(state_to_json(state, now_s))

    assert encoder.encode(first, now_s) == reference(first)
    assert encoder.encode(first, now_s) == reference(first)  # from the kept slice texts
    # some slices kept, some changed, some new, some gone
    mixed = State(
        {**dict(list(first.slices.items())[::2]), **second.slices},
        second.ledger,
        None,
        second.resets,
    )
    # the encoder's ledger policies are numbered as it met them (an entry's text is
    # kept with its numbers): the same ledger, maybe numbered otherwise
    got, want = file_json(encoder.encode(mixed, now_s)), file_json(reference(mixed))
    assert {**got, "ledger": None} == {**want, "ledger": None}
    assert state_from_json(got, "s").ledger == state_from_json(want, "s").ledger


@given(states_any_names(), st.integers(min_value=0, max_value=2**40))
def test_a_ledger_entry_round_trips_every_field_in_its_compact_form(
    state: State, now_s: int
) -> None:
    text = StateEncoder().encode(state, now_s)
    loaded = state_from_json(file_json(text), "state.json")
    assert loaded.ledger == state.ledger
    for name, entry in loaded.ledger.items():
        assert dataclasses.astuple(entry) == dataclasses.astuple(state.ledger[name])
    # and through schema 4's form (state show --json), migrated
    if not any(e.slice.default.buckets for e in state.ledger.values()):  # schema 4 had none
        v4 = before_v6(state_to_json(state, now_s, view=True))
        v4["schema_version"] = 4
        expected = without_inbound(without_notices(state)).ledger
        assert state_from_json(v4, "state.json").ledger == expected


# the ECLASS fields that may be left out, with their defaults as the model has them
_OPTIONAL = {
    f.attr: tuple(v) if type(v := json.loads(f.default)) is list else v
    for f in ENTRY_CLASS[ECLASS_MIN:]
}


@st.composite
def sparse_slices(draw: st.DrawFn, name: str) -> SliceState:
    """A slice whose classes have each field a ledger entry may leave out either at its
    default or drawn (rings, notice marks, carried and inbound bytes, in any mix).
    """
    sl = draw(slice_states(name=name))

    def sparse(cs: ClassState) -> ClassState:
        reset = {attr: v for attr, v in _OPTIONAL.items() if draw(st.booleans())}
        if cs.policy.window_s:
            reset.pop("buckets", None)  # a ring is required under a window
        return dataclasses.replace(cs, **reset)

    return dataclasses.replace(sl, default=sparse(sl.default), exempt=sparse(sl.exempt))


def _table_eclass(cs: ClassState, at: int) -> list[Any]:
    """An ECLASS array made from ENTRY_CLASS alone: the reference for the hand encoder."""
    values = [at]
    for f in ENTRY_CLASS[1:]:
        v = getattr(cs, f.attr)
        values.append(list(v) if type(v) is tuple else v)
    while len(values) > ECLASS_MIN:
        default = json.loads(ENTRY_CLASS[len(values) - 1].default)
        if type(values[-1]) is not type(default) or values[-1] != default:
            break
        values.pop()
    return values


@settings(max_examples=200)
@given(st.data())
def test_a_ledger_entry_is_its_table_values_without_trailing_defaults(data: st.DataObject) -> None:
    names = data.draw(st.sets(any_names, min_size=1, max_size=4))
    ledger = {n: LedgerEntry(data.draw(sparse_slices(n)), data.draw(counts)) for n in names}
    file = file_json(StateEncoder().encode(State({}, ledger), NOW_S))
    policies = file["ledger"]["policies"]
    table = [_policy_from(p, {}, "s", "p") for p in policies]
    for line in file["ledger"]["entries"]:
        _, name, entry = json.loads(line)
        sl = ledger[name].slice
        for c, cs in zip(entry[4:], (sl.default, sl.exempt), strict=True):
            assert table[c[0]] == cs.policy
            assert c == _table_eclass(cs, c[0])
        # the fast and the strict decoder read the same entry
        fast = _entry_fast(name, entry, table)
        assert fast is not None and fast == _entry_from(name, entry, table, "s", "e")
        assert dataclasses.astuple(fast) == dataclasses.astuple(ledger[name])
    loaded = state_from_json(file, "state.json").ledger
    assert loaded == ledger
    for name, e in loaded.items():
        assert dataclasses.astuple(e) == dataclasses.astuple(ledger[name])


def test_the_ledger_fields_with_a_default_end_eclass() -> None:
    """Only a trailing run of ECLASS fields may be left out, and the first six never."""
    assert ECLASS_MIN == 6 and [f.key for f in ENTRY_CLASS[:2]] == ["policy", "used_bytes"]
    assert all(f.default for f in ENTRY_CLASS[ECLASS_MIN:])
    assert not any(f.default for f in (*ENTRY_CLASS[:ECLASS_MIN], *POLICY, *LEDGER_ENTRY, *TOP))


def test_encoder_re_encodes_a_changed_slice_even_with_the_same_xid() -> None:
    encoder = StateEncoder()
    state = make_state(3)
    encoder.encode(state, NOW_S)
    changed = dataclasses.replace(
        state.slices[2], default=dataclasses.replace(state.slices[2].default, used_bytes=42)
    )
    state = State({**state.slices, 2: changed}, state.ledger)
    data = file_json(encoder.encode(state, NOW_S))
    assert data["slices"]["2"]["classes"]["default"]["used_bytes"] == 42


def test_a_store_keeps_what_it_wrote_and_rereads_a_file_anyone_else_wrote(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    state = make_state(3, used_bytes=5)
    store.save(state, NOW_S)
    again = store.load().state
    assert again == saved(state)
    assert again.slices[1] is state.slices[1]  # its own file: not parsed again
    StateStore(str(path)).save(make_state(2), NOW_S + 60)  # `bwenforcer reset`, say
    assert store.load().state == saved(make_state(2), NOW_S + 60)
    store.save(state, NOW_S + 120)
    text = path.read_text()
    path.write_text(text.replace('"used_bytes":5,', '"used_bytes":66,', 1))  # edited in place
    assert store.load().state.slices[1].default.used_bytes == 66
    store.save(state, NOW_S + 180)
    path.unlink()
    assert store.load().recovered_from == store.backup  # gone: the backup, as ever


# --- check ------------------------------------------------------------------------------


def test_check_accepts_a_good_file_and_a_first_run(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert check(str(path)) == []
    store = StateStore(str(path))
    store.save(make_state(2), NOW_S)
    store.save(make_state(2), NOW_S)
    assert check(str(path)) == []


def test_check_reports_each_problem_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    store.save(make_state(2), NOW_S)
    store.save(make_state(2), NOW_S)
    path.write_text("{")
    Path(store.backup).write_text(f'{{"schema_version": {SCHEMA_VERSION + 1}}}')
    problems = check(str(path))
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: not valid JSON")
    assert problems[1].startswith(f"{store.backup}: schema_version {SCHEMA_VERSION + 1} is newer")
    path.unlink()
    assert check(str(path)) == [
        f"{path}: missing, but its backup {store.backup} exists",
        problems[1],
    ]


def test_check_reports_inconsistent_slices(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = State(
        {1: slice_state(1, "pl_a"), 2: slice_state(2, "pl_a"), 3: slice_state(3, "pl_b")},
        {"pl_b": LedgerEntry(slice_state(9, "pl_b"), NOW_S)},
    )
    StateStore(str(path)).save(state, NOW_S)
    assert check(str(path)) == [
        f"{path}: slice pl_a on xids 1 and 2",
        f"{path}: slice pl_b (xid 3) is live and in the ledger",
    ]


# --- lock -------------------------------------------------------------------------------

_HOLDER_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from bwenforcer.store.state import StateStore
with StateStore({path!r}).lock(5):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def lock_holder(path: Path) -> subprocess.Popen[str]:
    """A process holding the lock of the state file at path until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT.format(repo=str(REPO), path=str(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_second_holder_waits_then_gets_lock_busy_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    store.save(make_state(2), NOW_S)
    holder = lock_holder(path)
    try:
        started = time.monotonic()
        with pytest.raises(LockBusy) as info, store.lock(0.4):
            pytest.fail("lock taken while another process holds it")
        assert time.monotonic() - started >= 0.4
        assert str(info.value) == (
            f"another bwenforcer cycle holds {path}.lock (pid {holder.pid}) after 0.4 s"
        )
        assert info.value.exit_code == 3
        # status commands never block behind a cycle
        assert store.read_unlocked().state == saved(make_state(2))
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    with store.lock(5):
        assert Path(f"{path}.lock").read_text() == f"{os.getpid()}\n"


def test_waiter_gets_the_lock_once_the_holder_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    holder = lock_holder(path)
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    with StateStore(str(path)).lock(30):
        assert holder.stdout.readline() == "released\n"
    holder.wait(timeout=10)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    with pytest.raises(ZeroDivisionError), store.lock(1):
        _ = 1 // 0
    with store.lock(0):
        assert Path(store.lock_path).read_text().strip() == str(os.getpid())


@settings(max_examples=25, deadline=None)
@given(states())
def test_any_saved_state_passes_check_and_loads(tmp_path_factory: Any, state: State) -> None:
    path = tmp_path_factory.mktemp("s") / "state.json"
    StateStore(str(path)).save(state, NOW_S)
    problems = check(str(path))
    names_live = [s.name for s in state.slices.values()]
    consistent = len(set(names_live)) == len(names_live) and not set(names_live) & set(state.ledger)
    assert (problems == []) == consistent
    assert StateStore(str(path)).load().state == saved(state)


def test_migration_from_schema_1_starts_the_reset_count_at_zero() -> None:
    v1 = before_v6(state_to_json(make_state(2), NOW_S, view=True))
    del v1["resets"], v1["grants"], v1["audit"]
    v1["schema_version"] = 1
    for cls in v1["slices"]["1"]["classes"].values():
        del cls["tiers"], cls["taper"], cls["pacing"]
    state = state_from_json(v1, "old.json")
    assert state.resets == 0
    assert state == dataclasses.replace(make_state(2), saved_s=NOW_S)


def test_migration_from_schema_2_knows_no_clock_reference() -> None:
    state = dataclasses.replace(make_state(2), boot_id="b1", boottime_s=50, clock_ref_s=NOW_S)
    v2 = before_v6(state_to_json(state, NOW_S, view=True))
    state = dataclasses.replace(state, missing={1: NOW_S - 60})
    for key in ("boot_id", "boottime_s", "clock_ref_at", "missing"):
        del v2[key]
    v2["schema_version"] = 2
    before = copy.deepcopy(v2)
    migrated = MIGRATIONS[2](v2)
    assert v2 == before and migrated["schema_version"] == 3
    assert state_from_json(v2, "old.json") == dataclasses.replace(make_state(2), saved_s=NOW_S)


def test_migration_to_schema_4_paces_every_class_as_before() -> None:
    """Schema 3 had no tiers and no taper: every class, live or in the ledger, gets none."""
    v3 = before_v6(state_to_json(make_state(2), NOW_S, view=True))
    v3["schema_version"] = next(k for k, f in MIGRATIONS.items() if f is _v3_to_v4)
    del v3["grants"], v3["audit"]
    for sl in [*v3["slices"].values(), *(e["slice"] for e in v3["ledger"].values())]:
        for cls in sl["classes"].values():
            del cls["tiers"], cls["taper"], cls["pacing"]
    migrated = _v3_to_v4(copy.deepcopy(v3))
    assert migrated["schema_version"] == 4
    assert state_from_json(v3, "old.json") == saved(make_state(2))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("tiers", "75%:50mbit,50%:2mbit", "expected tiers such as"),
        ("tiers", 7, "expected tiers such as"),
        ("taper", "100%-75%:2mbit", "expected a taper such as"),
        ("pacing", 0, "expected true or false"),
    ],
)
def test_bad_tiers_or_taper_in_the_state_is_named(key: str, value: object, problem: str) -> None:
    data = state_to_json(make_state(1), NOW_S)
    data["slices"]["1"]["classes"]["default"][key] = value
    with pytest.raises(StateCorrupt, match=rf"{_CLS}\.{key}: {problem}"):
        state_from_json(data, "state.json")


def test_tiers_and_taper_round_trip_through_the_encoder() -> None:
    cls = ClassState(dataclasses.replace(policy(), tiers="75%:50mbit", taper="80%-90%:1mbit"))
    st_ = dataclasses.replace(slice_state(1), default=cls)
    state = State({1: st_})
    text = StateEncoder().encode(state, NOW_S)
    assert state_from_json(file_json(text), "s") == saved(state)


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("audit", {}, "audit: expected a list"),
        ("audit.0.what", "gift", "audit[0].what: expected 'grant' or 'reset'"),
        ("audit.0.traffic_class", "bulk", "audit[0].traffic_class: expected 'default' or"),
        ("audit.0.until", 5, "audit[0].until: before at"),
        ("audit.0.size_bytes", -1, "audit[0].size_bytes: expected a non-negative integer"),
        ("audit.0.extra", 1, "audit[0]: unknown key 'extra'"),
    ],
)
def test_a_bad_audit_entry_is_named(path: str, value: object, problem: str) -> None:
    entry = AuditEntry("grant", "pl_s1", "default", 10**9, "alice", NOW_S, NOW_S + 60, "why")
    data = state_to_json(dataclasses.replace(make_state(1), audit=(entry,)), NOW_S)
    if path == "audit":
        data["audit"] = value
    else:
        _, index, key = path.split(".")
        data["audit"][int(index)][key] = value
    with pytest.raises(StateCorrupt, match=re.escape(problem)):
        state_from_json(data, "state.json")


def test_the_audit_is_bounded() -> None:
    entry = AuditEntry("reset", "pl_s1", "default", 1, "alice", NOW_S, NOW_S)
    data = state_to_json(dataclasses.replace(make_state(1), audit=(entry,) * 1001), NOW_S)
    with pytest.raises(StateCorrupt, match="audit: more than 1000 entries"):
        state_from_json(data, "state.json")


def test_encoder_encodes_a_waiting_ledger_entry_once(mocker: MockerFixture) -> None:
    """A ledger entry waits unchanged (the very object) until it expires or is revived:
    a cycle's save does not encode it again; a changed or new one is encoded."""
    encoder = StateEncoder()
    state = make_state(3)
    entries = {
        f"pl_dead{i}": LedgerEntry(dataclasses.replace(state.slices[1], name=f"pl_dead{i}"), NOW_S)
        for i in range(3)
    }
    state = State(state.slices, entries)
    first = encoder.encode(state, NOW_S)
    spy = mocker.spy(LedgerEncoder, "_entry_text")
    assert encoder.encode(state, NOW_S) == first
    assert spy.call_count == 0
    entries = {**entries, "pl_dead1": LedgerEntry(entries["pl_dead1"].slice, NOW_S + 1)}
    changed = State(state.slices, entries)
    data = file_json(encoder.encode(changed, NOW_S))
    assert spy.call_count == 1 and ledger_rows(data)["pl_dead1"][2][0] == NOW_S + 1


_ENTRY = "ledger.entries.pl_dead0"
BAD_ENTRIES = [
    ((0,), -1, f"{_ENTRY}[0]: expected a non-negative integer"),
    ((1,), 0x1000, f"{_ENTRY}[1]: 4096 out of range 0..4095"),
    ((3,), 0, f"{_ENTRY}[3]: before period_start"),
    ((4,), {}, f"{_ENTRY}[4]: expected a list of 6 to 13 values"),
    ((4,), [0, 1, 2, 3, True], f"{_ENTRY}[4]: expected a list of 6 to 13 values"),
    ((4,), [0, 1, 2, 3, True, False, *[0] * 8], f"{_ENTRY}[4]: expected a list of 6 to 13 values"),
    ((4, 4), 1, f"{_ENTRY}[4][4]: expected true or false"),
    ((5, 1), "7", f"{_ENTRY}[5][1]: expected a non-negative integer"),
    ((5, 6), [1], f"{_ENTRY}[5][6]: expected [] or a list of 25 non-negative integers"),
    ((5, 6), [0] * 25, f"{_ENTRY}[5][6]: expected [] under a period (window_s 0)"),
    ((5, 7), False, f"{_ENTRY}[5][7]: expected a non-negative integer"),
    ((5, 8), "told", f"{_ENTRY}[5][8]: expected '', 'due' or 'sent'"),
    ((5, 8), [], f"{_ENTRY}[5][8]: expected '', 'due' or 'sent'"),  # not hashable
    ((5, 9), -1, f"{_ENTRY}[5][9]: expected a non-negative integer"),
    ((5, 12), 0.5, f"{_ENTRY}[5][12]: expected a non-negative integer"),
    ((5, 0), 9, f"{_ENTRY}[5][0]: policy 9 not in the ledger's 2"),
    ((5, 0), -1, f"{_ENTRY}[5][0]: expected a non-negative integer"),
]


@pytest.mark.parametrize(("at", "value", "message"), BAD_ENTRIES)
def test_a_bad_ledger_entry_is_named_in_one_line(
    at: tuple[int, ...], value: object, message: str
) -> None:
    data = state_to_json(make_state(1), NOW_S)
    rows = ledger_rows(data)
    entry = rows["pl_dead0"][2]
    # every ECLASS value written (its trailing defaults too, as a writer may), to set any
    entry[4:] = [[*c, *(json.loads(f.default) for f in ENTRY_CLASS[len(c) :])] for c in entry[4:]]
    target = entry
    for i in at[:-1]:
        target = target[i]
    target[at[-1]] = value
    put_rows(data, rows)
    with pytest.raises(StateCorrupt) as exc:
        state_from_json(data, "state.json")
    assert str(exc.value) == f"state.json: {message}" and "\n" not in str(exc.value)


def test_a_bad_ledger_policy_is_named_in_one_line() -> None:
    data = state_to_json(make_state(1), NOW_S)
    data["ledger"]["policies"][1][5] = "fast"
    with pytest.raises(StateCorrupt, match=r"ledger\.policies\[1\]\[5\]: expected tiers"):
        state_from_json(data, "state.json")
    rows = ledger_rows(data)
    put_rows(data, {**rows, "": [rows["pl_dead0"][0], "", rows["pl_dead0"][2]]})
    data["ledger"]["policies"][1][5] = ""
    with pytest.raises(StateCorrupt, match=r"ledger\.entries\.: expected a non-empty"):
        state_from_json(data, "state.json")


def test_a_ledger_entry_takes_at_most_200_bytes_at_typical_values() -> None:
    """A month in, a dead slice of 20 characters that sent tens of GB (issue 23)."""
    base = make_state(1).slices[1]
    day = 86_400
    entries = {}
    for i in range(1_000):
        name = f"pl_tenant_{i:06d}_web"
        st = dataclasses.replace(
            base,
            name=name,
            xid=i % 4000,
            period_start_s=1_764_000_000,
            period_end_s=1_764_000_000 + 30 * day,
            default=ClassState(
                policy(250_000_000_000), 123_456_789_012, 987_654_321_098, 2_000_000
            ),
            exempt=ClassState(policy(500_000_000_000), 12_345_678_901, 98_765_432_109),
        )
        entries[name] = LedgerEntry(st, 1_764_000_000 + 12 * day + i)
    empty = len(StateEncoder().encode(State({}, {}), NOW_S))
    full = len(StateEncoder().encode(State({}, entries), NOW_S))
    assert (full - empty) / len(entries) <= 200


def test_a_schema_4_ledger_entry_not_shaped_as_one_is_named_after_migration() -> None:
    v4 = before_v6(state_to_json(make_state(1), NOW_S, view=True))
    v4["schema_version"] = 4
    v4["ledger"]["pl_dead0"]["slice"]["name"] = "pl_other"
    with pytest.raises(StateCorrupt, match=r"ledger\.entries\.pl_dead0: expected a list of 6"):
        state_from_json(v4, "state.json")


def test_the_encoders_ledger_policies_start_over_when_they_pile_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bwenforcer.store import ledgercodec

    monkeypatch.setattr(ledgercodec, "_MAX_LEDGER_POLICIES", 2)
    encoder = StateEncoder()
    state = make_state(1)
    for limit in range(1, 8):  # each cycle, the dead slice's policy changed
        entry = state.ledger["pl_dead0"]
        default = dataclasses.replace(entry.slice.default, policy=policy(limit * 1000))
        st = dataclasses.replace(entry.slice, default=default)
        state = State(state.slices, {"pl_dead0": LedgerEntry(st, entry.died_s)})
        data = file_json(encoder.encode(state, NOW_S))
        assert len(data["ledger"]["policies"]) <= 4
        assert state_from_json(data, "state.json").ledger == state.ledger


# --- rolling windows (schema 6) ------------------------------------------------------------


def windowed_state(window_s: int = 30 * 86_400) -> State:
    """make_state(1) with a rolling window on its live slice and its ledger entry."""
    state = make_state(1)

    def windowed(st_: SliceState) -> SliceState:
        def cls(cs: ClassState, ring: tuple[int, ...]) -> ClassState:
            policy = dataclasses.replace(cs.policy, window_s=window_s)
            return dataclasses.replace(cs, policy=policy, used_bytes=sum(ring), buckets=ring)

        return dataclasses.replace(
            st_,
            default=cls(st_.default, (*[0] * (RING - 2), 5, 7)),
            exempt=cls(st_.exempt, (3, *[0] * (RING - 1))),
        )

    entry = state.ledger["pl_dead0"]
    return State(
        {1: windowed(state.slices[1])},
        {"pl_dead0": LedgerEntry(windowed(entry.slice), entry.died_s)},
    )


def test_a_rolling_window_round_trips_through_the_file_and_its_compact_ledger() -> None:
    state = windowed_state()
    text = StateEncoder().encode(state, NOW_S)
    data = file_json(text)
    assert data["slices"]["1"]["classes"]["default"]["buckets"] == [*[0] * (RING - 2), 5, 7]
    assert data["slices"]["1"]["classes"]["default"]["window_s"] == 30 * 86_400
    entry = ledger_rows(data)["pl_dead0"][2]
    # the ring is the last value not at its default
    assert entry[4][6:] == [[*[0] * (RING - 2), 5, 7]] and data["ledger"]["policies"][0][-4] > 0
    assert text == file_text(state_to_json(state, NOW_S))
    assert state_from_json(data, "state.json") == saved(state)


_WIN = "slices.1.classes"
BAD_WINDOWS = [
    (f"{_WIN}.default.buckets", [0] * 24, f"{_WIN}.default.buckets: expected [] or a list of 25"),
    (f"{_WIN}.default.buckets", [], f"{_WIN}.default.buckets: expected 25 buckets under a window"),
    (f"{_WIN}.default.used_bytes", 13, f"{_WIN}.default.buckets: the buckets sum to 12, not used"),
    (f"{_WIN}.exempt.window_s", 7200, f"{_WIN}.exempt.window_s: a slice's classes have one window"),
    (f"{_WIN}.default.window_s", 60, f"{_WIN}.default.window_s: expected 0 or a window of 3600"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_WINDOWS)
def test_a_ring_that_does_not_fit_its_window_is_named_in_one_line(
    path: str, value: object, message: str
) -> None:
    data = state_to_json(windowed_state(), NOW_S)
    _set(data, path, value)
    with pytest.raises(StateCorrupt) as exc:
        state_from_json(json.loads(json.dumps(data)), "state.json")
    assert str(exc.value).startswith(f"state.json: {message}") and "\n" not in str(exc.value)


def test_a_ledger_entry_whose_ring_does_not_fit_is_named_in_one_line() -> None:
    data = state_to_json(windowed_state(), NOW_S)
    rows = ledger_rows(data)
    rows["pl_dead0"][2][4][1] = 1  # used no longer the ring's sum
    put_rows(data, rows)
    with pytest.raises(StateCorrupt, match=r"ledger\.entries\.pl_dead0\[4\]\[6\]: the buckets sum"):
        state_from_json(data, "state.json")
    data = state_to_json(windowed_state(), NOW_S)
    pol = data["ledger"]["policies"][1]
    # window_s, then notices, rollover and direction
    data["ledger"]["policies"].append([*pol[:-4], 7200, *pol[-3:]])
    rows = ledger_rows(data)
    rows["pl_dead0"][2][5][0] = 2  # the exempt class under another window
    put_rows(data, rows)
    with pytest.raises(StateCorrupt, match=r"pl_dead0\[5\]: a slice's classes have one window"):
        state_from_json(data, "state.json")


def test_migration_to_schema_6_puts_every_class_under_its_period_as_before() -> None:
    """Schema 5 had no rolling windows: live classes and ledger arrays gain none."""
    state = make_state(2, used_bytes=10)
    v5 = as_v6(state_to_json(state, NOW_S))
    v5["schema_version"] = 5
    for sl in v5["slices"].values():
        for cls in sl["classes"].values():
            del cls["buckets"], cls["window_s"]
            for key in (*_V7_KEYS, *_V8_KEYS, *_V9_KEYS):
                del cls[key]
    # the policies lose window_s, notices, rollover and direction; a class its ring,
    # notice marks, carried bytes and inbound values
    v5["ledger"]["policies"] = [p[:-4] for p in v5["ledger"]["policies"]]
    for entry in v5["ledger"]["entries"].values():
        entry[4:] = [[*c[:5], c[-1]] for c in entry[4:]]
    before = copy.deepcopy(v5)
    migrated = MIGRATIONS[5](v5)
    assert v5 == before and migrated["schema_version"] == 6
    assert state_from_json(v5, "old.json") == saved(state)


def test_migration_to_schema_7_knows_no_notices_told_or_asked_for() -> None:
    """A schema-5 file (live classes and compact ledger entries): every class gets
    ``notice_bp`` 0 and ``lift`` "", every policy ``notices`` "" (after schema 6's windows).
    """
    v5 = as_v6(state_to_json(make_state(2), NOW_S))
    v5["schema_version"] = 5
    for sl in v5["slices"].values():
        for cls in sl["classes"].values():
            for key in (*_V7_KEYS, *_V8_KEYS, *_V9_KEYS, "buckets", "window_s"):
                del cls[key]
    v5["ledger"]["policies"] = [p[:-4] for p in v5["ledger"]["policies"]]
    for entry in v5["ledger"]["entries"].values():
        entry[4:] = [[*c[:5], c[-1]] for c in entry[4:]]
    before = copy.deepcopy(v5)
    assert state_from_json(v5, "old.json") == saved(make_state(2))
    assert v5 == before  # the steps build new objects


def test_migration_to_schema_8_carries_nothing_and_rolls_nothing_over() -> None:
    """A schema-7 file (live classes and compact ledger entries, notice marks and rings
    kept): every class gets ``carried_bytes`` 0 before its policy, every policy
    ``rollover_bytes`` 0 at its end; a v7 file loads as the state it was.
    """
    state = make_state(2, used_bytes=10)
    v7 = as_v6(state_to_json(state, NOW_S))
    v7["schema_version"] = 7
    for sl in v7["slices"].values():
        for cls in sl["classes"].values():
            for key in (*_V8_KEYS, *_V9_KEYS):
                del cls[key]
    v7["ledger"]["policies"] = [p[:-2] for p in v7["ledger"]["policies"]]
    for entry in v7["ledger"]["entries"].values():
        entry[4:] = [[*c[:8], c[-1]] for c in entry[4:]]
    before = copy.deepcopy(v7)
    migrated = MIGRATIONS[7](v7)
    assert v7 == before and migrated["schema_version"] == 8
    assert migrated["ledger"]["entries"]["pl_dead0"][4][-2:] == [0, 0]  # carried, policy 0
    assert all(p[-1] == 0 for p in migrated["ledger"]["policies"])
    loaded = state_from_json(v7, "old.json")
    assert loaded == saved(state)
    classes = [c for st in loaded.slices.values() for c in (st.default, st.exempt)]
    assert all(c.carried_bytes == 0 and c.policy.rollover_bytes == 0 for c in classes)


def test_carried_bytes_and_the_rollover_bound_round_trip_live_and_in_the_ledger() -> None:
    state = make_state(1, used_bytes=10)
    policy = dataclasses.replace(state.slices[1].default.policy, rollover_bytes=123_456)
    cs = dataclasses.replace(state.slices[1].default, policy=policy, carried_bytes=7_890)
    st = dataclasses.replace(state.slices[1], default=cs)
    entry = dataclasses.replace(state.ledger["pl_dead0"], slice=dataclasses.replace(st, xid=3000))
    state = dataclasses.replace(state, slices={1: st}, ledger={"pl_dead0": entry})
    text = StateEncoder().encode(state, NOW_S)
    data = file_json(text)
    assert data["slices"]["1"]["classes"]["default"]["carried_bytes"] == 7_890
    # the policy, 5 own values, ring, notice marks, carried (the inbound ones at 0 left out)
    assert ledger_rows(data)["pl_dead0"][2][4][9:] == [7_890]
    loaded = state_from_json(data, "state.json")
    assert loaded.slices[1].default == cs and loaded.ledger["pl_dead0"].slice.default == cs


def test_migration_to_schema_9_receives_nothing_and_counts_what_is_sent() -> None:
    """A schema-8 file (live classes and compact ledger entries without inbound fields,
    policies without a direction) loads with inbound usage 0 and every budget ``out``."""
    v8 = as_v6(state_to_json(make_state(2), NOW_S))  # the ledger's entries by name, as before 10
    v8["schema_version"] = 8
    for sl in v8["slices"].values():
        for cls in sl["classes"].values():
            for key in _V9_KEYS:
                del cls[key]
    v8["ledger"]["policies"] = [p[:-1] for p in v8["ledger"]["policies"]]
    for entry in v8["ledger"]["entries"].values():
        entry[4:] = [[*c[:9], c[-1]] for c in entry[4:]]
    before = copy.deepcopy(v8)
    migrated = MIGRATIONS[8](v8)
    assert v8 == before and migrated["schema_version"] == 9
    loaded = state_from_json(v8, "old.json")
    assert loaded == saved(make_state(2))
    for sl in [*loaded.slices.values(), *(e.slice for e in loaded.ledger.values())]:
        for cs in (sl.default, sl.exempt):
            assert (cs.in_used_bytes, cs.in_limit_bps, cs.policy.direction) == (0, 0, "out")

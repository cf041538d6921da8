"""The ledger kept as its saved lines (issue 23): core.ledger over store.ledgercodec's
lines, with real files through the state store.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.ledger import LazyLedger, SavedLedger, editable
from bwenforcer.core.model import (
    ClassPolicy,
    ClassState,
    DesiredSet,
    DesiredSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
    ledger_xids,
)
from bwenforcer.core.plan import PurgeLedger, Revive
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.errors import StateCorrupt
from bwenforcer.store.codec import StateEncoder, state_to_json
from bwenforcer.store.schema import MIGRATIONS, SCHEMA_VERSION
from bwenforcer.store.state import StateStore, check

NOW_S = 1_763_800_000
DAY_S = 86_400
P_D = ClassPolicy(5_000_000, 4_000_000, 8_000, 10_000_000, 1)
P_E = ClassPolicy(16_000_000, 12_800_000, 8_000, 10_000_000, 1)
PARAMS = PlanParams(period_s=DAY_S, anchor=None, bwmin_bps=8_000)


def entry(name: str, xid: int, end_s: int, used_bytes: int = 99) -> LedgerEntry:
    st = SliceState(
        name,
        xid,
        end_s - DAY_S,
        end_s,
        ClassState(P_D, used_bytes, 10 * used_bytes, 2_000_000, True, True),
        ClassState(P_E, 7, 77),
    )
    return LedgerEntry(st, end_s - DAY_S + 60)


def ledger_of(n: int) -> dict[str, LedgerEntry]:
    """``n`` entries, one expiring every minute from NOW_S on (in expiry order)."""
    return {f"pl_d{i}": entry(f"pl_d{i}", 100 + i % 3000, NOW_S + 60 * i, i) for i in range(n)}


def loaded(tmp_path: Path, ledger: dict[str, LedgerEntry]) -> tuple[StateStore, State]:
    path = tmp_path / "state.json"
    StateStore(str(path)).save(State({}, ledger), NOW_S)
    store = StateStore(str(path))
    return store, store.load().state


def counting(state: State) -> tuple[State, list[bytes]]:
    """``state`` whose saved ledger records each line it decodes."""
    ledger = state.ledger
    assert isinstance(ledger, LazyLedger) and ledger.base is not None
    seen: list[bytes] = []
    decode: Callable[[bytes], LedgerEntry] = ledger.base.decode

    def spy(line: bytes) -> LedgerEntry:
        seen.append(line)
        return decode(line)

    base = dataclasses.replace(ledger.base, decode=spy)
    return dataclasses.replace(state, ledger=LazyLedger(base)), seen


def test_the_file_is_the_object_then_one_line_per_entry(tmp_path: Path) -> None:
    store, _ = loaded(tmp_path, ledger_of(3))
    head, *lines = Path(store.path).read_bytes().split(b"\n")
    data = json.loads(head)
    assert data["schema_version"] == SCHEMA_VERSION == 10
    assert data["ledger"]["entries"] == 3 and len(data["ledger"]["policies"]) == 2
    assert lines[-1] == b"" and len(lines) == 4
    assert json.loads(lines[1])[:2] == [NOW_S + 60, "pl_d1"]


def test_a_loaded_ledger_is_kept_as_text_and_equals_what_was_saved(tmp_path: Path) -> None:
    ledger = ledger_of(50)
    _, state = loaded(tmp_path, ledger)
    assert isinstance(state.ledger, LazyLedger) and not state.ledger.added
    assert state.ledger == ledger and list(state.ledger) == list(ledger)
    for name, e in ledger.items():  # a revived (decoded) entry is what was saved
        assert dataclasses.astuple(state.ledger[name]) == dataclasses.astuple(e)
    assert "pl_d50" not in state.ledger and state.ledger.get("pl_d50") is None
    assert dict(ledger_xids(state)) == dict(ledger_xids(State({}, ledger)))


def test_expiry_decodes_only_the_entries_due(tmp_path: Path) -> None:
    _, state = loaded(tmp_path, ledger_of(2_000))
    state, seen = counting(state)
    p = plan(DesiredSet(()), KernelSnapshot(10_000_000, 10_000_000, {}), state, PARAMS, NOW_S + 120)
    purged = [a.name for a in p.actions if isinstance(a, PurgeLedger)]
    assert purged == ["pl_d0", "pl_d1", "pl_d2"]
    assert len(seen) == 3  # the three due, nothing else looked at
    assert len(p.state.ledger) == 1_997 and "pl_d2" not in p.state.ledger


def test_a_steady_cycle_decodes_nothing_and_writes_the_saved_text_as_it_is(
    tmp_path: Path,
) -> None:
    store, state = loaded(tmp_path, ledger_of(500))
    state, seen = counting(state)
    p = plan(DesiredSet(()), KernelSnapshot(10_000_000, 10_000_000, {}), state, PARAMS, NOW_S - 1)
    assert p.state.ledger is state.ledger and seen == []
    _, lines = StateEncoder().encode_parts(p.state, NOW_S)
    assert len(lines) == 1 and isinstance(lines[0], memoryview)
    assert lines[0].obj is state.ledger.base.text  # type: ignore[attr-defined]
    before = Path(store.path).read_bytes().partition(b"\n")[2]
    store.save(p.state, NOW_S + 1)
    assert Path(store.path).read_bytes().partition(b"\n")[2] == before and seen == []


def test_a_revived_entry_is_what_was_saved(tmp_path: Path) -> None:
    ledger = ledger_of(100)
    _, state = loaded(tmp_path, ledger)
    state, seen = counting(state)
    want = DesiredSet((DesiredSlice("pl_d70", 7, P_D, P_E),))
    p = plan(want, KernelSnapshot(10_000_000, 10_000_000, {}), state, PARAMS, NOW_S - 1)
    assert [a for a in p.actions if isinstance(a, Revive)] == [Revive("pl_d70", 7, 170)]
    assert len(seen) == 1 and "pl_d70" not in p.state.ledger
    revived = p.state.slices[7]
    assert revived.default.used_bytes == 70 and revived.period_end_s == NOW_S + 60 * 70
    # the same plan as from the entries as objects (a ledger never saved)
    kept = plan(
        want,
        KernelSnapshot(10_000_000, 10_000_000, {}),
        State({}, ledger, NOW_S),
        PARAMS,
        NOW_S - 1,
    )
    assert p.actions == kept.actions and p.state == kept.state


def test_changes_are_saved_and_a_ledger_much_changed_is_read_again(tmp_path: Path) -> None:
    store, state = loaded(tmp_path, ledger_of(300))
    ledger = editable(state.ledger)
    for name in ("pl_d5", "pl_d0", "pl_d299"):
        ledger.pop(name)
    ledger.put("pl_new", entry("pl_new", 9, NOW_S + 60 * 10 + 30))
    ledger.put("pl_last", entry("pl_last", 9, NOW_S + 10 * DAY_S))
    want = {**ledger_of(300), "pl_new": entry("pl_new", 9, NOW_S + 630)}
    want = dict(sorted(want.items(), key=lambda item: item[1].expires_s))
    want.pop("pl_d5"), want.pop("pl_d0"), want.pop("pl_d299")
    want["pl_last"] = entry("pl_last", 9, NOW_S + 10 * DAY_S)
    assert list(ledger) == list(want) and ledger == want
    store.save(dataclasses.replace(state, ledger=ledger), NOW_S + 1)
    again = StateStore(store.path).load().state.ledger
    assert list(again) == list(want) and again == want
    # a store hands on what it wrote, but not a ledger of over 1,024 changes: read again
    ledger = editable(ledger)  # a ledger handed on is not changed: a plan changes a copy
    for i in range(1_100):
        ledger.put(f"pl_x{i}", entry(f"pl_x{i}", 9, NOW_S + 20 * DAY_S))
    store.save(dataclasses.replace(state, ledger=ledger), NOW_S + 2)
    fresh = store.load().state.ledger
    assert isinstance(fresh, LazyLedger) and not fresh.added and len(fresh) == len(ledger)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["pop", "put", "due"]),
        st.integers(min_value=0, max_value=40),
        st.integers(min_value=-5, max_value=60),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=30), OPS)
def test_a_loaded_ledger_changes_as_a_dict_in_expiry_order_does(
    tmp_path_factory: pytest.TempPathFactory, n: int, ops: list[tuple[str, int, int]]
) -> None:
    _, state = loaded(tmp_path_factory.mktemp("l"), ledger_of(n))
    lazy = editable(state.ledger)
    model = dict(ledger_of(n))
    for op, k, minutes in ops:
        name = f"pl_d{k}"
        if op == "pop":
            assert lazy.pop(name) == model.pop(name, None)
        elif op == "put" and name not in model:
            new = entry(name, 5, NOW_S + 60 * minutes)
            lazy.put(name, new)
            model[name] = new
            model = dict(sorted(model.items(), key=lambda item: item[1].expires_s))
        else:
            due = [m for m, e in model.items() if e.expires_s <= NOW_S + 60 * minutes]
            assert sorted(lazy.due(NOW_S + 60 * minutes)) == sorted(due)
        assert lazy == model and len(lazy) == len(model)
        assert [e.expires_s for e in lazy.values()] == sorted(e.expires_s for e in model.values())
    # and through the file
    path = tmp_path_factory.mktemp("s") / "state.json"
    StateStore(str(path)).save(dataclasses.replace(state, ledger=lazy), NOW_S)
    assert StateStore(str(path)).load().state.ledger == model


def _damage(path: Path, old: bytes, new: bytes) -> None:
    text = path.read_bytes()
    assert old in text
    path.write_bytes(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b',"pl_d1",[', b',"pl_d0",[', "ledger.entries.pl_d0: a second entry of this name"),
        (b"[99,990,", b"[-99,990,", "ledger.entries.pl_d99[4][0]: expected a non-negative"),
        (b'[1763800060,"pl_d1"', b'[1763800061,"pl_d1"', "ledger.entries[1][0]: expected its"),
        (b'[1763800060,"pl_d1"', b'[1763800000,"pl_d1"', "ledger.entries[1][0]: expected its"),
        (b'"entries":120', b'"entries":121', "ledger.entries: 121 entries, but 120 lines"),
    ],
)
def test_a_damaged_line_is_named_in_one_line_and_the_backup_is_used(
    tmp_path: Path, old: bytes, new: bytes, message: str
) -> None:
    """Every line is checked at load (in full, its objects not kept): a damaged entry
    is found before any cycle could hand its slice a fresh budget, and the backup
    (which has it and the others) is used.
    """
    store, _ = loaded(tmp_path, ledger_of(120))
    store.save(State({}, ledger_of(120)), NOW_S + 1)  # the backup: the same ledger
    _damage(Path(store.path), old, new)
    problems = check(store.path)
    assert len(problems) == 1 and message in problems[0] and "\n" not in problems[0]
    result = StateStore(store.path).load()
    assert result.recovered_from == store.backup and result.state.ledger == ledger_of(120)


def test_a_file_cut_short_is_corrupt(tmp_path: Path) -> None:
    store, _ = loaded(tmp_path, ledger_of(10))
    text = Path(store.path).read_bytes()
    Path(store.path).write_bytes(text[:-40])
    with pytest.raises(StateCorrupt, match=r"cut short|lines follow"):
        StateStore(store.path).read_unlocked()


def test_lines_after_an_older_schemas_object_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    data = state_to_json(State(), NOW_S)
    data["schema_version"] = 9
    data["ledger"] = {"policies": [], "entries": {}}
    path.write_text(json.dumps(data) + "\n[1,2]\n")
    with pytest.raises(StateCorrupt, match="lines after the JSON object of schema_version 9"):
        StateStore(str(path)).read_unlocked()


def test_a_schema_9_file_migrates_and_is_saved_as_lines(tmp_path: Path) -> None:
    ledger = dict(reversed(list(ledger_of(20).items())))  # any order in schema 9
    data = state_to_json(State({}, ledger_of(20)), NOW_S)
    rows = [json.loads(line) for line in data["ledger"]["entries"]]
    data["ledger"]["entries"] = {row[1]: row[2] for row in reversed(rows)}
    data["schema_version"] = 9
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    store = StateStore(str(path))
    state = store.load().state
    assert state.ledger == ledger and list(state.ledger) == list(ledger_of(20))
    store.save(state, NOW_S + 1)
    assert json.loads(path.read_bytes().partition(b"\n")[0])["ledger"]["entries"] == 20
    assert StateStore(str(path)).load().state.ledger == ledger


def noticed(e: LedgerEntry, i: int) -> LedgerEntry:
    """``e`` with early notices asked for and told (issue 20's fields)."""
    policy = dataclasses.replace(P_D, notices="50%,80%,lifted")
    d = dataclasses.replace(e.slice.default, policy=policy, notice_bp=5_000 + i, lift="due")
    ex = dataclasses.replace(e.slice.exempt, notice_bp=i, lift="sent")
    return dataclasses.replace(e, slice=dataclasses.replace(e.slice, default=d, exempt=ex))


def test_notice_marks_and_policies_go_through_the_lines_decoded_only_when_asked(
    tmp_path: Path,
) -> None:
    ledger = {name: noticed(e, i) for i, (name, e) in enumerate(ledger_of(20).items())}
    store, state = loaded(tmp_path, ledger)
    head, *lines = Path(store.path).read_bytes().split(b"\n")
    # a policy: …, window_s, notices, rollover_bytes, direction
    assert json.loads(head)["ledger"]["policies"][0][-4:] == [0, "50%,80%,lifted", 0, "out"]
    row = json.loads(lines[3])
    # each class: used, last, ceil, capped, notified, ring, notice_bp, lift, carried,
    # in_used, in_last, in_limit, policy
    assert row[2][4][5:] == [[], 5_003, "due", 0, 0, 0, 0, 0]
    assert row[2][5][5:] == [[], 3, "sent", 0, 0, 0, 0, 1]
    state, seen = counting(state)
    assert seen == []
    assert dataclasses.astuple(state.ledger["pl_d3"]) == dataclasses.astuple(ledger["pl_d3"])
    assert len(seen) == 1 and state.ledger == ledger


def test_the_lines_step_carries_whatever_entry_arrays_the_steps_before_made() -> None:
    """The step to lines knows only where an entry's period end, default class and
    policy index are and its policy's window_s: classes with more values (a later
    branch's) pass into the lines as they are, ordered by expiry.
    """
    policies = [[1, 2, 3, 4, 5, "", "", True, 0, "", "extra"]]
    wide = [[9, 9, 0, False, False, [], 0, "", "x", "y", 0]] * 2
    entries = {"pl_b": [5, 1, 10, 200, *wide], "pl_a": [5, 1, 10, 100, *wide], "pl_c": "bad"}
    out = MIGRATIONS[SCHEMA_VERSION - 1](
        {"schema_version": SCHEMA_VERSION - 1, "ledger": {"policies": policies, "entries": entries}}
    )
    assert out["schema_version"] == SCHEMA_VERSION
    assert out["ledger"]["policies"] == policies
    rows = [json.loads(line) for line in out["ledger"]["entries"]]
    assert rows == [
        [0, "pl_c", "bad"],
        [100, "pl_a", entries["pl_a"]],
        [200, "pl_b", entries["pl_b"]],
    ]


def test_a_saved_ledger_finds_names_by_hash_among_collisions(tmp_path: Path) -> None:
    _, state = loaded(tmp_path, ledger_of(200))
    base = state.ledger.base  # type: ignore[attr-defined]
    assert isinstance(base, SavedLedger) and len(base.slots) >= 2 * len(base)
    h = hash("pl_d150")  # every line's hash that one: one run of the table, names compared
    slots = type(base.slots)("i", [-1]) * len(base.slots)
    for i in range(len(base)):
        slots[(h + i) & (len(slots) - 1)] = i
    hashes = type(base.hashes)("q", [h] * len(base))
    colliding = dataclasses.replace(base, hashes=hashes, slots=slots)
    assert colliding.find("pl_d150") == 150 and colliding.find("pl_dx") is None
    assert base.find("pl_d150") == 150 and base.find("pl_dx") is None

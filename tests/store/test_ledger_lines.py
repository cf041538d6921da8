"""The ledger kept as its saved lines (issue 23): core.ledger over store.ledgercodec's
lines, with real files through the state store.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
from bwenforcer.errors import StateCorrupt, StateTooNew
from bwenforcer.store.codec import StateEncoder, state_from_json, state_to_json
from bwenforcer.store.schema import MIGRATIONS, SCHEMA_VERSION
from bwenforcer.store.state import StateStore, check
from tests.store.test_statestore import as_v10

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
    assert data["schema_version"] == SCHEMA_VERSION == 11
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
        (b"[0,99,990,", b"[0,-99,990,", "ledger.entries.pl_d99[4][1]: expected a non-negative"),
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
    data = as_v10(state_to_json(State({}, ledger_of(20)), NOW_S))  # schema 9's ECLASS too
    rows = [json.loads(line) for line in data["ledger"]["entries"]]
    data["ledger"]["entries"] = {row[1]: row[2] for row in reversed(rows)}
    data["schema_version"] = 9
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    store = StateStore(str(path))
    state = store.load().state
    assert state.ledger == ledger and list(state.ledger) == list(ledger_of(20))
    store.save(state, NOW_S + 1)
    head, _, tail = path.read_bytes().partition(b"\n")
    assert json.loads(head)["ledger"]["entries"] == 20
    # the lines as this schema writes them (through 10 to 11)
    want = state_to_json(State({}, ledger_of(20)), NOW_S)["ledger"]["entries"]
    assert tail.decode().splitlines() == want
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
    # each class: policy, used, last, ceil, capped, notified, ring, notice_bp, lift (and
    # carried, in_used, in_last, in_limit: at their default, left out)
    assert row[2][4] == [0, 3, 30, 2_000_000, True, True, [], 5_003, "due"]
    assert row[2][5] == [1, 7, 77, 0, False, False, [], 3, "sent"]
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
    out = MIGRATIONS[9]({"schema_version": 9, "ledger": {"policies": policies, "entries": entries}})
    assert out["schema_version"] == 10
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


# --- schema 11: an ECLASS's policy index first, its trailing defaults left out ------------

T0 = 1_800_000_000
WINDOW_S = 30 * DAY_S
PD = ClassPolicy(250_000_000_000, 200_000_000_000, 8_000, 10_000_000, 1)
PE = ClassPolicy(500_000_000_000, 400_000_000_000, 8_000, 1_000_000_000, 1)
PW = ClassPolicy(
    1_000_000_000, 800_000_000, 8_000, 10_000_000, 1,
    window_s=WINDOW_S, notices="50%,lifted", direction="both",
)  # fmt: skip
PWE = ClassPolicy(
    2_000_000_000, 1_600_000_000, 8_000, 1_000_000_000, 1, window_s=WINDOW_S, direction="both"
)
RING_D = (*[0] * 22, 100, 200, 300)

# three entries as objects: a typical waiting one, one with carried bytes and a lift told,
# one under a rolling window with notices and inbound values
OLD_LEDGER = {
    "pl_plain": LedgerEntry(
        SliceState(
            "pl_plain", 12, T0, T0 + 30 * DAY_S,
            ClassState(PD, 123_456_789_012, 987_654_321_098, 10_000_000, True, True),
            ClassState(PE, 12_345_678_901, 98_765_432_109, 1_000_000_000),
        ),
        T0 + 5 * DAY_S,
    ),
    "pl_told": LedgerEntry(
        SliceState(
            "pl_told", 14, T0, T0 + 30 * DAY_S,
            ClassState(PD, 5, 6, 7, carried_bytes=1_234),
            ClassState(PE, 8, 9, 10, lift="sent"),
        ),
        T0 + 6 * DAY_S,
    ),
    "pl_ring": LedgerEntry(
        SliceState(
            "pl_ring", 13, T0 + 3600, T0 + 3600 + WINDOW_S // 24,
            ClassState(PW, 600, 700, 2_000_000, True, False, 5_000, "due", RING_D, 0, 4_000,
                       5_000, 64_000),
            ClassState(PWE, buckets=(0,) * 25),
        ),
        T0 + 7200,
    ),
}  # fmt: skip

# what bwenforcer's schema 10 wrote for State({}, OLD_LEDGER, boot_id="b") at T0 + 8 days
# (every ECLASS value, the policy index last)
V10_POLICIES = (
    '[[250000000000,200000000000,8000,10000000,1,"","",true,0,"",0,"out"],'
    '[500000000000,400000000000,8000,1000000000,1,"","",true,0,"",0,"out"],'
    '[1000000000,800000000,8000,10000000,1,"","",true,2592000,"50%,lifted",0,"both"],'
    '[2000000000,1600000000,8000,1000000000,1,"","",true,2592000,"",0,"both"]]'
)
V10_HEAD = (
    '{"schema_version":10,"saved_at":1800691200,"writer":"bwenforcer 0.1.0","slices":{},'
    f'"ledger":{{"policies":{V10_POLICIES},"entries":3}},"resets":0,"boot_id":"b",'
    '"boottime_s":0,"clock_ref_at":0,"missing":{},"grants":0,"audit":[]}'
)
V10_LINES = [
    '[1802592000,"pl_plain",[1800432000,12,1800000000,1802592000,'
    '[123456789012,987654321098,10000000,true,true,[],0,"",0,0,0,0,0],'
    '[12345678901,98765432109,1000000000,false,false,[],0,"",0,0,0,0,1]]]',
    '[1802592000,"pl_told",[1800518400,14,1800000000,1802592000,'
    '[5,6,7,false,false,[],0,"",1234,0,0,0,0],[8,9,10,false,false,[],0,"sent",0,0,0,0,1]]]',
    '[1802703600,"pl_ring",[1800007200,13,1800003600,1800111600,'
    "[600,700,2000000,true,false,[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,100,200,300],"
    '5000,"due",0,4000,5000,64000,2],'
    "[0,0,0,false,false,[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"
    '0,"",0,0,0,0,3]]]',
]
# the same entries as schema 11 writes them
V11_LINES = [
    '[1802592000,"pl_plain",[1800432000,12,1800000000,1802592000,'
    "[0,123456789012,987654321098,10000000,true,true],"
    "[1,12345678901,98765432109,1000000000,false,false]]]",
    '[1802592000,"pl_told",[1800518400,14,1800000000,1802592000,'
    '[0,5,6,7,false,false,[],0,"",1234],[1,8,9,10,false,false,[],0,"sent"]]]',
    '[1802703600,"pl_ring",[1800007200,13,1800003600,1800111600,'
    "[2,600,700,2000000,true,false,[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,100,200,300],"
    '5000,"due",0,4000,5000,64000],'
    "[3,0,0,0,false,false,[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]]]",
]


def test_a_typical_waiting_entrys_line_has_no_trailing_defaults() -> None:
    """The bench's dead slice (issue 23): a month's tens of GB, no ring, notice, rollover
    or inbound bytes: each class its policy index, usage, counter, ceil and flags.
    """
    st = SliceState(
        "pl_gone000002_web", 3, T0, T0 + 30 * DAY_S,
        ClassState(PD, 123_456_789_014, 987_654_321_100, 10_000_000),
        ClassState(PE, 12_345_678_903, 98_765_432_111, 1_000_000_000),
    )  # fmt: skip
    text = StateEncoder().encode(State({}, {st.name: LedgerEntry(st, T0)}), T0)
    assert text.split(b"\n")[1] == (
        b'[1802592000,"pl_gone000002_web",[1800000000,3,1800000000,1802592000,'
        b"[0,123456789014,987654321100,10000000,false,false],"
        b"[1,12345678903,98765432111,1000000000,false,false]]]"
    )


def test_a_schema_10_file_loads_as_it_was_and_is_saved_as_schema_11(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text("\n".join([V10_HEAD, *V10_LINES]) + "\n")
    assert check(str(path)) == []
    store = StateStore(str(path))
    with caplog.at_level("INFO"):
        state = store.load().state
    assert "migrated state to schema_version 11" in caplog.text
    assert state.ledger == OLD_LEDGER and list(state.ledger) == ["pl_plain", "pl_told", "pl_ring"]
    for name, e in OLD_LEDGER.items():
        assert dataclasses.astuple(state.ledger[name]) == dataclasses.astuple(e)
    store.save(state, T0 + 9 * DAY_S)
    head, *lines = path.read_text().splitlines()
    assert json.loads(head)["schema_version"] == 11
    assert json.loads(head)["ledger"] == {"policies": json.loads(V10_POLICIES), "entries": 3}
    assert lines == V11_LINES
    assert StateStore(str(path)).load().state.ledger == OLD_LEDGER


def test_schema_11_writes_those_lines_itself() -> None:
    text = StateEncoder().encode(State({}, OLD_LEDGER, boot_id="b"), T0 + 8 * DAY_S)
    head, *lines = text.decode().split("\n")
    assert json.loads(head) == {**json.loads(V10_HEAD), "schema_version": 11, "cycles": 0}
    assert lines == V11_LINES


def test_a_schema_9_file_migrates_through_10_to_11() -> None:
    """Schema 9 had the entries in the object, by name, each ECLASS as schema 10's."""
    head = json.loads(V10_HEAD)
    rows = [json.loads(line) for line in V10_LINES]
    # any order in the object (ties in expiry keep it)
    head["ledger"]["entries"] = {row[1]: row[2] for row in (rows[2], rows[0], rows[1])}
    head["schema_version"] = 9
    state = state_from_json(head, "old.json")
    assert state.ledger == OLD_LEDGER and list(state.ledger) == list(OLD_LEDGER)
    assert state_to_json(state, T0)["ledger"]["entries"] == V11_LINES


def test_a_damaged_schema_10_line_is_named_after_the_migration(tmp_path: Path) -> None:
    """Lines the step cannot read as schema 10's pass it as they are: the load's checks
    name them as any other damage (the migration does not make them sound).
    """
    path = tmp_path / "state.json"
    cases = [
        (V10_LINES[1][:-3], "ledger.entries[1]: not a JSON line"),
        # a 12-value class (no policy index) is not moved: read as schema 11's, a flag
        # is where the ceil goes
        (V10_LINES[1].replace(',"",1234,0,0,0,0]', ',"",1234,0,0,0]'), "pl_told[4][3]: expected a"),
        # false for a 0: kept (not dropped as a default), and named
        (V10_LINES[1].replace(',"",1234,0,0,0,0]', ',"",1234,0,0,false,0]'), "pl_told[4][12]: exp"),
        (V10_LINES[1].replace("pl_told", "pl_tøld"), "ledger.entries[1]: not an ASCII line"),
    ]
    for line, message in cases:
        path.write_text("\n".join([V10_HEAD, V10_LINES[0], line, V10_LINES[2]]) + "\n")
        with pytest.raises(StateCorrupt, match=re.escape(message)) as exc:
            StateStore(str(path)).read_unlocked()
        assert "\n" not in str(exc.value)
    path.write_text("\n".join([V10_HEAD, *V10_LINES[:2]]) + "\n")
    with pytest.raises(StateCorrupt, match=r"ledger.entries: 3 entries, but 2 lines follow"):
        StateStore(str(path)).read_unlocked()


def test_a_newer_schemas_file_with_lines_is_too_new(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    head = V10_HEAD.replace('"schema_version":10', f'"schema_version":{SCHEMA_VERSION + 1}')
    path.write_text("\n".join([head, *V11_LINES]) + "\n")
    with pytest.raises(StateTooNew, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        StateStore(str(path)).read_unlocked()


def test_the_step_to_11_moves_the_policy_index_and_drops_trailing_defaults_only() -> None:
    entries = [
        *V10_LINES,
        "not json",
        '[1,"pl_x",[1,2,3,4,[0,0,0,false,false,[],0,"",0,0,0,0],[1]]]',  # a class of 12
        '[1,"pl_y",{}]',
        7,
    ]
    out = MIGRATIONS[10]({"schema_version": 10, "ledger": {"policies": [], "entries": entries}})
    assert out["schema_version"] == 11
    assert out["ledger"]["entries"] == [*V11_LINES, *entries[3:]]
    # a trailing explicit default is read as left out (a writer may write it)
    full = V11_LINES[0].replace("true,true]", 'true,true,[],0,"",0,0,0,0]')
    tail = "\n".join([full, *V11_LINES[1:]]) + "\n"
    head = {**json.loads(V10_HEAD), "schema_version": 11, "cycles": 0}
    assert state_from_json(head, "s", tail.encode()).ledger == OLD_LEDGER

"""Pure inspection views: status/ledger/show tables and JSON, ordering, colour, reset."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.model import (
    AuditEntry,
    ClassOp,
    ClassPolicy,
    ClassRates,
    ClassState,
    DesiredSet,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.plan import SetRates
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.core.window import expiry_s
from bwenforcer.history.usage import ReportRow
from bwenforcer.views.grant import grant
from bwenforcer.views.reset import forgive, reset_line
from bwenforcer.views.show import find_slice, show_json, show_text
from bwenforcer.views.status import (
    ledger_json,
    ledger_table,
    slice_views,
    state_age,
    status_json,
    status_table,
    until,
)
from bwenforcer.views.table import RED, RESET

# --- a fixed state: plain data, a fixed clock --------------------------------------

NOW = 1_800_000_000  # 2027-01-15 08:00 UTC
CAP_BPS = 10_000_000
BWMAX_BPS = 100_000_000
BWMIN_BPS = 8_000
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def policy(limit: int, max_rate: int = CAP_BPS, threshold: int | None = None) -> ClassPolicy:
    """A class policy; threshold 80 % of the limit unless given."""
    thr = limit * 8 // 10 if threshold is None else threshold
    return ClassPolicy(limit, thr, BWMIN_BPS, max_rate, 1)


def cls(
    used: int,
    limit: int,
    *,
    ceil: int = CAP_BPS,
    capped: bool = False,
    notified: bool = False,
    counter: int = 0,
    max_rate: int = CAP_BPS,
    threshold: int | None = None,
) -> ClassState:
    """A class state."""
    return ClassState(policy(limit, max_rate, threshold), used, counter, ceil, capped, notified)


def exempt(used: int = 0, **kw: Any) -> ClassState:
    """An exempt class with a 1 GiB budget at line rate."""
    kw.setdefault("ceil", BWMAX_BPS)
    return cls(used, GiB, max_rate=BWMAX_BPS, **kw)


def live(name: str, xid: int, default: ClassState, ex: ClassState | None = None, *,
         end: int = NOW + 5 * 3600 + 12 * 60) -> SliceState:  # fmt: skip
    """A slice with a one-day period ending at ``end``."""
    return SliceState(name, xid, end - 86_400, end, default, ex or exempt())


def fixed_state() -> State:
    """Four live slices (one capped in each class, one at 58 %, one light) and two dead ones."""
    heavy = live(
        "pl_heavy",
        10,
        cls(190 * KiB, 200 * KiB, ceil=72_000, capped=True, notified=True, counter=500_000,
            threshold=100 * KiB),
        exempt(3 * MiB, counter=3_200_000),
        end=NOW + 3 * 3600 + 12 * 60,
    )  # fmt: skip
    light = live("pl_light", 11, cls(100 * MiB, 5 * GiB, counter=104_857_600))
    mid = live("pl_mid", 12, cls(600 * MiB, GiB, counter=7_000_000_000))
    bulk = live(
        "pl_bulk",
        13,
        cls(KiB, GiB, counter=1_024),
        exempt(900 * MiB, ceil=2_000_000, capped=True, counter=943_718_400),
        end=NOW + 20 * 3600,
    )
    gone = live("pl_gone", 14, cls(300 * MiB, GiB, ceil=1_000_000, capped=True))
    old = live("pl_old", 15, cls(0, GiB), end=NOW - 60)
    return State(
        slices={s.xid: s for s in (light, heavy, mid, bulk)},
        ledger={
            "pl_gone": LedgerEntry(gone, NOW - 2 * 3600),
            "pl_old": LedgerEntry(old, NOW - 20 * 3600),
        },
        saved_s=NOW - 125,
    )


def kclass(bytes_: int, ceil: int, rate: int = BWMIN_BPS) -> KernelClass:
    """A kernel class."""
    return KernelClass(ClassRates(rate, ceil, 1), bytes_)


def fixed_snapshot() -> KernelSnapshot:
    """The kernel under the fixed state: pl_heavy's ceil moved since the save, pl_mid absent."""
    return KernelSnapshot(
        CAP_BPS,
        BWMAX_BPS,
        {
            10: KernelSlice(10, kclass(520_000, 64_000), kclass(3_200_000, BWMAX_BPS)),
            11: KernelSlice(11, kclass(104_857_600, CAP_BPS), kclass(0, BWMAX_BPS)),
            13: KernelSlice(13, kclass(1_024, CAP_BPS), kclass(943_718_400, 2_000_000)),
        },
    )


def desired_heavy() -> DesiredSlice:
    """pl_heavy as the slices file has it now: a bigger limit from its rspec."""
    return DesiredSlice(
        "pl_heavy",
        10,
        policy(400 * KiB, threshold=100 * KiB),
        policy(GiB, max_rate=BWMAX_BPS),
        origin={"net_max_kbyte": "rspec", "net_thresh_kbyte": "rspec", "net_max_rate": "defaults"},
    )


def check_golden(name: str, text: str) -> None:
    """Compare with ``tests/golden/NAME``; BWENFORCER_UPDATE_GOLDEN=1 rewrites it (review it!)."""
    path = GOLDEN / name
    if os.environ.get("BWENFORCER_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with BWENFORCER_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"output differs from {path}"


# --- the documented JSON keys (docs/interfaces.md "JSON outputs") ------------------

CLASS_KEYS = {"used_bytes", "limit_bytes", "threshold_bytes", "ceil", "capped", "notified"}


def check_class(obj: object) -> None:
    """One class object of ``status --json``."""
    assert isinstance(obj, dict) and set(obj) == CLASS_KEYS, obj
    for key in ("used_bytes", "limit_bytes", "threshold_bytes"):
        assert type(obj[key]) is int and obj[key] >= 0, (key, obj)
    assert obj["ceil"] is None or (type(obj["ceil"]) is int and obj["ceil"] > 0), obj
    assert type(obj["capped"]) is bool and type(obj["notified"]) is bool, obj


def check_classes(obj: object) -> None:
    """``classes`` with exactly ``default`` and ``exempt``."""
    assert isinstance(obj, dict) and set(obj) == {"default", "exempt"}, obj
    for value in obj.values():
        check_class(value)


def check_ledger_entry(obj: object) -> None:
    """A ledger entry: ``name xid died_at expires_at classes``."""
    assert isinstance(obj, dict), obj
    assert set(obj) == {"name", "xid", "died_at", "expires_at", "classes"}, obj
    assert type(obj["name"]) is str and type(obj["xid"]) is int
    assert type(obj["died_at"]) is int and type(obj["expires_at"]) is int
    check_classes(obj["classes"])


def check_status_json(doc: object) -> None:
    """The whole ``status --json`` document."""
    assert isinstance(doc, dict) and set(doc) == {"slices", "ledger"}, doc
    assert isinstance(doc["slices"], list) and isinstance(doc["ledger"], list)
    for s in doc["slices"]:
        assert set(s) == {"name", "xid", "period_start", "period_end", "classes"}, s
        assert type(s["name"]) is str and type(s["xid"]) is int
        assert type(s["period_start"]) is int and type(s["period_end"]) is int
        assert s["period_start"] <= s["period_end"]
        check_classes(s["classes"])
    for entry in doc["ledger"]:
        check_ledger_entry(entry)


# --- status ------------------------------------------------------------------------


def test_status_table_golden() -> None:
    check_golden("status.txt", status_table(fixed_state(), fixed_snapshot(), NOW) + "\n")


def test_status_shows_capped_slices_first_then_by_share_of_budget() -> None:
    views = slice_views(fixed_state(), fixed_snapshot())
    assert [v.name for v in views] == ["pl_heavy", "pl_bulk", "pl_mid", "pl_light"]
    table = status_table(fixed_state(), fixed_snapshot(), NOW).splitlines()
    assert table[0] == "state saved 2m ago"
    assert table[1].split()[:2] == ["SLICE", "XID"]
    heavy = table[2].split()
    assert heavy[:2] == ["pl_heavy", "10"]
    assert "64kbit/s" in heavy and heavy[-2:] == ["in", "3h12m"]
    assert "default" in heavy  # capped and notified columns


def test_status_uses_the_kernel_ceil_and_falls_back_to_the_last_applied() -> None:
    with_kernel = {v.name: v for v in slice_views(fixed_state(), fixed_snapshot())}
    assert with_kernel["pl_heavy"].default.ceil_bps == 64_000  # the kernel's
    assert with_kernel["pl_mid"].default.ceil_bps is None  # no class in the kernel
    without = {v.name: v for v in slice_views(fixed_state(), None)}
    assert without["pl_heavy"].default.ceil_bps == 72_000  # last applied
    assert without["pl_mid"].default.ceil_bps == CAP_BPS
    row = next(r for r in status_table(fixed_state(), None, NOW).splitlines() if "pl_heavy" in r)
    assert "72kbit/s" in row


def test_colour_marks_capped_rows_only_when_asked() -> None:
    plain = status_table(fixed_state(), fixed_snapshot(), NOW, colour=False)
    assert "\x1b[" not in plain
    coloured = status_table(fixed_state(), fixed_snapshot(), NOW, colour=True)
    assert ANSI.sub("", coloured) == plain
    red = [line for line in coloured.splitlines() if line.startswith(RED)]
    assert [line.split()[0].removeprefix(RED) for line in red] == ["pl_heavy", "pl_bulk"]
    assert all(line.endswith(RESET) for line in red)


def test_status_json_has_the_documented_keys_and_values() -> None:
    doc = status_json(fixed_state(), fixed_snapshot())
    check_status_json(doc)
    assert [s["name"] for s in doc["slices"]] == ["pl_heavy", "pl_bulk", "pl_mid", "pl_light"]
    heavy = doc["slices"][0]
    assert heavy["xid"] == 10 and heavy["period_end"] == NOW + 3 * 3600 + 12 * 60
    assert heavy["classes"]["default"] == {
        "used_bytes": 190 * KiB,
        "limit_bytes": 200 * KiB,
        "threshold_bytes": 100 * KiB,
        "ceil": 64_000,
        "capped": True,
        "notified": True,
    }
    assert doc["slices"][2]["classes"]["default"]["ceil"] is None  # pl_mid: no kernel class
    assert [e["name"] for e in doc["ledger"]] == ["pl_old", "pl_gone"]  # soonest expiry first
    gone = doc["ledger"][1]
    assert gone["died_at"] == NOW - 7200 and gone["xid"] == 14
    assert gone["classes"]["default"]["ceil"] == 1_000_000  # last applied


def test_empty_state() -> None:
    doc = status_json(State(), None)
    check_status_json(doc)
    assert doc == {"slices": [], "ledger": []}
    assert status_table(State(), None, NOW).splitlines() == [
        "state never saved (no cycle has run yet)",
        "no live slices",
    ]


def test_times_relative_to_now() -> None:
    assert until(NOW + 3 * 3600 + 12 * 60, NOW) == "in 3h12m"
    assert until(NOW - 300, NOW) == "5m ago"
    assert state_age(NOW - 125, NOW) == "state saved 2m ago"


budgets = st.integers(min_value=1, max_value=10**12)


@st.composite
def states(draw: st.DrawFn) -> State:
    """Live slices with random usage, limits, thresholds and capped flags."""
    n = draw(st.integers(min_value=0, max_value=12))
    slices = {}
    for xid in range(1, n + 1):
        classes = []
        for _ in range(2):
            limit = draw(budgets)
            used = draw(st.integers(min_value=0, max_value=2 * limit))
            threshold = draw(st.integers(min_value=0, max_value=limit))
            classes.append(
                ClassState(policy(limit, threshold=threshold), used, capped=used >= threshold)
            )
        slices[xid] = live(f"s{xid}", xid, classes[0], classes[1])
    return State(slices=slices)


@given(states())
def test_order_property_capped_first_then_descending_share(state: State) -> None:
    views = slice_views(state, None)
    capped = [v.capped for v in views]
    assert capped == sorted(capped, reverse=True)  # every capped slice before every other
    for group in (True, False):
        shares = [max(c.fraction for c in v.classes) for v in views if v.capped == group]
        assert shares == sorted(shares, reverse=True)
    check_status_json(status_json(state, None))


# --- ledger ------------------------------------------------------------------------


def test_ledger_table_golden() -> None:
    check_golden("ledger.txt", ledger_table(fixed_state(), NOW) + "\n")


def test_ledger_json_and_expiry_wording() -> None:
    doc = ledger_json(fixed_state())
    assert set(doc) == {"ledger"}
    for entry in doc["ledger"]:
        check_ledger_entry(entry)
    assert [e["expires_at"] for e in doc["ledger"]] == [NOW - 60, NOW + 5 * 3600 + 12 * 60]
    rows = ledger_table(fixed_state(), NOW).splitlines()
    gone = next(r for r in rows if r.startswith("pl_gone"))
    assert "2h00m ago" in gone and gone.endswith("in 5h12m")
    assert next(r for r in rows if r.startswith("pl_old")).endswith("purged next cycle")
    assert ledger_table(State(), NOW).splitlines()[-1] == "the ledger is empty"


# --- show --------------------------------------------------------------------------


def heavy_report() -> Any:
    found = find_slice(fixed_state(), [desired_heavy()], "pl_heavy")
    assert found is not None
    return dataclasses.replace(
        found,
        kernel=fixed_snapshot().slices[10],
        kernel_available=True,
        history=(
            ReportRow("pl_heavy", "hour", NOW - 7200, 120 * KiB, MiB, 1_171_456, 0, 0),
            ReportRow("pl_heavy", "hour", NOW - 3600, 70 * KiB, 2 * MiB, 2_168_832, 1500, 0),
        ),
    )


def test_show_text_golden() -> None:
    check_golden("show.txt", show_text(heavy_report(), NOW) + "\n")


def test_show_json_of_a_live_slice() -> None:
    doc = show_json(heavy_report(), NOW)
    assert doc["status"] == "live" and doc["xid"] == 10 and doc["kernel_available"]
    default = doc["classes"]["default"]
    assert set(default) >= CLASS_KEYS
    assert default["used_bytes"] == 190 * KiB and default["last_counter_bytes"] == 500_000
    # the last hour sent 70 KiB: 10 KiB left last 514 s at that rate
    assert (default["last_hour_rate"], default["exhausted_at"]) == (159, NOW + 514)
    assert doc["classes"]["exempt"]["exhausted_at"] is None  # lasts the period
    assert default["kernel"] == {
        "bytes": 520_000,
        "min_rate": BWMIN_BPS,
        "max_rate": 64_000,
        "share": 1,
        "uncounted_bytes": 20_000,
    }
    assert default["next_cycle"]["limit_bytes"] == 400 * KiB  # the slices file changed it
    assert doc["classes"]["exempt"]["next_cycle"] is None
    assert doc["origin"] == {
        "net_max_kbyte": "rspec",
        "net_max_rate": "defaults",
        "net_thresh_kbyte": "rspec",
    }
    assert doc["ledger"] is None
    assert [h["default_bytes"] for h in doc["history"]] == [120 * KiB, 70 * KiB]
    assert doc["history"][1] == {
        "bucket_start": NOW - 3600,
        "default_bytes": 70 * KiB,
        "exempt_bytes": 2 * MiB,
        "capped_default_s": 1500,
        "capped_exempt_s": 0,
    }


def test_show_a_dead_slice_and_a_new_one() -> None:
    dead = find_slice(fixed_state(), [], "pl_gone")
    assert dead is not None and dead.status == "dead" and dead.xid == 14
    doc = show_json(dead, NOW)
    assert doc["ledger"] == {"xid": 14, "died_at": NOW - 7200, "expires_at": dead.ledger.expires_s}
    assert doc["classes"]["default"]["used_bytes"] == 300 * MiB and doc["origin"] is None
    text = show_text(dead, NOW)
    assert text.splitlines()[0] == "slice pl_gone xid 14: dead"
    assert "ledger: died 2h00m ago as xid 14, entry expires in 5h12m" in text

    assert "where its attributes came from is unknown" in text

    origin = {"net_max_kbyte": "rspec", "net_i2_max_kbyte": "defaults"}
    new = DesiredSlice("pl_new", 20, policy(GiB), policy(GiB, max_rate=BWMAX_BPS), origin)
    found = find_slice(fixed_state(), [new], "20")
    assert found is not None and found.status == "new" and found.name == "pl_new"
    doc = show_json(found, NOW)
    assert doc["period_end"] is None and doc["classes"]["default"]["used_bytes"] is None
    assert doc["classes"]["default"]["limit_bytes"] == GiB
    assert doc["origin"] == dict(sorted(origin.items()))
    limit_row = next(r for r in show_text(found, NOW).splitlines() if r.startswith("limit"))
    assert limit_row.split() == ["limit", "1GiB", "(rspec)", "1GiB", "(defaults)"]


def test_find_slice_by_name_xid_hex_and_a_dead_slice_s_last_xid() -> None:
    state = fixed_state()
    for text in ("pl_heavy", "10", "0xa"):
        found = find_slice(state, [], text)
        assert found is not None and found.name == "pl_heavy" and found.status == "live", text
    by_old_xid = find_slice(state, [], "15")
    assert by_old_xid is not None and by_old_xid.name == "pl_old" and by_old_xid.status == "dead"
    assert find_slice(state, [], "pl_nobody") is None
    assert find_slice(state, [], "99") is None


# --- reset -------------------------------------------------------------------------

WHO = {"user": "alice", "reason": "", "now_s": NOW}


def test_forgive_with_the_kernel_rebaselines_and_lifts_the_cap() -> None:
    state = fixed_state()
    out = forgive(state, 10, ("default", "exempt"), fixed_snapshot(), BWMIN_BPS, **WHO)
    heavy = out.state.slices[10]
    assert heavy.default.used_bytes == 0 and heavy.exempt.used_bytes == 0
    assert heavy.default.last_counter_bytes == 520_000  # the kernel's counter now
    assert heavy.exempt.last_counter_bytes == 3_200_000
    # the cap lifted, to be told (if asked for); the notice told this period stays told
    assert not heavy.default.capped and heavy.default.lift == "due"
    assert heavy.default.notified == state.slices[10].default.notified
    assert heavy.default.ceil_bps == CAP_BPS
    # the exempt class is already at its lifted rates in the kernel: no change sent
    assert out.ops == (ClassOp("change", 10, "default", ClassRates(BWMIN_BPS, CAP_BPS, 1)),)
    before = state.slices[10]
    assert (heavy.period_start_s, heavy.period_end_s) == (
        before.period_start_s,
        before.period_end_s,
    )  # the period is not restarted
    assert heavy.default.policy == before.default.policy
    assert {x: s for x, s in out.state.slices.items() if x != 10} == {
        x: s for x, s in state.slices.items() if x != 10
    }
    assert out.state.ledger == state.ledger and out.slice == heavy


def test_forgive_under_a_rolling_window_empties_the_ring_too() -> None:
    """Else the ring's next move would count the forgiven bytes again."""
    state = fixed_state()
    heavy = state.slices[10]
    ring = (*[0] * 24, heavy.default.used_bytes)
    policy = dataclasses.replace(heavy.default.policy, window_s=30 * 86400)
    windowed = dataclasses.replace(heavy.default, policy=policy, buckets=ring)
    state = dataclasses.replace(
        state, slices={**state.slices, 10: dataclasses.replace(heavy, default=windowed)}
    )
    out = forgive(state, 10, ("default",), fixed_snapshot(), BWMIN_BPS, **WHO)
    cs = out.state.slices[10].default
    assert cs.used_bytes == 0 and cs.buckets == (0,) * 25 and not cs.capped


def test_a_grant_without_an_end_under_a_window_lasts_until_bytes_sent_now_left_it() -> None:
    """Not the end of the current bucket: that would lift a month's cap for a day."""
    state = fixed_state()
    heavy = state.slices[10]
    policy = dataclasses.replace(heavy.default.policy, window_s=30 * 86400)
    ring = (*[0] * 24, heavy.default.used_bytes)
    windowed = dataclasses.replace(heavy.default, policy=policy, buckets=ring)
    state = dataclasses.replace(
        state, slices={**state.slices, 10: dataclasses.replace(heavy, default=windowed)}
    )
    done = grant(
        state, 10, ("default",), KiB, snapshot=None, bwmin_bps=BWMIN_BPS, until_s=None, **WHO
    )
    (entry,) = [e for e in done.state.audit if e.what == "grant"]
    assert entry.until_s == expiry_s(heavy.period_end_s, 30 * 86400) > NOW + 30 * 86400
    periodic = grant(
        fixed_state(),
        10,
        ("default",),
        KiB,
        snapshot=None,
        bwmin_bps=BWMIN_BPS,
        until_s=None,
        **WHO,
    )
    assert [e.until_s for e in periodic.state.audit if e.what == "grant"] == [heavy.period_end_s]


def test_forgive_one_class_leaves_the_other_alone() -> None:
    state = fixed_state()
    out = forgive(state, 13, ("exempt",), fixed_snapshot(), BWMIN_BPS, **WHO)
    bulk = out.state.slices[13]
    assert bulk.default == state.slices[13].default
    assert bulk.exempt.used_bytes == 0 and not bulk.exempt.capped
    assert out.ops == (ClassOp("change", 13, "exempt", ClassRates(BWMIN_BPS, BWMAX_BPS, 1)),)


def test_forgive_without_the_kernel_keeps_the_saved_counter() -> None:
    state = fixed_state()
    out = forgive(state, 10, ("default",), None, BWMIN_BPS, **WHO)
    heavy = out.state.slices[10]
    assert heavy.default.used_bytes == 0 and heavy.default.last_counter_bytes == 500_000
    assert not heavy.default.capped and heavy.default.lift == "due"
    assert heavy.default.ceil_bps == 72_000  # unchanged until the next cycle lifts it
    assert out.ops == ()


def test_after_a_reset_the_next_cycle_counts_only_new_bytes_and_stays_uncapped() -> None:
    state = fixed_state()
    snapshot = fixed_snapshot()
    out = forgive(state, 10, ("default", "exempt"), snapshot, BWMIN_BPS, **WHO)
    lifted = KernelSlice(10, kclass(520_000 + 5_000, CAP_BPS), kclass(3_200_000, BWMAX_BPS))
    after = dataclasses.replace(snapshot, slices={**snapshot.slices, 10: lifted})
    want = DesiredSlice(
        "pl_heavy", 10, state.slices[10].default.policy, state.slices[10].exempt.policy
    )
    planned = plan(DesiredSet((want,)), after, out.state, PlanParams(86_400, None, BWMIN_BPS), NOW)
    line = next(line for line in planned.lines if line.xid == 10)
    assert line.default.used_bytes == 5_000 and not line.default.capped
    assert line.default.new_ceil_bps == CAP_BPS
    assert not [a for a in planned.actions if isinstance(a, SetRates) and a.xid == 10]


def test_forgive_lifts_to_the_rates_of_a_usage_of_zero_a_tier_from_zero_holds() -> None:
    state = fixed_state()
    heavy = state.slices[10]
    policy = dataclasses.replace(heavy.default.policy, tiers="0%:1mbit")
    heavy = dataclasses.replace(heavy, default=dataclasses.replace(heavy.default, policy=policy))
    state = dataclasses.replace(state, slices={**state.slices, 10: heavy})
    out = forgive(state, 10, ("default",), fixed_snapshot(), BWMIN_BPS, **WHO)
    assert out.ops == (ClassOp("change", 10, "default", ClassRates(BWMIN_BPS, 1_000_000, 1)),)
    assert out.slice.default.capped and out.slice.default.used_bytes == 0


def test_a_reset_joins_the_audit_with_who_when_why_and_how_much() -> None:
    state = fixed_state()
    out = forgive(
        state, 10, ("default", "exempt"), None, BWMIN_BPS, user="bob", reason="oops", now_s=NOW
    )
    assert out.state.audit == (
        AuditEntry("reset", "pl_heavy", "default", 190 * KiB, "bob", NOW, NOW, "oops"),
        AuditEntry("reset", "pl_heavy", "exempt", 3 * MiB, "bob", NOW, NOW, "oops"),
    )
    assert out.state.resets == state.resets + 1


def test_reset_line_names_operator_slice_and_changes() -> None:
    state = fixed_state()
    out = forgive(state, 10, ("default",), fixed_snapshot(), BWMIN_BPS, **WHO)
    line = reset_line("alice", state.slices[10], out.slice, ("default",))
    assert line == (
        "reset by operator alice: slice pl_heavy xid 10: default used 190KiB → 0,"
        " ceil 72kbit/s → 10Mbit/s"
    )


def test_reset_line_without_the_kernel_says_when_the_cap_goes() -> None:
    state = fixed_state()
    out = forgive(state, 10, ("default", "exempt"), None, BWMIN_BPS, **WHO)
    line = reset_line("alice", state.slices[10], out.slice, ("default", "exempt"))
    assert line.endswith(
        "default used 190KiB → 0, ceil 72kbit/s until the next cycle; exempt used 3MiB → 0"
    )


def test_show_and_explain_count_the_carried_bytes_like_a_grant() -> None:
    """pl_heavy (190 KiB used, 200 KiB limit, capped from 100 KiB) carrying 150 KiB from
    its period before: show prints the bound and the carried bytes, explain adds them to
    the budget and its rule sees 40 KiB (not capped).
    """
    from bwenforcer.views.explain import explain_json, explain_text, explain_view

    report = heavy_report()
    st_ = report.live
    policy_ = dataclasses.replace(st_.default.policy, rollover_bytes=150 * KiB)
    cs = dataclasses.replace(st_.default, policy=policy_, carried_bytes=150 * KiB)
    report = dataclasses.replace(report, live=dataclasses.replace(st_, default=cs))
    text = show_text(report, NOW)
    assert re.search(r"rollover +150KiB", text) and re.search(r"carried +\+150KiB", text)
    doc = show_json(report, NOW)["classes"]["default"]
    assert (doc["carried_bytes"], doc["rollover_bytes"]) == (150 * KiB, 150 * KiB)
    view = explain_view(
        report, {"default": CAP_BPS, "exempt": BWMAX_BPS}, bwmin_bps=8_000, now_s=NOW
    )
    classes = explain_json(view)["classes"]
    assert classes["default"]["carried_bytes"] == 150 * KiB
    assert classes["default"]["counted_bytes"] == 40 * KiB and classes["default"]["rule"] is None
    assert "+ 150KiB rolled over" in explain_text(view)

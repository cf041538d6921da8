"""Every command's JSON names one concept one way, and README's "JSON keys" table lists them.

The pure part feeds the JSON builders plain data covering every object they print
(every plan action, a ledger entry, history, kernel classes); the kernel part runs
each command with ``--json`` on a node in a throwaway namespace.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bwenforcer.commands.state import operator_json
from bwenforcer.commands.tc import get_rows
from bwenforcer.core.model import AuditEntry, ClassRates, DesiredSet
from bwenforcer.core.plan import (
    Adopt,
    CreateClass,
    Inherit,
    MoveToLedger,
    NewPeriod,
    Notify,
    PurgeLedger,
    RemoveClasses,
    Revive,
    Rollover,
    SetInboundLimit,
    SetRates,
)
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.cycle.executor import Outcome
from bwenforcer.cycle.run import CycleResult
from bwenforcer.history.usage import ReportRow
from bwenforcer.store.codec import audit_dict, state_to_json
from bwenforcer.views.explain import explain_json, explain_view
from bwenforcer.views.plan import action_json, result_json
from bwenforcer.views.policy import PolicyView, policy_json, policy_view
from bwenforcer.views.report import INBOUND_KEYS, row_json
from bwenforcer.views.show import find_slice, show_json
from bwenforcer.views.status import ledger_json, status_json
from tests.cli.test_cli_inspect import write_config
from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns
from tests.views.test_inspection import (
    BWMIN_BPS,
    NOW,
    GiB,
    desired_heavy,
    fixed_snapshot,
    fixed_state,
    heavy_report,
)

README = Path(__file__).resolve().parents[2] / "README.md"

# key -> concept. One concept, one key; the only exception is the slice's name, which
# docs/interfaces.md fixes as `slice` in `tc get` rows and `name` in `status` objects.
KEYS = {
    # who and what
    "name": "slice name",
    "slice": "slice name",
    "xid": "xid",
    "old_xid": "xid before a revival",
    "old_name": "name of the slice whose xid a new one goes on with",
    "status": "live, dead or new",
    "unit": "cgroup tenant's unit",
    "cgroup": "cgroup tenant's cgroup",
    "traffic_class": "traffic class",
    "classes": "the classes",
    "default": "default class",
    "exempt": "exempt class",
    "action": "plan action",
    "reason": "why an action",
    "by": "bucket size",
    "result": "cycle result",
    # bytes
    "used_bytes": "bytes used this period",
    "limit_bytes": "budget",
    "threshold_bytes": "threshold",
    "delta_bytes": "bytes counted this cycle",
    "last_counter_bytes": "kernel counter at the last cycle",
    "uncounted_bytes": "bytes not yet counted",
    "bytes": "kernel byte counter (default class)",
    "exempt_bytes": "bytes of the exempt class",
    "default_bytes": "bytes of the default class",
    "peak_hour_bytes": "busiest hour's bytes",
    # rates, bit/s
    "min_rate": "guaranteed rate",
    "max_rate": "ceil allowed",
    "exempt_min_rate": "exempt guaranteed rate",
    "exempt_max_rate": "exempt ceil allowed",
    "ceil": "ceil in force",
    "old_ceil": "ceil before the cycle",
    "new_ceil": "ceil after the cycle",
    "share": "share",
    "rates": "rates of a created class",
    "old": "rates before a change",
    "new": "rates after a change",
    # instants, Unix seconds
    "period_start": "period start",
    "period_end": "period end",
    "bucket_start": "bucket start",
    "died_at": "slice death",
    "expires_at": "ledger expiry",
    "saved_at": "state save",
    "clock_ref_at": "clock reference",
    "now": "cycle time",
    # durations, seconds
    "duration_s": "cycle duration",
    "capped_default_s": "default class capped time",
    "capped_exempt_s": "exempt class capped time",
    "boottime_s": "boot clock at the clock reference",
    # flags and counts
    "capped": "capped",
    "notified": "notified",
    "dry_run": "dry run",
    "limiting_off": "limiting off",
    "kernel_available": "kernel readable",
    "mails_sent": "mails sent",
    "mails_failed": "mails failed",
    "mails_deferred": "mails deferred",
    "resets": "operator resets",
    "boot_id": "boot of the clock reference",
    "missing": "slices gone from their source, in their grace",
    # containers and the rest
    "slices": "slices",
    "ledger": "ledger",
    "history": "history",
    "actions": "actions",
    "kernel": "kernel class",
    "next_cycle": "policy of the next cycle",
    "origin": "attribute origins",
    "failures": "failures",
    "source_errors": "bad slices",
    "recovered_from": "backup used",
    "schema_version": "state schema",
    "tiers": "tiers",
    "taper": "taper",
    "pacing": "pacing on",
    "window_s": "rolling window's length",
    "buckets": "rolling window's bytes per bucket",
    "rows": "policy table rows",
    "grants": "operator grants",
    "audit": "operators' grants and resets",
    "cycles": "cycles planned and saved",
    "what": "grant or reset",
    "size_bytes": "bytes granted or forgiven",
    "user": "invoking user",
    "at": "when an operator acted",
    "until": "grant in force until",
    "granted_bytes": "bytes granted in force",
    "counted_bytes": "usage the rules see",
    "explanation": "the rule with its numbers",
    "planned_ceil": "ceil the last cycle planned",
    "rule_ceil": "the rule's ceil now",
    "kernel_ceil": "ceil the kernel holds",
    "differs": "kernel differs from the plan",
    "last_hour_rate": "rate of the last hour",
    "exhausted_at": "when the budget runs out",
    "used_percent": "usage as a share of the limit",
    "rule": "the rule that sets the ceil",
    "writer": "state writer",
    "in_used_bytes": "received this period",
    "in_last_counter_bytes": "inbound counter seen last",
    "in_delta_bytes": "received this cycle",
    "in_limit": "inbound limit in force",
    "in_old_limit": "inbound limit before the cycle",
    "in_new_limit": "inbound limit after the cycle",
    "direction": "what the budget counts",
    "in_default_bytes": "received by the default class",
    "in_exempt_bytes": "received by the exempt class",
    "kind": "which notice",
    "share_bp": "share a notice tells",
    "notice_bp": "highest share told",
    "lift": "lift of a cap told",
    "notices": "early notices of a class",
    "carried_bytes": "bytes rolled over from the period before",
    "rollover_bytes": "rollover bound",
}


def keys_of(doc: Any, data_maps: frozenset[str] = frozenset(), path: str = "") -> Iterator[str]:
    """Every key of ``doc`` except those of maps keyed by data (paths in ``data_maps``)."""
    if isinstance(doc, list):
        for item in doc:
            yield from keys_of(item, data_maps, f"{path}[]")
    elif isinstance(doc, dict):
        for key, value in doc.items():
            child = f"{path}.*" if path in data_maps else f"{path}.{key}"
            if path not in data_maps:
                yield key
            yield from keys_of(value, data_maps, child)


def readme_keys() -> set[str]:
    """The keys of README's "JSON keys" table (first column, backticked)."""
    text = README.read_text()
    section = text.split("## JSON keys", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", section, re.MULTILINE))


def test_the_table_has_one_key_per_concept_and_is_the_readme_table() -> None:
    by_concept = defaultdict(list)
    for key, concept in KEYS.items():
        by_concept[concept].append(key)
    doubled = {c: k for c, k in by_concept.items() if len(k) > 1}
    assert doubled == {"slice name": ["name", "slice"]}
    assert readme_keys() == set(KEYS)


ALL_ACTIONS = (
    CreateClass("pl_a", 1, "default", ClassRates(8_000, 10**6, 1), "new"),
    SetRates("pl_a", 1, "exempt", ClassRates(8_000, 10**6, 1), ClassRates(8_000, 10**5, 1)),
    RemoveClasses(None, 2, "orphan"),
    Adopt("pl_a", 1),
    MoveToLedger("pl_b", 3),
    Revive("pl_b", 4, 3),
    Inherit("pl_d", 3, "pl_b"),
    PurgeLedger("pl_c"),
    NewPeriod("pl_a", 1, NOW, NOW + 86_400),
    Rollover("pl_a", 1, "default", 10**9),
    Notify("pl_a", 1, ("default", "exempt")),
    SetInboundLimit("pl_a", 1, "default", None, 2_000_000),
)


AUDIT = (
    AuditEntry("grant", "pl_heavy", "default", 10**9, "alice", NOW, NOW + 600, "conference"),
    AuditEntry("reset", "pl_heavy", "exempt", 5, "bob", NOW, NOW, ""),
)


def _policy_view() -> PolicyView:
    want = desired_heavy()
    tiered = dataclasses.replace(want.default, tiers="50%:1mbit", taper="10%-40%:2mbit")
    caps = {"default": 10**7, "exempt": 10**8}
    return policy_view(
        want.name,
        want.xid,
        {"default": tiered, "exempt": want.exempt},
        caps,
        bwmin_bps=BWMIN_BPS,
        now_s=NOW,
        period_end_s=NOW + 3600,
    )


def pure_documents() -> dict[str, tuple[Any, frozenset[str]]]:
    """Each command's JSON built from plain data, with the paths of its data-keyed maps."""
    state = fixed_state()
    planned = plan(
        DesiredSet((desired_heavy(),)),
        fixed_snapshot(),
        state,
        PlanParams(86_400, None, BWMIN_BPS),
        NOW,
    )
    applied = CycleResult(NOW, 0.01, planned, Outcome(planned.state, mails_sent=1))
    report = ReportRow("pl_a", "day", NOW, 1, 2, 3, 4, 5)
    return {
        "tc get": (get_rows(fixed_snapshot(), None, {10: "pl_heavy"}), frozenset()),
        "sync --dry-run": (result_json(CycleResult(NOW, 0.01, planned, None)), frozenset()),
        "sync": (result_json(applied), frozenset()),
        "sync actions": ([action_json(a) for a in ALL_ACTIONS], frozenset()),
        "status": (status_json(state, fixed_snapshot()), frozenset()),
        "status (cgroups)": (
            status_json(state, fixed_snapshot(), units={"pl_heavy": "heavy.scope"}),
            frozenset(),
        ),
        "status (inbound)": (status_json(state, fixed_snapshot(), inbound=True), frozenset()),
        "ledger": (ledger_json(state), frozenset()),
        "show": (show_json(heavy_report(), NOW), frozenset({".origin"})),
        "show (inbound)": (
            show_json(replace(heavy_report(), inbound=True), NOW),
            frozenset({".origin"}),
        ),
        "show (cgroup)": (
            show_json(
                replace(heavy_report(), unit="heavy.scope", cgroup="m.slice/heavy.scope"), NOW
            ),
            frozenset({".origin"}),
        ),
        "report": ([row_json(report)], frozenset()),
        "report (inbound)": ([row_json(report, INBOUND_KEYS)], frozenset()),
        "policy": (policy_json(_policy_view()), frozenset()),
        "show, audit": (
            show_json(dataclasses.replace(heavy_report(), audit=AUDIT), NOW),
            frozenset({".origin"}),
        ),
        "state show, audit": (
            operator_json(state_to_json(dataclasses.replace(state, audit=AUDIT), NOW, view=True)),
            frozenset({".slices", ".ledger"}),
        ),
        "grant": ({"audit": [audit_dict(a) for a in AUDIT]}, frozenset()),
        "explain": (
            explain_json(
                explain_view(
                    dataclasses.replace(
                        heavy_report(), audit=AUDIT, kernel=fixed_snapshot().slices[10]
                    ),
                    {"default": 10**7, "exempt": 10**8},
                    bwmin_bps=BWMIN_BPS,
                    now_s=NOW,
                )
            ),
            frozenset(),
        ),
        "state show": (
            operator_json(state_to_json(state, NOW, view=True)),
            frozenset({".slices", ".ledger"}),
        ),
    }


@pytest.mark.parametrize("command", list(pure_documents()))
def test_every_key_is_in_the_table(command: str) -> None:
    doc, data_maps = pure_documents()[command]
    unknown = sorted(set(keys_of(doc, data_maps)) - set(KEYS))
    assert unknown == [], f"{command} --json: keys not in the table: {unknown}"


def test_a_slice_named_like_a_key_keeps_its_name_in_state_show() -> None:
    from bwenforcer.core.model import LedgerEntry, SliceState, State
    from tests.views.test_inspection import cls

    st = SliceState("ceil_bps", 5, NOW, NOW + 86_400, cls(0, GiB), cls(0, GiB))
    doc = operator_json(
        state_to_json(State(ledger={"ceil_bps": LedgerEntry(st, NOW)}), NOW, view=True)
    )
    assert (
        list(doc["ledger"]) == ["ceil_bps"]
        and "ceil" in doc["ledger"]["ceil_bps"]["slice"]["classes"]["default"]
    )


# --- the real commands on a node ------------------------------------------------------

SLICES = """slices:
  - {name: pl_alice, xid: 1301, rspec: {net_max_kbyte: 100}}
  - {name: pl_bob, xid: 1302, rspec: {}}
"""


@pytest.mark.kernel
def test_every_command_on_a_node_prints_only_keys_of_the_table(ns: Netns, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, device="v0")
    cfg.write_text(cfg.read_text() + "vanish_grace: 0s\n")  # a slice gone: to the ledger now
    (tmp_path / "slices.yaml").write_text(SLICES)

    def doc(*argv: str) -> Any:
        done = bwenforcer_in(ns, *argv, "--config", str(cfg))
        assert done.returncode == 0, (argv, done.stderr)
        return json.loads(done.stdout)

    assert bwenforcer_in(ns, "tc", "init", "-q", "--config", str(cfg)).returncode == 0
    docs = {"sync --dry-run": (doc("sync", "--dry-run", "--json"), frozenset())}
    docs["sync"] = (doc("sync", "--json"), frozenset())
    (tmp_path / "slices.yaml").write_text(SLICES.replace("{}", "{net_max_rate: 2000}"))
    docs["sync, a rate changed"] = (doc("sync", "--json"), frozenset())
    (tmp_path / "slices.yaml").write_text(SLICES.split("  - {name: pl_bob", maxsplit=1)[0])
    docs["sync, a slice gone"] = (doc("sync", "--json"), frozenset())
    docs["tc get"] = (doc("tc", "get", "--json"), frozenset())
    docs["status"] = (doc("status", "--json"), frozenset())
    docs["show"] = (doc("show", "pl_alice", "--json"), frozenset({".origin"}))
    docs["show dead"] = (doc("show", "pl_bob", "--json"), frozenset({".origin"}))
    docs["ledger"] = (doc("ledger", "--json"), frozenset())
    docs["report"] = (doc("report", "--json"), frozenset())
    docs["state show"] = (
        doc("state", "show", "--json"),
        frozenset({".slices", ".ledger", ".missing"}),
    )
    docs["policy"] = (doc("policy", "pl_alice", "--json"), frozenset())
    docs["explain"] = (doc("explain", "pl_alice", "--json"), frozenset())

    actions = {a["action"] for a in docs["sync, a rate changed"][0]["actions"]}
    assert "set_rates" in actions
    assert docs["ledger"][0]["ledger"][0]["name"] == "pl_bob"
    for command, (found, data_maps) in docs.items():
        unknown = sorted(set(keys_of(found, data_maps)) - set(KEYS))
        assert unknown == [], f"{command} --json: keys not in the table: {unknown}"


INTERFACES = README.parent / "docs" / "interfaces.md"


def documented_show_keys() -> dict[str, set[str]]:
    """docs/interfaces.md's ``show --json`` bullet as {object: keys}: "" the document,
    "class" a class, and each `name`: `{keys}` of a nested object."""
    text = INTERFACES.read_text()
    bullet = text[text.index("- `show --json`") : text.index("- `sync --json`")]
    bullet = " ".join(bullet.split())
    body = bullet.split(":", 1)[1]
    top = re.search(r"`([a-z_ ]+)`", body)
    a_class = re.search(r"a class \([^)]*\): `([a-z_ ]+)`", body)
    assert top is not None and a_class is not None, bullet
    keys = {"": set(top[1].split()), "class": set(a_class[1].split())}
    for name, inner in re.findall(r"`([a-z_]+)`: (?:[^`]*?)`\{([a-z_ ]+)\}`", body):
        keys[name] = set(inner.split())
    return keys


def test_the_show_json_keys_of_docs_interfaces_are_the_outputs() -> None:
    dead = find_slice(fixed_state(), [], "pl_gone")
    assert dead is not None and dead.ledger is not None
    live, gone = show_json(heavy_report(), NOW), show_json(dead, NOW)
    entry = AuditEntry("grant", "pl_heavy", "default", 10**9, "alice", NOW, NOW + 60, "why")
    audited = show_json(replace(heavy_report(), audit=(entry,)), NOW)
    default = live["classes"]["default"]
    assert default["kernel"] and default["next_cycle"] and live["history"] and gone["ledger"]
    actual = {
        "": set(live),
        "class": set(default),
        "kernel": set(default["kernel"]),
        "next_cycle": set(default["next_cycle"]),
        "ledger": set(gone["ledger"]),
        "history": set(live["history"][0]),
        "audit": set(audited["audit"][0]),
    }
    assert set(gone) == actual[""] and set(gone["classes"]["exempt"]) == actual["class"]
    assert documented_show_keys() == actual

"""The state file's ledger (schema.LEDGER) in its compact form, encoded and decoded.

Each entry is an array (schema.LEDGER_ENTRY) whose classes name their policies
by index into the ledger's ``policies`` table:

- :func:`ledger_file_json`, the dict form;
- :class:`LedgerEncoder`, its compact text, reusing the text of entries that wait
  unchanged (the save of every cycle);
- :func:`ledger_from`, a fast decoder per entry, then the strict one naming the JSON
  path of the first problem in one line.

Also the strict decoder's checks (:data:`_CHECKS`, :func:`_object`), which
:mod:`bwenforcer.store.codec` shares for the rest of the state.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

from bwenforcer.core.layout import DEFAULT_XID
from bwenforcer.core.model import ClassPolicy, ClassState, LedgerEntry, SliceState
from bwenforcer.core.notices import MAX_NOTICE_SHARE_BP
from bwenforcer.store.schema import (
    ENTRY_CLASS,
    KIND_SCOPE,
    KINDS,
    LEDGER_ENTRY,
    LEDGER_KEYS,
    POLICY,
    WINDOWS_DIFFER,
    Field,
    corrupt,
    ring_problem,
    ring_text,
)

_POLICY = "policy."  # CLASS attributes on the class's ClassPolicy
_JSON_BOOL = {False: "false", True: "true"}
_LIFT = {"": '""', "due": '"due"', "sent": '"sent"'}  # ClassState.lift as JSON
_Policies = dict[tuple[object, ...], ClassPolicy]  # the decoders' shared policies, by value

_CHECKS = {
    kind: (eval(f"lambda v: {expr}", dict(KIND_SCOPE)), problem)
    for kind, (expr, problem) in KINDS.items()
}
_ring_ok = _CHECKS["buckets"][0]


def _object(value: object, keys: frozenset[str], source: str, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise corrupt(source, path, "expected an object")
    if value.keys() != keys:
        missing = sorted(keys - value.keys())
        if missing:
            raise corrupt(source, path, f"missing key {missing[0]!r}")
        unknown = sorted(str(k) for k in value.keys() - keys)
        raise corrupt(source, path, f"unknown key {unknown[0]!r}")
    return value


# --- the dict form -----------------------------------------------------------------------

_ENTRY_GET = tuple(attrgetter(f.attr) for f in LEDGER_ENTRY)
_ENTRY_CLASS_GET = tuple(attrgetter(f.attr) for f in ENTRY_CLASS[:-1])
_POLICY_GET = tuple(attrgetter(f.attr.removeprefix(_POLICY)) for f in POLICY)
_POLICY_NAMES = tuple(p.name for p in dataclasses.fields(ClassPolicy))


def ledger_file_json(ledger: Mapping[str, LedgerEntry]) -> dict[str, Any]:
    """The state file's ``ledger`` object (schema.LEDGER): each entry an array, its
    classes' policies by index into ``policies`` (in the order of first use).
    """
    index: dict[ClassPolicy, int] = {}
    table: list[list[object]] = []
    entries: dict[str, list[object]] = {}
    for name, entry in ledger.items():
        values: list[object] = []
        for f, get in zip(LEDGER_ENTRY, _ENTRY_GET, strict=True):
            value = get(entry)
            if f.kind == "entry_class":
                at = index.get(value.policy)
                if at is None:
                    at = index[value.policy] = len(table)
                    table.append([g(value.policy) for g in _POLICY_GET])
                # the ring (buckets) is a tuple in the model, a list in the file
                own = (g(value) for g in _ENTRY_CLASS_GET)
                value = [*(list(v) if type(v) is tuple else v for v in own), at]
            values.append(value)
        entries[name] = values
    return {"policies": table, "entries": entries}


# --- the text encoder --------------------------------------------------------------------

# the ledger's policies an encoder keeps before it starts its table over (each policy
# change of the slices file adds its new policies)
_MAX_LEDGER_POLICIES = 1024


class LedgerEncoder:
    """Encodes ledgers as the compact JSON of :func:`ledger_file_json`, entry by entry.

    Each ledger entry's text is kept with the entry it was made from: an entry waits
    unchanged (the very object) until it expires or is revived, so a cycle does not
    encode its ledger again (40,000 entries: 0.3 s a cycle).
    """

    def __init__(self) -> None:
        self._ledger: dict[str, tuple[LedgerEntry, bytes]] = {}
        # the whole ledger's text with the mapping it was made from: a cycle where no
        # entry came or went hands the very mapping on, and nothing is looked at
        self._ledger_whole: tuple[object, bytes] | None = None
        # the ledger's policies (schema.LEDGER): each one's index and text, kept with the
        # entries' texts that name them by index (started over when they pile up)
        self._ledger_policies: dict[ClassPolicy, int] = {}
        self._ledger_policy_texts: list[str] = []

    def encode(self, ledger: Mapping[str, LedgerEntry]) -> bytes:
        """The ledger object's text; the very text of the last call for the very mapping."""
        whole = self._ledger_whole
        if whole is None or whole[0] is not ledger:
            whole = self._ledger_whole = (ledger, self._ledger_text(ledger))
        return whole[1]

    def _ledger_text(self, ledger: Mapping[str, LedgerEntry]) -> bytes:
        """The ledger object's text (:func:`ledger_file_json`), each entry's ``"name":[…]``
        kept from the last encode when the entry is the very object it was made from.
        """
        if len(self._ledger_policy_texts) > _MAX_LEDGER_POLICIES:
            self._ledger, self._ledger_policies, self._ledger_policy_texts = {}, {}, []
        kept, fresh = self._ledger, {}
        texts = []
        for name, entry in ledger.items():
            hit = kept.get(name)
            if hit is None or hit[0] is not entry:
                hit = (entry, f"{json.dumps(name)}:{self._entry_text(entry)}".encode())
            fresh[name] = hit
            texts.append(hit[1])
        self._ledger = fresh  # entries gone from the ledger are forgotten
        policies = ",".join(self._ledger_policy_texts)
        entries = b",".join(texts)
        return b'{"policies":[' + policies.encode() + b'],"entries":{' + entries + b"}}"

    def _entry_text(self, entry: LedgerEntry) -> str:
        """An entry's array (schema.LEDGER_ENTRY; the order is held to ledger_file_json's by
        a test): died_at, xid, period, then each class's ENTRY_CLASS array.
        """
        st = entry.slice
        d, e = st.default, st.exempt
        return (
            f"[{entry.died_s},{st.xid},{st.period_start_s},{st.period_end_s},"
            f"[{d.used_bytes},{d.last_counter_bytes},{d.ceil_bps},{_JSON_BOOL[d.capped]},"
            f"{_JSON_BOOL[d.notified]},{ring_text(d.buckets)},{d.notice_bp},{_LIFT[d.lift]},"
            f"{d.carried_bytes},{d.in_used_bytes},{d.in_last_counter_bytes},{d.in_limit_bps},"
            f"{self._policy_at(d.policy)}],"
            f"[{e.used_bytes},{e.last_counter_bytes},{e.ceil_bps},{_JSON_BOOL[e.capped]},"
            f"{_JSON_BOOL[e.notified]},{ring_text(e.buckets)},{e.notice_bp},{_LIFT[e.lift]},"
            f"{e.carried_bytes},{e.in_used_bytes},{e.in_last_counter_bytes},{e.in_limit_bps},"
            f"{self._policy_at(e.policy)}]]"
        )

    def _policy_at(self, policy: ClassPolicy) -> int:
        at = self._ledger_policies.get(policy)
        if at is None:
            at = self._ledger_policies[policy] = len(self._ledger_policy_texts)
            values = [g(policy) for g in _POLICY_GET]
            self._ledger_policy_texts.append(json.dumps(values, separators=(",", ":")))
        return at


# --- the decoders ------------------------------------------------------------------------


def ledger_from(
    value: dict[str, Any], policies: _Policies, source: str, path: str
) -> dict[str, LedgerEntry]:
    """The ledger object's entries by name, or StateCorrupt naming the first problem."""
    d = _object(value, LEDGER_KEYS, source, path)
    raw = d["policies"]
    if type(raw) is not list:
        raise corrupt(source, f"{path}.policies", "expected a list")
    table = [_policy_from(p, policies, source, f"{path}.policies[{i}]") for i, p in enumerate(raw)]
    entries = d["entries"]
    if type(entries) is not dict:
        raise corrupt(source, f"{path}.entries", "expected an object")
    fast = _entry_fast
    return {
        name: fast(name, e, table) or _entry_from(name, e, table, source, f"{path}.entries.{name}")
        for name, e in entries.items()
    }


def _items(value: object, fields: tuple[Field, ...], source: str, path: str) -> list[Any]:
    """The checked values of an array of ``fields`` (the strict decoder's)."""
    if type(value) is not list or len(value) != len(fields):
        raise corrupt(source, path, f"expected a list of {len(fields)} values")
    out = []
    for i, f in enumerate(fields):
        v = value[i]
        where = f"{path}[{i}]"
        check, problem = _CHECKS[f.kind]
        if not check(v):
            raise corrupt(source, where, problem)
        if f.max is not None and v > f.max:
            raise corrupt(source, where, f"{v} out of range 0..{f.max}")
        if f.after and v < value[[g.key for g in fields].index(f.after)]:
            raise corrupt(source, where, f"before {f.after}")
        out.append(v)
    return out


def _policy_from(value: object, policies: _Policies, source: str, path: str) -> ClassPolicy:
    found = dict(
        zip(
            (f.attr.removeprefix(_POLICY) for f in POLICY),
            _items(value, POLICY, source, path),
            strict=True,
        )
    )
    key = tuple(found[n] for n in _POLICY_NAMES)
    policy = policies.get(key)
    if policy is None:
        policy = policies[key] = ClassPolicy(*key)
    return policy


_ENTRY_SCALARS = tuple(f for f in LEDGER_ENTRY if f.kind != "entry_class")


def _entry_class_from(
    value: object, table: list[ClassPolicy], source: str, path: str
) -> ClassState:
    values = _items(value, ENTRY_CLASS, source, path)
    *own, at = values
    if at >= len(table):
        raise corrupt(
            source, f"{path}[{len(own)}]", f"policy {at} not in the ledger's {len(table)}"
        )
    kw = dict(zip((f.attr for f in ENTRY_CLASS[:-1]), own, strict=True))
    problem = ring_problem(kw["used_bytes"], kw["buckets"], table[at].window_s)
    if problem is not None:
        ring_at = [f.attr for f in ENTRY_CLASS].index("buckets")
        raise corrupt(source, f"{path}[{ring_at}]", problem)
    kw["buckets"] = tuple(kw["buckets"])
    return ClassState(policy=table[at], **kw)


def _entry_from(
    name: str, value: object, table: list[ClassPolicy], source: str, path: str
) -> LedgerEntry:
    """A ledger entry (schema.LEDGER_ENTRY), or StateCorrupt naming it and the problem."""
    if name == "":
        raise corrupt(source, path, "expected a non-empty slice name")
    if type(value) is not list or len(value) != len(LEDGER_ENTRY):
        raise corrupt(source, path, f"expected a list of {len(LEDGER_ENTRY)} values")
    _items(value[: len(_ENTRY_SCALARS)], _ENTRY_SCALARS, source, path)
    found: dict[str, Any] = {"name": name}
    died_s = 0
    for i, f in enumerate(LEDGER_ENTRY):
        if f.kind == "entry_class":
            found[f.attr.removeprefix("slice.")] = _entry_class_from(
                value[i], table, source, f"{path}[{i}]"
            )
            if f.attr == "slice.exempt" and (
                found["exempt"].policy.window_s != found["default"].policy.window_s
            ):
                raise corrupt(source, f"{path}[{i}]", WINDOWS_DIFFER)
        elif f.attr == "died_s":
            died_s = value[i]
        else:
            found[f.attr.removeprefix("slice.")] = value[i]
    return LedgerEntry(SliceState(**found), died_s)


def _entry_class_fast(c: object, table: list[ClassPolicy]) -> ClassState | None:
    if type(c) is not list or len(c) != 13:
        return None
    (
        used,
        last,
        ceil,
        capped,
        notified,
        ring,
        told,
        lift,
        carried,
        in_used,
        in_last,
        in_limit,
        at,
    ) = c
    if (
        type(used) is int
        and used >= 0
        and type(last) is int
        and last >= 0
        and type(ceil) is int
        and ceil >= 0
        and type(capped) is bool
        and type(notified) is bool
        and type(told) is int
        and 0 <= told <= MAX_NOTICE_SHARE_BP
        and lift in _LIFT
        and type(carried) is int
        and carried >= 0
        and type(in_used) is int
        and in_used >= 0
        and type(in_last) is int
        and in_last >= 0
        and type(in_limit) is int
        and in_limit >= 0
        and type(at) is int
        and 0 <= at < len(table)
        and _ring_ok(ring)
        and ring_problem(used, ring, table[at].window_s) is None
    ):
        return ClassState(
            table[at], used, last, ceil, capped, notified, told, lift, tuple(ring), carried,
            in_used, in_last, in_limit,
        )  # fmt: skip
    return None


def _entry_fast(name: str, value: object, table: list[ClassPolicy]) -> LedgerEntry | None:
    """A sound ledger entry, or None (the strict decoder then names the problem)."""
    if type(value) is not list or len(value) != 6 or name == "":
        return None
    died, xid, start, end, d, e = value
    if not (
        type(died) is int
        and died >= 0
        and type(xid) is int
        and 0 <= xid <= DEFAULT_XID
        and type(start) is int
        and start >= 0
        and type(end) is int
        and end >= start
    ):
        return None
    cd = _entry_class_fast(d, table)
    ce = _entry_class_fast(e, table)
    if cd is None or ce is None or cd.policy.window_s != ce.policy.window_s:
        return None
    return LedgerEntry(SliceState(name, xid, start, end, cd, ce), died)

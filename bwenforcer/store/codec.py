"""The state file's codec: State ⇄ JSON, every piece derived from stateschema's tables.

Four forms, all made from :mod:`bwenforcer.store.schema` (the fast ones compiled once
at import, with exec, like :func:`bwenforcer.core.model.fast_init`):

- :func:`state_to_json`, the dict form (``state show --json``, tests);
- :class:`StateEncoder`, the compact text of the same dict, reusing the text of
  unchanged slices (the save of every cycle);
- a fast decoder per slice and class: one key-set comparison and inline checks,
  None at the first doubt;
- the strict decoder, a loop over the tables naming the JSON path of the first
  problem in one line (run where the fast one gave up).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

from bwenforcer.core.grants import MAX_AUDIT
from bwenforcer.core.layout import DEFAULT_XID, TRAFFIC_CLASSES
from bwenforcer.core.model import (
    AuditEntry,
    ClassPolicy,
    ClassState,
    LedgerEntry,
    SliceState,
    State,
    ordered_ledger,
)
from bwenforcer.core.notices import MAX_NOTICE_SHARE_BP
from bwenforcer.store.schema import (
    AUDIT_ENTRY,
    AUDIT_KEYS,
    CLASS,
    CLASS_KEYS,
    CLASSES_KEYS,
    ENTRY_CLASS,
    KIND_SCOPE,
    KINDS,
    LEDGER_ENTRY,
    LEDGER_KEYS,
    POLICY,
    SCHEMA_VERSION,
    SLICE,
    SLICE_KEYS,
    TOP,
    TOP_KEYS,
    WRITER,
    Field,
    class_dict_maker,
    corrupt,
    dict_maker,
    migrate,
    slice_dict_maker,
)

_POLICY = "policy."  # CLASS attributes on the class's ClassPolicy
_JSON_BOOL = {False: "false", True: "true"}
_LIFT = {"": '""', "due": '"due"', "sent": '"sent"'}  # ClassState.lift as JSON


def _top_value(f: Field, state: State, now_s: int) -> object:
    """A scalar of the top object: the file-only ones are constants; saving stamps the time."""
    if f.kind == "version":
        return SCHEMA_VERSION
    if not f.attr:
        return WRITER
    return now_s if f.attr == "saved_s" else getattr(state, f.attr)


# --- the dict form -----------------------------------------------------------------------

_class_dict = class_dict_maker("_class_dict")
_slice_dict = slice_dict_maker("_slice_dict", _class_dict)
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
                value = [*(g(value) for g in _ENTRY_CLASS_GET), at]
            values.append(value)
        entries[name] = values
    return {"policies": table, "entries": entries}


def ledger_view(ledger: Mapping[str, LedgerEntry]) -> dict[str, Any]:
    """The ledger as schema 4 wrote it and ``state show --json`` prints it:
    ``{name: {"died_at": …, "slice": SLICE}}``.
    """
    return {
        name: {"died_at": e.died_s, "slice": _slice_dict(e.slice)} for name, e in ledger.items()
    }


audit_dict = dict_maker("audit_dict", ((f.key, f"o.{f.attr}") for f in AUDIT_ENTRY))


def state_to_json(state: State, now_s: int, *, view: bool = False) -> dict[str, Any]:
    """The JSON object of the state file for ``state`` saved at ``now_s``; with
    ``view``, its ledger as :func:`ledger_view` (``state show --json``).
    """
    out: dict[str, Any] = {}
    for f in TOP:
        if f.kind == "slices":
            out[f.key] = {str(xid): _slice_dict(st) for xid, st in state.slices.items()}
        elif f.kind == "ledger":
            out[f.key] = (ledger_view if view else ledger_file_json)(state.ledger)
        elif f.kind == "missing":
            out[f.key] = {str(xid): since for xid, since in state.missing.items()}
        elif f.kind == "audit":
            out[f.key] = [audit_dict(entry) for entry in state.audit]
        else:
            out[f.key] = _top_value(f, state, now_s)
    return out


# --- the text encoder --------------------------------------------------------------------


def _value_expr(f: Field, var: str) -> str:
    attr = f"{var}.{f.attr.removeprefix(_POLICY)}"
    if f.kind == "bool":
        return f"_JSON_BOOL[{attr}]"
    if f.kind == "slice":
        return f"self._slice_text({attr}, heads)"
    return attr if f.kind == "uint" else f"_dumps({attr})"


def _fstring(parts: list[tuple[str, str]]) -> str:
    """An f-string literal of (literal JSON text, Python expression or "") parts."""
    text = "".join(
        lit.replace("{", "{{").replace("}", "}}") + (f"{{{expr}}}" if expr else "")
        for lit, expr in parts
    )
    return "f" + repr(text)


def _members(fields: tuple[Field, ...], var: str, first: bool) -> list[tuple[str, str]]:
    return [
        (("" if first and i == 0 else ",") + json.dumps(f.key) + ":", _value_expr(f, var))
        for i, f in enumerate(fields)
    ]


def _encoder_source() -> str:
    """The source of StateEncoder's per-slice and per-class text methods."""
    own = tuple(f for f in CLASS if not f.attr.startswith(_POLICY))
    policy = tuple(f for f in CLASS if f.attr.startswith(_POLICY))
    if own + policy != CLASS or SLICE[-1].kind != "classes":
        raise TypeError("stateschema: policy fields must end CLASS, classes must end SLICE")
    heads = SLICE[:-1]
    first, *others = TRAFFIC_CLASSES
    opening = f",{json.dumps(SLICE[-1].key)}:{{{json.dumps(first)}:"  # ,"classes":{"default":
    head = _fstring([("{", ""), *_members(heads, "st", True), (opening, "")])
    tail = _fstring(
        [("", "head"), ("", f"_c_{first}")]
        + [(f",{json.dumps(tc)}:", f"_c_{tc}") for tc in others]
        + [("}}", "")]
    )
    classes = "\n".join(f"    _c_{tc} = self._class_text(st.{tc})" for tc in TRAFFIC_CLASSES)
    key = ", ".join(f"st.{f.attr}" for f in heads)
    policy_text = _fstring([*_members(policy, "policy", False), ("}", "")])
    class_text = _fstring([("{", ""), *_members(own, "cs", True), ("", "hit[1]")])
    return f"""
def _slice_text(self, st, heads):
    key = ({key},)
    head = heads.get(key)
    if head is None:
        head = {head}
    self._heads[key] = head
{classes}
    return {tail}

def _class_text(self, cs):
    policy = cs.policy
    hit = self._policies.get(id(policy))
    if hit is None or hit[0] is not policy:
        hit = self._policies[id(policy)] = (policy, {policy_text})
    return {class_text}
"""


class StateEncoder:
    """Encodes states as the compact JSON of :func:`state_to_json`, slice by slice.

    Each slice's text is kept with the SliceState it was made from; the planner
    passes an unchanged slice on as the same object, so a cycle re-encodes only
    the slices that changed, and of those only the numbers that change each
    cycle: the text of a slice's name and period, and of a policy, are kept too.
    Memory: about 600 bytes per slice.

    ``_slice_text(st, heads)`` (``json.dumps(_slice_dict(st), separators=(",", ":"))``
    from kept pieces where it can: ``heads`` has the text of slices' names and
    periods from the last encode) and ``_class_text(cs)`` are compiled from the
    schema below the class.
    """

    _slice_text: Any
    _class_text: Any

    def __init__(self) -> None:
        self._slices: dict[int, tuple[SliceState, bytes]] = {}
        self._heads: dict[tuple[object, ...], str] = {}
        self._policies: dict[int, tuple[ClassPolicy, str]] = {}  # by id: kept alive here
        # Each ledger entry's text with the entry it was made from: an entry waits
        # unchanged (the very object) until it expires or is revived, so a cycle
        # does not encode its ledger again (40,000 entries: 0.3 s a cycle).
        self._ledger: dict[str, tuple[LedgerEntry, bytes]] = {}
        # the whole ledger's text with the mapping it was made from: a cycle where no
        # entry came or went hands the very mapping on, and nothing is looked at
        self._ledger_whole: tuple[object, bytes] | None = None
        # the ledger's policies (schema.LEDGER): each one's index and text, kept with the
        # entries' texts that name them by index (started over when they pile up)
        self._ledger_policies: dict[ClassPolicy, int] = {}
        self._ledger_policy_texts: list[str] = []

    def encode(self, state: State, now_s: int) -> bytes:
        """The state file's bytes (without the final newline)."""
        cache = self._slices
        fresh: dict[int, tuple[SliceState, bytes]] = {}
        heads, self._heads = self._heads, {}
        parts: list[bytes] = []
        for xid, st in state.slices.items():
            hit = cache.get(xid)
            if hit is None or hit[0] is not st:
                hit = (st, f'"{xid}":{self._slice_text(st, heads)}'.encode())
            fresh[xid] = hit
            parts.append(hit[1])
        self._slices = fresh  # slices gone from the state are forgotten
        if len(self._policies) > 4 * len(fresh) + 64:
            self._policies = {}  # policies come and go with the slices file: start over
        out: list[bytes] = []
        for f in TOP:
            out.append(f"{',' if out else '{'}{json.dumps(f.key)}:".encode())
            if f.kind == "slices":
                out += (b"{", b",".join(parts), b"}")
            elif f.kind == "ledger":
                whole = self._ledger_whole
                if whole is None or whole[0] is not state.ledger:
                    whole = self._ledger_whole = (state.ledger, self._ledger_text(state))
                out.append(whole[1])
            elif f.kind == "missing":
                out.append(json.dumps({str(x): s for x, s in state.missing.items()}).encode())
            elif f.kind == "audit":
                audit = [audit_dict(e) for e in state.audit]
                out.append(json.dumps(audit, separators=(",", ":")).encode())
            else:
                out.append(json.dumps(_top_value(f, state, now_s)).encode())
        out.append(b"}")
        return b"".join(out)

    def _ledger_text(self, state: State) -> bytes:
        """The ledger object's text (:func:`ledger_file_json`), each entry's ``"name":[…]``
        kept from the last encode when the entry is the very object it was made from.
        """
        if len(self._ledger_policy_texts) > _MAX_LEDGER_POLICIES:
            self._ledger, self._ledger_policies, self._ledger_policy_texts = {}, {}, []
        kept, fresh = self._ledger, {}
        texts = []
        for name, entry in state.ledger.items():
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
            f"{_JSON_BOOL[d.notified]},{d.notice_bp},{_LIFT[d.lift]},{self._policy_at(d.policy)}],"
            f"[{e.used_bytes},{e.last_counter_bytes},{e.ceil_bps},{_JSON_BOOL[e.capped]},"
            f"{_JSON_BOOL[e.notified]},{e.notice_bp},{_LIFT[e.lift]},{self._policy_at(e.policy)}]]"
        )

    def _policy_at(self, policy: ClassPolicy) -> int:
        at = self._ledger_policies.get(policy)
        if at is None:
            at = self._ledger_policies[policy] = len(self._ledger_policy_texts)
            values = [g(policy) for g in _POLICY_GET]
            self._ledger_policy_texts.append(json.dumps(values, separators=(",", ":")))
        return at


# the ledger's policies an encoder keeps before it starts its table over (each policy
# change of the slices file adds its new policies)
_MAX_LEDGER_POLICIES = 1024


def _compile_encoder() -> None:
    scope: dict[str, Any] = {"_JSON_BOOL": _JSON_BOOL, "_dumps": json.dumps}
    exec(_encoder_source(), scope)
    for name in ("_slice_text", "_class_text"):
        scope[name].__qualname__ = f"StateEncoder.{name}"
        setattr(StateEncoder, name, scope[name])


_compile_encoder()


# --- the strict decoder ------------------------------------------------------------------

_CHECKS = {
    kind: (eval(f"lambda v: {expr}", dict(KIND_SCOPE)), problem)
    for kind, (expr, problem) in KINDS.items()
}


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


def _scalar(f: Field, d: dict[str, Any], source: str, path: str) -> Any:
    """The value of scalar field ``f`` of the object ``d``, or StateCorrupt naming it."""
    value = d[f.key]
    where = f"{path}.{f.key}" if path else f.key
    check, problem = _CHECKS[f.kind]
    if not check(value):
        raise corrupt(source, where, problem)
    if f.max is not None and value > f.max:
        raise corrupt(source, where, f"{value} out of range 0..{f.max}")
    if f.after and value < d[f.after]:
        raise corrupt(source, where, f"before {f.after}")
    return value


def _class_from(value: object, source: str, path: str) -> ClassState:
    d = _object(value, CLASS_KEYS, source, path)
    own: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    for f in CLASS:
        if f.attr.startswith(_POLICY):
            policy[f.attr.removeprefix(_POLICY)] = _scalar(f, d, source, path)
        else:
            own[f.attr] = _scalar(f, d, source, path)
    return ClassState(policy=ClassPolicy(**policy), **own)


def _slice_from(value: object, source: str, path: str) -> SliceState:
    d = _object(value, SLICE_KEYS, source, path)
    found: dict[str, Any] = {}
    for f in SLICE:
        if f.kind == "classes":
            where = f"{path}.{f.key}"
            classes = _object(d[f.key], CLASSES_KEYS, source, where)
            for tc in TRAFFIC_CLASSES:
                found[tc] = _class_from(classes[tc], source, f"{where}.{tc}")
        else:
            found[f.attr] = _scalar(f, d, source, path)
    return SliceState(**found)


# --- the fast decoder --------------------------------------------------------------------


def _checks(fields: tuple[Field, ...], var: dict[str, str]) -> list[str]:
    """The KINDS checks (and bounds) of ``fields``, on the variables named in ``var``."""
    out = []
    for f in fields:
        v = var[f.key]
        out.append(re.sub(r"\bv\b", v, KINDS[f.kind][0]))
        if f.max is not None:
            out.append(f"{v} <= {f.max}")
        if f.after:
            out.append(f"{var[f.after]} <= {v}")
    return out


def _fast_source() -> str:
    """The source of ``_class_fast(d, policies)`` and ``_slice_fast(d, policies)``: a class or
    slice of a sound file, or None (the strict decoder then names the problem). Slices with
    the same limits share one ClassPolicy.
    """
    cvar = {f.key: f"v{i}" for i, f in enumerate(CLASS)}
    by_attr = {f.attr: cvar[f.key] for f in CLASS}
    key = ", ".join(by_attr[_POLICY + p.name] for p in dataclasses.fields(ClassPolicy))
    cargs = ", ".join(
        "policy" if c.name == "policy" else by_attr[c.name] for c in dataclasses.fields(ClassState)
    )
    scalars = [f for f in SLICE if f.kind != "classes"]
    (classes,) = (f for f in SLICE if f.kind == "classes")
    svar = {f.key: f"v{i}" for i, f in enumerate(scalars)}
    s_attr = {f.attr: svar[f.key] for f in scalars} | {tc: f"c_{tc}" for tc in TRAFFIC_CLASSES}
    sargs = ", ".join(s_attr[s.name] for s in dataclasses.fields(SliceState))
    s_checks = [*_checks(tuple(scalars), svar), "type(c) is dict", "c.keys() == _CLASSES_KEYS"]
    newline = "\n"
    return f"""
def _class_fast(d, policies):
    if type(d) is not dict or d.keys() != _CLASS_KEYS:
        return None
{newline.join(f"    {cvar[f.key]} = d[{f.key!r}]" for f in CLASS)}
    if not ({" and ".join(f"({c})" for c in _checks(CLASS, cvar))}):
        return None
    key = ({key},)
    policy = policies.get(key)
    if policy is None:
        policy = policies[key] = ClassPolicy(*key)
    return ClassState({cargs})

def _slice_fast(d, policies):
    if type(d) is not dict or d.keys() != _SLICE_KEYS:
        return None
{newline.join(f"    {svar[f.key]} = d[{f.key!r}]" for f in scalars)}
    c = d[{classes.key!r}]
    if not ({" and ".join(f"({c})" for c in s_checks)}):
        return None
{newline.join(f"    c_{tc} = _class_fast(c[{tc!r}], policies)" for tc in TRAFFIC_CLASSES)}
    if {" or ".join(f"c_{tc} is None" for tc in TRAFFIC_CLASSES)}:
        return None
    return SliceState({sargs})
"""


_Policies = dict[tuple[object, ...], ClassPolicy]
_FAST: dict[str, Any] = {
    "ClassPolicy": ClassPolicy,
    "ClassState": ClassState,
    "SliceState": SliceState,
    "_CLASS_KEYS": CLASS_KEYS,
    "_SLICE_KEYS": SLICE_KEYS,
    "_CLASSES_KEYS": CLASSES_KEYS,
    **KIND_SCOPE,
}
exec(_fast_source(), _FAST)
_slice_fast: Callable[[object, _Policies], SliceState | None] = _FAST["_slice_fast"]


def _slice(value: object, policies: _Policies, source: str, path: str) -> SliceState:
    return _slice_fast(value, policies) or _slice_from(value, source, path)


def state_from_json(data: object, source: str) -> State:
    """Validate a parsed state file (migrating older schemas) and build the State.

    Raises StateCorrupt naming ``source`` and the JSON path of the first problem, or
    StateTooNew for a file written by a newer schema.
    """
    if type(data) is not dict:
        raise corrupt(source, "", "expected a JSON object")
    d = _object(migrate(data, source), TOP_KEYS, source, "")
    policies: _Policies = {}
    found: dict[str, Any] = {}
    for f in TOP:
        value = d[f.key]
        if f.kind in ("slices", "ledger", "missing") and type(value) is not dict:
            raise corrupt(source, f.key, "expected an object")
        if f.kind == "slices":
            slices: dict[int, SliceState] = {}
            for key, raw in value.items():
                st = _slice(raw, policies, source, f"{f.key}.{key}")
                if key != str(st.xid):
                    raise corrupt(source, f"{f.key}.{key}", f"key does not match xid {st.xid}")
                slices[st.xid] = st
            found[f.attr] = slices
        elif f.kind == "ledger":
            found[f.attr] = ordered_ledger(_ledger_from(value, policies, source, f.key))
        elif f.kind == "missing":
            found[f.attr] = _missing_from(value, source, f.key)
        elif f.kind == "audit":
            found[f.attr] = _audit_from(value, source, f.key)
        elif f.kind != "version":  # the version was checked by the migration
            checked = _scalar(f, d, source, "")
            if f.attr:
                found[f.attr] = checked
    return State(**found)


def _missing_from(value: dict[str, Any], source: str, path: str) -> dict[int, int]:
    """``{xid: since}`` of the state's ``missing`` object."""
    out: dict[int, int] = {}
    for key, since in value.items():
        if not (key.isascii() and key.isdigit() and int(key) <= DEFAULT_XID):
            raise corrupt(source, f"{path}.{key}", f"key is not an xid 0..{DEFAULT_XID}")
        if type(since) is not int or since < 0:
            raise corrupt(source, f"{path}.{key}", "expected a non-negative integer")
        out[int(key)] = since
    return out


def _ledger_from(
    value: dict[str, Any], policies: _Policies, source: str, path: str
) -> dict[str, LedgerEntry]:
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
        elif f.attr == "died_s":
            died_s = value[i]
        else:
            found[f.attr.removeprefix("slice.")] = value[i]
    return LedgerEntry(SliceState(**found), died_s)


def _entry_class_fast(c: object, table: list[ClassPolicy]) -> ClassState | None:
    if type(c) is not list or len(c) != 8:
        return None
    used, last, ceil, capped, notified, told, lift, at = c
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
        and type(at) is int
        and 0 <= at < len(table)
    ):
        return ClassState(table[at], used, last, ceil, capped, notified, told, lift)
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
    if cd is None or ce is None:
        return None
    return LedgerEntry(SliceState(name, xid, start, end, cd, ce), died)


def _audit_from(value: object, source: str, path: str) -> tuple[AuditEntry, ...]:
    if type(value) is not list:
        raise corrupt(source, path, "expected a list")
    if len(value) > MAX_AUDIT:
        raise corrupt(source, path, f"more than {MAX_AUDIT} entries")
    entries = []
    for i, raw in enumerate(value):
        where = f"{path}[{i}]"
        d = _object(raw, AUDIT_KEYS, source, where)
        entries.append(AuditEntry(**{f.attr: _scalar(f, d, source, where) for f in AUDIT_ENTRY}))
    return tuple(entries)

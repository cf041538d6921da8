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

The ledger's compact entries, in each of these forms, are :mod:`.ledgercodec`'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
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
)
from bwenforcer.store.ledgercodec import (
    _CHECKS,
    _JSON_BOOL,
    _POLICY,
    LedgerEncoder,
    _object,
    _Policies,
    ledger_file_json,
    ledger_from,
    ledger_lines_into,
)
from bwenforcer.store.schema import (
    AUDIT_ENTRY,
    AUDIT_KEYS,
    CLASS,
    CLASS_KEYS,
    CLASSES_KEYS,
    KIND_SCOPE,
    KINDS,
    LEDGER_LINES_SINCE,
    SCHEMA_VERSION,
    SLICE,
    SLICE_KEYS,
    TOP,
    TOP_KEYS,
    WINDOWS_DIFFER,
    WRITER,
    Field,
    class_dict_maker,
    corrupt,
    dict_maker,
    migrate,
    ring_problem,
    ring_text,
    slice_dict_maker,
)


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
    if f.kind == "buckets":
        return f"self._ring_text({attr})"
    return attr if f.kind in ("uint", "window") else f"_dumps({attr})"


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
        self._ledger = LedgerEncoder()  # the ledger's text, kept across encodes
        # rolling windows' rings, by id: a ring with no new bytes is passed on as the very
        # tuple (a capped cycle changes every class's ceil, not its ring); this encode's
        # and the last one's (kept alive here)
        self._rings: dict[int, tuple[tuple[int, ...], str]] = {}
        self._last_rings: dict[int, tuple[tuple[int, ...], str]] = {}

    def _ring_text(self, ring: tuple[int, ...]) -> str:
        """A ring's text (schema.ring_text), kept for the very tuple."""
        if not ring:
            return "[]"
        hit = self._last_rings.get(id(ring))
        if hit is None or hit[0] is not ring:
            hit = (ring, ring_text(ring))
        self._rings[id(ring)] = hit
        return hit[1]

    def encode(self, state: State, now_s: int) -> bytes:
        """The state file's bytes (without the final newline of its last line)."""
        head, lines = self.encode_parts(state, now_s)
        return b"".join((head, b"\n", *lines)).removesuffix(b"\n")

    def encode_parts(self, state: State, now_s: int) -> tuple[bytes, list[bytes | memoryview]]:
        """The state's JSON object (one line) and the ledger's lines after it, as parts
        (a loaded ledger's saved lines are views of its text, not copies).
        """
        cache = self._slices
        fresh: dict[int, tuple[SliceState, bytes]] = {}
        heads, self._heads = self._heads, {}
        self._last_rings, self._rings = self._rings, {}
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
        lines: list[bytes | memoryview] = []
        for f in TOP:
            out.append(f"{',' if out else '{'}{json.dumps(f.key)}:".encode())
            if f.kind == "slices":
                out += (b"{", b",".join(parts), b"}")
            elif f.kind == "ledger":
                head, lines = self._ledger.encode(state.ledger)
                out.append(head)
            elif f.kind == "missing":
                out.append(json.dumps({str(x): s for x, s in state.missing.items()}).encode())
            elif f.kind == "audit":
                audit = [audit_dict(e) for e in state.audit]
                out.append(json.dumps(audit, separators=(",", ":")).encode())
            else:
                out.append(json.dumps(_top_value(f, state, now_s)).encode())
        out.append(b"}")
        return b"".join(out), lines


def _compile_encoder() -> None:
    scope: dict[str, Any] = {
        "_JSON_BOOL": _JSON_BOOL,
        "_dumps": json.dumps,
    }
    exec(_encoder_source(), scope)
    for name in ("_slice_text", "_class_text"):
        scope[name].__qualname__ = f"StateEncoder.{name}"
        setattr(StateEncoder, name, scope[name])


_compile_encoder()


# --- the strict decoder ------------------------------------------------------------------


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
    problem = ring_problem(own["used_bytes"], own["buckets"], policy["window_s"])
    if problem is not None:
        raise corrupt(source, f"{path}.buckets", problem)
    own["buckets"] = tuple(own["buckets"])
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
            if found["default"].policy.window_s != found["exempt"].policy.window_s:
                raise corrupt(source, f"{where}.exempt.window_s", WINDOWS_DIFFER)
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
        "policy"
        if c.name == "policy"
        else (f"tuple({by_attr[c.name]})" if c.name == "buckets" else by_attr[c.name])
        for c in dataclasses.fields(ClassState)
    )
    ring = (by_attr["used_bytes"], by_attr["buckets"], by_attr["policy.window_s"])
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
    if _ring_problem({", ".join(ring)}) is not None:
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
    if c_default.policy.window_s != c_exempt.policy.window_s:
        return None
    return SliceState({sargs})
"""


_FAST: dict[str, Any] = {
    "ClassPolicy": ClassPolicy,
    "ClassState": ClassState,
    "SliceState": SliceState,
    "_CLASS_KEYS": CLASS_KEYS,
    "_SLICE_KEYS": SLICE_KEYS,
    "_CLASSES_KEYS": CLASSES_KEYS,
    "_ring_problem": ring_problem,
    **KIND_SCOPE,
}
exec(_fast_source(), _FAST)
_slice_fast: Callable[[object, _Policies], SliceState | None] = _FAST["_slice_fast"]


def _slice(value: object, policies: _Policies, source: str, path: str) -> SliceState:
    return _slice_fast(value, policies) or _slice_from(value, source, path)


(_LEDGER_KEY,) = (f.key for f in TOP if f.kind == "ledger")


def state_from_json(data: object, source: str, tail: bytes = b"") -> State:
    """Validate a parsed state file (migrating older schemas) and build the State;
    ``tail``: the ledger's lines after its JSON object (schema 10 on).

    Raises StateCorrupt naming ``source`` and the JSON path of the first problem, or
    StateTooNew for a file written by a newer schema.
    """
    if type(data) is not dict:
        raise corrupt(source, "", "expected a JSON object")
    version = data.get("schema_version")
    if tail and type(version) is int and LEDGER_LINES_SINCE <= version < SCHEMA_VERSION:
        # an older schema's lines are migrated in the dict form (a list of strings)
        data, tail = ledger_lines_into(data, tail, source, _LEDGER_KEY), b""
    d = _object(migrate(data, source), TOP_KEYS, source, "")
    if tail and version != SCHEMA_VERSION:
        raise corrupt(source, "", f"lines after the JSON object of schema_version {version}")
    policies: _Policies = {}
    found: dict[str, Any] = {}
    # the ledger first: its checks' passing objects go before the slices' are made
    for f in sorted(TOP, key=lambda f: f.kind != "ledger"):
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
            found[f.attr] = ledger_from(value, tail, policies, source, f.key)
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

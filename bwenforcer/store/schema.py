"""The state file's shape, written once: the field table, the schema version, migrations.

Every other description of the state is derived from the tables below: the key
sets and decoders and the hand encoder of :mod:`bwenforcer.store.codec` (and
:mod:`bwenforcer.store.ledgercodec`, the ledger's), the dict
form of ``state show --json``, the slice objects of ``sync --json``
(:mod:`bwenforcer.views.plan`), and docs/state-format.md's key table (a test
compares them).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bwenforcer import __version__
from bwenforcer.core.layout import DEFAULT_XID, TRAFFIC_CLASSES
from bwenforcer.core.notices import MAX_NOTICE_SHARE_BP, notices_text, parse_notices
from bwenforcer.core.policy import parse_taper, parse_tiers
from bwenforcer.core.window import MAX_WINDOW_S, MIN_WINDOW_S, RING, expiry_s
from bwenforcer.errors import StateCorrupt, StateTooNew

log = logging.getLogger(__name__)

SCHEMA_VERSION = 11
# the first schema whose ledger entries are lines after the state's object
LEDGER_LINES_SINCE = 10
WRITER = f"bwenforcer {__version__}"


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a state file object and where its value lives in the model."""

    key: str  # the key in the state file
    attr: str  # attribute path on the model object ("policy.share"); "" for file-only keys
    kind: str  # a key of KINDS, or a nested object: slices, ledger, slice, classes
    unit: str = ""  # as docs/state-format.md writes it
    view: str = ""  # the key printed by --json commands, when not ``key`` (README "JSON keys")
    max: int | None = None  # upper bound of an integer
    after: str = ""  # key of a field of the same object this one must not be below
    # a ledger ECLASS's default as JSON text: such fields (a tail of ENTRY_CLASS) are left
    # out at the end of the array while at it; "" always written. A live CLASS object has
    # every key.
    default: str = ""


# kind -> (check of a value ``v`` as a Python expression, the one-line problem if it fails).
# The strict and the fast decoder both use these expressions.
KINDS: Mapping[str, tuple[str, str]] = {
    "uint": ("type(v) is int and v >= 0", "expected a non-negative integer"),
    "bool": ("type(v) is bool", "expected true or false"),
    "str": ("type(v) is str", "expected a string"),
    "name": ("type(v) is str and v != ''", "expected a non-empty string"),
    "what": ("v in ('grant', 'reset')", "expected 'grant' or 'reset'"),
    "traffic_class": ("v in ('default', 'exempt')", "expected 'default' or 'exempt'"),
    "tiers": (
        "type(v) is str and (v == '' or _tiers_ok(v))",
        "expected tiers such as '75%:50mbit,100%:2mbit' (or '')",
    ),
    "taper": (
        "type(v) is str and (v == '' or _taper_ok(v))",
        "expected a taper such as '75%-100%:2mbit' (or '')",
    ),
    "window": (
        "type(v) is int and (v == 0 or _WINDOW_MIN_S <= v <= _WINDOW_MAX_S)",
        f"expected 0 or a window of {MIN_WINDOW_S} to {MAX_WINDOW_S} s",
    ),
    "buckets": (
        "type(v) is list and len(v) in (0, _RING) and all(type(x) is int and x >= 0 for x in v)",
        f"expected [] or a list of {RING} non-negative integers",
    ),
    "notices": (
        "type(v) is str and (v == '' or _notices_ok(v))",
        "expected notices such as '50%,80%,lifted' (or '')",
    ),
    "lift": ("v in ('', 'due', 'sent')", "expected '', 'due' or 'sent'"),
    "direction": ("v in ('out', 'in', 'both')", "expected 'out', 'in' or 'both'"),
}


@functools.lru_cache(maxsize=256)
def _tiers_ok(text: str) -> bool:
    try:
        parse_tiers(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _taper_ok(text: str) -> bool:
    try:
        parse_taper(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _notices_ok(text: str) -> bool:
    try:
        parse_notices(text)
    except ValueError:
        return False
    return notices_text(*parse_notices(text)) == text


# The names the KINDS expressions use besides ``v``.
KIND_SCOPE: Mapping[str, Any] = {
    "_tiers_ok": _tiers_ok,
    "_taper_ok": _taper_ok,
    "_RING": RING,
    "_WINDOW_MIN_S": MIN_WINDOW_S,
    "_WINDOW_MAX_S": MAX_WINDOW_S,
    "_notices_ok": _notices_ok,
}

TOP: tuple[Field, ...] = (
    Field("schema_version", "", "version"),
    Field("saved_at", "saved_s", "uint", "Unix s"),
    Field("writer", "", "str"),
    Field("slices", "slices", "slices"),  # str(xid) -> SLICE
    Field("ledger", "ledger", "ledger"),  # slice name -> LEDGER_ENTRY
    Field("resets", "resets", "uint", "count"),
    Field("boot_id", "boot_id", "str"),
    Field("boottime_s", "boottime_s", "uint", "s since boot"),
    Field("clock_ref_at", "clock_ref_s", "uint", "Unix s"),
    Field("missing", "missing", "missing"),  # str(xid) -> Unix s
    Field("grants", "grants", "uint", "count"),
    Field("audit", "audit", "audit"),  # a list of AUDIT_ENTRY, oldest first
    Field("cycles", "cycles", "uint", "count"),
)
AUDIT_ENTRY: tuple[Field, ...] = (
    Field("what", "what", "what"),
    Field("slice", "slice", "name"),
    Field("traffic_class", "traffic_class", "traffic_class"),
    Field("size_bytes", "size_bytes", "uint", "bytes"),
    Field("user", "user", "str"),
    Field("at", "at_s", "uint", "Unix s"),
    Field("until", "until_s", "uint", "Unix s", after="at"),
    Field("reason", "reason", "str"),
)
# The ledger: {"policies": [POLICY, …], "entries": N}, then N lines after the state's
# object, each [expires_at, name, ENTRY] (store.ledgercodec). An ENTRY is an array (its
# "keys" below are positions, for docs and errors), and each class names its policy by
# index into ``policies`` (the distinct policies of the ledger's classes), and leaves out
# its trailing defaults (ENTRY_CLASS), so an entry is ~175 bytes, not ~540.
LEDGER: tuple[Field, ...] = (
    Field("policies", "", "policies"),  # a list of POLICY: CLASS's policy fields, in order
    # the count of the lines after the state's object, each [expires_at, name, LEDGER_ENTRY]
    Field("entries", "", "entries", "count"),
)
LEDGER_ENTRY: tuple[Field, ...] = (
    Field("died_at", "died_s", "uint", "Unix s"),
    Field("xid", "slice.xid", "uint", max=DEFAULT_XID),
    Field("period_start", "slice.period_start_s", "uint", "Unix s"),
    Field("period_end", "slice.period_end_s", "uint", "Unix s", after="period_start"),
    Field("default", "slice.default", "entry_class"),
    Field("exempt", "slice.exempt", "entry_class"),
)
SLICE: tuple[Field, ...] = (
    Field("name", "name", "name"),
    Field("xid", "xid", "uint", max=DEFAULT_XID),
    Field("period_start", "period_start_s", "uint", "Unix s"),
    Field("period_end", "period_end_s", "uint", "Unix s", after="period_start"),
    Field("classes", "", "classes"),  # {traffic class: CLASS}, one attribute per class
)
# ClassState; ``policy.*`` fields (its ClassPolicy) come last: the encoder keeps their text.
# The defaults are ENTRY_CLASS's (a live class has every key).
CLASS: tuple[Field, ...] = (
    Field("used_bytes", "used_bytes", "uint", "bytes"),
    Field("last_counter_bytes", "last_counter_bytes", "uint", "bytes"),
    Field("ceil_bps", "ceil_bps", "uint", "bit/s", view="ceil"),
    Field("capped", "capped", "bool"),
    Field("notified", "notified", "bool"),
    Field("buckets", "buckets", "buckets", "bytes", default="[]"),
    Field("notice_bp", "notice_bp", "uint", "1/100 %", max=MAX_NOTICE_SHARE_BP, default="0"),
    Field("lift", "lift", "lift", default='""'),
    Field("carried_bytes", "carried_bytes", "uint", "bytes", default="0"),
    Field("in_used_bytes", "in_used_bytes", "uint", "bytes", default="0"),
    Field("in_last_counter_bytes", "in_last_counter_bytes", "uint", "bytes", default="0"),
    Field("in_limit_bps", "in_limit_bps", "uint", "bit/s", view="in_limit", default="0"),
    Field("limit_bytes", "policy.limit_bytes", "uint", "bytes"),
    Field("threshold_bytes", "policy.threshold_bytes", "uint", "bytes"),
    Field("min_rate_bps", "policy.min_rate_bps", "uint", "bit/s", view="min_rate"),
    Field("max_rate_bps", "policy.max_rate_bps", "uint", "bit/s", view="max_rate"),
    Field("share", "policy.share", "uint"),
    Field("tiers", "policy.tiers", "tiers"),
    Field("taper", "policy.taper", "taper"),
    Field("pacing", "policy.pacing", "bool"),
    Field("window_s", "policy.window_s", "window", "s"),
    Field("notices", "policy.notices", "notices"),
    Field("rollover_bytes", "policy.rollover_bytes", "uint", "bytes"),
    Field("direction", "policy.direction", "direction"),
)

# A ledger entry's class (an array, like LEDGER_ENTRY): the index of its policy in the
# ledger's ``policies``, then CLASS's own fields. Those with a default end it, and the
# ones at their default at its end are left out (schema 11): most dead slices had no
# ring, notice, rollover or inbound bytes, and an entry is written for each of them.
ENTRY_CLASS: tuple[Field, ...] = (
    Field("policy", "policy", "uint"),
    *(f for f in CLASS if not f.attr.startswith("policy.")),
)
# the values an ECLASS always has (its fields before the first with a default)
ECLASS_MIN = next((i for i, f in enumerate(ENTRY_CLASS) if f.default), len(ENTRY_CLASS))
if not all(f.default for f in ENTRY_CLASS[ECLASS_MIN:]):
    raise TypeError("schema: the ECLASS fields with a default must end ENTRY_CLASS")
# the defaults of the fields from ECLASS_MIN on, as JSON values
ECLASS_DEFAULTS = tuple(json.loads(f.default) for f in ENTRY_CLASS[ECLASS_MIN:])
POLICY: tuple[Field, ...] = tuple(f for f in CLASS if f.attr.startswith("policy."))

TOP_KEYS = frozenset(f.key for f in TOP)
LEDGER_KEYS = frozenset(f.key for f in LEDGER)
SLICE_KEYS = frozenset(f.key for f in SLICE)
CLASSES_KEYS = frozenset(TRAFFIC_CLASSES)
CLASS_KEYS = frozenset(f.key for f in CLASS)
AUDIT_KEYS = frozenset(f.key for f in AUDIT_ENTRY)

# A model attribute's name -> the key --json commands print for it.
_VIEW_KEYS: Mapping[str, str] = {
    f.attr.rpartition(".")[2]: f.view or f.key
    for f in (*TOP, *LEDGER_ENTRY, *SLICE, *CLASS, *AUDIT_ENTRY)
    if f.attr and not f.attr.startswith("slice.")
}
# The state file's class keys -> the --json keys, where they differ (``state show --json``).
CLASS_VIEW_KEYS: Mapping[str, str] = {f.key: f.view for f in CLASS if f.view}


def json_key(attr: str) -> str:
    """The --json key of a dataclass field: the state table's, else rates without ``_bps``."""
    found = _VIEW_KEYS.get(attr)
    if found is not None:
        return found
    return attr.removesuffix("_bps")  # README "JSON keys": rates in bit/s carry no suffix


def dict_maker(
    name: str, items: Iterable[tuple[str, str]], scope: Mapping[str, Any] | None = None
) -> Callable[[Any], dict[str, Any]]:
    """A function ``o -> {key: <expression>, …}`` for (key, Python expression over ``o``)
    items, compiled once (exec) so that it costs what a hand-written dict display costs.
    ``scope``: the names the expressions use.
    """
    env = dict(scope or {})
    body = ", ".join(f"{key!r}: {expr}" for key, expr in items)
    exec(f"def {name}(o):\n    return {{{body}}}", env)
    return env[name]  # type: ignore[no-any-return]


def class_dict_maker(name: str) -> Callable[[Any], dict[str, Any]]:
    """The dict form of a ClassState, keyed as in the state file (a ring as a list)."""
    return dict_maker(
        name,
        ((f.key, f"list(o.{f.attr})" if f.kind == "buckets" else f"o.{f.attr}") for f in CLASS),
    )


def ring_problem(used_bytes: int, buckets: Sequence[int], window_s: int) -> str | None:
    """Why a class's ``buckets`` (of the ``buckets`` kind) do not go with its rolling
    window and usage (None: they do): a ring under a window, none under a period, and
    summing to the usage.
    """
    if window_s and not buckets:
        return f"expected {RING} buckets under a window of {window_s} s"
    if buckets and not window_s:
        return "expected [] under a period (window_s 0)"
    if buckets and sum(buckets) != used_bytes:
        return f"the buckets sum to {sum(buckets)}, not used_bytes {used_bytes}"
    return None


def ring_text(buckets: Sequence[int]) -> str:
    """A class's ring as compact JSON text (``json.dumps`` without spaces, faster)."""
    return f"[{','.join(map(str, buckets))}]"


WINDOWS_DIFFER = "a slice's classes have one window: not the default class's window_s"


def slice_dict_maker(
    name: str, class_dict: Callable[[Any], dict[str, Any]], *, view: bool = False
) -> Callable[[Any], dict[str, Any]]:
    """The dict form of a slice (a SliceState, or anything with its attributes) with its
    classes made by ``class_dict``; with ``view``, keyed as --json commands print it.
    """
    items = []
    for f in SLICE:
        if f.kind == "classes":
            classes = ", ".join(f"{tc!r}: _class(o.{tc})" for tc in TRAFFIC_CLASSES)
            items.append((f.key, f"{{{classes}}}"))
        else:
            items.append(((f.view or f.key) if view else f.key, f"o.{f.attr}"))
    return dict_maker(name, items, {"_class": class_dict})


def corrupt(source: str, path: str, problem: str) -> StateCorrupt:
    """StateCorrupt naming the file, the JSON path of the problem (if any) and the problem."""
    return StateCorrupt(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")


# --- migrations ---------------------------------------------------------------------------


def _v0_class(value: object) -> object:
    if not isinstance(value, dict):
        return value
    renamed = {"bytes_used": "used_bytes", "last_counter": "last_counter_bytes"}
    return {renamed.get(k, k): v for k, v in value.items()}


def _v0_slice(value: object) -> object:
    if not isinstance(value, dict) or not isinstance(value.get("classes"), dict):
        return value
    return {**value, "classes": {tc: _v0_class(c) for tc, c in value["classes"].items()}}


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (pre-release): no ``writer``; classes had ``bytes_used`` and ``last_counter``.

    Malformed parts are passed through untouched: validation after migration names them.
    """
    out = {**data, "schema_version": 1}
    out.setdefault("writer", "bwenforcer (schema 0)")
    slices = data.get("slices")
    if isinstance(slices, dict):
        out["slices"] = {xid: _v0_slice(st) for xid, st in slices.items()}
    ledger = data.get("ledger")
    if isinstance(ledger, dict):
        out["ledger"] = {
            name: {**e, "slice": _v0_slice(e.get("slice"))} if isinstance(e, dict) else e
            for name, e in ledger.items()
        }
    return out


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no count of operator resets: none were counted."""
    return {**data, "schema_version": 2, "resets": 0}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 had no clock reference (boot id, boot clock, wall clock then): none is
    known, and the first cycle judges its clock against the last save, as schema 2 did;
    nor slices gone from their source in their grace: none are.
    """
    return {
        **data,
        "schema_version": 3,
        "boot_id": "",
        "boottime_s": 0,
        "clock_ref_at": 0,
        "missing": {},
    }


def _classes_with(data: dict[str, Any], added: Mapping[str, object]) -> dict[str, Any]:
    """``data`` with the keys ``added`` set in every class of every slice, live and in the
    ledger, where they are missing. Malformed parts are passed through untouched.
    """

    def slice_(value: object) -> object:
        if not isinstance(value, dict) or not isinstance(value.get("classes"), dict):
            return value
        classes = {
            tc: {**added, **c} if isinstance(c, dict) else c for tc, c in value["classes"].items()
        }
        return {**value, "classes": classes}

    out = dict(data)
    slices = data.get("slices")
    if isinstance(slices, dict):
        out["slices"] = {xid: slice_(st) for xid, st in slices.items()}
    ledger = data.get("ledger")
    if isinstance(ledger, dict):
        out["ledger"] = {
            name: {**e, "slice": slice_(e.get("slice"))} if isinstance(e, dict) else e
            for name, e in ledger.items()
        }
    return out


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 had no tiers and no taper (every class paced from its threshold alone),
    no grants and no audit of operators' grants and resets.
    """
    added = {"tiers": "", "taper": "", "pacing": True}
    return {**_classes_with(data, added), "grants": 0, "audit": [], "schema_version": 4}


_V4_ENTRY_KEYS = frozenset({"died_at", "slice"})
_V4_SLICE_KEYS = frozenset({"name", "xid", "period_start", "period_end", "classes"})
# a class's keys as schema 4 and 5 wrote them (CLASS has more since): its own, its policy's
_V4_OWN_KEYS = ("used_bytes", "last_counter_bytes", "ceil_bps", "capped", "notified")
_V4_POLICY_KEYS = (
    "limit_bytes",
    "threshold_bytes",
    "min_rate_bps",
    "max_rate_bps",
    "share",
    "tiers",
    "taper",
    "pacing",
)
_V4_CLASS_KEYS = frozenset((*_V4_OWN_KEYS, *_V4_POLICY_KEYS))


def _v4_entry(name: str, value: object, policies: dict[str, int], table: list[object]) -> object:
    """A schema-4 ledger entry as a schema-5 array; one not shaped as one (its values
    are not looked at: validation after migration names them) is passed through.
    """
    if not (isinstance(value, dict) and value.keys() == _V4_ENTRY_KEYS):
        return value
    st = value["slice"]
    if not (isinstance(st, dict) and st.keys() == _V4_SLICE_KEYS and st["name"] == name):
        return value
    classes = st["classes"]
    if not (isinstance(classes, dict) and classes.keys() == set(TRAFFIC_CLASSES)):
        return value
    arrays = []
    for tc in TRAFFIC_CLASSES:
        c = classes[tc]
        if not (isinstance(c, dict) and c.keys() == _V4_CLASS_KEYS):
            return value
        policy = [c[k] for k in _V4_POLICY_KEYS]
        key = repr(policy)
        if key not in policies:
            policies[key] = len(table)
            table.append(policy)
        arrays.append([*(c[k] for k in _V4_OWN_KEYS), policies[key]])
    return [value["died_at"], st["xid"], st["period_start"], st["period_end"], *arrays]


def _v4_to_v5(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 4 wrote each ledger entry as a slice's full object (~540 bytes): schema 5
    writes an array, its classes' policies once in a table.
    """
    out = {**data, "schema_version": 5}
    ledger = data.get("ledger")
    if isinstance(ledger, dict):
        policies: dict[str, int] = {}
        table: list[object] = []
        entries = {name: _v4_entry(name, e, policies, table) for name, e in ledger.items()}
        out["ledger"] = {"policies": table, "entries": entries}
    return out


_V5_ADDED = {"buckets": [], "window_s": 0}


def _v5_to_v6(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 5 had no rolling windows: every class, live and in the ledger, is over its
    period (``window_s`` 0, no ``buckets``). A ledger entry's class is an array: its ring
    goes in before the policy's index, and each of ``ledger.policies`` gains the window.
    Malformed parts are passed through untouched: validation after migration names them.
    """
    # the live slices' classes only: a schema-5 ledger is not shaped as _classes_with's
    live = _classes_with({k: v for k, v in data.items() if k != "ledger"}, _V5_ADDED)
    out = {**data, **live, "schema_version": 6}
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("entries"), dict):
        policies = ledger.get("policies")
        if isinstance(policies, list):
            policies = [[*p, 0] if isinstance(p, list) else p for p in policies]

        def entry(value: object) -> object:
            if not isinstance(value, list) or len(value) != len(LEDGER_ENTRY):
                return value
            classes = [
                [*c[:-1], [], c[-1]] if isinstance(c, list) and len(c) > 1 else c for c in value[4:]
            ]
            return [*value[:4], *classes]

        entries = {name: entry(e) for name, e in ledger["entries"].items()}
        out["ledger"] = {**ledger, "policies": policies, "entries": entries}
    return out


def _with_class_fields(
    data: dict[str, Any],
    version: int,
    own: Mapping[str, object],
    policy: Mapping[str, object],
    width: int,
) -> dict[str, Any]:
    """A step that adds class fields to a schema with compact ledger entries (6 to 9):
    ``own`` to every live class and, in a ledger ECLASS of ``width`` values, before its
    policy index; ``policy`` to every live class and at the end of every POLICY. An entry
    or class not shaped as the schema before wrote it is passed through untouched
    (validation after migration names it).
    """
    # the live slices' classes only: the ledger's entries are arrays, not slices
    live = _classes_with({k: v for k, v in data.items() if k != "ledger"}, {**own, **policy})
    out = {**data, **live, "schema_version": version}

    def entry(value: object) -> object:
        if not (isinstance(value, list) and len(value) == len(LEDGER_ENTRY)):
            return value
        classes = []
        for c in value[4:]:
            if not (isinstance(c, list) and len(c) == width):
                return value
            classes.append([*c[:-1], *own.values(), c[-1]])
        return [*value[:4], *classes]

    ledger = data.get("ledger")
    if isinstance(ledger, dict):
        policies, entries = ledger.get("policies"), ledger.get("entries")
        if isinstance(policies, list):
            policies = [[*p, *policy.values()] if isinstance(p, list) else p for p in policies]
        if isinstance(entries, dict):
            entries = {name: entry(e) for name, e in entries.items()}
        out["ledger"] = {**ledger, "policies": policies, "entries": entries}
    return out


def _v6_to_v7(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 6 had no early notices: a class had told nothing but its threshold
    (``notice_bp`` 0, no ``lift``) and no policy asked for any (``notices`` "").
    """
    # schema 6's ledger class: its own fields, its ring, its policy's index
    width = len(_V4_OWN_KEYS) + 2
    return _with_class_fields(data, 7, {"notice_bp": 0, "lift": ""}, {"notices": ""}, width)


def _v7_to_v8(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 7 had no rollover: no class carried bytes from the period before
    (``carried_bytes`` 0) and no policy rolled any over (``rollover_bytes`` 0).
    """
    # schema 7's ledger class: its own fields, its ring, its notice marks, its policy index
    width = len(_V4_OWN_KEYS) + 4
    return _with_class_fields(data, 8, {"carried_bytes": 0}, {"rollover_bytes": 0}, width)


def _v8_to_v9(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 8 counted what slices send only: every class has received nothing
    (inbound usage, counter and limit 0) and its budget counts ``out``.
    """
    own = {"in_used_bytes": 0, "in_last_counter_bytes": 0, "in_limit_bps": 0}
    # schema 8's ledger class: own fields, ring, notice marks, carried bytes, policy index
    width = len(_V4_OWN_KEYS) + 5
    return _with_class_fields(data, 9, own, {"direction": "out"}, width)


# where _v9_to_v10 finds an entry's expiry: its period's end, its default class, that
# class's policy index (last) and the policy's window_s (steps before it keep these)
_LEDGER_END_AT = [f.key for f in LEDGER_ENTRY].index("period_end")
_LEDGER_DEFAULT_AT = [f.key for f in LEDGER_ENTRY].index("default")
_POLICY_WINDOW_AT = [f.key for f in POLICY].index("window_s")


def _v9_expiry(entry: list[Any], policies: object) -> int:
    """An ENTRY's expiry (core.model.LedgerEntry.expires_s); 0 when it is not shaped as
    one (the load's checks then name the problem).
    """
    try:
        at = entry[_LEDGER_DEFAULT_AT][-1]
        window_s = policies[at][_POLICY_WINDOW_AT]  # type: ignore[index]
        end = entry[_LEDGER_END_AT]
        if type(end) is not int or type(window_s) is not int:
            return 0
        return expiry_s(end, window_s) if window_s else end
    except (TypeError, IndexError, KeyError):
        return 0


def _v9_to_v10(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 9 wrote the ledger's entries in the state's object, ``{"<name>": ENTRY}``;
    schema 10 writes each as a line ``[expires_at,"<name>",ENTRY]`` after the object (in
    expiry order), the object's ``entries`` their count. Migrated to the dict form of
    that: ``entries`` the list of lines, each ENTRY as it was (whatever fields the steps
    before gave it). Malformed entries are passed on in their line for the load's checks
    to name.
    """
    out = {**data, "schema_version": 10}
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("entries"), dict):
        policies = ledger.get("policies")
        rows = sorted(
            (
                (_v9_expiry(e, policies) if isinstance(e, list) else 0, name, e)
                for name, e in ledger["entries"].items()
            ),
            key=lambda row: row[0],
        )
        lines = [json.dumps(list(row), separators=(",", ":")) for row in rows]
        out["ledger"] = {**ledger, "entries": lines}
    return out


# schema 10's ECLASS: own fields, ring, notice marks, carried bytes, 3 inbound values, then
# its policy index
_V10_ECLASS_WIDTH = len(_V4_OWN_KEYS) + 8
_LEDGER_CLASSES_AT = tuple(i for i, f in enumerate(LEDGER_ENTRY) if f.kind == "entry_class")


def _eclass_trimmed(values: list[Any]) -> list[Any]:
    """An ECLASS array (ENTRY_CLASS's values, in order) without the trailing values at their
    default. A value of another type (``false`` for 0) is not a default: it stays for the
    load's checks to name.
    """
    end = len(values)
    while end > ECLASS_MIN:
        v, default = values[end - 1], ECLASS_DEFAULTS[end - 1 - ECLASS_MIN]
        if type(v) is not type(default) or v != default:
            break
        end -= 1
    return values[:end]


def _v10_line(line: object) -> object:
    """A schema-10 ledger line with its classes as schema 11 writes them; a line not
    shaped as schema 10's is passed on as it is (the load's checks name it).
    """
    if not (isinstance(line, str) and line.isascii()):
        return line
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # and JSONDecodeError, an integer too long
        return line
    if not (isinstance(row, list) and len(row) == 3 and isinstance(row[2], list)):
        return line
    entry = row[2]
    if len(entry) != len(LEDGER_ENTRY):
        return line
    for at in _LEDGER_CLASSES_AT:
        c = entry[at]
        if not (isinstance(c, list) and len(c) == _V10_ECLASS_WIDTH):
            return line
        entry[at] = _eclass_trimmed([c[-1], *c[:-1]])
    return json.dumps([row[0], row[1], entry], separators=(",", ":"))


def _v10_to_v11(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 10 wrote each ledger ECLASS in full, its policy index last; schema 11 writes
    the index first and leaves out the trailing fields at their default (a waiting entry
    of a slice that had no ring, notices, rollover or inbound bytes: 6 values, not 13).
    Each line of the dict form's ``ledger.entries`` is rewritten; malformed ones are
    passed on as they are for the load's checks to name. Schema 10 did not count the
    cycles (``cycles`` 0: the history journal's records of schema 10's cycles are of
    an older version, not matched against it).
    """
    out = {**data, "schema_version": 11, "cycles": 0}
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("entries"), list):
        out["ledger"] = {**ledger, "entries": [_v10_line(line) for line in ledger["entries"]]}
    return out


# version N → a function turning a schema-N object into the next version's object (the
# version it returns is the next one looked up)
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _v0_to_v1,
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
    7: _v7_to_v8,
    8: _v8_to_v9,
    9: _v9_to_v10,
    10: _v10_to_v11,
}


def migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` (a parsed state file) brought to SCHEMA_VERSION, each step logged.

    Raises StateCorrupt for a missing or unknown version, StateTooNew for a newer one.
    """
    version = data.get("schema_version")
    if type(version) is not int:
        raise corrupt(source, "schema_version", "expected an integer")
    if version > SCHEMA_VERSION:
        raise StateTooNew(
            f"{source}: schema_version {version} is newer than this bwenforcer reads"
            f" ({SCHEMA_VERSION}); refusing to use or overwrite it"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise corrupt(source, "schema_version", f"unknown version {version}")
        data = step(data)
        version = data["schema_version"]
        log.info("%s: migrated state to schema_version %d", source, version)
    return data

"""The state file's ledger (schema.LEDGER) in its compact form, encoded and decoded.

Each entry is an array (schema.LEDGER_ENTRY) whose classes (schema.ENTRY_CLASS: its
trailing values at their default left out since schema 11) name their policies
by index into the ledger's ``policies`` table; since schema 10 each entry is a line
``[expires_at,"name",ENTRY]`` after the state's JSON object (which has the ledger's
``policies`` and the count of its ``entries``), so the state's parse does not expand
them and a loaded ledger keeps them as text (:class:`~bwenforcer.core.ledger.LazyLedger`):

- :func:`ledger_file_json`, the dict form (its lines as a list of strings);
- :class:`LedgerEncoder`, its lines, reusing the saved text of entries that wait
  (the save of every cycle) and the text of entries added since;
- :func:`ledger_from`, every line checked at load (a fast decoder per entry, then the
  strict one naming the entry and the first problem in one line), kept as text.

Also the strict decoder's checks (:data:`_CHECKS`, :func:`_object`), which
:mod:`bwenforcer.store.codec` shares for the rest of the state.
"""

from __future__ import annotations

import dataclasses
import json
from array import array
from collections.abc import Callable, Mapping
from json.decoder import scanstring
from operator import attrgetter
from typing import Any

from bwenforcer.core.layout import DEFAULT_XID
from bwenforcer.core.ledger import LazyLedger, saved_ledger
from bwenforcer.core.model import (
    ClassPolicy,
    ClassState,
    LedgerEntry,
    SliceState,
    ordered_ledger,
)
from bwenforcer.core.notices import MAX_NOTICE_SHARE_BP
from bwenforcer.store.schema import (
    ECLASS_DEFAULTS,
    ECLASS_MIN,
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

_POLICY_GET = tuple(attrgetter(f.attr.removeprefix(_POLICY)) for f in POLICY)
_POLICY_NAMES = tuple(p.name for p in dataclasses.fields(ClassPolicy))


def ledger_file_json(ledger: Mapping[str, LedgerEntry]) -> dict[str, Any]:
    """The state file's ``ledger`` object (schema.LEDGER) as a dict, its entries as the
    list of their lines (the file has their count, then the lines after the object).
    """
    encoder = LedgerEncoder()
    head, parts = encoder.encode(ledger)
    lines = b"".join(parts).decode("ascii").splitlines()
    return {"policies": json.loads(head)["policies"], "entries": lines}


# --- the text encoder --------------------------------------------------------------------

# the ledger's policies an encoder keeps before it starts its table over (each policy
# change of the slices file adds its new policies)
_MAX_LEDGER_POLICIES = 1024

_Parts = list[bytes | memoryview]

# the ECLASS fields the encoder may leave out (schema.ECLASS_MIN on): their values on a
# ClassState, those values' defaults (the model's: a ring is a tuple) and their JSON text
_OPTIONAL = ENTRY_CLASS[ECLASS_MIN:]
_OPTIONAL_GET = attrgetter(*(f.attr for f in _OPTIONAL))
_OPTIONAL_DEFAULTS = tuple(tuple(v) if type(v) is list else v for v in ECLASS_DEFAULTS)
_KIND_TEXT: Mapping[str, Callable[[Any], str]] = {
    "uint": str,
    "buckets": ring_text,
    "lift": _LIFT.__getitem__,
}
_OPTIONAL_TEXT = tuple(_KIND_TEXT[f.kind] for f in _OPTIONAL)


class LedgerEncoder:
    """Encodes ledgers as their ``policies`` and lines, entry by entry.

    The lines of a loaded ledger (:class:`~bwenforcer.core.ledger.LazyLedger`) are
    written as they were read, and the policies they name kept; only the entries
    added since are encoded, each line kept with the entry it was made from (an
    entry waits unchanged, the very object, until it expires or is revived). A ledger
    handed on unchanged (the very mapping) is not looked at.
    """

    def __init__(self) -> None:
        self._lines: dict[str, tuple[LedgerEntry, bytes]] = {}
        self._whole: tuple[object, bytes, _Parts] | None = None
        # the table the lines' policy indexes are into: whose it is (a saved ledger's,
        # or None: this encoder's own), the indexes and the texts
        self._table_of: object = None
        self._policies: dict[ClassPolicy, int] = {}
        self._policy_texts: list[str] = []

    def encode(self, ledger: Mapping[str, LedgerEntry]) -> tuple[bytes, _Parts]:
        """The ledger object's text and its lines (as parts); the very ones of the last
        call for the very mapping.
        """
        whole = self._whole
        if whole is None or whole[0] is not ledger:
            head, parts = self._encode(ledger)
            whole = self._whole = (ledger, head, parts)
        return whole[1], whole[2]

    def _start(self, owner: object, table: tuple[ClassPolicy, ...]) -> None:
        if self._table_of is owner and owner is not None:
            return
        self._table_of, self._lines = owner, {}
        self._policies, self._policy_texts = {}, []
        for policy in table:
            self._policy_at(policy, new=True)

    def _encode(self, ledger: Mapping[str, LedgerEntry]) -> tuple[bytes, _Parts]:
        base = ledger.base if isinstance(ledger, LazyLedger) else None
        if base is not None and len(base.extra) <= _MAX_LEDGER_POLICIES:  # type: ignore[arg-type]
            self._start(base, base.extra)  # type: ignore[arg-type]
            pieces = ledger.pieces()  # type: ignore[union-attr]
        else:
            if self._table_of is not None or len(self._policy_texts) > _MAX_LEDGER_POLICIES:
                self._start(None, ())
                self._table_of = None
            # a mapping made elsewhere (not the planner's): written in expiry order
            pieces = iter(ordered_ledger(ledger).items())  # type: ignore[assignment]
        kept, fresh = self._lines, {}
        parts: _Parts = []
        for piece in pieces:
            if isinstance(piece, memoryview):
                parts.append(piece)
                continue
            name, entry = piece
            hit = kept.get(name)
            if hit is None or hit[0] is not entry:
                text = f"[{entry.expires_s},{json.dumps(name)},{self._entry_text(entry)}]\n"
                hit = (entry, text.encode())
            fresh[name] = hit
            parts.append(hit[1])
        self._lines = fresh  # entries gone are forgotten
        head = f'{{"policies":[{",".join(self._policy_texts)}],"entries":{len(ledger)}}}'
        return head.encode(), parts

    def _entry_text(self, entry: LedgerEntry) -> str:
        """An entry's array (schema.LEDGER_ENTRY; its order and the classes' are held to
        the tables by a test): died_at, xid, period, then each class's ENTRY_CLASS array.
        """
        st = entry.slice
        return (
            f"[{entry.died_s},{st.xid},{st.period_start_s},{st.period_end_s},"
            f"{self._class_text(st.default)},{self._class_text(st.exempt)}]"
        )

    def _class_text(self, cs: ClassState) -> str:
        """A class's ENTRY_CLASS array, without the trailing fields at their default."""
        head = (
            f"[{self._policy_at(cs.policy)},{cs.used_bytes},{cs.last_counter_bytes},"
            f"{cs.ceil_bps},{_JSON_BOOL[cs.capped]},{_JSON_BOOL[cs.notified]}"
        )
        rest = _OPTIONAL_GET(cs)
        if rest == _OPTIONAL_DEFAULTS:  # most entries: nothing past the flags
            return f"{head}]"
        end = len(rest)
        while rest[end - 1] == _OPTIONAL_DEFAULTS[end - 1]:
            end -= 1
        texts = (text(v) for text, v in zip(_OPTIONAL_TEXT[:end], rest, strict=False))
        return f"{head},{','.join(texts)}]"

    def _policy_at(self, policy: ClassPolicy, new: bool = False) -> int:
        at = None if new else self._policies.get(policy)
        if at is None:
            at = len(self._policy_texts)
            self._policies.setdefault(policy, at)
            values = [g(policy) for g in _POLICY_GET]
            self._policy_texts.append(json.dumps(values, separators=(",", ":")))
        return at


# --- the decoders ------------------------------------------------------------------------


def ledger_from(
    value: dict[str, Any], tail: bytes, policies: _Policies, source: str, path: str
) -> LazyLedger:
    """The ledger of the object ``value`` and the lines ``tail`` after the state's object
    (or, in the dict form, ``value``'s list of lines), each line checked in full and
    kept as text; or StateCorrupt naming the first problem.
    """
    d = _object(value, LEDGER_KEYS, source, path)
    raw = d["policies"]
    if type(raw) is not list:
        raise corrupt(source, f"{path}.policies", "expected a list")
    table = tuple(
        _policy_from(p, policies, source, f"{path}.policies[{i}]") for i, p in enumerate(raw)
    )
    entries = d["entries"]
    if type(entries) is list and not tail:
        if not all(type(line) is str and line.isascii() for line in entries):
            raise corrupt(source, f"{path}.entries", "expected a list of ASCII lines")
        tail = "".join(f"{line}\n" for line in entries).encode()
        count = len(entries)
    else:
        count = _line_count(entries, tail, source, path)

    def decode(line: bytes) -> LedgerEntry:
        _, name, entry = json.loads(line)
        return _entry_fast(name, entry, table) or _entry_from(
            name, entry, table, source, f"{path}.entries.{name}"
        )

    starts, expires, xids = array("q"), array("q"), array("i")
    hashes = array("q")
    start, last = 0, 0
    for k in range(count):
        end = tail.index(b"\n", start) + 1
        line = tail[start:end]
        where = f"{path}.entries[{k}]"
        try:
            data = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise corrupt(source, where, f"not a JSON line ({exc})") from exc
        if not (type(data) is list and len(data) == 3 and type(data[1]) is str):
            raise corrupt(source, where, "expected [expires_at, name, ENTRY]")
        name = data[1]
        entry = _entry_fast(name, data[2], table) or _entry_from(
            name, data[2], table, source, f"{path}.entries.{name}"
        )
        if data[0] != entry.expires_s or type(data[0]) is not int:
            raise corrupt(source, f"{where}[0]", f"expected its expiry {entry.expires_s}")
        if entry.expires_s < last:
            raise corrupt(source, f"{where}[0]", "before the line above it (not in expiry order)")
        if _name_of(line) != name:
            raise corrupt(source, where, "expected the name right after the expiry")
        last = entry.expires_s
        starts.append(start)
        expires.append(last)
        xids.append(entry.slice.xid)
        hashes.append(hash(name))
        start = end
    saved = saved_ledger(
        tail, starts, expires, xids, hashes, name_of=_name_of, decode=decode, extra=table
    )
    if isinstance(saved, str):
        raise corrupt(source, f"{path}.entries.{saved}", "a second entry of this name")
    return LazyLedger(saved)


def _line_count(entries: object, tail: bytes, source: str, path: str) -> int:
    """The count of the lines ``tail`` after the state's object, as the ledger's
    ``entries`` says it; or StateCorrupt naming how they do not match.
    """
    if type(entries) is not int or entries < 0:
        raise corrupt(source, f"{path}.entries", "expected the count of the lines after it")
    if tail and not tail.endswith(b"\n"):
        raise corrupt(source, f"{path}.entries", "the last line is cut short")
    found = tail.count(b"\n")
    if found != entries:
        raise corrupt(source, f"{path}.entries", f"{entries} entries, but {found} lines follow")
    return entries


def ledger_lines_into(data: dict[str, Any], tail: bytes, source: str, path: str) -> dict[str, Any]:
    """``data`` (a state's object of an older schema with ledger lines) with the lines
    ``tail`` after it in its ledger's ``entries``, the dict form the migrations change;
    or StateCorrupt when they do not go with the object (its count, ASCII lines).
    """
    d = _object(data.get(path), LEDGER_KEYS, source, path)
    count = _line_count(d["entries"], tail, source, path)
    lines = tail.split(b"\n")[:count]
    for k, line in enumerate(lines):
        if not line.isascii():
            raise corrupt(source, f"{path}.entries[{k}]", "not an ASCII line")
    return {**data, path: {**d, "entries": [line.decode("ascii") for line in lines]}}


def _name_of(line: bytes) -> str:
    """The name of a ledger line ``[expires_at,"name",…]`` (as the encoder writes it)."""
    try:
        return scanstring(line.decode("ascii"), line.index(b",") + 2)[0]  # type: ignore[no-any-return]
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
        return ""


def _items(value: object, fields: tuple[Field, ...], source: str, path: str) -> list[Any]:
    """The checked values of an array of ``fields`` (the strict decoder's), the trailing
    ones with a default (schema.Field.default) filled in where the array ends early.
    """
    least = sum(1 for f in fields if not f.default)
    if type(value) is not list or not least <= len(value) <= len(fields):
        many = f"{least} to {len(fields)}" if least < len(fields) else f"{len(fields)}"
        raise corrupt(source, path, f"expected a list of {many} values")
    value = [*value, *(json.loads(f.default) for f in fields[len(value) :])]
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
    at, *own = _items(value, ENTRY_CLASS, source, path)
    if at >= len(table):
        raise corrupt(source, f"{path}[0]", f"policy {at} not in the ledger's {len(table)}")
    kw = dict(zip((f.attr for f in ENTRY_CLASS[1:]), own, strict=True))
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


# what an ECLASS of ECLASS_MIN + k values is padded with to its full length, at k (the
# JSON defaults, which the checks below pass)
_ECLASS_PAD = tuple(ECLASS_DEFAULTS[k:] for k in range(len(ECLASS_DEFAULTS)))


def _entry_class_fast(c: object, table: list[ClassPolicy]) -> ClassState | None:
    if type(c) is not list:
        return None
    if len(c) != 13:
        if not ECLASS_MIN <= len(c) < 13:
            return None
        c = [*c, *_ECLASS_PAD[len(c) - ECLASS_MIN]]
    (
        at,
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
        and type(lift) is str  # before the look-up: a list or object is not hashable
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

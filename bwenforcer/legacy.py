"""Import PlanetLab's ``bwmon.pickle`` / ``bwmon.dat`` without executing anything.

The file is a Python 2 pickle (protocol 0, 1 or 2) of ``(version, slices, deaddb)``:
``slices`` maps xid → ``bwmon.Slice``, ``deaddb`` maps name → ``Slice`` (or, in later
versions, name → ``{'slice': Slice, 'htb': {...}}``). The file is read by this
module's own interpreter of the opcodes (not ``pickle``): it builds scalars, tuples,
lists, dicts and, for ``bwmon.Slice`` and the two helpers Python 2 uses to rebuild
instances, a stand-in that merely holds attributes; any other global is refused, and
every cost (size, objects, depth, memo, time) is bounded by :class:`PickleLimits`.

A legacy Slice keeps the kernel counters at the start of its period (``bytes``,
``i2bytes``) rather than the usage, so each imported class starts with
``used_bytes = 0`` and ``last_counter_bytes`` = that baseline: the first cycle counts
exactly the bytes sent since the legacy period started. A dead slice of the later
form also has the counters read when it died (``htb``), so it keeps what it used.
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import reprlib
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .config import ClassDefaults, Config
from .errors import LegacyImportError
from .layout import DEFAULT_XID, ROOT_XID, XID_MAX, TrafficClass
from .model import ClassPolicy, ClassState, LedgerEntry, SliceState, State
from .policy import class_cap_bps, counter_delta, threshold_bytes
from .slicename import shown
from .slices import NAME
from .units import kbit_to_bps, kib_to_bytes

log = logging.getLogger(__name__)

Clock = Callable[[], float]

MAX_FILE_BYTES = 64 * 2**20  # a node with 4,000 slices writes well under 2 MiB
SYSTEM_NAMES = frozenset({"root", "default"})  # bwmon's own entries for xids 0 and 0xfff

# Legacy attribute names per traffic class (rates in kbit/s, sizes in KiB).
_ATTRS: Mapping[TrafficClass, Mapping[str, str]] = {
    "default": {
        "baseline": "bytes",
        "limit": "MaxKByte",
        "threshold": "ThreshKByte",
        "min_rate": "MinRate",
        "max_rate": "MaxRate",
        "share": "Share",
    },
    "exempt": {
        "baseline": "i2bytes",
        "limit": "Maxi2KByte",
        "threshold": "Threshi2KByte",
        "min_rate": "Mini2Rate",
        "max_rate": "Maxi2Rate",
        "share": "Sharei2",
    },
}


class LegacySlice:
    """Stand-in for ``bwmon.Slice``: holds the pickled attributes, runs no code of its own."""

    __slots__ = ("attrs",)
    attrs: dict[Any, Any]

    def __init__(self) -> None:
        self.attrs = {}


class _Py2Object:
    """Stand-in for ``__builtin__.object`` (the base named by ``copy_reg._reconstructor``)."""


class _Reconstructor:
    """Stand-in for ``copy_reg._reconstructor``: the interpreter rebuilds only a LegacySlice."""


_ALLOWED: Mapping[tuple[str, str], object] = {
    ("bwmon", "Slice"): LegacySlice,
    ("copy_reg", "_reconstructor"): _Reconstructor,
    ("copyreg", "_reconstructor"): _Reconstructor,
    ("__builtin__", "object"): _Py2Object,
    ("builtins", "object"): _Py2Object,
}


@dataclass(frozen=True)
class PickleLimits:
    """Upper bounds of what reading one legacy pickle may cost.

    A node of 4,096 slices writes about 2 MiB, 200,000 objects, 5 levels deep; the
    bounds leave room for that and stop the tiny pickles that refer to one object a
    billion times, nest 100,000 levels deep or make one key cost 2**60 to hash.
    """

    max_file_bytes: int = MAX_FILE_BYTES
    max_objects: int = 1_000_000  # objects pushed, and the size of any one object's tree
    max_container_len: int = 100_000
    max_depth: int = 32
    max_memo: int = 1_000_000
    max_stack: int = 200_000
    max_time_s: float = 30.0


class _Refused(Exception):
    """The pickle breaks a limit or uses what bwmon never wrote; str() is the reason."""


class _Unsafe(_Refused):
    """The pickle names a global or persistent id that could run code; refused as it is."""


_CONTAINERS = (tuple, list, dict, LegacySlice)
_KEY_TYPES = (str, int, float, type(None))  # bool is an int; bwmon keyed by xid and name


class _Interpreter:
    """Runs the opcodes of a Python 2 pickle (protocols 0-2) with every cost counted.

    The objects are built here rather than by ``pickle.Unpickler``, which cannot be
    bounded: its memo grows to the largest index named, and nothing stops a shared
    object from being nested or hashed exponentially often. A container may not change
    once it is inside another one (Python 2 only writes cycles that way), so the size
    (every reference counted) and depth recorded when it is nested stay true.
    """

    def __init__(self, raw: bytes, limits: PickleLimits, deadline_s: float, clock: Clock) -> None:
        self.raw = raw
        self.pos = 0
        self.limits = limits
        self.deadline_s = deadline_s
        self.clock = clock
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0
        # id of every container built -> (tree size, depth, sealed); `keep` holds them
        # so that no id is reused while its entry is here.
        self.info: dict[int, tuple[int, int, bool]] = {}
        self.keep: list[object] = []

    # --- reading the arguments ---------------------------------------------------------

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _Refused("ends in the middle of an opcode")
        data = self.raw[self.pos : self.pos + n]
        self.pos += n
        return data

    def line(self) -> bytes:
        end = self.raw.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("ends in the middle of an opcode")
        data = self.raw[self.pos : end]
        self.pos = end + 1
        return data

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def decimal(self) -> int:
        text = self.line()
        if len(text) > 40:  # a 64-bit counter has 20 digits
            raise _Refused("integer of more than 40 digits")
        return int(text.rstrip(b"L"))

    def quoted(self) -> str:
        text = self.line()
        if len(text) < 2 or text[:1] not in (b"'", b'"') or text[-1:] != text[:1]:
            raise _Refused("string without quotes")
        return codecs.escape_decode(text[1:-1])[0].decode("latin1")

    # --- the objects ---------------------------------------------------------------------

    def push(self, value: object) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise _Refused(f"more than {self.limits.max_objects} objects")
        if len(self.stack) >= self.limits.max_stack:
            raise _Refused(f"more than {self.limits.max_stack} objects on the stack")
        self.stack.append(value)

    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused("pops an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Refused("no mark to pop to")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def nest(self, children: list[Any]) -> tuple[int, int]:
        """Seal the children; the tree size and depth of a container holding them."""
        size, depth = 1, 0
        for child in children:
            if isinstance(child, _CONTAINERS):
                child_size, child_depth, _ = self.info[id(child)]
                self.info[id(child)] = (child_size, child_depth, True)
                size += child_size
                depth = max(depth, child_depth)
            else:
                size += 1
        return size, depth + 1

    def record(self, container: object, size: int, depth: int) -> None:
        if size > self.limits.max_objects:
            raise _Refused(f"one object refers to more than {self.limits.max_objects} others")
        if depth > self.limits.max_depth:
            raise _Refused(f"nested more than {self.limits.max_depth} levels deep")
        self.info[id(container)] = (size, depth, False)

    def new(self, container: object, children: list[Any]) -> None:
        if len(children) > self.limits.max_container_len:
            raise _Refused(f"a container of more than {self.limits.max_container_len} items")
        self.keep.append(container)
        self.record(container, *self.nest(children))
        self.push(container)

    def grow(self, container: object, children: list[Any], new_len: int) -> None:
        """Account for children added to a container that is not yet nested."""
        if new_len > self.limits.max_container_len:
            raise _Refused(f"a container of more than {self.limits.max_container_len} items")
        add_size, add_depth = self.nest(children)
        size, depth, sealed = self.info[id(container)]
        if sealed:
            raise _Refused("changes an object after nesting it (a cycle)")
        self.record(container, size + add_size - 1, max(depth, add_depth))

    def set_items(self, target: object, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise _Refused("SETITEMS without a dict and pairs")
        keys = items[::2]
        for key in keys:
            if not isinstance(key, _KEY_TYPES):
                raise _Refused(f"a dict key is a {type(key).__name__}")
        self.grow(target, items, len(target) + len(keys))
        target.update(zip(keys, items[1::2], strict=True))

    def instance(self, cls: object, args: object) -> None:
        if cls is not LegacySlice or args:
            raise _Refused("builds an object other than a bwmon.Slice")
        self.new(LegacySlice(), [])

    # --- the opcodes ---------------------------------------------------------------------

    def run(self) -> object:
        while True:
            if self.clock() > self.deadline_s:
                raise _Refused(f"took more than {self.limits.max_time_s:g} s")
            at = self.pos
            if at >= len(self.raw):
                raise _Refused("ends before its STOP opcode")
            code = self.take(1)
            try:
                if code == b".":
                    value = self.pop()
                    if self.stack or self.marks:
                        raise _Refused("objects left on the stack at STOP")
                    return value
                self.step(code)
            except _Unsafe:
                raise
            except _Refused as exc:
                raise _Refused(f"{exc} (opcode {code!r} at byte {at})") from None
            except (ValueError, UnicodeError, OverflowError, struct.error) as exc:
                raise _Refused(f"{reprlib.repr(str(exc))} (opcode {code!r} at byte {at})") from None

    def step(self, code: bytes) -> None:
        push = self.push
        if code == b"\x80":
            if self.uint(1) > 2:
                raise _Refused("pickle protocol above 2: not written by Python 2")
        elif code == b"(":
            if len(self.marks) >= self.limits.max_stack:
                raise _Refused(f"more than {self.limits.max_stack} marks")
            self.marks.append(len(self.stack))
        elif code == b"0":
            self.pop()
        elif code == b"1":
            self.pop_mark()
        elif code == b"2":
            if not self.stack:
                raise _Refused("DUP of an empty stack")
            push(self.stack[-1])
        elif code == b"N":
            push(None)
        elif code in (b"\x88", b"\x89"):
            push(code == b"\x88")
        elif code == b"I":
            text = self.raw[self.pos : self.pos + 3]
            if text in (b"00\n", b"01\n"):
                self.pos += 3
                push(text == b"01\n")
            else:
                push(self.decimal())
        elif code == b"J":
            push(int.from_bytes(self.take(4), "little", signed=True))
        elif code == b"K":
            push(self.uint(1))
        elif code == b"M":
            push(self.uint(2))
        elif code == b"L":
            push(self.decimal())
        elif code in (b"\x8a", b"\x8b"):
            n = self.uint(1) if code == b"\x8a" else self.uint(4)
            if n > 32:
                raise _Refused(f"integer of {n} bytes")
            push(int.from_bytes(self.take(n), "little", signed=True))
        elif code == b"F":
            push(float(self.line()))
        elif code == b"G":
            push(struct.unpack(">d", self.take(8))[0])
        elif code == b"S":
            push(self.quoted())
        elif code in (b"T", b"U"):
            push(self.take(self.uint(4) if code == b"T" else self.uint(1)).decode("latin1"))
        elif code == b"V":
            push(self.line().decode("raw_unicode_escape"))
        elif code == b"X":
            push(self.take(self.uint(4)).decode("utf-8", "surrogatepass"))
        elif code == b")":
            self.new((), [])
        elif code in (b"\x85", b"\x86", b"\x87"):
            n = code[0] - 0x84
            if len(self.stack) - (self.marks[-1] if self.marks else 0) < n:
                raise _Refused("TUPLE of an empty stack")
            items = self.stack[-n:]
            del self.stack[-n:]
            self.new(tuple(items), items)
        elif code == b"t":
            items = self.pop_mark()
            self.new(tuple(items), items)
        elif code == b"]":
            self.new([], [])
        elif code == b"l":
            items = self.pop_mark()
            self.new(list(items), items)
        elif code in (b"a", b"e"):
            items = [self.pop()] if code == b"a" else self.pop_mark()
            target = self.pop()
            if not isinstance(target, list):
                raise _Refused("APPEND to something other than a list")
            self.grow(target, items, len(target) + len(items))
            target.extend(items)
            self.stack.append(target)
        elif code == b"}":
            self.new({}, [])
        elif code == b"d":
            items = self.pop_mark()
            target: dict[Any, Any] = {}
            self.new(target, [])
            self.set_items(target, items)
        elif code in (b"s", b"u"):
            items = self.pop_mark() if code == b"u" else [self.pop(), self.pop()][::-1]
            target = self.pop()
            self.set_items(target, items)
            self.stack.append(target)
        elif code in (b"g", b"h", b"j"):
            index = self.decimal() if code == b"g" else self.uint(1 if code == b"h" else 4)
            if index not in self.memo:
                raise _Refused(f"memo {index} was never stored")
            push(self.memo[index])
        elif code in (b"p", b"q", b"r"):
            index = self.decimal() if code == b"p" else self.uint(1 if code == b"q" else 4)
            if not self.stack:
                raise _Refused("PUT of an empty stack")
            if index not in self.memo and len(self.memo) >= self.limits.max_memo:
                raise _Refused(f"more than {self.limits.max_memo} memo entries")
            self.memo[index] = self.stack[-1]
        elif code in (b"c", b"i"):
            module = self.line().decode("ascii")
            name = self.line().decode("ascii")
            found = _ALLOWED.get((module, name))
            if found is None:
                what = reprlib.repr(f"{module}.{name}")[1:-1]
                raise _Unsafe(f"refusing to load {what}: not a bwmon.Slice")
            if code == b"c":
                push(found)
            else:
                self.instance(found, self.pop_mark())
        elif code == b"o":
            items = self.pop_mark()
            if not items:
                raise _Refused("OBJ without a class")
            self.instance(items[0], items[1:])
        elif code == b"\x81":
            args = self.pop()
            self.instance(self.pop(), args)
        elif code == b"R":
            args = self.pop()
            func = self.pop()
            if func is not _Reconstructor or not (
                isinstance(args, tuple)
                and len(args) == 3
                and args[0] is LegacySlice
                and args[1] is _Py2Object
                and args[2] is None
            ):
                raise _Refused("calls something other than copy_reg._reconstructor(bwmon.Slice)")
            self.instance(LegacySlice, ())
        elif code == b"b":
            state = self.pop()
            target = self.pop()
            if not isinstance(target, LegacySlice) or not isinstance(state, dict):
                raise _Refused("BUILD of something other than a bwmon.Slice from a dict")
            self.grow(target, [state], 1)
            target.attrs = state
            self.stack.append(target)
        elif code in (b"P", b"Q"):
            raise _Unsafe("refusing a persistent id: not a bwmon pickle")
        else:
            raise _Refused("an opcode Python 2 does not write for bwmon's data")


def _read_at_most(f: BinaryIO, limit_bytes: int) -> bytes:
    """Up to ``limit_bytes`` of ``f``, in chunks: one ``read(limit)`` allocates the limit."""
    chunks: list[bytes] = []
    left_bytes = limit_bytes
    while left_bytes > 0:
        chunk = f.read(min(left_bytes, 2**20))
        if not chunk:
            break
        chunks.append(chunk)
        left_bytes -= len(chunk)
    return b"".join(chunks)


def _unpickle(path: str, limits: PickleLimits, clock: Clock) -> object:
    deadline_s = clock() + limits.max_time_s
    try:
        with open(path, "rb") as f:
            raw = _read_at_most(f, limits.max_file_bytes + 1)
    except OSError as exc:
        raise LegacyImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > limits.max_file_bytes:
        raise LegacyImportError(
            f"{path}: larger than {limits.max_file_bytes} bytes: not a bwmon pickle"
        )
    try:
        return _Interpreter(raw, limits, deadline_s, clock).run()
    except _Unsafe as exc:
        raise LegacyImportError(f"{path}: {exc}") from None
    except _Refused as exc:
        raise LegacyImportError(f"{path}: not a readable bwmon pickle: {exc}") from None


class _BadSlice(Exception):
    """One legacy slice cannot be imported; it is skipped with a warning."""


def _number(attrs: Mapping[str, Any], key: str) -> int | None:
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _BadSlice(f"{key} = {reprlib.repr(value)} is not a non-negative number")
    return int(value)


def _policy(attrs: Mapping[str, Any], tc: TrafficClass, config: Config) -> ClassPolicy:
    names = _ATTRS[tc]
    defaults: ClassDefaults = config.defaults[tc]
    limit_kib = _number(attrs, names["limit"])
    threshold_kib = _number(attrs, names["threshold"])
    min_kbit = _number(attrs, names["min_rate"])
    max_kbit = _number(attrs, names["max_rate"])
    share = _number(attrs, names["share"])
    limit_bytes = defaults.limit_bytes if limit_kib is None else kib_to_bytes(limit_kib)
    default_max_bps = defaults.max_rate_bps or class_cap_bps(
        tc, config.node_cap_bps, config.bwmax_bps
    )
    return ClassPolicy(
        limit_bytes=limit_bytes,
        threshold_bytes=threshold_bytes(
            limit_bytes,
            None if threshold_kib is None else kib_to_bytes(threshold_kib),
            defaults.threshold_bytes,
            limit_given=limit_kib is not None,
        ),
        min_rate_bps=defaults.min_rate_bps if min_kbit is None else kbit_to_bps(min_kbit),
        max_rate_bps=default_max_bps if max_kbit is None else kbit_to_bps(max_kbit),
        share=defaults.share if share is None else max(1, share),
    )


def _slice_state(legacy: LegacySlice, xid: int, config: Config) -> SliceState:
    attrs = legacy.attrs
    name = attrs.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _BadSlice(f"name {shown(name)} is not a slice name")
    if not 0 < xid <= XID_MAX:
        raise _BadSlice(f"xid {xid} out of range 1..{XID_MAX}")
    start_s = _number(attrs, "time")
    if start_s is None:
        raise _BadSlice("no period start (time)")
    notified = bool(attrs.get("emailed", False))
    capped = bool(attrs.get("capped", False))  # only later versions kept it
    classes = {}
    for tc, names in _ATTRS.items():
        baseline = _number(attrs, names["baseline"])
        if baseline is None:
            raise _BadSlice(f"no baseline ({names['baseline']})")
        classes[tc] = ClassState(
            policy=_policy(attrs, tc, config),
            used_bytes=0,
            last_counter_bytes=baseline,
            capped=capped,
            notified=notified,
        )
    return SliceState(
        name=name,
        xid=xid,
        period_start_s=start_s,
        period_end_s=start_s + config.period_s,
        default=classes["default"],
        exempt=classes["exempt"],
    )


def _label(legacy: LegacySlice, key: object) -> str:
    name = legacy.attrs.get("name")
    return f"{shown(name)} ({key})" if isinstance(name, str) else repr(key)


def _live_slices(path: str, slices: object, config: Config) -> dict[int, SliceState]:
    if not isinstance(slices, dict):
        raise LegacyImportError(f"{path}: slices is a {type(slices).__name__}, not a dict")
    out: dict[int, SliceState] = {}
    for xid, legacy in slices.items():
        if not isinstance(legacy, LegacySlice) or isinstance(xid, bool) or not isinstance(xid, int):
            raise LegacyImportError(
                f"{path}: slices[{reprlib.repr(xid)}] is not an xid → bwmon.Slice entry"
            )
        name = legacy.attrs.get("name")
        if xid in (ROOT_XID, DEFAULT_XID) or (isinstance(name, str) and name in SYSTEM_NAMES):
            continue
        try:
            out[xid] = _slice_state(legacy, xid, config)
        except _BadSlice as exc:
            log.warning("legacy %s: skipping slice %s: %s", path, _label(legacy, xid), exc)
    return out


def _dead_slice(path: str, name: object, value: object) -> tuple[LegacySlice, object]:
    """The Slice of a deaddb entry and the kernel counters saved with it (None if none).

    Early versions stored the Slice itself; later ones ``{'slice': Slice, 'htb': {...}}``
    with the HTB counters read when the slice died.
    """
    htb = None
    if isinstance(value, dict):
        value, htb = value.get("slice"), value.get("htb")
    if not isinstance(name, str) or not isinstance(value, LegacySlice):
        raise LegacyImportError(
            f"{path}: deaddb[{reprlib.repr(name)}] is not a name → bwmon.Slice entry"
        )
    return value, htb


# The counters bwmon read from the kernel class (gethtbs) when the slice died.
_HTB_COUNTERS: Mapping[TrafficClass, str] = {"default": "usedbytes", "exempt": "usedi2bytes"}


def _dead_usage(st: SliceState, htb: object) -> SliceState:
    """A dead slice's state with the bytes it sent between its period start and its death.

    A legacy Slice's ``bytes`` / ``i2bytes`` are the counters at the period start, so the
    usage is the counter at death minus that baseline (a counter that went back restarted
    from 0, as in a live cycle).
    """
    if htb is None:
        return st
    if not isinstance(htb, dict):
        raise _BadSlice(f"htb is a {type(htb).__name__}, not a dict")
    classes = {}
    for tc, key in _HTB_COUNTERS.items():
        counter_bytes = _number(htb, key)
        if counter_bytes is None:
            raise _BadSlice(f"htb has no {key}")
        cs = st.cls(tc)
        classes[tc] = dataclasses.replace(
            cs,
            used_bytes=counter_delta(counter_bytes, cs.last_counter_bytes),
            last_counter_bytes=counter_bytes,
        )
    return dataclasses.replace(st, default=classes["default"], exempt=classes["exempt"])


def _ledger(
    path: str, deaddb: object, config: Config, now_s: int, live_names: set[str]
) -> dict[str, LedgerEntry]:
    if not isinstance(deaddb, dict):
        raise LegacyImportError(f"{path}: deaddb is a {type(deaddb).__name__}, not a dict")
    out: dict[str, LedgerEntry] = {}
    for name, value in deaddb.items():
        legacy, htb = _dead_slice(path, name, value)
        xid = legacy.attrs.get("xid")
        try:
            if isinstance(xid, bool) or not isinstance(xid, int):
                raise _BadSlice(f"xid {reprlib.repr(xid)} is not an integer")
            st = _dead_usage(_slice_state(legacy, xid, config), htb)
        except _BadSlice as exc:
            log.warning("legacy %s: skipping dead slice %s: %s", path, shown(name), exc)
            continue
        if st.name != name:
            log.warning(
                "legacy %s: skipping dead slice %s: its name is %s", path, shown(name), st.name
            )
        elif name in live_names:
            log.warning("legacy %s: dead slice %s is live again: keeping the live one", path, name)
        elif st.period_end_s <= now_s:
            log.info("legacy %s: dead slice %s: period over, not imported", path, name)
        else:
            out[name] = LedgerEntry(slice=st, died_s=now_s)
    return out


def import_legacy(
    path: str,
    config: Config,
    now_s: int,
    limits: PickleLimits = PickleLimits(),
    clock: Clock = time.monotonic,
) -> State:
    """Read a legacy bwmon pickle into a State (slices by xid, dead slices in the ledger).

    Raises LegacyImportError (one line) for an unreadable, malformed, unsafe or too
    costly file (beyond ``limits``, ``clock`` measuring the time); a single slice that
    cannot be imported is skipped with a warning naming it.
    """
    data = _unpickle(path, limits, clock)
    if not isinstance(data, tuple | list) or len(data) != 3:
        raise LegacyImportError(f"{path}: expected a (version, slices, deaddb) tuple")
    version, slices, deaddb = data
    log.info("legacy %s: bwmon data version %s", path, reprlib.repr(version))
    live = _live_slices(path, slices, config)
    ledger = _ledger(path, deaddb, config, now_s, {st.name for st in live.values()})
    log.info("legacy %s: imported %d slices, %d ledger entries", path, len(live), len(ledger))
    return State(slices=live, ledger=ledger)

"""Import PlanetLab's ``bwmon.pickle`` / ``bwmon.dat`` without executing anything.

The file is a Python 2 pickle (protocol 0, 1 or 2) of ``(version, slices, deaddb)``:
``slices`` maps xid → ``bwmon.Slice``, ``deaddb`` maps name → ``Slice`` (or, in later
versions, name → ``{'slice': Slice, 'htb': {...}}``). The unpickler resolves only
``bwmon.Slice`` and the two helpers Python 2 uses to rebuild instances, each to a
stand-in of this module that merely collects attributes; any other global is refused
before anything is called.

A legacy Slice keeps the kernel counters at the start of its period (``bytes``,
``i2bytes``) rather than the usage, so each imported class starts with
``used_bytes = 0`` and ``last_counter_bytes`` = that baseline: the first cycle counts
exactly the bytes sent since the legacy period started.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import struct
from collections.abc import Mapping
from typing import Any

from .config import ClassDefaults, Config
from .errors import LegacyImportError
from .layout import DEFAULT_XID, ROOT_XID, XID_MAX, TrafficClass
from .model import ClassPolicy, ClassState, LedgerEntry, SliceState, State
from .slicename import shown
from .slices import NAME
from .units import kbit_to_bps, kib_to_bytes

log = logging.getLogger(__name__)

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
    attrs: dict[str, Any]

    def __new__(cls) -> LegacySlice:
        # The unpickler creates instances with __new__ alone, so the default lives here.
        self = super().__new__(cls)
        self.attrs = {}
        return self

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise LegacyImportError(f"bwmon.Slice state is a {type(state).__name__}, not a dict")
        self.attrs = dict(state)


class _Py2Object:
    """Stand-in for ``__builtin__.object`` (the base named by ``copy_reg._reconstructor``)."""


def _reconstructor(cls: object, base: object, state: object) -> LegacySlice:
    """Stand-in for ``copy_reg._reconstructor``: rebuilds only an empty LegacySlice."""
    if cls is not LegacySlice or base is not _Py2Object or state is not None:
        raise LegacyImportError("copy_reg._reconstructor used for something other than a Slice")
    return LegacySlice.__new__(LegacySlice)


_ALLOWED: Mapping[tuple[str, str], object] = {
    ("bwmon", "Slice"): LegacySlice,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): _Py2Object,
    ("builtins", "object"): _Py2Object,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise LegacyImportError(f"refusing to load {module}.{name}: not a bwmon.Slice")
        return found

    def persistent_load(self, pid: object) -> Any:
        raise LegacyImportError("refusing a persistent id: not a bwmon pickle")


def _unpickle(path: str) -> object:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LegacyImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise LegacyImportError(f"{path}: larger than {MAX_FILE_BYTES} bytes: not a bwmon pickle")
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except LegacyImportError as exc:
        raise LegacyImportError(f"{path}: {exc}") from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        struct.error,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        raise LegacyImportError(f"{path}: not a readable bwmon pickle: {exc!r}") from exc


class _BadSlice(Exception):
    """One legacy slice cannot be imported; it is skipped with a warning."""


def _number(attrs: Mapping[str, Any], key: str) -> int | None:
    if key not in attrs:
        return None
    value = attrs[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _BadSlice(f"{key} = {value!r} is not a non-negative number")
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
    if threshold_kib is not None:
        threshold_bytes = kib_to_bytes(threshold_kib)
    elif defaults.threshold_bytes is not None:
        threshold_bytes = defaults.threshold_bytes
    else:
        threshold_bytes = limit_bytes * 8 // 10
    default_max_bps = defaults.max_rate_bps or (
        config.node_cap_bps if tc == "default" else config.bwmax_bps
    )
    return ClassPolicy(
        limit_bytes=limit_bytes,
        threshold_bytes=threshold_bytes,
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
            raise LegacyImportError(f"{path}: slices[{xid!r}] is not an xid → bwmon.Slice entry")
        if xid in (ROOT_XID, DEFAULT_XID) or legacy.attrs.get("name") in SYSTEM_NAMES:
            continue
        try:
            out[xid] = _slice_state(legacy, xid, config)
        except _BadSlice as exc:
            log.warning("legacy %s: skipping slice %s: %s", path, _label(legacy, xid), exc)
    return out


def _dead_slice(path: str, name: object, value: object) -> LegacySlice:
    if isinstance(value, dict):
        value = value.get("slice")
    if not isinstance(name, str) or not isinstance(value, LegacySlice):
        raise LegacyImportError(f"{path}: deaddb[{name!r}] is not a name → bwmon.Slice entry")
    return value


def _ledger(
    path: str, deaddb: object, config: Config, now_s: int, live_names: set[str]
) -> dict[str, LedgerEntry]:
    if not isinstance(deaddb, dict):
        raise LegacyImportError(f"{path}: deaddb is a {type(deaddb).__name__}, not a dict")
    out: dict[str, LedgerEntry] = {}
    for name, value in deaddb.items():
        legacy = _dead_slice(path, name, value)
        xid = legacy.attrs.get("xid")
        try:
            if isinstance(xid, bool) or not isinstance(xid, int):
                raise _BadSlice(f"xid {xid!r} is not an integer")
            st = _slice_state(legacy, xid, config)
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


def import_legacy(path: str, config: Config, now_s: int) -> State:
    """Read a legacy bwmon pickle into a State (slices by xid, dead slices in the ledger).

    Raises LegacyImportError (one line) for an unreadable, malformed or unsafe file; a
    single slice that cannot be imported is skipped with a warning naming it.
    """
    data = _unpickle(path)
    if not isinstance(data, tuple | list) or len(data) != 3:
        raise LegacyImportError(f"{path}: expected a (version, slices, deaddb) tuple")
    version, slices, deaddb = data
    log.info("legacy %s: bwmon data version %r", path, version)
    live = _live_slices(path, slices, config)
    ledger = _ledger(path, deaddb, config, now_s, {st.name for st in live.values()})
    log.info("legacy %s: imported %d slices, %d ledger entries", path, len(live), len(ledger))
    return State(slices=live, ledger=ledger)

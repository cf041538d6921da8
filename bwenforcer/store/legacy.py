"""Import PlanetLab's ``bwmon.pickle`` / ``bwmon.dat`` without executing anything.

The file is a Python 2 pickle (protocol 0, 1 or 2) of ``(version, slices, deaddb)``:
``slices`` maps xid → ``bwmon.Slice``, ``deaddb`` maps name → ``Slice`` (or, in later
versions, name → ``{'slice': Slice, 'htb': {...}}``). The file is read by the
bounded opcode interpreter of :mod:`.pickleread` (not ``pickle``), which executes
nothing and builds only stand-ins for ``bwmon.Slice``; this module maps what it
builds to a State.

A legacy Slice keeps the kernel counters at the start of its period (``bytes``,
``i2bytes``) rather than the usage, so each imported class starts with
``used_bytes = 0`` and ``last_counter_bytes`` = that baseline: the first cycle counts
exactly the bytes sent since the legacy period started. A dead slice of the later
form also has the counters read when it died (``htb``), so it keeps what it used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import reprlib
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID, XID_MAX, TrafficClass
from bwenforcer.core.model import (
    ClassPolicy,
    ClassState,
    LedgerEntry,
    SliceState,
    State,
    ordered_ledger,
)
from bwenforcer.core.policy import class_cap_bps, counter_delta, threshold_bytes
from bwenforcer.core.settings import ClassDefaults, Config
from bwenforcer.core.units import kbit_to_bps, kib_to_bytes
from bwenforcer.errors import LegacyImportError
from bwenforcer.inputs.slicename import shown
from bwenforcer.inputs.slices import NAME
from bwenforcer.store.pickleread import DEFAULT_LIMITS, Clock, LegacySlice, PickleLimits, unpickle

log = logging.getLogger(__name__)

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


def _read_file(path: str, limits: PickleLimits) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = _read_at_most(f, limits.max_file_bytes + 1)
    except OSError as exc:
        raise LegacyImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > limits.max_file_bytes:
        raise LegacyImportError(
            f"{path}: larger than {limits.max_file_bytes} bytes: not a bwmon pickle"
        )
    return raw


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
    return ordered_ledger(out)  # State's order: by expiry


def import_legacy(
    path: str,
    config: Config,
    now_s: int,
    limits: PickleLimits = DEFAULT_LIMITS,
    clock: Clock = time.monotonic,
) -> State:
    """Read a legacy bwmon pickle into a State (slices by xid, dead slices in the ledger).

    Raises LegacyImportError (one line) for an unreadable, malformed, unsafe or too
    costly file (beyond ``limits``, ``clock`` measuring the time); a single slice that
    cannot be imported is skipped with a warning naming it.
    """
    deadline_s = clock() + limits.max_time_s  # the time bound counts the reading too
    data = unpickle(_read_file(path, limits), path, limits, deadline_s, clock)
    if not isinstance(data, tuple | list) or len(data) != 3:
        raise LegacyImportError(f"{path}: expected a (version, slices, deaddb) tuple")
    version, slices, deaddb = data
    log.info("legacy %s: bwmon data version %s", path, reprlib.repr(version))
    live = _live_slices(path, slices, config)
    ledger = _ledger(path, deaddb, config, now_s, {st.name for st in live.values()})
    log.info("legacy %s: imported %d slices, %d ledger entries", path, len(live), len(ledger))
    return State(slices=live, ledger=ledger)

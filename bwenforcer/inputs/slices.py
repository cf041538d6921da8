"""Slice sources → one desired-slice model: the YAML slices file and the node-manager database.

Rspec attributes keep their historic units: ``net_*_rate`` in kbit/s,
``net_*_kbyte`` in KiB (``i2`` = exempt). A bad record is skipped with one logged
error naming it (once per change of the slices file); the others proceed. A bad
record that names a slice is reported as an :class:`InvalidRecord`: the planner
keeps that slice as it was, if it has one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from bwenforcer.core.grants import rollover_bound_bytes, rollover_text
from bwenforcer.core.layout import (
    DEFAULT_XID,
    MAX_SHARE,
    ROOT_XID,
    TRAFFIC_CLASSES,
    XID_MAX,
    TrafficClass,
    check_xid,
)
from bwenforcer.core.model import ClassPolicy, DesiredSet, DesiredSlice, InvalidRecord
from bwenforcer.core.notices import notices_text, parse_notices
from bwenforcer.core.policy import (
    class_cap_bps,
    class_limits,
    lowers_ceil,
    parse_taper,
    parse_tiers,
    taper_text,
    threshold_bytes,
    tiers_text,
)
from bwenforcer.core.settings import Config
from bwenforcer.core.units import (
    MAX_RATE_BPS,
    MAX_SIZE_BYTES,
    format_rate,
    kbit_to_bps,
    kib_to_bytes,
    parse_duration_s,
)
from bwenforcer.core.window import check_window_s
from bwenforcer.errors import ConfigError, SliceError, UnitError, UnsafePath
from bwenforcer.files.atomic import check_dir, disk_full, read_own, replace_file
from bwenforcer.inputs.slicename import shown
from bwenforcer.inputs.yamltext import MAX_FILE_BYTES, parse_yaml, read_bytes

log = logging.getLogger(__name__)

# A slice name (whole name: fullmatch): PLC's ``site_slice`` shape (PLC accepts
# ``^[a-z0-9.]+_[a-zA-Z0-9_.]+$``: upmc_TestSlice, inria.fr_demo), each part at most
# 64 characters; or a plain account name of the slices file.
NAME = re.compile(r"[a-z0-9.]{1,64}_[A-Za-z0-9_.]{1,64}|[a-z0-9_]{1,64}")
NAME_RULE = "site_name ([a-z0-9.]{1,64}_[A-Za-z0-9_.]{1,64}, as PLC) nor [a-z0-9_]{1,64}"

# rspec attribute of each (class, field)
ATTRIBUTES: dict[TrafficClass, dict[str, str]] = {
    "default": {
        "min_rate": "net_min_rate",
        "max_rate": "net_max_rate",
        "limit": "net_max_kbyte",
        "threshold": "net_thresh_kbyte",
        "share": "net_share",
        "tiers": "net_tiers",
        "taper": "net_taper",
        "pacing": "net_pacing",
        "notices": "net_notices",
        "rollover": "net_rollover",
    },
    "exempt": {
        "min_rate": "net_i2_min_rate",
        "max_rate": "net_i2_max_rate",
        "limit": "net_i2_max_kbyte",
        "threshold": "net_i2_thresh_kbyte",
        "share": "net_i2_share",
        "tiers": "net_i2_tiers",
        "taper": "net_i2_taper",
        "pacing": "net_i2_pacing",
        "notices": "net_i2_notices",
        "rollover": "net_i2_rollover",
    },
}
# a rolling window is the slice's, both classes' (core.window): one attribute
WINDOW_ATTRIBUTE = "net_window"
RSPEC_ATTRIBUTES = frozenset(
    {WINDOW_ATTRIBUTE, *(a for attrs in ATTRIBUTES.values() for a in attrs.values())}
)


# Largest value of each rspec field, in its historic unit: the bounds of units.py
# (10 Tbit/s, 2**60 bytes) and the config's largest share.
_MAXIMUM = {
    "min_rate": MAX_RATE_BPS // 1000,
    "max_rate": MAX_RATE_BPS // 1000,
    "limit": MAX_SIZE_BYTES // 1024,
    "threshold": MAX_SIZE_BYTES // 1024,
    "share": MAX_SHARE,
}


def _number(name: str, attribute: str, value: object, maximum: int) -> int:
    if isinstance(value, bool):
        raise SliceError(f"slice {name}: {attribute}: {value!r} is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SliceError(f"slice {name}: {attribute}: {value!r} is not a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise SliceError(f"slice {name}: {attribute}: {value!r} is not a number")
    if value < 0:
        raise SliceError(f"slice {name}: {attribute}: {value!r} is negative")
    if value > maximum:
        raise SliceError(f"slice {name}: {attribute}: {value!r} is above the maximum {maximum}")
    return int(value)


def resolve_policy(
    name: str, rspec: Mapping[str, object], config: Config
) -> tuple[ClassPolicy, ClassPolicy, dict[str, str]]:
    """Both class policies of a slice from its rspec and the config defaults."""
    origin: dict[str, str] = {}
    policies: dict[TrafficClass, ClassPolicy] = {}
    window_s = _window(name, rspec, origin, config.window_s)
    for tc in TRAFFIC_CLASSES:
        attrs = ATTRIBUTES[tc]
        base = config.defaults[tc]
        cap = class_cap_bps(tc, config.node_cap_bps, config.bwmax_bps)

        def given(field: str, attrs: dict[str, str] = attrs) -> int | None:
            attribute = attrs[field]
            present = attribute in rspec and rspec[attribute] is not None
            origin[attribute] = "rspec" if present else "defaults"
            if not present:
                return None
            return _number(name, attribute, rspec[attribute], _MAXIMUM[field])

        limit_kib = given("limit")
        limit = kib_to_bytes(limit_kib) if limit_kib is not None else base.limit_bytes
        thresh_kib = given("threshold")
        threshold = threshold_bytes(
            limit,
            None if thresh_kib is None else kib_to_bytes(thresh_kib),
            base.threshold_bytes,
            limit_given=limit_kib is not None,
        )
        max_kbit = given("max_rate")
        max_rate = kbit_to_bps(max_kbit) if max_kbit is not None else (base.max_rate_bps or cap)
        min_kbit = given("min_rate")
        min_rate = kbit_to_bps(min_kbit) if min_kbit is not None else base.min_rate_bps
        tiers = _rule(
            name,
            attrs["tiers"],
            rspec,
            origin,
            default=base.tiers,
            parse=parse_tiers,
            text=tiers_text,
        )
        taper = _rule(
            name,
            attrs["taper"],
            rspec,
            origin,
            default=base.taper,
            parse=parse_taper,
            text=taper_text,
        )
        notices = _rule(
            name,
            attrs["notices"],
            rspec,
            origin,
            default=base.notices,
            parse=parse_notices,
            text=lambda parsed: notices_text(*parsed),
        )
        pacing = _pacing(name, attrs["pacing"], rspec, origin, base.pacing)
        rollover = _rollover(name, attrs["rollover"], rspec, origin, base.rollover)
        if rollover and window_s:
            given_at = attrs["rollover"]
            if origin[given_at] != "rspec":
                given_at = WINDOW_ATTRIBUTE
            raise SliceError(
                f"slice {name}: {given_at}: a rolling window has no period end to roll over"
                f" from: {WINDOW_ATTRIBUTE} and {attrs['rollover']} exclude each other"
            )
        if not pacing and not tiers and not taper:
            raise SliceError(
                f"slice {name}: {attrs['pacing']}: pacing off needs tiers or a taper"
                " (else nothing caps)"
            )
        share_given = given("share")
        min_rate, max_rate, share = class_limits(
            min_rate, max_rate, base.share if share_given is None else share_given, cap
        )
        max_rate = max(config.bwmin_bps, max_rate)
        if not pacing and not lowers_ceil(tiers, taper, max_rate, cap, config.bwmin_bps):
            raise SliceError(
                f"slice {name}: {attrs['pacing']}: pacing off needs a tier or taper below the"
                f" max rate {format_rate(max_rate)} (else nothing caps)"
            )
        policies[tc] = ClassPolicy(
            limit_bytes=limit,
            threshold_bytes=threshold,
            min_rate_bps=max(config.bwmin_bps, min(min_rate, max_rate)),
            max_rate_bps=max_rate,
            share=share,
            tiers=tiers,
            taper=taper,
            pacing=pacing,
            window_s=window_s,
            notices=notices,
            rollover_bytes=rollover_bound_bytes(rollover, limit),
        )
    return policies["default"], policies["exempt"], origin


def _window(name: str, rspec: Mapping[str, object], origin: dict[str, str], default_s: int) -> int:
    """``net_window``: a rolling window's length, a duration (``30d``) or seconds; 0 or
    ``none``: the period, whatever the config's default window.
    """
    value = rspec.get(WINDOW_ATTRIBUTE)
    origin[WINDOW_ATTRIBUTE] = "defaults" if value is None else "rspec"
    if value is None:
        return default_s
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise SliceError(f"slice {name}: {WINDOW_ATTRIBUTE}: {shown(value)} is not a duration")
    if value in (0, "0", "none"):
        return 0
    try:
        window_s = parse_duration_s(int(value) if isinstance(value, float) else value)
        check_window_s(window_s)
    except (UnitError, ValueError) as exc:
        raise SliceError(f"slice {name}: {WINDOW_ATTRIBUTE}: {exc}") from None
    return window_s


def _rollover(
    name: str, attribute: str, rspec: Mapping[str, object], origin: dict[str, str], default: str
) -> str:
    """``net_rollover`` / ``net_i2_rollover``: a size (bytes, or with a unit such as
    ``1GiB``) or a share of the limit (``10%``); 0 or ``none``: off, whatever the default.
    """
    value = rspec.get(attribute)
    origin[attribute] = "defaults" if value is None else "rspec"
    if value is None:
        return default
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise SliceError(f"slice {name}: {attribute}: {shown(value)} is not a size or share")
    try:
        return rollover_text(int(value) if isinstance(value, float) else value)
    except ValueError as exc:
        raise SliceError(f"slice {name}: {attribute}: {exc}") from None


_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def _pacing(
    name: str, attribute: str, rspec: Mapping[str, object], origin: dict[str, str], default: bool
) -> bool:
    """``net_pacing`` / ``net_i2_pacing``: 1 or 0, true or false (text or not)."""
    value = rspec.get(attribute)
    origin[attribute] = "defaults" if value is None else "rspec"
    if value is None:
        return default
    flag = _FLAGS.get(str(value).strip().lower()) if not isinstance(value, float) else None
    if flag is None:
        raise SliceError(f"slice {name}: {attribute}: {shown(value)} is not 1, 0, true or false")
    return flag


def _rule(
    name: str,
    attribute: str,
    rspec: Mapping[str, object],
    origin: dict[str, str],
    *,
    default: str,
    parse: Callable[[str], Any],
    text: Callable[[Any], str],
) -> str:
    """The canonical text of a ``net_*tiers`` / ``net_*taper`` / ``net_*notices`` attribute,
    else the default.
    """
    value = rspec.get(attribute)
    origin[attribute] = "defaults" if value is None else "rspec"
    if value is None:
        return default
    if not isinstance(value, str):
        raise SliceError(f"slice {name}: {attribute}: {shown(value)} is not a text")
    try:
        return text(parse(value))
    except ValueError as exc:
        raise SliceError(f"slice {name}: {attribute}: {exc}") from None


_Resolved = tuple[ClassPolicy, ClassPolicy, dict[str, str]]


def _slice(
    name: object, xid: object, rspec: object, config: Config, resolved: dict[object, _Resolved]
) -> DesiredSlice:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise SliceError(f"slice name {shown(name)} is neither {NAME_RULE}")
    if isinstance(xid, bool) or not isinstance(xid, int):
        raise SliceError(f"slice {name}: xid {shown(xid)} is not a whole number")
    try:
        check_xid(xid)
    except SliceError as exc:
        raise SliceError(f"slice {name}: {exc}") from None
    if xid in (ROOT_XID, DEFAULT_XID):
        # their classes are the tree's own (1:1000 root's, 1:1fff the unclassified packets')
        raise SliceError(
            f"slice {name}: xid {xid} is the {'root' if xid == ROOT_XID else 'default'} class's,"
            f" not a slice's (slice xids are 1..{XID_MAX})"
        )
    if rspec is None:
        rspec = {}
    if not isinstance(rspec, Mapping):
        raise SliceError(f"slice {name}: rspec {rspec!r} is not a mapping")
    # Thousands of slices share a handful of rspecs: each is resolved once, and its
    # slices share its policy objects (the planner's per-policy work is then done
    # once, and comparing them is an identity check). The value's type is part of
    # the key: True == 1, but only one of them is a valid rate.
    try:
        key: object = frozenset((k, type(v), v) for k, v in rspec.items())
        hit = resolved.get(key)
    except TypeError:  # an unhashable value: resolve it (and report it) on its own
        key, hit = None, None
    if hit is None:
        hit = resolve_policy(name, rspec, config)
        if key is not None:
            resolved[key] = hit
    default, exempt, origin = hit
    return DesiredSlice(name, xid, default, exempt, origin, rspec)


# (label, name, xid, rspec, problem): problem, if not None, is why the record is refused
_Entry = tuple[str, object, object, object, str | None]


def _collect(
    entries: list[_Entry], config: Config, where: str, log_errors: bool = True
) -> DesiredSet:
    """The desired set of ``entries``; with ``log_errors`` False, errors are only returned
    (they were logged when these very entries were last read).
    """
    slices: list[DesiredSlice] = []
    errors: list[str] = []
    invalid: list[InvalidRecord] = []
    contested: list[DesiredSlice] = []
    names: set[str] = set()
    xids: dict[int, tuple[str, DesiredSlice]] = {}  # xid -> (label, slice) of its first claim
    resolved: dict[object, _Resolved] = {}
    for label, name, xid, rspec, problem in entries:
        try:
            if problem is not None:
                raise SliceError(problem)
            want = _slice(name, xid, rspec, config, resolved)
            if want.name in names:
                raise SliceError(f"slice {want.name}: defined twice")
            first = xids.get(want.xid)
            if first is not None:
                # Which of the two keeps the xid is the planner's to say (the one the
                # state has on it): file order must not hand a capped class to a newcomer.
                line = (
                    f"{where}: {label} and {first[0]}: slices {want.name} and"
                    f" {first[1].name} both claim xid {want.xid}; the one already enforced"
                    " on it keeps it, the other is refused"
                )
                if log_errors:
                    log.error("%s", line)
                errors.append(line)
                names.add(want.name)
                contested.append(want)
                continue
        except SliceError as exc:
            line = f"{where}: {label}: {exc}; skipped"
            if log_errors:
                log.error("%s", line)
            errors.append(line)
            if isinstance(name, str) and NAME.fullmatch(name):
                valid_xid = isinstance(xid, int) and not isinstance(xid, bool)
                invalid.append(InvalidRecord(name, xid if valid_xid else None, line))
            continue
        names.add(want.name)
        xids[want.xid] = (label, want)
        slices.append(want)
    return DesiredSet(
        tuple(slices), errors=tuple(errors), invalid=tuple(invalid), contested=tuple(contested)
    )


CACHE_VERSION = (
    2  # 2: YAML 1.2 booleans, duplicate keys refused (a version 1 cache may hold either)
)


def slices_cache_path(config: Config) -> str:
    """Where the parsed slices file is kept, beside the state file."""
    return f"{config.state_file}.slices-cache"


# The last good version's file: this header (with the SHA-256 of the bytes after it),
# then the slices file's bytes as they were read.
_GOOD_MAGIC = b"bwenforcer slices-good 1 "
_GOOD_HEADER_BYTES = len(_GOOD_MAGIC) + 64 + 1


def _good_digest(good_path: str) -> str | None:
    """The SHA-256 the last good version's header names (None: none there)."""
    try:
        head = read_own(good_path, "slices file's last good version", _GOOD_HEADER_BYTES)
    except (OSError, UnsafePath):
        return None
    if not head.startswith(_GOOD_MAGIC) or not head.endswith(b"\n"):
        return None
    return head[len(_GOOD_MAGIC) : -1].decode("ascii", "replace")


def _read_good(good_path: str) -> tuple[str, bytes] | None:
    """The last good version's digest and bytes, if whole and ours; else None."""
    try:
        kept = read_own(
            good_path, "slices file's last good version", _GOOD_HEADER_BYTES + MAX_FILE_BYTES
        )
    except (OSError, UnsafePath):
        return None
    head, raw = kept[:_GOOD_HEADER_BYTES], kept[_GOOD_HEADER_BYTES:]
    digest = hashlib.sha256(raw).hexdigest()
    if head != _GOOD_MAGIC + digest.encode() + b"\n":
        return None  # cut short or altered: not a version to enforce
    return digest, raw


def _write_good(good_path: str, digest: str, raw: bytes) -> None:
    """Keep ``raw`` (a slices file that parsed) as the last good version, unless it
    is that already; best effort (DiskFull is raised)."""
    if _good_digest(good_path) == digest:
        return
    try:
        replace_file(good_path, (_GOOD_MAGIC, digest.encode(), b"\n", raw))
    except OSError as exc:
        full = disk_full(exc, f"slices file's last good version {good_path}")
        if full is not None:
            raise full from exc
        log.debug("last good version %s not written: %s", good_path, exc)


def _items(data: object, path: str) -> list[object]:
    """The records of a parsed slices file, or ConfigError if it is not one."""
    if not isinstance(data, dict) or set(data) - {"slices"}:
        raise ConfigError(f"{path}: expected a mapping with one key, 'slices'")
    items = data.get("slices") or []
    if not isinstance(items, list):
        raise ConfigError(f"{path}: slices: expected a list")
    return items


def _carried(back: object, data: object) -> bool:
    """Whether ``back`` (``data`` through JSON) is ``data``: the same types and values,
    a NaN the same as a NaN (``!=`` would call every NaN a change, so a record with
    ``.nan`` would be parsed, and its error logged, every cycle).
    """
    if type(back) is not type(data):
        return False
    if isinstance(data, dict):
        assert isinstance(back, dict)
        return back.keys() == data.keys() and all(_carried(back[k], v) for k, v in data.items())
    if isinstance(data, list):
        assert isinstance(back, list)
        return len(back) == len(data) and all(map(_carried, back, data))
    if isinstance(data, float) and math.isnan(data):
        return isinstance(back, float) and math.isnan(back)
    return back == data


def _cache_dir_ok(cache_path: str) -> bool:
    """Whether the slices cache's directory is safely ours (else it is neither read nor
    written: the state lock refuses such a directory anyway)."""
    try:
        check_dir(os.path.dirname(os.path.abspath(cache_path)), "slices cache directory")
    except UnsafePath as exc:
        log.debug("slices cache not used: %s", exc)
        return False
    return True


def _read_cache(cache_path: str) -> dict[str, Any] | None:
    """The slices cache, if it is one of this version we can trust; else None."""
    if not _cache_dir_ok(cache_path):
        return None
    try:
        cached = json.loads(read_own(cache_path, "slices cache"))
    except (OSError, ValueError, UnsafePath):
        return None  # no cache, or not one we can use
    if not isinstance(cached, dict) or cached.get("version") != CACHE_VERSION:
        return None
    return cached


def _write_cache(cache_path: str, cache: dict[str, Any]) -> None:
    """Write the slices cache, best effort (DiskFull is raised)."""
    try:
        text = json.dumps(cache)
        if "data" in cache and not _carried(json.loads(text)["data"], cache["data"]):
            # dates, integer keys…: only YAML says what they are (the last good
            # version is the file's bytes, kept apart: _write_good)
            text = json.dumps({k: v for k, v in cache.items() if k != "data"})
        replace_file(cache_path, text.encode())
    except OSError as exc:
        full = disk_full(exc, f"slices cache {cache_path}")
        if full is not None:
            raise full from exc
        log.debug("slices cache %s not written: %s", cache_path, exc)
    except (TypeError, ValueError, RecursionError) as exc:
        log.debug("slices cache %s not written: %s", cache_path, exc)


def _read_slices_data(path: str, cache_path: str, write_cache: bool = True) -> tuple[object, bool]:
    """The parsed slices file, from the cache beside the state while the file's bytes
    are the ones it was made from; and whether it was parsed (not from the cache:
    the file is new or changed, so its errors are to be logged).

    YAML is slow to parse in Python (~0.1 s at 4,000 slices, most of a cron run);
    the cache is JSON, tagged with the file's SHA-256. It is written when the
    file is parsed into a slices file's shape, if it can be (best effort: a cycle
    fails for it only on a disk that cannot take a write, DiskFull), and only for
    data that JSON carries unchanged; never with ``write_cache`` False (a dry run
    changes nothing). A cache in a directory others could write (or one not safely
    ours) is neither trusted nor written: the state lock refuses it anyway. The
    cache is also the last good version of the file (:func:`load_slices_file`).
    """
    raw = read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    cached = _read_cache(cache_path)
    if cached is not None and cached.get("sha256") == digest and "data" in cached:
        return cached["data"], False
    data = parse_yaml(raw, path)
    _items(data, path)  # only a slices file's shape is cached: it is the last good version
    if write_cache and _cache_dir_ok(cache_path):
        _write_good(_good_path_of(cache_path), digest, raw)
        _write_cache(cache_path, {"version": CACHE_VERSION, "sha256": digest, "data": data})
    return data, True


def _good_path_of(cache_path: str) -> str:
    """Where the slices file's last good version (its bytes) is kept: beside the cache."""
    return cache_path.removesuffix(".slices-cache") + ".slices-good"


def _good_data(path: str, cache_path: str, cached: dict[str, Any] | None) -> object | None:
    """The parsed last good version of the slices file: the cache's data when it was
    made from the kept bytes (or, with no bytes kept, from an older install), else the
    kept bytes parsed again; None if there is none to use.
    """
    if not _cache_dir_ok(cache_path):
        return None
    good = _read_good(_good_path_of(cache_path))
    if good is None:
        data = None if cached is None else cached.get("data")
    elif cached is not None and cached.get("sha256") == good[0] and "data" in cached:
        data = cached["data"]
    else:
        try:
            data = parse_yaml(good[1], path)
        except ConfigError:
            return None
    try:
        _items(data, path)
    except ConfigError:
        return None
    return data


def _last_good(
    path: str, config: Config, exc: ConfigError, write_cache: bool, report: bool = True
) -> DesiredSet:
    """The slices of the slices file's last good version, after ``exc``.

    An editor's half-saved file or a typo must not stop enforcement: the slices
    last read stay enforced as they were, and the error is one line in the
    desired set's errors (``sync`` exits 1), logged once per change of the
    error (the cache remembers it; not at all without ``report``). Without a last
    good version (none kept, or
    not ours), the desired set is ``unread``: the planner holds every slice of
    the state as it is, under its saved limits.
    """
    cache_path = slices_cache_path(config)
    cached = _read_cache(cache_path)
    data = _good_data(path, cache_path, cached)
    if data is None:
        line = (
            f"{exc}; no last good version: every slice enforced keeps its limits until it is fixed"
        )
    else:
        line = f"{exc}; enforcing the slices of its last good version until it is fixed"
    try:
        tag = f"{hashlib.sha256(read_bytes(path)).hexdigest()} {exc}"
    except ConfigError:
        tag = str(exc)
    if report and (cached is None or cached.get("failed") != tag):
        log.error("%s", line)
        if write_cache and _cache_dir_ok(cache_path):
            _write_cache(cache_path, {**(cached or {"version": CACHE_VERSION}), "failed": tag})
    if data is None:
        return DesiredSet((), errors=(line,), unread=True)
    desired = _desired_of(data, path, config, log_errors=False)
    return replace(desired, errors=(line, *desired.errors))


def load_slices_file(
    path: str, config: Config, write_cache: bool = True, report: bool = True
) -> DesiredSet:
    """The slices of a YAML slices file (``slices:`` a list of ``{name, xid, rspec}``);
    ``write_cache`` False leaves the slices cache as it is (dry runs); ``report`` False
    logs no error of an unusable file (a lookup of names that can do without it).

    A file that cannot be read or parsed (a YAML error, a half-written save) gives
    the slices of its last good version with the error (:func:`_last_good`).
    """
    try:
        data, changed = _read_slices_data(path, slices_cache_path(config), write_cache)
    except ConfigError as exc:
        return _last_good(path, config, exc, write_cache, report)
    return _desired_of(data, path, config, log_errors=changed)


def _desired_of(data: object, path: str, config: Config, log_errors: bool) -> DesiredSet:
    """The desired set of a parsed slices file; with ``log_errors``, its bad records and
    unknown rspec keys are logged (the file is new or changed).
    """
    entries: list[_Entry] = []
    for index, item in enumerate(_items(data, path)):
        label = f"slices[{index}]"
        if not isinstance(item, dict):
            entries.append((label, item, None, None, f"{shown(item)} is not a mapping"))
            continue
        name = item.get("name")
        unknown = sorted(set(item) - {"name", "xid", "rspec"}, key=str)
        problem = None
        if unknown:
            problem = (
                f"slice {shown(name)}: unknown key {shown(unknown[0])} (keys: name, xid, rspec)"
            )
        rspec = item.get("rspec")
        if log_errors and isinstance(rspec, Mapping):
            odd = sorted((k for k in rspec if k not in RSPEC_ATTRIBUTES), key=str)
            if odd:
                log.warning(
                    "%s: %s (%s): slice %s: unknown rspec key%s %s ignored",
                    path,
                    label,
                    shown(name),
                    shown(name),
                    "s" if len(odd) > 1 else "",
                    ", ".join(shown(k) for k in odd),
                )
        entries.append((f"{label} ({shown(name)})", name, item.get("xid"), rspec, problem))
    return _collect(entries, config, path, log_errors=log_errors)


def account_uid(name: str) -> int | None:
    """The uid of the Unix account ``name`` (a slice's xid); None if there is none."""
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):  # no such account; a name with a NUL byte
        return None


def _is_off(rate: object) -> bool:
    """``net_max_rate`` -1 on the default record: the node manager turned limiting off."""
    return rate is not None and str(rate).strip() in ("-1", "-1.0")


def from_nodemanager_db(
    db: Mapping[str, Any],
    config: Config,
    default_record: str = "pl_default",
    uid_of: Callable[[str], int | None] = account_uid,
    log_errors: bool = True,
) -> DesiredSet:
    """The slices of a PlanetLab node-manager database ``{name: {"name", "_rspec", …}}``.

    As the historic bwmon: ``default_record`` (``<PLC_SLICE_PREFIX>_default``) is
    no slice, its ``net_max_rate`` -1 turns limiting off; a record without
    ``_rspec`` (not instantiated yet) and one whose name has no Unix account (the
    xid is the account's uid; delegated slices have none yet) are skipped, listed
    in ``skipped``. A record's own ``xid`` wins over the account lookup. With
    ``log_errors`` False, bad records are returned, not logged.
    """
    entries: list[_Entry] = []
    skipped: list[str] = []
    for key, record in db.items():
        if not isinstance(record, Mapping):
            entries.append((f"record {shown(key)}", key, None, record, None))
            continue
        name = record.get("name", key)
        if name == default_record:
            rspec = record.get("rspec", record.get("_rspec"))
            if isinstance(rspec, Mapping) and _is_off(rspec.get("net_max_rate")):
                return DesiredSet((), limiting_off=True)
            continue
        if "_rspec" not in record:
            skipped.append(f"slice {name}: no _rspec (not instantiated yet); skipped")
            continue
        xid = record.get("xid")
        if xid is None and isinstance(name, str):
            xid = uid_of(name)
            if xid is None:
                skipped.append(f"slice {shown(name)}: no account, so no xid (delegated?); skipped")
                continue
        rspec = record["_rspec"]
        if isinstance(rspec, Mapping):
            # the node manager's rspec also holds cpu, disk, sysctl and a dict of
            # all tags: only the net_* attributes matter, and without the dict
            # equal rspecs are recognised (and resolved once)
            rspec = {k: v for k, v in rspec.items() if k in RSPEC_ATTRIBUTES}
        entries.append((f"record {shown(name)}", name, xid, rspec, None))
    desired = _collect(entries, config, "node manager database", log_errors)
    return replace(desired, skipped=tuple(skipped)) if skipped else desired

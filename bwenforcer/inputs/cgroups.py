"""Tenants from the cgroup v2 tree: systemd slices, services and containers.

``cgroups.tenants`` patterns (``user.slice/user-*.slice``, ``machine.slice/*.scope``)
are matched against the cgroup v2 tree, at ``/sys/fs/cgroup`` (unified layout) or
``/sys/fs/cgroup/unified`` (hybrid layout). Each match is a tenant: its name comes
from its unit's name (:func:`tenant_name`), its budget from the pattern's
defaults, overridden attribute by attribute by a slices-file entry of the same
name, and its xid from the state by name (:func:`bwenforcer.core.xids.allocate_xids`).
The cgroup's id (the inode of its directory, what ``socket cgroupv2`` compares)
is kept for the classifier; it changes when the unit restarts, the name does not.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import pwd
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bwenforcer.core.layout import XID_MAX
from bwenforcer.core.model import DesiredSet, DesiredSlice, State
from bwenforcer.core.settings import CgroupConfig, CgroupPattern, Config
from bwenforcer.core.xids import allocate_xids
from bwenforcer.errors import ConfigError
from bwenforcer.inputs.slices import NAME, resolve_policy

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
MOUNTS = (CGROUP_ROOT, f"{CGROUP_ROOT}/unified")  # unified layout, then hybrid
MAX_ENTRIES = 100_000  # directories read in one listing; more is not a cgroup tree
NAME_MAX = 64  # characters after a prefix (slices.NAME)
_USER = re.compile(r"user-(\d{1,10})\.slice")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_UNIT_TYPES = (".slice", ".service", ".scope", ".socket", ".mount", ".swap", ".target")


def find_mount(configured: str | None = None) -> str:
    """The cgroup v2 mount: ``configured``, else the unified or the hybrid layout's.

    A cgroup2 root is the only directory with a ``cgroup.controllers`` file whose
    parent has none; v1 hierarchies have no such file.
    """
    candidates = (configured,) if configured else MOUNTS
    for path in candidates:
        if os.path.isfile(os.path.join(path, "cgroup.controllers")):
            return path
    raise ConfigError(
        f"cgroups: no cgroup v2 tree at {' or '.join(candidates)} (cgroup.controllers missing)"
    )


@dataclass(frozen=True, slots=True)
class CgroupUnit:
    """One cgroup that is a tenant."""

    name: str  # the slice name (see tenant_name)
    unit: str  # the unit: the cgroup directory's name, e.g. user-1000.slice
    path: str  # below the mount, e.g. user.slice/user-1000.slice
    cgroup_id: int  # what `socket cgroupv2` compares; new after a restart
    pattern: int  # index into cgroups.tenants

    @property
    def level(self) -> int:
        """The ``socket cgroupv2 level`` of this cgroup."""
        return self.path.count("/") + 1


@dataclass(frozen=True)
class Discovery:
    """The tenants found in one scan, and one line per cgroup that could not be one."""

    mount: str
    units: tuple[CgroupUnit, ...]
    errors: tuple[str, ...] = ()
    # cgroups whose name a unit in ``units`` has too (later in pattern, then path
    # order); :func:`settle` decides which one of each name is the tenant
    contested: tuple[CgroupUnit, ...] = ()

    def by_name(self) -> dict[str, CgroupUnit]:
        """The tenants by slice name."""
        return {u.name: u for u in self.units}


def account_name(uid: int) -> str | None:
    """The account name of ``uid``; None if there is none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _hashed(base: str, unit: str, room: int) -> str:
    tag = hashlib.sha256(unit.encode()).hexdigest()[:6]
    return f"{base[: room - 7]}_{tag}"


def implied_suffix(pattern: CgroupPattern) -> str | None:
    """The unit type every cgroup ``pattern`` matches shares (``*.service``:
    ``.service``); None when its last component does not fix one (``*``).
    """
    last = pattern.match[-1] if pattern.match else ""
    return next((t for t in _UNIT_TYPES if last.endswith(t)), None)


def tenant_name(
    unit: str,
    prefix: str = "",
    account_of: Callable[[int], str | None] = account_name,
    suffix: str | None = None,
) -> str:
    """The slice name of a unit; the same unit always gives the same name.

    ``user-<uid>.slice`` is the account's name if it is a valid slice name,
    otherwise ``uid_<uid>``. Any other unit loses its type suffix and systemd's
    ``\\xNN`` escapes, is lower-cased and has every character outside
    ``[a-z0-9_]`` replaced by ``_``. The name is kept as it is only when it maps
    back to the raw unit name exactly: the unit is the name plus ``suffix`` (the
    type every unit of the pattern has, :func:`implied_suffix`) with no other
    change. Otherwise (another suffix or none implied, an escape, a character
    replaced) the first six hex digits of the unit's SHA-256 are appended, so
    that ``a-b.service``, ``a\\x5fb.service`` and ``a_b.service``, or
    ``foo.service`` and ``foo.mount`` under one pattern, stay distinct tenants.
    ``prefix`` (the pattern's) goes in front as ``<prefix>_``. The result always
    matches the slice-name rule.
    """
    user = _USER.fullmatch(unit)
    if user:
        uid = int(user.group(1))
        account = account_of(uid)
        base = account if account and len(account) <= NAME_MAX and NAME.fullmatch(account) else None
        base = base or f"uid_{uid}"
    else:
        stem = unit
        exact = False
        for kind in _UNIT_TYPES:
            if stem.endswith(kind) and len(stem) > len(kind):
                stem = stem[: -len(kind)]
                exact = kind == suffix  # a suffix the pattern does not fix: hashed
                break
        base = re.sub(
            r"[^a-z0-9_]", "_", _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), stem).lower()
        )
        if not exact or base != stem or len(base) > NAME_MAX:  # stem: the raw, escapes kept
            base = _hashed(base, unit, NAME_MAX)
    return f"{prefix}_{base}" if prefix else base


def _matches(mount: str, pattern: CgroupPattern) -> tuple[list[tuple[str, int]], list[str]]:
    """``(relative path, cgroup id)`` of every cgroup ``pattern`` matches, sorted."""
    level: list[tuple[str, int]] = [("", 0)]
    errors: list[str] = []
    for part in pattern.match:
        glob = any(c in part for c in "*?[")
        matches = re.compile(fnmatch.translate(part)).match
        found: list[tuple[str, int]] = []
        for rel, _id in level:
            here = os.path.join(mount, rel) if rel else mount
            if not glob:
                path = os.path.join(here, part)
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                found.append((f"{rel}/{part}" if rel else part, st.st_ino))
                continue
            try:
                with os.scandir(here) as entries:
                    for count, entry in enumerate(entries):
                        if count >= MAX_ENTRIES:
                            errors.append(f"cgroups: {here}: more than {MAX_ENTRIES} entries")
                            break
                        if matches(entry.name) and entry.is_dir(follow_symlinks=False):
                            # cgroupfs (kernfs) gives the directory's inode as d_ino: no stat
                            found.append(
                                (f"{rel}/{entry.name}" if rel else entry.name, entry.inode())
                            )
            except OSError:  # removed while we looked (a unit stopping): not a tenant now
                continue
        level = found
    return sorted(level), errors


def discover(
    config: CgroupConfig,
    mount: str | None = None,
    account_of: Callable[[int], str | None] = account_name,
    cache: dict[object, CgroupUnit | str] | None = None,
) -> Discovery:
    """Scan the tree once for every pattern; a cgroup two patterns match is the first's.

    Two cgroups with one name: the first in pattern order, then path order, is in
    ``units``, the other in ``contested``, for :func:`settle` to decide.
    ``cache`` keeps names and tenants across scans, so an unchanged cgroup costs
    one lookup (its owner empties it when the accounts may have changed).
    """
    cache = {} if cache is None else cache
    if len(cache) > 1_000_000:
        cache.clear()  # units that came and went: start afresh rather than grow
    root = mount or find_mount(config.mount)
    units: dict[str, CgroupUnit] = {}
    contested: list[CgroupUnit] = []
    paths: set[str] = set()
    errors: list[str] = []
    for index, pattern in enumerate(config.tenants):
        found, problems = _matches(root, pattern)
        errors += problems
        for rel, cgroup_id in found:
            if rel in paths:
                continue
            paths.add(rel)
            known = cache.get((rel, cgroup_id, index))
            if isinstance(known, CgroupUnit):
                made = known
            else:
                unit = rel.rsplit("/", 1)[-1]
                name = tenant_name(unit, pattern.prefix, account_of, implied_suffix(pattern))
                made = CgroupUnit(name, unit, rel, cgroup_id, index)
                cache[(rel, cgroup_id, index)] = made
            if made.name in units:
                contested.append(made)
                continue
            units[made.name] = made
    return Discovery(root, tuple(units.values()), tuple(errors), tuple(contested))


def settle(
    discovery: Discovery,
    desired: DesiredSet,
    state: State,
    bound: Mapping[int, int] | None = None,
) -> Discovery:
    """``discovery`` with one tenant per name: of cgroups sharing a name, the one the
    classifier's map (``bound``, ``{cgroup id: xid}``) binds to that name's xid (the
    slices file's, else the state's live slice's, else its ledger entry's) keeps
    it; when none is bound, the first in pattern then path order. Every other is
    one error line and stays in the default class: a newly made cgroup never
    takes an established tenant's name, xid and usage.
    """
    if not discovery.contested:
        return discovery
    contested = {u.name for u in discovery.contested}  # the ledger looked up, not walked
    xid_of = {name: e.slice.xid for name in contested if (e := state.ledger.get(name))}
    xid_of.update({st.name: xid for xid, st in state.slices.items()})
    xid_of.update({s.name: s.xid for s in desired.slices})
    chosen = discovery.by_name()
    rivals: dict[str, list[CgroupUnit]] = {}
    for unit in discovery.contested:
        rivals.setdefault(unit.name, [chosen[unit.name]]).append(unit)
    errors = list(discovery.errors)
    for name, units in rivals.items():
        xid = xid_of.get(name)
        held = [u for u in units if bound and xid is not None and bound.get(u.cgroup_id) == xid]
        winner = held[0] if held else units[0]
        chosen[name] = winner
        for unit in units:
            if unit is not winner:
                errors.append(
                    f"cgroup {unit.path}: tenant name {name} is already cgroup {winner.path}'s;"
                    " refused (its traffic stays in the default class 1:1fff)"
                )
    units_now = tuple(chosen[u.name] for u in discovery.units)
    return Discovery(discovery.mount, units_now, tuple(errors))


def _uid_xid(unit: str) -> int | None:
    """The uid of a ``user-<uid>.slice`` unit when it is a usable xid (1..XID_MAX)."""
    user = _USER.fullmatch(unit)
    uid = int(user.group(1)) if user else 0
    return uid if 1 <= uid <= XID_MAX else None


def merge(
    desired: DesiredSet,
    discovery: Discovery,
    config: Config,
    state: State,
    *,
    bound: Mapping[int, int] | None = None,
    cache: dict[object, object] | None = None,
) -> DesiredSet:
    """The slices file's (or node manager's) slices plus the cgroup tenants.

    A tenant the file also names takes the file's xid, and the file's rspec
    attributes over the pattern's defaults; a record of that name the file
    refused is left to the planner (which keeps such a slice as it was). Every
    other tenant gets its xid from :func:`allocate_xids`, a ``user-<uid>.slice``
    tenant preferably its uid (1..XID_MAX), so that a renamed account keeps its
    slice (the planner's rename rule carries the usage over); a tenant no xid is
    left for is one error line, and its traffic stays in the default class.
    ``bound`` is ``{cgroup id: xid}`` as the classifier's map holds it: a tenant
    the kernel knows but the state does not (a crash between the two) keeps it.
    ``cache`` (one per config) keeps the tenants' policies and slices across
    cycles, so an unchanged tenant is the same object every cycle. Cgroups that
    share a name are settled first (:func:`settle`).
    """
    cache = {} if cache is None else cache
    discovery = settle(discovery, desired, state, bound)
    if len(cache) > 2 * len(discovery.units) + 1000:
        cache.clear()  # tenants that came and went: start afresh rather than grow
    if not discovery.units:
        if not discovery.errors:
            return desired
        return replace(desired, errors=desired.errors + discovery.errors)
    patterns = config.cgroups.tenants
    configs = cache.get("configs")
    if configs is None:
        configs = cache["configs"] = [replace(config, defaults=p.defaults) for p in patterns]
    listed = {s.name: s for s in desired.slices}
    refused = {r.name for r in desired.invalid}
    by_name = discovery.by_name()
    slices: list[DesiredSlice] = []
    for s in desired.slices:
        unit = by_name.get(s.name)
        if unit is None:
            slices.append(s)
            continue
        default, exempt, origin = resolve_policy(s.name, s.rspec or {}, configs[unit.pattern])
        slices.append(DesiredSlice(s.name, s.xid, default, exempt, origin, s.rspec))
    fresh = [u for u in discovery.units if u.name not in listed and u.name not in refused]
    taken = {s.xid for s in desired.slices} | {r.xid for r in desired.invalid if r.xid is not None}
    named = listed.keys() | refused

    def free(xid: int | None) -> bool:
        # not the file's: neither its xid, nor a live slice's the file names (listed or refused)
        held = state.slices.get(xid) if xid is not None else None
        return xid is not None and xid not in taken and (held is None or held.name not in named)

    kernel = {u.name: bound[u.cgroup_id] for u in fresh if bound and free(bound.get(u.cgroup_id))}
    # a user's xid is its uid (allocate_xids: if free, or its own slice renamed)
    preferred = {u.name: uid for u in fresh if free(uid := _uid_xid(u.unit))}
    allocation = allocate_xids((u.name for u in fresh), taken, state, kernel, preferred)
    for unit in fresh:
        xid = allocation.xids.get(unit.name)
        if xid is None:
            continue
        key = (unit.name, xid, unit.pattern)
        made = cache.get(key)
        if not isinstance(made, DesiredSlice):
            policies = cache.get(unit.pattern)
            if policies is None:
                policies = cache[unit.pattern] = resolve_policy(
                    unit.name, {}, configs[unit.pattern]
                )
            default, exempt, origin = policies  # type: ignore[misc]
            made = cache[key] = DesiredSlice(unit.name, xid, default, exempt, origin)
        slices.append(made)
    errors = list(desired.errors) + list(discovery.errors)
    for name in allocation.unplaced:
        line = (
            f"cgroup tenant {name} ({by_name[name].path}): no free xid"
            f" (1..{XID_MAX} are all held by slices and ledger entries);"
            " not created, its traffic stays in the default class 1:1fff"
        )
        log.error("%s", line)
        errors.append(line)
    return replace(desired, slices=tuple(slices), errors=tuple(errors))

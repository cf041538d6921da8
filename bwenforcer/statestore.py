"""The state file: versioned JSON, written atomically, one backup, guarded by a lock.

Layout (DESIGN.md "State file")::

    {"schema_version": 1, "saved_at": 1763800000, "writer": "bwenforcer 0.1.0",
     "slices": {"1234": {"name": …, "xid": 1234, "period_start": …, "period_end": …,
                         "classes": {"default": {…}, "exempt": {…}}}},
     "ledger": {"pl_bar": {"died_at": …, "slice": {…same object as a slice…}}}}

Recovery rules of :meth:`StateStore.load`:

- no file and no backup: first run, empty state;
- a corrupt file (``<path>.corrupt-<UTC time>``) or one written by a newer schema
  (``<path>.newer-<UTC time>``) is moved aside and the backup ``<path>.1`` is used;
- when neither the file nor its backup can be used, nothing is moved and
  :class:`~bwenforcer.errors.StateError` is raised: starting empty would hand every
  slice a fresh budget, so the operator decides (restore a copy, or move the files
  away to start empty). Every following cycle fails the same way until then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import __version__
from .atomicfile import (
    FileIdentity,
    disk_full,
    file_identity,
    fsync_dir,
    make_dir,
    read_own,
    remove_stale_temps,
    write_temp,
)
from .errors import StateCorrupt, StateError, StateTooNew
from .layout import DEFAULT_XID, TRAFFIC_CLASSES
from .lockfile import cycle_lock
from .model import ClassPolicy, ClassState, LedgerEntry, SliceState, State

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
WRITER = f"bwenforcer {__version__}"

_TOP_KEYS = frozenset({"schema_version", "saved_at", "writer", "slices", "ledger", "resets"})
_SLICE_KEYS = frozenset({"name", "xid", "period_start", "period_end", "classes"})
_CLASSES_KEYS = frozenset(TRAFFIC_CLASSES)
_LEDGER_KEYS = frozenset({"died_at", "slice"})
_CLASS_KEYS = frozenset(
    {
        "used_bytes",
        "last_counter_bytes",
        "ceil_bps",
        "capped",
        "notified",
        "limit_bytes",
        "threshold_bytes",
        "min_rate_bps",
        "max_rate_bps",
        "share",
    }
)


# --- JSON ⇄ State (pure) ---------------------------------------------------------------


def _class_json(cs: ClassState) -> dict[str, Any]:
    p = cs.policy
    return {
        "used_bytes": cs.used_bytes,
        "last_counter_bytes": cs.last_counter_bytes,
        "ceil_bps": cs.ceil_bps,
        "capped": cs.capped,
        "notified": cs.notified,
        "limit_bytes": p.limit_bytes,
        "threshold_bytes": p.threshold_bytes,
        "min_rate_bps": p.min_rate_bps,
        "max_rate_bps": p.max_rate_bps,
        "share": p.share,
    }


def _slice_json(st: SliceState) -> dict[str, Any]:
    return {
        "name": st.name,
        "xid": st.xid,
        "period_start": st.period_start_s,
        "period_end": st.period_end_s,
        "classes": {"default": _class_json(st.default), "exempt": _class_json(st.exempt)},
    }


def state_to_json(state: State, now_s: int) -> dict[str, Any]:
    """The JSON object of the state file for ``state`` saved at ``now_s``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "saved_at": now_s,
        "writer": WRITER,
        "slices": {str(xid): _slice_json(st) for xid, st in state.slices.items()},
        "ledger": {
            name: {"died_at": entry.died_s, "slice": _slice_json(entry.slice)}
            for name, entry in state.ledger.items()
        },
        "resets": state.resets,
    }


_JSON_BOOL = {False: "false", True: "true"}


class StateEncoder:
    """Encodes states as the compact JSON of :func:`state_to_json`, slice by slice.

    Each slice's text is kept with the SliceState it was made from; the planner
    passes an unchanged slice on as the same object, so a cycle re-encodes only
    the slices that changed, and of those only the numbers that change each
    cycle: the text of a slice's name and period, and of a policy, are kept too.
    Memory: about 600 bytes per slice.
    """

    def __init__(self) -> None:
        self._slices: dict[int, tuple[SliceState, bytes]] = {}
        self._heads: dict[tuple[int, str, int, int], str] = {}
        self._policies: dict[int, tuple[ClassPolicy, str]] = {}  # by id: kept alive here

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
        ledger = ",".join(
            f'{json.dumps(name)}:{{"died_at":{entry.died_s},'
            f'"slice":{self._slice_text(entry.slice, heads)}}}'
            for name, entry in state.ledger.items()
        )
        head = json.dumps(
            {"schema_version": SCHEMA_VERSION, "saved_at": now_s, "writer": WRITER},
            separators=(",", ":"),
        )
        tail = f'}},"ledger":{{{ledger}}},"resets":{state.resets}}}'
        return b"".join((f'{head[:-1]},"slices":{{'.encode(), b",".join(parts), tail.encode()))

    def _slice_text(self, st: SliceState, heads: dict[tuple[int, str, int, int], str]) -> str:
        """``json.dumps(_slice_json(st), separators=(",", ":"))``, from kept pieces where
        it can: the text of the slice's name and period (in ``heads``, from the last
        encode) and of its policies.
        """
        key = (st.xid, st.name, st.period_start_s, st.period_end_s)
        head = heads.get(key)
        if head is None:
            head = (
                f'{{"name":{json.dumps(st.name)},"xid":{st.xid},'
                f'"period_start":{st.period_start_s},"period_end":{st.period_end_s},'
                '"classes":{"default":'
            )
        self._heads[key] = head
        default, exempt = self._class_text(st.default), self._class_text(st.exempt)
        return f'{head}{default},"exempt":{exempt}}}}}'

    def _class_text(self, cs: ClassState) -> str:
        policy = cs.policy
        hit = self._policies.get(id(policy))
        if hit is None or hit[0] is not policy:
            hit = self._policies[id(policy)] = (
                policy,
                f',"limit_bytes":{policy.limit_bytes},"threshold_bytes":{policy.threshold_bytes}'
                f',"min_rate_bps":{policy.min_rate_bps},"max_rate_bps":{policy.max_rate_bps}'
                f',"share":{policy.share}}}',
            )
        return (
            f'{{"used_bytes":{cs.used_bytes},"last_counter_bytes":{cs.last_counter_bytes}'
            f',"ceil_bps":{cs.ceil_bps},"capped":{_JSON_BOOL[cs.capped]}'
            f',"notified":{_JSON_BOOL[cs.notified]}{hit[1]}'
        )


def _corrupt(source: str, path: str, problem: str) -> StateCorrupt:
    return StateCorrupt(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")


def _object(value: object, keys: frozenset[str], source: str, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _corrupt(source, path, "expected an object")
    if value.keys() != keys:
        missing = sorted(keys - value.keys())
        if missing:
            raise _corrupt(source, path, f"missing key {missing[0]!r}")
        unknown = sorted(str(k) for k in value.keys() - keys)
        raise _corrupt(source, path, f"unknown key {unknown[0]!r}")
    return value


def _uint(obj: dict[str, Any], key: str, source: str, path: str) -> int:
    value = obj[key]
    if type(value) is not int or value < 0:
        raise _corrupt(source, f"{path}.{key}", "expected a non-negative integer")
    return value


def _bool(obj: dict[str, Any], key: str, source: str, path: str) -> bool:
    value = obj[key]
    if type(value) is not bool:
        raise _corrupt(source, f"{path}.{key}", "expected true or false")
    return value


def _class_from(value: object, source: str, path: str) -> ClassState:
    d = _object(value, _CLASS_KEYS, source, path)
    return ClassState(
        policy=ClassPolicy(
            limit_bytes=_uint(d, "limit_bytes", source, path),
            threshold_bytes=_uint(d, "threshold_bytes", source, path),
            min_rate_bps=_uint(d, "min_rate_bps", source, path),
            max_rate_bps=_uint(d, "max_rate_bps", source, path),
            share=_uint(d, "share", source, path),
        ),
        used_bytes=_uint(d, "used_bytes", source, path),
        last_counter_bytes=_uint(d, "last_counter_bytes", source, path),
        ceil_bps=_uint(d, "ceil_bps", source, path),
        capped=_bool(d, "capped", source, path),
        notified=_bool(d, "notified", source, path),
    )


def _slice_from(value: object, source: str, path: str) -> SliceState:
    d = _object(value, _SLICE_KEYS, source, path)
    name = d["name"]
    if type(name) is not str or not name:
        raise _corrupt(source, f"{path}.name", "expected a non-empty string")
    xid = _uint(d, "xid", source, path)
    if xid > DEFAULT_XID:
        raise _corrupt(source, f"{path}.xid", f"{xid} out of range 0..{DEFAULT_XID}")
    start_s = _uint(d, "period_start", source, path)
    end_s = _uint(d, "period_end", source, path)
    if end_s < start_s:
        raise _corrupt(source, f"{path}.period_end", "before period_start")
    classes = _object(d["classes"], _CLASSES_KEYS, source, f"{path}.classes")
    return SliceState(
        name=name,
        xid=xid,
        period_start_s=start_s,
        period_end_s=end_s,
        default=_class_from(classes["default"], source, f"{path}.classes.default"),
        exempt=_class_from(classes["exempt"], source, f"{path}.classes.exempt"),
    )


_Policies = dict[tuple[int, int, int, int, int], ClassPolicy]


def _class_fast(d: object, policies: _Policies) -> ClassState | None:
    """A class of a sound file, or None: then :func:`_class_from` names the problem.

    The hot path of loading thousands of slices: one key-set comparison and
    inline type checks instead of a call per field; slices with the same limits
    share one ClassPolicy.
    """
    if type(d) is not dict or d.keys() != _CLASS_KEYS:
        return None
    used, last, ceil = d["used_bytes"], d["last_counter_bytes"], d["ceil_bps"]
    capped, notified = d["capped"], d["notified"]
    key = (d["limit_bytes"], d["threshold_bytes"], d["min_rate_bps"], d["max_rate_bps"], d["share"])
    if not (
        type(used) is int
        and type(last) is int
        and type(ceil) is int
        and type(key[0]) is int
        and type(key[1]) is int
        and type(key[2]) is int
        and type(key[3]) is int
        and type(key[4]) is int
        and min(used, last, ceil, *key) >= 0
        and type(capped) is bool
        and type(notified) is bool
    ):
        return None
    policy = policies.get(key)
    if policy is None:
        policy = policies[key] = ClassPolicy(*key)
    return ClassState(policy, used, last, ceil, capped, notified)


def _slice_fast(value: object, policies: _Policies) -> SliceState | None:
    """A slice of a sound file, or None: then :func:`_slice_from` names the problem."""
    if type(value) is not dict or value.keys() != _SLICE_KEYS:
        return None
    name, xid, classes = value["name"], value["xid"], value["classes"]
    start_s, end_s = value["period_start"], value["period_end"]
    if not (
        type(name) is str
        and name
        and type(xid) is int
        and 0 <= xid <= DEFAULT_XID
        and type(start_s) is int
        and type(end_s) is int
        and 0 <= start_s <= end_s
        and type(classes) is dict
        and classes.keys() == _CLASSES_KEYS
    ):
        return None
    default = _class_fast(classes["default"], policies)
    exempt = _class_fast(classes["exempt"], policies)
    if default is None or exempt is None:
        return None
    return SliceState(name, xid, start_s, end_s, default, exempt)


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


# version N → a function turning a schema-N object into a schema-(N+1) object
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1, 1: _v1_to_v2}


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    version = data.get("schema_version")
    if type(version) is not int:
        raise _corrupt(source, "schema_version", "expected an integer")
    if version > SCHEMA_VERSION:
        raise StateTooNew(
            f"{source}: schema_version {version} is newer than this bwenforcer reads"
            f" ({SCHEMA_VERSION}); refusing to use or overwrite it"
        )
    if version < min(MIGRATIONS, default=SCHEMA_VERSION):
        raise _corrupt(source, "schema_version", f"unknown version {version}")
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        log.info("%s: migrated state to schema_version %d", source, version)
    return data


def state_from_json(data: object, source: str) -> State:
    """Validate a parsed state file (migrating older schemas) and build the State.

    Raises StateCorrupt naming ``source`` and the JSON path of the first problem, or
    StateTooNew for a file written by a newer schema.
    """
    if type(data) is not dict:
        raise _corrupt(source, "", "expected a JSON object")
    d = _object(_migrate(data, source), _TOP_KEYS, source, "")
    if type(d["writer"]) is not str:
        raise _corrupt(source, "writer", "expected a string")
    saved_s = _uint(d, "saved_at", source, "")
    raw_slices = d["slices"]
    if type(raw_slices) is not dict:
        raise _corrupt(source, "slices", "expected an object")
    slices: dict[int, SliceState] = {}
    policies: _Policies = {}
    for key, value in raw_slices.items():
        st = _slice_fast(value, policies) or _slice_from(value, source, f"slices.{key}")
        if key != str(st.xid):
            raise _corrupt(source, f"slices.{key}", f"key does not match xid {st.xid}")
        slices[st.xid] = st
    raw_ledger = d["ledger"]
    if type(raw_ledger) is not dict:
        raise _corrupt(source, "ledger", "expected an object")
    ledger: dict[str, LedgerEntry] = {}
    for name, value in raw_ledger.items():
        path = f"ledger.{name}"
        entry = _object(value, _LEDGER_KEYS, source, path)
        died_s = _uint(entry, "died_at", source, path)
        st = _slice_fast(entry["slice"], policies) or _slice_from(
            entry["slice"], source, f"{path}.slice"
        )
        if st.name != name:
            raise _corrupt(source, path, f"key does not match slice name {st.name!r}")
        ledger[name] = LedgerEntry(slice=st, died_s=died_s)
    return State(
        slices=slices, ledger=ledger, saved_s=saved_s, resets=_uint(d, "resets", source, "")
    )


# --- the file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """A loaded state, and what had to be done to get it."""

    state: State
    recovered_from: str | None = None  # the backup used because the file was unusable
    moved_aside: str | None = None  # where the unusable file went


def _read_state(path: str) -> State:
    """Parse and validate one state file; FileNotFoundError passes through."""
    try:
        raw = read_own(path, "state file")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StateCorrupt(f"{path}: not valid JSON: {exc}") from exc
    return state_from_json(data, path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class StateStore:
    """The state file at ``path``, its backup ``<path>.1`` and its lock ``<path>.lock``."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.backup = f"{path}.1"
        self.lock_path = f"{path}.lock"
        self._clock = clock  # names of moved-aside files only
        self._directory = os.path.dirname(os.path.abspath(path))
        self._encoder = StateEncoder()
        # The state this store last wrote, and the identity of the file it wrote:
        # while the file is still that one, the next load needs no parsing.
        self._written: tuple[FileIdentity, State] | None = None

    # reading

    def load(self) -> LoadResult:
        """Load the state for a cycle (hold :meth:`lock`), recovering as the module says."""
        return self._load(move_aside=True)

    def read_unlocked(self) -> LoadResult:
        """Load without the lock and without moving anything: for status commands."""
        return self._load(move_aside=False)

    def _load(self, move_aside: bool) -> LoadResult:
        written = self._written
        if written is not None and file_identity(self.path) == written[0]:
            return LoadResult(written[1])
        try:
            return LoadResult(_read_state(self.path))
        except FileNotFoundError:
            return self._without_file()
        except (StateCorrupt, StateTooNew) as exc:
            return self._from_backup(exc, move_aside)

    def _without_file(self) -> LoadResult:
        try:
            state = _read_state(self.backup)
        except FileNotFoundError:
            log.info("no state file at %s: first run, starting empty", self.path)
            return LoadResult(State())
        except (StateCorrupt, StateTooNew) as exc:
            raise StateError(
                f"{self.path} is missing and its backup is unusable ({exc}); restore a good"
                f" copy, or move {self.backup} away to start empty"
            ) from exc
        log.warning("state file %s missing: using its backup %s", self.path, self.backup)
        return LoadResult(state, recovered_from=self.backup)

    def _from_backup(self, problem: StateError, move_aside: bool) -> LoadResult:
        remedy = (
            f"restore a good copy, or move {self.path} away to start empty"
            " (every slice then gets a fresh budget)"
        )
        try:
            state = _read_state(self.backup)
        except FileNotFoundError:
            raise type(problem)(f"{problem}; no backup {self.backup}: {remedy}") from problem
        except (StateCorrupt, StateTooNew) as exc:
            raise type(problem)(f"{problem}; backup unusable too ({exc}): {remedy}") from exc
        aside = self._move_aside(problem) if move_aside else None
        if aside:
            log.error("state file unusable (%s): moved to %s, using backup", problem, aside)
        else:
            log.warning("state file unusable (%s): reading backup %s", problem, self.backup)
        return LoadResult(state, recovered_from=self.backup, moved_aside=aside)

    def _move_aside(self, problem: StateError) -> str:
        kind = "newer" if isinstance(problem, StateTooNew) else "corrupt"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = f"{self.path}.{kind}-{stamp}"
        n = 1
        while os.path.lexists(target):
            n += 1
            target = f"{self.path}.{kind}-{stamp}.{n}"
        try:
            os.rename(self.path, target)
            fsync_dir(self._directory)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot move aside: {exc.strerror or exc}") from exc
        return target

    # writing

    def save(self, state: State, now_s: int) -> None:
        """Write ``state`` atomically (mode 0600), keeping the previous file as ``<path>.1``.

        On failure (disk full, I/O error) the previous file is intact and StateError is
        raised.
        """
        self._written = None
        payload = self._encoder.encode(state, now_s)
        tmp = None
        try:
            self._make_directory()
            self._remove_stale_temps()
            tmp = write_temp(self.path, (payload, b"\n"))
            self._keep_backup()
            os.replace(tmp, self.path)  # replaces a symlink planted there, never follows it
            fsync_dir(self._directory)
            identity = file_identity(self.path)
        except OSError as exc:
            if tmp is not None:
                _unlink_quietly(tmp)
            full = disk_full(exc, f"{self.path}: cannot save state")
            raise full or StateError(
                f"{self.path}: cannot save state: {exc.strerror or exc}"
            ) from exc
        if identity is not None:
            self._written = (identity, dataclasses.replace(state, saved_s=now_s))
        log.debug(
            "saved %s: %d slices, %d ledger entries, %d bytes",
            self.path,
            len(state.slices),
            len(state.ledger),
            len(payload) + 1,
        )

    def _keep_backup(self) -> None:
        # A hard link, so that the file and its backup both exist at every instant.
        # link() creates the name or fails: it never follows a symlink there.
        link = f"{self.backup}.tmp-{os.getpid()}"
        _unlink_quietly(link)
        try:
            os.link(self.path, link)
        except FileNotFoundError:
            return
        os.replace(link, self.backup)

    def _make_directory(self) -> None:
        """Create the state directory (0700) if needed; refuse one others could write."""
        make_dir(self._directory, "state directory")

    def _remove_stale_temps(self) -> None:
        """Remove temp files of writers that were killed mid-save."""
        base = os.path.basename(self.path)
        remove_stale_temps(self._directory, (f"{base}.tmp-", f"{base}.1.tmp-"))

    # locking

    def lock(self, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive cycle lock; wait up to ``timeout_s``, then raise LockBusy."""
        return cycle_lock(self.lock_path, timeout_s)


def check(path: str) -> list[str]:
    """Problems of the state file at ``path`` and its backup, one line each (empty: fine).

    A missing file without a backup is fine (first run).
    """
    store = StateStore(path)
    problems: list[str] = []
    primary: State | None = None
    for candidate in (store.path, store.backup):
        try:
            state = _read_state(candidate)
        except FileNotFoundError:
            if candidate == store.path and os.path.lexists(store.backup):
                problems.append(f"{store.path}: missing, but its backup {store.backup} exists")
            continue
        except StateError as exc:
            problems.append(str(exc))
            continue
        if candidate == store.path:
            primary = state
    if primary is not None:
        problems.extend(_consistency(path, primary))
    return problems


def _consistency(path: str, state: State) -> list[str]:
    """Problems the schema cannot see: one name on two xids, a slice both live and dead."""
    problems = []
    seen: dict[str, int] = {}
    for xid, st in sorted(state.slices.items()):
        if st.name in seen:
            problems.append(f"{path}: slice {st.name} on xids {seen[st.name]} and {xid}")
        seen[st.name] = xid
        if st.name in state.ledger:
            problems.append(f"{path}: slice {st.name} (xid {xid}) is live and in the ledger")
    return problems

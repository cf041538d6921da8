"""The state file: versioned JSON, written atomically, one backup, guarded by a lock.

Layout (docs/state-format.md)::

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

from bwenforcer.core.ledger import LazyLedger
from bwenforcer.core.model import State
from bwenforcer.errors import StateCorrupt, StateError, StateTooNew
from bwenforcer.files.atomic import (
    FileIdentity,
    disk_full,
    file_identity,
    fsync_dir,
    make_dir,
    move_aside,
    open_own,
    remove_stale_temps,
    write_temp,
)
from bwenforcer.files.lock import cycle_lock
from bwenforcer.store.codec import StateEncoder, state_from_json

log = logging.getLogger(__name__)

# entries a loaded ledger may have had taken out or added (kept decoded) before the
# next load reads it again from the file written
_MAX_LEDGER_CHANGES = 1024

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
        # the state's object is the first line; the ledger's lines follow (schema 10 on),
        # read as they are: the parse does not expand them (store.ledgercodec)
        fd = open_own(path, os.O_RDONLY, "state file")
        with os.fdopen(fd, "rb") as f:
            raw = f.readline()
            tail = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StateCorrupt(f"{path}: not valid JSON: {exc}") from exc
    except ValueError as exc:  # an integer beyond Python's conversion limit (4,300 digits)
        raise StateCorrupt(f"{path}: a number too long to read ({exc})") from exc
    del raw  # parsed: not kept while the ledger's lines are checked
    return state_from_json(data, path, tail)


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
        try:
            return move_aside(self.path, kind, self._clock())
        except OSError as exc:
            raise StateError(f"{self.path}: cannot move aside: {exc.strerror or exc}") from exc

    # writing

    def save(self, state: State, now_s: int) -> None:
        """Write ``state`` atomically (mode 0600), keeping the previous file as ``<path>.1``.

        On failure (disk full, I/O error) the previous file is intact and StateError is
        raised.
        """
        self._written = None
        payload, lines = self._encoder.encode_parts(state, now_s)
        tmp = None
        try:
            self._make_directory()
            self._remove_stale_temps()
            tmp = write_temp(self.path, (payload, b"\n", *lines))
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
        ledger = state.ledger
        if identity is not None and not (
            isinstance(ledger, LazyLedger) and ledger.changes > _MAX_LEDGER_CHANGES
        ):
            # a ledger changed much since it was read is read again from the file
            # written (its saved text then holds the changes: none kept decoded)
            self._written = (identity, dataclasses.replace(state, saved_s=now_s))
        log.debug(
            "saved %s: %d slices, %d ledger entries, %d bytes",
            self.path,
            len(state.slices),
            len(state.ledger),
            len(payload) + 1 + sum(len(line) for line in lines),
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

"""Between cycles: a known tenant's cgroup made again (its unit restarted) is marked at once.

A restarted unit gets a new cgroup, with a new id; until the classifier's maps
hold that id, its connections go unclassified (class 1:1fff). The cycle puts it
in within one interval; this watcher does it within a fraction of a millisecond
of the ``mkdir``: it watches (inotify, ``IN_CREATE|IN_DELETE``) the directories
the tenants' cgroups are in, and when a cgroup of a name the last cycle bound
to an xid appears, adds ``{new id: its marks}`` to both maps (one transaction),
and deletes the old id's elements. It never gives a name an xid: unknown names
wait for the cycle. A lost event (queue overflow) only waits for the cycle too.

With the restart gate (``pass_set``), any other cgroup made in those directories
(not a tenant the last cycle bound: another unit, a tenant still without an xid)
is put in the gate's pass set at once, so that only known tenants wait for
their map element.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import struct
import threading
from collections.abc import Mapping

from bwenforcer.core.layout import mark
from bwenforcer.errors import ClassifierError
from bwenforcer.kernel.nftsets import MapChange, NftMaps

log = logging.getLogger(__name__)

IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len; then the name, NUL-padded
READ_BYTES = 64 * 1024
MAX_WATCHES = 10_000  # directories holding tenants; beyond, the cycle alone keeps up


class CgroupWatcher:
    """Re-binds restarted tenants' cgroups in the classifier's maps, in a thread of its own.

    :meth:`update` after each cycle hands it what the maps should hold: for each
    tenant, its cgroup's path below ``mount`` and its xid. Everything it does to
    the maps is what the next cycle would do; the cycle stays the authority.
    """

    def __init__(
        self,
        mount: str,
        table: str,
        map_default: str,
        map_exempt: str,
        netns: str | None = None,
        *,
        pass_set: str | None = None,
    ) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise ClassifierError(f"inotify: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        self.mount = mount
        self._maps = NftMaps(table, netns)
        self._names = (map_default, map_exempt)
        self._pass_set = pass_set
        self._lock = threading.Lock()
        self._wds: dict[int, str] = {}  # watch -> directory below the mount ("" the mount)
        self._watched: set[str] = set()
        self._xids: dict[str, int] = {}  # cgroup path -> xid, from the last cycle
        self._ids: dict[str, int | None] = {}  # cgroup path -> the id the maps hold for it
        self.rebound = 0  # cgroups re-bound between cycles (for tests and logs)
        self.passed = 0  # other cgroups let through the gate between cycles
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name="bwenforcer-cgroup-watch", daemon=True
        )
        self._thread.start()

    def update(self, tenants: Mapping[str, tuple[int, int]]) -> None:
        """The last cycle's tenants: ``{cgroup path: (xid, cgroup id in the maps)}``.

        A cgroup whose id changed since the cycle scanned the tree (made again in
        between) is bound at once, as if its event came now.
        """
        parents = {os.path.dirname(path) for path in tenants}
        for parent in sorted(parents - self._watched):
            if len(self._watched) >= MAX_WATCHES:
                break
            wd = self._add_watch(
                self._fd,
                os.path.join(self.mount, parent).encode(),
                IN_CREATE | IN_DELETE | IN_ONLYDIR,
            )
            if wd < 0:
                continue  # gone meanwhile: the next cycle says so
            self._watched.add(parent)
            with self._lock:
                self._wds[wd] = parent
        with self._lock:
            self._xids = {path: xid for path, (xid, _id) in tenants.items()}
            self._ids = {path: cg for path, (_xid, cg) in tenants.items()}
        for path in tenants:
            self._check(path)

    def close(self) -> None:
        """Stop the thread and release its descriptors and socket."""
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._maps.close()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ev in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("cgroup watcher stopped: %s", exc.strerror)
                return
            for path in self._paths(data):
                self._check(path)

    def _paths(self, data: bytes) -> list[str]:
        """The tenant cgroups the events in ``data`` are about."""
        paths = []
        off = 0
        while off + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
            name = data[off + _EVENT.size : off + _EVENT.size + length].rstrip(b"\0")
            off += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                log.info("cgroup watcher: events lost; the next cycle binds what changed")
                continue
            if not mask & IN_ISDIR or not mask & (IN_CREATE | IN_DELETE):
                continue
            with self._lock:
                parent = self._wds.get(wd)
            if parent is None:
                continue
            path = os.path.join(parent, os.fsdecode(name)) if parent else os.fsdecode(name)
            paths.append(path)
        return paths

    def _check(self, path: str) -> None:
        """Make the maps hold ``path``'s current cgroup id for its tenant, if it has one."""
        with self._lock:
            xid = self._xids.get(path)
            old = self._ids.get(path)
        if xid is None:
            self._let_pass(path)  # not a tenant the last cycle bound: the cycle decides
            return
        try:
            new: int | None = os.stat(os.path.join(self.mount, path), follow_symlinks=False).st_ino
        except FileNotFoundError:
            new = None
        except OSError as exc:
            log.debug("cgroup watcher: %s: %s", path, exc.strerror)
            return
        if new == old:
            return
        default, exempt = self._names
        try:
            if new is not None:
                self._maps.change(
                    (
                        MapChange(default, add={new: mark(xid, "default")}),
                        MapChange(exempt, add={new: mark(xid, "exempt")}),
                    )
                )
            if old is not None:
                # apart: the cycle may have deleted it already (ENOENT would undo the add)
                self._maps.change((MapChange(default, (old,)), MapChange(exempt, (old,))))
        except ClassifierError as exc:  # the old id already gone (the cycle's): fine
            log.debug("cgroup watcher: %s: %s", path, exc)
        with self._lock:
            if self._xids.get(path) == xid:
                self._ids[path] = new
        if new is not None:
            self.rebound += 1
            log.info("cgroup watcher: %s re-bound to xid %d (cgroup id %d)", path, xid, new)

    def _let_pass(self, path: str) -> None:
        """With the gate: a cgroup made beside the tenants, not one, sends as before."""
        if self._pass_set is None:
            return
        try:
            new = os.stat(os.path.join(self.mount, path), follow_symlinks=False).st_ino
        except OSError:
            return  # removed (the event was IN_DELETE): the cycle deletes its element
        try:
            self._maps.change((MapChange(self._pass_set, add={new: None}),))
        except ClassifierError as exc:
            log.warning("cgroup watcher: %s not let through the gate: %s", path, exc)
            return
        self.passed += 1
        log.debug("cgroup watcher: %s (cgroup id %d) let through the gate", path, new)

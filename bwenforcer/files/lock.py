"""The cycle lock: an exclusive ``flock`` on a lock file holding the holder's pid.

The lock file is opened only if we own it (never through a symlink) or created
new (O_EXCL|O_NOFOLLOW, mode 0600): the rules of :mod:`bwenforcer.files.atomic`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from bwenforcer.errors import LockBusy, StateError
from bwenforcer.files.atomic import create_new, disk_full, make_dir, open_own

LOCK_POLL_S = 0.05


@contextlib.contextmanager
def cycle_lock(lock_path: str, timeout_s: float) -> Iterator[None]:
    """Hold the exclusive lock on ``lock_path``; wait up to ``timeout_s``, then raise LockBusy.

    The lock's directory is created (0700) if needed; one others could write is refused.
    """
    try:
        make_dir(os.path.dirname(os.path.abspath(lock_path)), "state directory")
        fd = _open_lock(lock_path)
    except OSError as exc:
        what = f"{lock_path}: cannot open lock"
        raise disk_full(exc, what) or StateError(f"{what}: {exc.strerror}") from exc
    try:
        _acquire(lock_path, fd, timeout_s)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            what = f"{lock_path}: cannot write lock"
            raise disk_full(exc, what) or StateError(f"{what}: {exc.strerror}") from exc
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(lock_path: str) -> int:
    """The lock file: ours from an earlier cycle (never through a symlink), or new."""
    while True:
        try:
            return open_own(lock_path, os.O_RDWR, "state lock")
        except FileNotFoundError:
            pass
        try:
            return create_new(lock_path)
        except FileExistsError:
            continue  # another cycle created it in between: open that one


def _acquire(lock_path: str, fd: int, timeout_s: float) -> None:
    """Take the flock on ``fd``, polling every LOCK_POLL_S up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(LOCK_POLL_S, remaining))
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise StateError(f"{lock_path}: cannot lock: {exc.strerror}") from exc
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    raise LockBusy(
        f"another bwenforcer cycle holds {lock_path} (pid {holder}) after {timeout_s:g} s"
    )

"""Crash-safe file writing shared by the state store and the usage history.

A writer puts its bytes in ``<file>.tmp-<pid>`` (0600, fsynced), renames it into
place and fsyncs the directory; a temp file whose writer was killed is removed
by the next writer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

FileIdentity = tuple[int, int, int, int]


def file_identity(path: str) -> FileIdentity | None:
    """The identity of the file at ``path`` (device, inode, size, mtime); None if absent.

    Every writer here replaces a file by renaming a new one over it, so a file
    with the identity a process saw after its own write is still what it wrote.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: str, payload: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Write ``payload`` (bytes, or its parts in turn) to ``path`` with ``mode``; fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is ignored if a stale file was there
        for part in (payload,) if isinstance(payload, bytes) else payload:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, payload: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Put ``payload`` at ``path`` atomically and durably, the crash-safe way above.

    On failure (OSError, raised) the previous file is intact and the temp file gone.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        remove_stale_temps(directory, (f"{os.path.basename(path)}.tmp-",))
        write_new_file(tmp, payload, mode)
        os.replace(tmp, path)
        fsync_dir(directory)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str, prefixes: Iterable[str]) -> None:
    """Remove ``<prefix><pid>`` files of writers that are gone (or of this process)."""
    prefixes = tuple(prefixes)
    for name in os.listdir(directory):
        for prefix in prefixes:
            pid = name[len(prefix) :]
            if name.startswith(prefix) and pid.isdigit():
                if int(pid) != os.getpid() and pid_alive(int(pid)):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))

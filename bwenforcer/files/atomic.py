"""Crash-safe, symlink-safe file writing shared by every file the agent writes.

A writer puts its bytes in ``<file>.tmp-<pid>.<random>`` (created with
O_EXCL|O_NOFOLLOW, 0600, fsynced), renames it into place and fsyncs the
directory; a temp file whose writer was killed is removed by the next writer.

The agent runs as root in directories an operator chose: before writing (and
before trusting what it reads back) it checks the directory with
:func:`check_dir`, and it opens existing files of its own with
:func:`open_own`, never through a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable

from bwenforcer.errors import DiskFull, UnsafePath

FileIdentity = tuple[int, int, int, int]

# Errors of a disk that cannot take a write: reported as DiskFull (exit 5), old files kept.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def disk_full(exc: OSError, what: str) -> DiskFull | None:
    """A DiskFull naming ``what`` if ``exc`` is a disk that cannot take a write, else None."""
    if exc.errno not in DISK_ERRNOS:
        return None
    return DiskFull(f"{what}: {exc.strerror or exc} (nothing written; the old file is kept)")


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


def _unsafe_dir_problem(st: os.stat_result, own: bool) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if own and st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by uid {os.geteuid()} that runs bwenforcer"
    if not own and st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022 and not (not own and st.st_mode & stat.S_ISVTX):
        return f"writable by others than its owner (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_dir(directory: str, what: str, *, own: bool = True) -> None:
    """Refuse (UnsafePath) a ``directory`` another user could plant files or symlinks in.

    The directory itself must be owned by the effective uid and writable by it
    alone; each directory above it by root or that uid, and writable by others
    only if sticky (as /tmp), so no one else can rename it away. Symlinks in the
    path are resolved first: their targets are checked. With ``own`` False the
    directory itself is judged as a parent is (the one above a directory to create).
    """
    path = os.path.realpath(directory)
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None  # nothing in it to trust yet; the writer creates it (0700) first
        except OSError as exc:
            raise UnsafePath(f"{what} {path}: cannot check: {exc.strerror or exc}") from exc
        if st is not None:
            problem = _unsafe_dir_problem(st, own)
            if problem is not None:
                raise UnsafePath(f"{what} {path}: refused: {problem}")
        if path == os.path.dirname(path):
            return
        own = False
        path = os.path.dirname(path)


def make_dir(directory: str, what: str) -> None:
    """Create ``directory`` (0700; missing parents 0755) if needed, then :func:`check_dir`.

    The directories above that exist are checked first: nothing is created under one
    others could write (they could rename it away and put theirs in its place).
    """
    missing = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    if missing:
        check_dir(path, what, own=False)
    for i, path in enumerate(reversed(missing)):
        mode = 0o700 if i == len(missing) - 1 else 0o755
        with contextlib.suppress(FileExistsError):  # another process made it: checked below
            os.mkdir(path, mode)
            # The umask may have taken bits off; fchmod what we open, never a symlink.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
    check_dir(directory, what)


def open_own(path: str, flags: int, what: str, dir_fd: int | None = None) -> int:
    """Open an existing file of ours (never through a symlink); FileNotFoundError passes.
    With ``dir_fd``, ``path`` is a name in that directory.

    Refused (UnsafePath): a symlink, anything but a regular file, a file owned
    by another uid or with other hard links (it could be someone else's file).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{what} {path}: refused: is a symlink") from exc
        raise
    try:
        st = os.fstat(fd)
        problem = None
        if stat.S_ISDIR(st.st_mode):  # a mistake, not an attack: reported as read errors are
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_uid != os.geteuid():
            problem = f"owned by uid {st.st_uid}, not {os.geteuid()}"
        elif st.st_nlink > 1 and flags & (os.O_WRONLY | os.O_RDWR):
            problem = f"has {st.st_nlink} hard links"
        if problem is not None:
            raise UnsafePath(f"{what} {path}: refused: {problem}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own(path: str, what: str, limit_bytes: int | None = None) -> bytes:
    """The bytes of an existing file of ours (see :func:`open_own`), up to ``limit_bytes``."""
    fd = open_own(path, os.O_RDONLY, what)
    with os.fdopen(fd, "rb") as f:
        return f.read() if limit_bytes is None else f.read(limit_bytes)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: str, kind: str, now_s: float) -> str:
    """Rename the unusable file ``path`` to ``<path>.<kind>-<UTC time of now_s>`` and
    return that name, so the next write cannot overwrite what an operator may want
    to inspect.

    A name already taken (the same second) gets ``.2``, ``.3``, ...; a symlink at
    ``path`` is moved itself, never followed; the directory is fsynced. OSError
    (nothing moved, or the move not yet durable) is the caller's to report.
    """
    return _aside(path, kind, now_s, os.rename)


def keep_aside(path: str, kind: str, now_s: float) -> str:
    """:func:`move_aside`, but ``path`` stays: a second name (a hard link) is made
    for it, kept once ``path`` is replaced.
    """
    return _aside(path, kind, now_s, lambda src, dst: os.link(src, dst, follow_symlinks=False))


def _aside(path: str, kind: str, now_s: float, place: Callable[[str, str], None]) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    target = f"{path}.{kind}-{stamp}"
    n = 1
    while os.path.lexists(target):
        n += 1
        target = f"{path}.{kind}-{stamp}.{n}"
    place(path, target)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return target


def create_new(path: str, mode: int = 0o600) -> int:
    """A new file at ``path`` (O_EXCL|O_NOFOLLOW: never an existing file or symlink)."""
    fd = os.open(path, _NEW_FLAGS, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off (0644 for node_exporter)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, payload: bytes | Iterable[bytes]) -> None:
    for part in (payload,) if isinstance(payload, bytes) else payload:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]
    os.fsync(fd)


def new_temp(path: str, mode: int = 0o600) -> tuple[int, str]:
    """``(fd, name)`` of a new temp file ``<path>.tmp-<pid>.<random>`` beside ``path``.

    The random part makes the name unpredictable; O_EXCL makes it ours.
    """
    while True:
        tmp = f"{path}.tmp-{os.getpid()}.{secrets.token_hex(8)}"
        try:
            return create_new(tmp, mode), tmp
        except FileExistsError:
            continue


def write_temp(path: str, payload: bytes | Iterable[bytes], mode: int = 0o600) -> str:
    """Write ``payload`` (bytes, or its parts in turn) to a new temp file beside ``path``,
    fsynced; return its name (removed again on failure).
    """
    fd, tmp = new_temp(path, mode)
    try:
        try:
            _write_all(fd, payload)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def replace_file(path: str, payload: bytes | Iterable[bytes], mode: int = 0o600) -> None:
    """Put ``payload`` at ``path`` atomically and durably, the crash-safe way above.

    The caller has checked the directory (:func:`check_dir`). On failure
    (OSError, raised) the previous file is intact and the temp file gone.
    """
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(directory, (f"{os.path.basename(path)}.tmp-",))
    tmp = write_temp(path, payload, mode)
    try:
        os.replace(tmp, path)  # replaces a symlink at ``path``, never writes through it
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


def remove_stale_temps(directory: str | int, prefixes: Iterable[str]) -> None:
    """Remove ``<prefix><pid>[.<random>]`` files of writers that are gone (or of this
    process: it has none open between writes); ``directory`` a path or an open fd.
    """
    prefixes = tuple(prefixes)
    at = directory if isinstance(directory, int) else None
    for name in os.listdir(directory):
        for prefix in prefixes:
            pid = name[len(prefix) :].split(".", 1)[0]
            if name.startswith(prefix) and pid.isdigit():
                if int(pid) != os.getpid() and pid_alive(int(pid)):
                    continue
                with contextlib.suppress(FileNotFoundError):  # unlink: never follows
                    if at is None:
                        os.unlink(os.path.join(str(directory), name))
                    else:
                        os.unlink(name, dir_fd=at)


def open_shared_dir(directory: str, what: str) -> int:
    """An fd of ``directory``, a directory that may be another user's (node_exporter's
    textfile directory belongs to ``prometheus``); UnsafePath if it is not one, or if
    others than its owner may write it and it is not sticky.

    Writing there is safe through the fd (:func:`replace_at`): a new O_EXCL|O_NOFOLLOW
    temp file and a rename inside the directory the fd holds, whatever its owner
    renames or plants meanwhile; its owner could remove our file anyway.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise UnsafePath(f"{what} {directory}: refused: not a directory") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafePath(
                f"{what} {directory}: refused: writable by others than its owner and not"
                f" sticky (mode {stat.S_IMODE(st.st_mode):o})"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_at(dir_fd: int, name: str, payload: bytes | Iterable[bytes], mode: int) -> None:
    """Put ``payload`` at ``name`` in the directory ``dir_fd`` atomically and durably: a
    new temp file (O_EXCL|O_NOFOLLOW, random name), fsynced, renamed over ``name``
    (which replaces a symlink there, never follows it). On failure (OSError, raised)
    the temp file is gone.
    """
    remove_stale_temps(dir_fd, (f"{name}.tmp-",))
    while True:
        tmp = f"{name}.tmp-{os.getpid()}.{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, _NEW_FLAGS, mode, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)

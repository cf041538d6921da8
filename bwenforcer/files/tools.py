"""The system tools bwenforcer runs (``nft``, ``ip``, ``setpriv``, ``sendmail``), by
absolute path.

Debian's cron runs jobs with ``PATH=/usr/bin:/bin``, which holds neither ``nft``
nor ``ip`` (both in ``/usr/sbin``): a tool is looked up in the system's sbin and
bin directories first, then in ``$PATH``.
"""

from __future__ import annotations

import os

SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def find_tool(name: str, environ: dict[str, str] | None = None) -> str | None:
    """The absolute path of the executable ``name`` (a path is taken as given); None if
    it is in none of SYSTEM_DIRS and the absolute directories of ``$PATH``.
    """
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    path = (os.environ if environ is None else environ).get("PATH", "")
    extra = [d for d in path.split(os.pathsep) if os.path.isabs(d)]
    for directory in dict.fromkeys([*SYSTEM_DIRS, *extra]):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def tool_path(name: str) -> str:
    """:func:`find_tool`'s path, or ``name`` itself when there is none (running it then
    fails with FileNotFoundError, which the caller reports as "not found").
    """
    return find_tool(name) or name

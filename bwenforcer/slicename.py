"""Slice names ↔ xids on the command line: an xid, ``root``, ``default`` or a Unix account."""

from __future__ import annotations

import pwd

from .errors import UsageError
from .layout import DEFAULT_XID, ROOT_XID, check_xid

_SPECIAL = {"root": ROOT_XID, "default": DEFAULT_XID}


def resolve_slice(text: str) -> tuple[int, str]:
    """``(xid, name)`` for a slice given by xid (decimal or 0x hex) or by name."""
    value = text.strip()
    try:
        xid = int(value, 0)
    except ValueError:
        xid = None
    if xid is not None:
        return check_xid(xid), slice_name(xid)
    if value in _SPECIAL:
        return _SPECIAL[value], value
    try:
        uid = pwd.getpwnam(value).pw_uid
    except KeyError:
        raise UsageError(f"slice {value!r}: no such xid, account or slice name") from None
    return check_xid(uid), value


def slice_name(xid: int) -> str:
    """The name of an xid: root, default, the account with that uid, or the number."""
    if xid == ROOT_XID:
        return "root"
    if xid == DEFAULT_XID:
        return "default"
    try:
        return pwd.getpwuid(xid).pw_name
    except KeyError:
        return str(xid)

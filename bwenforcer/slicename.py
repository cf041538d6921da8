"""Slice names ↔ xids on the command line: an xid, ``root``, ``default`` or a Unix account."""

from __future__ import annotations

import pwd

from .errors import UsageError
from .layout import DEFAULT_XID, ROOT_XID, check_xid

_SPECIAL = {"root": ROOT_XID, "default": DEFAULT_XID}


def resolve_slice(text: str) -> tuple[int, str]:
    """``(xid, name)`` for a slice given by xid (decimal or 0x hex) or by name."""
    value = text.strip()
    xid = _number(value)
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


def _number(value: str) -> int | None:
    """An xid written as decimal (leading zeros allowed) or 0x hex; None for a name."""
    digits = value.removeprefix("-")
    if digits.isdecimal() and digits.isascii():
        return int(value)
    if digits[:2].lower() == "0x":
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None

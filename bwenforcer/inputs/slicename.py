"""Slice names ↔ xids on the command line: an xid, ``root``, ``default`` or a Unix account."""

from __future__ import annotations

import pwd
import re
import reprlib
from collections.abc import Mapping

from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID, check_xid
from bwenforcer.errors import UsageError

_SPECIAL = {"root": ROOT_XID, "default": DEFAULT_XID}


def resolve_slice(text: str, slices: Mapping[str, int] | None = None) -> tuple[int, str]:
    """``(xid, name)`` for a slice given by xid (decimal or 0x hex) or by name: a name
    of ``slices`` (slice name → xid: the slices file's and the state's) before a Unix
    account's.
    """
    value = text.strip()
    if value in _SPECIAL:
        return _SPECIAL[value], value
    number = _number(value)
    name = value if number is None else None
    if number is not None:
        xid = number
    elif slices is not None and value in slices:
        xid = slices[value]
    else:
        try:
            xid = pwd.getpwnam(value).pw_uid
        except KeyError:
            raise UsageError(f"slice {value!r}: no such xid, account or slice name") from None
    check_xid(xid)
    # The root and default classes are the tree's own: only their names reach them,
    # so a typo'd number or an account with such a uid cannot change them.
    for special, special_xid in _SPECIAL.items():
        if xid == special_xid:
            raise UsageError(
                f"slice {shown(value)}: xid {xid} is the {special} class; name it {special!r}"
            )
    return xid, name if name is not None else slice_name(xid)


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
        if len(digits) > 20:  # no xid; and past 4,300 digits int() itself refuses
            raise UsageError(f"slice {quoted(value)}: not an xid (0..4095)")
        return int(value)
    if digits[:2].lower() == "0x":
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


_PLAIN = re.compile(r"[A-Za-z0-9_.@+-]{1,80}")


def quoted(text: str) -> str:
    """``repr(text)`` cut short: an argument echoed in an error stays a readable line."""
    full = repr(text)
    return full if len(full) <= 80 else f"{full[:77]}..."


def shown(value: object) -> str:
    """A slice name (or other value) from input, as it goes into a log or error line.

    A plain name is shown as it is; anything else quoted with its control characters
    escaped (``repr``) and cut short, so that a name cannot split or forge a log line.
    """
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    if not isinstance(value, str):
        return reprlib.repr(value)  # bounded in size and depth: input may be huge or nested
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."

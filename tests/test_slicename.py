"""Slices named on the command line."""

from __future__ import annotations

import pwd

import pytest

from bwenforcer.errors import UsageError, XidOutOfRange
from bwenforcer.slicename import resolve_slice, slice_name


def test_numbers_names_and_specials() -> None:
    assert resolve_slice("1234")[0] == 1234
    assert resolve_slice("0x4d2")[0] == 1234
    assert resolve_slice("0X4D2")[0] == 1234
    assert resolve_slice("0100")[0] == 100  # decimal, as an operator means it
    assert resolve_slice("root") == (0, "root")
    assert resolve_slice("default") == (0xFFF, "default")
    assert resolve_slice("daemon")[0] == 1  # a Unix account → its uid
    assert slice_name(0) == "root" and slice_name(0xFFF) == "default"
    assert slice_name(1) == "daemon"
    unused = min(set(range(2, 0xFFF)) - {entry.pw_uid for entry in pwd.getpwall()})
    assert slice_name(unused) == str(unused)


def test_bad_names() -> None:
    with pytest.raises(XidOutOfRange, match="70000"):
        resolve_slice("70000")
    with pytest.raises(XidOutOfRange, match="-3"):
        resolve_slice("-3")
    with pytest.raises(XidOutOfRange, match="4096"):
        resolve_slice("0x1000")
    with pytest.raises(UsageError, match="0xzz"):
        resolve_slice("0xzz")
    with pytest.raises(UsageError, match="nobody_here"):
        resolve_slice("nobody_here")

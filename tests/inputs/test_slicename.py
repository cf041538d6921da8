"""Slices named on the command line."""

from __future__ import annotations

import pwd

import pytest

from bwenforcer.errors import UsageError, XidOutOfRange
from bwenforcer.inputs.slicename import resolve_slice, slice_name


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


def test_the_root_and_default_classes_are_reached_only_by_their_names() -> None:
    assert resolve_slice("root") == (0, "root")
    assert resolve_slice("default") == (0xFFF, "default")
    for text, special in (("0", "root"), ("00", "root"), ("4095", "default"), ("0xfff", "default")):
        with pytest.raises(UsageError) as caught:
            resolve_slice(text)
        assert str(caught.value) == (
            f"slice {text}: xid {int(text, 0) if text.startswith('0x') else int(text)}"
            f" is the {special} class; name it {special!r}"
        )
    # an account whose uid is 0 but is not called root (as toor on some systems)
    accounts = [e.pw_name for e in pwd.getpwall() if e.pw_uid == 0 and e.pw_name != "root"]
    for name in accounts:
        with pytest.raises(UsageError, match="is the root class"):
            resolve_slice(name)

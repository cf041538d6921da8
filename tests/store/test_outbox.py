"""The notice outbox journal (store/outbox.py): durable marks, taken back, bounded, safe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bwenforcer.core.notices import Mark
from bwenforcer.errors import UnsafePath
from bwenforcer.store.outbox import Outbox

A = Mark(1_763_769_600, 11, "default", "share", 5000)
B = Mark(1_763_769_600, 11, "exempt", "threshold")
C = Mark(1_763_769_600, 12, "default", "lifted")


def test_marks_handed_over_are_read_back_and_a_taken_back_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "state.json.outbox"
    box = Outbox(str(path))
    assert box.read() == []
    box.record([A, B])
    box.record([C])
    box.record([C], handed=False)  # the server refused it: to be sent again
    box.close()
    assert Outbox(str(path)).read() == [A, B]
    assert path.stat().st_mode & 0o777 == 0o600
    box.clear()
    assert not path.exists() and box.read() == []


def test_a_line_cut_short_by_a_kill_and_foreign_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    path.write_bytes(f"+ {A.line()}\nnonsense\n+ 1 2 default share\n+ {B.line()}".encode())
    assert Outbox(str(path)).read() == [A]  # B was cut short: not yet handed over


def test_a_symlink_in_its_place_is_refused_and_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, tmp_path / "outbox")
    box = Outbox(str(tmp_path / "outbox"))
    with pytest.raises(UnsafePath, match="symlink"):
        box.read()
    with pytest.raises(UnsafePath, match="symlink"):
        box.record([A])
    assert target.read_text() == ""

"""A hostile local user against the files root writes, and a full disk.

The attacker can write a directory the agent writes into (or won a race in
one): a symlink or hard link planted where the agent writes must never make it
write, truncate or log another file. A directory others can write is refused
with one line; a disk that cannot take a write is one line and exit 5.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bwenforcer.core.settings import Config
from bwenforcer.errors import DeliveryError, Error, StateError
from bwenforcer.history.fold import save_history
from bwenforcer.history.usage import History
from bwenforcer.inputs.slices import load_slices_file
from bwenforcer.mail.transport import make_transport
from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.metrics.exposition import from_textfile, write_textfile
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import VENV_BIN, bwenforcer_in
from tests.mail.test_mailer import MAIL, message
from tests.netns import Netns
from tests.store.test_statestore import NOW_S, REPO, make_state

VICTIM_TEXT = "root:precious-hash:19000:0:99999:7:::\n"
SLICES_YAML = "slices:\n  - {name: pl_a, xid: 51, rspec: {}}\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file the attacker wants root to overwrite (or to log), outside every agent dir."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    path = elsewhere / "shadow"
    path.write_text(VICTIM_TEXT)
    return path


def _dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    return path


def _one_line(exc: BaseException, *parts: str) -> None:
    text = str(exc)
    assert "\n" not in text
    for part in parts:
        assert part in text, (part, text)


# --- the state lock ------------------------------------------------------------------


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    state = _dir(tmp_path / "state") / "state.json"
    Path(f"{state}.lock").symlink_to(victim)
    with pytest.raises(StateError) as caught, StateStore(str(state)).lock(1):
        pass
    assert victim.read_text() == VICTIM_TEXT
    _one_line(caught.value, f"{state}.lock", "refused: is a symlink")
    assert caught.value.exit_code == 5


def test_a_hard_link_at_the_lock_path_is_refused_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    state = _dir(tmp_path / "state") / "state.json"
    os.link(victim, f"{state}.lock")  # root may link any file; protected_hardlinks aside
    with pytest.raises(StateError) as caught, StateStore(str(state)).lock(1):
        pass
    assert victim.read_text() == VICTIM_TEXT
    _one_line(caught.value, f"{state}.lock", "hard links")


def test_a_symlinked_state_file_is_refused_not_read(tmp_path: Path, victim: Path) -> None:
    state = _dir(tmp_path / "state") / "state.json"
    state.symlink_to(victim)
    with pytest.raises(StateError) as caught:
        StateStore(str(state)).load()
    _one_line(caught.value, str(state), "refused: is a symlink")
    assert "precious" not in str(caught.value)
    assert victim.read_text() == VICTIM_TEXT and state.is_symlink()  # nothing moved aside


# --- temp files: the attacker plants a symlink at the very name the writer opens -------


def _writers(tmp_path: Path) -> dict[str, Callable[[], object]]:
    agent_dir = _dir(tmp_path / "var")
    slices = tmp_path / "slices.yaml"
    slices.write_text(SLICES_YAML)
    config = Config(state_file=str(agent_dir / "state.json"), slices_file=str(slices))
    spool = replace(MAIL, transport="spool", spool_dir=str(_dir(tmp_path / "spool")))
    return {
        "state": lambda: StateStore(str(agent_dir / "state.json")).save(make_state(2), NOW_S),
        "history": lambda: save_history(History(), str(agent_dir / "state.json.history")),
        "textfile": lambda: write_textfile(str(agent_dir / "bwenforcer.prom"), AgentMetrics()),
        "slices cache": lambda: load_slices_file(str(slices), config),
        "spool": lambda: make_transport(spool).send(message()),
    }


@pytest.mark.parametrize("writer", ["state", "history", "textfile", "slices cache", "spool"])
def test_a_symlink_planted_at_the_temp_name_never_redirects_the_write(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    write = _writers(tmp_path)[writer]
    real_open = os.open
    planted: list[str] = []

    # The worst case of the race: the attacker guessed the temp name and won, its
    # symlink is there when the writer creates the file. (os.open is wrapped only to
    # act at that instant; the file system under it is real.)
    def attacker_first(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if not planted and ".tmp" in os.fspath(path) and flags & os.O_CREAT:
            os.symlink(victim, path, dir_fd=kw.get("dir_fd"))  # where the writer opens it
            planted.append(os.fspath(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", attacker_first)
    write()
    monkeypatch.undo()
    assert planted, "the writer made no temp file"
    assert victim.read_text() == VICTIM_TEXT


def test_temp_names_are_unpredictable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _dir(tmp_path / "state") / "state.json"
    real_open = os.open
    temps: list[str] = []

    def spy(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if flags & os.O_CREAT:
            temps.append(os.path.basename(os.fspath(path)))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", spy)
    store = StateStore(str(state))
    store.save(make_state(1), NOW_S)
    store.save(make_state(1), NOW_S + 1)
    monkeypatch.undo()
    assert len(temps) == 2 and temps[0] != temps[1]
    assert f"state.json.tmp-{os.getpid()}" not in temps


# --- the metrics textfile and the spool ------------------------------------------------


def test_a_symlinked_textfile_is_not_read_but_replaced_and_nothing_of_its_target_logged(
    tmp_path: Path, victim: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prom = _dir(tmp_path / "textfile", 0o755) / "bwenforcer.prom"
    prom.symlink_to(victim)
    with caplog.at_level(logging.DEBUG):
        metrics = from_textfile(str(prom))
    assert f"metrics textfile {prom} refused: is a symlink; counters restart" in caplog.text
    assert "precious" not in caplog.text
    write_textfile(str(prom), metrics)
    assert not prom.is_symlink() and "bwenforcer_" in prom.read_text()
    assert victim.read_text() == VICTIM_TEXT


def test_a_textfile_directory_of_another_user_is_written_through_its_fd(tmp_path: Path) -> None:
    # Debian's node_exporter textfile directory belongs to prometheus, mode 755
    textfile = _dir(tmp_path / "node-exporter", 0o755)
    os.chown(textfile, 65534, 65534)
    prom = textfile / "bwenforcer.prom"
    write_textfile(str(prom), from_textfile(str(prom)))
    assert prom.stat().st_uid == os.geteuid() and prom.stat().st_mode & 0o777 == 0o644
    write_textfile(str(prom), from_textfile(str(prom)))  # read back, replaced again
    assert sorted(p.name for p in textfile.iterdir()) == ["bwenforcer.prom"]


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_textfile_directory_others_can_write_without_sticky_bit_is_refused(
    tmp_path: Path, mode: int
) -> None:
    textfile = _dir(tmp_path / "node-exporter", mode)
    with pytest.raises(Error) as caught:
        write_textfile(str(textfile / "bwenforcer.prom"), AgentMetrics())
    _one_line(caught.value, str(textfile), "refused: writable by others")
    assert list(textfile.iterdir()) == []


def test_a_symlink_at_the_spool_file_name_is_replaced_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    spool = _dir(tmp_path / "spool")
    transport = make_transport(replace(MAIL, transport="spool", spool_dir=str(spool)))
    name = transport._name(message())  # type: ignore[attr-defined]
    (spool / name).symlink_to(victim)
    transport._name = lambda msg: name  # type: ignore[attr-defined]
    transport.send(message())
    assert victim.read_text() == VICTIM_TEXT
    assert not (spool / name).is_symlink() and b"Subject:" in (spool / name).read_bytes()


# --- directories others can write --------------------------------------------------------


def _unsafe(tmp_path: Path, how: str) -> Path:
    path = _dir(tmp_path / "d")
    if how == "group-writable":
        path.chmod(0o770)
    elif how == "world-writable sticky":
        path.chmod(0o1777)
    else:
        os.chown(path, 65534, 65534)
    return path


UNSAFE = ["group-writable", "world-writable sticky", "owned by another uid"]


@pytest.mark.parametrize("how", UNSAFE)
@pytest.mark.parametrize("writer", ["state lock", "state", "history"])
def test_a_directory_others_can_write_is_refused_with_one_line(
    tmp_path: Path, how: str, writer: str
) -> None:
    directory = _unsafe(tmp_path, how)
    write: Callable[[], object] = {
        "state lock": lambda: StateStore(str(directory / "s.json")).lock(1).__enter__(),
        "state": lambda: StateStore(str(directory / "s.json")).save(make_state(1), NOW_S),
        "history": lambda: save_history(History(), str(directory / "s.json.history")),
    }[writer]
    with pytest.raises(StateError) as caught:
        write()
    _one_line(caught.value, str(directory), "refused")
    assert caught.value.exit_code == 5
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("how", UNSAFE)
def test_a_spool_directory_others_can_write_fails_each_mail_with_one_line(
    tmp_path: Path, how: str
) -> None:
    spool = _unsafe(tmp_path, how)
    with pytest.raises(DeliveryError) as caught:
        make_transport(replace(MAIL, transport="spool", spool_dir=str(spool))).send(message())
    _one_line(caught.value, str(spool), "refused")
    assert list(spool.iterdir()) == []


def test_a_symlinked_directory_is_judged_by_its_target(tmp_path: Path) -> None:
    target = _unsafe(tmp_path, "owned by another uid")
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(StateError, match="owned by uid 65534"):
        StateStore(str(link / "s.json")).save(make_state(1), NOW_S)


def test_a_parent_others_can_write_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = _dir(tmp_path / "shared", 0o777)  # anyone may rename our directory away
    with pytest.raises(StateError, match=f"{parent}: refused: writable by others"):
        StateStore(str(_dir(parent / "state") / "s.json")).save(make_state(1), NOW_S)


@pytest.mark.parametrize("writer", ["state lock", "state", "history", "spool"])
def test_nothing_is_created_under_a_parent_others_can_write(tmp_path: Path, writer: str) -> None:
    parent = _dir(tmp_path / "shared", 0o777)
    missing = parent / "state" / "deeper"
    write: Callable[[], object] = {
        "state lock": lambda: StateStore(str(missing / "s.json")).lock(1).__enter__(),
        "state": lambda: StateStore(str(missing / "s.json")).save(make_state(1), NOW_S),
        "history": lambda: save_history(History(), str(missing / "s.json.history")),
        "spool": lambda: make_transport(
            replace(MAIL, transport="spool", spool_dir=str(missing))
        ).send(message()),
    }[writer]
    with pytest.raises(Error) as caught:
        write()
    _one_line(caught.value, f"{parent}: refused: writable by others")
    assert list(parent.iterdir()) == []  # refused before anything was created


@pytest.mark.kernel
def test_sync_refuses_a_group_writable_state_directory(ns: Netns, tmp_path: Path) -> None:
    state_dir = _dir(tmp_path / "state", 0o770)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {state_dir}/s.json\nslices_file: null\n"
    )
    done = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert done.returncode == 5
    assert done.stderr.splitlines() == [
        f"bwenforcer: state directory {state_dir}: refused:"
        " writable by others than its owner (mode 770)"
    ]
    assert list(state_dir.iterdir()) == []


# --- a full disk ---------------------------------------------------------------------------

_FULL_DISK_SCRIPT = """
import json, os, subprocess, sys
sys.path.insert(0, {repo!r})
from bwenforcer.cycle.agent import Agent
from bwenforcer.inputs.config import Config
from bwenforcer.errors import Error
from bwenforcer.history.usage import CycleUsage, History
from bwenforcer.history.fold import save_history
from bwenforcer.history.recorder import HistoryRecorder
from bwenforcer.inputs.config import HistoryConfig
from bwenforcer.metrics.exposition import write_textfile
from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.inputs.slices import load_slices_file
from bwenforcer.store.state import StateStore
from tests.metrics.test_metrics import _result
from tests.store.test_statestore import make_state
mnt, cfg, slices = {mnt!r}, {cfg!r}, {slices!r}
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", mnt], check=True)
state = os.path.join(mnt, "state.json")
StateStore(state).save(make_state(3), 1)
before = open(state, "rb").read()
with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
sync = subprocess.run([{bwenforcer!r}, "--config", cfg, "sync"], capture_output=True, text=True)
out = {{"sync": [sync.returncode, sync.stderr]}}
usage = [CycleUsage("pl_a", 10, 0, False, False)]
writers = {{
    "state": lambda: StateStore(state).save(make_state(400), 2),
    "history": lambda: save_history(History(), state + ".history"),
    "journal": lambda: HistoryRecorder(state + ".history", HistoryConfig()).record(2, 300, usage),
    # a cycle's history failing for a full disk is raised (exit 5), not just logged
    "agent history": lambda: Agent(Config(state_file=state))._record_history(_result().plan),
    "textfile": lambda: write_textfile(os.path.join(mnt, "b.prom"), AgentMetrics()),
    "slices cache": lambda: load_slices_file(slices, Config(state_file=state)),
}}
for name, write in writers.items():
    try:
        write()
        out[name] = None
    except Error as exc:
        out[name] = [int(exc.exit_code), str(exc)]
out["intact"] = open(state, "rb").read() == before
out["files"] = sorted(os.listdir(mnt))
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_line_and_exit_5_for_every_file_and_the_state_is_kept(
    tmp_path: Path,
) -> None:
    mnt = _dir(tmp_path / "mnt")
    slices = tmp_path / "slices.yaml"
    slices.write_text(SLICES_YAML)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: lo\nnode_cap: 10mbit\nstate_file: {mnt}/state.json\nslices_file: null\n"
    )
    script = _FULL_DISK_SCRIPT.format(
        repo=str(REPO),
        mnt=str(mnt),
        cfg=str(cfg),
        slices=str(slices),
        bwenforcer=str(VENV_BIN / "bwenforcer"),
    )
    # Private mount and network namespaces: the tmpfs goes with the process, and the
    # sync (refused before it touches the kernel) could only see a lone loopback.
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(done.stdout)
    code, stderr = out.pop("sync")
    assert code == 5, stderr
    assert stderr.splitlines() == [
        f"bwenforcer: {mnt}/state.json.lock: cannot write lock: No space left on device"
        " (nothing written; the old file is kept)"
    ]
    assert out.pop("intact") is True
    assert out.pop("files") == ["filler", "state.json", "state.json.lock"]
    for name, failure in out.items():
        assert failure is not None, f"{name}: no error on a full disk"
        exit_code, line = failure
        assert exit_code == 5 and "No space left on device" in line and "\n" not in line, name

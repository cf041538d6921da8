"""The daemon and the node-manager thread account a cycle the same way (bwenforcer.modes.runner).

No cycle here reaches a kernel: the state lock is held by the test, or the
agent raises before the cycle starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bwenforcer.core.model import DesiredSet
from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent
from bwenforcer.cycle.run import CycleResult
from bwenforcer.errors import DeviceMissing
from bwenforcer.inputs.config import load_config
from bwenforcer.modes.daemon import Daemon
from bwenforcer.nodemanager import NodeManagerShim
from bwenforcer.store.state import StateStore

AgentFactory = Callable[[Config], Agent]
Runner = Daemon | NodeManagerShim


def _daemon(config: Config, factory: AgentFactory) -> Runner:
    return Daemon(None, config, agent=factory(config))


def _shim(config: Config, factory: AgentFactory) -> Runner:
    db = {"pl_a": {"name": "pl_a", "xid": 41, "_rspec": {}}}
    return NodeManagerShim(config, db=db, lock=threading.Lock(), agent_factory=factory)


RUNNERS = {"daemon": (_daemon, "cycle"), "node manager": (_shim, "node-manager cycle")}


def _config(tmp_path: Path) -> Config:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nstate_file: {tmp_path}/s.json\nslices_file: null\n"
        "lock_timeout: 1s\nmetrics: {listen: null}\n"
    )
    return load_config(str(cfg))


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_busy_state_lock_is_a_skipped_cycle(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    make, label = RUNNERS[kind]
    runner = make(config, Agent)
    with StateStore(config.state_file).lock(timeout_s=5), caplog.at_level(logging.WARNING):
        runner.run_once()
    snap = runner.metrics.snapshot()
    assert snap.cycles["skipped"] == 1 and snap.cycles["failed"] == 0
    assert snap.counts["cycle_errors"] == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"{label} skipped"]


@dataclass
class _RaisingAgent(Agent):
    """An agent whose every cycle raises ``raises``."""

    raises: BaseException | None = None

    def cycle(self, desired: DesiredSet, *args: Any, **kwargs: Any) -> CycleResult:
        assert self.raises is not None
        raise self.raises


def _raising(exc: BaseException) -> AgentFactory:
    return lambda config: _RaisingAgent(config, raises=exc)


@pytest.mark.parametrize("kind", RUNNERS)
@pytest.mark.parametrize(
    "exc",
    [DeviceMissing("device 'v0' missing"), OSError(5, "Input/output error")],
    ids=["Error", "OSError"],
)
def test_a_failing_cycle_is_counted_each_time_and_logged_once(
    kind: str, exc: BaseException, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make, label = RUNNERS[kind]
    runner = make(_config(tmp_path), _raising(exc))
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            runner.run_once()
    snap = runner.metrics.snapshot()
    assert snap.cycles["failed"] == 3 and snap.counts["cycle_errors"] == 3
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == [f"{label} failed: {exc}"]
    assert errors[0].exc_info is None  # an expected failure: one line, no traceback


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_bug_in_a_cycle_is_logged_with_its_traceback_and_the_loop_goes_on(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make, label = RUNNERS[kind]
    runner = make(_config(tmp_path), _raising(KeyError("a bug")))
    with caplog.at_level(logging.ERROR):
        runner.run_once()
        runner.run_once()
    snap = runner.metrics.snapshot()
    assert snap.cycles["failed"] == 2 and snap.counts["cycle_errors"] == 2
    assert [r.getMessage() for r in caplog.records] == [f"{label} crashed"] * 2
    assert all(r.exc_info is not None for r in caplog.records)

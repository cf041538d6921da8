"""The node-manager shim's rules under PlanetLab's python3 LXC node manager, without a
kernel: what wakes the thread, which database is cycled on, where its log lines go.
(The whole of it against a namespace kernel: test_lxc_nodemanager.py.)"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from bwenforcer import nodemanager
from bwenforcer.core.settings import Config

CONFIG = Config(node_cap_bps=10_000_000, bwmax_bps=1_000_000_000)


class Database(dict):  # type: ignore[type-arg]
    """The node manager's Database: a dict with the timestamp of the last full reply."""

    def __init__(self) -> None:
        super().__init__()
        self._min_timestamp = 0


def database_module(db: Any) -> types.ModuleType:
    module = types.ModuleType("database")
    module.db = db  # type: ignore[attr-defined]
    module.db_lock = threading.RLock()  # type: ignore[attr-defined]
    return module


class RecordingAgent:
    """Stands in for the Agent: these rules decide before any kernel is touched."""

    def __init__(self) -> None:
        self.cycles: list[Any] = []
        self.config: Any = None  # the runner keeps an agent while it runs this config

    def cycle(self, desired: Any, **kwargs: Any) -> None:
        self.cycles.append((desired, kwargs))

    def close(self) -> None:
        pass

    def disarm_gate(self) -> None:
        pass

    def new_problem(self, exc: BaseException) -> bool:
        return True


def test_with_the_database_module_only_its_sync_wakes_the_thread() -> None:
    shim = nodemanager.NodeManagerShim(CONFIG, database=database_module(Database()))
    shim.update({}, None)  # a poll while PLC is down
    shim.update({"timestamp": 1, "slivers": []}, None)  # a poll PLC answered
    assert not shim.wake.is_set()  # one cycle per poll: the database's sync() wakes it
    # without a database module, GetSlivers is the only wake-up
    plain = nodemanager.NodeManagerShim(CONFIG)
    plain.update({"timestamp": 1, "slivers": []}, None)
    assert plain.wake.is_set()


def test_a_database_no_full_reply_has_filled_is_never_cycled_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = Database()
    shim = nodemanager.NodeManagerShim(CONFIG, database=database_module(db), uid_of=lambda _: 7)
    agent = RecordingAgent()
    with caplog.at_level(logging.WARNING, logger="bwenforcer"):
        assert shim._cycle(agent) is None  # type: ignore[arg-type]
        db["pl_t"] = {"name": "pl_t", "timestamp": 1}  # a ticket's sync on the empty database
        assert shim._cycle(agent) is None  # type: ignore[arg-type]
    assert agent.cycles == []
    assert [r.getMessage() for r in caplog.records] == [
        "node-manager database not filled by a full PLC reply yet (restart?); cycle skipped"
    ]
    db._min_timestamp = 100  # slivermanager delivered a full reply
    db["pl_a"] = {"name": "pl_a", "_rspec": {"net_max_rate": 50_000}}
    shim._cycle(agent)  # type: ignore[arg-type]
    ((desired, kwargs),) = agent.cycles
    assert kwargs == {"build_tree": False}  # the node manager's net module owns the tree
    # ceilings follow 1:10 (the cycle clamps to it), not the config's node_cap
    assert desired.slices[0].default.max_rate_bps == 50_000_000


class NodeManagerLogger(types.ModuleType):
    """The node manager's logger module's interface, recording its calls."""

    LOG_NODE, LOG_VERBOSE = 1, 2

    def __init__(self, level: int) -> None:
        super().__init__("logger")
        self.LOG_LEVEL = level
        self.calls: list[tuple[str, str]] = []

    def log(self, msg: str, level: int = 1) -> None:
        self.calls.append(("log", msg))

    def verbose(self, msg: str) -> None:
        self.calls.append(("verbose", msg))


@pytest.fixture
def package_logger() -> Iterator[logging.Logger]:
    package = logging.getLogger(nodemanager.PACKAGE_LOGGER)
    handlers, level, propagate = list(package.handlers), package.level, package.propagate
    yield package
    package.handlers[:] = handlers
    package.setLevel(level)
    package.propagate = propagate


def test_log_lines_go_to_the_node_managers_logger_with_their_level(
    package_logger: logging.Logger,
) -> None:
    nm_logger = NodeManagerLogger(level=1)
    nodemanager._log_to_node_manager(nm_logger)
    nodemanager._log_to_node_manager(nm_logger)  # a second start(): still one handler
    log = logging.getLogger("bwenforcer.cycle.run")
    log.info("cycle ok in 0.010s")
    log.warning("dev eth0: mark → class filter missing: put back")
    log.debug("not kept unless the node manager is verbose")
    try:
        raise OSError("boom")
    except OSError:
        log.exception("node-manager cycle crashed")
    assert [h for h in package_logger.handlers if isinstance(h, nodemanager.NodeManagerLog)]
    assert len(nm_logger.calls) == 3
    assert nm_logger.calls[0] == ("log", "bwmon: cycle ok in 0.010s")
    assert nm_logger.calls[1] == (
        "log",
        "bwmon: WARNING: dev eth0: mark → class filter missing: put back",
    )
    kind, text = nm_logger.calls[2]
    assert kind == "log" and text.startswith("bwmon: ERROR: node-manager cycle crashed\n")
    assert "OSError: boom" in text  # the traceback, in the same entry
    assert package_logger.propagate is False  # nothing doubled on stderr
    verbose = NodeManagerLogger(level=2)  # nodemanager -v
    nodemanager._log_to_node_manager(verbose)
    log.debug("details")
    assert verbose.calls == [("verbose", "bwmon: details")]


def test_once_filled_the_thread_also_cycles_every_interval_while_plc_is_down() -> None:
    db = Database()
    module = database_module(db)
    agent = RecordingAgent()
    config = agent.config = dataclasses.replace(CONFIG, interval_s=1)
    shim = nodemanager.NodeManagerShim(
        config, database=module, uid_of=lambda _: 7, agent_factory=lambda _: agent
    )
    shim.start()
    try:
        time.sleep(2.5)  # a restart while PLC is down: no sync(), no cycle, whatever the time
        assert agent.cycles == [] and shim.cycles == 0
        db._min_timestamp = 100  # slivermanager's full reply, then the database's sync()
        db["pl_a"] = {"name": "pl_a", "_rspec": {"net_max_rate": 50_000}}
        shim.wake.set()
        # PLC down from now on: no sync() ever again, yet a cycle at least every interval
        deadline = time.monotonic() + 30
        while len(agent.cycles) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(agent.cycles) >= 3
        assert all(d.slices[0].name == "pl_a" for d, _ in agent.cycles)  # the last filled db
        # a database rebound to an unfilled one is not cycled on, even on the timer
        module.db = Database()
        time.sleep(0.2)
        ran = len(agent.cycles)
        time.sleep(2.5)
        assert len(agent.cycles) == ran and shim.cycles > ran
    finally:
        shim.stop(timeout_s=10)
    assert shim.thread is not None and not shim.thread.is_alive()

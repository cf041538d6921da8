"""The PlanetLab node-manager plugin interface: ``priority``, ``start()``, ``GetSlivers()``.

The node manager imports this module, calls ``start()`` once and ``GetSlivers()``
after each policy update, and sets ``event`` whenever its slice database
changed. A daemon thread waits on that event, clears it, copies the database
under the node manager's lock and runs one cycle (clearing before the cycle,
not after, so a change made during a cycle is not lost); an exception is
logged and counted and the thread waits for the next event.

Nothing here needs PlanetLab code: the database and its lock can be passed to
``start()``; otherwise, if a ``database`` module is importable (the node
manager's), ``database.db`` and ``database.db_lock`` (or ``db.lock``) are
looked up at every cycle, since the node manager may rebind ``db``.
"""

from __future__ import annotations

import copy
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .agent import Agent, agent_for
from .config import Config, load_config
from .errors import Error
from .metrics import AgentMetrics, serve
from .slices import from_nodemanager_db

log = logging.getLogger(__name__)

priority = 20  # node-manager plugin order (after the slice creators)

# The plugin protocol is module-level functions and an event the node manager
# sets, so the module holds exactly two handles: that event and the running
# shim (for GetSlivers). Everything else lives in the shim object.
event = threading.Event()
_shim: NodeManagerShim | None = None

Lock = AbstractContextManager[Any]


@dataclass
class NodeManagerShim:
    """The enforcement thread of a node manager."""

    config: Config
    db: Mapping[str, Any] | None = None
    lock: Lock | None = None
    database: ModuleType | None = None  # the node manager's module, read at each cycle
    wake: threading.Event = field(default_factory=threading.Event)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    agent_factory: Callable[[Config], Agent] = Agent
    stopping: bool = False
    cycles: int = 0
    thread: threading.Thread | None = None
    stop_server: Callable[[], None] | None = None
    agent: Agent | None = None  # kept across cycles, replaced when the config is
    # the database's bad records as last logged: logged again only when they change
    reported: frozenset[str] = frozenset()

    def source(self) -> tuple[Mapping[str, Any] | None, Lock]:
        """The current database (None before there is one) and the lock guarding it."""
        if self.database is not None:
            db = getattr(self.database, "db", None)
            lock = getattr(self.database, "db_lock", None) or getattr(db, "lock", None)
            return db, lock or nullcontext()
        return self.db, self.lock or nullcontext()

    def update(self, data: Any) -> None:
        """A new database snapshot (a non-empty ``{name: record}`` dict) or just a nudge.

        With the node manager's ``database`` module as the source, its database
        is authoritative and ``data`` (PLC's reply) only wakes the thread; an
        empty dict is never taken as "no slices", which would lift every limit.
        """
        if (
            self.database is None
            and isinstance(data, Mapping)
            and data
            and all(isinstance(v, Mapping) for v in data.values())
        ):
            self.db = data  # one reference swap; the copy is taken under the lock
        self.wake.set()

    def run_once(self) -> None:
        """Copy the database under its lock and run one cycle; never raises."""
        try:
            db, lock = self.source()
            if db is None:
                # not an empty database: cycling on nothing would lift every limit
                log.warning("no node-manager database yet, cycle skipped")
                self.metrics.observe_skipped()
                return
            with lock:
                snapshot = copy.deepcopy(dict(db))
            self.agent = agent_for(self.config, self.agent, self.agent_factory)
            desired = from_nodemanager_db(snapshot, self.config, log_errors=False)
            for line in desired.errors:
                if line not in self.reported:
                    log.error("%s", line)
            self.reported = frozenset(desired.errors)
            result = self.agent.cycle(desired)
        except Error as exc:
            # logged once until it changes (a device gone for hours), counted each time
            new = self.agent is None or self.agent.new_problem(exc)
            log.log(logging.ERROR if new else logging.DEBUG, "node-manager cycle failed: %s", exc)
            self.metrics.observe_error()
            return
        except Exception:  # the thread must outlive any bug a cycle hits
            log.exception("node-manager cycle crashed")
            self.metrics.observe_error()
            return
        finally:
            self.cycles += 1
        self.metrics.observe(result)

    def loop(self) -> None:
        """Wait for the event, clear it, run a cycle; until stopped."""
        try:
            while not self.stopping:
                self.wake.wait()
                if self.stopping:
                    return
                self.wake.clear()
                self.run_once()
        finally:
            if self.agent is not None:
                self.agent.close()

    def start(self) -> None:
        """Start the daemon thread (and the metrics server, if configured)."""
        if self.config.metrics.listen:
            self.stop_server = serve(self.config.metrics.listen, self.metrics)
            log.info("serving /metrics on %s", self.config.metrics.listen)
        self.thread = threading.Thread(target=self.loop, name="bwenforcer", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """End the thread after its current cycle; stop serving metrics."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout_s)
        if self.stop_server is not None:
            self.stop_server()
            self.stop_server = None


def _discover() -> ModuleType | None:
    try:
        return importlib.import_module("database")
    except ImportError:
        return None


def start(*args: Any, **kwargs: Any) -> NodeManagerShim:
    """Plugin entry: start the thread. Keywords: ``config`` (path), ``db``, ``lock``.

    Without ``db`` and ``lock`` the node manager's ``database`` module is used
    if importable. A second ``start()`` replaces the first thread.
    """
    del args  # the node manager passes its options; we read our own config
    global _shim  # noqa: PLW0603 - the one handle the plugin protocol forces
    db, lock = kwargs.get("db"), kwargs.get("lock")
    database = _discover() if db is None and lock is None else None
    shim = NodeManagerShim(
        load_config(kwargs.get("config")), db=db, lock=lock, database=database, wake=event
    )
    if _shim is not None:
        _shim.stop(timeout_s=60)
    _shim = shim
    shim.start()
    log.info(
        "node-manager thread started (database %s)",
        "from the database module" if database else "passed in" if db is not None else "none yet",
    )
    return shim


def GetSlivers(data: Any, config: Any = None, plc: Any = None) -> None:
    """Plugin entry: a new policy arrived; wake the thread with it."""
    del config, plc
    if _shim is not None:
        _shim.update(data)

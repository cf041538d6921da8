"""The PlanetLab node-manager plugin interface: ``priority``, ``start()``, ``GetSlivers()``.

The node manager imports this module, calls ``start()`` once and ``GetSlivers()``
after each policy update, and sets ``event`` whenever its slice database
changed. A daemon thread waits on that event, copies the database under the
node manager's lock, runs one cycle and clears the event; an exception is
logged and counted and the thread waits for the next event. Nothing here needs
PlanetLab code: the database and its lock can be passed to ``start()``, or are
looked up in a ``database`` module (``database.db`` / ``database.db_lock``) if
one is importable.
"""

from __future__ import annotations

import copy
import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from .agent import Agent
from .config import Config, load_config
from .errors import Error
from .metrics import AgentMetrics, serve
from .slices import from_nodemanager_db

log = logging.getLogger(__name__)

priority = 20  # node-manager plugin order (after the slice creators)

# The plugin protocol is module-level functions, so the running shim needs one
# module-level handle; everything else lives in the shim object.
_shim: NodeManagerShim | None = None
event = threading.Event()


@dataclass
class NodeManagerShim:
    """The enforcement thread of a node manager."""

    config: Config
    db: Mapping[str, Any] | None = None
    lock: AbstractContextManager[Any] | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    agent_factory: Callable[[Config], Agent] = Agent
    stopping: bool = False
    cycles: int = 0
    thread: threading.Thread | None = None

    def update(self, data: Any) -> None:
        """A new database snapshot (a ``{name: record}`` dict) or just a nudge."""
        if isinstance(data, Mapping) and all(isinstance(v, Mapping) for v in data.values()):
            with self.lock or nullcontext():
                self.db = data
        self.wake.set()

    def run_once(self) -> None:
        """Copy the database under its lock and run one cycle; never raises."""
        try:
            with self.lock or nullcontext():
                snapshot = copy.deepcopy(dict(self.db or {}))
            result = self.agent_factory(self.config).cycle(
                from_nodemanager_db(snapshot, self.config)
            )
        except Error as exc:
            log.error("node-manager cycle failed: %s", exc)
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
        """Wait for the event, run a cycle, clear the event; until stopped."""
        while not self.stopping:
            self.wake.wait()
            if self.stopping:
                return
            self.wake.clear()
            self.run_once()

    def start(self) -> None:
        """Start the daemon thread (and the metrics server, if configured)."""
        if self.config.metrics.listen:
            serve(self.config.metrics.listen, self.metrics)
        self.thread = threading.Thread(target=self.loop, name="bwenforcer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end after its current cycle."""
        self.stopping = True
        self.wake.set()


def _discover() -> tuple[Mapping[str, Any] | None, AbstractContextManager[Any] | None]:
    try:
        database = importlib.import_module("database")
    except ImportError:
        return None, None
    return getattr(database, "db", None), getattr(database, "db_lock", None)


def start(*args: Any, **kwargs: Any) -> NodeManagerShim:
    """Plugin entry: start the thread. Keywords: ``config`` (path), ``db``, ``lock``."""
    del args  # the node manager passes its options; we read our own config
    global _shim  # noqa: PLW0603 - the one handle the plugin protocol forces
    db, lock = kwargs.get("db"), kwargs.get("lock")
    if db is None and lock is None:
        db, lock = _discover()
    _shim = NodeManagerShim(load_config(kwargs.get("config")), db=db, lock=lock, wake=event)
    _shim.start()
    return _shim


def GetSlivers(data: Any, config: Any = None, plc: Any = None) -> None:
    """Plugin entry: a new policy arrived; wake the thread with it."""
    del config, plc
    if _shim is not None:
        _shim.update(data)

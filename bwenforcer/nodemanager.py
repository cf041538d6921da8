"""The PlanetLab node-manager interface of bwmon: priority, start(), GetSlivers(), lock.

The node manager imports ``bwmon`` by name (a core module, not a plugin): the
``bwmon.py`` shipped in packaging/ re-exports this module under that name. It
calls ``start()`` (or ``start(options, conf)``) once and ``GetSlivers(data,
config, plc)`` after each poll of PLC, and its database's ``sync()`` sets
``bwmon.lock`` (this module's ``event``) whenever the slice database changed. A
daemon thread waits on that event, clears it, copies the database under the
node manager's lock and runs one cycle (clearing before the cycle, not after, so
a change made during a cycle is not lost); an exception is logged and counted
(as the daemon does: :mod:`bwenforcer.modes.runner`) and the thread waits for the
next event.

Where the slices come from, first that applies: the node manager's ``database``
module if importable (``database.db`` and ``database.db_lock``, or ``db.lock``,
looked up at every cycle, since the node manager may rebind ``db``); else PLC's
``GetSlivers()`` reply as ``GetSlivers`` last received it (``data["slivers"]``);
else a ``{name: record}`` database passed to ``start()`` or ``GetSlivers()``.
Only ``<PLC_SLICE_PREFIX>_default`` is the node's default record; the prefix
is the node manager's config's ``PLC_SLICE_PREFIX`` (given to ``start`` or
``GetSlivers``, else read from /etc/planetlab/plc_config inside a node
manager), else ``pl``.

With the node manager's ``database`` module as the source (PlanetLab's python3
LXC node manager), that node manager is followed as its own bwmon followed it:
- only its database's ``sync()`` wakes the thread (``bwmon.lock.set()``, once
  per successful poll); ``GetSlivers`` does not, so a poll is one cycle, and a
  poll while PLC is down (``GetSlivers({})``, no ``sync()``) none; but once a
  cycle ran on a filled database, the thread also cycles every ``interval`` of
  the config without a wake-up, on the database as it last was (PLC down for
  hours must not leave a slice past its threshold uncapped);
- a database no full PLC reply has filled yet (``db._min_timestamp`` 0: the
  python3 node manager always starts with an empty one) is never cycled on:
  that would move every live slice to the ledger;
- its ``net`` module owns the HTB tree (bwlimit builds it, deletes it on
  ``net_max_rate -1``, rebuilds it when PLC's bwlimit changes): a missing tree
  is never built here, the mark → class filter is put back on the tree it
  built, and the slices' ceilings follow 1:10's ceil (PLC's bwlimit), not the
  config's ``node_cap``;
- bwenforcer's log lines go to its ``logger`` module (``/var/log/nodemanager``),
  prefixed ``bwmon:``, warnings and errors with their level; DEBUG only when the
  node manager runs verbose.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import re
import threading
import traceback
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from bwenforcer.core.model import DesiredSet
from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent
from bwenforcer.cycle.run import CycleResult
from bwenforcer.errors import DeviceNotSet, Error, TreeNotInitialised
from bwenforcer.inputs.config import load_config
from bwenforcer.inputs.plc import from_plc_slivers
from bwenforcer.inputs.slices import from_nodemanager_db
from bwenforcer.modes.runner import CycleRunner

log = logging.getLogger(__name__)

priority = 20  # node-manager plugin order (after the slice creators)
DEFAULT_SLICE_PREFIX = "pl"  # PlanetLab's PLC_SLICE_PREFIX when none is configured
PLC_KEYS = ("slivers", "interfaces", "networks")  # what bwenforcer reads of PLC's reply
PLC_CONFIG = "/etc/planetlab/plc_config"  # the node manager's config (Python assignments)
PLC_CONFIG_MAX_BYTES = 1 << 20

# The node-manager protocol is module-level functions and an event its database
# sets, so the module holds exactly two handles: that event and the running shim
# (for GetSlivers). Everything else lives in the shim object.
event = threading.Event()
lock = event  # the historic name: the node manager's database calls bwmon.lock.set()
_shim: NodeManagerShim | None = None

Lock = AbstractContextManager[Any]


_PLC_SLICE_PREFIX = re.compile(rb"""^PLC_SLICE_PREFIX\s*=\s*["']([A-Za-z0-9]{1,32})["']""", re.M)


def plc_config_prefix(path: str = PLC_CONFIG) -> str | None:
    """``PLC_SLICE_PREFIX`` as the node manager's plc_config sets it (read, never run)."""
    try:
        with open(path, "rb") as f:
            text = f.read(PLC_CONFIG_MAX_BYTES)
    except OSError:
        return None
    match = _PLC_SLICE_PREFIX.search(text)
    return match.group(1).decode() if match else None


def slice_prefix_of(*configs: Any) -> str | None:
    """``PLC_SLICE_PREFIX`` of the first node-manager config object that has one."""
    for conf in configs:
        prefix = getattr(conf, "PLC_SLICE_PREFIX", None)
        if isinstance(prefix, str) and prefix:
            return prefix
    return None


@dataclass
class NodeManagerShim(CycleRunner):
    """The enforcement thread of a node manager.

    It runs inside the node manager's process: it never touches that
    program's garbage collector (no ``gc_paused``).
    """

    LABEL = "node-manager cycle"

    config: Config
    db: Mapping[str, Any] | None = None
    lock: Lock | None = None
    database: ModuleType | None = None  # the node manager's module, read at each cycle
    wake: threading.Event = field(default_factory=threading.Event)
    uid_of: Callable[[str], int | None] | None = None  # None: the Unix accounts (pwd)
    slice_prefix: str = DEFAULT_SLICE_PREFIX
    plc_data: Mapping[str, Any] | None = None  # PLC's last GetSlivers reply, without a database
    stopping: bool = False
    thread: threading.Thread | None = None
    # the database's bad records as last logged: logged again only when they change
    reported: frozenset[str] = frozenset()
    skipped: frozenset[str] = frozenset()  # records skipped last cycle, logged once
    limits_disabled: bool = False  # the node's default record turned limiting off
    waiting: str | None = None  # why cycles are skipped (unfilled database, no tree), logged once
    # a cycle ran on a filled source: from then on the thread also cycles every
    # interval without a wake-up (PLC down for hours: no sync(), yet slices pass
    # their thresholds and must be capped)
    filled: bool = False

    def source(self) -> tuple[Mapping[str, Any] | None, Lock]:
        """The current database (None before there is one) and the lock guarding it."""
        if self.database is not None:
            db = getattr(self.database, "db", None)
            lock = getattr(self.database, "db_lock", None) or getattr(db, "lock", None)
            return db, lock or nullcontext()
        return self.db, self.lock or nullcontext()

    def update(self, data: Any, config: Any = None) -> None:
        """PLC's reply (``{"slivers": [...], …}``), a database snapshot (a non-empty
        ``{name: record}`` dict) or just a nudge; then wake the thread.

        With the node manager's ``database`` module as the source, its database
        is authoritative and its ``sync()`` the only wake-up: ``data`` is ignored.
        An empty dict is never taken as "no slices", which would lift every limit.
        """
        prefix = slice_prefix_of(config)
        if prefix is not None:
            self.slice_prefix = prefix
        if self.database is not None:
            # its sync() wakes the thread once the database holds PLC's reply; a
            # wake here too would be a second cycle per poll, and a poll while PLC
            # is down (data {}, no sync) would cycle on whatever the database holds
            return
        if isinstance(data, Mapping) and data:
            if isinstance(data.get("slivers"), list):
                # copied here: the node manager's modules edit PLC's reply in place
                # while the thread may be reading it; one reference swap after
                self.plc_data = copy.deepcopy({k: data[k] for k in PLC_KEYS if k in data})
            elif all(isinstance(v, Mapping) for v in data.values()):
                self.db, self.plc_data = data, None  # the copy is taken under the lock
        self.wake.set()

    def slice_config(self) -> Config:
        """The config slices are resolved with: under the node manager, whose net module
        sets the node cap (1:10) from PLC's bwlimit, no cap of the config's (the
        cycle clamps every ceiling to 1:10's ceil as dumped)."""
        if self.database is None:
            return self.config
        return dataclasses.replace(self.config, node_cap_bps=self.config.bwmax_bps)

    def unfilled(self) -> bool:
        """Whether the node manager's database has had no full PLC reply yet.

        PlanetLab's python3 node manager starts with an empty database (it cannot
        read its pickle back) and ``_min_timestamp`` 0; slivermanager sets it from
        each full reply. A database without that attribute is taken as filled.
        """
        db = getattr(self.database, "db", None) if self.database is not None else None
        stamp = getattr(db, "_min_timestamp", None)
        return isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp <= 0

    def desired(self) -> DesiredSet | None:
        """This cycle's slices from the current source; None while there is none."""
        default_record = f"{self.slice_prefix}_default"
        extra = {} if self.uid_of is None else {"uid_of": self.uid_of}
        config = self.slice_config()
        plc_data = self.plc_data
        if self.database is None and plc_data is not None:
            return from_plc_slivers(plc_data, config, default_record, log_errors=False, **extra)
        db, lock = self.source()
        if db is None:
            return None
        with lock:
            snapshot = copy.deepcopy(dict(db))
        return from_nodemanager_db(snapshot, config, default_record, log_errors=False, **extra)

    def _wait_for(self, reason: str | None) -> None:
        """Log why cycles are skipped, once while that reason lasts (None: they run)."""
        if reason is not None and reason != self.waiting:
            log.warning("%s; cycle skipped", reason)
        self.waiting = reason

    def _log_records(self, desired: DesiredSet) -> None:
        """Each bad record, each record the historic bwmon skips, and the off switch:
        logged when they change, not every cycle.
        """
        errors = frozenset(desired.errors)
        for line in sorted(errors - self.reported):
            log.error("%s", line)
        self.reported = errors
        skipped = frozenset(desired.skipped)
        for line in sorted(skipped - self.skipped):
            log.info("%s", line)
        self.skipped = skipped
        if desired.limiting_off != self.limits_disabled:
            if desired.limiting_off:
                log.warning("limits disabled: the node's default record has net_max_rate -1")
            else:
                log.info("limits enabled again on dev %s", self.config.device)
            self.limits_disabled = desired.limiting_off

    def run_once(self) -> None:
        """Copy the database under its lock and run one cycle; never raises."""
        self.run_cycle(self.config, self._cycle)

    def _cycle(self, agent: Agent) -> CycleResult | None:
        """The cycle on this cycle's slices; None when there is nothing to run it on."""
        if self.unfilled():
            # a restart's empty database: cycling on it would move every slice to the ledger
            self._wait_for("node-manager database not filled by a full PLC reply yet (restart?)")
            return None
        desired = self.desired()
        if desired is None:
            # not an empty database: cycling on nothing would lift every limit
            log.warning("no node-manager database yet, cycle skipped")
            return None
        self._log_records(desired)
        self.filled = True
        # under the node manager its net module builds the tree, never this thread
        build_tree = self.database is None
        try:
            result = agent.cycle(desired, build_tree=build_tree)
        except TreeNotInitialised:
            if self.limits_disabled:
                # limits are off and the tree is gone (the node manager removed it):
                # nothing to enforce, nothing to build until limits are on again
                return None
            if build_tree:
                raise
            self._wait_for(
                f"no HTB tree on dev {self.config.device}: the node manager's net module"
                " builds it (bwlimit) at its next poll"
            )
            return None
        self._wait_for(None)
        return result

    def loop(self) -> None:
        """Wait for the event (or, once a cycle ran on a filled source, at most the
        config's interval), clear it, run a cycle; until stopped.
        """
        try:
            while not self.stopping:
                self.wake.wait(self.config.interval_s if self.filled else None)
                if self.stopping:
                    return
                self.wake.clear()
                self.retry_metrics(self.config.metrics.listen)
                self.run_once()
        finally:
            self.stop_agent()

    def start(self) -> None:
        """Start the daemon thread (and the metrics server, if configured and possible)."""
        self.retry_metrics(self.config.metrics.listen)
        self.thread = threading.Thread(target=self.loop, name="bwenforcer", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """End the thread after its current cycle; stop serving metrics."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout_s)
        self.stop_metrics()


def _discover(name: str = "database") -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


PACKAGE_LOGGER = "bwenforcer"
LOG_PREFIX = "bwmon: "  # how the node manager's modules mark their lines


class NodeManagerLog(logging.Handler):
    """bwenforcer's log records into the node manager's ``logger`` module.

    That module has no warning or error levels (``log(msg, level)`` with LOG_NODE
    or LOG_VERBOSE, ``verbose(msg)``): INFO and up go to ``log``, WARNING and up
    with their level name in the line, DEBUG to ``verbose`` (kept only when the
    node manager runs verbose). A traceback is appended to its line.
    """

    def __init__(self, nm_logger: ModuleType) -> None:
        super().__init__(logging.DEBUG)
        self.nm_logger = nm_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record as one node-manager log entry; never raises."""
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname}: {text}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.levelno < logging.INFO and hasattr(self.nm_logger, "verbose"):
                self.nm_logger.verbose(LOG_PREFIX + text)
            else:
                self.nm_logger.log(LOG_PREFIX + text)
        except Exception:  # a logging handler must not raise into the code that logs
            self.handleError(record)


def _log_to_node_manager(nm_logger: ModuleType) -> None:
    """Send the package's log records to the node manager's log (once, replacing an
    earlier handler), at DEBUG when the node manager is verbose, else INFO."""
    package = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in package.handlers if isinstance(h, NodeManagerLog)]:
        package.removeHandler(handler)
    package.addHandler(NodeManagerLog(nm_logger))
    package.propagate = False  # the node manager configures no logging: nothing to double
    verbose = getattr(nm_logger, "LOG_VERBOSE", 2)
    level = getattr(nm_logger, "LOG_LEVEL", 1)
    package.setLevel(logging.DEBUG if level >= verbose else logging.INFO)


def start(options: Any = None, conf: Any = None, **kwargs: Any) -> NodeManagerShim:
    """Entry point: start the thread; ``start()`` and ``start(options, conf)`` as bwmon.

    Keywords: ``config`` (path of bwenforcer's config), ``db`` and ``lock`` (a
    database to read instead of the node manager's), ``slice_prefix``. Without
    ``db`` and ``lock`` the node manager's ``database`` module is used if
    importable. Raises (config errors) before anything changes; a second
    ``start()`` replaces the running thread only once the new one is ready.
    A metrics listener that cannot be opened is logged and retried, not raised.
    """
    global _shim  # noqa: PLW0603 - the one handle the module protocol forces
    db, db_lock = kwargs.get("db"), kwargs.get("lock")
    database = _discover() if db is None and db_lock is None else None
    if database is not None:
        nm_logger = _discover("logger")
        if nm_logger is not None and callable(getattr(nm_logger, "log", None)):
            _log_to_node_manager(nm_logger)
    # the node manager's start() passes nothing: its plc_config, as the historic bwmon read it
    prefix = (
        kwargs.get("slice_prefix")
        or slice_prefix_of(conf, options)
        or (plc_config_prefix() if database is not None else None)
    )
    config = load_config(kwargs.get("config"))
    if not config.device:
        raise DeviceNotSet()
    shim = NodeManagerShim(
        config,
        db=db,
        lock=db_lock,
        database=database,
        wake=event,
        slice_prefix=prefix or DEFAULT_SLICE_PREFIX,
    )
    if _shim is not None:
        _shim.stop(timeout_s=60)
    _shim = shim
    shim.start()
    config = shim.config
    if database is not None and config.node_cap_bps < config.bwmax_bps:
        log.warning(
            "node_cap %d bit/s of the config ignored: the node manager's net module sets"
            " the node cap (1:10's ceil) from PLC's bwlimit",
            config.node_cap_bps,
        )
    log.info(
        "node-manager thread started (database %s, default record %s_default)",
        "from the database module" if database else "passed in" if db is not None else "none yet",
        shim.slice_prefix,
    )
    return shim


def GetSlivers(data: Any, config: Any = None, plc: Any = None) -> None:
    """Entry point: PLC's reply arrived; wake the thread with it.

    Not started (the node manager logs a failed ``start()`` and goes on): start
    now, with the default config, so a fixed config takes effect at the next
    poll; a failure is one logged line per poll, never raised.
    """
    del plc
    if _shim is None:
        try:
            start(None, config)
        except Error as exc:
            log.error("not enforcing: %s; start retried at the next GetSlivers", exc)
            return
    if _shim is not None:
        _shim.update(data, config)

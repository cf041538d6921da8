"""``bwenforcer daemon``: a cycle every ``interval``, /metrics served, signals handled.

SIGTERM/SIGINT stop after the current cycle (the state file is written
atomically, so even an abandoned cycle leaves a good one); SIGHUP reloads the
config, keeping the old one if the new one is invalid. An error in a cycle is
logged and counted, and the loop goes on.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from .agent import Agent, load_desired
from .config import Config, load_config
from .errors import Error, LockBusy
from .metrics import AgentMetrics, serve

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    """The loop and its state; signals only set flags, the loop acts on them."""

    config_path: str | None
    config: Config
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    wake: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    reload_requested: bool = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember what was asked and wake the loop."""
        del frame
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stopping = True
        self.wake.set()

    def reload(self) -> None:
        """Re-read the config; an invalid one is refused and the old one kept."""
        self.reload_requested = False
        try:
            self.config = load_config(self.config_path)
        except Error as exc:
            log.error("config reload refused, keeping the old config: %s", exc)
            return
        log.info("config reloaded from %s", self.config.source or "defaults")

    def run_once(self) -> None:
        """One cycle; errors are logged and counted, never raised."""
        try:
            result = Agent(self.config).cycle(load_desired(self.config))
        except LockBusy as exc:
            log.warning("cycle skipped: %s", exc)
            return
        except (Error, OSError) as exc:
            log.error("cycle failed: %s", exc)
            self.metrics.observe_error()
            return
        self.metrics.observe(result)

    def loop(self, serve_metrics: Callable[[str, AgentMetrics], Callable[[], None]] = serve) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        stop_server = None
        if self.config.metrics.listen:
            stop_server = serve_metrics(self.config.metrics.listen, self.metrics)
            log.info("serving /metrics on %s", self.config.metrics.listen)
        try:
            while not self.stopping:
                if self.reload_requested:
                    self.reload()
                self.run_once()
                self.wake.wait(self.config.interval_s)
                self.wake.clear()
        finally:
            if stop_server is not None:
                stop_server()
        log.info("daemon stopped")
        return 0

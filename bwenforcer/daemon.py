"""``bwenforcer daemon``: a cycle every ``interval``, /metrics served, signals handled.

SIGTERM/SIGINT stop after the current cycle (the state file is written
atomically, so even an abandoned cycle leaves a good one); SIGHUP reloads the
config, keeping the old one if the new one is invalid (a changed
``metrics.listen`` moves the endpoint). An error in a cycle is logged and
counted, and the loop goes on. Signal handlers only record the request; the
loop logs and acts on it, so nothing is logged from inside a handler.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from .agent import Agent, agent_for
from .config import Config, load_config
from .errors import Error, LockBusy, MetricsError
from .metrics import AgentMetrics
from .metricsserver import serve

log = logging.getLogger(__name__)


@dataclass
class Daemon:
    """The loop and its state; signals only set flags, the loop acts on them."""

    config_path: str | None
    config: Config
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    wake: threading.Event = field(default_factory=threading.Event)
    stop_signal: int | None = None
    reload_requested: bool = False
    stop_server: Callable[[], None] | None = None
    agent: Agent | None = None  # kept across cycles, replaced when the config is

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember what was asked and wake the loop."""
        del frame
        if signum == signal.SIGHUP:
            self.reload_requested = True
        else:
            self.stop_signal = signum
        self.wake.set()

    def reload(self) -> None:
        """Re-read the config; an invalid one is refused and the old one kept."""
        self.reload_requested = False
        try:
            config = load_config(self.config_path)
        except Error as exc:
            log.error("config reload refused, keeping the old config: %s", exc)
            return
        old_listen, self.config = self.config.metrics.listen, config
        log.info("config reloaded from %s", config.source or "defaults")
        if config.metrics.listen != old_listen:
            self.stop_metrics()
            try:
                self.start_metrics()
            except MetricsError as exc:
                log.error("%s; /metrics is not served until the next reload", exc)

    def start_metrics(self) -> None:
        """Serve /metrics on ``metrics.listen`` if it is set."""
        if self.config.metrics.listen:
            self.stop_server = serve(self.config.metrics.listen, self.metrics)
            log.info("serving /metrics on %s", self.config.metrics.listen)

    def stop_metrics(self) -> None:
        """Stop serving /metrics (if served)."""
        if self.stop_server is not None:
            self.stop_server()
            self.stop_server = None

    def run_once(self) -> None:
        """One cycle; errors are logged and counted, never raised."""
        agent = self.agent = agent_for(self.config, self.agent)
        try:
            result = agent.cycle(agent.desired())
        except LockBusy as exc:
            log.warning("cycle skipped: %s", exc)
            self.metrics.observe_skipped()
            return
        except (Error, OSError) as exc:
            # retried every interval; logged once until it changes (counted each time)
            log.log(
                logging.ERROR if agent.new_problem(exc) else logging.DEBUG, "cycle failed: %s", exc
            )
            self.metrics.observe_error()
            return
        self.metrics.observe(result)

    def loop(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        self.start_metrics()
        log.info(
            "daemon started: a cycle every %ss on %s", self.config.interval_s, self.config.device
        )
        try:
            while self.stop_signal is None:
                if self.reload_requested:
                    log.info("SIGHUP: reloading the config")
                    self.reload()
                self.run_once()
                self.wake.wait(self.config.interval_s)
                self.wake.clear()
        finally:
            self.stop_metrics()
            if self.agent is not None:
                self.agent.close()
        log.info("daemon stopped by %s", signal.Signals(self.stop_signal).name)
        return 0

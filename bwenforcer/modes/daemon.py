"""``bwenforcer daemon``: a cycle every ``interval``, /metrics served, signals handled.

SIGTERM/SIGINT stop after the current cycle (the state file is written
atomically, so even an abandoned cycle leaves a good one); SIGHUP reloads the
config, keeping the old one if the new one is invalid (a changed
``metrics.listen`` moves the endpoint). An error in a cycle is logged and
counted, and the loop goes on (the runner's policy, :mod:`bwenforcer.modes.runner`).
Signal handlers only record the request; the loop logs and acts on it, so
nothing is logged from inside a handler.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType

from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent, gc_paused
from bwenforcer.cycle.run import CycleResult
from bwenforcer.errors import Error, MetricsError
from bwenforcer.inputs.config import load_config
from bwenforcer.modes.runner import CycleRunner

log = logging.getLogger(__name__)


@dataclass
class Daemon(CycleRunner):
    """The loop and its state; signals only set flags, the loop acts on them."""

    config_path: str | None
    config: Config
    wake: threading.Event = field(default_factory=threading.Event)
    stop_signal: int | None = None
    reload_requested: bool = False

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
        """Serve /metrics on ``metrics.listen`` if it is set (MetricsListenError if it cannot)."""
        self.serve_metrics(self.config.metrics.listen)

    def run_once(self) -> None:
        """One cycle with the collector paused; errors are logged and counted, never raised."""
        self.run_cycle(self.config, _cycle)

    def loop(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code.

        An endpoint that cannot listen is raised before the first cycle (the
        command exits with that one line): a daemon is started to be scraped.
        """
        self.start_metrics()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
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
            self.stop_agent()
        log.info("daemon stopped by %s", signal.Signals(self.stop_signal).name)
        return 0


def _cycle(agent: Agent) -> CycleResult:
    """The daemon's cycle: the slices file (re-read once changed), then the cycle.

    Automatic garbage collection is paused for it (see ``gc_paused``): the
    daemon is a process of our own, so its collector is ours to pause.
    """
    with gc_paused():
        return agent.cycle(agent.desired())

"""Running cycle after cycle: the error policy of a cycle and the /metrics server.

The daemon and the node-manager thread both run through :class:`CycleRunner`,
so a failed, skipped or crashed cycle is logged and counted the same way in
both; each keeps only what is its own (signals and reload; the node manager's
database, event and PLC data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent, agent_for
from bwenforcer.cycle.run import CycleResult
from bwenforcer.errors import Error, LockBusy, MetricsError
from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.metrics.server import serve

log = logging.getLogger(__name__)

# One cycle on the runner's agent: its result, or None when it was skipped on
# purpose (the cycle function logged why).
Cycle = Callable[[Agent], CycleResult | None]


def watching_agent(config: Config) -> Agent:
    """An agent that also binds restarted cgroup tenants between its cycles: for the
    long-lived callers (the daemon, the node-manager thread).
    """
    return Agent(config, watch=True)


@dataclass(kw_only=True)
class CycleRunner:
    """One cycle at a time with the shared error policy, and the /metrics endpoint.

    A cycle never raises out of :meth:`run_cycle`: the state lock held by
    another cycle is a skipped cycle (a warning each time); an Error or OSError
    is a failed cycle, logged once until it changes (a device gone for hours)
    and counted each time; any other exception (a bug) is logged with its
    traceback and counted, and the caller's loop goes on.
    """

    LABEL: ClassVar[str] = "cycle"  # how the log lines name a cycle

    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    agent_factory: Callable[[Config], Agent] = watching_agent
    agent: Agent | None = None  # kept across cycles, replaced when the config is
    cycles: int = 0  # cycles run (skipped and failed ones included)
    stop_server: Callable[[], None] | None = None
    metrics_error: str | None = None  # the last failure to serve /metrics, logged once

    def run_cycle(self, config: Config, cycle: Cycle) -> None:
        """Run ``cycle`` on the agent for ``config`` and account it; never raises."""
        agent = self.agent = agent_for(config, self.agent, self.agent_factory)
        try:
            result = cycle(agent)
        except LockBusy as exc:
            log.warning("%s skipped: %s", self.LABEL, exc)
            self.metrics.observe_skipped()
            return
        except (Error, OSError) as exc:
            level = logging.ERROR if agent.new_problem(exc) else logging.DEBUG
            log.log(level, "%s failed: %s", self.LABEL, exc)
            self.metrics.observe_error()
            return
        except Exception:  # the loop must outlive any bug a cycle hits
            log.exception("%s crashed", self.LABEL)
            self.metrics.observe_error()
            return
        finally:
            self.cycles += 1
        if result is None:
            self.metrics.observe_skipped()
        else:
            self.metrics.observe(result)

    def serve_metrics(self, listen: str | None) -> None:
        """Serve /metrics on ``listen`` (None: not served) unless served already.

        Raises MetricsListenError (one line naming the address) if it cannot listen.
        """
        if not listen or self.stop_server is not None:
            return
        self.stop_server = serve(listen, self.metrics)
        self.metrics_error = None
        log.info("serving /metrics on %s", listen)

    def retry_metrics(self, listen: str | None) -> None:
        """:meth:`serve_metrics`, never raising: a failure is logged once per distinct
        error, and tried again at the next call (each cycle).
        """
        try:
            self.serve_metrics(listen)
        except (MetricsError, OSError) as exc:
            if str(exc) != self.metrics_error:
                log.error("%s; enforcing without metrics, retried every cycle", exc)
            self.metrics_error = str(exc)

    def stop_metrics(self) -> None:
        """Stop serving /metrics (if served)."""
        if self.stop_server is not None:
            self.stop_server()
            self.stop_server = None

    def close_agent(self) -> None:
        """Close the agent's netlink socket (the next cycle opens a new one)."""
        if self.agent is not None:
            self.agent.close()

    def stop_agent(self) -> None:
        """The runner ends: disarm the restart gate (if any), then close the agent."""
        if self.agent is not None:
            self.agent.disarm_gate()
        self.close_agent()

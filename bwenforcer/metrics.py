"""Prometheus metrics built at scrape time from the latest cycle (no per-slice globals).

:class:`AgentMetrics` is owned by whoever runs cycles (daemon, node-manager
thread, a ``sync`` run); it keeps the cumulative counters and the last cycle's
result, and is itself the collector registered with a private registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .cycle import CycleResult

DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNTERS = (
    ("classes_created", "HTB classes created"),
    ("classes_changed", "HTB class rate changes sent"),
    ("classes_removed", "HTB classes removed"),
    ("orphans_removed", "HTB slice classes removed because no slice owned them"),
    ("classes_adopted", "slice classes found without state and adopted"),
    ("state_recoveries", "state files found unusable and recovered from the backup"),
    ("cycle_errors", "cycles that failed with an error and were survived"),
    ("slice_failures", "slice operations that failed (kernel or source)"),
    ("resets", "operator resets of a slice's budget"),
)


class AgentMetrics:
    """Cumulative counters plus the latest cycle, exposed as a Prometheus collector."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._latest: CycleResult | None = None
        self._counts: dict[str, float] = {name: 0 for name, _ in COUNTERS}
        self._cycles: dict[str, float] = {"ok": 0, "partial": 0, "failed": 0, "dry-run": 0}
        self._mails: dict[str, float] = {"sent": 0, "failed": 0}
        self._buckets = [0] * (len(DURATION_BUCKETS_S) + 1)
        self._duration_sum_s = 0.0
        self._last_success_s = 0.0

    def observe(self, result: CycleResult) -> None:
        """Account one finished cycle."""
        with self._lock:
            self._latest = result
            self._cycles[result.result] += 1
            index = next(
                (i for i, b in enumerate(DURATION_BUCKETS_S) if result.duration_s <= b),
                len(DURATION_BUCKETS_S),
            )
            self._buckets[index] += 1
            self._duration_sum_s += result.duration_s
            if result.recovered_from:
                self._counts["state_recoveries"] += 1
            self._counts["slice_failures"] += len(result.failures) + len(result.source_errors)
            if result.outcome is not None:
                counts = result.outcome.counts
                self._counts["classes_created"] += counts.get("created", 0)
                self._counts["classes_changed"] += counts.get("changed", 0)
                self._counts["classes_removed"] += counts.get("removed", 0)
                self._counts["orphans_removed"] += counts.get("orphans_removed", 0)
                self._counts["classes_adopted"] += counts.get("adopted", 0)
                self._mails["sent"] += result.outcome.mails_sent
                self._mails["failed"] += result.outcome.mails_failed
                if result.result == "ok":
                    self._last_success_s = result.started_s + result.duration_s

    def observe_error(self) -> None:
        """Account a cycle that raised (and was survived)."""
        with self._lock:
            self._cycles["failed"] += 1
            self._counts["cycle_errors"] += 1

    def count(self, name: str, amount: float = 1) -> None:
        """Add to one of the COUNTERS."""
        with self._lock:
            self._counts[name] += amount

    def collect(self) -> Iterator[Metric]:
        """Prometheus Collector protocol: families from the latest snapshot."""
        with self._lock:
            latest = self._latest
            counts = dict(self._counts)
            cycles = dict(self._cycles)
            mails = dict(self._mails)
            buckets = list(self._buckets)
            duration_sum = self._duration_sum_s
            last_success = self._last_success_s
        yield from _slice_families(latest)
        cumulative, running = [], 0
        for bound, hits in zip((*DURATION_BUCKETS_S, float("inf")), buckets, strict=True):
            running += hits
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
        yield HistogramMetricFamily(
            "bwenforcer_cycle_duration_seconds",
            "Wall time of one enforcement cycle",
            buckets=cumulative,
            sum_value=duration_sum,
        )
        family = CounterMetricFamily(
            "bwenforcer_cycles", "Enforcement cycles by result", labels=["result"]
        )
        for result, value in cycles.items():
            family.add_metric([result], value)
        yield family
        family = CounterMetricFamily(
            "bwenforcer_notifications", "Cap notifications by result", labels=["result"]
        )
        for result, value in mails.items():
            family.add_metric([result], value)
        yield family
        for name, text in COUNTERS:
            yield CounterMetricFamily(f"bwenforcer_{name}", text, value=counts[name])
        yield GaugeMetricFamily(
            "bwenforcer_last_success_timestamp_seconds",
            "When the last fully successful cycle ended (Unix time)",
            value=last_success,
        )
        family = GaugeMetricFamily("bwenforcer_slices", "Slices by state", labels=["state"])
        live = len(latest.plan.lines) if latest else 0
        ledger = len(latest.plan.state.ledger) if latest else 0
        family.add_metric(["live"], live)
        family.add_metric(["ledger"], ledger)
        yield family

    def registry(self) -> CollectorRegistry:
        """A private registry holding only this collector."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        return registry


_SLICE_GAUGES: tuple[tuple[str, str, Callable[[Any, Any], float]], ...] = (
    ("used_bytes", "Bytes sent this period", lambda s, c: c.used_bytes),
    ("limit_bytes", "Byte budget of the period", lambda s, c: c.limit_bytes),
    ("threshold_bytes", "Usage from which the class is capped", lambda s, c: c.threshold_bytes),
    # promtool insists on the base unit: the ceil in bytes/s (bit/s ÷ 8)
    ("ceil_bytes_per_second", "Current HTB ceil", lambda s, c: c.new_ceil_bps / 8),
    ("capped", "1 when the class is capped", lambda s, c: 1 if c.capped else 0),
    (
        "period_start_timestamp_seconds",
        "Start of the recording period (Unix time)",
        lambda s, c: s.period_start_s,
    ),
    (
        "period_end_timestamp_seconds",
        "End of the recording period (Unix time)",
        lambda s, c: s.period_end_s,
    ),
)


def _slice_families(latest: CycleResult | None) -> Iterator[Metric]:
    families = [
        (
            GaugeMetricFamily(
                f"bwenforcer_slice_{name}",
                f"{text}, per slice and class",
                labels=["slice", "xid", "class"],
            ),
            value,
        )
        for name, text, value in _SLICE_GAUGES
    ]
    if latest is not None:
        for line in latest.plan.lines:
            xid = str(line.xid)
            for cls in (line.default, line.exempt):
                labels = [line.name, xid, cls.traffic_class]
                for family, value in families:
                    family.add_metric(labels, value(line, cls))
    for family, _ in families:
        yield family


def write_textfile(path: str, metrics: AgentMetrics) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically."""
    from prometheus_client import write_to_textfile

    write_to_textfile(path, metrics.registry())


def serve(listen: str, metrics: AgentMetrics) -> Callable[[], None]:
    """Serve /metrics on ``host:port``; return a function that stops the server."""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(
        int(port), addr=host.strip("[]"), registry=metrics.registry()
    )

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

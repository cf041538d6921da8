"""Prometheus metrics built at scrape time from the latest cycle (no per-slice globals).

:class:`AgentMetrics` is owned by whoever runs cycles (daemon, node-manager
thread, a ``sync`` run); it keeps the cumulative counters and the last cycle's
result, and is itself the collector registered with a private registry.

Only what Debian 12's prometheus-client (0.16) offers is used, so the packaged
agent runs on the distribution's library: the HTTP server is our own small
WSGI server (0.16's ``start_http_server`` returns nothing to shut down).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .cycle import CycleResult
from .errors import MetricsError

log = logging.getLogger(__name__)

# "skipped": another cycle held the state lock; "failed": the cycle raised
CYCLE_RESULTS = ("ok", "partial", "dry-run", "failed", "skipped")
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
        self._cycles: dict[str, float] = dict.fromkeys(CYCLE_RESULTS, 0)
        self._mails: dict[str, float] = {"sent": 0, "failed": 0}
        self._buckets = [0] * (len(DURATION_BUCKETS_S) + 1)
        self._duration_sum_s = 0.0
        self._last_success_s = 0.0

    def observe(self, result: CycleResult) -> None:
        """Account one finished cycle."""
        with self._lock:
            self._latest = result
            self._cycles[result.result] += 1
            # `bwenforcer reset` runs as its own process: its count lives in the state file
            self._counts["resets"] = max(self._counts["resets"], result.plan.state.resets)
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

    def observe_skipped(self) -> None:
        """Account a cycle skipped because another one held the state lock."""
        with self._lock:
            self._cycles["skipped"] += 1

    def restore(self, text: str) -> None:
        """Carry the counters of an earlier exposition (a textfile) forward.

        A cron ``sync`` is a new process each time; without this its counters
        would restart from zero at every run and never count anything.
        """
        from prometheus_client.parser import text_string_to_metric_families

        counters = {f"bwenforcer_{name}_total": name for name, _ in COUNTERS}
        bounds = [*DURATION_BUCKETS_S, float("inf")]
        cumulative = [0.0] * len(bounds)
        with self._lock:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    name, labels, value = sample.name, sample.labels, sample.value
                    if name in counters:
                        self._counts[counters[name]] += value
                    elif name == "bwenforcer_cycles_total" and labels.get("result") in self._cycles:
                        self._cycles[labels["result"]] += value
                    elif name == "bwenforcer_notifications_total" and labels.get("result") in (
                        self._mails
                    ):
                        self._mails[labels["result"]] += value
                    elif name == "bwenforcer_cycle_duration_seconds_sum":
                        self._duration_sum_s += value
                    elif name == "bwenforcer_cycle_duration_seconds_bucket":
                        le = float(labels.get("le", "nan"))
                        if le in bounds:
                            cumulative[bounds.index(le)] = value
                    elif name == "bwenforcer_last_success_timestamp_seconds":
                        self._last_success_s = max(self._last_success_s, value)
            previous = 0.0
            for i, running in enumerate(cumulative):
                self._buckets[i] += int(max(running - previous, 0))
                previous = max(running, previous)

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
        live = len(latest.plan.live) if latest else 0
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


def from_textfile(path: str) -> AgentMetrics:
    """Metrics whose counters continue those of the textfile an earlier run wrote.

    A missing file starts from zero; an unreadable or garbled one too, with a
    warning (counters restarting is what Prometheus handles as a reset).
    """
    metrics = AgentMetrics()
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return metrics
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics textfile %s unreadable, counters restart: %s", path, exc)
        return metrics
    try:
        metrics.restore(text)
    except ValueError as exc:
        log.warning("metrics textfile %s garbled, counters restart: %s", path, exc)
        return AgentMetrics()
    return metrics


def write_textfile(path: str, metrics: AgentMetrics) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically."""
    from prometheus_client import write_to_textfile

    try:
        write_to_textfile(path, metrics.registry())
    except OSError as exc:
        raise MetricsError(f"metrics textfile {path}: {exc.strerror or exc}") from exc


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds are not worth a log line each."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class _MetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(address, _QuietHandler)


def serve(listen: str, metrics: AgentMetrics) -> Callable[[], None]:
    """Serve /metrics on ``host:port`` (IPv6 as ``[::1]:port``); return its stop function."""
    from prometheus_client import make_wsgi_app

    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server = _MetricsServer((host, port), family)
    except (OSError, ValueError) as exc:
        raise MetricsError(f"metrics: cannot listen on {listen}: {exc}") from exc
    server.set_app(make_wsgi_app(metrics.registry()))
    thread = threading.Thread(target=server.serve_forever, name="bwenforcer-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

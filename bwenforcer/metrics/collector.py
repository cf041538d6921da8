"""Prometheus metrics built at scrape time from the latest cycle (no per-slice globals).

:class:`AgentMetrics` is owned by whoever runs cycles (daemon, node-manager
thread, a ``sync`` run); it keeps the cumulative counters and the last cycle's
result, and is itself the collector registered with a private registry. This
module holds the counters and the families made of them; the text format
(written for the endpoint and the textfile, read back by a cron run) is
:mod:`bwenforcer.metrics.exposition`, the HTTP endpoint :mod:`bwenforcer.metrics.server`.

Only what Debian 12's prometheus-client (0.16) offers is used, so the packaged
agent runs on the distribution's library; only :meth:`AgentMetrics.collect`
and :meth:`AgentMetrics.registry` import it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.grants import NO_GRANT, counted_bytes, granted_bytes
from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import ClassState
from bwenforcer.core.projection import HOUR_S, exhausted_at_s
from bwenforcer.core.window import horizon_s
from bwenforcer.cycle.run import CycleResult

if TYPE_CHECKING:
    from prometheus_client.core import CollectorRegistry, Metric

# "skipped": another cycle held the state lock; "failed": the cycle raised
CYCLE_RESULTS = ("ok", "partial", "dry-run", "failed", "skipped")
# deferred: not tried, the cycle's time for mail was spent (retried next cycle)
MAIL_RESULTS = ("sent", "failed", "deferred")
DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNTERS = (
    ("classes_created", "HTB classes created"),
    ("classes_changed", "HTB class rate changes sent"),
    ("classes_removed", "HTB classes removed"),
    ("orphans_removed", "HTB slice classes removed because no slice owned them"),
    ("classes_adopted", "slice classes found without state and adopted"),
    ("filters_restored", "mark → class filters put back on a tree that had none of ours"),
    ("state_recoveries", "state files found unusable and recovered from the backup"),
    ("cycle_errors", "cycles that failed with an error and were survived"),
    ("slice_failures", "slice operations that failed (kernel or source)"),
    ("resets", "operator resets of a slice's budget"),
    ("grants", "operator grants of budget to a slice class"),
)


@dataclass(frozen=True)
class Snapshot:
    """The metrics' values at one instant (copied under the lock), or counters read back."""

    latest: CycleResult | None
    counts: dict[str, float]
    cycles: dict[str, float]
    mails: dict[str, float]
    buckets: list[int]  # hits per bucket of DURATION_BUCKETS_S and +Inf (not cumulative)
    duration_sum_s: float
    last_success_s: float
    # slice name -> (default, exempt) bytes/s over the last whole hour observed
    rates: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def empty_snapshot() -> Snapshot:
    """Every counter at zero, no cycle yet."""
    return Snapshot(
        None,
        {name: 0 for name, _ in COUNTERS},
        dict.fromkeys(CYCLE_RESULTS, 0),
        dict.fromkeys(MAIL_RESULTS, 0),
        [0] * (len(DURATION_BUCKETS_S) + 1),
        0.0,
        0.0,
    )


class AgentMetrics:
    """Cumulative counters plus the latest cycle, exposed as a Prometheus collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        zero = empty_snapshot()
        self._latest: CycleResult | None = None
        self._counts = zero.counts
        self._cycles = zero.cycles
        self._mails = zero.mails
        self._buckets = zero.buckets
        self._duration_sum_s = 0.0
        self._last_success_s = 0.0
        self._hour = HourRates()

    def observe(self, result: CycleResult) -> None:
        """Account one finished cycle."""
        with self._lock:
            self._latest = result
            self._hour.observe(result)
            self._cycles[result.result] += 1
            # `bwenforcer reset` runs as its own process: its count lives in the state file
            self._counts["resets"] = max(self._counts["resets"], result.plan.state.resets)
            self._counts["grants"] = max(self._counts["grants"], result.plan.state.grants)
            index = next(
                (i for i, b in enumerate(DURATION_BUCKETS_S) if result.duration_s <= b),
                len(DURATION_BUCKETS_S),
            )
            self._buckets[index] += 1
            self._duration_sum_s += result.duration_s
            if result.recovered_from:
                self._counts["state_recoveries"] += 1
            if result.filter_restored:
                self._counts["filters_restored"] += 1
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
                self._mails["deferred"] += result.outcome.mails_deferred
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

    def add(self, earlier: Snapshot) -> None:
        """Carry the counters of an earlier run forward (see ``exposition.restore``).

        A cron ``sync`` is a new process each time; without this its counters
        would restart from zero at every run and never count anything.
        """
        with self._lock:
            for mine, theirs in (
                (self._counts, earlier.counts),
                (self._cycles, earlier.cycles),
                (self._mails, earlier.mails),
            ):
                for key, value in theirs.items():
                    if key in mine:
                        mine[key] += value
            for i, hits in enumerate(earlier.buckets):
                self._buckets[i] += hits
            self._duration_sum_s += earlier.duration_sum_s
            self._last_success_s = max(self._last_success_s, earlier.last_success_s)

    def count(self, name: str, amount: float = 1) -> None:
        """Add to one of the COUNTERS."""
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> Snapshot:
        """Every value at this instant (what one scrape or textfile shows)."""
        with self._lock:
            return Snapshot(
                self._latest,
                dict(self._counts),
                dict(self._cycles),
                dict(self._mails),
                list(self._buckets),
                self._duration_sum_s,
                self._last_success_s,
                self._hour.rates,
            )

    def collect(self) -> Iterator[Metric]:
        """Prometheus Collector protocol: families from the latest snapshot.

        For a registry of the embedding program's own; the endpoint and the
        textfile are written by ``exposition.exposition_parts`` (the same samples).
        """
        from prometheus_client.core import GaugeMetricFamily, Metric
        from prometheus_client.utils import floatToGoString

        snap = self.snapshot()
        samples = list(slice_samples(snap.latest, snap.rates))
        for index, (name, text) in enumerate(SLICE_GAUGES):
            family = GaugeMetricFamily(
                f"bwenforcer_slice_{name}",
                f"{text}, per slice and class",
                labels=["slice", "xid", "class"],
            )
            for slice_name, xid, tc, values in samples:
                family.add_metric([slice_name, xid, tc], values[index])
            yield family
        both = list(direction_samples(snap.latest))
        if both:
            for index, (name, text) in enumerate(DIRECTION_GAUGES):
                family = GaugeMetricFamily(
                    f"bwenforcer_slice_{name}",
                    f"{text}, per slice, class and direction",
                    labels=["slice", "xid", "class", "direction"],
                )
                for slice_name, xid, tc, direction, pair in both:
                    if pair[index] is not None:
                        family.add_metric([slice_name, xid, tc, direction], pair[index])
                yield family
        for name, kind, text, cycle_samples in cycle_families(snap):
            metric = Metric(name, text, kind)
            for sample_name, labels, value in cycle_samples:
                metric.add_sample(
                    sample_name,
                    {k: v if isinstance(v, str) else floatToGoString(v) for k, v in labels},
                    value,
                )
            yield metric

    def registry(self) -> CollectorRegistry:
        """A private registry holding only this collector."""
        from prometheus_client.core import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        return registry


# A sample: its name, its labels (a histogram's bound ``le`` as a number), its value.
Sample = tuple[str, tuple[tuple[str, str | float], ...], float]


def cycle_families(snap: Snapshot) -> Iterator[tuple[str, str, str, list[Sample]]]:
    """``(name, type, help, samples)`` of every family but the per-slice gauges."""
    histogram = "bwenforcer_cycle_duration_seconds"
    samples: list[Sample] = []
    running = 0
    for bound, hits in zip((*DURATION_BUCKETS_S, float("inf")), snap.buckets, strict=True):
        running += hits
        samples.append((f"{histogram}_bucket", (("le", bound),), running))
    samples.append((f"{histogram}_count", (), running))
    samples.append((f"{histogram}_sum", (), snap.duration_sum_s))
    yield histogram, "histogram", "Wall time of one enforcement cycle", samples
    yield (
        "bwenforcer_cycles",
        "counter",
        "Enforcement cycles by result",
        [("bwenforcer_cycles_total", (("result", r),), v) for r, v in snap.cycles.items()],
    )
    yield (
        "bwenforcer_notifications",
        "counter",
        "Cap notifications by result",
        [("bwenforcer_notifications_total", (("result", r),), v) for r, v in snap.mails.items()],
    )
    for name, text in COUNTERS:
        total = f"bwenforcer_{name}_total"
        yield f"bwenforcer_{name}", "counter", text, [(total, (), snap.counts[name])]
    yield (
        "bwenforcer_last_success_timestamp_seconds",
        "gauge",
        "When the last fully successful cycle ended (Unix time)",
        [("bwenforcer_last_success_timestamp_seconds", (), snap.last_success_s)],
    )
    latest = snap.latest
    if latest is not None and latest.units:
        units = latest.units
        yield (
            "bwenforcer_slice_unit_info",
            "gauge",
            "A cgroup tenant's unit (user-1000.slice, nginx.service), 1 per live tenant",
            [
                (
                    "bwenforcer_slice_unit_info",
                    (("slice", p.state.name), ("unit", units[p.state.name])),
                    1,
                )
                for p in latest.plan.live
                if p.state.name in units
            ],
        )
    if latest is not None and latest.unclassified_in_bytes:
        yield (
            "bwenforcer_unclassified_received_bytes",
            "gauge",
            "Bytes received by no slice, by class (inbound accounting; the counter of the"
            " inbound table, from 0 when it was loaded)",
            [
                ("bwenforcer_unclassified_received_bytes", (("class", tc),), n)
                for tc, n in sorted(latest.unclassified_in_bytes.items())
            ],
        )
    live = len(latest.plan.live) if latest else 0
    ledger = len(latest.plan.state.ledger) if latest else 0
    yield (
        "bwenforcer_slices",
        "gauge",
        "Slices by state",
        [
            ("bwenforcer_slices", (("state", "live"),), live),
            ("bwenforcer_slices", (("state", "ledger"),), ledger),
        ],
    )


# The per-slice gauges, in the order of the values of slice_samples.
SLICE_GAUGES = (
    ("used_bytes", "Bytes sent this period"),
    ("limit_bytes", "Byte budget of the period"),
    ("threshold_bytes", "Usage from which the class is capped"),
    # promtool insists on the base unit: the ceil in bytes/s (bit/s ÷ 8)
    ("ceil_bytes_per_second", "Current HTB ceil"),
    ("capped", "1 when the class is capped"),
    ("period_start_timestamp_seconds", "Start of the recording period (Unix time)"),
    ("period_end_timestamp_seconds", "End of the recording period (Unix time)"),
    ("granted_bytes", "Bytes operators granted in force, added to the budget"),
    ("carried_bytes", "Bytes rolled over from the period before, added to the budget"),
    (
        "budget_exhausted_timestamp_seconds",
        "When the budget runs out at the last hour's rate (Unix time; +Inf: not this"
        " period; NaN: no hour observed yet)",
    ),
)


_UNKNOWN_RATE = (math.nan, math.nan)


def slice_samples(
    latest: CycleResult | None, rates: Mapping[str, tuple[float, float]] | None = None
) -> Iterator[tuple[str, str, TrafficClass, tuple[float, ...]]]:
    """``(slice, xid, class, values of SLICE_GAUGES)`` of every class of the latest cycle.

    Read off the planned slice states (what the plan's lines are made of), so no
    line objects are built for it. ``rates``: bytes/s over the last hour by slice
    (:class:`HourRates`), for the projection.
    """
    if latest is None:
        return
    rates = rates or {}
    now_s = latest.plan.now_s
    state = latest.plan.state
    granted = granted_bytes(state.audit, latest.plan.now_s) if state.audit else {}
    for planned in latest.plan.live:
        st = planned.state
        xid = str(st.xid)
        grant = granted.get(st.name, NO_GRANT)
        rate = rates.get(st.name, _UNKNOWN_RATE)
        classes: tuple[tuple[TrafficClass, ClassState, int, float], ...] = (
            ("default", st.default, grant[0], rate[0]),
            ("exempt", st.exempt, grant[1], rate[1]),
        )
        for tc, cs, granted_in_force, bytes_per_s in classes:
            policy = cs.policy
            values = (
                cs.used_bytes,
                policy.limit_bytes,
                policy.threshold_bytes,
                cs.ceil_bps / 8,
                1 if cs.capped else 0,
                st.period_start_s,
                st.period_end_s,
                granted_in_force,
                cs.carried_bytes,
                exhausted_at_s(
                    limit_bytes=policy.limit_bytes,
                    counted_bytes=counted_bytes(
                        direction_bytes(cs, policy, planned.inbound),
                        granted_in_force + cs.carried_bytes,
                    ),
                    rate_bytes_per_s=bytes_per_s,
                    now_s=now_s,
                    period_end_s=horizon_s(st.period_end_s, policy.window_s),
                ),
            )
            yield st.name, xid, tc, values


# With inbound accounting on, two per-slice families labelled by ``direction`` (``out``,
# ``in``) besides the families above, which keep their series and meaning (what is
# sent): (name, help, value index in direction_samples).
DIRECTION_GAUGES = (
    ("transferred_bytes", "Bytes transferred this period (out: sent, in: received)"),
    (
        "rate_limit_bytes_per_second",
        "Rate limit in force (out: the HTB ceil, in: the inbound limit; no sample: none)",
    ),
)


def direction_samples(
    latest: CycleResult | None,
) -> Iterator[tuple[str, str, TrafficClass, str, tuple[float, float | None]]]:
    """``(slice, xid, class, direction, values of DIRECTION_GAUGES)`` of every class of
    the latest cycle, both directions, if it was planned with inbound accounting on
    (none otherwise; a value None: no sample).
    """
    if latest is None:
        return
    for planned in latest.plan.live:
        if not planned.inbound:
            return  # one plan: inbound on for every slice or for none
        st = planned.state
        xid = str(st.xid)
        for tc, cs in (("default", st.default), ("exempt", st.exempt)):
            yield st.name, xid, tc, "out", (cs.used_bytes, cs.ceil_bps / 8)  # type: ignore[misc]
            limit = cs.in_limit_bps / 8 if cs.in_limit_bps else None
            yield st.name, xid, tc, "in", (cs.in_used_bytes, limit)  # type: ignore[misc]


class HourRates:
    """Each live slice's rate over the last whole hour the agent observed (of the usage
    its budget counts: what is sent, with inbound accounting on what its direction says).

    Every slice shares one window: when an hour has passed since its start, each
    slice's rate is the usage added since then over the time passed (from its new
    period's start when a period ended in between), and a new window starts. Between
    windows a cycle costs nothing per slice. A new process has no rate for its
    first hour (a cron ``sync`` never has one).
    """

    def __init__(self) -> None:
        self._start_s: int | None = None
        self._used: dict[str, tuple[int, int, int]] = {}  # name -> (period start, d, e)
        self.rates: dict[str, tuple[float, float]] = {}

    def observe(self, result: CycleResult) -> None:
        """Close the window if an hour has passed since it started."""
        now_s = result.plan.now_s
        if self._start_s is not None and now_s - self._start_s < HOUR_S:
            return
        used: dict[str, tuple[int, int, int]] = {}
        rates: dict[str, tuple[float, float]] = {}
        for planned in result.plan.live:
            st = planned.state
            now_used = (
                st.period_start_s,
                direction_bytes(st.default, st.default.policy, planned.inbound),
                direction_bytes(st.exempt, st.exempt.policy, planned.inbound),
            )
            used[st.name] = now_used
            before = self._used.get(st.name)
            if self._start_s is None or before is None:
                continue
            if before[0] == st.period_start_s:
                span_s, d, e = (
                    now_s - self._start_s,
                    now_used[1] - before[1],
                    now_used[2] - before[2],
                )
            else:  # a new period: its usage since it started
                span_s, d, e = (
                    now_s - max(self._start_s, st.period_start_s),
                    now_used[1],
                    now_used[2],
                )
            if span_s > 0:
                rates[st.name] = (max(0, d) / span_s, max(0, e) / span_s)
        if self._start_s is not None:
            self.rates = rates
        self._start_s, self._used = now_s, used

"""Prometheus metrics built at scrape time from the latest cycle (no per-slice globals).

:class:`AgentMetrics` is owned by whoever runs cycles (daemon, node-manager
thread, a ``sync`` run); it keeps the cumulative counters and the last cycle's
result, and is itself the collector registered with a private registry.

Only what Debian 12's prometheus-client (0.16) offers is used, so the packaged
agent runs on the distribution's library: the HTTP server is our own, one
thread with a selector whatever the clients do (0.16's ``start_http_server``
returns nothing to shut down and spends a thread per connection).

At thousands of slices the per-slice families are tens of thousands of
samples, which prometheus-client's generic writer takes about a second to
format and its parser longer to read back. So the text that is scraped or
written to the textfile comes from :meth:`AgentMetrics.exposition`, a direct
writer of the text format (version 0.0.4) over the same families that
:meth:`AgentMetrics.collect` yields to a registry; a cron run reads back only
its counters. Neither imports prometheus-client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .atomicfile import check_dir, disk_full, open_own, replace_file
from .cycle import CycleResult
from .layout import TrafficClass
from .model import ClassState

if TYPE_CHECKING:
    from prometheus_client.core import CollectorRegistry, Metric
from .errors import MetricsError, MetricsListenError

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
        # deferred: not tried, the cycle's time for mail was spent (retried next cycle)
        self._mails: dict[str, float] = {"sent": 0, "failed": 0, "deferred": 0}
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

    def restore(self, exposition: str | Iterable[str]) -> None:
        """Carry the counters of an earlier exposition (a textfile) forward.

        A cron ``sync`` is a new process each time; without this its counters
        would restart from zero at every run and never count anything. Only the
        cycle families are read (the per-slice gauges are skipped unparsed);
        ValueError if one of their lines is garbled. ``exposition`` is the text,
        or its lines (an open file: read as it goes).
        """
        counters = {f"bwenforcer_{name}_total": name for name, _ in COUNTERS}
        bounds = [*DURATION_BUCKETS_S, float("inf")]
        cumulative = [0.0] * len(bounds)
        with self._lock:
            lines = exposition.splitlines() if isinstance(exposition, str) else exposition
            for name, label, value in _cycle_samples(lines):
                if name in counters:
                    self._counts[counters[name]] += value
                elif name == "bwenforcer_cycles_total" and label in self._cycles:
                    self._cycles[label] += value
                elif name == "bwenforcer_notifications_total" and label in self._mails:
                    self._mails[label] += value
                elif name == "bwenforcer_cycle_duration_seconds_sum":
                    self._duration_sum_s += value
                elif name == "bwenforcer_cycle_duration_seconds_bucket":
                    le = float(label or "nan")
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

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            return _Snapshot(
                self._latest,
                dict(self._counts),
                dict(self._cycles),
                dict(self._mails),
                list(self._buckets),
                self._duration_sum_s,
                self._last_success_s,
            )

    def collect(self) -> Iterator[Metric]:
        """Prometheus Collector protocol: families from the latest snapshot.

        For a registry of the embedding program's own; the endpoint and the
        textfile are written by :meth:`exposition`.
        """
        from prometheus_client.core import GaugeMetricFamily, Metric

        snap = self._snapshot()
        samples = list(_slice_samples(snap.latest))
        for index, (name, text) in enumerate(_SLICE_GAUGES):
            family = GaugeMetricFamily(
                f"bwenforcer_slice_{name}",
                f"{text}, per slice and class",
                labels=["slice", "xid", "class"],
            )
            for slice_name, xid, tc, values in samples:
                family.add_metric([slice_name, xid, tc], values[index])
            yield family
        for name, kind, text, samples in _cycle_families(snap):
            metric = Metric(name, text, kind)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, dict(labels), value)
            yield metric

    def registry(self) -> CollectorRegistry:
        """A private registry holding only this collector."""
        from prometheus_client.core import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)  # type: ignore[arg-type]
        return registry

    def exposition(self) -> str:
        """Every family in the Prometheus text format (0.0.4), as scraped or written."""
        return "".join(self.exposition_parts())

    def exposition_parts(self) -> Iterator[str]:
        """:meth:`exposition` a family at a time (a textfile is written as it is made).

        The samples of :meth:`collect`, written directly: at thousands of slices
        the per-slice gauges are most of the work of a cycle's metrics.
        """
        snap = self._snapshot()
        rows = [  # labels in name order, as prometheus-client writes them
            (f'{{class="{tc}",slice="{_label(name)}",xid="{xid}"}} ', values)
            for name, xid, tc, values in _slice_samples(snap.latest)
        ]
        number: dict[float, str] = {}  # most values repeat: limits, periods, flags
        for index, (name, text) in enumerate(_SLICE_GAUGES):
            full = f"bwenforcer_slice_{name}"
            out = [f"# HELP {full} {text}, per slice and class\n# TYPE {full} gauge\n"]
            for label, values in rows:
                v = values[index]
                formatted = number.get(v)
                if formatted is None:
                    formatted = number[v] = _number(v)
                out.append(f"{full}{label}{formatted}\n")
            yield "".join(out)
        for name, kind, text, samples in _cycle_families(snap):
            shown = f"{name}_total" if kind == "counter" else name
            out = [f"# HELP {shown} {text}\n# TYPE {shown} {kind}\n"]
            for sample_name, sample_labels, value in samples:
                label = ",".join(f'{k}="{_label(v)}"' for k, v in sample_labels)
                out.append(f"{sample_name}{{{label}}} " if label else f"{sample_name} ")
                out.append(f"{_number(value)}\n")
            yield "".join(out)


@dataclass(frozen=True)
class _Snapshot:
    """The metrics' values at one instant, copied under the lock."""

    latest: CycleResult | None
    counts: dict[str, float]
    cycles: dict[str, float]
    mails: dict[str, float]
    buckets: list[int]
    duration_sum_s: float
    last_success_s: float


_Sample = tuple[str, tuple[tuple[str, str], ...], float]


def _cycle_families(snap: _Snapshot) -> Iterator[tuple[str, str, str, list[_Sample]]]:
    """``(name, type, help, samples)`` of every family but the per-slice gauges."""
    histogram = "bwenforcer_cycle_duration_seconds"
    samples: list[_Sample] = []
    running = 0
    for bound, hits in zip((*DURATION_BUCKETS_S, float("inf")), snap.buckets, strict=True):
        running += hits
        samples.append((f"{histogram}_bucket", (("le", _number(bound)),), running))
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


def _number(value: float) -> str:
    """A sample value as Prometheus' own Go code writes it (``1.0``, ``1.5e+09``, ``+Inf``)."""
    d = float(value)
    if d != d:  # noqa: PLR0124 - NaN is the one value unequal to itself
        return "NaN"
    if d in (float("inf"), float("-inf")):
        return "+Inf" if d > 0 else "-Inf"
    text = repr(d)
    dot = text.find(".")
    if d > 0 and dot > 6:  # Go writes an exponent from 1e21 down to seven digits
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label(value: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


# The per-slice gauges, in the order of the values of _slice_samples.
_SLICE_GAUGES = (
    ("used_bytes", "Bytes sent this period"),
    ("limit_bytes", "Byte budget of the period"),
    ("threshold_bytes", "Usage from which the class is capped"),
    # promtool insists on the base unit: the ceil in bytes/s (bit/s ÷ 8)
    ("ceil_bytes_per_second", "Current HTB ceil"),
    ("capped", "1 when the class is capped"),
    ("period_start_timestamp_seconds", "Start of the recording period (Unix time)"),
    ("period_end_timestamp_seconds", "End of the recording period (Unix time)"),
)


def _slice_samples(
    latest: CycleResult | None,
) -> Iterator[tuple[str, str, TrafficClass, tuple[float, ...]]]:
    """``(slice, xid, class, values of _SLICE_GAUGES)`` of every class of the latest cycle.

    Read off the planned slice states (what the plan's lines are made of), so no
    line objects are built for it.
    """
    if latest is None:
        return
    for planned in latest.plan.live:
        st = planned.state
        xid = str(st.xid)
        classes: tuple[tuple[TrafficClass, ClassState], ...] = (
            ("default", st.default),
            ("exempt", st.exempt),
        )
        for tc, cs in classes:
            policy = cs.policy
            values = (
                cs.used_bytes,
                policy.limit_bytes,
                policy.threshold_bytes,
                cs.ceil_bps / 8,
                1 if cs.capped else 0,
                st.period_start_s,
                st.period_end_s,
            )
            yield st.name, xid, tc, values


# A sample of the cycle families: name, an optional {label="value"}, the value.
_CYCLE_SAMPLE = re.compile(r'(bwenforcer_[a-z_]+)(?:\{[a-z_]+="([^"\\]*)"\})? ([-+0-9.eEInfNa]+)')


def _cycle_samples(lines: Iterable[str]) -> Iterator[tuple[str, str | None, float]]:
    """``(name, label value, value)`` of each cycle-family sample in an exposition.

    The per-slice gauges and comments are skipped without being parsed; any
    other line must be a sample of ours (ValueError otherwise).
    """
    for raw in lines:
        if raw.startswith(("#", "bwenforcer_slice_")):
            continue
        line = raw.rstrip("\n")
        if not line:
            continue
        match = _CYCLE_SAMPLE.fullmatch(line)
        if match is None:
            raise ValueError(f"not a bwenforcer sample: {line[:80]!r}")
        yield match[1], match[2], float(match[3])


def from_textfile(path: str) -> AgentMetrics:
    """Metrics whose counters continue those of the textfile an earlier run wrote.

    A missing file starts from zero; an unreadable or garbled one too, with a
    warning (counters restarting is what Prometheus handles as a reset). A
    symlink, or a file or directory that is not safely ours, is refused
    (UnsafePath): it is not read, so nothing of a foreign file reaches the log.
    """
    metrics = AgentMetrics()
    check_dir(os.path.dirname(os.path.abspath(path)), "metrics textfile directory")
    try:
        fd = open_own(path, os.O_RDONLY, "metrics textfile")
        with open(fd, encoding="utf-8") as file:
            metrics.restore(file)  # line by line: the per-slice lines are most of it
    except FileNotFoundError:
        return metrics
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics textfile %s unreadable, counters restart: %s", path, exc)
        return AgentMetrics()
    except ValueError as exc:
        log.warning("metrics textfile %s garbled, counters restart: %s", path, exc)
        return AgentMetrics()
    return metrics


TEXTFILE_MODE = 0o644  # node_exporter runs as its own user


def write_textfile(path: str, metrics: AgentMetrics) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically.

    The temp file's name does not end in ``.prom``, so the collector never reads
    a half-written file.
    """
    check_dir(os.path.dirname(os.path.abspath(path)), "metrics textfile directory")
    try:
        replace_file(path, (part.encode() for part in metrics.exposition_parts()), TEXTFILE_MODE)
    except OSError as exc:
        what = f"metrics textfile {path}"
        raise disk_full(exc, what) or MetricsError(f"{what}: {exc.strerror or exc}") from exc


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVE_TIMEOUT_S = 10.0  # a connection silent this long is closed
MAX_CONNECTIONS = 64  # open at once; a new one closes the longest idle
MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends about 300


class _Connection:
    """One client: what it sent so far, what is left to send, when it times out."""

    __slots__ = ("deadline_s", "inbox", "outbox", "sent", "sock")

    def __init__(self, sock: socket.socket, deadline_s: float) -> None:
        self.sock = sock
        self.deadline_s = deadline_s
        self.inbox = b""
        self.outbox = memoryview(b"")
        self.sent = 0


def _response(status: str, body: bytes, head: bool, extra: str = "") -> memoryview:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()
    return memoryview(header if head else header + body)


def _reply(request: bytes, metrics: AgentMetrics) -> memoryview:
    """The whole response to one request (its line and headers); every connection closes."""
    parts = request.split(b"\n", 1)[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response("400 Bad Request", b"bad request\n", head=False)
    method, target = parts[0], parts[1]
    head = method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"GET or HEAD\n", False, "Allow: GET, HEAD\r\n")
    if target.split(b"?", 1)[0] != b"/metrics":
        return _response("404 Not Found", b"only /metrics is served\n", head)
    return _response("200 OK", metrics.exposition().encode(), head)


class _Server:
    """/metrics over HTTP on one thread: non-blocking sockets and a selector.

    No client costs a thread: a connection silent for ``timeout_s`` is closed, at
    most ``max_connections`` are open (a new one closes the longest idle, so idle
    connections cannot lock out a scrape), a request is at most MAX_REQUEST_BYTES
    and every response ends its connection.
    """

    def __init__(
        self,
        listener: socket.socket,
        metrics: AgentMetrics,
        timeout_s: float,
        max_connections: int,
    ) -> None:
        self.listener = listener
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.connections: dict[socket.socket, _Connection] = {}
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.stopping = False
        listener.setblocking(False)
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until :meth:`stop`; then close every socket."""
        try:
            while not self.stopping:
                self.turn()
        finally:
            for conn in list(self.connections.values()):
                self.close(conn)
            self.selector.close()
            self.wake_r.close()
            self.listener.close()

    def stop(self) -> None:
        """Make :meth:`run` return (from another thread)."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError):  # its buffer is full: awake already
            self.wake_w.send(b"x")

    def turn(self) -> None:
        now_s = time.monotonic()
        timeout_s = min((c.deadline_s for c in self.connections.values()), default=None)
        wait_s = None if timeout_s is None else max(0.0, timeout_s - now_s)
        for key, events in self.selector.select(wait_s):
            if key.fileobj is self.listener:
                self.accept()
            elif key.fileobj is self.wake_r:
                self.wake_r.recv(64)
            elif key.data.sock in self.connections:  # not closed earlier in this turn
                conn = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        self.write(conn)
                    else:
                        self.read(conn)
                except OSError as exc:
                    log.debug("metrics: connection dropped: %s", exc)
                    self.close(conn)
        now_s = time.monotonic()
        for conn in [c for c in self.connections.values() if c.deadline_s <= now_s]:
            self.close(conn)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: retried on the next turn
                log.warning("metrics: cannot accept a connection: %s", exc)
                return
            if len(self.connections) >= self.max_connections:
                self.close(min(self.connections.values(), key=lambda c: c.deadline_s))
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self.timeout_s)
            self.connections[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def read(self, conn: _Connection) -> None:
        data = conn.sock.recv(4096)
        if not data:
            self.close(conn)
            return
        conn.inbox += data
        conn.deadline_s = time.monotonic() + self.timeout_s
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbox.find(b"\n\n")
        if end < 0 and len(conn.inbox) <= MAX_REQUEST_BYTES:
            return
        if end < 0:
            conn.outbox = _response("431 Request Header Fields Too Large", b"too long\n", False)
        else:
            conn.outbox = _reply(conn.inbox[:end], self.metrics)
        conn.inbox = b""
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self.write(conn)

    def write(self, conn: _Connection) -> None:
        sent = conn.sock.send(conn.outbox[conn.sent : conn.sent + 2**18])
        conn.sent += sent
        conn.deadline_s = time.monotonic() + self.timeout_s
        if conn.sent >= len(conn.outbox):
            conn.sock.shutdown(socket.SHUT_WR)
            self.close(conn)

    def close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock, None)
        self.selector.unregister(conn.sock)
        conn.sock.close()


def _listen(listen: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 as ``[::1]:port``)."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise MetricsListenError(f"metrics: cannot listen on {listen}: {reason}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.bind(address)
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise MetricsListenError(
            f"metrics: cannot listen on {listen}: {exc.strerror or exc}"
        ) from exc
    return sock


def serve(
    listen: str,
    metrics: AgentMetrics,
    timeout_s: float = SERVE_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> Callable[[], None]:
    """Serve /metrics on ``host:port`` (IPv6 as ``[::1]:port``); return its stop function.

    GET and HEAD of /metrics only (other methods 405, other paths 404), on one thread
    whatever the clients do (see :class:`_Server`). Raises MetricsListenError (one
    line naming the address) when the address cannot be listened on.
    """
    server = _Server(_listen(listen), metrics, timeout_s, max_connections)
    thread = threading.Thread(target=server.run, name="bwenforcer-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.stop()
        thread.join(timeout=5)
        server.wake_w.close()

    return stop

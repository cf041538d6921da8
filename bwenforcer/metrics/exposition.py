"""The metrics' text format (0.0.4): written for the endpoint and the textfile, read back.

At thousands of slices the per-slice families are tens of thousands of
samples, which prometheus-client's generic writer takes about a second to
format and its parser longer to read back. So the text that is scraped or
written to node_exporter's textfile comes from :func:`exposition_parts`, a
direct writer over the same families that ``AgentMetrics.collect`` yields to a
registry (byte for byte what ``generate_latest`` writes, tested); a cron run
reads back only its counters (:func:`from_textfile`). Neither imports
prometheus-client.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator

from bwenforcer.errors import MetricsError, UnsafePath
from bwenforcer.files.atomic import disk_full, open_own, open_shared_dir, replace_at
from bwenforcer.metrics.collector import (
    COUNTERS,
    DIRECTION_GAUGES,
    DURATION_BUCKETS_S,
    SLICE_GAUGES,
    AgentMetrics,
    Snapshot,
    cycle_families,
    direction_samples,
    empty_snapshot,
    slice_samples,
)

log = logging.getLogger(__name__)

TEXTFILE_MODE = 0o644  # node_exporter runs as its own user


def exposition(metrics: AgentMetrics) -> str:
    """Every family in the Prometheus text format (0.0.4), as scraped or written."""
    return "".join(exposition_parts(metrics))


def exposition_parts(metrics: AgentMetrics) -> Iterator[str]:
    """:func:`exposition` a family at a time (a textfile is written as it is made).

    The samples of ``AgentMetrics.collect``, written directly: at thousands of
    slices the per-slice gauges are most of the work of a cycle's metrics.
    """
    snap = metrics.snapshot()
    rows = [  # labels in name order, as prometheus-client writes them
        (f'{{class="{tc}",slice="{_label(name)}",xid="{xid}"}} ', values)
        for name, xid, tc, values in slice_samples(snap.latest, snap.rates)
    ]
    number: dict[float, str] = {}  # most values repeat: limits, periods, flags
    for index, (name, text) in enumerate(SLICE_GAUGES):
        full = f"bwenforcer_slice_{name}"
        out = [f"# HELP {full} {text}, per slice and class\n# TYPE {full} gauge\n"]
        for label, values in rows:
            v = values[index]
            formatted = number.get(v)
            if formatted is None:
                formatted = number[v] = _number(v)
            out.append(f"{full}{label}{formatted}\n")
        yield "".join(out)
    both = [
        (f'{{class="{tc}",direction="{d}",slice="{_label(name)}",xid="{xid}"}} ', values)
        for name, xid, tc, d, values in direction_samples(snap.latest)
    ]
    if both:
        for index, (name, text) in enumerate(DIRECTION_GAUGES):
            full = f"bwenforcer_slice_{name}"
            out = [f"# HELP {full} {text}, per slice, class and direction\n# TYPE {full} gauge\n"]
            for label, values in both:
                v = values[index]
                if v is not None:
                    out.append(f"{full}{label}{_number(v)}\n")
            yield "".join(out)
    for name, kind, text, samples in cycle_families(snap):
        shown = f"{name}_total" if kind == "counter" else name
        out = [f"# HELP {shown} {text}\n# TYPE {shown} {kind}\n"]
        for sample_name, sample_labels, value in samples:
            label = ",".join(
                f'{k}="{_label(v) if isinstance(v, str) else _number(v)}"' for k, v in sample_labels
            )
            out.append(f"{sample_name}{{{label}}} " if label else f"{sample_name} ")
            out.append(f"{_number(value)}\n")
        yield "".join(out)


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


def restore(metrics: AgentMetrics, text: str | Iterable[str]) -> None:
    """Add the counters of an earlier exposition (a textfile) to ``metrics``.

    Only the cycle families are read (the per-slice gauges are skipped
    unparsed); ValueError if one of their lines is garbled, and then nothing
    is added. ``text`` is the exposition, or its lines (an open file: read as
    it goes).
    """
    metrics.add(read_counters(text.splitlines() if isinstance(text, str) else text))


def read_counters(lines: Iterable[str]) -> Snapshot:
    """The counters of an exposition's lines (no latest cycle); ValueError if garbled."""
    earlier = empty_snapshot()
    counters = {f"bwenforcer_{name}_total": name for name, _ in COUNTERS}
    bounds = [*DURATION_BUCKETS_S, float("inf")]
    cumulative = [0.0] * len(bounds)
    duration_sum_s = last_success_s = 0.0
    for name, label, value in _cycle_samples(lines):
        if name in counters:
            earlier.counts[counters[name]] += value
        elif name == "bwenforcer_cycles_total" and label in earlier.cycles:
            earlier.cycles[label] += value
        elif name == "bwenforcer_notifications_total" and label in earlier.mails:
            earlier.mails[label] += value
        elif name == "bwenforcer_cycle_duration_seconds_sum":
            duration_sum_s += value
        elif name == "bwenforcer_cycle_duration_seconds_bucket":
            le = float(label or "nan")
            if le in bounds:
                cumulative[bounds.index(le)] = value
        elif name == "bwenforcer_last_success_timestamp_seconds":
            last_success_s = max(last_success_s, value)
    buckets, previous = [], 0.0
    for running in cumulative:  # the file's buckets are cumulative, a Snapshot's are not
        buckets.append(int(max(running - previous, 0)))
        previous = max(running, previous)
    return Snapshot(
        None, earlier.counts, earlier.cycles, earlier.mails, buckets, duration_sum_s, last_success_s
    )


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


def _textfile_dir(path: str) -> tuple[int, str]:
    """``(fd of the textfile's directory, the file's name)``; UnsafePath, or MetricsError
    naming the file if the directory cannot be opened."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        return open_shared_dir(directory, "metrics textfile directory"), name
    except OSError as exc:
        raise MetricsError(f"metrics textfile {path}: {exc.strerror or exc}") from exc


def from_textfile(path: str) -> AgentMetrics:
    """Metrics whose counters continue those of the textfile an earlier run wrote.

    A missing file starts from zero; an unreadable or garbled one too, with a
    warning (counters restarting is what Prometheus handles as a reset), and so
    does one that is not ours or not a regular file, a symlink for one: it is
    not read, so nothing of a foreign file reaches the log, and the write
    replaces it. A directory others may write (not sticky) is refused (UnsafePath).
    """
    metrics = AgentMetrics()
    dir_fd, name = _textfile_dir(path)
    try:
        fd = open_own(name, os.O_RDONLY, "metrics textfile", dir_fd=dir_fd)
        with open(fd, encoding="utf-8") as file:
            restore(metrics, file)  # line by line: the per-slice lines are most of it
    except FileNotFoundError:
        return metrics
    except UnsafePath as exc:
        problem = str(exc).partition(": ")[2]  # "refused: is a symlink"
        log.warning("metrics textfile %s %s; counters restart, the file is replaced", path, problem)
        return AgentMetrics()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics textfile %s unreadable, counters restart: %s", path, exc)
        return AgentMetrics()
    except ValueError as exc:
        log.warning("metrics textfile %s garbled, counters restart: %s", path, exc)
        return AgentMetrics()
    finally:
        os.close(dir_fd)
    return metrics


def write_textfile(path: str, metrics: AgentMetrics) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically, in a
    directory that may be node_exporter's (:func:`~bwenforcer.files.atomic.open_shared_dir`).

    The temp file's name does not end in ``.prom``, so the collector never reads
    a half-written file.
    """
    dir_fd, name = _textfile_dir(path)
    try:
        replace_at(
            dir_fd, name, (part.encode() for part in exposition_parts(metrics)), TEXTFILE_MODE
        )
    except OSError as exc:
        what = f"metrics textfile {path}"
        raise disk_full(exc, what) or MetricsError(f"{what}: {exc.strerror or exc}") from exc
    finally:
        os.close(dir_fd)

"""The ``report`` view: usage history rows as JSON objects (and CSV columns) and as a table.

One table of columns, JSON key → :class:`~bwenforcer.history.usage.ReportRow` field, gives
the ``--json`` keys, the ``--csv`` header and the hourly history ``show`` prints.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bwenforcer.core.units import human_duration, human_size
from bwenforcer.views.table import COLUMN_GAP

if TYPE_CHECKING:
    from bwenforcer.history.usage import ReportRow

# JSON key -> ReportRow field, in the documented order.
_FIELDS = {
    "slice": "slice_name",
    "bucket_start": "bucket_start_s",
    "by": "by",
    "default_bytes": "default_bytes",
    "exempt_bytes": "exempt_bytes",
    "peak_hour_bytes": "peak_hour_bytes",
    "capped_default_s": "capped_default_s",
    "capped_exempt_s": "capped_exempt_s",
}
JSON_KEYS = tuple(_FIELDS)


def row_json(row: ReportRow, keys: Sequence[str] = JSON_KEYS) -> dict[str, Any]:
    """A report row as the documented ``--json`` object (and ``--csv`` columns), or its ``keys``."""
    return {key: getattr(row, _FIELDS[key]) for key in keys}


_BUCKET_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
_BUCKET_HEADER = {"hour": "HOUR (UTC)", "day": "DAY (UTC)", "month": "MONTH (UTC)"}
TABLE_HEADER = ("DEFAULT", "EXEMPT", "PEAK HOUR", "CAPPED DEFAULT", "CAPPED EXEMPT")


def _capped(seconds: int) -> str:
    return human_duration(seconds) if seconds else "-"


def _cells(name: str, bucket: str, group: Sequence[ReportRow]) -> tuple[str, ...]:
    return (
        name,
        bucket,
        human_size(sum(r.default_bytes for r in group)),
        human_size(sum(r.exempt_bytes for r in group)),
        human_size(max(r.peak_hour_bytes for r in group)),
        _capped(sum(r.capped_default_s for r in group)),
        _capped(sum(r.capped_exempt_s for r in group)),
    )


def slice_table_rows(rows: Sequence[ReportRow], by: str) -> list[tuple[str, ...]]:
    """One slice's table lines (``rows`` are all its buckets): one per bucket, then its total."""
    name = rows[0].slice_name
    table = [
        _cells(
            name,
            dt.datetime.fromtimestamp(r.bucket_start_s, dt.UTC).strftime(_BUCKET_FORMAT[by]),
            [r],
        )
        for r in rows
    ]
    table.append(_cells(name, "total", rows))
    return table


def report_table(rows: Sequence[ReportRow], by: str) -> str:
    """Readable table: one line per slice per bucket, then a total line per slice."""
    names = sorted({r.slice_name for r in rows})
    groups = [[r for r in rows if r.slice_name == name] for name in names]
    return "\n".join(table_lines(lambda: groups, by))


def table_lines(groups: Callable[[], Iterable[Sequence[ReportRow]]], by: str) -> Iterator[str]:
    """The lines of :func:`report_table`, streamed: ``groups()`` gives each slice's rows
    in turn (in name order), and is called twice: once for the columns' widths,
    once for the lines. Memory: one slice's rows. Nothing if there are no rows.
    """
    header = ("SLICE", _BUCKET_HEADER[by], *TABLE_HEADER)
    widths = [len(cell) for cell in header]
    any_rows = False
    for rows in groups():
        for cells in slice_table_rows(rows, by):
            any_rows = True
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    if not any_rows:
        return

    def line(cells: Sequence[str]) -> str:
        return COLUMN_GAP.join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    yield line(header)
    for rows in groups():
        for cells in slice_table_rows(rows, by):
            yield line(cells)


def json_chunks(rows: Iterable[ReportRow]) -> Iterator[str]:
    """``json.dump([row_json(r) for r in rows], indent=2)``'s text, streamed row by row."""
    first = True
    for row in rows:
        text = json.dumps(row_json(row), indent=2).replace("\n", "\n  ")
        yield ("[\n  " if first else ",\n  ") + text
        first = False
    yield "[]" if first else "\n]"

"""The ``report`` view: usage history rows as JSON objects (and CSV columns) and as a table.

One table of columns, JSON key → :class:`~bwenforcer.history.usage.ReportRow` field, gives
the ``--json`` keys, the ``--csv`` header and the hourly history ``show`` prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bwenforcer.core.units import human_duration, human_size
from bwenforcer.views.table import render_table

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


def report_table(rows: Sequence[ReportRow], by: str) -> str:
    """Readable table: one line per slice per bucket, then a total line per slice."""

    def capped(seconds: int) -> str:
        return human_duration(seconds) if seconds else "-"

    def cells(name: str, bucket: str, group: Sequence[ReportRow]) -> tuple[str, ...]:
        return (
            name,
            bucket,
            human_size(sum(r.default_bytes for r in group)),
            human_size(sum(r.exempt_bytes for r in group)),
            human_size(max(r.peak_hour_bytes for r in group)),
            capped(sum(r.capped_default_s for r in group)),
            capped(sum(r.capped_exempt_s for r in group)),
        )

    table: list[tuple[str, ...]] = []
    names = sorted({r.slice_name for r in rows})
    for name in names:
        mine = [r for r in rows if r.slice_name == name]
        for r in mine:
            start = dt.datetime.fromtimestamp(r.bucket_start_s, dt.UTC)
            table.append(cells(name, start.strftime(_BUCKET_FORMAT[by]), [r]))
        table.append(cells(name, "total", mine))
    return "\n".join(render_table(("SLICE", _BUCKET_HEADER[by], *TABLE_HEADER), table))

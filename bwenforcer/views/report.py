"""The ``report`` view: usage history rows as JSON objects (and CSV columns) and as a table.

One table of columns, JSON key → :class:`~bwenforcer.history.usage.ReportRow` field, gives
the ``--json`` keys, the ``--csv`` header and the hourly history ``show`` prints.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import tempfile
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
    "in_default_bytes": "in_default_bytes",
    "in_exempt_bytes": "in_exempt_bytes",
}
# the keys of today's report; with inbound accounting on, the bytes received too
JSON_KEYS = tuple(_FIELDS)[:-2]
INBOUND_KEYS = tuple(_FIELDS)


def row_json(row: ReportRow, keys: Sequence[str] = JSON_KEYS) -> dict[str, Any]:
    """A report row as the documented ``--json`` object (and ``--csv`` columns), or its ``keys``."""
    return {key: getattr(row, _FIELDS[key]) for key in keys}


_BUCKET_FORMAT = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}
_BUCKET_HEADER = {"hour": "HOUR (UTC)", "day": "DAY (UTC)", "month": "MONTH (UTC)"}
TABLE_HEADER = ("DEFAULT", "EXEMPT", "PEAK HOUR", "CAPPED DEFAULT", "CAPPED EXEMPT")
INBOUND_HEADER = ("RECEIVED DEFAULT", "RECEIVED EXEMPT")  # with inbound accounting on


def _capped(seconds: int) -> str:
    return human_duration(seconds) if seconds else "-"


def _bucket_label(by: str) -> Callable[[int], str]:
    """A bucket's label from its start, remembered (slices share their buckets)."""

    @functools.lru_cache(maxsize=8192)
    def label(start_s: int) -> str:
        return dt.datetime.fromtimestamp(start_s, dt.UTC).strftime(_BUCKET_FORMAT[by])

    return label


def slice_table_rows(
    rows: Sequence[ReportRow],
    by: str,
    label: Callable[[int], str] | None = None,
    inbound: bool = False,
) -> list[tuple[str, ...]]:
    """One slice's table lines (``rows`` are all its buckets): one per bucket, then its
    total; with ``inbound``, the bytes received follow.
    """
    if inbound:
        plain = slice_table_rows(rows, by, label)
        received = [(r.in_default_bytes, r.in_exempt_bytes) for r in rows]
        received.append((sum(d for d, _ in received), sum(e for _, e in received)))
        return [
            (*cells, human_size(d), human_size(e))
            for cells, (d, e) in zip(plain, received, strict=True)
        ]
    label = label or _bucket_label(by)
    capped = functools.lru_cache(maxsize=1024)(_capped)  # capped times repeat: whole cycles
    name = rows[0].slice_name
    table = []
    default = exempt = peak = capped_d = capped_e = 0
    for r in rows:
        default += r.default_bytes
        exempt += r.exempt_bytes
        peak = max(peak, r.peak_hour_bytes)
        capped_d += r.capped_default_s
        capped_e += r.capped_exempt_s
        table.append((
            name,
            label(r.bucket_start_s),
            human_size(r.default_bytes),
            human_size(r.exempt_bytes),
            human_size(r.peak_hour_bytes),
            capped(r.capped_default_s),
            capped(r.capped_exempt_s),
        ))  # fmt: skip
    table.append((
        name,
        "total",
        human_size(default),
        human_size(exempt),
        human_size(peak),
        _capped(capped_d),
        _capped(capped_e),
    ))  # fmt: skip
    return table


def report_table(rows: Sequence[ReportRow], by: str, inbound: bool = False) -> str:
    """Readable table: one line per slice per bucket, then a total line per slice."""
    names = sorted({r.slice_name for r in rows})
    groups = [[r for r in rows if r.slice_name == name] for name in names]
    return "\n".join(table_lines(groups, by, inbound))


_SEP = "\x1f"  # between the cells of a spooled line; the slice's name is spooled apart


def table_lines(
    groups: Iterable[Sequence[ReportRow]], by: str, inbound: bool = False
) -> Iterator[str]:
    """The lines of :func:`report_table`, as each slice's rows come from ``groups`` (in
    name order). The columns' widths are known only at the end: the formatted cells
    are spooled to a temporary file meanwhile, so memory is one slice's rows however
    long the report. Nothing if there are no rows.
    """
    header = ("SLICE", _BUCKET_HEADER[by], *TABLE_HEADER, *(INBOUND_HEADER if inbound else ()))
    widths = [len(cell) for cell in header]
    label = _bucket_label(by)
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as spool:
        for rows in groups:
            table = slice_table_rows(rows, by, label, inbound)
            spool.write(json.dumps(rows[0].slice_name) + "\n")
            for cells in table:
                spool.write(_SEP.join(cells[1:]) + "\n")
            spool.write(_SEP + "\n")  # the slice's end
            widths[0] = max(widths[0], len(rows[0].slice_name))
            for i, column in enumerate(zip(*table, strict=True)):
                if i:
                    widths[i] = max(widths[i], *map(len, column))
        if spool.tell() == 0:
            return
        layout = COLUMN_GAP.join(f"{{:<{w}}}" for w in widths)

        def line(cells: Sequence[str]) -> str:
            return layout.format(*cells).rstrip()

        yield line(header)
        spool.seek(0)
        name = None
        for text in spool:
            if name is None:
                name = json.loads(text)
            elif text == _SEP + "\n":
                name = None
            else:
                yield line((name, *text[:-1].split(_SEP)))


def json_chunks(rows: Iterable[ReportRow], json_keys: Sequence[str] = JSON_KEYS) -> Iterator[str]:
    """``json.dump([row_json(r) for r in rows], indent=2)``'s text, streamed row by row.

    Each object is laid out from a template (its keys are fixed; only the slice
    name needs JSON's escaping, done once per slice): a report can be millions of rows.
    """
    keys = [(key, _FIELDS[key]) for key in json_keys]
    opening = "[\n  {\n"
    name, quoted = None, ""
    for row in rows:
        if row.slice_name != name:
            name, quoted = row.slice_name, json.dumps(row.slice_name)
        values = []
        for key, field in keys:
            value = getattr(row, field)
            if key == "slice":
                text = quoted
            elif isinstance(value, int):
                text = str(value)
            else:
                text = json.dumps(value)
            values.append(f'    "{key}": {text}')
        yield opening + ",\n".join(values) + "\n  }"
        opening = ",\n  {\n"
    yield "[]" if opening.startswith("[") else "\n]"

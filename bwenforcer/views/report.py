"""The ``report`` view: usage history rows as JSON objects (and CSV columns) and as a table.

One table of columns, JSON key → :class:`~bwenforcer.history.usage.ReportRow` field, gives
the ``--json`` keys, the ``--csv`` header and the hourly history ``show`` prints.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from bwenforcer.core.units import human_duration, human_size, size_namer
from bwenforcer.history.usage import bucket_start_s
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


def _key_label(by: str) -> Callable[[int], str]:
    """A bucket's label from its key, remembered (slices share their buckets)."""
    label = _bucket_label(by)

    @functools.lru_cache(maxsize=8192)
    def key_label(key: int) -> str:
        return label(bucket_start_s(by, key))  # type: ignore[arg-type]

    return key_label


def _slice_cells(
    rows: Sequence[Sequence[int]],
    label: Callable[[int], str],
    size: Callable[[int], str] = human_size,
    capped: Callable[[int], str] = _capped,
    inbound: bool = False,
) -> list[tuple[str, ...]]:
    """One slice's cells but its name: per bucket (its start and the figures of a
    :class:`~bwenforcer.history.usage.ReportRow`: five, and with ``inbound`` the two
    of the bytes received), then its total.
    """
    table = [
        (label(row[0]), size(row[1]), size(row[2]), size(row[3]), capped(row[4]),
         capped(row[5]))
        for row in rows
    ]  # fmt: skip
    columns = list(zip(*rows, strict=True))
    table.append((
        "total",
        human_size(sum(columns[1])),
        human_size(sum(columns[2])),
        human_size(max(columns[3])),
        _capped(sum(columns[4])),
        _capped(sum(columns[5])),
    ))  # fmt: skip
    if inbound:
        received = [(size(row[6]), size(row[7])) for row in rows]
        received.append((human_size(sum(columns[6])), human_size(sum(columns[7]))))
        table = [(*line, *more) for line, more in zip(table, received, strict=True)]
    return table


_BLOCK = "\x1e"  # starts a slice's block in the spool: its name, widths and length
_GAP = len(COLUMN_GAP)


def table_text(
    groups: Iterable[tuple[str, Sequence[Sequence[int]]]], by: str, inbound: bool = False
) -> Iterator[str]:
    """The report's table (a line per slice per bucket, then a total line per slice), in
    chunks of whole lines, of each slice's name
    and plain rows (bucket key, default, exempt, peak hour, capped default s,
    capped exempt s, then received default and exempt; at least one), in name order;
    with ``inbound``, the bytes received are two more columns.

    The columns' widths are known only at the end: each slice's lines are laid out
    (but for the name) at the widths known so far and spooled to a temporary file,
    so memory is one slice's rows however long the report; at the end a slice laid
    out at the final widths is printed as it was spooled (its name put before each
    line by one replace), and the few before the widths settled are laid out
    again. Capped times are formatted once per distinct value (they repeat: whole
    cycles), sizes once per range that prints alike (:func:`~.units.size_namer`).
    """
    return _table_chunks(groups, by, _key_label(by), inbound)


def _table_chunks(
    groups: Iterable[tuple[str, Sequence[Sequence[int]]]],
    by: str,
    label: Callable[[int], str],
    inbound: bool = False,
) -> Iterator[str]:
    header = ("SLICE", _BUCKET_HEADER[by], *TABLE_HEADER, *(INBOUND_HEADER if inbound else ()))
    widths = [len(cell) for cell in header]
    capped = functools.lru_cache(maxsize=1024)(_capped)
    size = size_namer()
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as spool:
        for name, rows in groups:
            table = _slice_cells(rows, label, size, capped, inbound)
            widths[0] = max(widths[0], len(name))
            for i, column in enumerate(zip(*table, strict=True), 1):
                widths[i] = max(widths[i], *map(len, column))
            # the last column is not padded: nothing to strip
            layout = COLUMN_GAP.join(f"{{:<{w}}}" for w in widths[1:-1]) + COLUMN_GAP + "{}"
            text = "\n".join([layout.format(*cells) for cells in table])
            spool.write(_BLOCK + json.dumps([name, len(text), *widths[1:]]) + "\n" + text)
        if spool.tell() == 0:
            return
        final = widths[1:]
        yield (
            COLUMN_GAP.join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip() + "\n"
        )
        spool.seek(0)
        while head := spool.readline():
            name, length, *used = json.loads(head[1:])
            text = spool.read(length)
            if used != final:
                text = "\n".join(_relaid(line, used, final) for line in text.split("\n"))
            prefix = "\n" + name.ljust(widths[0]) + COLUMN_GAP
            yield prefix[1:] + text.replace("\n", prefix) + "\n"


def _relaid(text: str, used: Sequence[int], final: Sequence[int]) -> str:
    """A spooled line laid out at the widths ``used`` laid out again at ``final``."""
    cells, at = [], 0
    for w in used[:-1]:
        cells.append(text[at : at + w].rstrip())
        at += w + _GAP
    cells.append(text[at:])
    return COLUMN_GAP.join(
        [c.ljust(w) for c, w in zip(cells[:-1], final, strict=False)] + [cells[-1]]
    )


# a ReportRow field's place in a plain row (bucket key first, then the seven figures)
_PLAIN_AT = {
    "default_bytes": 1,
    "exempt_bytes": 2,
    "peak_hour_bytes": 3,
    "capped_default_s": 4,
    "capped_exempt_s": 5,
    "in_default_bytes": 6,
    "in_exempt_bytes": 7,
}


def _row_fields(name_text: str, by: str, keys: Sequence[str]) -> list[str]:
    """A row's values as ``str.format`` fields of ``(bucket start, *plain row)``: the
    slice's name and the bucketing as the texts given (constant for a slice).
    """
    fields = []
    for key in keys:
        if key == "slice":
            fields.append(name_text.replace("{", "{{").replace("}", "}}"))
        elif key == "by":
            fields.append(by)
        elif key == "bucket_start":
            fields.append("{0}")
        else:
            fields.append(f"{{{_PLAIN_AT[_FIELDS[key]] + 1}}}")
    return fields


def json_text(
    groups: Iterable[tuple[str, Sequence[Sequence[int]]]],
    by: str,
    keys: Sequence[str] = JSON_KEYS,
) -> Iterator[str]:
    """``json.dump([row_json(r, keys) for r in rows], indent=2)``'s text, in chunks of
    whole objects (a slice's), of each slice's name and plain rows (as
    :func:`table_text` takes them).

    Each slice's objects are laid out from one template (the keys are fixed; only
    the name needs JSON's escaping): a report can be millions of rows.
    """
    start = functools.lru_cache(maxsize=8192)(functools.partial(bucket_start_s, by))
    opening = "[\n"
    for name, rows in groups:
        fields = _row_fields(json.dumps(name), json.dumps(by), keys)
        template = (
            "  {{\n"
            + ",\n".join(f'    "{key}": {field}' for key, field in zip(keys, fields, strict=True))
            + "\n  }}"
        )
        objects = ",\n".join([template.format(start(row[0]), *row) for row in rows])
        yield opening + objects
        opening = ",\n"
    yield "[]" if opening.startswith("[") else "\n]"


def csv_text(
    groups: Iterable[tuple[str, Sequence[Sequence[int]]]],
    by: str,
    keys: Sequence[str] = JSON_KEYS,
) -> Iterator[str]:
    """What ``csv.DictWriter`` (lines ending in "\\n") writes of the header ``keys`` and
    each row's :func:`row_json`, in chunks of whole lines (a slice's), of each slice's
    name and plain rows (as :func:`table_text` takes them).
    """
    start = functools.lru_cache(maxsize=8192)(functools.partial(bucket_start_s, by))
    yield _csv_line(keys)
    for name, rows in groups:
        template = ",".join(_row_fields(_csv_line([name])[:-1], _csv_line([by])[:-1], keys))
        yield "\n".join([template.format(start(row[0]), *row) for row in rows]) + "\n"


def _csv_line(cells: Sequence[str]) -> str:
    """One CSV line of ``cells``, quoted as the csv module quotes them."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()

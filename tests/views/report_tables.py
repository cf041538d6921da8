"""The report table of ReportRow objects, for tests: one slice's cells laid out alone,
and the streamed table's lines of rows given as objects (the command streams plain rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from bwenforcer.history.usage import ReportRow
from bwenforcer.views.report import _bucket_label, _slice_cells, _table_chunks


def _plain(rows: Sequence[ReportRow]) -> list[tuple[int, ...]]:
    return [(r.bucket_start_s, r.default_bytes, r.exempt_bytes, r.peak_hour_bytes,
             r.capped_default_s, r.capped_exempt_s, r.in_default_bytes, r.in_exempt_bytes)
            for r in rows]  # fmt: skip


def slice_table_rows(
    rows: Sequence[ReportRow], by: str, inbound: bool = False
) -> list[tuple[str, ...]]:
    """One slice's table lines (``rows`` are all its buckets): one per bucket, then its
    total; with ``inbound``, the bytes received follow.
    """
    cells = _slice_cells(_plain(rows), _bucket_label(by), inbound=inbound)
    return [(rows[0].slice_name, *line) for line in cells]


def table_lines(
    groups: Iterable[Sequence[ReportRow]], by: str, inbound: bool = False
) -> Iterator[str]:
    """The streamed table's lines, each slice's rows from ``groups`` (in name order)."""
    plain = ((rows[0].slice_name, _plain(rows)) for rows in groups)
    for chunk in _table_chunks(plain, by, _bucket_label(by), inbound):
        yield from chunk[:-1].split("\n")


def report_table(rows: Sequence[ReportRow], by: str, inbound: bool = False) -> str:
    """The whole table of ``rows`` (any order)."""
    names = sorted({r.slice_name for r in rows})
    return "\n".join(
        table_lines([[r for r in rows if r.slice_name == n] for n in names], by, inbound)
    )

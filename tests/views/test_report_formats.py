"""The streamed --json and --csv reports (templates filled per row) equal what the json
and csv modules write of the same rows' :func:`row_json`, for any slice name.
"""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.history.usage import ReportRow, bucket_start_s
from bwenforcer.views.report import INBOUND_KEYS, JSON_KEYS, csv_text, json_text, row_json

figure = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 5000), st.just(0))
slice_rows = st.lists(
    st.tuples(st.integers(0, 40_000), *[figure] * 7), min_size=1, max_size=5,
    unique_by=lambda row: row[0],
).map(sorted)  # fmt: skip
# names a template could trip on: braces, quotes, commas, escapes, non-ASCII
names = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=20),
    st.sampled_from(["pl_{0}", 'a"b', "x,y", "{}}{", "pl_départ", "back\\slash", "{by}"]),
)
groups = st.dictionaries(names, slice_rows, max_size=5).map(lambda d: sorted(d.items()))


def keyed(drawn: list[tuple[str, list[tuple[int, ...]]]], by: str) -> list[tuple[str, list]]:
    """Keys as drawn are hours or days since 1970; months from 1970 on."""
    shift = 1970 * 12 if by == "month" else 0
    return [(name, [(key + shift, *row) for key, *row in plain]) for name, plain in drawn]


def report_rows(drawn: list[tuple[str, list[tuple[int, ...]]]], by: str) -> list[ReportRow]:
    return [
        ReportRow(name, by, bucket_start_s(by, key), *figures)  # type: ignore[arg-type]
        for name, plain in drawn
        for key, *figures in plain
    ]


@settings(max_examples=300, deadline=None)
@given(
    groups, st.sampled_from(["hour", "day", "month"]), st.sampled_from([JSON_KEYS, INBOUND_KEYS])
)
def test_json_and_csv_texts_are_what_the_json_and_csv_modules_write(
    drawn: list[tuple[str, list[tuple[int, ...]]]], by: str, keys: tuple[str, ...]
) -> None:
    drawn = keyed(drawn, by)
    objects = [row_json(r, keys) for r in report_rows(drawn, by)]
    assert "".join(json_text(drawn, by, keys)) == json.dumps(objects, indent=2)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(objects)
    assert "".join(csv_text(drawn, by, keys)) == out.getvalue()

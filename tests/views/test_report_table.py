"""The report table, laid out as it streams, equals the one renderer's table of the
same rows: the columns' widths as they grow from slice to slice, and the slices laid
out before they settled laid out again.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.units import _SIZE_STEPS, _human, human_size
from bwenforcer.history.usage import DAY_S, HOUR_S, ReportRow, bucket_start_s
from bwenforcer.views.report import _BUCKET_HEADER, TABLE_HEADER, table_text
from bwenforcer.views.table import render_table
from tests.views.report_tables import slice_table_rows, table_lines

figure = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 5000), st.just(0))
capped = st.one_of(st.just(0), st.integers(1, 10**9), st.sampled_from([300, 600, 3600]))
slice_rows = st.lists(
    st.tuples(st.integers(0, 40_000), figure, figure, figure, capped, capped),
    min_size=1,
    max_size=6,
    unique_by=lambda row: row[0],
).map(sorted)
names = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=30)
groups = st.dictionaries(names, slice_rows, max_size=6).map(lambda d: sorted(d.items()))


@settings(max_examples=200, deadline=None)
@given(groups, st.sampled_from(["hour", "day", "month"]))
def test_streamed_table_equals_the_rendered_one(
    drawn: list[tuple[str, list[tuple[int, ...]]]], by: str
) -> None:
    # keys as drawn are days since 1970, or hours; months from 1970 on
    shift = 1970 * 12 if by == "month" else 0
    got = [(name, [(key + shift, *row) for key, *row in plain]) for name, plain in drawn]
    rows = [
        [ReportRow(name, by, bucket_start_s(by, key), *figures) for key, *figures in plain]  # type: ignore[arg-type]
        for name, plain in got
    ]
    cells = [cell for group in rows for cell in slice_table_rows(group, by)]
    expected = render_table(("SLICE", _BUCKET_HEADER[by], *TABLE_HEADER), cells) if cells else []
    assert list(table_lines(rows, by)) == expected
    text = "".join(table_text(got, by))
    assert text == "".join(line + "\n" for line in expected)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(0, 2**70), st.floats(0, 2.0**70, allow_nan=False)))
def test_human_size_is_the_rounding_of_every_unit(size: float) -> None:
    assert human_size(size) == _human(size, _SIZE_STEPS, "B")  # type: ignore[arg-type]


def test_human_size_at_the_edges_of_its_units() -> None:
    for factor, _ in _SIZE_STEPS:
        for size in (int(factor) - 1, int(factor), int(999.5 * factor) - 1, int(999.5 * factor),
                     int(999.5 * factor) + 1, int(1024 * factor) - 1):  # fmt: skip
            assert human_size(size) == _human(size, _SIZE_STEPS, "B")
    assert (human_size(1023), human_size(1024), human_size(999.6 * 2**30)) == (
        "1023B", "1KiB", "1000GiB"
    )  # fmt: skip
    assert (DAY_S, HOUR_S) == (86_400, 3_600)

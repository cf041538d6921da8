"""units: parsing, formatting, round-trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.units import (
    MAX_DURATION_S,
    MAX_RATE_BPS,
    MAX_SIZE_BYTES,
    format_duration,
    format_rate,
    format_size,
    human_duration,
    human_rate,
    human_size,
    parse_duration_s,
    parse_rate_bps,
    parse_size_bytes,
    size_namer,
)
from bwenforcer.errors import UnitError


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("10mbit", 10_000_000),
        ("10Mbit", 10_000_000),
        ("512kbit", 512_000),
        ("1.5mbit", 1_500_000),
        ("1gbit", 10**9),
        ("2tbit", 2 * 10**12),
        ("1kibit", 1024),
        ("1mibit", 2**20),
        ("100", 100),
        ("100bit", 100),
        ("1bps", 8),
        ("1kbps", 8000),
        ("1mbps", 8_000_000),
        ("1kibps", 8192),
        (" 3 mbit ", 3_000_000),
        (2000, 2000),
    ],
)
def test_parse_rate(text: object, bps: int) -> None:
    assert parse_rate_bps(text) == bps


@pytest.mark.parametrize(
    "bad", ["fast", "", "10 parsecs", "-1mbit", "1e3mbit", "mbit", None, True, -5, "1..2mbit"]
)
def test_parse_rate_rejects_with_value_in_message(bad: object) -> None:
    with pytest.raises(UnitError) as info:
        parse_rate_bps(bad)
    assert repr(bad) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("5.4GiB", int(5.4 * 2**30 + 0.5)),
        ("100MB", 10**8),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("7B", 7),
        ("4096", 4096),
        ("2TiB", 2 * 2**40),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size_bytes(text) == size


@pytest.mark.parametrize("bad", ["12 parsecs", "1mbit", "x", "-3KB"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(UnitError, match="is not a size"):
        parse_size_bytes(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("90", 90),
        ("1w", 604800),
        (45, 45),
    ],
)
def test_parse_duration(text: object, seconds: int) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "1y", "", "1h x", "-1s"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(UnitError, match="is not a duration"):
        parse_duration_s(bad)


@given(st.integers(min_value=0, max_value=MAX_RATE_BPS))
def test_rate_round_trip(bps: int) -> None:
    assert parse_rate_bps(format_rate(bps)) == bps


@given(st.integers(min_value=0, max_value=10**16))
def test_size_round_trip(size: int) -> None:
    assert parse_size_bytes(format_size(size)) == size


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration_s(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("parse", "text", "maximum", "shown"),
    [
        (parse_rate_bps, "10000000000001bit", MAX_RATE_BPS, "10tbit"),
        (parse_rate_bps, 10**30, MAX_RATE_BPS, "10tbit"),
        (parse_rate_bps, 1e30, MAX_RATE_BPS, "10tbit"),
        (parse_size_bytes, "1048577TiB", MAX_SIZE_BYTES, "1048576TiB"),
        (parse_size_bytes, 10**30, MAX_SIZE_BYTES, "1048576TiB"),
        (parse_duration_s, "100000000d", MAX_DURATION_S, "36525d"),
        (parse_duration_s, 10**30, MAX_DURATION_S, "36525d"),
    ],
)
def test_values_have_an_upper_bound(
    parse: Callable[[object], int], text: object, maximum: int, shown: str
) -> None:
    with pytest.raises(UnitError, match=f"is above the maximum {shown}") as caught:
        parse(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 100
    assert parse(maximum) == maximum  # the bound itself is allowed


def test_format_exact_examples() -> None:
    assert format_rate(2_000_000) == "2mbit"
    assert format_rate(1_500_000) == "1500kbit"
    assert format_size(5 * 2**30) == "5GiB"
    assert format_duration(5400) == "1h30m"


def test_human_forms() -> None:
    assert human_rate(1_500_000) == "1.5Mbit/s"
    assert human_size(5 * 2**30) == "5GiB"
    assert human_duration(3 * 3600 + 12 * 60 + 5) == "3h12m"
    assert human_duration(5) == "5s"


_UNITS = (2**10, 2**20, 2**30, 2**40)


@st.composite
def _near_rounding_edges(draw: st.DrawFn) -> int:
    """A size a few bytes from where human_size's text changes: x.xx5, xx.x5 or xxx.5
    of a unit, or the unit's own start.
    """
    unit = draw(st.sampled_from(_UNITS))
    digits = draw(st.integers(100, 1024))
    scale = draw(st.sampled_from((0.01, 0.1, 1.0)))
    edge = round((digits + 0.5) * scale * unit) if draw(st.booleans()) else unit
    return max(0, edge + draw(st.integers(-3, 3)))


@given(
    st.lists(st.one_of(_near_rounding_edges(), st.integers(0, MAX_SIZE_BYTES)), max_size=200),
    st.sampled_from((1, 3, 1 << 16)),
)
def test_size_namer_names_every_size_as_human_size(sizes: list[int], remembered: int) -> None:
    # in any order, with ranges remembered, forgotten and seen again
    name = size_namer(remembered)
    assert [name(n) for n in sizes * 2] == [human_size(n) for n in sizes * 2]


def test_size_namer_at_the_edges_of_its_ranges() -> None:
    name = size_namer()
    for unit in _UNITS:
        for n in (unit - 1, unit, unit + 1, 1023 * unit + unit // 2, 999 * unit + unit // 2):
            for m in (n - 1024, n - 1, n, n + 1, n + 1024):
                assert name(m) == human_size(m), m

"""The rate and budget rules of policy.py, on plain numbers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.layout import kernel_rate_bps
from bwenforcer.policy import (
    class_cap_bps,
    class_limits,
    threshold_bytes,
    uncapped_rates,
)

RATES = st.integers(min_value=0, max_value=10**13)
CAPS = st.integers(min_value=8_000, max_value=10**13)


def test_default_traffic_is_under_the_node_cap_exempt_under_the_line_rate() -> None:
    assert class_cap_bps("default", 10_000_000, 1_000_000_000) == 10_000_000
    assert class_cap_bps("exempt", 10_000_000, 1_000_000_000) == 1_000_000_000


def test_the_threshold_given_wins_else_the_default_else_80_percent() -> None:
    assert threshold_bytes(1000, 300, 900, limit_given=True) == 300
    assert threshold_bytes(1000, None, 900, limit_given=False) == 900
    # a default threshold belongs to the default limit: a limit given alone gets 80 %
    assert threshold_bytes(1000, None, 900, limit_given=True) == 800
    assert threshold_bytes(1000, None, None, limit_given=False) == 800
    assert threshold_bytes(1000, 5000, None, limit_given=True) == 1000  # never above


@given(RATES, RATES, st.integers(min_value=-5, max_value=10**6), CAPS)
def test_limits_keep_min_to_a_quarter_of_the_cap_max_to_the_cap(
    min_rate: int, max_rate: int, share: int, cap: int
) -> None:
    lo, hi, sh = class_limits(min_rate, max_rate, share, cap)
    assert lo <= cap // 4 and lo <= min_rate
    assert hi <= cap and hi <= max_rate
    assert sh >= 1 and (sh == share or share < 1)


@given(RATES, RATES, st.integers(min_value=1, max_value=10**6), CAPS, st.sampled_from([8, 8_000]))
def test_uncapped_rates_are_what_the_kernel_holds_and_ordered(
    min_rate: int, max_rate: int, share: int, cap: int, bwmin: int
) -> None:
    rate, ceil, sh = uncapped_rates(min_rate, max_rate, share, cap, bwmin)
    assert kernel_rate_bps(rate) == rate and kernel_rate_bps(ceil) == ceil
    assert kernel_rate_bps(bwmin) <= rate <= ceil
    assert ceil <= max(kernel_rate_bps(cap), kernel_rate_bps(bwmin))
    assert sh == share

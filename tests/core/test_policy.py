"""The rate and budget rules of policy.py, on plain numbers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.layout import kernel_rate_bps
from bwenforcer.core.model import ClassRates
from bwenforcer.core.policy import (
    class_cap_bps,
    class_limits,
    manual_rates,
    system_class_rates,
    threshold_bytes,
    tree_rates_bps,
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


CAP = 10_000_000
BWMIN = 8_000


def manual(
    base: ClassRates | None, lo: int | None, hi: int | None, share: int | None, cap: int = CAP
) -> ClassRates:
    return manual_rates(base, lo, hi, share, cap_bps=cap, bwmin_bps=BWMIN)


def test_manual_rates_clamp_like_bwlimit() -> None:
    assert manual(None, 90_000_000, 50_000_000, None) == ClassRates(CAP, CAP, 1)  # max ≤ cap
    assert manual(None, None, 5, None, cap=10**9) == ClassRates(BWMIN, BWMIN, 1)  # ≥ bwmin
    assert manual(None, None, 3_000_000, 3) == ClassRates(BWMIN, 3_000_000, 3)
    assert manual(None, None, None, -2).share == 1
    # whole bytes per second, as the kernel holds them
    assert manual(None, 8_005, 1_000_007, None) == ClassRates(8_000, 1_000_000, 1)


def test_manual_rates_keep_the_current_values_not_given() -> None:
    base = ClassRates(1_000_000, 3_000_000, 2)
    assert manual(base, None, None, None) == base
    assert manual(base, None, None, 4) == ClassRates(1_000_000, 3_000_000, 4)
    assert manual(base, 500_000, None, None) == ClassRates(500_000, 3_000_000, 2)
    # a current ceil above a lowered cap is clamped to it
    assert manual(base, None, None, None, cap=2_000_000) == ClassRates(1_000_000, 2_000_000, 2)


def test_a_new_class_gets_bwmin_to_its_class_cap() -> None:
    assert manual(None, None, None, None) == ClassRates(BWMIN, CAP, 1)


def test_system_classes_get_bwmin_to_their_class_cap() -> None:
    assert system_class_rates("default", CAP, 10**9, BWMIN) == ClassRates(BWMIN, CAP, 1)
    assert system_class_rates("exempt", CAP, 10**9, BWMIN) == ClassRates(BWMIN, 10**9, 1)
    assert system_class_rates("default", 4, 10**9, 1) == ClassRates(8, 8, 1)  # ≥ one byte/s


@given(
    st.none() | RATES,
    st.none() | RATES,
    st.none() | st.integers(min_value=-5, max_value=10**6),
    CAPS,
    st.sampled_from([8, 8_000]),
)
def test_manual_rates_are_what_the_kernel_holds_and_ordered(
    min_rate: int | None, max_rate: int | None, share: int | None, cap: int, bwmin: int
) -> None:
    rates = manual_rates(None, min_rate, max_rate, share, cap_bps=cap, bwmin_bps=bwmin)
    assert kernel_rate_bps(rates.min_rate_bps) == rates.min_rate_bps
    assert kernel_rate_bps(rates.max_rate_bps) == rates.max_rate_bps
    assert kernel_rate_bps(bwmin) <= rates.min_rate_bps <= rates.max_rate_bps
    assert rates.max_rate_bps <= max(kernel_rate_bps(cap), kernel_rate_bps(bwmin))
    assert rates.share >= 1
    assert (
        manual_rates(rates, None, None, None, cap_bps=cap, bwmin_bps=bwmin) == rates
    )  # idempotent


def test_the_line_rate_is_never_below_the_node_cap() -> None:
    assert tree_rates_bps(10_000_000, 1_000_000_000) == (10_000_000, 1_000_000_000)
    assert tree_rates_bps(20_000_000, 10_000_000) == (20_000_000, 20_000_000)

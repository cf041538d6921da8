"""Tiers and tapers (core/policy.py): parsing, the rule, the table, and the planner's ceil
being the table's (hypothesis)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.grants import counted_bytes
from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    SliceState,
    State,
)
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.core.policy import (
    Taper,
    Tier,
    capped_ceil_bps,
    ceil_table,
    clamp_rates,
    class_limits,
    format_share,
    lowers_ceil,
    parse_taper,
    parse_tiers,
    rate_rule,
    rule_ceil,
    table_usages,
    taper_text,
    tiers_text,
)
from tests.planner_data import BWMAX_BPS, BWMIN_BPS, CAP_BPS, T0, desired, snapshot

M = 1_000_000


def test_tiers_parse_to_shares_in_basis_points_and_back_to_canonical_text() -> None:
    tiers = parse_tiers(" 75% : 50mbit , 87.5%:10Mbit, 100%:2000kbit")
    assert tiers == (Tier(7500, 50 * M), Tier(8750, 10 * M), Tier(10_000, 2 * M))
    assert tiers_text(tiers) == "75%:50mbit,87.5%:10mbit,100%:2mbit"
    assert parse_tiers(tiers_text(tiers)) == tiers
    assert parse_tiers("") == parse_tiers("  ") == ()
    assert format_share(1) == "0.01%" and format_share(12_345) == "123.45%"


def test_a_taper_parses_and_prints_back() -> None:
    taper = parse_taper("75%-100%:2mbit")
    assert taper == Taper(7500, 10_000, 2 * M)
    assert taper_text(taper) == "75%-100%:2mbit" and taper_text(None) == ""
    assert parse_taper("") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("75%", "tier 1: '75%' is not SHARE:CEIL"),
        ("75:1mbit", "tier 1: '75' is not a share"),
        ("75%:fast", "tier 1: 'fast' is not a rate"),
        ("75%:0bit", "tier 1: a ceil must be above 0"),
        ("75%:1mbit,50%:1kbit", "tier 2: shares must rise"),
        ("50%:1mbit,75%:2mbit", "tier 2: a ceil above the tier before it would lift a cap"),
        ("1001%:1mbit", "is above 1000%"),
        ("75%:1mbit,", "tier 2: '' is not SHARE:CEIL"),
        (",".join(f"{i}%:1mbit" for i in range(1, 18)), "more than 16 tiers"),
    ],
)
def test_bad_tiers_are_one_line_naming_the_tier(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_tiers(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("75%:2mbit", "is not FROM-TO:CEIL"),
        ("100%-75%:2mbit", "the second share must be above the first"),
        ("75%-75%:2mbit", "the second share must be above the first"),
        ("75%-100%:x", "is not a rate"),
    ],
)
def test_bad_tapers_are_one_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_taper(text)


def _policy(limit: int = 1000 * M, tiers: str = "", taper: str = "", **kw: int) -> ClassPolicy:
    return ClassPolicy(
        limit,
        kw.get("threshold", limit * 8 // 10),
        kw.get("min_rate", BWMIN_BPS),
        kw.get("max_rate", 100 * M),
        1,
        tiers,
        taper,
    )


END = T0 + 10  # 10 s left at T0


def test_steps_apply_past_their_share_and_the_lowest_ceil_wins() -> None:
    rule = rate_rule(_policy(tiers="50%:50mbit,75%:20mbit"), 1000 * M, BWMIN_BPS)
    assert rule.start_bytes == 500 * M
    assert rule_ceil(rule, 499 * M, T0, END) == (BWMIN_BPS, 100 * M, "")
    assert rule_ceil(rule, 500 * M, T0, END) == (BWMIN_BPS, 50 * M, "tier 50%")
    assert rule_ceil(rule, 790 * M, T0, END) == (BWMIN_BPS, 20 * M, "tier 75%")
    # past the threshold pacing gives (1000 − 800) MB · 8 / 10 s = 160 Mbit/s, capped
    # at the max rate: the tier's 20 Mbit/s is lower
    assert rule_ceil(rule, 800 * M, T0, END) == (BWMIN_BPS, 20 * M, "tier 75%")
    # with 10 MB left, pacing gives 8 Mbit/s: lower than the tier
    assert rule_ceil(rule, 990 * M, T0, END) == (BWMIN_BPS, 8 * M, "pacing")


def test_a_taper_falls_linearly_from_the_max_rate_and_stays_at_its_end() -> None:
    rule = rate_rule(_policy(taper="50%-70%:20mbit", threshold=1000 * M), 1000 * M, BWMIN_BPS)
    assert rule_ceil(rule, 499 * M, T0, END)[1:] == (100 * M, "")
    assert rule_ceil(rule, 500 * M, T0, END)[1:] == (100 * M, "taper 50%-70%")
    assert rule_ceil(rule, 600 * M, T0, END)[1:] == (60 * M, "taper 50%-70%")
    assert rule_ceil(rule, 700 * M, T0, END)[1:] == (20 * M, "taper 50%-70%")
    assert rule_ceil(rule, 900 * M, T0, END)[1:] == (20 * M, "taper 50%-70%")


def test_without_tiers_or_taper_the_rule_is_todays_pacing() -> None:
    p = _policy()
    rule = rate_rule(p, CAP_BPS, BWMIN_BPS)
    lo, hi, _ = class_limits(p.min_rate_bps, p.max_rate_bps, p.share, CAP_BPS)
    for used in (0, 799 * M, 800 * M, 999 * M, 1000 * M, 2000 * M):
        rate, ceil, applies = rule_ceil(rule, used, T0, END)
        if used < p.threshold_bytes:
            assert (rate, ceil, applies) == (*clamp_rates(lo, hi, CAP_BPS, BWMIN_BPS), "")
        else:
            paced = capped_ceil_bps(
                used_bytes=used,
                limit_bytes=p.limit_bytes,
                now_s=T0,
                period_end_s=END,
                min_rate_bps=lo,
                max_rate_bps=hi,
            )
            assert (rate, ceil) == clamp_rates(lo, paced, CAP_BPS, BWMIN_BPS)
            assert applies == "pacing"


def test_the_table_has_a_row_where_each_rule_starts_and_at_the_limit() -> None:
    rule = rate_rule(
        _policy(tiers="75%:50mbit,100%:2mbit", taper="50%-60%:80mbit"), 1000 * M, BWMIN_BPS
    )
    used = table_usages(rule)
    assert used == tuple(m * M for m in (0, 500, 520, 540, 560, 580, 600, 750, 800, 1000))
    for point in (0, 500 * M, 600 * M, 750 * M, 800 * M, 1000 * M):
        assert point in used
    assert list(used) == sorted(set(used))
    rows = ceil_table(rule, used, T0, END)
    assert [r.used_bytes for r in rows] == list(used)
    assert rows[0].applies == "" and rows[-1].ceil_bps == rule_ceil(rule, 1000 * M, T0, END)[1]


# --- the planner's ceil is the table's ---------------------------------------------------

SHARES = st.integers(0, 20_000)
RATES = st.integers(1, 2 * CAP_BPS)


@st.composite
def tiers(draw: st.DrawFn) -> str:
    shares = sorted(draw(st.sets(SHARES, max_size=4)))
    ceils = sorted((draw(RATES) for _ in shares), reverse=True)
    return tiers_text(tuple(Tier(s, c) for s, c in zip(shares, ceils, strict=True)))


@st.composite
def tapers(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return ""
    low = draw(st.integers(0, 15_000))
    high = draw(st.integers(low + 1, 20_000))
    return taper_text(Taper(low, high, draw(RATES)))


@st.composite
def policies(draw: st.DrawFn, max_rate: int) -> ClassPolicy:
    limit = draw(st.integers(0, 10**12))
    tiers_, taper = draw(tiers()), draw(tapers())
    return ClassPolicy(
        limit,
        draw(st.integers(0, limit)),
        draw(st.integers(0, max_rate)),
        draw(st.integers(1, max_rate)),
        draw(st.integers(1, 10)),
        tiers_,
        taper,
        pacing=not (tiers_ or taper) or draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None)
@given(
    default=policies(CAP_BPS),
    exempt=policies(BWMAX_BPS),
    used=st.tuples(st.floats(0, 2.5), st.floats(0, 2.5)),
    elapsed=st.integers(0, 3 * 86_400),
    quiet=st.booleans(),
    window_s=st.sampled_from((0, 0, 3600, 7 * 86_400, 30 * 86_400)),
    rollover=st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)),
    later=st.tuples(st.floats(0, 2.5), st.floats(0, 2.5)),
)
def test_the_planners_ceil_is_the_policy_tables(
    default: ClassPolicy,
    exempt: ClassPolicy,
    used: tuple[float, float],
    elapsed: int,
    quiet: bool,
    window_s: int,
    rollover: tuple[int, int],
    later: tuple[float, float],
) -> None:
    """Also under a rolling window (core/window.py): the table's time left is the
    slice's period end, there the end of its current bucket. Under a period with a
    rollover, a period later: the table at the usage less the bytes carried over.
    """
    params = PlanParams(86_400, None, BWMIN_BPS)
    if window_s:
        rollover = (0, 0)  # refused by the inputs: a window has no period end
    default = dataclasses.replace(default, window_s=window_s, rollover_bytes=rollover[0])
    exempt = dataclasses.replace(exempt, window_s=window_s, rollover_bytes=rollover[1])
    want = DesiredSlice("pl_a", 10, default, exempt)
    first = plan(desired(want), snapshot(), State(), params, T0)
    counters = [int(p.limit_bytes * f) for p, f in zip((default, exempt), used, strict=True)]
    kernel = KernelSlice(
        10,
        KernelClass(ClassRates(1, 1, 1), counters[0]),
        KernelClass(ClassRates(1, 1, 1), counters[1]),
    )
    now = T0 + elapsed
    second = plan(desired(want), snapshot(kernel), first.state, params, now, quiet=quiet)
    _check_table(second.state.slices[10], now)
    policies_ = (default, exempt)
    sent = [c + int(p.limit_bytes * f) for c, p, f in zip(counters, policies_, later, strict=True)]
    kernel = KernelSlice(
        10,
        KernelClass(ClassRates(1, 1, 1), sent[0]),
        KernelClass(ClassRates(1, 1, 1), sent[1]),
    )
    now += 86_400 + 60  # the next period (or bucket): what the last one left rolls over
    third = plan(desired(want), snapshot(kernel), second.state, params, now, quiet=quiet)
    _check_table(third.state.slices[10], now)


def _check_table(st_: SliceState, now: int) -> None:
    for tc, cap in (("default", CAP_BPS), ("exempt", BWMAX_BPS)):
        cs = st_.cls(tc)
        assert 0 <= cs.carried_bytes <= cs.policy.rollover_bytes
        rule = rate_rule(cs.policy, cap, BWMIN_BPS)
        counted = counted_bytes(cs.used_bytes, cs.carried_bytes)
        (row,) = ceil_table(rule, (counted,), now, st_.period_end_s)
        assert cs.ceil_bps == row.ceil_bps
        assert cs.capped == bool(row.applies)


def test_a_tier_caps_below_the_threshold_and_the_quiet_path_agrees() -> None:
    """A class past a tier but under its threshold is capped, also by the quiet path."""
    params = PlanParams(86_400, None, BWMIN_BPS)
    p = dataclasses.replace(_policy(limit=10 * M, max_rate=CAP_BPS), tiers="50%:1mbit")
    want = DesiredSlice("pl_a", 10, p, _policy(max_rate=BWMAX_BPS))
    first = plan(desired(want), snapshot(), State(), params, T0)
    kernel = KernelSlice(10, KernelClass(ClassRates(1, 1, 1), 6 * M), None)
    second = plan(desired(want), snapshot(kernel), first.state, params, T0 + 60)
    cs = second.state.slices[10].default
    assert cs.used_bytes == 6 * M < p.threshold_bytes
    assert cs.capped and cs.ceil_bps == 1 * M


def test_a_slice_past_a_tier_is_never_taken_for_quiet() -> None:
    """Usage past a tier, saved as not capped (an older version, an edit), counters
    unchanged: the quiet shortcut must not keep the full rate (it plans as the long way).
    """
    params = PlanParams(86_400, None, BWMIN_BPS)
    p = dataclasses.replace(_policy(limit=10 * M, max_rate=CAP_BPS), tiers="50%:1mbit")
    want = DesiredSlice("pl_a", 10, p, _policy(max_rate=BWMAX_BPS))
    first = plan(desired(want), snapshot(), State(), params, T0)
    st_ = first.state.slices[10]
    st_ = dataclasses.replace(st_, default=dataclasses.replace(st_.default, used_bytes=6 * M))
    state = dataclasses.replace(first.state, slices={10: st_})
    rates = {a.traffic_class: a.rates for a in first.actions if hasattr(a, "rates")}
    kernel = KernelSlice(10, KernelClass(rates["default"], 0), KernelClass(rates["exempt"], 0))
    quick = plan(desired(want), snapshot(kernel), state, params, T0 + 60)
    assert quick == plan(desired(want), snapshot(kernel), state, params, T0 + 60, quiet=False)
    assert quick.state.slices[10].default.ceil_bps == 1 * M


def test_pacing_off_lets_the_tiers_alone_hold_past_the_limit() -> None:
    paced = rate_rule(_policy(tiers="75%:50mbit,100%:2mbit"), 1000 * M, BWMIN_BPS)
    tiers_only = rate_rule(
        dataclasses.replace(_policy(tiers="75%:50mbit,100%:2mbit"), pacing=False),
        1000 * M,
        BWMIN_BPS,
    )
    # the budget gone: pacing gives the min rate, below the 2 Mbit/s tier
    assert rule_ceil(paced, 1200 * M, T0, END)[1:] == (BWMIN_BPS, "pacing")
    assert rule_ceil(tiers_only, 1200 * M, T0, END)[1:] == (2 * M, "tier 100%")
    assert rule_ceil(tiers_only, 900 * M, T0, END)[1:] == (50 * M, "tier 75%")
    assert tiers_only.start_bytes == 750 * M


def test_pacing_off_without_tiers_or_taper_still_paces() -> None:
    """A hand-edited state may say so; a class is never left uncapped for it."""
    rule = rate_rule(dataclasses.replace(_policy(), pacing=False), 1000 * M, BWMIN_BPS)
    assert rule.pacing and rule.start_bytes == 800 * M
    assert rule_ceil(rule, 1000 * M, T0, END)[1:] == (BWMIN_BPS, "pacing")


@pytest.mark.parametrize(
    ("tiers", "taper", "cap_bps"),
    [
        ("75%:200mbit", "", 1000 * M),  # above the 100 Mbit/s max rate
        ("", "50%-90%:100mbit", 1000 * M),  # ends at the max rate
        ("75%:50mbit", "", 40 * M),  # below the max rate, not below a lower class cap
    ],
)
def test_pacing_off_with_a_rule_that_never_lowers_the_ceil_still_paces(
    tiers: str, taper: str, cap_bps: int
) -> None:
    """A state saved before the config refused it, or a class cap below what the config
    saw: such a tier or taper caps nothing, and the class is paced as if it said nothing.
    """
    policy = dataclasses.replace(_policy(tiers=tiers, taper=taper), pacing=False)
    rule = rate_rule(policy, cap_bps, BWMIN_BPS)
    assert rule.pacing and rule.start_bytes <= 800 * M
    assert rule_ceil(rule, 1000 * M, T0, END)[1:] == (BWMIN_BPS, "pacing")
    assert not lowers_ceil(tiers, taper, 100 * M, cap_bps, BWMIN_BPS)
    assert lowers_ceil("75%:50mbit", "", 100 * M, 1000 * M, BWMIN_BPS)

"""The budget and rate rules (docs/architecture.md, "Policy"): pure functions of plain numbers.

Every rule about a class's rates lives here and nowhere else: which cap a class
is under, the share of the cap a min rate may take, the default threshold, the
rates of an uncapped and of a capped class. The planner, the operator views,
the slice sources, the legacy importer and ``tc`` all call these.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from bwenforcer.core.layout import TrafficClass, kernel_rate_bps
from bwenforcer.core.model import ClassPolicy, ClassRates, fast_init
from bwenforcer.core.units import format_rate, parse_rate_bps
from bwenforcer.errors import UnitError

MIN_RATE_SHARE_OF_CAP = 4  # a class's min rate is at most 25 % of its cap
THRESHOLD_PERCENT = 80  # threshold when none is given: 80 % of the limit


def class_cap_bps(traffic_class: TrafficClass, node_cap_bps: int, bwmax_bps: int) -> int:
    """The ceiling a slice class lives under: the node cap for default traffic, the
    line rate (bwmax) for exempt traffic (HTB parents 1:100 and 1:20).
    """
    return node_cap_bps if traffic_class == "default" else bwmax_bps


def tree_rates_bps(node_cap_bps: int, bwmax_bps: int) -> tuple[int, int]:
    """``(node cap, line rate)`` of the tree: the line rate (bwmax) is never below the
    node cap (raised to it, as bwlimit did).
    """
    return node_cap_bps, max(bwmax_bps, node_cap_bps)


def threshold_bytes(
    limit_bytes: int, given_bytes: int | None, default_bytes: int | None, limit_given: bool
) -> int:
    """A class's threshold: the one given; else the configured default, unless the
    limit was given without one (a default threshold belongs to the default limit);
    else 80 % of the limit. Never above the limit.
    """
    if given_bytes is not None:
        threshold = given_bytes
    elif default_bytes is not None and not limit_given:
        threshold = default_bytes
    else:
        threshold = limit_bytes * THRESHOLD_PERCENT // 100
    return min(threshold, limit_bytes)


def class_limits(
    min_rate_bps: int, max_rate_bps: int, share: int, cap_bps: int
) -> tuple[int, int, int]:
    """``(min rate, max rate, share)`` a policy may have under its class cap: the min
    rate at most a quarter of the cap, the max rate at most the cap, a share ≥ 1.
    """
    return (
        min(min_rate_bps, cap_bps // MIN_RATE_SHARE_OF_CAP),
        min(max_rate_bps, cap_bps),
        max(1, share),
    )


def uncapped_rates(
    min_rate_bps: int, max_rate_bps: int, share: int, cap_bps: int, bwmin_bps: int
) -> tuple[int, int, int]:
    """``(rate, ceil, share)`` of a class that is not capped, as the kernel holds them."""
    lo, hi, share = class_limits(min_rate_bps, max_rate_bps, share, cap_bps)
    return (*clamp_rates(lo, hi, cap_bps, bwmin_bps), share)


def clamp_rates(
    min_rate_bps: int, max_rate_bps: int, cap_bps: int, bwmin_bps: int
) -> tuple[int, int]:
    """Clamp a class's (rate, ceil) like bwlimit: ceil ≤ cap, rate ≤ ceil, both ≥ bwmin.

    The result is what the kernel will hold (whole bytes per second).
    """
    floor_bps = kernel_rate_bps(max(bwmin_bps, 8))
    ceil_bps = max(floor_bps, kernel_rate_bps(min(max_rate_bps, cap_bps)))
    rate_bps = max(floor_bps, kernel_rate_bps(min(min_rate_bps, ceil_bps)))
    return rate_bps, ceil_bps


def capped_ceil_bps(
    *,
    used_bytes: int,
    limit_bytes: int,
    now_s: int,
    period_end_s: int,
    min_rate_bps: int,
    max_rate_bps: int,
) -> int:
    """Ceil that spreads the rest of the budget over the rest of the period.

    ``max(min_rate, (limit − used)·8 / (period_end − now))``, never above the max
    rate. Safe where the historic formula was not: no time left (division by
    zero) and a budget already overdrawn (negative rate) both give the min rate.
    """
    left_s = period_end_s - now_s
    left_bytes = limit_bytes - used_bytes
    if left_s <= 0 or left_bytes <= 0:
        return min(min_rate_bps, max_rate_bps)
    spread_bps = (left_bytes * 8) // left_s
    return min(max_rate_bps, max(min_rate_bps, spread_bps))


def counter_delta(counter_bytes: int, last_counter_bytes: int) -> int:
    """Bytes sent since the last reading; a counter that went back restarted from 0."""
    if counter_bytes >= last_counter_bytes:
        return counter_bytes - last_counter_bytes
    return counter_bytes


def manual_rates(
    base: ClassRates | None,
    min_rate_bps: int | None,
    max_rate_bps: int | None,
    share: int | None,
    *,
    cap_bps: int,
    bwmin_bps: int,
) -> ClassRates:
    """A class's rates as ``tc on`` sets them: each value given replaces ``base``'s (the
    class's current rates; for a new class bwmin, the cap, share 1), then clamped like
    bwlimit under the class cap ``cap_bps``; a share is at least 1.
    """
    if base is None:
        base = ClassRates(bwmin_bps, cap_bps, 1)
    rate_bps, ceil_bps = clamp_rates(
        base.min_rate_bps if min_rate_bps is None else min_rate_bps,
        base.max_rate_bps if max_rate_bps is None else max_rate_bps,
        cap_bps,
        bwmin_bps,
    )
    return ClassRates(rate_bps, ceil_bps, base.share if share is None else max(1, share))


def system_class_rates(
    traffic_class: TrafficClass, node_cap_bps: int, bwmax_bps: int, bwmin_bps: int
) -> ClassRates:
    """Rates of a class of the tree's own slices (root and default): bwmin guaranteed,
    the whole class cap as ceil, share 1.
    """
    cap_bps = class_cap_bps(traffic_class, node_cap_bps, bwmax_bps)
    return manual_rates(None, None, None, None, cap_bps=cap_bps, bwmin_bps=bwmin_bps)


# --- tiers and tapers ---------------------------------------------------------------
#
# A class's ceil follows up to three rules once its usage reaches them; the lowest
# ceil of those that apply is the one in force (docs/architecture.md "Policy"):
#
# - pacing, from the threshold: the rest of the budget over the rest of the period
#   (capped_ceil_bps, today's only rule);
# - tiers, steps "past P % of the limit: at most R": the step of the highest share
#   reached (shares rising, ceils falling);
# - a taper "P %–Q %: R": the ceil falls linearly from the max rate at P % of the
#   limit to R at Q %, and stays at R past Q %.
#
# A policy with tiers or a taper may turn pacing off (``pacing: false``): then "past
# 100 %: 2 Mbit/s" holds, where pacing would give the min rate once the budget is gone.
#
# Shares are in basis points (1/100 of a percent) of the limit. A policy names its
# tiers and taper by their canonical text ("" = none), which is what the state file
# keeps: parse_tiers(tiers_text(t)) == t.

MAX_SHARE_BP = 100_000  # 1000 % of the limit: a share beyond it is a typo
MAX_TIERS = 16
_PERCENT = re.compile(r"^\s*(\d{1,4}(?:\.\d{1,2})?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Tier:
    """Past ``share_bp`` of the limit, the ceil is at most ``ceil_bps``."""

    share_bp: int
    ceil_bps: int


@dataclass(frozen=True, slots=True)
class Taper:
    """From ``from_bp`` to ``to_bp`` of the limit the ceil falls linearly from the max
    rate to ``ceil_bps``, and stays there past ``to_bp``.
    """

    from_bp: int
    to_bp: int
    ceil_bps: int


def _share_bp(text: str, where: str) -> int:
    match = _PERCENT.match(text)
    if not match:
        raise ValueError(f"{where}: {text.strip()!r} is not a share such as 75% or 87.5%")
    share_bp = int(Decimal(match.group(1)) * 100)
    if share_bp > MAX_SHARE_BP:
        raise ValueError(f"{where}: {text.strip()!r} is above {MAX_SHARE_BP // 100}%")
    return share_bp


def _rate(text: str, where: str) -> int:
    try:
        rate_bps = parse_rate_bps(text.strip())
    except UnitError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if rate_bps <= 0:
        raise ValueError(f"{where}: a ceil must be above 0")
    return rate_bps


def format_share(share_bp: int) -> str:
    """A share in basis points as the percent tiers and tapers are written in."""
    whole, part = divmod(share_bp, 100)
    return f"{whole}%" if not part else f"{whole}.{part:02d}".rstrip("0") + "%"


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """Tiers from ``"75%:50mbit, 100%:2mbit"`` ("" = none). ValueError, one line, if bad:
    shares must rise and ceils must not (more usage never raises the ceil).
    """
    if len(text) > 1024:
        raise ValueError("tiers: longer than 1024 characters")
    if not text.strip():
        return ()
    tiers: list[Tier] = []
    for n, item in enumerate(text.split(",")):
        share, sep, rate = item.partition(":")
        where = f"tier {n + 1}"
        if not sep:
            raise ValueError(f"{where}: {item.strip()!r} is not SHARE:CEIL such as 75%:50mbit")
        tier = Tier(_share_bp(share, where), _rate(rate, where))
        if tiers and tier.share_bp <= tiers[-1].share_bp:
            raise ValueError(f"{where}: shares must rise ({format_share(tier.share_bp)})")
        if tiers and tier.ceil_bps > tiers[-1].ceil_bps:
            raise ValueError(f"{where}: a ceil above the tier before it would lift a cap")
        tiers.append(tier)
        if len(tiers) > MAX_TIERS:
            raise ValueError(f"more than {MAX_TIERS} tiers")
    return tuple(tiers)


def tiers_text(tiers: tuple[Tier, ...]) -> str:
    """The canonical text of tiers (what the state file keeps)."""
    return ",".join(f"{format_share(t.share_bp)}:{format_rate(t.ceil_bps)}" for t in tiers)


def parse_taper(text: str) -> Taper | None:
    """A taper from ``"75%-100%:2mbit"`` ("" = none). ValueError, one line, if bad."""
    if not text.strip():
        return None
    shares, sep, rate = text.partition(":")
    low, dash, high = shares.partition("-")
    if not sep or not dash:
        raise ValueError(f"taper: {text.strip()!r} is not FROM-TO:CEIL such as 75%-100%:2mbit")
    taper = Taper(_share_bp(low, "taper"), _share_bp(high, "taper"), _rate(rate, "taper"))
    if taper.to_bp <= taper.from_bp:
        raise ValueError(f"taper: {text.strip()!r}: the second share must be above the first")
    return taper


def taper_text(taper: Taper | None) -> str:
    """The canonical text of a taper (what the state file keeps)."""
    if taper is None:
        return ""
    return (
        f"{format_share(taper.from_bp)}-{format_share(taper.to_bp)}:{format_rate(taper.ceil_bps)}"
    )


# Thousands of slices share a handful of tier texts: each is parsed once.
_tiers_of = functools.lru_cache(maxsize=256)(parse_tiers)
_taper_of = functools.lru_cache(maxsize=256)(parse_taper)


def share_bytes(limit_bytes: int, share_bp: int) -> int:
    """Bytes of a share of the limit (rounded down: a step is reached no later)."""
    return limit_bytes * share_bp // 10_000


@fast_init
@dataclass(frozen=True, slots=True)
class RateRule:
    """Everything a class's rates follow under one policy and class cap, worked out once.

    ``start_bytes`` is the usage from which some rule lowers the ceil: below it the
    class is not capped and has its ``uncapped`` rates.
    """

    limit_bytes: int
    threshold_bytes: int
    min_rate_bps: int  # after class_limits
    max_rate_bps: int
    share: int
    cap_bps: int
    bwmin_bps: int
    pacing: bool  # False: tiers and taper alone
    tiers: tuple[tuple[int, Tier], ...]  # (bytes where it starts, tier)
    taper: tuple[int, int, Taper] | None  # (from bytes, to bytes, taper)
    start_bytes: int
    uncapped: tuple[int, int]  # (rate, ceil)


def rate_rule(policy: ClassPolicy, cap_bps: int, bwmin_bps: int) -> RateRule:
    """The rule of a class under ``policy`` whose class cap is ``cap_bps``.

    The policy's tiers and taper texts were checked where they came from (config,
    slices, state file); a bad one here is a ValueError.
    """
    min_rate, max_rate, share = class_limits(
        policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps
    )
    limit = policy.limit_bytes
    uncapped = clamp_rates(min_rate, max_rate, cap_bps, bwmin_bps)
    if not policy.tiers and not policy.taper:  # today's pacing alone: most policies
        threshold = policy.threshold_bytes
        args = (limit, threshold, min_rate, max_rate, share, cap_bps, bwmin_bps, True)
        return RateRule(*args, (), None, threshold, uncapped)
    tiers: tuple[tuple[int, Tier], ...] = ()
    taper = None
    if policy.tiers:
        tiers = tuple((share_bytes(limit, t.share_bp), t) for t in _tiers_of(policy.tiers))
    if policy.taper:
        parsed = _taper_of(policy.taper)
        assert parsed is not None
        taper = (share_bytes(limit, parsed.from_bp), share_bytes(limit, parsed.to_bp), parsed)
    starts = []
    if tiers:
        starts.append(tiers[0][0])
    if taper is not None:
        starts.append(taper[0])
    # pacing off needs a tier or a taper that lowers the ceil (checked where policies
    # come from); a policy without one paces, whatever it says (a state file's, or a
    # class cap below what the config saw): no policy may leave a class uncapped
    pacing = (
        policy.pacing
        or not starts
        or not lowers_ceil(policy.tiers, policy.taper, max_rate, cap_bps, bwmin_bps)
    )
    if pacing:
        starts.append(policy.threshold_bytes)
    return RateRule(
        limit_bytes=limit,
        threshold_bytes=policy.threshold_bytes,
        min_rate_bps=min_rate,
        max_rate_bps=max_rate,
        share=share,
        cap_bps=cap_bps,
        bwmin_bps=bwmin_bps,
        pacing=pacing,
        tiers=tiers,
        taper=taper,
        start_bytes=min(starts),
        uncapped=uncapped,
    )


def lowers_ceil(tiers: str, taper: str, max_rate_bps: int, cap_bps: int, bwmin_bps: int) -> bool:
    """Whether a tier or the taper (canonical texts) ever sets a ceil below the max rate
    of a class under ``cap_bps``, once clamped as the kernel holds it. Pacing off needs
    one that does: a tier of 2 Gbit/s under a 1 Gbit/s max rate caps nothing.
    """
    _, top_bps = clamp_rates(0, max_rate_bps, cap_bps, bwmin_bps)
    ceils = [t.ceil_bps for t in _tiers_of(tiers)] if tiers else []
    parsed = _taper_of(taper) if taper else None
    if parsed is not None:
        ceils.append(parsed.ceil_bps)
    return any(clamp_rates(0, c, cap_bps, bwmin_bps)[1] < top_bps for c in ceils)


def _taper_ceil_bps(taper: tuple[int, int, Taper], max_rate_bps: int, used_bytes: int) -> int:
    from_bytes, to_bytes, t = taper
    end_bps = min(t.ceil_bps, max_rate_bps)
    if used_bytes >= to_bytes:
        return end_bps
    # linear from the max rate at from_bytes to end_bps at to_bytes (to > from: a share
    # of a limit of 0 bytes is 0 for both, and then used ≥ to above)
    return max_rate_bps - (max_rate_bps - end_bps) * (used_bytes - from_bytes) // (
        to_bytes - from_bytes
    )


def rule_ceil(
    rule: RateRule, used_bytes: int, now_s: int, period_end_s: int
) -> tuple[int, int, str]:
    """``(rate, ceil, applies)`` of a class with ``used_bytes`` at ``now_s``: the rates the
    kernel should hold (clamped like bwlimit) and which rule set the ceil: ``""`` (not
    capped), ``"pacing"``, ``"tier P%"`` or ``"taper P%-Q%"``. The lowest ceil of the rules
    reached wins; on a tie, the first of pacing, tier, taper.

    The planner's rates and ``bwenforcer policy``'s table both come from here.
    """
    if used_bytes < rule.start_bytes:
        return (*rule.uncapped, "")
    ceil_bps, applies = rule.max_rate_bps, ""
    if rule.pacing and used_bytes >= rule.threshold_bytes:
        ceil_bps = capped_ceil_bps(
            used_bytes=used_bytes,
            limit_bytes=rule.limit_bytes,
            now_s=now_s,
            period_end_s=period_end_s,
            min_rate_bps=rule.min_rate_bps,
            max_rate_bps=rule.max_rate_bps,
        )
        applies = "pacing"
    tier = None
    for start_bytes, t in rule.tiers:
        if used_bytes < start_bytes:
            break
        tier = t
    if tier is not None and (not applies or tier.ceil_bps < ceil_bps):
        ceil_bps, applies = tier.ceil_bps, f"tier {format_share(tier.share_bp)}"
    if rule.taper is not None and used_bytes >= rule.taper[0]:
        taper_bps = _taper_ceil_bps(rule.taper, rule.max_rate_bps, used_bytes)
        if not applies or taper_bps < ceil_bps:
            t = rule.taper[2]
            ceil_bps = taper_bps
            applies = f"taper {format_share(t.from_bp)}-{format_share(t.to_bp)}"
    rate_bps, ceil_bps = clamp_rates(rule.min_rate_bps, ceil_bps, rule.cap_bps, rule.bwmin_bps)
    return rate_bps, ceil_bps, applies


@dataclass(frozen=True, slots=True)
class CeilRow:
    """One row of a class's published policy: at ``used_bytes``, the kernel holds these."""

    used_bytes: int
    rate_bps: int
    ceil_bps: int
    applies: str  # as rule_ceil: "" (not capped), "pacing", "tier P%", "taper P%-Q%"


TAPER_ROWS = 4  # rows inside a taper, besides its ends


def table_usages(rule: RateRule) -> tuple[int, ...]:
    """The usages a policy table shows: 0, where each rule starts (threshold, each tier,
    the taper's ends and ``TAPER_ROWS`` points between), and the limit; rising.
    """
    points = {0, rule.threshold_bytes, rule.limit_bytes}
    points.update(start for start, _ in rule.tiers)
    if rule.taper is not None:
        low, high, _ = rule.taper
        points.update(low + (high - low) * i // (TAPER_ROWS + 1) for i in range(TAPER_ROWS + 2))
    return tuple(sorted(points))


def ceil_table(
    rule: RateRule, usages: tuple[int, ...], now_s: int, period_end_s: int
) -> tuple[CeilRow, ...]:
    """The rates of a class under ``rule`` at each of ``usages`` at ``now_s``: the table
    ``bwenforcer policy`` prints, from :func:`rule_ceil` as the planner's rates are.
    """
    return tuple(CeilRow(used, *rule_ceil(rule, used, now_s, period_end_s)) for used in usages)

"""Plain-data builders for planner tests."""

from __future__ import annotations

from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    DesiredSet,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
)
from bwenforcer.core.planner import PlanParams

CAP_BPS = 10_000_000
BWMAX_BPS = 1_000_000_000
BWMIN_BPS = 8_000
PERIOD_S = 86_400
PARAMS = PlanParams(period_s=PERIOD_S, anchor=None, bwmin_bps=BWMIN_BPS)
T0 = 1_763_800_000  # a fixed "now"


def policy(
    limit: int = 1_000_000,
    threshold: int | None = None,
    min_rate: int = BWMIN_BPS,
    max_rate: int = CAP_BPS,
    share: int = 1,
) -> ClassPolicy:
    """A class policy; threshold defaults to 80 % of the limit."""
    return ClassPolicy(
        limit, threshold if threshold is not None else limit * 8 // 10, min_rate, max_rate, share
    )


def want(
    name: str, xid: int, limit: int = 1_000_000, exempt_limit: int = 3_000_000
) -> DesiredSlice:
    """A desired slice with small budgets."""
    return DesiredSlice(name, xid, policy(limit), policy(exempt_limit, max_rate=BWMAX_BPS))


def desired(*slices: DesiredSlice, off: bool = False) -> DesiredSet:
    """A desired set."""
    return DesiredSet(tuple(slices), limiting_off=off)


def kclass(
    bytes_: int, max_rate: int = CAP_BPS, min_rate: int = BWMIN_BPS, share: int = 1
) -> KernelClass:
    """A kernel class."""
    return KernelClass(ClassRates(min_rate, max_rate, share), bytes_)


def kslice(xid: int, default_bytes: int = 0, exempt_bytes: int = 0, **kw: int) -> KernelSlice:
    """Both classes of an xid at full rate."""
    return KernelSlice(xid, kclass(default_bytes, **kw), kclass(exempt_bytes, max_rate=BWMAX_BPS))


def snapshot(*slices: KernelSlice) -> KernelSnapshot:
    """A kernel dump."""
    return KernelSnapshot(CAP_BPS, BWMAX_BPS, {s.xid: s for s in slices})

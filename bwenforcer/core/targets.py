"""The rates a class should have: the policy's rate rules, memoised for one plan.

Thousands of slices share a few policies, so the planner asks this for every
class of every cycle; each policy's limits are worked out once per plan.
"""

from __future__ import annotations

from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import ClassPolicy, ClassRates, KernelSnapshot
from bwenforcer.core.policy import (
    capped_ceil_bps,
    clamp_rates,
    class_cap_bps,
    class_limits,
    uncapped_rates,
)


class RateTargets:
    """The rates a class should have, memoised for one plan.

    Rates depend on the policy, the class cap and, for a capped class, the usage
    and the time left. Thousands of slices share a few policies: each policy's
    limits (and its uncapped rates) are worked out once, and equal rates share
    one ClassRates.
    """

    def __init__(self, snapshot: KernelSnapshot, bwmin_bps: int) -> None:
        self.caps = {
            tc: class_cap_bps(tc, snapshot.cap_bps, snapshot.bwmax_bps) for tc in TRAFFIC_CLASSES
        }
        self.bwmin_bps = bwmin_bps
        # class → id(policy) → (policy, min rate, max rate, share, uncapped rates); by id, as
        # hashing a policy costs more than the rest of a steady class's planning
        self._limits: dict[str, dict[int, tuple[ClassPolicy, int, int, int, ClassRates]]] = {
            tc: {} for tc in TRAFFIC_CLASSES
        }
        self._rates: dict[tuple[int, int, int], ClassRates] = {}

    def _limits_of(
        self, policy: ClassPolicy, traffic_class: TrafficClass
    ) -> tuple[ClassPolicy, int, int, int, ClassRates]:
        cap_bps = self.caps[traffic_class]
        min_rate, max_rate, share = class_limits(
            policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps
        )
        uncapped = self._shared(
            *uncapped_rates(
                policy.min_rate_bps, policy.max_rate_bps, policy.share, cap_bps, self.bwmin_bps
            )
        )
        limits = (policy, min_rate, max_rate, share, uncapped)
        self._limits[traffic_class][id(policy)] = limits
        return limits

    def _shared(self, rate_bps: int, ceil_bps: int, share: int) -> ClassRates:
        key = (rate_bps, ceil_bps, share)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = ClassRates(rate_bps, ceil_bps, share)
        return rates

    def _limits_for(
        self, policy: ClassPolicy, traffic_class: TrafficClass
    ) -> tuple[ClassPolicy, int, int, int, ClassRates]:
        limits = self._limits[traffic_class].get(id(policy))
        if limits is None or limits[0] is not policy:
            limits = self._limits_of(policy, traffic_class)
        return limits

    def uncapped(self, policy: ClassPolicy, traffic_class: TrafficClass) -> ClassRates:
        """The rates of a class under ``policy`` while it is not capped."""
        return self._limits_for(policy, traffic_class)[4]

    def rates(
        self,
        policy: ClassPolicy,
        traffic_class: TrafficClass,
        used_bytes: int,
        period_end_s: int,
        now_s: int,
    ) -> tuple[ClassRates, bool]:
        """``(rates, capped)`` of a class with ``used_bytes`` under ``policy`` at ``now_s``."""
        limits = self._limits_for(policy, traffic_class)
        if used_bytes < policy.threshold_bytes:
            return limits[4], False
        _, min_rate, max_rate, share, _ = limits
        ceil = capped_ceil_bps(
            used_bytes=used_bytes,
            limit_bytes=policy.limit_bytes,
            now_s=now_s,
            period_end_s=period_end_s,
            min_rate_bps=min_rate,
            max_rate_bps=max_rate,
        )
        return self._shared(
            *clamp_rates(min_rate, ceil, self.caps[traffic_class], self.bwmin_bps), share
        ), True

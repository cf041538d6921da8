"""The rates a class should have: the policy's rate rules, memoised for one plan.

Thousands of slices share a few policies, so the planner asks this for every
class of every cycle; each policy's rule is worked out once per plan.
"""

from __future__ import annotations

from bwenforcer.core.layout import TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.model import ClassPolicy, ClassRates, KernelSnapshot
from bwenforcer.core.notices import NO_NOTICES, NoticeRule, notice_rule
from bwenforcer.core.policy import RateRule, class_cap_bps, rate_rule, rule_ceil


class RateTargets:
    """The rates a class should have, memoised for one plan.

    Rates depend on the policy, the class cap and, for a capped class, the usage
    and the time left. Thousands of slices share a few policies: each policy's
    rule (:func:`~bwenforcer.core.policy.rate_rule`, with its uncapped rates) is
    worked out once, and equal rates share one ClassRates.
    """

    def __init__(self, snapshot: KernelSnapshot, bwmin_bps: int) -> None:
        self.caps = {
            tc: class_cap_bps(tc, snapshot.cap_bps, snapshot.bwmax_bps) for tc in TRAFFIC_CLASSES
        }
        self.bwmin_bps = bwmin_bps
        # class → id(policy) → (policy, rule, uncapped rates); by id, as hashing a policy
        # costs more than the rest of a steady class's planning
        self._rules: dict[str, dict[int, tuple[ClassPolicy, RateRule, ClassRates]]] = {
            tc: {} for tc in TRAFFIC_CLASSES
        }
        self._rates: dict[tuple[int, int, int], ClassRates] = {}
        self._notices: dict[int, tuple[ClassPolicy, NoticeRule]] = {}

    def _shared(self, rate_bps: int, ceil_bps: int, share: int) -> ClassRates:
        key = (rate_bps, ceil_bps, share)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = ClassRates(rate_bps, ceil_bps, share)
        return rates

    def _rule_for(
        self, policy: ClassPolicy, traffic_class: TrafficClass
    ) -> tuple[ClassPolicy, RateRule, ClassRates]:
        found = self._rules[traffic_class].get(id(policy))
        if found is None or found[0] is not policy:
            rule = rate_rule(policy, self.caps[traffic_class], self.bwmin_bps)
            found = (policy, rule, self._shared(*rule.uncapped, rule.share))
            self._rules[traffic_class][id(policy)] = found
        return found

    def notices(self, policy: ClassPolicy) -> NoticeRule:
        """The policy's early notices (core.notices), worked out once per policy."""
        if not policy.notices:
            return NO_NOTICES
        found = self._notices.get(id(policy))
        if found is None or found[0] is not policy:
            found = self._notices[id(policy)] = (
                policy,
                notice_rule(policy.notices, policy.limit_bytes),
            )
        return found[1]

    def limits(self, policy: ClassPolicy, traffic_class: TrafficClass) -> tuple[int, ClassRates]:
        """``(start, uncapped)``: the usage from which the class is capped, and its rates
        below it (the planner's idle-slice check, in one lookup).
        """
        _, rule, uncapped = self._rule_for(policy, traffic_class)
        return rule.start_bytes, uncapped

    def rates(
        self,
        policy: ClassPolicy,
        traffic_class: TrafficClass,
        used_bytes: int,
        period_end_s: int,
        now_s: int,
    ) -> tuple[ClassRates, bool]:
        """``(rates, capped)`` of a class with ``used_bytes`` under ``policy`` at ``now_s``
        (:func:`~bwenforcer.core.policy.rule_ceil`).
        """
        _, rule, uncapped = self._rule_for(policy, traffic_class)
        if used_bytes < rule.start_bytes:
            return uncapped, False
        rate_bps, ceil_bps, _ = rule_ceil(rule, used_bytes, now_s, period_end_s)
        return self._shared(rate_bps, ceil_bps, rule.share), True

"""Grants (core/grants.py and the planner): budget added for a while, and the audit."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from bwenforcer.core.grants import (
    AUDIT_KEEP_S,
    MAX_AUDIT,
    counted_bytes,
    granted_bytes,
    pruned,
)
from bwenforcer.core.model import AuditEntry, KernelSlice, State
from bwenforcer.core.planner import plan
from bwenforcer.core.policy import rate_rule, rule_ceil
from tests.planner_data import CAP_BPS, PARAMS, T0, desired, kclass, snapshot, want


def _grant(name: str, size: int, at_s: int, until_s: int, tc: str = "default") -> AuditEntry:
    return AuditEntry("grant", name, tc, size, "alice", at_s, until_s, "")  # type: ignore[arg-type]


def test_grants_in_force_add_up_per_slice_and_class() -> None:
    audit = (
        _grant("pl_a", 10, T0, T0 + 60),
        _grant("pl_a", 5, T0 - 10, T0 + 1),
        _grant("pl_a", 7, T0, T0 + 60, "exempt"),
        _grant("pl_a", 100, T0 + 1, T0 + 60),  # not yet
        _grant("pl_a", 100, T0 - 60, T0),  # over
        AuditEntry("reset", "pl_a", "default", 999, "bob", T0, T0),
    )
    assert granted_bytes(audit, T0) == {"pl_a": (15, 7)}
    assert counted_bytes(100, 15) == 85 and counted_bytes(10, 15) == 0


def _capped_state(used: int) -> tuple[State, int]:
    """pl_a (limit 1 MB, threshold 800 kB) after a cycle that counted ``used`` bytes."""
    w = want("pl_a", 1)
    first = plan(desired(w), snapshot(KernelSlice(1, kclass(0), kclass(0))), State(), PARAMS, T0)
    kernel = KernelSlice(1, kclass(used), kclass(0))
    second = plan(desired(w), snapshot(kernel), first.state, PARAMS, T0 + 60)
    return second.state, used


def test_a_grant_lifts_a_cap_in_the_next_plan_and_the_cap_returns_when_it_ends() -> None:
    state, used = _capped_state(900_000)
    assert state.slices[1].default.capped
    w = want("pl_a", 1)
    kernel = snapshot(KernelSlice(1, kclass(used), kclass(0)))
    granted = dataclasses.replace(state, audit=(_grant("pl_a", 500_000, T0 + 90, T0 + 600),))
    lifted = plan(desired(w), kernel, granted, PARAMS, T0 + 120)
    cs = lifted.state.slices[1].default
    assert cs.used_bytes == used  # the usage is what was sent; the rules see 400 kB
    assert not cs.capped and cs.ceil_bps == CAP_BPS
    assert lifted.state.audit == granted.audit  # kept while in force
    ended = plan(desired(w), kernel, lifted.state, PARAMS, T0 + 600)
    assert ended.state.slices[1].default.capped


def test_the_audit_keeps_grants_in_force_and_the_newest_recent_rest() -> None:
    old = AuditEntry("reset", "pl_a", "default", 1, "bob", T0 - AUDIT_KEEP_S, T0 - AUDIT_KEEP_S)
    recent = AuditEntry("reset", "pl_a", "default", 2, "bob", T0 - 5, T0 - 5)
    forced = _grant("pl_a", 3, T0 - AUDIT_KEEP_S - 9, T0 + 1)
    audit = (old, forced, recent)
    assert pruned(audit, T0) == (forced, recent)
    kept = (recent,)
    assert pruned(kept, T0) is kept
    many = tuple(
        AuditEntry("reset", "pl_a", "default", i, "bob", T0 - 1, T0 - 1) for i in range(MAX_AUDIT)
    )
    out = pruned((forced, *many), T0)
    assert len(out) == MAX_AUDIT and out[0] is forced and out[-1] is many[-1]


@settings(max_examples=200, deadline=None)
@given(
    used=st.integers(0, 3_000_000),
    size=st.integers(1, 2_000_000),
    elapsed=st.integers(61, 3000),
)
def test_the_planners_ceil_is_the_tables_at_the_usage_less_the_grants(
    used: int, size: int, elapsed: int
) -> None:
    state, _ = _capped_state(used)
    w = want("pl_a", 1)
    granted = dataclasses.replace(state, audit=(_grant("pl_a", size, T0, T0 + 10**6),))
    kernel = snapshot(KernelSlice(1, kclass(used), kclass(0)))
    out = plan(desired(w), kernel, granted, PARAMS, T0 + elapsed)
    st_ = out.state.slices[1]
    rule = rate_rule(st_.default.policy, CAP_BPS, PARAMS.bwmin_bps)
    _, ceil, applies = rule_ceil(rule, counted_bytes(used, size), T0 + elapsed, st_.period_end_s)
    assert st_.default.ceil_bps == ceil and st_.default.capped == bool(applies)

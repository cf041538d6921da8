"""Budgets per direction: which bytes a class's budget counts, and its inbound limit.

A class's budget counts what its slice sends (``out``, PlanetLab's meaning and the
default), what it receives (``in``) or their sum (``both``). Inbound bytes come
from an inbound backend (:mod:`bwenforcer.core.inbound`) and are counted exactly
as the sent ones (:func:`~bwenforcer.core.policy.counter_delta`); with inbound
accounting off every budget counts ``out``, whatever its policy says.

Past the threshold each direction the budget counts gets the rule's rate
(:func:`~bwenforcer.core.policy.rule_ceil`): egress as the HTB ceil, inbound as
an :class:`~bwenforcer.core.inbound.InboundLimit`. For ``both`` the pacing rule
spreads the shared remainder over the time left *and over the two directions*
(``ways`` = 2): together they can never send faster than the remainder allows
(docs/architecture.md "Budgets per direction").
"""

from __future__ import annotations

from bwenforcer.core.model import ClassPolicy, ClassState
from bwenforcer.core.policy import counter_delta

DIRECTIONS = ("out", "in", "both")
# An inbound limit is changed only when the new rate differs from the kernel's by at
# least this share of it: each new limit object starts with a full bucket (about one
# second of its rate, docs/notes on issue 19), so a limit that followed every small
# drift of the paced rate would hand out a second of rate each cycle.
INBOUND_MARGIN_PERCENT = 5


def parse_direction(value: object) -> str:
    """A direction from its text (``out``, ``in``, ``both``); ValueError if it is none."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in DIRECTIONS:
        raise ValueError(f"{value!r} is not out, in or both")
    return text


def counts(policy: ClassPolicy, inbound_on: bool) -> tuple[bool, bool]:
    """``(out, in)``: which directions the class's budget counts."""
    if not inbound_on:
        return True, False
    direction = policy.direction
    return direction != "in", direction != "out"


def counted_bytes(cs: ClassState, policy: ClassPolicy, inbound_on: bool) -> int:
    """The usage the class's budget counts (before grants)."""
    out, in_ = counts(policy, inbound_on)
    return (cs.used_bytes if out else 0) + (cs.in_used_bytes if in_ else 0)


def inbound_usage(
    old: ClassState, counter_bytes: int | None, account: bool, new_period: bool
) -> tuple[int, int, int]:
    """``(in used, in last counter, in delta)`` of a class after this cycle's inbound
    bytes, as :func:`~bwenforcer.core.accounting.class_usage` counts the sent ones: a
    counter that went back restarted from 0; a class without a counter is counted from
    0 once it has one; a new period starts the usage at 0.
    """
    used, last, delta = old.in_used_bytes, old.in_last_counter_bytes, 0
    if account:
        if counter_bytes is None:
            last = 0
        else:
            delta = counter_delta(counter_bytes, last)
            used += delta
            last = counter_bytes
    if new_period:
        return 0, last, delta
    return used, last, delta


def inbound_change(current_bps: int | None, target_bps: int | None) -> bool:
    """Whether to change a class's inbound limit from ``current_bps`` (the backend's,
    None: none) to ``target_bps`` (None: lift it): a lift and a first limit always, a
    change of rate only by at least :data:`INBOUND_MARGIN_PERCENT` of the current one.
    """
    if current_bps is None or target_bps is None:
        return current_bps != target_bps
    return abs(target_bps - current_bps) * 100 >= INBOUND_MARGIN_PERCENT * current_bps

"""Operators' grants: budget added to a slice class for a while, and the audit they join.

A grant adds its bytes to the budget of the class in every period it is in force
in (from when it was made until its ``until``, by default the end of the period
it was made in): the rules see the usage less the bytes granted in force, so a
grant lifts a cap as a bigger limit would. Grants and resets are kept in the
state's audit (who, when, why, how much), bounded: every grant in force, and of
the rest the newest younger than ``AUDIT_KEEP_S``, at most ``MAX_AUDIT`` in all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import AuditEntry

MAX_AUDIT = 1000
AUDIT_KEEP_S = 90 * 86400
MAX_REASON_CHARS = 200
NO_GRANT = (0, 0)


def granted_bytes(audit: Iterable[AuditEntry], now_s: int) -> Mapping[str, tuple[int, int]]:
    """Bytes granted in force at ``now_s``: slice name → (default, exempt)."""
    out: dict[str, tuple[int, int]] = {}
    for entry in audit:
        if entry.in_force(now_s):
            d, e = out.get(entry.slice, NO_GRANT)
            if entry.traffic_class == "default":
                d += entry.size_bytes
            else:
                e += entry.size_bytes
            out[entry.slice] = (d, e)
    return out


def class_granted(
    audit: Iterable[AuditEntry], name: str, traffic_class: TrafficClass, now_s: int
) -> int:
    """Bytes granted in force to one slice class at ``now_s``."""
    d, e = granted_bytes((a for a in audit if a.slice == name), now_s).get(name, NO_GRANT)
    return d if traffic_class == "default" else e


def counted_bytes(used_bytes: int, granted: int) -> int:
    """The usage the rules see: what was used less what is granted, at least 0."""
    return used_bytes - granted if used_bytes > granted else 0


def pruned(audit: tuple[AuditEntry, ...], now_s: int) -> tuple[AuditEntry, ...]:
    """The audit to keep: every grant in force, then the newest of the rest younger than
    AUDIT_KEEP_S, MAX_AUDIT in all; in their order. The same tuple if nothing goes.
    """
    keep = [i for i, a in enumerate(audit) if a.in_force(now_s) or now_s - a.at_s < AUDIT_KEEP_S]
    if len(keep) > MAX_AUDIT:
        forced = {i for i in keep if audit[i].in_force(now_s)}
        others = [i for i in keep if i not in forced]
        room = max(0, MAX_AUDIT - len(forced))
        keep = sorted(forced | set(others[len(others) - room :] if room else []))
    if len(keep) == len(audit):
        return audit
    return tuple(audit[i] for i in keep)


def grants_in_force(audit: Iterable[AuditEntry], now_s: int) -> int:
    """How many grants are in force at ``now_s`` (a new one beyond MAX_AUDIT is refused)."""
    return sum(1 for a in audit if a.in_force(now_s))

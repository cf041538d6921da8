"""Operators' grants: budget added to a slice class for a while, and the audit they join.

A grant adds its bytes to the budget of the class in every period it is in force
in (from when it was made until its ``until``, by default the end of the period
it was made in): the rules see the usage less the bytes granted in force, so a
grant lifts a cap as a bigger limit would. Grants and resets are kept in the
state's audit (who, when, why, how much), bounded: every grant in force, and of
the rest the newest younger than ``AUDIT_KEEP_S``, at most ``MAX_AUDIT`` in all.

Rollover (``ClassPolicy.rollover_bytes`` > 0, periods only, never a rolling window):
at a new period a class carries what it left unused of the period that ended, at most
the bound, and the carried bytes count like a grant for the whole new period
(``ClassState.carried_bytes``, the rollover's record: not in the audit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.model import AuditEntry
from bwenforcer.core.units import parse_size_bytes

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


def rolled_over(
    *, limit_bytes: int, used_bytes: int, granted: int, carried: int, bound_bytes: int
) -> int:
    """The bytes a class carries into a new period: what the period ending left unused
    (``limit + granted + carried − used``, at least 0), at most ``bound_bytes``.

    Computed once from the period that ended, whatever periods were skipped after it:
    a new period's carried bytes replace the old ones, so nothing compounds.
    """
    if bound_bytes <= 0:
        return 0
    unused = limit_bytes + granted + carried - used_bytes
    return min(unused, bound_bytes) if unused > 0 else 0


def rollover_text(value: object) -> str:
    """The canonical text of a rollover bound: ``""`` (off), ``"P%"`` of the limit
    (P an integer 1..100) or a size in bytes (``"1073741824"``). Raises ValueError.
    """
    if value is None or value in (0, "0", "none"):
        return ""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        if not number.isdigit() or not 0 <= int(number) <= 100:
            raise ValueError(f"{value!r} is not a share of the limit from 0% to 100%")
        return f"{int(number)}%" if int(number) else ""
    size = parse_size_bytes(value)  # UnitError is a ValueError
    return str(size) if size else ""


def rollover_bound_bytes(text: str, limit_bytes: int) -> int:
    """The rollover bound in bytes of a canonical text (:func:`rollover_text`)."""
    if not text:
        return 0
    if text.endswith("%"):
        return limit_bytes * int(text[:-1]) // 100
    return int(text)


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

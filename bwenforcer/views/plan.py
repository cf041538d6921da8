"""Plans and cycle results as text tables and JSON (for ``sync`` and logs)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from bwenforcer.core.plan import ClassLine, Plan
from bwenforcer.core.units import human_rate, human_size
from bwenforcer.cycle.run import CycleResult
from bwenforcer.store.schema import dict_maker, json_key, slice_dict_maker


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# NewPeriod's fields; every other field is named as stateschema.json_key says.
_ACTION_KEYS = {"start_s": "period_start", "end_s": "period_end"}


def _renamed(value: Any) -> Any:
    if isinstance(value, dict):
        return {_ACTION_KEYS.get(k) or json_key(k): _renamed(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def action_json(action: object) -> dict[str, Any]:
    """An action as a flat JSON object with an ``action`` key (rates as in ``tc get``)."""
    fields = dataclasses.asdict(action)  # type: ignore[call-overload]
    return {"action": _snake(type(action).__name__), **_renamed(fields)}


# A planned class and slice with the keys every command uses (README "JSON keys"): the
# slice object is the state file's, the class has the ClassLine's fields.
_class_json = dict_maker(
    "_class_json",
    (
        (json_key(f.name), f"o.{f.name}")
        for f in dataclasses.fields(ClassLine)
        if f.name != "traffic_class"
    ),
)
_slice_json = slice_dict_maker("_slice_json", _class_json, view=True)


def result_json(result: CycleResult) -> dict[str, Any]:
    """A cycle result as JSON: result, slices as planned, actions, failures."""
    out: dict[str, Any] = {
        "result": result.result,
        "dry_run": result.dry_run,
        "now": result.plan.now_s,
        "duration_s": round(result.duration_s, 6),
        "limiting_off": result.plan.limiting_off,
        "slices": [_slice_json(line) for line in result.plan.lines],
        "actions": [action_json(a) for a in result.plan.actions],
        "failures": list(result.failures),
        "source_errors": list(result.source_errors),
        "recovered_from": result.recovered_from,
    }
    if result.outcome is not None:
        out["mails_sent"] = result.outcome.mails_sent
        out["mails_failed"] = result.outcome.mails_failed
        out["mails_deferred"] = result.outcome.mails_deferred
    return out


def _actions_by_slice(plan: Plan) -> dict[tuple[int, str], list[str]]:
    found: dict[tuple[int, str], list[str]] = {}
    for action in plan.actions:
        xid = getattr(action, "xid", None)
        tc = getattr(action, "traffic_class", None)
        classes = getattr(action, "classes", None)
        word = _snake(type(action).__name__).replace("_", "-")
        for key_tc in [tc] if tc else (classes or ("default", "exempt")):
            found.setdefault((xid, key_tc), []).append(word)
    return found


def plan_table(plan: Plan) -> str:
    """The plan as a table: per slice and class, usage, threshold, limit, ceil, actions."""
    from bwenforcer.views.table import render_table

    header = ("SLICE", "XID", "CLASS", "USED", "THRESHOLD", "LIMIT", "CEIL", "ACTIONS")
    rows: list[tuple[str, ...]] = []
    by_slice = _actions_by_slice(plan)
    for line in plan.lines:
        for cls in (line.default, line.exempt):
            old = "-" if cls.old_ceil_bps is None else human_rate(cls.old_ceil_bps)
            new = human_rate(cls.new_ceil_bps)
            ceil = new if old == new else f"{old} → {new}"
            acts = by_slice.get((line.xid, cls.traffic_class), [])
            rows.append(
                (
                    line.name,
                    str(line.xid),
                    cls.traffic_class,
                    human_size(cls.used_bytes),
                    human_size(cls.threshold_bytes),
                    human_size(cls.limit_bytes),
                    ceil,
                    ",".join(dict.fromkeys(acts)) or "-",
                )
            )
    text = render_table(header, rows)
    live = {line.name for line in plan.lines}
    others = [
        f"{_snake(type(a).__name__).replace('_', '-')} {getattr(a, 'name', None) or ''}"
        f" xid {getattr(a, 'xid', '-')}".strip()
        for a in plan.actions
        if getattr(a, "name", None) not in live
    ]
    if plan.limiting_off:
        text.append("limiting is off on this node (node manager switch): removing slice classes")
    text.extend(others)
    return "\n".join(text)


def summary_line(result: CycleResult) -> str:
    """``sync``'s one line: result, time, slices, capped classes, kernel changes, mails."""
    plan = result.plan
    capped = sum(live.state.default.capped + live.state.exempt.capped for live in plan.live)
    mails = "" if result.outcome is None else f", {result.outcome.mails_sent} mail(s) sent"
    failed = len(result.failures) + len(result.source_errors)
    if result.outcome is not None:  # a mail not delivered (failed, or deferred) is one too
        failed += result.outcome.mails_failed + result.outcome.mails_deferred
    return (
        f"sync {result.result} in {result.duration_s:.2f}s: {len(plan.live)} slices,"
        f" {capped} class(es) capped, {len(plan.kernel_ops())} kernel change(s){mails},"
        f" {failed} failure(s)"
    )

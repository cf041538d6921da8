"""``bwenforcer policy [SLICE]``: the ceil by usage of a slice's policy (or the defaults);
``bwenforcer explain SLICE``: why its classes have the ceil they have.
"""

from __future__ import annotations

import argparse

ORDER = 45


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``policy`` verb."""
    from bwenforcer.commands.inspect import _add_view

    parser = _add_view(
        sub,
        "policy",
        run_policy,
        help="the ceil by usage: the policy table an operator publishes",
        description=(
            "Per traffic class, the ceil a slice's policy gives at each usage where a rule"
            " starts (threshold, tiers, taper) and at the limit, with the rule that sets it;"
            " computed by the function the planner's rates come from. Without SLICE, the"
            " config's defaults. Pacing depends on the time left: the slice's own (from the"
            " state), else a whole period; --left replaces it. Class caps are the config's"
            " node_cap and bwmax."
        ),
        json_help="print JSON",
    )
    parser.add_argument("slice", metavar="SLICE", nargs="?", help="slice name or xid")
    parser.add_argument(
        "--left", metavar="DURATION", help="time left in the period, e.g. 12h (pacing)"
    )
    explain = _add_view(
        sub,
        "explain",
        run_explain,
        help="why a slice's classes have their ceil: usage, grants, rule, kernel",
        description=(
            "Per traffic class of a live slice: usage, limit, grants in force, the rule that"
            " sets the ceil (pacing, a tier, the taper) with its numbers, the ceil the last"
            " cycle planned, the rule's ceil now, and the ceil the kernel holds (one dump),"
            " flagging a kernel ceil that differs from the plan. Class caps are the"
            " kernel's (the config's when it cannot be read)."
        ),
        json_help="print JSON",
    )
    explain.add_argument("slice", metavar="SLICE", help="slice name or xid")


def run_policy(args: argparse.Namespace) -> int:
    """Print the policy table of a slice or of the defaults."""
    from bwenforcer.commands.inspect import _desired, _print_json, _read_state, now_s
    from bwenforcer.core.layout import TRAFFIC_CLASSES
    from bwenforcer.core.policy import class_cap_bps, tree_rates_bps
    from bwenforcer.core.units import parse_duration_s
    from bwenforcer.core.window import bucket_span
    from bwenforcer.errors import ExitCode, UnitError, UsageError
    from bwenforcer.inputs.config import load_config
    from bwenforcer.inputs.slices import resolve_policy
    from bwenforcer.views.policy import policy_json, policy_text, policy_view
    from bwenforcer.views.show import find_slice

    config = load_config(args.config)
    now = now_s()
    period_end = now + config.period_s
    name, xid, st = None, None, None
    if args.slice is None:
        default, exempt, _ = resolve_policy("defaults", {}, config)
        policies = {"default": default, "exempt": exempt}
    else:
        state = _read_state(config)
        report = find_slice(state, _desired(config), args.slice)
        if report is None:
            raise UsageError(
                f"slice {args.slice!r}: not in the state, the ledger or the slices file"
            )
        name, xid = report.name, report.xid
        st = report.live or (None if report.ledger is None else report.ledger.slice)
        if st is not None:
            policies = {tc: st.cls(tc).policy for tc in TRAFFIC_CLASSES}
            period_end = st.period_end_s
        else:
            assert report.desired is not None  # find_slice found it somewhere
            policies = {tc: report.desired.policy(tc) for tc in TRAFFIC_CLASSES}
    window_s = policies["default"].window_s
    if window_s and (args.slice is None or st is None):
        # a rolling window's pacing runs to the end of the current bucket (core.window)
        period_end = bucket_span(now, window_s)[1]
    if args.left is not None:
        try:
            period_end = now + parse_duration_s(args.left)
        except UnitError as exc:
            raise UsageError(f"--left: {exc}") from None
    node_cap, bwmax = tree_rates_bps(config.node_cap_bps, config.bwmax_bps)
    caps = {tc: class_cap_bps(tc, node_cap, bwmax) for tc in TRAFFIC_CLASSES}
    view = policy_view(
        name,
        xid,
        policies,
        caps,
        bwmin_bps=config.bwmin_bps,
        now_s=now,
        period_end_s=period_end,
        inbound=config.inbound.enabled,
    )
    if args.json:
        _print_json(policy_json(view))
    else:
        print(policy_text(view))
    return int(ExitCode.OK)


def run_explain(args: argparse.Namespace) -> int:
    """Explain a live slice's ceils against the kernel's."""
    import dataclasses

    from bwenforcer.commands.inspect import _dump, _print_json, _read_state, now_s
    from bwenforcer.core.layout import TRAFFIC_CLASSES
    from bwenforcer.core.policy import class_cap_bps, tree_rates_bps
    from bwenforcer.errors import ExitCode, UsageError
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.explain import explain_json, explain_text, explain_view
    from bwenforcer.views.show import find_slice

    config = load_config(args.config)
    state = _read_state(config)
    report = find_slice(state, (), args.slice)
    if report is None or report.live is None:
        where = "only in the ledger" if report is not None else "not in the state"
        raise UsageError(f"slice {args.slice!r}: {where}; only a live slice is explained")
    snapshot = _dump(config)
    if snapshot is not None:
        report = dataclasses.replace(
            report, kernel=snapshot.slices.get(report.live.xid), kernel_available=True
        )
        node_cap, bwmax = snapshot.cap_bps, snapshot.bwmax_bps
    else:
        node_cap, bwmax = tree_rates_bps(config.node_cap_bps, config.bwmax_bps)
    report = dataclasses.replace(report, inbound=config.inbound.enabled)
    caps = {tc: class_cap_bps(tc, node_cap, bwmax) for tc in TRAFFIC_CLASSES}
    view = explain_view(report, caps, bwmin_bps=config.bwmin_bps, now_s=now_s())
    if args.json:
        _print_json(explain_json(view))
    else:
        print(explain_text(view))
    return int(ExitCode.OK)

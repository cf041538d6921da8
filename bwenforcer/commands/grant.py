"""``bwenforcer grant SLICE SIZE``: an operator adds budget to a slice, audited."""

from __future__ import annotations

import argparse
import datetime as dt
import logging

ORDER = 42

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``grant`` verb."""
    parser = sub.add_parser(
        "grant",
        help="operator adds budget to a slice, audited; caps lifted now",
        description=(
            "Add SIZE to the budget of a live slice's classes in every period the grant is"
            " in force in: from now until --until (default: the end of its current period)."
            " Its caps follow at once (the kernel's ceils are set as a cycle would set them)."
            " Who (the invoking user), when, why and how much are kept in the state's audit,"
            " logged, and shown by show and status metrics. Takes the state lock (waits up"
            " to lock_timeout, then exits 3)."
        ),
    )
    parser.add_argument("slice", metavar="SLICE", help="slice name or xid")
    parser.add_argument("size", metavar="SIZE", help="bytes to add, e.g. 5GiB")
    parser.add_argument(
        "--class",
        dest="traffic_class",
        choices=("default", "exempt"),
        default="default",
        help="the traffic class (default: default)",
    )
    parser.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit")
    parser.add_argument(
        "--until",
        metavar="WHEN",
        help="in force until then: a duration from now (3d) or a UTC time (2027-01-31T18:00)",
    )
    parser.add_argument("--json", action="store_true", help="print the audit entry as JSON")
    parser.set_defaults(func=run_grant)


def parse_until(text: str, now_s: int) -> int:
    """``--until``: a duration from now, or an ISO date/time (UTC unless it says), at
    most MAX_DURATION_S (100 years) away: a grant's end is printed, and stored.
    """
    from bwenforcer.core.units import MAX_DURATION_S, parse_duration_s
    from bwenforcer.errors import UnitError, UsageError
    from bwenforcer.inputs.slicename import quoted

    try:
        return now_s + parse_duration_s(text)
    except UnitError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--until: {quoted(text)} is neither a duration (3d) nor a time (2027-01-31T18:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        until_s = int(when.timestamp())
    except (OverflowError, ValueError):
        until_s = None
    if until_s is None or until_s - now_s > MAX_DURATION_S:
        raise UsageError(f"--until: {quoted(text)} is more than 100 years away")
    return until_s


def run_grant(args: argparse.Namespace) -> int:
    """Grant budget to a live slice under the state lock and apply its rates now."""
    from bwenforcer.commands.inspect import (
        _print_json,
        apply_now,
        checked_reason,
        live_slice,
        now_s,
        operator_name,
    )
    from bwenforcer.core.grants import MAX_AUDIT, grants_in_force
    from bwenforcer.core.units import parse_size_bytes
    from bwenforcer.errors import ExitCode, UnitError, UsageError
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.codec import audit_dict
    from bwenforcer.store.state import StateStore
    from bwenforcer.views.grant import grant, grant_line
    from bwenforcer.views.status import until

    config = load_config(args.config)
    try:
        size = parse_size_bytes(args.size)
    except UnitError as exc:
        raise UsageError(f"SIZE: {exc}") from None
    if size <= 0:  # parse_size_bytes bounds it above
        raise UsageError("SIZE: must be above 0")
    reason = checked_reason(args.reason)
    user, now = operator_name(), now_s()
    until_s = None if args.until is None else parse_until(args.until, now)
    if until_s is not None and until_s <= now:
        raise UsageError(f"--until: {args.until!r} is not in the future")
    store = StateStore(config.state_file)
    with store.lock(config.lock_timeout_s):
        state = store.load().state
        before = live_slice(state, args.slice, "gets a grant")
        if grants_in_force(state.audit, now) >= MAX_AUDIT:
            raise UsageError(f"{MAX_AUDIT} grants are in force already; none added")
        who = {
            "user": user,
            "reason": reason,
            "until_s": until_s,
            "now_s": now,
            "bwmin_bps": config.bwmin_bps,
            "inbound": config.inbound.enabled,
        }
        classes = (args.traffic_class,)
        done, failures, applied = apply_now(
            config,
            lambda snapshot: grant(state, before.xid, classes, size, snapshot=snapshot, **who),
            before,
            "set",
            "the grant's rates apply at the next cycle",
        )
        store.save(done.state, now)
    log.warning("%s", grant_line(before, done))
    for line in failures:
        log.error("%s", line)
    entry = done.entries[0]
    if args.json:
        _print_json({"audit": [audit_dict(e) for e in done.entries]})
    else:
        print(
            f"slice {before.name} xid {before.xid}: {entry.traffic_class} budget"
            f" +{args.size} until {until(entry.until_s, now)}, rates applied {applied}"
        )
    return int(ExitCode.PARTIAL if failures else ExitCode.OK)

"""``bwenforcer status | show SLICE | ledger | reset SLICE``: what operators look at and do.

``status``, ``show`` and ``ledger`` read the state file without the lock, so they
never wait behind a running cycle; ``reset`` changes the state, so it takes the lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bwenforcer.inputs.slicename import quoted

if TYPE_CHECKING:
    from bwenforcer.core.model import ClassOp, DesiredSlice, KernelSnapshot, SliceState, State
    from bwenforcer.core.settings import Config
    from bwenforcer.history.usage import ReportRow
    from bwenforcer.inputs.cgroups import CgroupUnit

ORDER = 40
NOW_ENV = "BWENFORCER_NOW"

log = logging.getLogger(__name__)


class _Change(Protocol):
    """An operator's change of a slice (a grant, a reset): the class ops it needs."""

    ops: tuple[ClassOp, ...]


Changed = TypeVar("Changed", bound=_Change)

_CLOCK_HELP = (
    f"Times are relative to now; ${NOW_ENV} (Unix seconds) replaces now, for reproducible output."
)


def _add_view(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    json_help: str,
) -> argparse.ArgumentParser:
    """A read-only verb: its text, ``--json`` and the clock note."""
    parser = sub.add_parser(name, help=help, description=f"{description} {_CLOCK_HELP}")
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(func=func)
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``status``, ``show``, ``ledger`` and ``reset`` verbs."""
    status = _add_view(
        sub,
        "status",
        run_status,
        help="every slice: usage, limit, threshold, ceil, capped",
        description=(
            "One row per live slice, capped slices first, then by share of budget used."
            " Reads the state file without the lock (never waits for a running cycle) and"
            " the kernel for the current ceils; without the kernel, the last applied ceils"
            " are shown. Colour, and long names cut to fit 100 columns, only on a terminal"
            " (colour not with NO_COLOR): piped, names are whole."
        ),
        json_help='print {"slices": […], "ledger": […]}',
    )
    status.add_argument("--capped", action="store_true", help="only slices with a capped class")
    status.add_argument("--slice", metavar="NAME", help="only the slice NAME")
    show = _add_view(
        sub,
        "show",
        run_show,
        help="everything about one slice",
        description=(
            "Usage, limits and where they came from (rspec or defaults), baselines, kernel"
            " counters, the last 24 h and the ledger entry of one slice."
        ),
        json_help="print JSON",
    )
    show.add_argument("slice", metavar="SLICE", help="slice name or xid")
    _add_view(
        sub,
        "ledger",
        run_ledger,
        help="dead-slice ledger",
        description=(
            "Slices deleted within their period: their usage is kept until the period"
            " would have ended, so re-creating a slice does not give it a fresh budget."
        ),
        json_help='print {"ledger": […]}',
    )

    reset = sub.add_parser(
        "reset",
        help="operator forgives a slice: new baseline, caps lifted",
        description=(
            "Forgive a live slice's usage: from now on it is counted from the kernel's"
            " current counter (bytes sent before are never counted), its usage is 0, its"
            " caps are lifted at once (a 'lifted' notice if the policy asks for one; a notice"
            " already sent this period is not sent again). The recording period is"
            " NOT restarted: only the budget used so far is forgiven, and the period ends"
            " when it would have. Takes the state lock (waits up to lock_timeout, then"
            " exits 3), logs the operator's user name and keeps who, when, why and the usage"
            " forgiven in the state's audit."
        ),
    )
    reset.add_argument("slice", metavar="SLICE", help="slice name or xid")
    reset.add_argument(
        "--class",
        dest="traffic_class",
        choices=("default", "exempt"),
        help="forgive only this traffic class (default: both)",
    )
    reset.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit")
    reset.set_defaults(func=run_reset)


def now_s() -> int:
    """The time commands show things relative to: ``$BWENFORCER_NOW`` or the clock."""
    from bwenforcer.errors import UsageError

    fixed = os.environ.get(NOW_ENV)
    if not fixed:
        return int(time.time())
    try:
        return int(fixed)
    except ValueError:
        raise UsageError(f"${NOW_ENV}={quoted(fixed)}: expected Unix seconds") from None


def operator_name() -> str:
    """Who runs the command: the sudo caller, the login name, or the effective user."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return os.getlogin()
    except OSError:
        pass  # no controlling terminal (cron, tests): fall back to the effective uid
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def checked_reason(text: str) -> str:
    """An operator's ``--reason``: one line of printable text, bounded."""
    from bwenforcer.core.grants import MAX_REASON_CHARS
    from bwenforcer.errors import UsageError

    if len(text) > MAX_REASON_CHARS:
        raise UsageError(f"--reason: longer than {MAX_REASON_CHARS} characters")
    if not text.isprintable():
        raise UsageError("--reason: only printable characters on one line")
    return text


def live_slice(state: State, name: str, verb: str) -> SliceState:
    """The live slice ``name`` (or xid) of ``state``; UsageError naming why not."""
    from bwenforcer.errors import UsageError
    from bwenforcer.views.show import find_slice

    found = find_slice(state, (), name)
    if found is None or found.live is None:
        where = "only in the ledger" if found is not None else "not in the state"
        raise UsageError(f"slice {quoted(name)}: {where}; only a live slice {verb}")
    return found.live


def apply_now(
    config: Config,
    change: Callable[[KernelSnapshot | None], Changed],
    before: SliceState,
    done: str,
    later: str,
) -> tuple[Changed, list[str], str]:
    """``change`` worked out against a fresh dump and its ops applied now; with the kernel
    unavailable, worked out without one (the next cycle sets the rates, ``later`` says
    so on stderr). Returns the change, one line per class the kernel refused, and when
    the rates apply ("now" or "at the next cycle").
    """
    from bwenforcer.errors import KernelError
    from bwenforcer.kernel.htb import HtbBackend

    try:
        with HtbBackend(config.device) as kernel:
            changed = change(kernel.dump())
            failures = [
                f"slice {before.name} xid {before.xid} {f.op.traffic_class}: ceil not"
                f" {done}: {f.message}"
                for f in kernel.apply(changed.ops)
            ]
        return changed, failures, "now"
    except KernelError as exc:
        print(f"bwenforcer: kernel unavailable ({exc}): {later}", file=sys.stderr)
        return change(None), [], "at the next cycle"


def _read_state(config: Config) -> State:
    from bwenforcer.store.state import StateStore

    loaded = StateStore(config.state_file).read_unlocked()
    if loaded.recovered_from:
        print(
            f"bwenforcer: {config.state_file} unusable: showing its backup {loaded.recovered_from}",
            file=sys.stderr,
        )
    return loaded.state


def _dump(config: Config) -> KernelSnapshot | None:
    """The kernel's classes, or None (said on stderr in one line) when it cannot be read."""
    from bwenforcer.errors import KernelError
    from bwenforcer.kernel.htb import HtbBackend

    try:
        with HtbBackend(config.device) as kernel:
            return kernel.dump()
    except KernelError as exc:
        print(
            f"bwenforcer: kernel unavailable ({exc}): ceils shown are the last applied",
            file=sys.stderr,
        )
        return None


def _print_json(data: dict[str, Any]) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_status(args: argparse.Namespace) -> int:
    """Print every slice's usage, limits and ceils."""
    from bwenforcer.errors import ExitCode
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.status import StatusFilter, status_json, status_table
    from bwenforcer.views.table import use_colour

    config = load_config(args.config)
    state = _read_state(config)
    snapshot = _dump(config)
    only = StatusFilter(capped=args.capped, name=args.slice)
    units = _units(config)
    names = None if units is None else {name: u.unit for name, u in units.items()}
    if args.json:
        _print_json(status_json(state, snapshot, only, units=names))
    else:
        terminal = sys.stdout.isatty()
        colour = use_colour(sys.stdout)
        print(status_table(state, snapshot, now_s(), colour, fit=terminal, only=only, units=names))
    return int(ExitCode.OK)


def run_ledger(args: argparse.Namespace) -> int:
    """Print the dead-slice ledger."""
    from bwenforcer.errors import ExitCode
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.status import ledger_json, ledger_table

    state = _read_state(load_config(args.config))
    if args.json:
        _print_json(ledger_json(state))
    else:
        print(ledger_table(state, now_s()))
    return int(ExitCode.OK)


def _units(config: Config) -> dict[str, CgroupUnit] | None:
    """The cgroup tenants by slice name as the tree has them now; None without
    ``cgroups.tenants``, none (said on stderr) when the tree cannot be read.
    """
    if not config.cgroups.tenants:
        return None
    from bwenforcer.errors import Error
    from bwenforcer.inputs.cgroups import discover

    try:
        return discover(config.cgroups).by_name()
    except Error as exc:
        print(f"bwenforcer: cgroup tree unavailable ({exc}): units unknown", file=sys.stderr)
        return {}


def _desired(config: Config) -> tuple[DesiredSlice, ...]:
    """The desired slices, or none (said on stderr) when the slices cannot be read."""
    from bwenforcer.cycle.agent import load_desired
    from bwenforcer.errors import Error

    try:
        desired = load_desired(config, report=False)
    except Error as exc:
        print(f"bwenforcer: slices unavailable ({exc}): origins unknown", file=sys.stderr)
        return ()
    if desired.unread:
        print(
            f"bwenforcer: slices unavailable ({desired.errors[0]}): origins unknown",
            file=sys.stderr,
        )
    return desired.slices


def _last_day(config: Config, name: str, now: int) -> tuple[ReportRow, ...]:
    """The slice's hourly usage over the last 24 h, or none (said on stderr) if unreadable."""
    from bwenforcer.errors import Error
    from bwenforcer.history.reader import HistoryReader
    from bwenforcer.history.usage import DAY_S, slice_report

    try:
        with HistoryReader(config.history_file, only=name) as reader:
            sh = reader.slice(name)  # this slice's records alone
        return () if sh is None else tuple(slice_report(name, sh, "hour", now - DAY_S))
    except Error as exc:
        print(f"bwenforcer: history unavailable ({exc})", file=sys.stderr)
        return ()


def run_show(args: argparse.Namespace) -> int:
    """Print everything about one slice."""
    from bwenforcer.errors import ExitCode, UsageError
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.show import find_slice, show_json, show_text

    config = load_config(args.config)
    state = _read_state(config)
    units = _units(config) or {}
    wanted = next(
        (n for n, u in units.items() if args.slice in (u.unit, u.path)), args.slice
    )  # a unit's name (nginx.service) or its cgroup path names its tenant
    desired = _desired(config)
    if units:
        from bwenforcer.core.model import DesiredSet
        from bwenforcer.inputs.cgroups import Discovery, merge

        found = Discovery("", tuple(units.values()))
        desired = merge(DesiredSet(desired), found, config, state).slices
    report = find_slice(state, desired, wanted)
    if report is None:
        raise UsageError(
            f"slice {quoted(args.slice)}: not in the state, the ledger or the slices file"
        )
    snapshot = _dump(config)
    if snapshot is not None and report.status != "dead" and report.xid is not None:
        report = dataclasses.replace(report, kernel=snapshot.slices.get(report.xid))
    now = now_s()
    unit = units.get(report.name)
    report = dataclasses.replace(
        report,
        kernel_available=snapshot is not None,
        history=_last_day(config, report.name, now),
        unit=None if unit is None else unit.unit,
        cgroup=None if unit is None else unit.path,
    )
    if args.json:
        _print_json(show_json(report, now))
    else:
        print(show_text(report, now))
    return int(ExitCode.OK)


def run_reset(args: argparse.Namespace) -> int:
    """Forgive a live slice under the state lock and lift its caps now."""
    from bwenforcer.core.layout import TRAFFIC_CLASSES
    from bwenforcer.errors import ExitCode
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.state import StateStore
    from bwenforcer.views.reset import forgive, reset_line
    from bwenforcer.views.status import until

    config = load_config(args.config)
    classes = (args.traffic_class,) if args.traffic_class else TRAFFIC_CLASSES
    reason = checked_reason(args.reason)
    user, now = operator_name(), now_s()
    who = {"user": user, "reason": reason, "now_s": now}
    store = StateStore(config.state_file)
    with store.lock(config.lock_timeout_s):
        state = store.load().state
        before = live_slice(state, args.slice, "can be reset")
        forgiven, failures, lifted = apply_now(
            config,
            lambda snapshot: forgive(state, before.xid, classes, snapshot, config.bwmin_bps, **who),
            before,
            "lifted",
            "usage counted from the last counter seen, caps lifted at the next cycle",
        )
        store.save(forgiven.state, now)
    log.warning("%s", reset_line(user, before, forgiven.slice, classes, reason))
    for line in failures:
        log.error("%s", line)  # on stderr once: the log line is the report
    after = forgiven.slice
    print(
        f"slice {after.name} xid {after.xid}: {' and '.join(classes)} usage reset to 0,"
        f" caps lifted {lifted}; the period still ends {until(after.period_end_s, now)}"
    )
    return int(ExitCode.PARTIAL if failures else ExitCode.OK)

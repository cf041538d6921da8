"""``bwenforcer tc init|on|off|get|stop``: the HTB tree by hand (replaces bwlimit)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bwenforcer.core.layout import BARE_MARK_MODES, MAX_SHARE, TrafficClass
from bwenforcer.core.policy import class_cap_bps, manual_rates, tree_rates_bps
from bwenforcer.core.units import format_rate, human_rate, parse_rate_bps
from bwenforcer.errors import UnitError, UsageError

if TYPE_CHECKING:
    from bwenforcer.core.model import ClassRates, KernelSnapshot
    from bwenforcer.core.settings import Config
    from bwenforcer.kernel.htb import HtbBackend

ORDER = 10
log = logging.getLogger(__name__)
GET_KEYS = (
    "xid",
    "slice",
    "share",
    "min_rate",
    "max_rate",
    "exempt_min_rate",
    "exempt_max_rate",
    "bytes",
    "exempt_bytes",
)
RATE_KEYS = frozenset({"min_rate", "max_rate", "exempt_min_rate", "exempt_max_rate"})


def _rate(text: str) -> int:
    try:
        return parse_rate_bps(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SHARE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (a whole number 1..{MAX_SHARE})")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tc`` and its verbs."""
    tc = sub.add_parser("tc", help="build and manage the HTB tree by hand (bwlimit)")
    slice_help = "slice: xid (decimal or 0x hex), Unix account, root or default"
    verbs = tc.add_subparsers(dest="tc_command", metavar="VERB", required=True)
    dev = argparse.ArgumentParser(add_help=False)
    dev.add_argument("--dev", help="network device (default: the config's device)")

    init = verbs.add_parser("init", parents=[dev], help="build the tree (idempotent)")
    init.add_argument("--cap", type=_rate, help="node cap, e.g. 100mbit (default: config)")
    init.add_argument("--bwmax", type=_rate, help="line rate (default: config)")
    init.set_defaults(func=run_init)

    # bwlimit's verbs and positional forms are accepted too, so operators' scripts
    # keep working: on|add|replace|set SLICE [share] [min] [max] [exempt min]
    # [exempt max] ("-" leaves one as it is), off|del SLICE, get|show [SLICE]
    on = verbs.add_parser(
        "on",
        aliases=["add", "replace", "set"],
        parents=[dev],
        help="create or change a slice's classes",
    )
    on.add_argument("slice", metavar="SLICE|XID", help=slice_help)
    on.add_argument(
        "positional",
        nargs="*",
        metavar="SHARE|-",
        help="bwlimit's form: share, min, max, exempt min, exempt max rate ('-': unchanged)",
    )
    on.add_argument("--share", type=_share, help="HTB share (quantum = share × 1600)")
    on.add_argument("--min", type=_rate, dest="min_rate", help="guaranteed rate, e.g. 512kbit")
    on.add_argument("--max", type=_rate, dest="max_rate", help="ceil, e.g. 10mbit")
    on.add_argument("--exempt-min", type=_rate, dest="exempt_min", help="exempt class's rate")
    on.add_argument("--exempt-max", type=_rate, dest="exempt_max", help="exempt class's ceil")
    on.set_defaults(func=run_on)

    off = verbs.add_parser("off", aliases=["del"], parents=[dev], help="remove a slice's classes")
    off.add_argument("slice", metavar="SLICE|XID", help=slice_help)
    off.set_defaults(func=run_off)

    get = verbs.add_parser("get", aliases=["show"], parents=[dev], help="show slice classes")
    get.add_argument("slice", metavar="SLICE|XID", nargs="?", help=f"only this {slice_help}")
    fmt = get.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a list of objects (rates in bit/s)")
    fmt.add_argument("--numeric", action="store_true", help="plain numbers, no units")
    get.set_defaults(func=run_get)

    stop = verbs.add_parser("stop", parents=[dev], help="remove the whole tree")
    stop.set_defaults(func=run_stop)


def _say(args: argparse.Namespace, line: str) -> None:
    """The one-line summary of a verb that changed something (none with ``-q``)."""
    if not args.quiet:
        print(line)


def _backend(args: argparse.Namespace, config: Config | None = None) -> tuple[HtbBackend, Config]:
    from bwenforcer.inputs.config import load_config
    from bwenforcer.kernel.htb import HtbBackend

    if config is None:
        config = load_config(args.config)
    if not (args.dev or config.device):
        raise UsageError("no device: give --dev DEV, or set device in the config")
    bare_marks = config.classifier.mode in BARE_MARK_MODES
    return HtbBackend(args.dev or config.device, bare_marks=bare_marks), config


def run_init(args: argparse.Namespace) -> int:
    """``tc init``; the rates are checked before the kernel is asked anything."""
    from bwenforcer.inputs.config import load_config

    config = load_config(args.config)
    cap = args.cap if args.cap is not None else config.node_cap_bps
    bwmax = args.bwmax if args.bwmax is not None else config.bwmax_bps
    for flag, value in (("--cap", args.cap), ("--bwmax", args.bwmax)):
        if value is not None and value < config.bwmin_bps:
            raise UsageError(
                f"tc init: {flag} {format_rate(value)} is below bwmin"
                f" {format_rate(config.bwmin_bps)} (the floor of every rate)"
            )
    if args.cap is not None and args.bwmax is not None and cap > bwmax:
        raise UsageError(f"tc init: --cap {format_rate(cap)} is above --bwmax {format_rate(bwmax)}")
    cap, line_rate = tree_rates_bps(cap, bwmax)
    kernel, config = _backend(args, config)
    with kernel:
        kernel.init(cap, line_rate, config.bwmin_bps)
    _say(
        args,
        f"tc init: HTB tree on {kernel.dev}: cap {human_rate(cap)},"
        f" line rate {human_rate(line_rate)}",
    )
    return 0


POSITIONAL_ON = ("share", "min_rate", "max_rate", "exempt_min", "exempt_max")


def _positional_on(args: argparse.Namespace) -> None:
    """bwlimit's ``on SLICE [share] [minrate] [maxrate] [minexemptrate] [maxexemptrate]``
    into the options (``-`` leaves one unset); given both ways is a usage error.
    """
    if len(args.positional) > len(POSITIONAL_ON):
        raise UsageError(
            f"tc on: {len(args.positional)} values after the slice; at most "
            f"{len(POSITIONAL_ON)} (share, min, max, exempt min, exempt max rate)"
        )
    for dest, text in zip(POSITIONAL_ON, args.positional, strict=False):
        if text == "-":
            continue
        what = dest.replace("_", " ")
        if getattr(args, dest) is not None:
            raise UsageError(f"tc on: {what} given both as an option and positionally")
        try:
            setattr(args, dest, _share(text) if dest == "share" else _rate(text))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"tc on: {what}: {exc}") from None


Given = tuple[int | None, int | None, int | None]  # min rate, max rate, share; None: keep


def on_rates(
    snapshot: KernelSnapshot, xid: int, given: Mapping[TrafficClass, Given], bwmin_bps: int
) -> dict[TrafficClass, ClassRates]:
    """The rates ``tc on`` sets on slice ``xid``'s classes: the values given over the
    kernel's current ones, by the policy under each class's cap in ``snapshot``.
    """
    current = snapshot.slices.get(xid)
    rates: dict[TrafficClass, ClassRates] = {}
    for tc, (min_rate_bps, max_rate_bps, share) in given.items():
        kclass = None if current is None else current.cls(tc)
        rates[tc] = manual_rates(
            None if kclass is None else kclass.rates,
            min_rate_bps,
            max_rate_bps,
            share,
            cap_bps=class_cap_bps(tc, snapshot.cap_bps, snapshot.bwmax_bps),
            bwmin_bps=bwmin_bps,
        )
    return rates


def run_on(args: argparse.Namespace) -> int:
    """``tc on``."""
    from bwenforcer.inputs.slicename import resolve_slice

    _positional_on(args)
    kernel, config = _backend(args)
    xid, _name = resolve_slice(args.slice, slice_xids(config, args.slice))
    given: dict[TrafficClass, Given] = {
        "default": (args.min_rate, args.max_rate, args.share),
        "exempt": (args.exempt_min, args.exempt_max, None),
    }
    with kernel:
        snapshot = kernel.dump()
        rates = on_rates(snapshot, xid, given, config.bwmin_bps)
        ops = kernel.set(xid, rates, snapshot.slices.get(xid))
    changes = "; ".join(
        f"{op.traffic_class} {op.kind}d: rate {human_rate(op.rates.min_rate_bps)},"
        f" ceil {human_rate(op.rates.max_rate_bps)}, share {op.rates.share}"
        for op in ops
        if op.rates is not None
    )
    where = f"xid {xid} on {kernel.dev}"
    _say(args, f"tc on: {where}: {changes or 'unchanged'}")
    return 0


def run_off(args: argparse.Namespace) -> int:
    """``tc off``."""
    from bwenforcer.inputs.slicename import resolve_slice

    kernel, config = _backend(args)
    xid, _name = resolve_slice(args.slice, slice_xids(config, args.slice))
    with kernel:
        kernel.off(xid)
    _say(args, f"tc off: xid {xid} on {kernel.dev}: classes removed")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    """``tc stop``: the tree, and the classifier's nftables table if there is one."""
    kernel, config = _backend(args)
    with kernel:
        kernel.stop()
    if config.classifier.mode != "none":
        from bwenforcer.kernel.classifier import Classifier

        Classifier().remove()
    _say(args, f"tc stop: HTB tree removed from {kernel.dev}")
    return 0


def known_names(config: Config) -> dict[int, str]:
    """Slice names by xid from the slices file, else the state; what cannot be read is skipped.

    The kernel knows only xids; without these, ``tc get`` falls back to the Unix account
    (and ``tc get/on/off NAME`` looks a name up here before the Unix accounts).
    """
    from bwenforcer.cycle.agent import load_desired
    from bwenforcer.errors import Error
    from bwenforcer.store.state import StateStore

    names: dict[int, str] = {}
    try:
        state = StateStore(config.state_file).read_unlocked().state
        names.update((xid, st.name) for xid, st in state.slices.items())
    except Error as exc:
        log.debug("tc get: no names from the state: %s", exc)
    try:
        desired = load_desired(config, dry_run=True, report=False)
        names.update((want.xid, want.name) for want in desired.slices)
    except Error as exc:
        log.debug("tc get: no names from the slices file: %s", exc)
    return names


def slice_xids(config: Config, text: str) -> dict[str, int] | None:
    """The xids of the slices by name (slices file, else state) when ``text`` could
    name one (not a number); None otherwise, without reading anything.
    """
    if text.strip().lstrip("-").isdecimal() or text.strip().lower().startswith("0x"):
        return None
    return {name: xid for xid, name in known_names(config).items()}


def get_rows(
    snapshot: KernelSnapshot, only_xid: int | None, names: Mapping[int, str] | None = None
) -> list[dict[str, Any]]:
    """``tc get --json`` objects, by xid; ``names`` (by xid) before the Unix account's."""
    from bwenforcer.inputs.slicename import slice_name

    names = names or {}

    rows = []
    for xid in sorted(snapshot.slices):
        if only_xid is not None and xid != only_xid:
            continue
        ks = snapshot.slices[xid]
        d, e = ks.default, ks.exempt
        rows.append(
            {
                "xid": xid,
                "slice": names.get(xid) or slice_name(xid),
                "share": d.rates.share if d else None,
                "min_rate": d.rates.min_rate_bps if d else None,
                "max_rate": d.rates.max_rate_bps if d else None,
                "exempt_min_rate": e.rates.min_rate_bps if e else None,
                "exempt_max_rate": e.rates.max_rate_bps if e else None,
                "bytes": d.bytes if d else 0,
                "exempt_bytes": e.bytes if e else 0,
            }
        )
    return rows


def get_table(rows: list[dict[str, Any]], numeric: bool) -> str:
    """``tc get`` as a table: human units, or plain numbers with ``numeric``."""
    from bwenforcer.core.units import human_rate, human_size
    from bwenforcer.views.table import render_table

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if numeric or key in ("xid", "slice", "share"):
            return str(value)
        return human_rate(value) if key in RATE_KEYS else human_size(value)

    header = [k.upper() for k in GET_KEYS]
    return "\n".join(render_table(header, [[cell(k, r[k]) for k in GET_KEYS] for r in rows]))


def run_get(args: argparse.Namespace) -> int:
    """``tc get``."""
    from bwenforcer.inputs.slicename import resolve_slice

    kernel, config = _backend(args)
    names = known_names(config)
    by_name = {name: xid for xid, name in names.items()}
    only = resolve_slice(args.slice, by_name)[0] if args.slice else None
    with kernel:
        snapshot = kernel.dump()
    rows = get_rows(snapshot, only, names)
    if only is not None and not rows:
        raise UsageError(f"slice {args.slice!r} (xid {only}) has no classes on dev {kernel.dev}")
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(get_table(rows, args.numeric))
    return 0

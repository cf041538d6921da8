"""``bwenforcer sync [--dry-run] [--json]``: one enforcement cycle (cron)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bwenforcer.cycle.run import CycleResult

ORDER = 20
log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sync`` verb."""
    parser = sub.add_parser(
        "sync",
        help="run one enforcement cycle (cron)",
        description=(
            "Run one cycle: read the slices, the kernel's counters and the state; cap slices"
            " over their threshold; save the state. Exit 0 ok, 1 partial (some slices, mails"
            " or the metrics textfile failed), 2 config error, 3 lock busy, 4 kernel"
            " unavailable, 5 state unusable."
        ),
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and change nothing (kernel, state file and mail untouched)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one cycle and report it."""
    from bwenforcer.cycle.agent import gc_paused

    with gc_paused():  # a short-lived process: nothing to collect that exit will not free
        return _run(args)


def _write_metrics(textfile: str, result: CycleResult) -> CycleResult:
    """Write the textfile; a failure is one of the cycle's failures (logged, partial,
    exit 1), not an unusable state: the cycle completed and its state is saved.
    """
    from bwenforcer.errors import Error
    from bwenforcer.metrics.exposition import from_textfile, write_textfile

    try:
        metrics = from_textfile(textfile)
        metrics.observe(result)
        write_textfile(textfile, metrics)
    except Error as exc:
        line = f"metrics not written: {exc}"
        log.error("%s", line)
        return dataclasses.replace(result, extra_failures=(*result.extra_failures, line))
    return result


def _run(args: argparse.Namespace) -> int:
    from bwenforcer.cycle.agent import Agent, load_desired
    from bwenforcer.errors import DeviceNotSet
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.plan import plan_table, result_json, summary_line

    config = load_config(args.config)
    if not config.device:  # the config as shipped: say so, hold nothing, exit cleanly
        print(f"bwenforcer: {DeviceNotSet()}", file=sys.stderr)
        return 0
    agent = Agent(config)
    result = agent.cycle(load_desired(config, args.dry_run), dry_run=args.dry_run)
    if config.metrics.textfile and not result.dry_run:
        result = _write_metrics(config.metrics.textfile, result)
    if args.json:
        json.dump(result_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif result.dry_run:
        print(plan_table(result.plan))
    elif not args.quiet:
        print(summary_line(result))
    # failures and bad slices were logged (stderr) where they happened: not repeated here
    return int(result.exit_code)

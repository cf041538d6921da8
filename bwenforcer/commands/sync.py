"""``bwenforcer sync [--dry-run] [--json]``: one enforcement cycle (cron)."""

from __future__ import annotations

import argparse
import json
import sys

ORDER = 20


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sync`` verb."""
    parser = sub.add_parser(
        "sync",
        help="run one enforcement cycle (cron)",
        description=(
            "Run one cycle: read the slices, the kernel's counters and the state; cap slices"
            " over their threshold; save the state. Exit 0 ok, 1 partial (some slices or"
            " mails failed), 2 config error, 3 lock busy, 4 kernel unavailable, 5 state"
            " unusable."
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


def _run(args: argparse.Namespace) -> int:
    from bwenforcer.cycle.agent import Agent, load_desired
    from bwenforcer.inputs.config import load_config
    from bwenforcer.views.plan import plan_table, result_json, summary_line

    config = load_config(args.config)
    agent = Agent(config)
    result = agent.cycle(load_desired(config, args.dry_run), dry_run=args.dry_run)
    if config.metrics.textfile and not result.dry_run:
        from bwenforcer.metrics.exposition import from_textfile, write_textfile

        metrics = from_textfile(config.metrics.textfile)
        metrics.observe(result)
        write_textfile(config.metrics.textfile, metrics)
    if args.json:
        json.dump(result_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif result.dry_run:
        print(plan_table(result.plan))
    elif not args.quiet:
        print(summary_line(result))
    # failures and bad slices were logged (stderr) where they happened: not repeated here
    return int(result.exit_code)

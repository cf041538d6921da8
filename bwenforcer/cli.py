"""Command line: ``bwenforcer [--config PATH] [--log-level LEVEL] COMMAND``.

Each verb lives in a module of :mod:`bwenforcer.commands` that exposes
``ORDER`` (position in ``--help``) and ``register(subparsers)``; ``register``
adds the verb's parser and sets ``func(args) -> int``. Command modules import
their heavy dependencies inside the handler, so a cron ``sync`` pays only for
what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__, commands
from .errors import Error, ExitCode

EXIT_CODES_HELP = """exit codes:
  0  ok
  1  partial: the cycle ran but some slices or notifications failed
  2  usage: bad command line or config
  3  lock busy: another cycle holds the state lock
  4  kernel: device missing, not permitted, or HTB tree not initialised
  5  state: state file unusable (no backup), disk full, or an unsafe directory
  6  failed: anything else
"""

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitCode.USAGE), f"bwenforcer: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command module's verbs."""
    parser = _Parser(
        prog="bwenforcer",
        description="Enforce per-slice daily byte budgets with HTB.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $BWENFORCER_CONFIG, then /etc/bwenforcer/bwenforcer.yaml)",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )
    parser.add_argument("--version", action="version", version=f"bwenforcer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    for module in sorted(modules, key=lambda m: m.ORDER):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Known errors print one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except Error as exc:
        print(f"bwenforcer: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("bwenforcer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return int(ExitCode.OK)


def console_main() -> None:
    """Entry point of the ``bwenforcer`` console script."""
    sys.exit(main())

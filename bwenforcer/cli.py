"""Command line: ``bwenforcer [--config PATH] [--log-level LEVEL] [-q] COMMAND``.

Each verb lives in a module of :mod:`bwenforcer.commands` that exposes
``ORDER`` (position in ``--help``) and ``register(subparsers)``; ``register``
adds the verb's parser and sets ``func(args) -> int``. Command modules import
their heavy dependencies inside the handler, so a cron ``sync`` pays only for
what it uses. The global options are accepted after the verb too
(``bwenforcer sync --config x``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO

from bwenforcer import __version__, commands
from bwenforcer.errors import Error, ExitCode

EXIT_CODES_HELP = """exit codes:
  0  ok
  1  partial: the cycle ran but some slices or notifications failed
  2  usage: bad command line or config
  3  lock busy: another cycle holds the state lock
  4  kernel: device missing, not permitted, or HTB tree not initialised
  5  state: state file unusable (no backup), disk full, or an unsafe directory
  6  failed: anything else
"""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
JOURNAL_ENV = "JOURNAL_STREAM"
# sd-daemon(3): a stderr line starting with "<N>" is logged by journald at syslog priority N.
SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr, not a usage block."""

    def error(self, message: str) -> NoReturn:
        # self.prog is "bwenforcer" or "bwenforcer VERB": keep the verb, not a second name
        verb = self.prog.removeprefix("bwenforcer").strip()
        where = f"{verb}: " if verb else ""
        self.exit(int(ExitCode.USAGE), f"bwenforcer: {where}{message} (see --help)\n")


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--config``, ``--log-level`` and ``-q``: before the verb (``top``) or after it.

    After the verb they default to SUPPRESS, so a verb's parser sets them only
    when given and never overwrites what was given before the verb.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help="config file (default: $BWENFORCER_CONFIG, then /etc/bwenforcer/bwenforcer.yaml)",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        default=default("WARNING"),
        type=str.upper,
        choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no summary line on success (errors and warnings still go to stderr)",
    )


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` (verbs, and verbs of verbs), depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every command module's verbs."""
    parser = _Parser(
        prog="bwenforcer",
        description="Enforce per-slice daily byte budgets with HTB.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"bwenforcer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [
        importlib.import_module(f"{commands.__name__}.{info.name}")
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    ]
    for module in sorted(modules, key=lambda m: m.ORDER):
        module.register(sub)
    for child in _subparsers(parser):
        _add_global_options(child, top=False)
    return parser


def journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``.

    systemd sets it to ``DEVICE:INODE`` of the stream it connected; a process whose
    stderr was redirected elsewhere inherits the variable but not the stream.
    """
    value = (os.environ if environ is None else environ).get(JOURNAL_ENV, "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False  # not set, malformed, or a stream without a file descriptor


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``: journald adds the time; ``<N>`` is the syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        """Every line of the record with its priority prefix (a traceback spans lines)."""
        priority = SYSLOG_PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def setup_logging(level: str, stream: TextIO) -> str:
    """Log to ``stream``: journal format under systemd, else timestamped lines.

    Returns the prefix for lines printed outside logging to the same stream
    (``<3>`` under the journal, so the exit line of an error is an error there too).
    """
    handler = logging.StreamHandler(stream)
    if journal_stream(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
        prefix = f"<{SYSLOG_PRIORITY[logging.ERROR]}>"
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        prefix = ""
    logging.basicConfig(level=level, handlers=[handler])  # no-op if the host configured logging
    return prefix


def tolerate_any_encoding(*streams: TextIO) -> None:
    """Characters a stream's encoding cannot hold are written escaped, not raised.

    A terminal or pipe set up for latin-1 or ASCII (``PYTHONIOENCODING``, a C locale)
    must not turn the "→" of ``show`` into a traceback.
    """
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. Known errors print one line, no traceback."""
    tolerate_any_encoding(sys.stdout, sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = setup_logging(args.log_level, sys.stderr)
    try:
        return int(args.func(args))
    except Error as exc:
        print(f"{prefix}bwenforcer: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prefix}bwenforcer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return int(ExitCode.OK)


def console_main() -> None:
    """Entry point of the ``bwenforcer`` console script."""
    sys.exit(main())

"""``bwenforcer report``: bytes sent and capped time per slice per hour, day or month."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Iterator

ORDER = 55

_DESCRIPTION = """\
Totals from the usage history kept beside the state file: bytes sent per traffic
class, the busiest hour's bytes (default + exempt) and the time each class was
capped, per slice and per UTC hour, day or month. Hours are kept for
history.hourly_keep (15 days), days for history.daily_keep (2 years), months for
history.monthly_keep (10 years); days and months include the hours and days not
yet rolled up, so a month's total is everything sent in it. A deleted slice
keeps its hours and days while it is in the ledger; once its entry expired, its
months only (of such slices, the 10,000 that sent last), until they age out.
The report is printed as the history is read, a slice at a time.

--json prints a list of objects with the keys
  slice, bucket_start (Unix seconds, UTC start of the bucket), by (hour|day|month),
  default_bytes, exempt_bytes, peak_hour_bytes, capped_default_s, capped_exempt_s;
--csv prints the same columns after a header line.

--slice NAME of a slice with no history (unknown, or aged out) is an error: one
line on stderr, nothing on stdout, exit 2. Nothing recorded since WHEN (or no
history at all) is not: the result is empty (no table, [] or a CSV header
only), a note goes to stderr and the exit code is 0. Exit 5 when the history
file is damaged or unreadable: one line on stderr and, with --json or --csv,
nothing on stdout (every slice's checksum is checked before the first row is
printed; should the file fail to be read later, the JSON list is closed, so
stdout is always valid JSON); 2 for bad arguments or config.
"""


SINCE_HELP = (
    "only buckets ending after WHEN: a date (ISO, UTC unless an offset is given:"
    " 2026-11-01 or 2026-11-01T12:00), a time before now (24h, 7d, 1w, 1h30m) or"
    " today / yesterday (from 00:00 UTC); the bucket holding WHEN is shown whole"
)


def parse_since(text: str, now_s: int) -> int:
    """``--since`` as Unix seconds: an ISO date or time (UTC unless it has an offset), a
    duration before ``now_s`` (``24h``, ``7d``, ``1h30m``), ``today`` or ``yesterday``
    (their 00:00 UTC). UsageError, one line, for anything else.
    """
    from bwenforcer.core.units import parse_duration_s
    from bwenforcer.errors import UnitError, UsageError
    from bwenforcer.inputs.slicename import quoted

    word = text.strip().lower()
    if word in ("today", "yesterday"):
        midnight = now_s - now_s % 86_400
        return midnight - (86_400 if word == "yesterday" else 0)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp())
    if word and not word.isdecimal():  # a bare number would be seconds: surely a mistake
        try:
            return now_s - parse_duration_s(word)
        except UnitError:
            pass
    raise UsageError(
        f"report: --since {quoted(text)} is not a date (2026-11-01, 2026-11-01T12:00),"
        " a time before now (24h, 7d) nor today/yesterday"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` verb."""
    parser = sub.add_parser(
        "report",
        help="usage history: bytes, peak hour and capped time per slice per hour/day/month",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--by",
        choices=("hour", "day", "month"),
        default="day",
        help="bucket size (default: day)",
    )
    parser.add_argument("--since", metavar="WHEN", help=SINCE_HELP)
    parser.add_argument("--slice", metavar="NAME", help="only this slice")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a list of objects")
    fmt.add_argument("--csv", action="store_true", help="print CSV with a header line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report as it is read, slice by slice; an empty one is noted on stderr
    (exit 0).
    """
    from bwenforcer.commands.inspect import now_s
    from bwenforcer.errors import Error, ExitCode, UsageError
    from bwenforcer.history.reader import HistoryReader
    from bwenforcer.history.usage import bucket_rows, since_rows
    from bwenforcer.inputs.config import load_config
    from bwenforcer.inputs.slicename import quoted
    from bwenforcer.views.report import (
        INBOUND_KEYS,
        JSON_KEYS,
        csv_text,
        json_text,
        table_text,
    )

    if args.since is not None:
        args.since = parse_since(args.since, now_s())
    config = load_config(args.config)
    path = config.history_file
    inbound = config.inbound.enabled  # the bytes received too
    keys = INBOUND_KEYS if inbound else JSON_KEYS
    seen = {"rows": False}
    with HistoryReader(path, only=args.slice) as reader:
        found = reader.buckets(args.by, args.slice)
        if args.slice is not None:
            one = list(found)  # one slice: known (or not) before anything is printed
            found = iter(one)
            if not one:
                raise UsageError(
                    f"report: no history for slice {quoted(args.slice)}"
                    f" (unknown, or aged out) in {path}"
                )
        elif args.json or args.csv:
            reader.check()  # a damaged file: nothing printed, rather than a list cut short

        def plain() -> Iterator[tuple[str, list[tuple[int, ...]]]]:
            """Each slice's rows as plain tuples (bucket key first; a report can be
            millions of lines), read one slice at a time (by month: its months alone;
            all slices by day: their days as stored); with --slice, that one's alone.
            """
            if args.by == "day" and args.slice is None:
                for name, days in reader.day_rows(received=inbound):
                    got = since_rows(days, "day", args.since)
                    if got:
                        seen["rows"] = True
                        yield name, got
                return
            for name, buckets in found:
                got = bucket_rows(buckets, args.by, args.since)
                if got:
                    seen["rows"] = True
                    yield name, got

        out = sys.stdout
        if args.json:
            started = False
            try:
                for chunk in json_text(plain(), args.by, keys):
                    out.write(chunk)
                    started = True
            except (Error, OSError):
                if started:  # the objects printed are whole: the list is closed
                    out.write("\n]\n")
                raise
            out.write("\n")
        elif args.csv:
            for chunk in csv_text(plain(), args.by, keys):
                out.write(chunk)
        else:
            for chunk in table_text(plain(), args.by, inbound):
                out.write(chunk)
    if not seen["rows"]:
        print(f"bwenforcer: report: {_empty_note(args, path)}", file=sys.stderr)
    return int(ExitCode.OK)


def _empty_note(args: argparse.Namespace, path: str) -> str:
    since = ""
    if args.since is not None:
        since = f" since {dt.datetime.fromtimestamp(args.since, dt.UTC):%Y-%m-%d %H:%M} UTC"
    return f"nothing recorded{since} in {path}"

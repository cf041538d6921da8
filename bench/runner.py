"""The command line the per-feature root benchmarks share: ``--sizes``, ``--runs`` and
``--json``, root checked, SIGTERM unwinding like an exception (so the namespaces of a
run are deleted), one row measured per size, the table printed and the rows written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

Row = dict[str, float]


def sized_main(
    argv: list[str] | None,
    *,
    prog: str,
    doc: str | None,
    needs: str,
    sizes: str,
    runs: int,
    results: Path,
    measure: Callable[[int, int], Row],
    table: Callable[[list[Row]], str],
) -> int:
    """Parse ``argv``, measure each size (``measure(n, runs)``), print ``table`` of the
    rows and write them to ``--json`` (default ``results``); 2 without root (``needs``
    says what for).
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--sizes", default=sizes, help="comma-separated N")
    parser.add_argument("--runs", type=int, default=runs, help="runs per median")
    parser.add_argument("--json", default=str(results))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{prog}: needs root ({needs})", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows = [measure(int(n), args.runs) for n in args.sizes.split(",")]
    print(table(rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"sizes": rows}, indent=2) + "\n")
    return 0

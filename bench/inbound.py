"""``python -m bench.inbound``: the inbound backend at N slices against nft itself.

In a throwaway namespace: the backend's table for N slices (2N counters, N limit
objects when every default class is limited), and beside it a table of the same
shape the `nft` command works on. Each figure is a median of runs timed in turns
with the `nft` command doing the same work, reported as a ratio to it:

- dump: one ``InboundBackend.dump()`` (every counter; the limits are known from
  the dump before) vs ``nft list counters table inet …``; with idle counters
  (the same messages as last time, passed on unparsed) and with every counter
  moved (each message parsed);
- steady: the inbound part of a cycle with nothing to change (ensure, dump,
  no limit change) vs the same ``nft list counters``;
- changes: a set of limit swaps (5 % of the slices, a typical capped cycle, and
  all N) after the cycle's dump vs ``nft -f`` swapping the same limits in one
  transaction.

``loaded_backend`` and ``cycle_step`` are what a whole-cycle benchmark calls to
add the inbound part to its cycles (the "cycle with inbound vs outbound-only" row).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.runner import sized_main
from bwenforcer.core.inbound import InboundLimit
from bwenforcer.core.layout import mark
from bwenforcer.kernel.inbound import InboundBackend
from bwenforcer.kernel.inbound_table import limit_burst_bytes, limit_rate_bytes_s, render_ruleset
from bwenforcer.kernel.nftobj import NftObject

HERE = Path(__file__).resolve().parent
DEV = "v0"
PREFIXES = ("198.19.0.0/16", "2001:db8:e::/64")
YARDSTICK_TABLE = "bench_nft"
BASE_BPS = 8_000_000


def loaded_backend(n: int, dev: str = DEV, *, capped: bool = False) -> InboundBackend:
    """The inbound table for slices 1..n on ``dev`` (this process's namespace), with a
    limit on every default class when ``capped``; the table dumped once.
    """
    backend = InboundBackend(dev, "uid", PREFIXES)
    backend.ensure(range(1, n + 1))
    if capped:
        failures = backend.apply_limits(capped_changes(n, 0))
        assert not failures, failures[:3]
    backend.dump()
    return backend


def capped_changes(n: int, i: int, share: float = 1.0) -> list[InboundLimit]:
    """Run ``i``'s limit changes: a new limit for the first ``share`` of slices 1..n
    (each run's rates differ from the run before's, so every one is a swap).
    """
    count = max(1, int(n * share))
    return [InboundLimit(x, "default", BASE_BPS + 8 * (i + 1) + 8 * x) for x in range(1, count + 1)]


def cycle_step(
    backend: InboundBackend, xids: Sequence[int], changes: Sequence[InboundLimit]
) -> None:
    """The inbound part of one cycle: ensure, one dump, the planner's limit changes."""
    backend.ensure(xids)
    backend.dump()
    failures = backend.apply_limits(changes)
    assert not failures, failures[:3]


def _nft(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"nft {' '.join(args[:3])}: {proc.stderr.strip()[:300]}")
    return proc.stdout


def _yardstick_table(n: int) -> None:
    """The same shape as the backend's table, for `nft` to work on."""
    counters = {f"c{mark(x, c):x}": (0, 0) for x in range(1, n + 1) for c in ("default", "exempt")}
    counters.update({"c1fff": (0, 0), "c2fff": (0, 0)})
    limits = {}
    for x in range(1, n + 1):
        rate = limit_rate_bytes_s(BASE_BPS)
        name = f"l{mark(x, 'default'):x}_a"
        limits[name] = NftObject(name, "limit", 0, 1, rate, limit_burst_bytes(rate))
    _nft("-f", "-", stdin=render_ruleset(YARDSTICK_TABLE, DEV, PREFIXES, counters, limits))


def _nft_swap_script(changes: Sequence[InboundLimit], names: dict[int, str]) -> str:
    """What `nft -f` needs for the same swaps, in one transaction; ``names``: each
    mark's limit object now (updated).
    """
    t = f"inet {YARDSTICK_TABLE}"
    lines = []
    for c in changes:
        m = mark(c.xid, c.traffic_class)
        old = names[m]
        new = f"l{m:x}_{'b' if old.endswith('_a') else 'a'}"
        names[m] = new
        rate = limit_rate_bytes_s(c.rate_bps or BASE_BPS)
        lines += [
            f"add limit {t} {new} {{ rate over {rate} bytes/second"
            f" burst {limit_burst_bytes(rate)} bytes; }}",
            f"delete element {t} in_limit {{ {m:#x} }}",
            f'add element {t} in_limit {{ {m:#x} : "{new}" }}',
            f"delete limit {t} {old}",
        ]
    return "\n".join(lines) + "\n"


def _turns(
    ours: Callable[[int], float], theirs: Callable[[int], float], runs: int
) -> tuple[float, float]:
    """Medians of ``ours(i)`` and ``theirs(i)`` (each returns its own timed seconds), in turns."""
    our_times, their_times = [], []
    for i in range(runs):
        their_times.append(theirs(i))
        our_times.append(ours(i))
    return statistics.median(our_times), statistics.median(their_times)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def inbound_figures(n: int, runs: int) -> dict[str, float]:
    """Every figure at ``n`` slices (this process already in the bench namespace)."""
    out: dict[str, float] = {"n": n}
    xids = range(1, n + 1)
    backend = InboundBackend(DEV, "uid", PREFIXES)
    out["load_s"] = _timed(lambda: backend.ensure(xids))
    out["capped_all_first_s"] = _timed(lambda: backend.apply_limits(capped_changes(n, 0)))
    _yardstick_table(n)
    list_counters = ("list", "counters", "table", "inet", YARDSTICK_TABLE)
    out["dump_s"], out["dump_nft_s"] = _turns(
        lambda i: _timed(backend.dump), lambda i: _timed(lambda: _nft(*list_counters)), runs
    )
    out["dump_moved_s"], out["dump_moved_nft_s"] = _turns(
        lambda i: (backend.nl.forget_parsed(), _timed(backend.dump))[1],
        lambda i: _timed(lambda: _nft(*list_counters)),
        runs,
    )
    out["steady_s"], out["steady_nft_s"] = _turns(
        lambda i: _timed(lambda: cycle_step(backend, xids, ())),
        lambda i: _timed(lambda: _nft(*list_counters)),
        runs,
    )
    names = {mark(x, "default"): f"l{mark(x, 'default'):x}_a" for x in xids}
    for label, share in (("changes_5pct", 0.05), ("changes_all", 1.0)):
        runs_changes = [capped_changes(n, i + 1, share) for i in range(runs)]
        scripts = [_nft_swap_script(runs_changes[i], names) for i in range(runs)]

        def ours(i: int, changes: list[list[InboundLimit]] = runs_changes) -> float:
            backend.dump()  # the cycle's dump: apply works from its objects
            return _timed(lambda: backend.apply_limits(changes[i]))

        def theirs(i: int, scripts: list[str] = scripts) -> float:
            return _timed(lambda: _nft("-f", "-", stdin=scripts[i]))

        out[f"{label}_s"], out[f"{label}_nft_s"] = _turns(ours, theirs, runs)
        out[f"{label}_count"] = len(runs_changes[0])
    backend.close()
    return out


def table(rows: list[dict[str, float]]) -> str:
    """The markdown table of the results."""
    lines = [
        "| N | dump, idle counters / `nft list counters` | dump, every counter moved / same"
        " | steady inbound step / `nft list counters` | 5 % limits swapped / `nft -f`"
        " | all limits swapped / `nft -f` | table load |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:

        def cell(key: str, r: dict[str, float] = r) -> str:
            ours, theirs = r[f"{key}_s"], r[f"{key}_nft_s"]
            return f"{ours * 1e3:.1f} / {theirs * 1e3:.1f} ms = **{ours / theirs:.2f}×**"

        lines.append(
            f"| {int(r['n']):,} | {cell('dump')} | {cell('dump_moved')} | {cell('steady')}"
            f" | {cell('changes_5pct')}"
            f" | {cell('changes_all')} | {r['load_s'] * 1e3:.0f} ms |"
        )
    return "\n".join(lines)


def _measured(n: int, runs: int) -> dict[str, float]:
    from bench.__main__ import Namespace

    with Namespace("in") as _ns:
        return inbound_figures(n, runs)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON."""
    return sized_main(
        argv, prog="python -m bench.inbound", doc=__doc__, needs="network namespace, nftables",
        sizes="1000,4000", runs=9, results=HERE / "results" / "inbound.json",
        measure=_measured, table=table,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.inbound_cycle``: whole cycles with inbound on vs outbound only.

In one throwaway namespace, two HTB trees of N slices side by side (devices ``v0``
and ``w0``), each run by its own agent as the daemon runs it: the uid classifier on
both, and on ``w0`` also inbound accounting with every budget counting both
directions (so each cycle also reads 2N inbound counters and plans 2N inbound
limits). Cycles of the two agents are timed in turns, so both see the same machine:

- steady: nothing changes (no slice over its threshold);
- capped: every slice over its threshold, the clock a minute later each cycle, so
  every egress ceil changes (an inbound limit moves only past its 5 % margin: as a
  real capped cycle, most cycles change none).

Prints a markdown table (medians and the ratio inbound / outbound-only, target
≤ 1.3) and writes ``bench/results/inbound_cycle.json``.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.__main__ import (
    BWMAX_BPS,
    CAP_BPS,
    CAPPED_STEP_S,
    DEV,
    Namespace,
    create_ops,
    paired,
    write_cycle_config,
)
from bench.runner import sized_main
from bwenforcer.kernel.htb import HtbBackend

HERE = Path(__file__).resolve().parent
INBOUND_DEV = "w0"
BOTH = "net_direction: both, net_i2_direction: both"


def write_config(tmp: Path, n: int, capped: bool, dev: str, inbound: bool) -> Path:
    """A config and slices file: N uid slices, all over their threshold when ``capped``;
    with ``inbound``, inbound on and every budget counting both directions.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    settings = (
        f"classifier: {{mode: uid}}\ninbound: {{enabled: {'true' if inbound else 'false'}}}\n"
    )
    return write_cycle_config(tmp, n, capped, dev, extra=BOTH if inbound else "", settings=settings)


def cycles(tmp: Path, n: int, dev: str, *, capped: bool, inbound: bool) -> Callable[[int], None]:
    """Cycle ``i`` of an agent on ``dev`` (two cycles run first: the classes, the
    classifier, the inbound table and the first limits are in place).
    """
    from bwenforcer.cycle.agent import Agent, gc_paused, load_desired
    from bwenforcer.inputs.config import load_config
    from bwenforcer.metrics.collector import AgentMetrics

    config = load_config(str(write_config(tmp, n, capped, dev, inbound)))
    agent, desired, metrics = Agent(config), load_desired(config), AgentMetrics()
    start_s = time.time()
    agent.clock = lambda: start_s
    agent.cycle(desired)
    agent.cycle(desired)

    def cycle(i: int) -> None:
        if capped:
            agent.clock = lambda: start_s + CAPPED_STEP_S * (i + 1)
        with gc_paused():  # as the daemon runs a cycle
            result = agent.cycle(desired)
        metrics.observe(result)
        assert not result.failures, result.failures[:3]

    return cycle


def figures(n: int, runs: int) -> dict[str, float]:
    """Steady and capped cycles, inbound on vs outbound only, timed in turns."""
    out: dict[str, float] = {"n": n}
    with Namespace("ic") as ns, tempfile.TemporaryDirectory() as tmpdir:
        ns.add_veth(INBOUND_DEV, "w1")
        for kind in ("steady", "capped"):
            for dev in (DEV, INBOUND_DEV):
                with HtbBackend(dev) as kernel:
                    kernel.init(CAP_BPS, BWMAX_BPS)
                    assert not kernel.apply(create_ops(n))
            capped = kind == "capped"
            tmp = Path(tmpdir) / kind
            plain = cycles(tmp / "out", n, DEV, capped=capped, inbound=False)
            both = cycles(tmp / "in", n, INBOUND_DEV, capped=capped, inbound=True)
            gc.collect()
            out[f"{kind}_in_s"], out[f"{kind}_out_s"] = paired(both, plain, runs)
            for dev in (DEV, INBOUND_DEV):
                ns.tc("qdisc", "del", "dev", dev, "root")
    return out


def table(rows: list[dict[str, float]]) -> str:
    """The markdown table."""
    lines = [
        "| slices | cycle | outbound only | inbound on (both directions) | ratio (≤ 1.3) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        for kind in ("steady", "capped"):
            plain, both = row[f"{kind}_out_s"], row[f"{kind}_in_s"]
            lines.append(
                f"| {int(row['n']):,} | {kind} | {plain * 1000:.1f} ms | {both * 1000:.1f} ms"
                f" | {both / plain:.2f}× |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON."""
    return sized_main(
        argv, prog="python -m bench.inbound_cycle", doc=__doc__,
        needs="network namespace, HTB, nftables", sizes="4000", runs=15,
        results=HERE / "results" / "inbound_cycle.json", measure=figures, table=table,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

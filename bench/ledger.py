"""The ledger row of the benchmark: a steady cycle's cost with 40,000 dead slices
waiting in the ledger against an empty one, and the state file's bytes per entry.

Each case runs in a process of its own (its peak RSS is the case's): 4,000 live
slices whose counters grow every cycle, the state loaded through the state store as
a daemon's start does (from a file a process of its own wrote: building 40,000
entries as objects is not what a node does), then cycles of plan + save (the part of
a cycle the ledger can cost anything in; the kernel's part does not see it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

_CASE = r"""
import json, os, resource, sys, tempfile, time, dataclasses
from bwenforcer.core.model import (
    ClassPolicy, ClassRates, DesiredSet, DesiredSlice, KernelClass, KernelSlice,
    KernelSnapshot, LedgerEntry, State,
)
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.cycle.agent import gc_paused
from bwenforcer.store.state import StateStore

n, waiting, cycles = (int(a) for a in sys.argv[1:4])
path, write = sys.argv[4], sys.argv[5] == "write"
T0, PERIOD_S, CAP, BWMAX = 1_800_000_000, 30 * 86_400, 10_000_000, 1_000_000_000
params = PlanParams(period_s=PERIOD_S, anchor=None, bwmin_bps=8_000)
pd = ClassPolicy(250_000_000_000, 200_000_000_000, 8_000, CAP, 1)
pe = ClassPolicy(500_000_000_000, 400_000_000_000, 8_000, BWMAX, 1)
want = DesiredSet(tuple(DesiredSlice(f"pl_slice{x:05d}", x, pd, pe) for x in range(1, n + 1)))

def snapshot(c):
    return KernelSnapshot(CAP, BWMAX, {
        x: KernelSlice(x, KernelClass(ClassRates(8_000, CAP, 1), c * 1_000_000 + x),
                       KernelClass(ClassRates(8_000, BWMAX, 1), c * 1_000 + x))
        for x in range(1, n + 1)
    })

state = plan(want, snapshot(0), State(), params, T0).state
ledger = {}
if waiting and write:
    # dead slices of the same period, usage in the tens of GB, each died in its cycle
    some = state.slices[1]
    for i in range(waiting):
        name = f"pl_gone{i:06d}_web"
        st = dataclasses.replace(
            some, name=name, xid=1 + i % 4000,
            default=dataclasses.replace(some.default, used_bytes=123_456_789_012 + i,
                                        last_counter_bytes=987_654_321_098 + i),
            exempt=dataclasses.replace(some.exempt, used_bytes=12_345_678_901 + i,
                                       last_counter_bytes=98_765_432_109 + i),
        )
        ledger[name] = LedgerEntry(st, T0 + 300 * (i // 200))
    state = dataclasses.replace(state, ledger=ledger)
if write:
    StateStore(path).save(state, T0)
    sys.exit(0)
del state, ledger
store = StateStore(path)  # a daemon's start: the state as loaded from its file
state = store.load().state
size = os.path.getsize(path)
times, plans = [], []
for c in range(1, cycles + 1):
    now = T0 + 300 * c
    kernel = snapshot(c)
    with gc_paused():  # as the agent's cycle (cycle.agent.gc_paused)
        start = time.perf_counter()
        p = plan(want, kernel, state, params, now)
        planned = time.perf_counter()
        store.save(p.state, now)
        times.append(time.perf_counter() - start)
        plans.append(planned - start)
    state = p.state
print(json.dumps({
    "cycle_s": sorted(times[2:])[len(times[2:]) // 2],
    "plan_s": sorted(plans[2:])[len(plans[2:]) // 2],
    "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "state_bytes": size,
}))
"""


def _case(n: int, waiting: int, cycles: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.json")
        for step in ("write", "run"):
            proc = subprocess.run(
                [sys.executable, "-c", _CASE, str(n), str(waiting), str(cycles), path, step],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"bench.ledger: case failed: {proc.stderr[-500:]}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def ledger_figures(n: int, waiting: int, cycles: int, runs: int) -> dict[str, float]:
    """Medians over ``runs`` processes of the steady cycle (plan + save) and peak RSS with
    ``waiting`` ledger entries and with none; the state bytes per entry.
    """
    out: dict[str, float] = {"n": n, "waiting": waiting}
    for tag, count in (("empty", 0), ("full", waiting)):
        cases = [_case(n, count, cycles) for _ in range(runs)]
        out[f"{tag}_cycle_s"] = statistics.median(c["cycle_s"] for c in cases)
        out[f"{tag}_plan_s"] = statistics.median(c["plan_s"] for c in cases)
        out[f"{tag}_rss_kib"] = statistics.median(c["rss_kib"] for c in cases)
        out[f"{tag}_state_bytes"] = cases[0]["state_bytes"]
    out["bytes_per_entry"] = (out["full_state_bytes"] - out["empty_state_bytes"]) / waiting
    return out


def ledger_line(r: dict[str, float]) -> str:
    """One sentence for the ledger figures."""
    return (
        f"Ledger: {int(r['n']):,} live slices with {int(r['waiting']):,} ledger entries"
        f" waiting: steady cycle (plan + save) {r['full_cycle_s'] * 1e3:.0f} ms vs"
        f" {r['empty_cycle_s'] * 1e3:.0f} ms with an empty ledger"
        f" ({r['full_cycle_s'] / r['empty_cycle_s']:.2f}×; the plan alone"
        f" {r['full_plan_s'] * 1e3:.0f} vs {r['empty_plan_s'] * 1e3:.0f} ms), peak RSS"
        f" {r['full_rss_kib'] / 1024:.0f} vs {r['empty_rss_kib'] / 1024:.0f} MiB"
        f" ({r['full_rss_kib'] / r['empty_rss_kib']:.2f}×); state file"
        f" {r['bytes_per_entry']:.0f} bytes per entry."
    )


if __name__ == "__main__":
    from pathlib import Path

    figures = ledger_figures(4000, 40_000, 12, 3)
    print(ledger_line(figures))
    out = Path(__file__).with_name("results") / "ledger.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")

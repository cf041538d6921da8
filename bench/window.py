"""The rolling-window row of the benchmark: at 4,000 slices with tiers and a 30-day
rolling window on every slice, the steady and capped whole cycles against today's
(neither), timed in turns in the same run (``bench.__main__.window_figures``, on the
kernel), and the state file's size.

The trees' state files hold no traffic (the benchmark's tree sends nothing), so the
size is also measured on states with traffic (:func:`state_sizes`, pure, no root):
every slice busy for 30 days, each of its 2 × 25 buckets holding gigabytes (10 or 11
digits), its counters and usage in the hundreds of gigabytes, against today's state
of the same slices and usage.
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile

from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    DesiredSet,
    DesiredSlice,
    KernelClass,
    KernelSlice,
    KernelSnapshot,
    State,
)
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.core.window import RING
from bwenforcer.store.state import StateStore

TIERS = "75%:50mbit,100%:2mbit"
WINDOW = "30d"
# the rspec attributes every slice of the window row gets on top of the benchmark's own
EXTRA = f'net_tiers: "{TIERS}", net_window: {WINDOW}'

_T0, _CAP, _BWMAX = 1_800_000_000, 1_000_000_000, 10_000_000_000


def _state(n: int, windowed: bool, rng: random.Random) -> State:
    """``n`` busy slices, with or without tiers and a 30-day window."""
    pd = ClassPolicy(250_000_000_000, 200_000_000_000, 8_000, _CAP, 1)
    pe = ClassPolicy(500_000_000_000, 400_000_000_000, 8_000, _BWMAX, 1)
    if windowed:
        pd = dataclasses.replace(pd, tiers=TIERS, window_s=30 * 86_400)
        pe = dataclasses.replace(pe, tiers=TIERS, window_s=30 * 86_400)
    want = DesiredSet(tuple(DesiredSlice(f"pl_slice{x:05d}", x, pd, pe) for x in range(1, n + 1)))
    kernel = KernelSnapshot(
        _CAP,
        _BWMAX,
        {
            x: KernelSlice(
                x,
                KernelClass(ClassRates(8_000, _CAP, 1), 0),
                KernelClass(ClassRates(8_000, _BWMAX, 1), 0),
            )
            for x in range(1, n + 1)
        },
    )
    params = PlanParams(period_s=30 * 86_400, anchor=None, bwmin_bps=8_000)
    state = plan(want, kernel, State(), params, _T0).state
    slices = {}
    for xid, st in state.slices.items():
        classes = []
        for cs in (st.default, st.exempt):
            ring = tuple(rng.randrange(10**9, 2 * 10**10) for _ in range(RING))
            used = sum(ring)
            classes.append(
                dataclasses.replace(
                    cs,
                    used_bytes=used,
                    last_counter_bytes=used + rng.randrange(10**12),
                    buckets=ring if windowed else (),
                )
            )
        slices[xid] = dataclasses.replace(st, default=classes[0], exempt=classes[1])
    return dataclasses.replace(state, slices=slices)


def state_sizes(n: int) -> dict[str, float]:
    """The state file's bytes with ``n`` busy slices, today's and with tiers and windows."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tag, windowed in (("today", False), ("window", True)):
            path = os.path.join(tmp, f"{tag}.json")
            StateStore(path).save(_state(n, windowed, random.Random(n)), _T0)
            out[f"busy_state_{tag}_bytes"] = os.path.getsize(path)
    return out


def window_table(r: dict[str, float]) -> str:
    """The markdown table of the window row."""
    n = int(r["n"])

    def ratio(ours: float, theirs: float) -> str:
        return f"**{ours / theirs:.2f}×**"

    busy_today, busy_window = r["busy_state_today_bytes"], r["busy_state_window_bytes"]
    return "\n".join(
        [
            f"| {n:,} slices, tiers + 30-day window vs today | window | today | ratio (target) |",
            "| --- | ---: | ---: | ---: |",
            f"| steady cycle | {r['steady_window_s'] * 1e3:.1f} ms"
            f" | {r['steady_today_s'] * 1e3:.1f} ms"
            f" | {ratio(r['steady_window_s'], r['steady_today_s'])} (≤ 1.2×) |",
            f"| capped cycle | {r['capped_window_s'] * 1e3:.0f} ms"
            f" | {r['capped_today_s'] * 1e3:.0f} ms"
            f" | {ratio(r['capped_window_s'], r['capped_today_s'])} (≤ 1.2×) |",
            f"| state file, the bench's idle trees | {r['state_window_bytes'] / 1e6:.2f} MB"
            f" | {r['state_today_bytes'] / 1e6:.2f} MB"
            f" | {ratio(r['state_window_bytes'], r['state_today_bytes'])} (≤ 2×) |",
            f"| state file, busy slices (buckets of GB) | {busy_window / 1e6:.2f} MB"
            f" | {busy_today / 1e6:.2f} MB | {ratio(busy_window, busy_today)} (≤ 2×);"
            f" {(busy_window - busy_today) / n:.0f} bytes more per slice |",
        ]
    )


if __name__ == "__main__":
    sizes = state_sizes(4000)
    print(
        f"state file, 4,000 busy slices: {sizes['busy_state_window_bytes']:,} bytes with tiers"
        f" and 30-day windows vs {sizes['busy_state_today_bytes']:,} today"
        f" ({sizes['busy_state_window_bytes'] / sizes['busy_state_today_bytes']:.2f}×)"
    )

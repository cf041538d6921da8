"""End to end with real traffic: uid classification, exempt prefixes, a cap that holds.

A slice sending TCP as fast as it can passes its threshold; after the next cycle
its measured throughput matches the ceil the formula gave (±25 %). Traffic to an
exempt prefix is counted in the exempt class only; a slice under its threshold
keeps its full rate. Bounded: well under a minute, a few tens of MB.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.modes.traffic import start_sender, start_sink
from tests.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.kernel

HEAVY, LIGHT, EXEMPT_ONLY = 1501, 1502, 1503
EXEMPT_ADDR = "198.19.0.1"
PORT = 5401


@pytest.fixture
def e2e_pair() -> Iterator[NetnsPair]:
    with netns_pair("e2e", extra_b_addrs=[f"{EXEMPT_ADDR}/32"]) as created:
        yield created


def _config(tmp: Path) -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        f"  - {{name: e2e_heavy, xid: {HEAVY}, rspec: {{net_max_kbyte: 20000, net_thresh_kbyte: 1000}}}}\n"
        f"  - {{name: e2e_light, xid: {LIGHT}, rspec: {{}}}}\n"
        f"  - {{name: e2e_exempt, xid: {EXEMPT_ONLY}, rspec: {{}}}}\n"
    )
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        "device: va\nnode_cap: 20mbit\nbwmax: 100mbit\nperiod: 60s\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "metrics: {listen: null}\n"
        f"classifier: {{mode: uid, exempt_prefixes: [{EXEMPT_ADDR}/32]}}\n"
    )
    return cfg


def _counters(pair: NetnsPair) -> dict[tuple[int, str], int]:
    with HtbBackend("va", netns=pair.a.name) as kernel:
        snap = kernel.dump()
    return {
        (xid, tc): (ks.cls(tc).bytes if ks.cls(tc) else 0)
        for xid, ks in snap.slices.items()
        for tc in ("default", "exempt")
    }


def _rates_bps(pair: NetnsPair, seconds: float) -> dict[tuple[int, str], float]:
    before, t0 = _counters(pair), time.monotonic()
    time.sleep(seconds)  # measuring real throughput needs real time
    after, t1 = _counters(pair), time.monotonic()
    return {k: (after[k] - before.get(k, 0)) * 8 / (t1 - t0) for k in after}


def test_capped_slice_runs_at_the_computed_ceil_exempt_counted_apart(
    e2e_pair: NetnsPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = e2e_pair
    config = load_config(str(_config(tmp_path)))
    with HtbBackend("va", netns=pair.a.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    agent = Agent(config, netns=pair.a.name)
    desired = load_desired(config)
    agent.cycle(desired)  # classes and classifier in place before any traffic

    procs: list[subprocess.Popen] = [start_sink(pair.b.name, PORT, 40)]
    try:
        procs.append(
            start_sender(pair.a.name, HEAVY, pair.b_addr, PORT, max_bytes=60_000_000, seconds=30)
        )
        procs.append(
            start_sender(
                pair.a.name,
                LIGHT,
                pair.b_addr,
                PORT,
                max_bytes=5_000_000,
                seconds=30,
                rate_bps=1_000_000,
            )
        )
        exempt = start_sender(
            pair.a.name, EXEMPT_ONLY, EXEMPT_ADDR, PORT, max_bytes=1_000_000, seconds=10
        )
        procs.append(exempt)
        time.sleep(2)  # the heavy slice passes its 1000 KiB threshold at 20 Mbit/s
        result = agent.cycle(desired)
        heavy = next(line for line in result.plan.lines if line.xid == HEAVY).default
        light = next(line for line in result.plan.lines if line.xid == LIGHT).default
        assert heavy.capped, heavy
        assert not light.capped and light.new_ceil_bps == 20_000_000
        ceil = heavy.new_ceil_bps
        assert 1_000_000 < ceil < 15_000_000  # a real cap, well below the node cap

        time.sleep(1)  # let TCP settle to the new ceil
        rates = _rates_bps(pair, 4)
        measured = rates[(HEAVY, "default")]
        with capsys.disabled():  # shown in CI's log, not only on failure
            print(
                f"\nheavy slice: computed ceil {ceil} bit/s, measured {measured:.0f} bit/s"
                f" ({measured / ceil:.0%}); light slice measured {rates[(LIGHT, 'default')]:.0f} bit/s"
            )
        assert 0.75 * ceil <= measured <= 1.25 * ceil
        assert rates[(LIGHT, "default")] >= 0.75 * 1_000_000  # its own pace, not throttled

        exempt.wait(timeout=15)
        counters = _counters(pair)
        assert counters[(EXEMPT_ONLY, "exempt")] >= 1_000_000
        assert counters[(EXEMPT_ONLY, "default")] == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)

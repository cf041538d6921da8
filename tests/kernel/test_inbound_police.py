"""Inbound policing with real TCP downloads (slow: 20 s averages, about 2.5 minutes
in all; part of the normal suite, CI runs it).

A single download into a limited slice gets ≥ 80 % and ≤ 105 % of its limit over
20 s; eight in parallel ≤ 105 % in sum; limit swaps under continuous traffic never
let more through than the limit plus the documented allowance (each new limit
object starts with a full bucket: one second of its rate plus its burst).
"""

from __future__ import annotations

import time

import pytest

from bwenforcer.core.inbound import InboundLimit
from bwenforcer.kernel.inbound_table import limit_burst_bytes, limit_rate_bytes_s
from bwenforcer.modes.traffic import start_fetch, start_source
from tests.inbound_helpers import average_bps, node

pytestmark = pytest.mark.kernel

XID = 1001
KEY = (XID, "default")


@pytest.mark.parametrize("mbit", [2, 8, 32])
def test_single_download_gets_80_to_105_percent_of_its_limit(mbit: int) -> None:
    limit_bps = mbit * 1_000_000
    with node(f"pol{mbit}", (XID,)) as n:
        assert n.inbound.apply_limits([InboundLimit(XID, "default", limit_bps)]) == []
        got = average_bps(n, KEY, n.pair.b_addr, 5800 + mbit, conns=1)
    print(f"\n{mbit} Mbit/s, 1 connection: {got / limit_bps:.1%} of the limit")
    assert 0.80 * limit_bps <= got <= 1.05 * limit_bps, got / limit_bps


@pytest.mark.parametrize("mbit", [2, 32])
def test_eight_parallel_downloads_stay_within_105_percent(mbit: int) -> None:
    limit_bps = mbit * 1_000_000
    with node(f"pol8x{mbit}", (XID,)) as n:
        assert n.inbound.apply_limits([InboundLimit(XID, "default", limit_bps)]) == []
        got = average_bps(n, KEY, n.pair.b_addr6, 5900 + mbit, conns=8)
    print(f"\n{mbit} Mbit/s, 8 connections: {got / limit_bps:.1%} of the limit")
    assert got <= 1.05 * limit_bps, got / limit_bps


def test_swaps_under_traffic_pass_no_more_than_the_limit_and_the_allowance() -> None:
    limit_bps = 4_000_000
    swaps = 8
    seconds = 12.0
    with node("polswap", (XID,)) as n:
        b = n.inbound
        assert b.apply_limits([InboundLimit(XID, "default", limit_bps)]) == []
        source = start_source(n.pair.b.name, 6001, seconds + 8, 10**10)
        try:
            start_count = b.dump().bytes_by_class[KEY]
            start = time.monotonic()
            fetch = start_fetch(n.pair.a.name, XID, n.pair.b_addr, 6001, seconds=seconds + 1)
            samples = [start_count]
            for i in range(swaps):
                time.sleep(start + (i + 1) * seconds / (swaps + 1) - time.monotonic())
                # the same limit give or take a byte: each swap is a new object
                bps = limit_bps + 8 * (i % 2)
                assert b.apply_limits([InboundLimit(XID, "default", bps)]) == []
                samples.append(b.dump().bytes_by_class[KEY])
            time.sleep(start + seconds - time.monotonic())
            counted = b.dump().bytes_by_class[KEY] - start_count
            elapsed = time.monotonic() - start
            fetch.communicate(timeout=15)
        finally:
            source.kill()
            source.wait(timeout=5)
    rate = limit_rate_bytes_s(limit_bps + 8)
    allowance = (swaps + 1) * (rate + limit_burst_bytes(rate))  # every object's first bucket
    print(
        f"\n{swaps} swaps in {elapsed:.1f} s: {counted * 8 / elapsed / limit_bps:.1%} of the"
        f" limit; bound {(rate * elapsed + allowance) * 8 / elapsed / limit_bps:.1%}"
    )
    assert samples == sorted(samples)  # the counter went on counting through every swap
    assert counted <= rate * elapsed + allowance
    assert counted >= 0.8 * limit_bps / 8 * elapsed  # and it was a real download

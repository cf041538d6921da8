"""A tree built by PlanetLab's bwlimit (the node manager's net module), not by us: the
mark → class filter is checked and put back, and packets marked as the node manager
marks them (mark = xid) or as our ``uid`` classifier does (0x1000|xid, 0x2000|xid)
reach the slice's classes. The tree is built with bwlimit's own ``tc`` commands."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from bwenforcer.kernel.htb import FILTER_PRIO, HtbBackend
from tests import bwlimit_emulation as bwlimit
from tests.kernel_helpers import send_marked, tc_bytes
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

CAP = 100_000_000
FRAME = 1042  # a 1000-byte datagram on the wire: UDP, IPv4 and Ethernet headers
OLD_PROGRAM = "5,32 0 0 4294963220,21 0 1 0,6 0 0 0,68 0 0 65536,22 0 0 0"


def tc(pair: NetnsPair) -> list[str]:
    return ["tc", "-n", pair.a.name]


def bwlimit_tree(pair: NetnsPair) -> None:
    errors = bwlimit.init(tc(pair), "va", CAP)
    assert all(" fw " in e for e in errors), errors  # only its fw filters fail (no cls_fw)
    bwlimit.run_tc(tc(pair), bwlimit.on_commands("va", 501, CAP, bwlimit.SliceLimits()))
    bwlimit.run_tc(tc(pair), bwlimit.on_commands("va", 502, CAP, bwlimit.SliceLimits()))


def our_filters(pair: NetnsPair) -> list[str]:
    out = pair.a.tc("filter", "show", "dev", "va")
    return [line for line in out.splitlines() if "handle" in line]


def direct_packets(pair: NetnsPair) -> int:
    """Packets HTB sent unshaped (classified to the qdisc itself, or no default class yet)."""
    qdisc = pair.a.tc("-s", "qdisc", "show", "dev", "va")
    direct = re.search(r"direct_packets_stat (\d+)", qdisc)
    assert direct is not None, qdisc
    return int(direct.group(1))


def settle(pair: NetnsPair, classid: str) -> int:
    """The class's sent bytes once they stop changing (the queue drained)."""
    last = -1
    for _ in range(50):
        now = tc_bytes(pair.a, "va", classid)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def test_a_bwlimit_tree_gets_our_filter_and_both_mark_conventions_reach_the_slices(
    pair: NetnsPair,
) -> None:
    bwlimit_tree(pair)
    assert our_filters(pair) == []  # bwlimit's fw filters failed: nothing classifies
    with HtbBackend("va", netns=pair.a.name) as k:
        assert k.dump().cap_bps == CAP  # adopted: 1:10's ceil is the node cap
        assert k.ensure_filter() == "mark → class filter missing: put back"
        assert k.ensure_filter() is None  # in place: nothing sent
    (line,) = our_filters(pair)
    assert f"pref {FILTER_PRIO} bpf" in line and "flowid 1:1fff" in line
    host = pair.b_addr
    direct_before = direct_packets(pair)  # e.g. a neighbour solicitation before 1:1fff existed
    send_marked(pair.a, host, 501, count=40)  # the node manager's mark: the xid
    send_marked(pair.a, host, 0x11F5, count=10)  # the uid classifier's default mark
    send_marked(pair.a, host, 0x21F6, count=20)  # the uid classifier's exempt mark
    send_marked(pair.a, host, 502, count=30)
    for junk in (0, 0xFFF, 0xFFE, 0x31F5, 0x10000, 0x401F5):  # no slice: the default class
        send_marked(pair.a, host, junk, count=5)
    assert settle(pair, "1:11f5") == 50 * FRAME  # per datagram
    assert settle(pair, "1:21f6") == 20 * FRAME
    assert settle(pair, "1:11f6") == 30 * FRAME
    assert settle(pair, "1:21f5") == 0
    assert settle(pair, "1:1fff") >= 30 * FRAME
    assert direct_packets(pair) == direct_before  # mark 0x10000 was shaped, not sent direct


def test_an_older_bwenforcers_filter_at_bwlimits_priority_is_replaced(pair: NetnsPair) -> None:
    bwlimit_tree(pair)
    pair.a.tc("filter", "add", "dev", "va", "parent", "1:", "prio", "1", "handle", "1",
              "protocol", "all", "bpf", "bytecode", OLD_PROGRAM, "classid", "1:1fff")  # fmt: skip
    with HtbBackend("va", netns=pair.a.name) as k:
        assert k.ensure_filter() == "mark → class filter missing: put back"
    (line,) = our_filters(pair)
    assert f"pref {FILTER_PRIO} bpf" in line
    send_marked(pair.a, pair.b_addr, 501, count=10)
    assert settle(pair, "1:11f5") == 10 * FRAME


def test_a_cycle_puts_the_filter_back_once_and_counts_it(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bwenforcer.core.model import ClassPolicy, DesiredSet, DesiredSlice
    from bwenforcer.cycle.run import run_cycle
    from bwenforcer.inputs.config import load_config
    from bwenforcer.metrics.collector import AgentMetrics
    from bwenforcer.store.state import StateStore

    bwlimit_tree(pair)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device: va\nstate_file: {tmp_path}/s.json\nslices_file: null\n")
    config = load_config(str(cfg))
    policy = ClassPolicy(10**10, 10**10, 8_000, 50_000_000, 1)
    desired = DesiredSet((DesiredSlice("pl_a", 501, policy, policy),))
    store, metrics = StateStore(config.state_file), AgentMetrics()
    with HtbBackend("va", netns=pair.a.name) as k, caplog.at_level(logging.WARNING):
        for now_s in (1_000, 1_060):
            result = run_cycle(
                config, desired, kernel=k, store=store, notifier=None, clock=lambda t=now_s: t
            )
            metrics.observe(result)
    put_back = [r.getMessage() for r in caplog.records if "filter" in r.getMessage()]
    assert put_back == ["dev va: mark → class filter missing: put back"]  # the first cycle only
    assert metrics.snapshot().counts["filters_restored"] == 1
    send_marked(pair.a, pair.b_addr, 501, count=10)
    assert settle(pair, "1:11f5") == 10 * FRAME

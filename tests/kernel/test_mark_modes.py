"""The mark → class program follows classifier.mode: bare marks (mark = xid, the node
manager's convention) reach the slice's class only in modes none and nodemanager; in
uid and cgroup, where bwenforcer sets every slice's mark (0x1000|xid, 0x2000|xid), a
bare mark, such as a kernel packet's stray one, lands in the default class. Real
packets, marked with SO_MARK, through the agent's cycles."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from bwenforcer.core.model import ClassPolicy, DesiredSet, DesiredSlice
from bwenforcer.cycle.agent import Agent
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel import wire as w
from bwenforcer.kernel.htb import HtbBackend
from tests.kernel_helpers import send_marked, tc_bytes
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

FRAME = 1042  # a 1000-byte datagram on the wire: UDP, IPv4 and Ethernet headers
# Not 0xd4: the kernel's own MLDv2 reports were seen leaving with that stray mark, which
# mode none (bare xids count) bills to xid 0xd4 and would add 110 bytes to its class.
XID = 0x1A5
CLASS = f"1:{0x1000 | XID:x}"


def agent(pair: NetnsPair, tmp_path: Path, mode: str) -> Agent:
    cfg = tmp_path / f"{mode}.yaml"
    cfg.write_text(
        f"device: va\nnode_cap: 100mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\n"
        f"metrics: {{listen: null}}\nclassifier: {{mode: {mode}}}\n"
    )
    return Agent(load_config(str(cfg)), netns=pair.a.name)


def settled(pair: NetnsPair, classid: str) -> int:
    """The class's sent bytes once they stop changing (the queue drained)."""
    last = -1
    for _ in range(50):
        now = tc_bytes(pair.a, "va", classid)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def program(pair: NetnsPair) -> bytes:
    with HtbBackend("va", netns=pair.a.name) as k:
        (ours,) = [f for f in k.filters() if f.handle == 1]
    return ours.ops


def test_bare_marks_reach_a_slice_only_in_modes_where_someone_else_marks(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = ClassPolicy(10**10, 10**10, 8_000, 50_000_000, 1)
    desired = DesiredSet((DesiredSlice("pl_a", XID, policy, policy),))
    host = pair.b_addr

    uid = agent(pair, tmp_path, "uid")
    try:
        assert uid.cycle(desired).result == "ok"  # builds the tree, tagged program
    finally:
        uid.close()
    assert program(pair) == w.bpf_ops(w.TAGGED_MARK_TO_CLASS_PROGRAM)
    default_before = settled(pair, "1:1fff")
    send_marked(pair.a, host, XID, count=20)  # bare: no slice's in uid mode
    send_marked(pair.a, host, 0x1000 | XID, count=10)  # the uid classifier's mark
    assert settled(pair, CLASS) == 10 * FRAME
    assert settled(pair, "1:1fff") - default_before >= 20 * FRAME

    # a reloaded config (a new agent, as agent_for makes): the next cycle swaps the program
    none = agent(pair, tmp_path, "none")
    try:
        with caplog.at_level(logging.WARNING):
            assert none.cycle(desired).result == "ok"
            assert none.cycle(desired).result == "ok"
    finally:
        none.close()
    swapped = [r.getMessage() for r in caplog.records if "filter" in r.getMessage()]
    assert swapped == [
        "dev va: mark → class filter of another classifier mode (bare marks ignored): put back"
    ]  # the first cycle only
    assert program(pair) == w.bpf_ops(w.MARK_TO_CLASS_PROGRAM)
    send_marked(pair.a, host, XID, count=30)  # the node manager's convention: the xid
    assert settled(pair, CLASS) == 40 * FRAME

    back = agent(pair, tmp_path, "uid")
    try:
        assert back.cycle(desired).result == "ok"
    finally:
        back.close()
    assert program(pair) == w.bpf_ops(w.TAGGED_MARK_TO_CLASS_PROGRAM)

"""HTB backend on the real kernel, checked through our dump and through `tc` as observer."""

from __future__ import annotations

import errno
import re

import pytest

from bwenforcer.commands.tc import Given, on_rates
from bwenforcer.core.layout import BWMIN_BPS
from bwenforcer.core.model import ClassOp, ClassRates
from bwenforcer.errors import DeviceMissing, KernelError, TreeNotInitialised, XidOutOfRange
from bwenforcer.kernel.htb import HtbBackend
from tests.kernel_helpers import mark_all_to, send_bytes, tc_bytes, tc_ceils
from tests.netns import Netns, NetnsPair

pytestmark = pytest.mark.kernel
CAP = 10_000_000
BWMAX = 1_000_000_000


KEEP: Given = (None, None, None)


def backend(ns: Netns, dev: str = "v0") -> HtbBackend:
    return HtbBackend(dev, netns=ns.name)


def on(k: HtbBackend, xid: int, default: Given = KEEP, exempt: Given = KEEP) -> list[ClassOp]:
    """``tc on`` on a backend: one dump, the rates from the policy, the changes set."""
    snap = k.dump()
    rates = on_rates(snap, xid, {"default": default, "exempt": exempt}, BWMIN_BPS)
    return k.set(xid, rates, snap.slices.get(xid))


def test_init_builds_the_design_tree_and_one_bpf_filter(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        snap = k.dump()
    assert (snap.cap_bps, snap.bwmax_bps) == (CAP, BWMAX)
    assert sorted(snap.slices) == [0, 0xFFF]
    out = ns.tc("-d", "class", "show", "dev", "v0")
    for classid, parent in (
        ("1:10", "1:1"),
        ("1:100", "1:10"),
        ("1:20", "1:1"),
        ("1:1fff", "1:100"),
        ("1:2fff", "1:20"),
        ("1:1000", "1:100"),
        ("1:2000", "1:20"),
    ):
        assert re.search(rf"class htb {classid} parent {parent} ", out), (classid, out)
    assert tc_ceils(ns, "v0")["1:10"] == CAP
    filters = [
        line for line in ns.tc("filter", "show", "dev", "v0").splitlines() if "handle" in line
    ]
    assert len(filters) == 1 and "bpf" in filters[0] and "flowid 1:1fff" in filters[0]
    assert "4294963220" in filters[0]  # the mark → class program
    assert "default 0x1fff" in ns.tc("qdisc", "show", "dev", "v0")


def test_init_is_idempotent_and_keeps_slice_settings(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        on(k, 77, default=(None, 3_000_000, 3))
        k.init(CAP, BWMAX)
        k.init(20_000_000, BWMAX)  # a new cap changes the tree classes only
        snap = k.dump()
    assert snap.cap_bps == 20_000_000
    assert snap.slices[77].default.rates == ClassRates(8000, 3_000_000, 3)
    assert (
        len(
            [line for line in ns.tc("filter", "show", "dev", "v0").splitlines() if "handle" in line]
        )
        == 1
    )


def test_set_clamps_like_bwlimit_and_skips_unchanged(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        ops = on(k, 5, default=(90_000_000, 50_000_000, None), exempt=(None, 5, None))
        snap = k.dump()
        assert snap.slices[5].default.rates == ClassRates(CAP, CAP, 1)  # max ≤ cap, min ≤ max
        assert snap.slices[5].exempt.rates.max_rate_bps == 8000  # ≥ bwmin
        assert [o.kind for o in ops] == ["create", "create"]
        assert (
            on(k, 5, default=(None, 50_000_000, None)) == []
        )  # equal to the kernel's: nothing sent
        changed = on(k, 5, exempt=(None, None, 4))
        assert [(o.traffic_class, o.rates.share) for o in changed] == [("exempt", 4)]
    assert "quantum 6400" in ns.tc("-d", "class", "show", "dev", "v0", "classid", "1:2005")


def test_a_class_we_set_reads_like_one_tc_set(ns: Netns) -> None:
    """Same rate, ceil, quantum, burst and cburst as `tc class add … htb` gives (no rate
    tables sent, buffer and cbuffer computed as tc does)."""
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        on(k, 5, default=(None, 2_000_000, 2))
    ns.tc(
        "class", "add", "dev", "v0", "parent", "1:100", "classid", "1:1006",
        "htb", "rate", "8kbit", "ceil", "2mbit", "quantum", "3200",
    )  # fmt: skip
    ns.tc("qdisc", "add", "dev", "v0", "parent", "1:1006", "handle", "1006:", "pfifo")

    def shown(classid: str) -> str:
        out = ns.tc("-d", "class", "show", "dev", "v0", "classid", classid)
        return out.replace(classid, "X").replace(classid.split(":")[1] + ":", "Y:")

    assert shown("1:1005") == shown("1:1006")
    assert "burst 1600b/1 mpu 0b cburst 1600b/1 mpu 0b" in shown("1:1005")


def test_init_over_a_foreign_root_qdisc_says_so_and_leaves_it(ns: Netns) -> None:
    ns.tc(
        "qdisc", "add", "dev", "v0", "root", "handle", "5:",
        "tbf", "rate", "1mbit", "burst", "10k", "latency", "50ms",
    )  # fmt: skip
    with backend(ns) as k, pytest.raises(KernelError, match="another root qdisc") as caught:
        k.init(CAP, BWMAX)
    assert len(str(caught.value).splitlines()) == 1
    assert "tbf 5: root" in ns.tc("qdisc", "show", "dev", "v0")


def test_an_out_of_range_xid_in_a_batch_fails_alone(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        ops = [
            ClassOp("create", 1, "default", ClassRates(8000, 1_000_000, 1)),
            ClassOp("create", 70000, "default", ClassRates(8000, 1_000_000, 1)),
            ClassOp("create", 2, "exempt", ClassRates(8000, 1_000_000, 1)),
        ]
        failures = k.apply(ops)
        assert [(f.op.xid, f.errno) for f in failures] == [(70000, errno.ERANGE)]
        assert "70000 out of range" in failures[0].message
        snap = k.dump()
    assert snap.slices[1].default is not None and snap.slices[2].exempt is not None
    assert "1:2002" in ns.tc("class", "show", "dev", "v0")


def test_off_and_stop(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        on(k, 9)
        k.off(9)
        k.off(9)  # already gone: fine
        assert 9 not in k.dump().slices
        assert "1:1009" not in ns.tc("class", "show", "dev", "v0")
        assert "1009:" not in ns.tc("qdisc", "show", "dev", "v0")
        k.stop()
        k.stop()
        with pytest.raises(TreeNotInitialised, match="tc init"):
            k.dump()
    assert "htb" not in ns.tc("qdisc", "show", "dev", "v0")


def test_rates_above_32_bits_of_bytes_per_second(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(40_000_000_000, 80_000_000_000)
        on(k, 3, default=(None, 40_000_000_000, None), exempt=(None, 80_000_000_000, None))
        snap = k.dump()
    assert snap.bwmax_bps == 80_000_000_000
    assert snap.slices[3].default.rates.max_rate_bps == 40_000_000_000
    assert snap.slices[3].exempt.rates.max_rate_bps == 80_000_000_000
    assert tc_ceils(ns, "v0")["1:1003"] == 40_000_000_000


def test_one_bad_op_in_a_batch_is_reported_and_the_rest_applied(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        ops = [
            ClassOp("create", x, "default", ClassRates(8000, 1_000_000, 1)) for x in range(1, 600)
        ]
        ops.insert(300, ClassOp("change", 4000, "default", ClassRates(8000, 2_000_000, 1)))
        failures = k.apply(ops)
        assert [f.op.xid for f in failures] == [4000]
        assert "No such file" in failures[0].message
        snap = k.dump()
    assert (
        sum(
            1
            for s in snap.slices.values()
            if s.default and s.default.rates.max_rate_bps == 1_000_000
        )
        == 599
    )


def test_a_thousand_slices_apply_and_dump(ns: Netns) -> None:
    with backend(ns) as k:
        k.init(CAP, BWMAX)
        ops = [
            ClassOp("create", x, tc, ClassRates(8000, CAP, 1))
            for x in range(1, 1001)
            for tc in ("default", "exempt")
        ]
        assert k.apply(ops) == []
        change = [
            ClassOp("change", x, "default", ClassRates(8000, 4_000_000, 2)) for x in range(1, 1001)
        ]
        assert k.apply(change) == []
        snap = k.dump()
    assert len(snap.slices) == 1002
    assert all(
        snap.slices[x].default.rates == ClassRates(8000, 4_000_000, 2) for x in range(1, 1001)
    )
    ceils = tc_ceils(ns, "v0")
    assert sum(1 for cid, c in ceils.items() if cid.startswith("1:1") and c == 4_000_000) == 1000


def test_errors_are_specific(ns: Netns) -> None:
    with HtbBackend("nosuch0", netns=ns.name) as k, pytest.raises(DeviceMissing, match="nosuch0"):
        k.dump()
    with backend(ns) as k:
        with pytest.raises(TreeNotInitialised):
            k.dump()
        k.init(CAP, BWMAX)
        with pytest.raises(XidOutOfRange, match="70000"):
            on(k, 70000)


def test_marked_traffic_lands_in_the_slice_class_and_counters_agree_with_tc(
    pair: NetnsPair,
) -> None:
    with HtbBackend("va", netns=pair.a.name) as k:
        k.init(100_000_000, BWMAX)
        on(k, 0x4D2)
    send_bytes(pair, 300_000, port=5311)  # unmarked: the default slice
    mark_all_to(pair.a, pair.b_addr, 0x14D2)
    send_bytes(pair, 2_000_000, port=5312)
    with HtbBackend("va", netns=pair.a.name) as k:
        snap = k.dump()
    ours = snap.slices[0x4D2].default.bytes
    assert ours >= 2_000_000
    assert ours == tc_bytes(pair.a, "va", "1:14d2")
    assert snap.slices[0xFFF].default.bytes >= 300_000
    assert snap.slices[0xFFF].default.bytes < 1_000_000  # the marked flow did not land there

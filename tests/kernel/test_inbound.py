"""The inbound backend on a real kernel: its table, counters within 1 % of the IP-layer
bytes sent, limit swaps that touch nothing else, refusals, idempotence, removal.
"""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from bwenforcer.core.inbound import InboundLimit
from bwenforcer.errors import ConfigError, InboundError
from bwenforcer.kernel import inbound as inbound_mod
from bwenforcer.kernel import sandbox
from bwenforcer.kernel.classifier import CgroupClassifier, CgroupSpec
from bwenforcer.kernel.inbound import InboundBackend
from bwenforcer.kernel.inbound_table import limit_burst_bytes, limit_rate_bytes_s
from bwenforcer.modes.traffic import start_fetch, start_sender, start_sink, start_source
from tests.cgroup_helpers import cgroup_parent, v2_mount
from tests.inbound_helpers import EXEMPT4, EXEMPT6, PREFIXES, Node, node
from tests.netns import RUN_PREFIX, NetnsPair, sh

pytestmark = pytest.mark.kernel

XID = 1001  # uid mode: a slice's uid is its xid
OTHER = 1002
MB = 5_000_000


def _spy_nft(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every command the backend runs from now on (it should run none)."""
    calls: list[list[str]] = []
    real = subprocess.run

    def spy(cmd: list[str], *args: object, **kwargs: object) -> object:
        calls.append(list(cmd))
        return real(cmd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(inbound_mod.subprocess, "run", spy)
    return calls


def _bytes(value: int, unit: str) -> int:
    """A rate or burst as `nft -j` prints it (bytes, kbytes, mbytes), in bytes."""
    return value * 1024 ** ["bytes", "kbytes", "mbytes"].index(unit)


def _accepted(n: Node, host: str, port: int, n_bytes: int, uid: int) -> None:
    """``b`` connects to a listener of ``uid`` on ``a`` and sends ``n_bytes``."""
    sink = start_sink(n.pair.a.name, port, 20, uid=uid)
    try:
        start_sender(n.pair.b.name, 0, host, port, max_bytes=n_bytes, seconds=15).wait(timeout=20)
    finally:
        sink.kill()
        sink.wait(timeout=5)


def test_inbound_bytes_within_one_percent_of_ip_bytes_sent() -> None:
    with node("inacc", (XID,)) as n:
        pair = n.pair
        cases = [
            # (what, traffic, class the bytes must land in)
            ("opened v4", lambda p: n.download(pair.b_addr, p, MB, XID), (XID, "default")),
            ("opened v6", lambda p: n.download(pair.b_addr6, p, MB, XID), (XID, "default")),
            ("opened v4 exempt", lambda p: n.download(EXEMPT4, p, MB, XID), (XID, "exempt")),
            ("opened v6 exempt", lambda p: n.download(EXEMPT6, p, MB, XID), (XID, "exempt")),
            ("accepted v4", lambda p: _accepted(n, pair.a_addr, p, MB, XID), (XID, "default")),
            ("accepted v6", lambda p: _accepted(n, pair.a_addr6, p, MB, XID), (XID, "default")),
            ("no slice v4", lambda p: n.download(pair.b_addr, p, MB, 4000), "default"),
            ("no slice v6 exempt", lambda p: n.download(EXEMPT6, p, MB, 4000), "exempt"),
            ("no slice v4 exempt", lambda p: n.download(EXEMPT4, p, MB, None), "exempt"),
        ]
        seen = {}
        for port, (what, traffic, where) in enumerate(cases, 5401):
            before, ref_before = n.inbound.dump(), n.reference_bytes()
            traffic(port)
            after, ref_after = n.inbound.dump(), n.reference_bytes()
            sent = ref_after - ref_before
            assert sent >= MB, what

            def grew(snap_key: object, a=after, b=before) -> int:
                if isinstance(snap_key, tuple):
                    return a.bytes_by_class[snap_key] - b.bytes_by_class[snap_key]
                return a.unclassified_bytes[snap_key] - b.unclassified_bytes[snap_key]

            counted = grew(where)
            seen[what] = (sent, counted)
            assert abs(counted - sent) <= 0.01 * sent, (what, sent, counted)
            others = [
                grew(k) for k in [*after.bytes_by_class, *after.unclassified_bytes] if k != where
            ]
            # elsewhere at most: an accepted connection's SYN (it comes before any mark,
            # 60 / 80 bytes) and IPv6 neighbour discovery (72-byte packets), no slice's
            assert sum(others) <= 160, (what, others)
        print("\n".join(f"{k}: sent {s} counted {c} ({c / s:.4f})" for k, (s, c) in seen.items()))


def test_ensure_idempotent_no_write_no_nft_and_removal(monkeypatch: pytest.MonkeyPatch) -> None:
    with node("inidem", (XID, OTHER)) as n:
        b = n.inbound
        b.apply_limits([InboundLimit(OTHER, "default", 4_000_000)])
        n.download(n.pair.b_addr, 5501, 1_000_000, OTHER)
        calls = _spy_nft(monkeypatch)
        b.dump()  # the limits' dump after the change; from now on the counters' only
        b.ensure((XID, OTHER))  # the table's comment checked once after its load
        generation, requests = b.nl.generation(), b.nl.requests
        for _ in range(3):  # the steady cycle: ensure, dump, no limit change
            done = b.ensure((XID, OTHER))
            assert not done.loaded and not done.added and not done.removed
            assert done.messages == 0
            snap = b.dump()
            assert b.apply_limits([InboundLimit(OTHER, "default", 4_000_000)]) == []
            assert b.apply_limits([]) == []
        assert b.nl.generation() == generation  # no transaction at all
        assert b.nl.requests == requests + 3  # one dump (of the counters) per cycle
        assert calls == []  # no nft process
        assert set(snap.bytes_by_class) == {
            (x, c) for x in (XID, OTHER) for c in ("default", "exempt")
        }
        assert snap.bytes_by_class[(OTHER, "default")] >= 1_000_000
        listed = n.nft_objects()  # nft's own decoding agrees (the counters are idle)
        for (x, c), counted in snap.bytes_by_class.items():
            assert listed[f"c{(0x1000 if c == 'default' else 0x2000) | x:x}"]["bytes"] == counted
        calls.clear()  # that nft was the test's
        assert snap.limits_bps == {(OTHER, "default"): 4_000_000}

        # dry run: says what it would do, does nothing
        plan = b.ensure((XID,), dry_run=True)
        assert plan.removed == (OTHER,) and b.nl.generation() == generation
        # OTHER leaves: its counters and its limit go, in one transaction, no nft
        done = b.ensure((XID,))
        assert done.removed == (OTHER,) and not done.refused
        assert b.nl.generation() == generation + 1
        assert calls == []
        listed = n.nft_objects()
        assert sorted(listed) == ["c13e9", "c1fff", "c23e9", "c2fff"]
        snap = b.dump()
        assert (OTHER, "default") not in snap.bytes_by_class and not snap.limits_bps
        # back again: new counters from 0 (a reset the cycle counts from 0), no limit
        done = b.ensure((XID, OTHER))
        assert done.added == (OTHER,)
        snap = b.dump()
        assert snap.bytes_by_class[(OTHER, "default")] == 0 and not snap.limits_bps
        # a limit on a class ensure was not given: the next ensure takes it away
        assert b.apply_limits([InboundLimit(1003, "exempt", 2_000_000)]) == []
        assert b.dump().limits_bps == {(1003, "exempt"): 2_000_000}
        assert b.ensure((XID, OTHER)).removed == (1003,)
        assert b.dump().limits_bps == {}


def test_limit_round_trips_and_is_set_as_documented() -> None:
    with node("inlim", (XID, OTHER)) as n:
        b = n.inbound
        asked = {
            (XID, "default"): 8_000,
            (XID, "exempt"): 1_234_567,
            (OTHER, "default"): 999_999_999,
            (OTHER, "exempt"): 32_000_000,
        }
        assert b.apply_limits([InboundLimit(x, c, bps) for (x, c), bps in asked.items()]) == []
        assert b.dump().limits_bps == asked
        listed = n.nft_objects()
        for (x, c), bps in asked.items():
            mark = (0x1000 if c == "default" else 0x2000) | x
            (obj,) = [v for k, v in listed.items() if k.startswith(f"l{mark:x}_")]
            rate = limit_rate_bytes_s(bps)
            assert _bytes(obj["rate"], obj["rate_unit"]) == rate
            assert obj["per"] == "second" and obj["inv"] is True
            assert _bytes(obj["burst"], obj["burst_unit"]) == limit_burst_bytes(rate)
            assert rate == bps * 97 // 800  # 97 % of the limit
        # twice each: the swap alternates the object's name, the value round-trips
        for bps in (2_000_000, 2_000_008):
            assert b.apply_limits([InboundLimit(XID, "default", bps)]) == []
            assert b.dump().limits_bps[(XID, "default")] == bps
        # lift: element and object gone
        lifts = [InboundLimit(x, c, None) for (x, c) in asked]
        assert b.apply_limits(lifts) == []
        assert b.dump().limits_bps == {}
        assert not [k for k in n.nft_objects() if k.startswith("l")]
        assert b.apply_limits(lifts) == []  # nothing to lift: no transaction


def test_limit_change_leaves_counters_and_other_limits_untouched() -> None:
    with node("inswap", (XID, OTHER)) as n:
        b = n.inbound
        b.apply_limits(
            [InboundLimit(XID, "default", 8_000_000), InboundLimit(OTHER, "default", 4_000_000)]
        )
        n.download(n.pair.b_addr, 5601, 2_000_000, XID)
        n.download(n.pair.b_addr, 5602, 1_000_000, OTHER)
        before_objs, before = n.nft_objects(), b.dump()
        other_limit = [k for k in before_objs if k.startswith("l13ea_")]
        for bps in (2_000_000, 3_000_000, 2_000_000):
            assert b.apply_limits([InboundLimit(XID, "default", bps)]) == []
        after_objs, after = n.nft_objects(), b.dump()
        # counters: the same objects (handles), not reset
        for name in ("c13e9", "c13ea", "c23e9", "c1fff", "c2fff"):
            assert after_objs[name]["handle"] == before_objs[name]["handle"]
            assert after_objs[name]["bytes"] >= before_objs[name]["bytes"]
        assert after.bytes_by_class[(XID, "default")] >= before.bytes_by_class[(XID, "default")]
        assert before.bytes_by_class[(XID, "default")] >= 2_000_000
        # the other slice's limit: the same object, same handle, rate and burst
        assert [k for k in after_objs if k.startswith("l13ea_")] == other_limit
        assert after_objs[other_limit[0]] == before_objs[other_limit[0]]
        assert after.limits_bps == {(XID, "default"): 2_000_000, (OTHER, "default"): 4_000_000}


def test_refused_change_is_reported_and_the_others_go_through() -> None:
    with node("inref", (XID, OTHER)) as n:
        b = n.inbound
        # the kernel refuses a limit object over ~147 Gbit/s (EOVERFLOW)
        failures = b.apply_limits(
            [
                InboundLimit(XID, "default", 200_000_000_000),
                InboundLimit(OTHER, "default", 4_000_000),
                InboundLimit(OTHER, "exempt", 6_000_000),
            ]
        )
        assert [(f.change.xid, f.change.traffic_class, f.errno) for f in failures] == [
            (XID, "default", errno.EOVERFLOW)
        ]
        assert "xid 1001 default inbound limit 200000000000 bit/s" in failures[0].message
        assert b.dump().limits_bps == {(OTHER, "default"): 4_000_000, (OTHER, "exempt"): 6_000_000}
        # a class already limited keeps its limit when its swap is refused
        b.apply_limits([InboundLimit(XID, "default", 8_000_000)])
        failures = b.apply_limits(
            [InboundLimit(XID, "default", 10**15), InboundLimit(OTHER, "default", None)]
        )
        assert len(failures) == 1
        assert b.dump().limits_bps == {(XID, "default"): 8_000_000, (OTHER, "exempt"): 6_000_000}
        # beyond what the messages carry: refused before sending
        (failure,) = b.apply_limits([InboundLimit(XID, "default", 10**16)])
        assert failure.errno == errno.EINVAL and "out of range" in failure.message


def test_table_reloaded_when_gone_or_reshaped_keeping_counters_and_limits() -> None:
    with node("inload", (XID,)) as n:
        b = n.inbound
        b.apply_limits([InboundLimit(XID, "default", 8_000_000)])
        n.download(n.pair.b_addr, 5701, 1_000_000, XID)
        counted = b.dump().bytes_by_class[(XID, "default")]
        # other exempt prefixes: the table is reshaped, values and limits carried over
        with InboundBackend("va", "uid", ("203.0.113.0/24",), netns=n.pair.a.name) as other:
            assert other.ensure((XID,)).loaded
            assert not other.ensure((XID,)).loaded
            snap = other.dump()
        assert snap.bytes_by_class[(XID, "default")] == counted
        assert snap.limits_bps == {(XID, "default"): 8_000_000}
        assert (
            "203.0.113.0/24"
            in n.pair.a.run("nft", "list", "set", "inet", b.table, "exempt4").stdout
        )
        # back to ours; then someone deletes the table: the next ensure loads it again
        assert b.ensure((XID,)).loaded
        n.pair.a.run("nft", "delete", "table", "inet", b.table)
        with pytest.raises(InboundError) as info:
            b.dump()
        assert info.value.errno == errno.ENOENT
        assert b.ensure((XID,)).loaded
        assert b.dump().bytes_by_class == {(XID, "default"): 0, (XID, "exempt"): 0}


@pytest.mark.parametrize("mode", ["nodemanager", "none", "bogus"])
def test_modes_without_a_conntrack_mark_are_refused(mode: str) -> None:
    with pytest.raises(ConfigError) as info:
        InboundBackend("va", mode, PREFIXES)
    text = str(info.value)
    assert repr(mode) in text and "uid or cgroup" in text and "\n" not in text


def test_bad_device_and_prefix_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="device name"):
        InboundBackend('va" accept', "uid")
    with pytest.raises(ConfigError, match="not a CIDR prefix"):
        InboundBackend("va", "uid", ("10.0.0.0/33",))


def test_forwarded_downloads_of_a_container_slice_count_inbound_only() -> None:
    """A container behind the node (namespace ``c``, routed through ``a``): its
    connections' ct mark set on forward (as a container classifier would), the bytes
    it downloads counted through the forward hook, its uploads not at all.
    """
    with node("infwd", (XID,)) as n, sandbox.namespace(f"{RUN_PREFIX}-infwdc") as c:
        a, b = n.pair.a, n.pair.b
        sh("ip", "link", "add", "ca", "netns", a.name, "type", "veth", "peer", "cc", "netns", c)
        a.ip("addr", "add", "198.18.5.1/24", "dev", "ca")
        a.ip("link", "set", "ca", "up")
        sh("ip", "-n", c, "addr", "add", "198.18.5.2/24", "dev", "cc")
        sh("ip", "-n", c, "link", "set", "cc", "up")
        sh("ip", "-n", c, "route", "add", "default", "via", "198.18.5.1")
        b.ip("route", "add", "198.18.5.0/24", "via", n.pair.a_addr)
        a.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        mark_script = (
            "table inet mk {\n chain forward {\n"
            "  type filter hook forward priority mangle; policy accept;\n"
            "  ct mark 0 ip saddr 198.18.5.2 ct mark set 0x13e9\n }\n}\n"
        )
        ref_script = (
            "table inet ref2 {\n chain output {\n"
            "  type filter hook output priority 0; policy accept;\n"
            "  ip daddr 198.18.5.2 counter\n }\n}\n"
        )
        for ns, script in ((a.name, mark_script), (b.name, ref_script)):
            proc = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=script, text=True, capture_output=True, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr

        def ref() -> int:
            out = b.run("nft", "-j", "list", "table", "inet", "ref2").stdout
            rules = [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]
            return int(rules[0]["expr"][-1]["counter"]["bytes"])

        before, ref_before = n.inbound.dump(), ref()
        source = start_source(b.name, 6101, 20, MB)
        try:
            start_fetch(c, None, n.pair.b_addr, 6101, seconds=15).communicate(timeout=25)
        finally:
            source.kill()
            source.wait(timeout=5)
        after, sent = n.inbound.dump(), ref() - ref_before
        counted = after.bytes_by_class[(XID, "default")] - before.bytes_by_class[(XID, "default")]
        assert sent >= MB and abs(counted - sent) <= 0.01 * sent, (sent, counted)
        # the container uploads: forwarded too, but out of the node: not inbound
        sink = start_sink(b.name, 6102, 20)
        try:
            start_sender(c, 0, n.pair.b_addr, 6102, max_bytes=MB, seconds=15).wait(timeout=20)
        finally:
            sink.kill()
            sink.wait(timeout=5)
        later = n.inbound.dump()
        uploaded = later.bytes_by_class[(XID, "default")] - after.bytes_by_class[(XID, "default")]
        assert uploaded < 0.05 * MB  # only the upload's ACKs come in


def test_cgroup_tenant_downloads_and_accepted_uploads_counted() -> None:
    """``classifier.mode: cgroup``: the tenant's connections marked by its cgroup, on
    output and (from the first packet) on input; its inbound bytes counted exactly.
    """
    with cgroup_parent("inb") as parent:
        tenant = parent / "t1"
        tenant.mkdir()
        level = len(tenant.relative_to(v2_mount()).parts)
        spec = CgroupSpec({tenant.stat().st_ino: XID}, (level,), PREFIXES)

        def classify(pair: NetnsPair) -> None:
            classifier = CgroupClassifier(netns=pair.a.name)
            try:
                classifier.apply(spec)
            finally:
                classifier.close()

        with node("incg", (XID,), "cgroup", classify) as n:
            for port, host, where, accepted in (
                (6201, n.pair.b_addr, (XID, "default"), False),
                (6202, EXEMPT6, (XID, "exempt"), False),
                (6203, n.pair.a_addr, (XID, "default"), True),
            ):
                before, ref_before = n.inbound.dump(), n.reference_bytes()
                if accepted:
                    sink = start_sink(n.pair.a.name, port, 20, cgroup=str(tenant))
                    try:
                        start_sender(n.pair.b.name, 0, host, port, max_bytes=MB, seconds=15).wait(
                            timeout=20
                        )
                    finally:
                        sink.kill()
                        sink.wait(timeout=5)
                else:
                    n.download(host, port, MB, None, cgroup=str(tenant))
                after, sent = n.inbound.dump(), n.reference_bytes() - ref_before
                counted = after.bytes_by_class[where] - before.bytes_by_class[where]
                assert sent >= MB and abs(counted - sent) <= 0.01 * sent, (host, sent, counted)

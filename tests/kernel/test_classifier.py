"""The uid classifier: its nftables table, and marks on real IPv4/IPv6 traffic."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.model import ClassRates
from bwenforcer.errors import ClassifierError, ConfigError
from bwenforcer.files.tools import find_tool
from bwenforcer.kernel.classifier import Classifier, ClassifierSpec, render_ruleset, spec_digest
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.modes.traffic import start_sender, start_sink
from tests.netns import Netns, NetnsPair, netns_pair

EXEMPT = "198.19.0.1"


GOLDEN = """\
table inet bwenforcer
delete table inet bwenforcer
table inet bwenforcer {
  comment "bwenforcer spec 518d97db657be0de"
  map slice_default { type uid : mark; elements = { 7 : 0x1007, 1234 : 0x14d2 }; }
  map slice_exempt { type uid : mark; elements = { 7 : 0x2007, 1234 : 0x24d2 }; }
  set exempt4 { type ipv4_addr; flags interval; elements = { 198.19.0.0/16 }; }
  set exempt6 { type ipv6_addr; flags interval; elements = { 2001:db8::/32 }; }
  chain output {
    type route hook output priority mangle; policy accept;
    ct mark 0 ip daddr @exempt4 ct mark set meta skuid map @slice_exempt
    ct mark 0 ip6 daddr @exempt6 ct mark set meta skuid map @slice_exempt
    ct mark 0 ct mark set meta skuid map @slice_default
    ct mark != 0 meta mark set ct mark
  }
}
"""


def test_render_golden_one_transaction_with_maps_and_collapsed_sets() -> None:
    # duplicates, host bits and an overlapping prefix (nft refuses overlaps) are normalised
    spec = ClassifierSpec((1234, 7, 7), ("198.19.3.4/16", "2001:db8::1/32", "198.19.0.0/24"))
    assert render_ruleset(spec) == GOLDEN


def test_render_empty_spec_defines_empty_maps_and_sets() -> None:
    text = render_ruleset(ClassifierSpec((), ()), table="other")
    assert text.splitlines()[:2] == ["table inet other", "delete table inet other"]
    assert "map slice_default { type uid : mark; }" in text
    assert "set exempt6 { type ipv6_addr; flags interval; }" in text
    assert "elements" not in text


@given(
    st.lists(st.integers(1, 4094), max_size=20),
    st.lists(st.sampled_from(["10.0.0.0/8", "10.1.2.3/16", "2001:db8::/48", "::1"]), max_size=5),
    st.randoms(),
)
def test_order_and_duplicates_do_not_change_the_rendering(
    xids: list[int], prefixes: list[str], rnd: random.Random
) -> None:
    shuffled_x, shuffled_p = xids * 2, prefixes[:]
    rnd.shuffle(shuffled_x)
    rnd.shuffle(shuffled_p)
    a = ClassifierSpec(tuple(xids), tuple(prefixes))
    b = ClassifierSpec(tuple(shuffled_x), tuple(shuffled_p))
    assert render_ruleset(a) == render_ruleset(b)
    assert spec_digest(a) == spec_digest(b)
    other = next(x for x in range(1, 4095) if x not in xids)
    assert spec_digest(a) != spec_digest(ClassifierSpec((*xids, other), tuple(prefixes)))


@pytest.mark.parametrize("bad", ["10.0.0.300/8", "example.org", "10.0.0.0/33", ""])
def test_bad_prefix_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(bad))) as info:
        render_ruleset(ClassifierSpec((1,), ("10.0.0.0/8", bad)))
    assert "\n" not in str(info.value)


@pytest.mark.kernel
def test_apply_is_idempotent_replaces_and_removes(pair: NetnsPair) -> None:
    c = Classifier(netns=pair.a.name)
    assert c.apply(ClassifierSpec((10,), ()))
    assert not c.apply(ClassifierSpec((10,), ()))
    assert c.apply(ClassifierSpec((10, 11), ("198.19.0.0/16",)))
    listed = pair.a.run("nft", "list", "table", "inet", "bwenforcer").stdout
    assert "11 : 0x0000100b" in listed and "198.19.0.0/16" in listed
    c.remove()
    c.remove()
    assert not c.installed()
    assert pair.a.run("nft", "list", "ruleset").stdout.strip() == ""


@pytest.mark.kernel
def test_uid_marks_default_exempt_ipv6_and_leaves_other_uids_alone() -> None:
    with netns_pair("cls", extra_b_addrs=[f"{EXEMPT}/32"]) as pair:
        with HtbBackend("va", netns=pair.a.name) as k:
            k.init(100_000_000, 1_000_000_000)
            rates = {
                "default": ClassRates(8000, 100_000_000, 1),
                "exempt": ClassRates(8000, 1_000_000_000, 1),
            }
            for xid in (1234, 2345):
                k.set(xid, rates, None)
        Classifier(netns=pair.a.name).apply(ClassifierSpec((1234, 2345), (f"{EXEMPT}/32",)))
        sink = start_sink(pair.b.name, 5501, 20)
        try:
            flows = [
                (1234, pair.b_addr, 400_000),
                (1234, EXEMPT, 300_000),
                (2345, pair.b_addr6, 500_000),
                (4000, pair.b_addr, 200_000),  # not a slice: default class
            ]
            for uid, host, size in flows:
                start_sender(pair.a.name, uid, host, 5501, max_bytes=size, seconds=10).wait(
                    timeout=15
                )
        finally:
            sink.kill()
            sink.wait(timeout=5)
        with HtbBackend("va", netns=pair.a.name) as k:
            snap = k.dump()
    got = {
        (x, tc): s.cls(tc).bytes
        for x, s in snap.slices.items()
        for tc in ("default", "exempt")
        if s.cls(tc)
    }
    assert 400_000 <= got[(1234, "default")] < 600_000
    assert 300_000 <= got[(1234, "exempt")] < 450_000
    assert 500_000 <= got[(2345, "default")] < 700_000  # IPv6 marked too
    assert got[(2345, "exempt")] == 0
    assert 200_000 <= got[(0xFFF, "default")] < 400_000


def test_missing_nft_is_a_clear_error() -> None:
    with pytest.raises(ClassifierError, match="not found"):
        Classifier(nft="/nonexistent/nft").apply(ClassifierSpec((), ()))


@pytest.mark.kernel
def test_nft_refusal_is_one_line_with_nfts_first_error(ns: Netns) -> None:
    with pytest.raises(ClassifierError) as info:
        Classifier(netns=ns.name, table="no such").apply(ClassifierSpec((), ()))
    message = str(info.value)
    assert message.startswith("nft table inet no such: ") and "Error" in message
    assert "\n" not in message
    assert ns.run("nft", "list", "ruleset").stdout.strip() == ""


@pytest.mark.kernel
def test_empty_spec_installs_and_4000_uids_go_in_one_call(ns: Netns) -> None:
    c = Classifier(netns=ns.name)
    assert c.apply(ClassifierSpec((), ()))
    assert c.installed()
    many = ClassifierSpec(tuple(range(1, 4001)), ("198.19.0.0/16", "2001:db8:b0e::/48"))
    assert c.apply(many)
    assert not c.apply(many)
    listed = json.loads(ns.run("nft", "-j", "list", "table", "inet", "bwenforcer").stdout)
    maps = {o["map"]["name"]: o["map"] for o in listed["nftables"] if "map" in o}
    assert set(maps) == {"slice_default", "slice_exempt"}
    default = dict(maps["slice_default"]["elem"])
    exempt = dict(maps["slice_exempt"]["elem"])
    assert len(default) == len(exempt) == 4000
    assert default[4000] == 0x1FA0 and exempt[1] == 0x2001


def test_nodemanager_mode_sends_the_node_managers_xid_marks_to_exempt_prefixes_exempt() -> None:
    """mode nodemanager: mark = xid (as the LXC node manager sets it) towards an exempt
    prefix reaches the slice's exempt class, elsewhere its default class; on a tree
    built with bwlimit's own commands."""
    from tests import bwlimit_emulation as bwlimit
    from tests.kernel_helpers import send_marked, tc_bytes

    with netns_pair("clsnm", extra_b_addrs=[f"{EXEMPT}/32"]) as pair:
        tc = ["tc", "-n", pair.a.name]
        bwlimit.init(tc, "va", 100_000_000)
        bwlimit.run_tc(tc, bwlimit.on_commands("va", 501, 100_000_000, bwlimit.SliceLimits()))
        with HtbBackend("va", netns=pair.a.name) as k:
            assert k.ensure_filter() is not None  # bwlimit's tree had none
        classifier = Classifier(netns=pair.a.name, mode="nodemanager")
        assert classifier.apply(ClassifierSpec((), (f"{EXEMPT}/32",)))
        assert not classifier.apply(ClassifierSpec((501, 502), (f"{EXEMPT}/32",)))  # same table
        send_marked(pair.a, EXEMPT, 501, count=30)
        send_marked(pair.a, pair.b_addr, 501, count=10)
        send_marked(pair.a, EXEMPT, 0, count=5)  # unmarked: left alone, default class
        frame = 1042
        assert tc_bytes(pair.a, "va", "1:21f5") == 30 * frame
        assert tc_bytes(pair.a, "va", "1:11f5") == 10 * frame
        assert tc_bytes(pair.a, "va", "1:2fff") == 0


def test_nodemanager_mode_renders_no_uid_maps() -> None:
    script = render_ruleset(ClassifierSpec((7,), ("198.19.0.0/16",)), mode="nodemanager")
    assert "skuid" not in script and "hook postrouting" in script
    assert "meta mark 1-0xffe ip daddr @exempt4 meta mark set meta mark or 0x2000" in script
    with pytest.raises(ConfigError, match="mode 'none'"):
        Classifier(mode="none")


def test_nft_and_ip_are_found_with_debian_crons_path(
    ns: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as cron:
        cron.setenv("PATH", "/usr/bin:/bin")  # Debian cron's: no /usr/sbin, where nft and ip are
        classifier = Classifier(netns=ns.name)
        classifier.apply(ClassifierSpec((1234,), ()))
    assert classifier.nft.startswith("/") and classifier.prefix[0].startswith("/")
    listed = ns.run("nft", "list", "table", "inet", "bwenforcer", check=False)
    assert listed.returncode == 0 and "1234" in listed.stdout, listed.stderr


def test_a_tool_is_looked_up_in_the_system_directories_before_path(tmp_path: Path) -> None:
    decoy = tmp_path / "nft"
    decoy.write_text("#!/bin/sh\n")
    decoy.chmod(0o755)
    assert find_tool("nft", {"PATH": str(tmp_path)}) == "/usr/sbin/nft"
    assert find_tool("bwenforcer-no-such-tool", {"PATH": "/usr/bin:/bin"}) is None
    assert find_tool(str(decoy), {"PATH": ""}) == str(decoy)  # a path is taken as given

"""The uid classifier: its nftables table, and marks on real IPv4/IPv6 traffic."""

from __future__ import annotations

import pytest

from bwenforcer.classifier import Classifier, ClassifierSpec, render_ruleset
from bwenforcer.htb import HtbBackend
from bwenforcer.traffic import start_sender, start_sink
from tests.netns import NetnsPair, netns_pair

EXEMPT = "198.19.0.1"


def test_render_is_one_transaction_with_maps_and_sets() -> None:
    text = render_ruleset(ClassifierSpec((1234, 7), ("198.19.0.0/16", "2001:db8::/32")))
    lines = text.splitlines()
    assert lines[0] == "table inet bwenforcer" and lines[1] == "delete table inet bwenforcer"
    assert (
        "map slice_default { type uid : mark; elements = { 7 : 0x1007, 1234 : 0x14d2 }; }" in text
    )
    assert "map slice_exempt { type uid : mark; elements = { 7 : 0x2007, 1234 : 0x24d2 }; }" in text
    assert "set exempt4 { type ipv4_addr; flags interval; elements = { 198.19.0.0/16 }; }" in text
    assert "set exempt6 { type ipv6_addr; flags interval; elements = { 2001:db8::/32 }; }" in text
    empty = render_ruleset(ClassifierSpec((), ()))
    assert "elements" not in empty


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
            for xid in (1234, 2345):
                k.set(xid)
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
    from bwenforcer.errors import ClassifierError

    with pytest.raises(ClassifierError, match="not found"):
        Classifier(nft="/nonexistent/nft").apply(ClassifierSpec((), ()))

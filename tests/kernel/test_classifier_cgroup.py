"""The cgroup classifier's table and its element transactions (kernel in a namespace)."""

from __future__ import annotations

import pytest

from bwenforcer.errors import ClassifierError
from bwenforcer.kernel.classifier import (
    MAP_DEFAULT,
    MAP_EXEMPT,
    CgroupClassifier,
    CgroupSpec,
    render_cgroup_ruleset,
)
from bwenforcer.kernel.nftsets import MapChange, NftMaps
from tests.netns import Netns, sh


def test_rules_per_level_deepest_first_for_output_and_input() -> None:
    text = render_cgroup_ruleset((2, 3, 2), ("198.19.0.0/16", "2001:db8::/32"))
    output = text.split("chain output")[1].split("chain input")[0]
    inbound = text.split("chain input")[1]
    lookups = [line.strip() for line in output.splitlines() if "map @" in line]
    assert lookups == [
        "ct mark 0 ip daddr @exempt4 ct mark set socket cgroupv2 level 3 map @tenant_exempt",
        "ct mark 0 ip6 daddr @exempt6 ct mark set socket cgroupv2 level 3 map @tenant_exempt",
        "ct mark 0 ct mark set socket cgroupv2 level 3 map @tenant_default",
        "ct mark 0 ip daddr @exempt4 ct mark set socket cgroupv2 level 2 map @tenant_exempt",
        "ct mark 0 ip6 daddr @exempt6 ct mark set socket cgroupv2 level 2 map @tenant_exempt",
        "ct mark 0 ct mark set socket cgroupv2 level 2 map @tenant_default",
    ]
    assert "ct mark != 0 meta mark set ct mark" in output
    assert [
        line.replace("saddr", "daddr").strip() for line in inbound.splitlines() if "map @" in line
    ] == lookups
    assert text.count("map tenant_") == 2  # one map pair for every level
    assert "elements" not in text.split("set exempt4")[0]  # maps are filled over netlink


def test_the_gate_rules_follow_the_marks_in_both_chains_only_when_asked() -> None:
    assert "tenant_parents" not in render_cgroup_ruleset((2, 3), ())
    assert "drop" not in render_cgroup_ruleset((2, 3), ())
    text = render_cgroup_ruleset((2, 3, 1), (), gate=True)
    gate = [
        "ct mark 0 socket cgroupv2 level 2 @tenant_parents socket cgroupv2 level 3"
        " != @tenant_pass drop",
        "ct mark 0 socket cgroupv2 level 1 @tenant_parents socket cgroupv2 level 2"
        " != @tenant_pass drop",
    ]  # deepest first; level 1 tenants (children of the root) are never gated
    for chain in (
        text.split("chain output")[1].split("chain input")[0],
        text.split("chain input")[1],
    ):
        lines = [line.strip() for line in chain.splitlines() if line.strip()]
        assert [line for line in lines if "drop" in line] == gate
        last_map = max(i for i, line in enumerate(lines) if "map @" in line)
        assert lines.index(gate[0]) > last_map  # after every mark rule
    assert "set tenant_parents" in text and "set tenant_pass" in text
    # the digest (the table's comment) tells the two structures apart
    assert (
        render_cgroup_ruleset((2,), ()).splitlines()[3]
        != render_cgroup_ruleset((2,), (), gate=True).splitlines()[3]
    )


@pytest.mark.kernel
def test_apply_adds_replaces_and_deletes_in_one_transaction(ns: Netns) -> None:
    c = CgroupClassifier(netns=ns.name)
    maps = NftMaps("bwenforcer", ns.name)
    try:
        first = c.apply(CgroupSpec({101: 5, 102: 6}, (2,), ("198.19.0.0/16",)))
        assert first.loaded and first.added == 4 and first.deleted == 0
        assert maps.dump(MAP_DEFAULT) == {101: 0x1005, 102: 0x1006}
        assert maps.dump(MAP_EXEMPT) == {101: 0x2005, 102: 0x2006}
        generation = maps.generation()
        again = c.apply(CgroupSpec({101: 5, 102: 6}, (2,), ("198.19.0.0/16",)))
        assert (again.loaded, again.messages) == (False, 0)
        assert maps.generation() == generation  # nothing changed: no transaction
        # someone else's transaction (an element deleted behind its back): seen and mended
        maps.change((MapChange(MAP_DEFAULT, (102,)),))
        mended = c.apply(CgroupSpec({101: 5, 102: 6}, (2,), ("198.19.0.0/16",)))
        assert (mended.added, mended.deleted) == (1, 0)
        assert maps.dump(MAP_DEFAULT) == {101: 0x1005, 102: 0x1006}
        generation = maps.generation()
        # 101 moves to xid 7 (delete + add), 102 went, 103 came: one transaction
        changed = c.apply(CgroupSpec({101: 7, 103: 8}, (2,), ("198.19.0.0/16",)))
        assert not changed.loaded and maps.generation() == generation + 1
        assert maps.dump(MAP_DEFAULT) == {101: 0x1007, 103: 0x1008}
        assert c.bindings() == {101: 7, 103: 8}
        # the table deleted under it (tc stop, an operator): loaded again with its elements
        sh("ip", "netns", "exec", ns.name, "nft", "delete", "table", "inet", "bwenforcer")
        back = c.apply(CgroupSpec({101: 7, 103: 8}, (2,), ("198.19.0.0/16",)))
        assert back.loaded and maps.dump(MAP_EXEMPT) == {101: 0x2007, 103: 0x2008}
        # another structure (a new level): loaded again
        other = c.apply(CgroupSpec({101: 7}, (2, 3), ()))
        assert other.loaded and other.added == 2 and maps.dump(MAP_DEFAULT) == {101: 0x1007}
        # a new agent finds the structure in place (the digest in the table's comment)
        fresh = CgroupClassifier(netns=ns.name)
        assert not fresh.apply(CgroupSpec({101: 7}, (2, 3), ())).loaded
        fresh.close()
    finally:
        maps.close()
        c.close()


@pytest.mark.kernel
def test_a_refused_batch_is_one_clear_error_and_changes_nothing(ns: Netns) -> None:
    c = CgroupClassifier(netns=ns.name)
    maps = NftMaps("bwenforcer", ns.name)
    try:
        c.apply(CgroupSpec({101: 5}, (2,), ()))
        with pytest.raises(ClassifierError, match="element batch refused") as info:
            # deleting an absent key fails the whole batch, the add with it
            maps.change((MapChange(MAP_DEFAULT, add={102: 0x1009}), MapChange(MAP_EXEMPT, (999,))))
        assert "\n" not in str(info.value)
        assert maps.dump(MAP_DEFAULT) == {101: 0x1005}
        with pytest.raises(ClassifierError, match="No such file"):
            NftMaps("nosuchtable", ns.name).dump(MAP_DEFAULT)
    finally:
        maps.close()
        c.close()

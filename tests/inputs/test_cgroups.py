"""Tenants from the cgroup tree: config, names, discovery, the merge with the slices file."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.layout import XID_MAX
from bwenforcer.core.model import (
    ClassPolicy,
    ClassState,
    DesiredSet,
    LedgerEntry,
    SliceState,
    State,
)
from bwenforcer.core.settings import CgroupConfig, CgroupPattern, Config
from bwenforcer.errors import ConfigError
from bwenforcer.inputs.cgroups import discover, find_mount, merge, tenant_name
from bwenforcer.inputs.config import parse_config
from bwenforcer.inputs.slices import NAME, load_slices_file

CONFIG = """
period: 1d
defaults: {default: {limit: 5GiB}}
classifier: {mode: cgroup}
cgroups:
  mount: MOUNT
  tenants:
    - match: user.slice/user-*.slice
      defaults: {default: {limit: 2GiB, threshold: 1GiB}, exempt: {limit: 8GiB}}
    - match: machine.slice/*.scope
      prefix: vm
      defaults: {default: {limit: 100GiB}}
"""


def _config(tmp_path: Path, slices: str | None = None) -> Config:
    mount = tmp_path / "cg"
    mount.mkdir(exist_ok=True)
    (mount / "cgroup.controllers").write_text("")
    data = yaml.safe_load(CONFIG.replace("MOUNT", str(mount)))
    data["state_file"] = str(tmp_path / "state.json")
    if slices is not None:
        (tmp_path / "slices.yaml").write_text(slices)
        data["slices_file"] = str(tmp_path / "slices.yaml")
    return parse_config(data, "bw.yaml")


def _tree(tmp_path: Path, *paths: str) -> None:
    for rel in paths:
        (tmp_path / "cg" / rel).mkdir(parents=True, exist_ok=True)


def test_config_patterns_with_their_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path)
    users, vms = config.cgroups.tenants
    assert users.match == ("user.slice", "user-*.slice") and users.level == 2
    assert users.defaults["default"].limit_bytes == 2 << 30
    assert users.defaults["default"].threshold_bytes == 1 << 30
    # not given in the pattern: the top-level defaults
    assert vms.prefix == "vm" and vms.defaults["exempt"] == config.defaults["exempt"]
    assert vms.defaults["default"].limit_bytes == 100 << 30
    assert config.cgroups.gate is False  # the restart gate: off unless asked for


def test_config_gate_switch() -> None:
    text = "classifier: {mode: cgroup}\ncgroups: {gate: true, tenants: [{match: a/*}]}"
    assert parse_config(yaml.safe_load(text), "bw.yaml").cgroups.gate is True
    with pytest.raises(ConfigError, match="gate"):
        parse_config(yaml.safe_load(text.replace("gate: true", "gate: sometimes")), "bw.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classifier: {mode: cgroup}", "classifier.mode cgroup needs cgroups.tenants"),
        ("cgroups: {tenants: [{match: a/*}]}", "cgroups: cgroups.tenants need classifier.mode"),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: [{match: /a}]}", "tenants[0].match"),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: [{match: a/../b}]}", "no ** or .."),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: [{match: a, prefix: Vm}]}", "prefix"),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: [{match: a, color: red}]}", "color"),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: [{prefix: vm}]}", "missing 'match'"),
        ("classifier: {mode: cgroup}\ncgroups: {tenants: a}", "expected a list"),
        ("classifier: {mode: cgroup}\ncgroups: {mount: rel, tenants: [{match: a}]}", "absolute"),
        (
            "classifier: {mode: cgroup}\ncgroups: {tenants: [{match: a, defaults: {default: {limit: x}}}]}",
            "tenants[0].defaults.default.limit",
        ),
    ],
)
def test_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_config(yaml.safe_load(text), "bw.yaml")
    assert "\n" not in str(info.value)


def test_names_from_units() -> None:
    accounts = {1000: "alice", 1001: "Bob-Admin", 1002: None}.get
    assert tenant_name("user-1000.slice", account_of=accounts) == "alice"
    assert tenant_name("user-1001.slice", account_of=accounts) == "uid_1001"  # not a slice name
    assert tenant_name("user-1002.slice", account_of=accounts) == "uid_1002"  # no account
    assert tenant_name("nginx.service", suffix=".service") == "nginx"
    assert tenant_name("vm7.scope", "vm", suffix=".scope") == "vm_vm7"
    a, b = (
        tenant_name("a-b.service", suffix=".service"),
        tenant_name("a_b.service", suffix=".service"),
    )
    assert a != b and a.startswith("a_b_") and b == "a_b"
    assert tenant_name(r"foo\x2dbar.service") == tenant_name(r"foo\x2dbar.service")
    assert tenant_name(r"foo\x2dbar.service", suffix=".service").startswith("foo_bar_")


def test_names_that_do_not_map_back_to_the_unit_are_hashed() -> None:
    # issue 21 review: an escape decoded to a legal character is still a change
    escaped, plain = (
        tenant_name(r"a\x5fb.scope", "vm", suffix=".scope"),
        tenant_name("a_b.scope", "vm", suffix=".scope"),
    )
    assert plain == "vm_a_b" and escaped.startswith("vm_a_b_") and escaped != plain
    # a pattern that does not fix the unit type (system.slice/*): the suffix is hashed in
    service, mount = tenant_name("foo.service"), tenant_name("foo.mount")
    assert service != mount and service.startswith("foo_") and mount.startswith("foo_")
    # a suffix other than the pattern's is no clean case either
    assert tenant_name("foo.mount", suffix=".service") == mount
    assert tenant_name("foo", suffix=".service").startswith("foo_")


@given(
    st.text(min_size=1, max_size=300),
    st.sampled_from(["", "vm", "svc"]),
    st.sampled_from([None, ".service", ".scope"]),
)
def test_every_unit_name_gives_a_valid_slice_name(
    unit: str, prefix: str, suffix: str | None
) -> None:
    name = tenant_name(unit, prefix, lambda uid: None, suffix)
    assert NAME.fullmatch(name)
    assert tenant_name(unit, prefix, lambda uid: None, suffix) == name


@given(
    st.lists(st.text(alphabet="ab_-.\\x5fservicemount", min_size=1, max_size=12), max_size=8),
    st.sampled_from([None, ".service"]),
)
def test_distinct_units_of_one_pattern_get_distinct_names(
    units: list[str], suffix: str | None
) -> None:
    names = {
        tenant_name(u, "", lambda uid: None, suffix)
        for u in set(units)
        if not u.startswith("user-")
    }
    assert len(names) == len({u for u in units if not u.startswith("user-")})


def test_discovery_matches_patterns_and_uses_cgroup_ids(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _tree(
        tmp_path,
        "user.slice/user-1000.slice/session-1.scope",
        "user.slice/user-0.slice",
        "user.slice/other.slice",
        "machine.slice/vm7.scope",
        "machine.slice/vm8.service",
        "system.slice/sshd.service",
    )
    (tmp_path / "cg" / "machine.slice" / "file.scope").write_text("not a cgroup")
    found = discover(config.cgroups, account_of={1000: "alice", 0: "root"}.get)
    by_name = found.by_name()
    assert sorted(by_name) == ["alice", "root", "vm_vm7"]
    alice = by_name["alice"]
    assert alice.unit == "user-1000.slice" and alice.path == "user.slice/user-1000.slice"
    assert alice.level == 2 and alice.pattern == 0
    assert alice.cgroup_id == os.stat(tmp_path / "cg" / alice.path).st_ino
    assert by_name["vm_vm7"].pattern == 1
    assert found.errors == ()


def test_two_units_one_name_the_first_wins(tmp_path: Path) -> None:
    config = _config(tmp_path)
    vms = config.cgroups.tenants[1]
    config = replace(
        config,
        cgroups=CgroupConfig(
            config.cgroups.mount, (vms, CgroupPattern(("other", "*.scope"), "vm"))
        ),
    )
    _tree(tmp_path, "machine.slice/vm7.scope", "other/vm7.scope")
    found = discover(config.cgroups)
    assert [u.path for u in found.units] == ["machine.slice/vm7.scope"]
    assert [u.path for u in found.contested] == ["other/vm7.scope"]
    # nothing bound to the name's xid yet: the first in pattern order is the tenant
    merged = merge(DesiredSet(()), found, config, State())
    assert [s.name for s in merged.slices] == ["vm_vm7"]
    assert len(merged.errors) == 1 and "other/vm7.scope" in merged.errors[0]


def test_layout_detection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no cgroup v2 tree at"):
        find_mount(str(tmp_path))
    found = find_mount()  # this machine: one of the two layouts
    assert found in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
    assert os.path.isfile(f"{found}/cgroup.controllers")


def _state_slice(name: str, xid: int, policy: ClassPolicy) -> SliceState:
    cls = ClassState(policy, used_bytes=123)
    return SliceState(name, xid, 0, 86400, cls, cls)


def test_merge_file_attributes_win_over_pattern_defaults(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "slices:\n"
        "  - {name: alice, xid: 40, rspec: {net_max_kbyte: 1000}}\n"
        "  - {name: pl_other, xid: 1}\n",
    )
    _tree(tmp_path, "user.slice/user-1000.slice", "user.slice/user-1001.slice")
    found = discover(config.cgroups, account_of={1000: "alice", 1001: "bob"}.get)
    file = load_slices_file(str(config.slices_file), config, write_cache=False)
    merged = {s.name: s for s in merge(file, found, config, State()).slices}
    alice, bob = merged["alice"], merged["bob"]
    assert alice.xid == 40  # the file's
    assert alice.default.limit_bytes == 1000 * 1024  # the file's attribute
    assert alice.exempt.limit_bytes == 8 << 30  # the pattern's default, not the top-level one
    assert bob.default.limit_bytes == 2 << 30 and bob.default.threshold_bytes == 1 << 30
    assert bob.xid == 1001  # its uid
    assert merged["pl_other"].default.limit_bytes == 5 << 30  # no cgroup: top-level defaults


def test_merge_xids_follow_names_through_the_state(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _tree(tmp_path, *(f"user.slice/user-{u}.slice" for u in (1000, 1001, 1002, 1003)))
    names = {1000: "alice", 1001: "bob", 1002: "carol", 1003: "dave"}
    found = discover(config.cgroups, account_of=names.get)
    policy = ClassPolicy(1, 1, 1, 1, 1)
    state = State(
        slices={7: _state_slice("carol", 7, policy), 1: _state_slice("gone", 1, policy)},
        ledger={
            "bob": LedgerEntry(_state_slice("bob", 9, policy), 0),
            "zed": LedgerEntry(_state_slice("zed", 2, policy), 0),
        },
    )
    xids = {s.name: s.xid for s in merge(DesiredSet(()), found, config, state).slices}
    # live keeps its xid; ledger gets its own back; the rest: their uids
    assert xids == {"carol": 7, "bob": 9, "alice": 1000, "dave": 1003}


def test_merge_full_xid_space_is_one_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _tree(tmp_path, "user.slice/user-5000.slice", "user.slice/user-5001.slice")
    found = discover(config.cgroups, account_of=lambda uid: None)
    policy = ClassPolicy(1, 1, 1, 1, 1)
    state = State(
        slices={x: _state_slice(f"s{x}", x, policy) for x in range(2, XID_MAX + 1)},
        ledger={"uid_5000": LedgerEntry(_state_slice("uid_5000", 1, policy), 0)},
    )
    merged = merge(DesiredSet(()), found, config, state)
    assert [(s.name, s.xid) for s in merged.slices] == [("uid_5000", 1)]
    assert len(merged.errors) == 1
    assert "uid_5001" in merged.errors[0] and "no free xid" in merged.errors[0]
    assert "\n" not in merged.errors[0]


def test_merge_a_binding_the_kernel_has_but_the_state_lost_is_kept(tmp_path: Path) -> None:
    # elements written, then a crash before the state was saved: the next cycle must
    # not hand the tenant another xid (its connections carry the old marks)
    config = _config(tmp_path)
    _tree(tmp_path, "user.slice/user-1000.slice", "user.slice/user-1001.slice")
    found = discover(config.cgroups, account_of={1000: "alice", 1001: "bob"}.get)
    alice = found.by_name()["alice"]
    merged = merge(DesiredSet(()), found, config, State(), bound={alice.cgroup_id: 9, 4242: 1})
    assert {s.name: s.xid for s in merged.slices} == {"alice": 9, "bob": 1001}

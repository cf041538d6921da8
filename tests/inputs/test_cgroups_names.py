"""Issue 21 review: cgroup tenants' names and xids, through discover -> merge -> plan.

A newly made cgroup never takes an established tenant's name (and its xid and
usage); a user tenant's xid is its uid, so a renamed or deleted account keeps
its usage and cap (the planner's rename rule).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from bwenforcer.core.model import DesiredSet, State
from bwenforcer.core.plan import Inherit
from bwenforcer.core.planner import plan
from bwenforcer.core.settings import Config
from bwenforcer.inputs.cgroups import discover, merge, settle
from bwenforcer.inputs.config import parse_config
from bwenforcer.inputs.slices import load_slices_file
from tests.planner_data import PARAMS, T0, kslice, snapshot, want

GIB = 1 << 30
CONFIG = """
period: 1d
defaults: {default: {limit: 5GiB}}
classifier: {mode: cgroup}
cgroups:
  mount: MOUNT
  tenants:
    - match: user.slice/user-*.slice
      defaults: {default: {limit: 2GiB, threshold: 1GiB}}
    - match: machine.slice/*.scope
      prefix: vm
    - match: other.slice/*.scope
      prefix: vm
    - match: system.slice/*
"""


def _config(tmp_path: Path, *tree: str, slices: str | None = None) -> Config:
    mount = tmp_path / "cg"
    mount.mkdir(exist_ok=True)
    (mount / "cgroup.controllers").write_text("")
    for rel in tree:
        (mount / rel).mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(CONFIG.replace("MOUNT", str(mount)))
    data["state_file"] = str(tmp_path / "state.json")
    if slices is not None:
        (tmp_path / "slices.yaml").write_text(slices)
        data["slices_file"] = str(tmp_path / "slices.yaml")
    return parse_config(data, "bw.yaml")


def test_escaped_and_typed_units_are_distinct_tenants(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "machine.slice/a\\x5fb.scope",
        "machine.slice/a_b.scope",
        "system.slice/foo.service",
        "system.slice/foo.mount",
    )
    found = discover(config.cgroups)
    assert found.errors == () and found.contested == ()
    names = {u.unit: u.name for u in found.units}
    assert names["a_b.scope"] == "vm_a_b"  # maps back to the unit: kept as it is
    assert names["a\\x5fb.scope"].startswith("vm_a_b_")
    assert names["foo.service"] != names["foo.mount"]  # system.slice/* fixes no type
    assert len(set(names.values())) == 4


def _cycle(config: Config, state: State, accounts: dict[int, str], used: int, now: int, **kw):
    found = discover(config.cgroups, account_of=accounts.get)
    desired = merge(DesiredSet(()), found, config, state, **kw)
    xids = {s.name: s.xid for s in desired.slices}
    return xids, plan(
        desired, snapshot(*(kslice(x, used) for x in xids.values())), state, PARAMS, now
    )


def test_a_renamed_or_deleted_account_keeps_its_usage_and_cap(tmp_path: Path) -> None:
    config = _config(tmp_path, "user.slice/user-1000.slice", "user.slice/user-5000.slice")
    xids, p1 = _cycle(config, State(), {1000: "alice", 5000: "eve"}, 0, T0)
    assert xids == {"alice": 1000, "eve": 1}  # its uid; 5000 > XID_MAX: by name
    xids, p2 = _cycle(config, p1.state, {1000: "alice", 5000: "eve"}, 3 * GIB // 2, T0 + 300)
    alice = p2.state.slices[1000]
    assert alice.default.capped and alice.default.used_bytes == 3 * GIB // 2
    # the account renamed: another name on the same xid, the usage and the cap stay
    xids, p3 = _cycle(config, p2.state, {1000: "alice2", 5000: "eve"}, 3 * GIB // 2 + 10, T0 + 600)
    assert xids["alice2"] == 1000
    assert Inherit("alice2", 1000, "alice") in p3.actions
    st = p3.state.slices[1000]
    assert st.name == "alice2" and st.default.capped and st.default.used_bytes == 3 * GIB // 2 + 10
    # the account deleted: uid_1000, still the same budget
    xids, p4 = _cycle(config, p3.state, {5000: "eve"}, 3 * GIB // 2 + 20, T0 + 900)
    st = p4.state.slices[1000]
    assert xids["uid_1000"] == 1000 and st.name == "uid_1000"
    assert st.default.capped and st.default.used_bytes == 3 * GIB // 2 + 20


def test_a_uid_the_slices_file_holds_is_not_taken(tmp_path: Path) -> None:
    config = _config(
        tmp_path, "user.slice/user-7.slice", slices="slices:\n  - {name: pl_x, xid: 7}\n"
    )
    assert config.slices_file is not None
    file = load_slices_file(config.slices_file, config, write_cache=False)
    found = discover(config.cgroups, account_of={7: "bob"}.get)
    merged = {s.name: s.xid for s in merge(file, found, config, State()).slices}
    assert merged == {"pl_x": 7, "bob": 1}


def test_a_new_cgroup_of_an_established_tenants_name_is_refused(tmp_path: Path) -> None:
    # other.slice/vm7.scope is the tenant vm_vm7, with usage; then machine.slice/vm7.scope
    # appears: first in pattern order, same name. The established cgroup keeps it.
    config = _config(tmp_path, "other.slice/vm7.scope")
    found = discover(config.cgroups)
    established = found.by_name()["vm_vm7"]
    xids, p1 = _cycle(config, State(), {}, 0, T0)
    xids, p2 = _cycle(config, p1.state, {}, 5000, T0 + 300)
    assert xids == {"vm_vm7": 1} and p2.state.slices[1].default.used_bytes == 5000
    _config(tmp_path, "machine.slice/vm7.scope")
    bound = {established.cgroup_id: 1}  # the classifier's map
    found = discover(config.cgroups)
    assert [u.path for u in found.units] == ["machine.slice/vm7.scope"]  # path order alone
    settled = settle(found, DesiredSet(()), p2.state, bound)
    assert [u.path for u in settled.units] == ["other.slice/vm7.scope"]
    assert len(settled.errors) == 1 and "\n" not in settled.errors[0]
    assert "machine.slice/vm7.scope" in settled.errors[0] and "refused" in settled.errors[0]
    desired = merge(DesiredSet(()), found, config, p2.state, bound=bound)
    assert [(s.name, s.xid) for s in desired.slices] == [("vm_vm7", 1)]
    assert desired.errors == settled.errors
    p3 = plan(desired, snapshot(kslice(1, 6000)), p2.state, PARAMS, T0 + 600)
    assert p3.state.slices[1].name == "vm_vm7" and p3.state.slices[1].default.used_bytes == 6000
    # the newcomer bound to the name's xid instead (the maps say so): it is the tenant
    other = settle(found, DesiredSet(()), p2.state, {found.units[0].cgroup_id: 1})
    assert [u.path for u in other.units] == ["machine.slice/vm7.scope"]
    assert "other.slice/vm7.scope" in other.errors[0]


def test_settle_without_rivals_is_the_same_discovery(tmp_path: Path) -> None:
    config = _config(tmp_path, "machine.slice/vm7.scope")
    found = discover(config.cgroups)
    assert settle(found, DesiredSet(()), State(), None) is found


def test_a_tenant_whose_name_changed_keeps_the_xid_its_cgroup_is_bound_to(tmp_path: Path) -> None:
    # a cgroup the maps bind to a live slice's xid, now under another name (this
    # release's names: system.slice/* units hashed; an account renamed before
    # xids were uids): the same cgroup, so the same slice, usage and cap kept
    config = _config(tmp_path, "system.slice/foo.service")
    found = discover(config.cgroups)
    (unit,) = found.units
    assert unit.name != "foo"
    xids, p1 = _cycle(config, State(), {}, 0, T0)
    old = replace(p1.state.slices[xids[unit.name]], name="foo", xid=5)
    state = replace(p1.state, slices={5: old})
    xids, p2 = _cycle(config, state, {}, 700, T0 + 300, bound={unit.cgroup_id: 5})
    assert xids == {unit.name: 5}
    assert Inherit(unit.name, 5, "foo") in p2.actions


def test_a_live_slice_the_file_still_names_is_no_rename(tmp_path: Path) -> None:
    # xid 7 is live as pl_x, which the file now lists on xid 8: user 7 takes neither
    config = _config(
        tmp_path, "user.slice/user-7.slice", slices="slices:\n  - {name: pl_x, xid: 8}\n"
    )
    assert config.slices_file is not None
    file = load_slices_file(config.slices_file, config, write_cache=False)
    found = discover(config.cgroups, account_of={7: "bob"}.get)
    first = plan(DesiredSet((want("pl_x", 7),)), snapshot(), State(), PARAMS, T0)
    (bob,) = found.units
    merged = merge(file, found, config, first.state, bound={bob.cgroup_id: 7})
    assert {s.name: s.xid for s in merged.slices} == {"pl_x": 8, "bob": 1}

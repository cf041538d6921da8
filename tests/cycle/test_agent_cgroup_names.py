"""The agent's scan: of two cgroups sharing a name, the classifier gets the established one."""

from __future__ import annotations

from pathlib import Path

import yaml

from bwenforcer.core.model import ClassPolicy, ClassState, DesiredSet, SliceState, State
from bwenforcer.cycle.agent import Agent
from bwenforcer.inputs.config import parse_config

CONFIG = """
period: 1d
classifier: {mode: cgroup}
cgroups:
  mount: MOUNT
  tenants:
    - {match: machine.slice/*.scope, prefix: vm}
    - {match: other.slice/*.scope, prefix: vm}
"""


class _Maps:
    """The classifier's maps as :meth:`CgroupClassifier.bindings` gives them."""

    def __init__(self, bound: dict[int, int]) -> None:
        self.bound = bound
        self.reads = 0

    def bindings(self) -> dict[int, int]:
        self.reads += 1
        return self.bound


def test_the_cgroup_the_maps_bind_keeps_its_name(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    for rel in ("other.slice/vm7.scope", "machine.slice/vm7.scope"):
        (mount / rel).mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("")
    data = yaml.safe_load(CONFIG.replace("MOUNT", str(mount)))
    data["state_file"] = str(tmp_path / "state.json")
    agent = Agent(parse_config(data, "bw.yaml"))
    established = (mount / "other.slice/vm7.scope").stat().st_ino
    maps = _Maps({established: 3})
    agent._cgroup_classifier = maps  # type: ignore[assignment]
    cls = ClassState(ClassPolicy(1, 1, 1, 1, 1), used_bytes=5000)
    state = State(slices={3: SliceState("vm_vm7", 3, 0, 86400, cls, cls)})
    desired = agent.with_cgroups(DesiredSet(()), state)
    assert maps.reads == 1  # no newcomer by name, but a contested one: the maps are read
    assert [(s.name, s.xid) for s in desired.slices] == [("vm_vm7", 3)]
    assert len(desired.errors) == 1 and "machine.slice/vm7.scope" in desired.errors[0]
    assert agent.discovery is not None
    assert [u.path for u in agent.discovery.units] == ["other.slice/vm7.scope"]
    assert agent.unit_of("vm_vm7") == "vm7.scope"

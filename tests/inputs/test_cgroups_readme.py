"""README "Budgets for systemd slices and containers": its worked examples, run on a tree."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from bwenforcer.core.model import DesiredSet, State
from bwenforcer.core.settings import Config
from bwenforcer.inputs.cgroups import discover, merge
from bwenforcer.inputs.config import load_config
from bwenforcer.inputs.slices import load_slices_file

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def _examples() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Budgets for systemd slices and containers", 1)[1].split("\n## ", 1)[
        0
    ]
    return re.findall(r"^```yaml\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def _load(tmp_path: Path, text: str, tree: list[str], slices: str | None = None) -> Config:
    mount = tmp_path / "cgroup"
    for rel in tree:
        (mount / rel).mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("")
    (tmp_path / "bw.yaml").write_text(text + f"state_file: {tmp_path}/state.json\n")
    config = load_config(str(tmp_path / "bw.yaml"))
    slices_file = None
    if slices is not None:
        (tmp_path / "slices.yaml").write_text(slices)
        slices_file = str(tmp_path / "slices.yaml")
    return replace(
        config, slices_file=slices_file, cgroups=replace(config.cgroups, mount=str(mount))
    )


def test_the_section_has_its_three_examples() -> None:
    assert len(_examples()) == 3


def test_per_user_daily_budget_on_a_shared_server(tmp_path: Path) -> None:
    server, slices, _ = _examples()
    config = _load(
        tmp_path,
        server,
        [
            "user.slice/user-1000.slice",
            "user.slice/user-1001.slice",
            "user.slice/user-1234.slice",
            "system.slice/nginx.service",
            "init.scope",
        ],
        slices,
    )
    assert config.period_anchor is not None and config.period_anchor.every == "day"
    accounts = {1000: "alice", 1001: "bob"}.get
    found = discover(config.cgroups, account_of=accounts)
    assert config.slices_file is not None
    file = load_slices_file(config.slices_file, config, write_cache=False)
    tenants = {s.name: s for s in merge(file, found, config, State()).slices}
    assert sorted(tenants) == ["alice", "bob", "svc_nginx", "uid_1234"]
    bob = tenants["bob"]
    assert (bob.default.limit_bytes, bob.default.threshold_bytes) == (5 * GIB, 4 * GIB)
    assert bob.exempt.limit_bytes == 50 * GIB
    alice = tenants["alice"]
    assert alice.xid == 100 and alice.default.limit_bytes == 20 * GIB  # the slices file's
    assert alice.exempt.limit_bytes == 50 * GIB  # the rest as the pattern's
    assert tenants["svc_nginx"].default.limit_bytes == 50 * GIB
    assert {s.xid for s in tenants.values()} == {100, 1001, 1234, 1}  # users: their uids


def test_per_container_monthly_budget(tmp_path: Path) -> None:
    _, _, host = _examples()
    docker = "docker-" + "ab12" * 16 + ".scope"
    config = _load(
        tmp_path,
        host,
        ["machine.slice/web.scope", f"system.slice/{docker}", "system.slice/sshd.service"],
    )
    assert config.period_anchor is not None and config.period_anchor.every == "month"
    assert config.classifier.exempt_prefixes == ("10.0.0.0/8", "fd00::/8")
    found = discover(config.cgroups)
    tenants = {s.name: s for s in merge(DesiredSet(()), found, config, State()).slices}
    container = next(n for n in tenants if n.startswith("ct_docker_ab12"))
    assert sorted(tenants) == sorted(["vm_web", container])
    assert tenants["vm_web"].default.limit_bytes == 1 << 40
    assert tenants["vm_web"].exempt.limit_bytes == 10 << 40
    assert tenants[container].default.limit_bytes == 200 * GIB

"""``classifier.mode: cgroup`` with real processes in real cgroups sending real traffic.

Each test creates a cgroup parent of its own below the v2 mount, tenant cgroups
below it (``user.slice/user-0.slice``, ``machine.slice/*.scope``), and senders
that join a tenant cgroup before they open a socket, inside throwaway network
namespaces. Bounded: a few MB per test, well under a minute each.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bwenforcer.core.layout import mark
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.classifier import MAP_DEFAULT, MAP_EXEMPT, SET_PARENTS, SET_PASS
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.kernel.nftsets import MapMissing, NftMaps
from bwenforcer.modes.traffic import start_sender, start_sink
from tests.cgroup_helpers import cgroup_parent
from tests.kernel_helpers import tc_bytes
from tests.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.kernel

EXEMPT_ADDR = "198.19.0.1"
PORT = 5451


@dataclass(frozen=True)
class Setup:
    pair: NetnsPair
    parent: Path
    tmp: Path

    def cgroup(self, rel: str) -> Path:
        path = self.parent / rel
        path.mkdir(parents=True, exist_ok=True)
        return path

    def agent(self, tenant_defaults: str = "{}", period: str = "1h", gate: bool = False) -> Agent:
        cfg = self.tmp / "bwenforcer.yaml"
        cfg.write_text(
            f"device: va\nnode_cap: 20mbit\nbwmax: 100mbit\nperiod: {period}\n"
            f"state_file: {self.tmp}/state.json\nslices_file: null\n"
            "metrics: {listen: null}\n"
            "vanish_grace: 0s\n"  # a stopped unit goes to the ledger at once (grace: elsewhere)
            f"classifier: {{mode: cgroup, exempt_prefixes: [{EXEMPT_ADDR}/32]}}\n"
            "cgroups:\n"
            "  tenants:\n"
            f"    - match: {self.parent.name}/user.slice/user-*.slice\n"
            f"      defaults: {tenant_defaults}\n"
            f"    - match: {self.parent.name}/machine.slice/*.scope\n"
            "      prefix: vm\n"
            f"  gate: {'true' if gate else 'false'}\n"
        )
        config = load_config(str(cfg))
        with HtbBackend("va", netns=self.pair.a.name, bare_marks=False) as kernel:
            kernel.init(config.node_cap_bps, config.bwmax_bps)
        return Agent(config, netns=self.pair.a.name)

    def send(self, cgroup: Path | None, host: str, n_bytes: int, port: int = PORT) -> None:
        """``n_bytes`` from a process in ``cgroup`` (in namespace a) to ``host``; waits."""
        sink = start_sink(self.pair.b.name, port, 15)
        try:
            sender = start_sender(
                self.pair.a.name,
                0,
                host,
                port,
                max_bytes=n_bytes,
                seconds=10,
                cgroup=cgroup and str(cgroup),
            )
            assert sender.wait(timeout=15) == 0
        finally:
            sink.kill()
            sink.wait(timeout=5)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with (
        netns_pair("cg", extra_b_addrs=[f"{EXEMPT_ADDR}/32"]) as pair,
        cgroup_parent("cg") as parent,
    ):
        yield Setup(pair, parent, tmp_path)


def _class_bytes(s: Setup) -> dict[tuple[int, str], int]:
    with HtbBackend("va", netns=s.pair.a.name) as kernel:
        snap = kernel.dump()
    return {
        (xid, tc): (ks.cls(tc).bytes if ks.cls(tc) else 0)  # type: ignore[union-attr]
        for xid, ks in snap.slices.items()
        for tc in ("default", "exempt")
    }


def _xids(agent: Agent) -> dict[str, int]:
    assert agent._store is not None
    return {st.name: xid for xid, st in agent._store.load().state.slices.items()}


def _within(measured: int, sent: int) -> bool:
    # payload plus TCP/IP headers and the handshake: at most 10 % and 20 kB more
    return sent <= measured <= sent * 1.10 + 20_000


def test_bytes_land_in_each_tenants_class_ipv4_ipv6_exempt_and_inbound(setup: Setup) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    vm = s.cgroup("machine.slice/vm7.scope")
    srv = s.cgroup("machine.slice/srv.scope")
    other = s.cgroup("system.slice/other.service")  # matches no pattern
    agent = s.agent()
    result = agent.cycle(load_desired(agent.config))
    assert result.result == "ok", result.failures
    xids = _xids(agent)
    assert set(xids) == {"root", "vm_vm7", "vm_srv"}  # user-0.slice: the account's name
    assert result.units["root"] == "user-0.slice"  # metrics and mail name it by its unit

    s.send(user, s.pair.b_addr, 1_000_000)
    s.send(user, s.pair.b_addr6, 300_000)
    s.send(user, EXEMPT_ADDR, 200_000)
    s.send(vm, s.pair.b_addr, 500_000)
    s.send(other, s.pair.b_addr, 100_000)
    unclassified_before = tc_bytes(s.pair.a, "va", "1:1fff")
    # inbound: a server in srv.scope receives 1 MB from namespace b; its replies (from
    # the SYN-ACK on) are srv's
    sink = start_sink(s.pair.a.name, PORT + 1, 15, cgroup=str(srv))
    try:
        client = start_sender(
            s.pair.b.name, 0, s.pair.a_addr, PORT + 1, max_bytes=1_000_000, seconds=10
        )
        assert client.wait(timeout=15) == 0
    finally:
        sink.kill()
        sink.wait(timeout=5)

    counted = _class_bytes(s)
    root, vm7, server = xids["root"], xids["vm_vm7"], xids["vm_srv"]
    assert _within(counted[(root, "default")], 1_300_000), counted
    assert _within(counted[(root, "exempt")], 200_000), counted
    assert _within(counted[(vm7, "default")], 500_000), counted
    assert counted[(vm7, "exempt")] == 0
    # the server only sends its SYN-ACK and ACKs (veth coalesces them): a few kB, its own
    assert 0 < counted[(server, "default")] < 100_000, counted
    assert counted[(server, "exempt")] == 0
    assert unclassified_before >= 100_000  # the sender in no tenant cgroup: 1:1fff


def test_a_tenant_is_capped_past_its_threshold(setup: Setup) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    # a minute's period: the rest of the budget over the rest of it is a few Mbit/s
    agent = s.agent("{default: {limit: 20000KiB, threshold: 1000KiB}}", period="60s")
    desired = load_desired(agent.config)
    agent.cycle(desired)
    s.send(user, s.pair.b_addr, 2_000_000)  # past the 1000 KiB threshold
    result = agent.cycle(desired)
    line = next(line for line in result.plan.lines if line.name == "root").default
    assert line.capped and line.new_ceil_bps < 20_000_000, line

    # the cap holds on the wire: 3 s of all-out sending stays within 25 % of the ceil
    ceil = line.new_ceil_bps
    sink = start_sink(s.pair.b.name, PORT + 2, 15)
    try:
        sender = start_sender(
            s.pair.a.name,
            0,
            s.pair.b_addr,
            PORT + 2,
            max_bytes=20_000_000,
            seconds=6,
            cgroup=str(user),
        )
        time.sleep(1.5)  # TCP settles to the ceil
        xid = _xids(agent)["root"]
        before, t0 = _class_bytes(s)[(xid, "default")], time.monotonic()
        time.sleep(3)  # measuring throughput needs real time
        after, t1 = _class_bytes(s)[(xid, "default")], time.monotonic()
        sender.kill()
        sender.wait(timeout=5)
    finally:
        sink.kill()
        sink.wait(timeout=5)
    measured = (after - before) * 8 / (t1 - t0)
    assert 0.75 * ceil <= measured <= 1.25 * ceil, (measured, ceil)


def test_a_unit_restart_keeps_its_usage_and_is_classified_again_next_cycle(
    setup: Setup,
) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    agent = s.agent()
    desired = load_desired(agent.config)
    agent.cycle(desired)
    xid = _xids(agent)["root"]
    s.send(user, s.pair.b_addr, 1_000_000)
    agent.cycle(desired)
    assert agent._store is not None
    used = agent._store.load().state.slices[xid].default.used_bytes
    assert used >= 1_000_000
    old_id = user.stat().st_ino

    # restart between two cycles: the cgroup is removed and made again, with a new id
    user.rmdir()
    user.mkdir()
    new_id = user.stat().st_ino
    assert new_id != old_id
    agent.cycle(desired)
    maps = NftMaps("bwenforcer", s.pair.a.name)
    try:
        assert maps.dump(MAP_DEFAULT) == {new_id: mark(xid, "default")}  # the stale id went
        assert maps.dump(MAP_EXEMPT) == {new_id: mark(xid, "exempt")}
    finally:
        maps.close()
    assert _xids(agent)["root"] == xid
    s.send(user, s.pair.b_addr, 500_000)
    agent.cycle(desired)
    state = agent._store.load().state
    assert state.slices[xid].default.used_bytes >= used + 500_000  # kept, and counted on

    # a stop that spans a cycle: the tenant goes to the ledger, and comes back with
    # its usage (the same xid: nobody took it meanwhile)
    user.rmdir()
    agent.cycle(desired)
    state = agent._store.load().state
    assert "root" in state.ledger and xid not in state.slices
    user.mkdir()
    agent.cycle(desired)
    state = agent._store.load().state
    assert state.slices[xid].name == "root"
    assert state.slices[xid].default.used_bytes >= used + 500_000


def test_a_thousand_cgroup_tenants_in_one_transaction(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup
    agent = s.agent()
    desired = load_desired(agent.config)
    agent.cycle(desired)  # the table's structure: one nft -f
    scopes = [s.cgroup(f"machine.slice/c{i:04d}.scope") for i in range(1000)]
    maps = NftMaps("bwenforcer", s.pair.a.name)
    try:
        generation = maps.generation()
        nft_runs: list[list[str]] = []
        real_run = subprocess.run

        def counting_run(argv: list[str], *args: object, **kwargs: object) -> object:
            nft_runs.append(argv)
            return real_run(argv, *args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr("bwenforcer.kernel.classifier.subprocess.run", counting_run)
        result = agent.cycle(desired)
        assert result.result == "ok", result.failures
        assert maps.generation() == generation + 1  # every element in one transaction
        assert nft_runs == []  # and no nft process: raw netlink
        xids = _xids(agent)
        assert len(xids) == 1000
        default = maps.dump(MAP_DEFAULT)
        assert default == {
            p.stat().st_ino: mark(xids[f"vm_{p.name[:-6]}"], "default") for p in scopes
        }
        assert len(maps.dump(MAP_EXEMPT)) == 1000

        agent.cycle(desired)  # nothing changed: no transaction, no nft
        assert maps.generation() == generation + 1 and nft_runs == []
    finally:
        maps.close()
    # one tenant among the thousand: its bytes are its own
    s.send(scopes[500], s.pair.b_addr, 300_000)
    xid = xids["vm_c0500"]
    counted = _class_bytes(s)
    assert _within(counted[(xid, "default")], 300_000)
    others = {k: v for k, v in counted.items() if k[0] in xids.values() and k[0] != xid and v}
    assert others == {}


def test_with_the_watcher_a_restarted_unit_is_classified_before_any_cycle(setup: Setup) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    agent = s.agent()
    agent.watch = True  # as the daemon's and the node-manager thread's agents
    try:
        desired = load_desired(agent.config)
        agent.cycle(desired)
        xid = _xids(agent)["root"]
        user.rmdir()
        user.mkdir()  # the unit restarted: a new cgroup id, and no cycle since
        unclassified = tc_bytes(s.pair.a, "va", "1:1fff")
        s.send(user, s.pair.b_addr, 400_000)
        counted = _class_bytes(s)
        assert _within(counted[(xid, "default")], 400_000), counted
        assert tc_bytes(s.pair.a, "va", "1:1fff") - unclassified < 10_000  # ARP/ND at most
    finally:
        agent.close()


def _restart_and_connect(s: Setup, user: Path, agent: Agent) -> tuple[subprocess.Popen[bytes], int]:
    """The unit restarts (no watcher, no cycle since) and a process of it connects at once;
    returns the sender and the bytes of class 1:1fff before it.
    """
    user.rmdir()
    user.mkdir()
    unclassified = tc_bytes(s.pair.a, "va", "1:1fff")
    sender = start_sender(
        s.pair.a.name, 0, s.pair.b_addr, PORT, max_bytes=400_000, seconds=10, cgroup=str(user)
    )
    return sender, unclassified


@pytest.mark.parametrize("gate", [True, False])
def test_the_restart_gate_holds_a_restarted_tenants_connection_until_it_is_bound(
    setup: Setup, gate: bool
) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    other = s.cgroup("user.slice/other.slice")  # beside the tenant, matches no pattern
    agent = s.agent(gate=gate)  # no watcher: the cycle alone binds
    desired = load_desired(agent.config)
    agent.cycle(desired)
    xid = _xids(agent)["root"]
    maps = NftMaps("bwenforcer", s.pair.a.name)
    try:
        if gate:
            assert maps.dump(SET_PARENTS) == {user.parent.stat().st_ino: None}
            assert other.stat().st_ino in maps.dump(SET_PASS)
            assert user.stat().st_ino not in maps.dump(SET_PASS)
        else:
            with pytest.raises(MapMissing):
                maps.dump(SET_PARENTS)
    finally:
        maps.close()
    # a cgroup beside the tenants that is none: sends at once, unclassified as before
    before = tc_bytes(s.pair.a, "va", "1:1fff")
    s.send(other, s.pair.b_addr, 100_000)
    assert tc_bytes(s.pair.a, "va", "1:1fff") - before >= 100_000

    sink = start_sink(s.pair.b.name, PORT, 15)
    try:
        sender, unclassified = _restart_and_connect(s, user, agent)
        time.sleep(0.5)
        if gate:
            # its SYN was dropped: nothing sent, nothing unclassified, until the cycle binds
            assert sender.poll() is None
            assert tc_bytes(s.pair.a, "va", "1:1fff") - unclassified < 10_000
            agent.cycle(desired)
        assert sender.wait(timeout=15) == 0  # the connection succeeds (after 1 s, gated)
    finally:
        sink.kill()
        sink.wait(timeout=5)
    leaked = tc_bytes(s.pair.a, "va", "1:1fff") - unclassified
    counted = _class_bytes(s)
    if gate:
        assert leaked < 10_000  # ARP/ND at most: no packet of the tenant
        assert counted[(xid, "default")] >= 400_000
    else:
        assert leaked >= 400_000  # as before the gate: the whole connection unclassified


def test_the_gate_with_the_watcher_passes_new_other_cgroups_and_disarms_on_stop(
    setup: Setup,
) -> None:
    s = setup
    user = s.cgroup("user.slice/user-0.slice")
    agent = s.agent(gate=True)
    agent.watch = True
    try:
        desired = load_desired(agent.config)
        agent.cycle(desired)
        xid = _xids(agent)["root"]
        # a unit that is no tenant starts after the cycle: the watcher lets it through
        other = s.cgroup("user.slice/late.slice")
        before = tc_bytes(s.pair.a, "va", "1:1fff")
        started = time.monotonic()
        s.send(other, s.pair.b_addr, 100_000)
        assert time.monotonic() - started < 0.9  # no SYN dropped
        assert tc_bytes(s.pair.a, "va", "1:1fff") - before >= 100_000
        # the tenant restarts: re-bound by the watcher, its connection classified
        user.rmdir()
        user.mkdir()
        before = tc_bytes(s.pair.a, "va", "1:1fff")
        s.send(user, s.pair.b_addr, 300_000)
        assert tc_bytes(s.pair.a, "va", "1:1fff") - before < 10_000
        assert _within(_class_bytes(s)[(xid, "default")], 300_000)
        # the agent stops: the gate no longer holds a new cgroup (no one to bind it)
        agent.disarm_gate()
    finally:
        agent.close()
    maps = NftMaps("bwenforcer", s.pair.a.name)
    try:
        assert maps.dump(SET_PARENTS) == {}
    finally:
        maps.close()
    user.rmdir()
    user.mkdir()
    started = time.monotonic()
    s.send(user, s.pair.b_addr, 100_000)
    assert time.monotonic() - started < 0.9


def test_the_gate_holds_an_inbound_connection_to_a_restarted_tenants_server(
    setup: Setup,
) -> None:
    s = setup
    srv = s.cgroup("machine.slice/srv.scope")
    agent = s.agent(gate=True)
    desired = load_desired(agent.config)
    agent.cycle(desired)
    xid = _xids(agent)["vm_srv"]
    srv.rmdir()
    srv.mkdir()  # restarted, not bound yet (no watcher, no cycle)
    sink = start_sink(s.pair.a.name, PORT + 2, 15, cgroup=str(srv))
    try:
        unclassified = tc_bytes(s.pair.a, "va", "1:1fff")
        client = start_sender(
            s.pair.b.name, 0, s.pair.a_addr, PORT + 2, max_bytes=300_000, seconds=10
        )
        time.sleep(0.5)
        assert client.poll() is None  # the SYN to the listener was dropped (input chain)
        agent.cycle(desired)
        assert client.wait(timeout=15) == 0
    finally:
        sink.kill()
        sink.wait(timeout=5)
    assert tc_bytes(s.pair.a, "va", "1:1fff") - unclassified < 2_000  # ARP/ND at most
    assert _class_bytes(s)[(xid, "default")] > 0  # the server's replies (ACKs) are its own

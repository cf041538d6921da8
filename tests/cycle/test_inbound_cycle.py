"""The cycle with an inbound backend (issue 19): a namespace's HTB tree, the real state
file, and a small in-memory inbound port standing in for the backend (what is tested
is the cycle: what it reads, plans, hands over and keeps, not the backend)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from bwenforcer.core.inbound import ClassKey, InboundFailure, InboundLimit, InboundSnapshot
from bwenforcer.core.units import human_rate
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.errors import KernelError
from bwenforcer.inputs.config import load_config
from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.metrics.exposition import exposition
from tests.cycle.test_sync_kernel import Clock, init_tree
from tests.kernel_helpers import tc_ceils
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

T0 = 1_763_800_000.0


class MemInbound:
    """An inbound backend in memory: counters and limits by class, what it was asked."""

    def __init__(self) -> None:
        self.counters: dict[ClassKey, int] = {}
        self.limits: dict[ClassKey, int] = {}
        self.refuse: set[int] = set()  # xids whose limits it refuses
        self.broken = False  # dump fails
        self.dumps = 0
        self.applied: list[InboundLimit] = []
        self.unclassified: dict[str, int] = {}  # bytes of no slice, by class

    def dump(self) -> InboundSnapshot:
        self.dumps += 1
        if self.broken:
            raise KernelError("nftables: table bwin not found")
        return InboundSnapshot(dict(self.counters), dict(self.limits), dict(self.unclassified))

    def ensure(self, xids: Iterable[int], dry_run: bool = False) -> None:
        if dry_run:
            return
        want = set(xids)
        for xid in want:
            for tc in ("default", "exempt"):
                self.counters.setdefault((xid, tc), 0)  # type: ignore[arg-type]
        for key in [k for k in self.counters if k[0] not in want]:  # as the backend does
            del self.counters[key]
            self.limits.pop(key, None)

    def apply_limits(self, changes: Sequence[InboundLimit]) -> list[InboundFailure]:
        refused = []
        for limit in changes:
            if limit.xid in self.refuse:
                refused.append(InboundFailure(limit, 95, "Operation not supported"))
                continue
            self.applied.append(limit)
            key = (limit.xid, limit.traffic_class)
            if limit.rate_bps is None:
                self.limits.pop(key, None)
            else:
                self.limits[key] = limit.rate_bps
        return refused


def _config(tmp: Path, enabled: bool = True, mail: str = "") -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        "  - {name: pl_in, xid: 10, rspec: {net_max_kbyte: 200, net_thresh_kbyte: 100,"
        " net_direction: in}}\n"
        "  - {name: pl_both, xid: 11, rspec: {net_max_kbyte: 200, net_thresh_kbyte: 100,"
        " net_direction: both}}\n"
        "  - {name: pl_out, xid: 12, rspec: {net_max_kbyte: 200, net_thresh_kbyte: 100}}\n"
    )
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: va\nnode_cap: 10mbit\nbwmax: 100mbit\nperiod: 1h\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "lock_timeout: 5s\nvanish_grace: 0s\nmetrics: {listen: null}\n"
        "classifier: {mode: uid}\n"  # inbound needs a mode that marks connections
        f"inbound: {{enabled: {'true' if enabled else 'false'}}}\n{mail}"
    )
    return cfg


def _classes(tmp: Path, xid: int) -> dict[str, dict[str, object]]:
    state = json.loads((tmp / "state.json").read_text().partition("\n")[0])  # the object
    return state["slices"][str(xid)]["classes"]  # type: ignore[no-any-return]


def test_inbound_bytes_are_counted_and_capped_per_direction(
    pair: NetnsPair, tmp_path: Path
) -> None:
    config = load_config(str(_config(tmp_path)))
    init_tree(pair, config)
    port = MemInbound()
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name, inbound=port)
    first = agent.cycle(load_desired(config))
    assert first.result == "ok", first.failures
    assert set(port.counters) == {(x, tc) for x in (10, 11, 12) for tc in ("default", "exempt")}

    port.counters[(10, "default")] = 150_000  # past pl_in's threshold, received
    port.counters[(11, "default")] = 150_000  # pl_both: the sum is past it too
    port.counters[(12, "default")] = 150_000  # pl_out counts only what it sends
    clock.now += 60
    second = agent.cycle(load_desired(config))
    assert second.result == "ok", second.failures
    assert {(lim.xid, lim.traffic_class) for lim in port.applied} == {
        (10, "default"),
        (11, "default"),
    }
    assert all(lim.rate_bps for lim in port.applied)
    pl_in, pl_both, pl_out = (_classes(tmp_path, x)["default"] for x in (10, 11, 12))
    assert pl_in["in_used_bytes"] == pl_both["in_used_bytes"] == pl_out["in_used_bytes"] == 150_000
    assert pl_in["capped"] and pl_both["capped"] and not pl_out["capped"]
    assert pl_in["in_limit_bps"] == port.limits[(10, "default")]
    ceils = tc_ceils(pair.a, "va")
    assert ceils["1:100a"] == 10_000_000  # an inbound budget leaves egress alone
    assert ceils["1:100b"] == pl_both["ceil_bps"] == port.limits[(11, "default")] < 10_000_000

    # the same cycle again: limits within the margin are not touched
    port.applied.clear()
    port.unclassified = {"default": 4_321, "exempt": 0}  # received by no slice
    clock.now += 60
    third = agent.cycle(load_desired(config))
    assert port.applied == []
    # bytes of no slice: in the metrics only, by class
    metrics = AgentMetrics()
    metrics.observe(third)
    text = exposition(metrics)
    assert 'bwenforcer_unclassified_received_bytes{class="default"} 4321.0' in text
    assert 'bwenforcer_unclassified_received_bytes{class="exempt"} 0.0' in text


def test_a_refused_limit_or_an_unread_backend_never_stops_the_cycle(
    pair: NetnsPair, tmp_path: Path
) -> None:
    config = load_config(str(_config(tmp_path)))
    init_tree(pair, config)
    port = MemInbound()
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name, inbound=port)
    agent.cycle(load_desired(config))
    port.counters[(10, "default")] = 150_000
    port.counters[(11, "default")] = 150_000
    port.refuse = {10}
    clock.now += 60
    result = agent.cycle(load_desired(config))
    assert result.result == "partial"
    assert [line for line in result.failures if "inbound limit failed" in line] == [
        "slice pl_in xid 10 default: inbound limit failed: Operation not supported"
    ]
    assert (11, "default") in port.limits  # the other slice's limit went through

    port.broken = True
    port.counters[(10, "default")] = 190_000
    clock.now += 60
    held = agent.cycle(load_desired(config))
    assert held.result == "partial"
    assert any(line.startswith("inbound dump:") for line in held.failures)
    assert _classes(tmp_path, 10)["default"]["in_used_bytes"] == 150_000  # held, not lost
    port.broken = False
    clock.now += 60
    agent.cycle(load_desired(config))
    assert _classes(tmp_path, 10)["default"]["in_used_bytes"] == 190_000  # counted late


def test_with_inbound_off_the_port_is_not_touched(pair: NetnsPair, tmp_path: Path) -> None:
    config = load_config(str(_config(tmp_path, enabled=False)))
    init_tree(pair, config)
    port = MemInbound()
    agent = Agent(config, clock=Clock(T0), netns=pair.a.name, inbound=port)
    result = agent.cycle(load_desired(config))
    assert result.result == "ok" and port.dumps == 0 and port.counters == {}


def test_the_notice_says_which_direction_capped(pair: NetnsPair, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    mail = f"mail: {{transport: spool, operators: [ops@example.org], spool: {{dir: {spool}}}}}\n"
    config = load_config(str(_config(tmp_path, mail=mail)))
    init_tree(pair, config)
    port = MemInbound()
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name, inbound=port)
    agent.cycle(load_desired(config))
    port.counters[(10, "default")] = 150_000
    clock.now += 60
    result = agent.cycle(load_desired(config))
    assert result.outcome is not None and result.outcome.mails_sent == 1, result.failures
    (message,) = [p.read_text() for p in spool.iterdir() if "pl_in" in p.read_text()]
    limit = port.limits[(10, "default")]
    assert "received since the period began:  146KiB (budget 200KiB" in message
    assert f"new bandwidth limit (ceil):   {human_rate(limit)}" in message


def test_the_history_keeps_both_directions(pair: NetnsPair, tmp_path: Path) -> None:
    """What a slice received goes to the usage history beside what it sent (format 5,
    journal 3), and ``report`` shows it with inbound on."""
    from bwenforcer.history.reader import read_history
    from bwenforcer.views.report import INBOUND_KEYS, row_json
    from tests.views.report_tables import report_table

    config = load_config(str(_config(tmp_path)))
    init_tree(pair, config)
    port = MemInbound()
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name, inbound=port)
    agent.cycle(load_desired(config))
    port.counters[(10, "default")] = 150_000
    port.counters[(12, "exempt")] = 7_000
    clock.now += 60
    agent.cycle(load_desired(config))
    rows = {r.slice_name: r for r in read_history(config.history_file).report("day")}
    assert (rows["pl_in"].in_default_bytes, rows["pl_in"].in_exempt_bytes) == (150_000, 0)
    assert rows["pl_out"].in_exempt_bytes == 7_000 and rows["pl_out"].default_bytes == 0
    doc = row_json(rows["pl_in"], INBOUND_KEYS)
    assert doc["in_default_bytes"] == 150_000
    table = report_table(list(rows.values()), "day", inbound=True)
    assert "RECEIVED DEFAULT" in table.splitlines()[0] and "146KiB" in table
    assert "RECEIVED" not in report_table(list(rows.values()), "day")


def test_a_slice_leaving_is_read_a_last_time_into_its_ledger_entry(
    pair: NetnsPair, tmp_path: Path
) -> None:
    config = load_config(str(_config(tmp_path)))
    init_tree(pair, config)
    port = MemInbound()
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name, inbound=port)
    agent.cycle(load_desired(config))
    port.counters[(10, "default")] = 40_000
    (tmp_path / "slices.yaml").write_text(
        "\n".join(
            line
            for line in (tmp_path / "slices.yaml").read_text().splitlines()
            if "pl_in" not in line
        )
        + "\n"
    )
    clock.now += 60
    agent.cycle(load_desired(config))
    # the ledger's entries are lines after the state's object: [expires_at, name, ENTRY]
    lines = (tmp_path / "state.json").read_text().splitlines()[1:]
    entry = next(row[2] for row in map(json.loads, lines) if row[1] == "pl_in")
    assert entry[4][10] == 40_000  # the default class's in_used_bytes, counted as it left
    clock.now += 60
    agent.cycle(load_desired(config))
    assert (10, "default") not in port.counters  # the next cycle lets its counter go

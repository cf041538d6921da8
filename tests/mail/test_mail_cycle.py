"""Cycles with mail: one mail per capped slice per period, retried until delivered."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.errors import ExitCode
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import tc_ceils
from tests.loopback import Sink, Stall, free_port
from tests.netns import Netns

pytestmark = pytest.mark.kernel


def _config(tmp: Path, port: int) -> str:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        "  - {name: pl_capped, xid: 21, rspec: {net_thresh_kbyte: 0, net_i2_thresh_kbyte: 0}}\n"
        "  - {name: pl_fine, xid: 22, rspec: {}}\n"
    )
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "metrics: {listen: null}\n"
        "mail: {transport: smtp, from: support@example.org, operators: [ops@example.org],\n"
        f"       slice_address: '{{slice}}@slices.example.org', hostname: node1.example.org,\n"
        f"       smtp: {{host: 127.0.0.1, port: {port}, timeout: 2s}}}}\n"
    )
    return str(cfg)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def agent(ns: Netns, tmp_path: Path, port: int) -> Iterator[Agent]:
    config = load_config(_config(tmp_path, port))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    yield Agent(config, netns=ns.name)


def test_both_classes_capped_give_exactly_one_mail_then_none(agent: Agent, port: int) -> None:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        desired = load_desired(agent.config)
        first = agent.cycle(desired)
        second = agent.cycle(desired)
    finally:
        controller.stop()
    assert first.result == "ok" and first.outcome.mails_sent == 1
    assert second.outcome.mails_sent == 0
    assert len(sink.envelopes) == 1
    msg = email.message_from_bytes(sink.envelopes[0][2], policy=email.policy.default)
    body = msg.get_content()
    assert "Default traffic" in body and "Exempt traffic" in body
    assert sink.envelopes[0][1] == ["ops@example.org", "pl_capped@slices.example.org"]


def test_smtp_down_caps_anyway_partial_then_delivers_when_back(
    agent: Agent, port: int, ns: Netns
) -> None:
    desired = load_desired(agent.config)
    down = agent.cycle(desired)
    assert down.exit_code == ExitCode.PARTIAL and down.outcome.mails_failed == 1
    assert tc_ceils(ns, "v0")["1:1015"] < 10_000_000  # the cap is applied regardless
    state = StateStore(agent.config.state_file).load().state
    assert not state.slices[21].default.notified  # flag only after delivery

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        back = agent.cycle(desired)
        again = agent.cycle(desired)
    finally:
        controller.stop()
    assert back.exit_code == ExitCode.OK and back.outcome.mails_sent == 1
    assert again.outcome.mails_sent == 0
    assert len(sink.envelopes) == 1
    state = StateStore(agent.config.state_file).load().state
    assert state.slices[21].default.notified and state.slices[21].exempt.notified


def test_a_stalled_server_takes_one_timeout_per_cycle_and_the_rest_wait(
    ns: Netns, tmp_path: Path, port: int
) -> None:
    config = load_config(_config(tmp_path, port))
    config = replace(config, mail=replace(config.mail, smtp_timeout_s=1))
    (tmp_path / "slices.yaml").write_text(
        "slices:\n"
        + "".join(
            f"  - {{name: pl_c{xid}, xid: {xid}, rspec: {{net_thresh_kbyte: 0}}}}\n"
            for xid in (51, 52, 53)
        )
    )
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    agent = Agent(config, netns=ns.name)
    desired = load_desired(config)
    stall = Stall(port)
    try:
        stalled = agent.cycle(desired)
    finally:
        stall.close()
    # one connection waited out the cycle's mail time; the other two were not tried
    assert stall.accepted == 1
    assert stalled.exit_code == ExitCode.PARTIAL
    assert (stalled.outcome.mails_failed, stalled.outcome.mails_deferred) == (1, 2)
    state = StateStore(config.state_file).load().state
    assert not any(state.slices[xid].default.notified for xid in (51, 52, 53))

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        back = agent.cycle(desired)
    finally:
        controller.stop()
    assert back.exit_code == ExitCode.OK and back.outcome.mails_sent == 3
    assert sorted(e[1][1] for e in sink.envelopes) == [
        f"pl_c{xid}@slices.example.org" for xid in (51, 52, 53)
    ]
    state = StateStore(config.state_file).load().state
    assert all(state.slices[xid].default.notified for xid in (51, 52, 53))

"""A cycle on a namespace kernel against bad rspecs, clock steps, capped time, kills mid-cycle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bwenforcer.core.model import BootClock, State
from bwenforcer.core.plan import MoveToLedger
from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.errors import StateError
from bwenforcer.history.reader import read_history
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import mark_all_to, send_bytes, tc_ceils
from tests.netns import Netns, NetnsPair

pytestmark = pytest.mark.kernel

T0 = 1_800_000_000 // 3600 * 3600  # on the hour: every cycle below stays in one UTC hour
DAY = 86400


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_slices(tmp: Path, slices: dict[str, tuple[int, str]]) -> None:
    lines = [f"  - {{name: {n}, xid: {x}, rspec: {r}}}" for n, (x, r) in slices.items()]
    (tmp / "slices.yaml").write_text("slices:\n" + "\n".join(lines) + "\n")


def make_config(tmp: Path, dev: str, period: str = "1d", grace: str | None = "0s") -> Config:
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: {dev}\nnode_cap: 10mbit\nbwmax: 100mbit\nperiod: {period}\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "lock_timeout: 5s\nmetrics: {listen: null}\n"
        + ("" if grace is None else f"vanish_grace: {grace}\n")
    )
    return load_config(str(cfg))


def init_tree(netns: str, dev: str, config: Config) -> None:
    with HtbBackend(dev, netns=netns) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)


def state_of(config: Config) -> State:
    return StateStore(config.state_file).load().state


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- one bad rspec value does not lift a cap -------------------------------------------


def test_a_capped_slice_whose_record_turns_invalid_stays_capped_and_is_logged_once(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capped = "{net_max_kbyte: 100, net_thresh_kbyte: 0}"
    write_slices(tmp_path, {"pl_capped": (10, capped), "pl_fine": (11, "{}")})
    config = make_config(tmp_path, "v0")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    before = state_of(config).slices[10]
    assert before.default.capped
    ceils = tc_ceils(ns, "v0")
    assert ceils["1:100a"] < 10_000_000

    bad = "{net_max_kbyte: 100, net_thresh_kbyte: 0, net_max_rate: banana}"
    write_slices(tmp_path, {"pl_capped": (10, bad), "pl_fine": (11, "{}"), "pl_newbad": (12, bad)})
    caplog.clear()
    clock.now += 300
    result = Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))  # a cron run
    state = state_of(config)
    assert sorted(state.slices) == [10, 11] and not state.ledger  # pl_newbad: skipped
    kept = state.slices[10]
    assert kept.default.capped and kept.default.policy == before.default.policy
    now_ceils = tc_ceils(ns, "v0")
    assert {"1:100a", "1:200a"} <= set(now_ceils) and "1:100c" not in now_ceils
    assert now_ceils["1:100a"] < 10_000_000  # the cap is kept, not lifted
    assert result.result == "partial"
    logged = errors(caplog)
    assert len(logged) == 2, logged  # one line per bad record
    assert any("pl_capped" in line and "banana" in line for line in logged)

    caplog.clear()
    clock.now += 300
    again = Agent(config, clock=clock, netns=ns.name)
    again.cycle(load_desired(config))  # the file did not change: nothing new to say
    again.cycle(again.desired())
    assert errors(caplog) == []
    assert state_of(config).slices[10].default.capped


# --- clock steps -----------------------------------------------------------------------


def test_a_clock_stepped_forward_days_then_back_keeps_periods_and_ledger(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_thresh_kbyte: 0}"), "pl_gone": (11, "{}")})
    config = make_config(tmp_path, "v0")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=ns.name)
    agent.cycle(load_desired(config))
    write_slices(tmp_path, {"pl_a": (10, "{net_thresh_kbyte: 0}")})
    clock.now += 300
    agent.cycle(load_desired(config))
    before = state_of(config)
    periods = {x: (s.period_start_s, s.period_end_s) for x, s in before.slices.items()}
    assert "pl_gone" in before.ledger

    for step in (5 * DAY, -5 * DAY):  # a bad NTP answer, then its correction
        caplog.clear()
        clock.now += step
        agent.cycle(load_desired(config))
        state = state_of(config)
        assert {x: (s.period_start_s, s.period_end_s) for x, s in state.slices.items()} == periods
        assert state.ledger == before.ledger
        assert state.slices[10].default.capped  # caps still follow the usage
        assert len([w for w in warnings(caplog) if "clock" in w]) == 1, warnings(caplog)

    caplog.clear()
    clock.now += 300  # a plausible clock again: nothing to say
    agent.cycle(load_desired(config))
    assert not [w for w in warnings(caplog) if "clock" in w]


class BootAt:
    """A boot clock the test moves by hand: boot id and CLOCK_BOOTTIME."""

    def __init__(self, boot_id: str, boottime_s: int) -> None:
        self.boot_id, self.boottime_s = boot_id, boottime_s

    def __call__(self) -> BootClock:
        return BootClock(self.boot_id, self.boottime_s)


def test_a_clock_stepped_ahead_is_held_every_cycle_it_stays_wrong_not_only_the_first(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_max_kbyte: 0, net_thresh_kbyte: 0}")})
    config = make_config(tmp_path, "v0")
    init_tree(ns.name, "v0", config)
    clock, boot = Clock(T0), BootAt("b1", 5000)
    agent = Agent(config, clock=clock, boot=boot, netns=ns.name)
    agent.cycle(load_desired(config))
    capped = state_of(config).slices[10]
    assert capped.default.capped and tc_ceils(ns, "v0")["1:100a"] < 10_000_000

    clock.now += 2 * DAY  # a bad NTP answer: the wall clock jumps, the boot clock does not
    for _ in range(3):
        clock.now += 300
        boot.boottime_s += 300
        caplog.clear()
        agent.cycle(load_desired(config))
        st = state_of(config).slices[10]
        assert (st.period_start_s, st.period_end_s) == (capped.period_start_s, capped.period_end_s)
        assert st.default.capped and tc_ceils(ns, "v0")["1:100a"] < 10_000_000
        assert any("same boot" in w for w in warnings(caplog)), warnings(caplog)

    # a real outage: the node rebooted and was down those two days; the period ends
    clock.now += 300
    agent = Agent(config, clock=clock, boot=BootAt("b2", 60), netns=ns.name)
    caplog.clear()
    agent.cycle(load_desired(config))
    assert not [w for w in warnings(caplog) if "clock" in w]
    assert state_of(config).slices[10].period_end_s > capped.period_end_s


def test_a_reference_taken_before_ntp_stepped_the_clock_holds_one_period_not_the_boot(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_max_kbyte: 0, net_thresh_kbyte: 0}")})
    config = make_config(tmp_path, "v0", period="1h")
    init_tree(ns.name, "v0", config)
    clock, boot = Clock(T0), BootAt("b1", 30)  # the first cycle on the RTC's time
    agent = Agent(config, clock=clock, boot=boot, netns=ns.name)
    agent.cycle(load_desired(config))
    first = state_of(config).slices[10]
    clock.now += 3600  # NTP steps the wall clock an hour forward
    for _ in range(11):  # held: the reference says the clock is an hour off
        clock.now += 300
        boot.boottime_s += 300
        agent.cycle(load_desired(config))
        assert state_of(config).slices[10].period_end_s == first.period_end_s
    caplog.clear()
    clock.now += 300
    boot.boottime_s += 300  # a whole period since the reference: the clock is taken as right
    agent.cycle(load_desired(config))
    said = [w for w in warnings(caplog) if "clock" in w]
    assert len(said) == 1 and "the reference was wrong" in said[0], said
    assert state_of(config).slices[10].period_end_s > first.period_end_s  # periods end again
    caplog.clear()
    clock.now += 300
    boot.boottime_s += 300
    agent.cycle(load_desired(config))
    assert not [w for w in warnings(caplog) if "clock" in w]


def test_a_clock_stepped_eleven_years_ahead_erases_no_history(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_thresh_kbyte: 0}")})
    config = make_config(tmp_path, "v0")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=ns.name)
    agent.cycle(load_desired(config))
    clock.now += 300
    agent.cycle(load_desired(config))  # capped for 300 s: something in the history
    recorded = read_history(config.history_file).report("hour", None, "pl_a")
    assert [(r.bucket_start_s, r.capped_default_s) for r in recorded] == [(T0, 300)]

    caplog.clear()
    clock.now += 11 * 365 * DAY
    agent.cycle(load_desired(config))
    assert len([w for w in warnings(caplog) if "clock" in w]) == 1, warnings(caplog)
    rows = read_history(config.history_file).report("hour", None, "pl_a")
    assert (T0, 300) in [(r.bucket_start_s, r.capped_default_s) for r in rows]

    clock.now -= 11 * 365 * DAY - 300  # corrected: the history goes on where it was
    agent.cycle(load_desired(config))
    rows = read_history(config.history_file).report("hour", None, "pl_a")
    # + one interval: how long a stepped clock's cycle was capped is not known
    assert (T0, 600) in [(r.bucket_start_s, r.capped_default_s) for r in rows]


# --- a half-written slices file --------------------------------------------------------


def test_a_half_written_slices_file_uncaps_no_one_for_the_grace(ns: Netns, tmp_path: Path) -> None:
    capped = "{net_max_kbyte: 0, net_thresh_kbyte: 0, net_min_rate: 8}"
    write_slices(tmp_path, {"pl_a": (10, "{}"), "pl_capped": (11, capped)})
    config = make_config(tmp_path, "v0", grace=None)  # the default grace
    assert config.grace_s == 600  # the longer of two 5 min intervals and 10 minutes
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    assert tc_ceils(ns, "v0")["1:100b"] == 8_000

    # an editor's non-atomic save, caught half-way: a valid prefix of the file
    slices = tmp_path / "slices.yaml"
    whole = slices.read_text()
    slices.write_text(whole[: whole.index("  - {name: pl_capped")])
    for _ in range(2):  # cron runs within the grace
        clock.now += 299
        result = Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
        assert tc_ceils(ns, "v0")["1:100b"] == 8_000  # its class and cap stay
        state = state_of(config)
        assert state.slices[11].default.capped and not state.ledger
        assert state.missing == {11: T0 + 299}
        assert not any(isinstance(a, MoveToLedger) for a in result.plan.actions)

    clock.now += 302  # still missing once the grace (600 s) is over: a deleted slice
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    state = state_of(config)
    assert "pl_capped" in state.ledger and 11 not in state.slices and not state.missing
    assert "1:100b" not in tc_ceils(ns, "v0")

    slices.write_text(whole)  # back: revived with its usage, capped again
    clock.now += 300
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    assert tc_ceils(ns, "v0")["1:100b"] == 8_000


def test_a_slice_back_within_its_grace_was_never_gone(ns: Netns, tmp_path: Path) -> None:
    capped = "{net_max_kbyte: 0, net_thresh_kbyte: 0, net_min_rate: 8}"
    write_slices(tmp_path, {"pl_capped": (11, capped)})
    config = make_config(tmp_path, "v0", grace="20m")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    before = state_of(config).slices[11]
    (tmp_path / "slices.yaml").write_text("slices:\n")
    clock.now += 900
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    assert state_of(config).missing == {11: T0 + 900}
    write_slices(tmp_path, {"pl_capped": (11, capped)})
    clock.now += 300
    result = Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    state = state_of(config)
    assert not state.missing and not state.ledger
    assert (state.slices[11].period_start_s, state.slices[11].default.capped) == (
        before.period_start_s,
        True,
    )
    assert not result.plan.kernel_ops()  # nothing to change in the kernel


# --- two names on one xid ----------------------------------------------------------------


def test_a_newcomer_on_a_capped_slices_xid_is_refused_and_the_cap_stays(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overdrawn = "{net_max_kbyte: 0, net_thresh_kbyte: 0, net_min_rate: 8}"
    write_slices(tmp_path, {"pl_old": (10, overdrawn)})
    config = make_config(tmp_path, "v0")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    assert tc_ceils(ns, "v0")["1:100a"] == 8_000  # capped at its floor
    used = state_of(config).slices[10].default.used_bytes

    # a second record with another name and pl_old's xid, placed before it
    write_slices(tmp_path, {"pl_new": (10, "{}"), "pl_old": (10, overdrawn)})
    caplog.clear()
    clock.now += 300
    result = Agent(config, clock=clock, netns=ns.name).cycle(load_desired(config))
    assert tc_ceils(ns, "v0")["1:100a"] == 8_000  # not lifted to the node cap
    state = state_of(config)
    assert state.slices[10].name == "pl_old" and state.slices[10].default.capped
    assert state.slices[10].default.used_bytes >= used and not state.ledger
    assert result.exit_code == 1
    (line,) = result.source_errors
    assert "pl_new" in line and "pl_old" in line and "xid 10" in line
    assert errors(caplog) == [line]


def test_a_rename_on_the_same_xid_goes_on_with_the_usage_and_keeps_the_cap(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rspec = "{net_max_kbyte: 100, net_thresh_kbyte: 50}"
    write_slices(tmp_path, {"pl_old": (10, rspec)})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 80_000)  # past the threshold
    clock.now += 300
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    before = state_of(config).slices[10]
    capped_bps = tc_ceils(pair.a, "va")["1:100a"]
    assert before.default.capped and capped_bps < 10_000_000
    write_slices(tmp_path, {"pl_new": (10, rspec)})  # renamed, or the uid recycled
    caplog.clear()
    with caplog.at_level(logging.INFO):
        Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    assert tc_ceils(pair.a, "va")["1:100a"] == capped_bps  # the class keeps its cap
    state = state_of(config)
    st = state.slices[10]
    assert st.name == "pl_new" and st.default.capped
    assert st.default.used_bytes >= before.default.used_bytes
    assert (st.period_start_s, st.period_end_s) == (before.period_start_s, before.period_end_s)
    assert "pl_old" in state.ledger
    said = [r.getMessage() for r in caplog.records if "pl_new" in r.getMessage()]
    assert len(said) == 1 and "pl_old" in said[0], said


# --- capped time is the time that passed -----------------------------------------------


def test_capped_time_is_the_time_between_irregular_cron_cycles(ns: Netns, tmp_path: Path) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_thresh_kbyte: 0}")})
    config = make_config(tmp_path, "v0")  # interval: the default 300 s
    init_tree(ns.name, "v0", config)
    for offset in (0, 100, 1000, 1300, 1300 + 2 * 3600):  # cron runs, then a long pause
        Agent(config, clock=Clock(T0 + offset), netns=ns.name).cycle(load_desired(config))
    rows = read_history(config.history_file).report("hour", None, "pl_a")
    by_hour = {r.bucket_start_s: r.capped_default_s for r in rows}
    # capped from the first cycle on: 100 + 900 + 300 s, then at most the hour it goes to
    assert by_hour == {T0: 1300, T0 + 2 * 3600: 3600}


def test_the_cycle_that_caps_adds_no_capped_time(pair: NetnsPair, tmp_path: Path) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_max_kbyte: 100, net_thresh_kbyte: 50}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 80_000)  # past the 50 KiB threshold
    clock.now += 300
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    assert state_of(config).slices[10].default.capped  # capped by this cycle, from now on
    rows = read_history(config.history_file).report("hour", None, "pl_a")
    assert [(r.default_bytes >= 80_000, r.capped_default_s) for r in rows] == [(True, 0)]
    clock.now += 300
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    rows = read_history(config.history_file).report("hour", None, "pl_a")
    assert [r.capped_default_s for r in rows] == [300]  # the 300 s it has been capped


def test_the_bytes_of_the_cycle_a_slice_leaves_reach_the_history(
    pair: NetnsPair, tmp_path: Path
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{}"), "pl_b": (11, "{}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 100_000)
    write_slices(tmp_path, {"pl_b": (11, "{}")})  # pl_a deleted, its last bytes not yet read
    clock.now += 300
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    ledger = state_of(config).ledger["pl_a"].slice.default.used_bytes
    assert ledger >= 100_000
    rows = read_history(config.history_file).report("day", None, "pl_a")
    assert sum(r.default_bytes for r in rows) == ledger


def test_a_yaml_error_in_the_slices_file_enforces_its_last_good_list(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_max_kbyte: 100, net_thresh_kbyte: 50}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    slices = tmp_path / "slices.yaml"
    slices.write_text(slices.read_text() + "  - {name: pl_b, xid: 11, rspec: {net_share: 2\n")
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 80_000)  # pl_a passes its threshold while the file is broken
    caplog.clear()
    for _ in range(2):  # two cron runs
        clock.now += 300
        result = Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
        assert result.exit_code == 1 and len(result.source_errors) == 1
    assert "last good version" in result.source_errors[0]
    assert errors(caplog) == list(result.source_errors)  # said once, not every cycle
    assert state_of(config).slices[10].default.capped
    assert tc_ceils(pair.a, "va")["1:100a"] < 10_000_000  # capped though the file is broken


def test_a_yaml_error_without_a_last_good_version_holds_every_slice_as_it_is(
    pair: NetnsPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{net_max_kbyte: 100, net_thresh_kbyte: 50}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    for kept in ("slices-cache", "slices-good"):  # no last good version left to enforce
        Path(f"{config.state_file}.{kept}").unlink(missing_ok=True)
    slices = tmp_path / "slices.yaml"
    slices.write_text(slices.read_text() + "  - {name: pl_b, xid: 11, rspec: {net_share: 2\n")
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 80_000)  # pl_a passes its threshold while the file is broken
    caplog.clear()
    for _ in range(2):  # two cron runs
        clock.now += 300
        result = Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
        assert result.exit_code == 1 and len(result.source_errors) == 1
    assert "no last good version" in result.source_errors[0]
    assert errors(caplog) == list(result.source_errors)  # said once, not every cycle
    st = state_of(config).slices[10]
    assert st.default.capped and st.default.used_bytes >= 80_000
    assert tc_ceils(pair.a, "va")["1:100a"] < 10_000_000  # capped though nothing was read


# --- a cycle killed between its two writes loses nothing -------------------------------


class Killed(BaseException):
    """The process died here (nothing catches it, as nothing catches SIGKILL)."""


class KilledAtSave(StateStore):
    """A state store whose process dies at its save: before the new file is in place,
    or right after.
    """

    def __init__(self, path: str, after: bool) -> None:
        super().__init__(path)
        self.after = after

    def save(self, state: State, now_s: int) -> None:
        if self.after:
            super().save(state, now_s)
        raise Killed


@pytest.mark.parametrize("after", [False, True], ids=["before-save", "after-save"])
def test_a_cycle_killed_at_its_state_save_leaves_history_equal_to_state(
    pair: NetnsPair, tmp_path: Path, after: bool
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)

    send_bytes(pair, 100_000)
    clock.now += 60
    dying = Agent(config, clock=clock, netns=pair.a.name)
    dying._store = KilledAtSave(config.state_file, after)
    with pytest.raises(Killed):
        dying.cycle(load_desired(config))
    dying.close()

    send_bytes(pair, 50_000)
    clock.now += 60
    Agent(config, clock=clock, netns=pair.a.name).cycle(load_desired(config))  # restarted
    used = state_of(config).slices[10].default.used_bytes
    assert used >= 150_000
    rows = read_history(config.history_file).report("day", None, "pl_a")
    assert sum(r.default_bytes for r in rows) == used


def test_a_failed_state_save_is_not_counted_twice_by_the_history(
    pair: NetnsPair, tmp_path: Path
) -> None:
    write_slices(tmp_path, {"pl_a": (10, "{}")})
    config = make_config(tmp_path, "va")
    init_tree(pair.a.name, "va", config)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=pair.a.name)
    agent.cycle(load_desired(config))
    mark_all_to(pair.a, pair.b_addr, 0x100A)
    send_bytes(pair, 80_000)

    class DiskFull(StateStore):
        def save(self, state: State, now_s: int) -> None:
            raise StateError(f"{self.path}: cannot save state: No space left on device")

    good = agent._store
    agent._store = DiskFull(config.state_file)
    clock.now += 60
    with pytest.raises(StateError):
        agent.cycle(load_desired(config))
    agent._store = good  # the disk has room again: the daemon's next cycle
    clock.now += 60
    agent.cycle(load_desired(config))
    used = state_of(config).slices[10].default.used_bytes
    assert used >= 80_000
    rows = read_history(config.history_file).report("day", None, "pl_a")
    assert sum(r.default_bytes for r in rows) == used


# --- the history folds after the save, and forgets departed slices' detail --------------


def test_a_departed_slice_keeps_its_hours_while_in_the_ledger_then_its_months_only(
    ns: Netns, tmp_path: Path
) -> None:
    capped = "{net_thresh_kbyte: 0}"
    write_slices(tmp_path, {"pl_a": (10, capped), "pl_b": (11, capped)})
    config = make_config(tmp_path, "v0", period="2d")
    init_tree(ns.name, "v0", config)
    clock = Clock(T0)
    agent = Agent(config, clock=clock, netns=ns.name)
    agent.cycle(load_desired(config))
    clock.now += 300
    agent.cycle(load_desired(config))  # both capped since the first cycle
    write_slices(tmp_path, {"pl_a": (10, capped)})
    clock.now += 300
    agent.cycle(load_desired(config))  # pl_b deleted: in the ledger, capped 600 s in all
    assert "pl_b" in state_of(config).ledger

    def hours(name: str) -> list[int]:
        rows = read_history(config.history_file).report("hour", None, name)
        return [r.capped_default_s for r in rows]

    clock.now += DAY
    agent.cycle(load_desired(config))  # the first cycle of a day: the journal folded in
    assert Path(f"{config.history_file}.journal").stat().st_size == 8
    assert "pl_b" in state_of(config).ledger and hours("pl_b") == [600]

    clock.now += 2 * DAY
    agent.cycle(load_desired(config))  # its entry expired
    assert "pl_b" not in state_of(config).ledger
    clock.now += DAY
    agent.cycle(load_desired(config))  # the next fold keeps its months only
    assert hours("pl_b") == [] and hours("pl_a")
    months = read_history(config.history_file).report("month", None, "pl_b")
    assert [r.capped_default_s for r in months] == [600]

"""Slice sources: historic units, clamps, skipped bad slices, the off switch."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.layout import MAX_SHARE
from bwenforcer.core.settings import ClassDefaults, Config
from bwenforcer.errors import SliceError
from bwenforcer.inputs import plc
from bwenforcer.inputs.plc import SLIVERMANAGER_NET_DEFAULTS, from_plc_slivers
from bwenforcer.inputs.slices import from_nodemanager_db, load_slices_file, resolve_policy

CFG = Config(node_cap_bps=10_000_000, bwmax_bps=100_000_000)


def test_historic_units_and_defaults() -> None:
    default, exempt, origin = resolve_policy(
        "pl_a", {"net_max_rate": "2000", "net_max_kbyte": 1000, "net_i2_share": "3"}, CFG
    )
    assert default.max_rate_bps == 2_000_000  # kbit/s
    assert default.limit_bytes == 1_024_000  # KiB
    assert default.threshold_bytes == 1_024_000 * 80 // 100
    assert exempt.max_rate_bps == 100_000_000 and exempt.share == 3
    assert exempt.limit_bytes == CFG.defaults["exempt"].limit_bytes
    assert origin["net_max_rate"] == "rspec" and origin["net_i2_max_kbyte"] == "defaults"


def test_tiers_and_taper_come_from_the_rspec_else_the_defaults_in_canonical_text() -> None:
    cfg = Config(
        node_cap_bps=10_000_000,
        defaults={
            "default": ClassDefaults(10**9, tiers="75%:5mbit"),
            "exempt": ClassDefaults(10**9, taper="50%-90%:1mbit"),
        },
    )
    default, exempt, origin = resolve_policy(
        "pl_a", {"net_tiers": "80%:4000kbit, 100%:1mbit", "net_i2_taper": None}, cfg
    )
    assert (default.tiers, default.taper) == ("80%:4mbit,100%:1mbit", "")
    assert (exempt.tiers, exempt.taper) == ("", "50%-90%:1mbit")
    assert origin["net_tiers"] == "rspec" and origin["net_i2_taper"] == "defaults"
    default, _, _ = resolve_policy("pl_b", {}, cfg)
    assert default.tiers == "75%:5mbit" and default.pacing
    for off in (0, "0", "false", False):
        default, exempt, _ = resolve_policy("pl_c", {"net_pacing": off, "net_i2_pacing": 1}, cfg)
        assert not default.pacing and exempt.pacing


@pytest.mark.parametrize(
    ("rspec", "problem"),
    [
        ({"net_tiers": "80%:1mbit,70%:1kbit"}, "slice pl_a: net_tiers: tier 2: shares must rise"),
        ({"net_i2_taper": "9%-8%:1mbit"}, "slice pl_a: net_i2_taper: taper: '9%-8%:1mbit'"),
        ({"net_taper": 5}, "slice pl_a: net_taper: 5 is not a text"),
        ({"net_pacing": 0}, "slice pl_a: net_pacing: pacing off needs tiers or a taper"),
        (  # tiers that never go below the max rate cap nothing: refused the same way
            {"net_tiers": "50%:2gbit", "net_max_rate": 1000, "net_pacing": 0},
            "slice pl_a: net_pacing: pacing off needs a tier or taper below the max rate 1mbit",
        ),
        (
            {"net_i2_taper": "50%-60%:900mbit", "net_i2_max_rate": 500000, "net_i2_pacing": 0},
            "slice pl_a: net_i2_pacing: pacing off needs a tier or taper below the max rate",
        ),
        (
            {"net_tiers": "9%:1mbit", "net_pacing": "no"},
            "slice pl_a: net_pacing: no is not 1, 0, true or false",
        ),
    ],
)
def test_a_bad_tier_or_taper_refuses_the_record(rspec: dict[str, object], problem: str) -> None:
    with pytest.raises(SliceError) as info:
        resolve_policy("pl_a", rspec, CFG)
    assert str(info.value).startswith(problem)


def test_a_rolling_window_comes_from_net_window_else_the_default_for_both_classes() -> None:
    cfg = Config(window_s=30 * 86400)
    default, exempt, origin = resolve_policy("pl_a", {}, cfg)
    assert default.window_s == exempt.window_s == 30 * 86400
    assert origin["net_window"] == "defaults"
    for value, window_s in (("7d", 7 * 86400), (7200, 7200), (7200.0, 7200), ("none", 0), (0, 0)):
        default, exempt, origin = resolve_policy("pl_a", {"net_window": value}, cfg)
        assert default.window_s == exempt.window_s == window_s, value
        assert origin["net_window"] == "rspec"
    assert resolve_policy("pl_a", {"net_window": "12h"}, CFG)[0].window_s == 12 * 3600


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("30 parsecs", "slice pl_a: net_window: '30 parsecs' is not a duration"),
        ("59m", "slice pl_a: net_window: a window must be from 1 hour to 366 days"),
        (400 * 86400, "slice pl_a: net_window: a window must be from 1 hour"),
        (True, "slice pl_a: net_window: True is not a duration"),
        (1.5, "slice pl_a: net_window: 1.5 is not a duration"),
        ([1], "slice pl_a: net_window: [1] is not a duration"),
    ],
)
def test_a_bad_window_refuses_the_record(value: object, problem: str) -> None:
    with pytest.raises(SliceError) as info:
        resolve_policy("pl_a", {"net_window": value}, CFG)
    assert str(info.value).startswith(problem) and "\n" not in str(info.value)


def test_clamps_min_to_quarter_of_cap_and_floors() -> None:
    default, _, _ = resolve_policy("pl_a", {"net_min_rate": 9000, "net_max_rate": 0}, CFG)
    assert default.max_rate_bps == CFG.bwmin_bps
    assert default.min_rate_bps == CFG.bwmin_bps
    default, _, _ = resolve_policy("pl_a", {"net_min_rate": 9000}, CFG)
    assert default.min_rate_bps == 2_500_000


def test_bad_slices_are_skipped_with_one_error_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "slices:\n"
        "  - {name: pl_good, xid: 10, rspec: {}}\n"
        "  - {name: 'Bad Name', xid: 11}\n"
        "  - {name: pl_big, xid: 70000}\n"
        "  - {name: pl_neg, xid: 12, rspec: {net_max_rate: -5}}\n"
        "  - {name: pl_nan, xid: 13, rspec: {net_max_kbyte: lots}}\n"
        "  - {name: pl_dup, xid: 10}\n"
        "  - {name: pl_ok2, xid: 14}\n"
    )
    with caplog.at_level(logging.ERROR):
        desired = load_slices_file(str(path), CFG)
    assert [s.name for s in desired.slices] == ["pl_good", "pl_ok2"]
    assert len(desired.errors) == 5
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 5
    joined = "\n".join(desired.errors)
    for needle in (
        "'Bad Name'",
        "xid 70000 out of range",
        "net_max_rate: -5 is negative",
        "'lots' is not a number",
        "pl_dup and pl_good both claim xid 10",
    ):
        assert needle in joined


def test_unusable_file_is_one_error_and_nothing_read(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- just a list\n")
    desired = load_slices_file(str(path), CFG)
    assert desired.unread and not desired.slices  # the planner holds the state's slices
    (line,) = desired.errors
    assert line.startswith(f"{path}: expected a mapping with one key")


def test_nodemanager_db_and_the_off_switch() -> None:
    db = {
        "pl_a": {"name": "pl_a", "xid": 501, "_rspec": {"net_max_rate": 1000}},
        "pl_default": {"name": "pl_default", "rspec": {"net_max_rate": 5000}},
        "pl_nouid_zz": {"name": "pl_nouid_zz", "_rspec": {}},
    }
    desired = from_nodemanager_db(db, CFG)
    assert [(s.name, s.xid) for s in desired.slices] == [("pl_a", 501)]
    assert not desired.errors and not desired.limiting_off
    # no account, no xid: skipped as the historic bwmon did (delegated), not an error
    assert desired.skipped == ("slice pl_nouid_zz: no account, so no xid (delegated?); skipped",)
    db["pl_default"]["rspec"]["net_max_rate"] = -1
    assert from_nodemanager_db(db, CFG).limiting_off


def test_only_the_prefix_default_record_is_the_node_default() -> None:
    uids = {"princeton_default": 601, "pl_b": 602}.get
    db = {
        "princeton_default": {"name": "princeton_default", "_rspec": {"net_max_rate": -1}},
        "pl_b": {"name": "pl_b", "_rspec": {"net_max_rate": 900}},
    }
    # a site's slice named *_default is a slice: limited, never the off switch
    desired = from_nodemanager_db(db, CFG, uid_of=uids)
    assert not desired.limiting_off
    assert [s.name for s in desired.slices] == ["pl_b"]  # -1 is no rate for a slice
    assert len(desired.errors) == 1 and "princeton_default" in desired.errors[0]
    db["princeton_default"]["_rspec"]["net_max_rate"] = 3000
    desired = from_nodemanager_db(db, CFG, uid_of=uids)
    assert {s.name: s.default.max_rate_bps for s in desired.slices} == {
        "princeton_default": 3_000_000,
        "pl_b": 900_000,
    }
    # with another PLC_SLICE_PREFIX, that site's default record is the node's
    db["princeton_default"]["_rspec"]["net_max_rate"] = -1
    assert from_nodemanager_db(db, CFG, "princeton_default", uid_of=uids).limiting_off


def test_node_manager_rspecs_share_policies_despite_their_other_resources() -> None:
    def record(name: str) -> dict[str, object]:
        tags = {"net_max_rate": "900", "vref": "f8", "initscript": name}
        rspec = {"net_max_rate": 900, "cpu_pct": 0, "disk_max": 10_000_000, "tags": tags}
        return {"name": name, "rspec": rspec, "_rspec": dict(rspec)}

    desired = from_nodemanager_db(
        {"pl_a": record("pl_a"), "pl_b": record("pl_b")}, CFG, uid_of={"pl_a": 1, "pl_b": 2}.get
    )
    a, b = desired.slices
    assert a.default.max_rate_bps == 900_000 and a.default is b.default


def test_records_without_rspec_are_skipped_not_enforced_with_defaults() -> None:
    db = {"pl_t": {"name": "pl_t", "instantiation": "delegated", "timestamp": 1}}
    desired = from_nodemanager_db(db, CFG, uid_of={"pl_t": 700}.get)
    assert desired.slices == () and desired.errors == ()
    assert desired.skipped == ("slice pl_t: no _rspec (not instantiated yet); skipped",)


def _sliver(name: str, **tags: object) -> dict[str, object]:
    return {
        "name": name,
        "instantiation": "plc-instantiated",
        "keys": [],
        "attributes": [{"tagname": k, "value": v} for k, v in tags.items()],
    }


def test_plc_getslivers_reply_is_read_as_slivermanager_reads_it() -> None:
    data = {
        "timestamp": 1,
        "networks": [{"is_primary": True, "bwlimit": 5_000_000}],
        "slivers": [
            _sliver("pl_a", net_max_rate="2000", net_max_kbyte="1000", net_i2_share="3"),
            _sliver("pl_b", net_max_rate="lots", net_thresh_kbyte="10"),  # not a number
            _sliver("pl_default", net_max_rate="-1", vref="f8"),
            _sliver("pl_gone"),  # no account
        ],
    }
    uids = {"pl_a": 801, "pl_b": 802, "pl_default": 803}.get
    assert from_plc_slivers(data, CFG, uid_of=uids).limiting_off
    data["slivers"][2] = _sliver("pl_default", net_max_rate="5000")
    desired = from_plc_slivers(data, CFG, uid_of=uids)
    by_name = {s.name: s for s in desired.slices}
    assert {(s.name, s.xid) for s in desired.slices} == {("pl_a", 801), ("pl_b", 802)}
    a, b = by_name["pl_a"], by_name["pl_b"]
    assert a.default.max_rate_bps == 2_000_000  # kbit/s
    assert a.default.limit_bytes == 1_024_000  # KiB
    assert a.exempt.share == 3
    # untagged: slivermanager's DEFAULT_ALLOCATION, not bwenforcer's config defaults
    assert a.exempt.limit_bytes == 31_640_625 * 1024
    assert a.exempt.threshold_bytes == 28_476_562 * 1024
    # slivermanager fills the untagged threshold too (9,492,187 KiB): capped by the limit
    assert a.default.threshold_bytes == 1_024_000
    # a tag that is no number falls back to the default: here the primary
    # network's bwlimit (5 Mbit/s), as slivermanager does
    assert b.default.max_rate_bps == 5_000_000
    assert b.default.threshold_bytes == 10 * 1024
    assert b.default.limit_bytes == 10_546_875 * 1024
    assert desired.errors == ()
    assert desired.skipped == ("slice pl_gone: no account, so no xid (delegated?); skipped",)


def test_plc_reply_without_interfaces_defaults_to_the_node_cap() -> None:
    data = {"slivers": [_sliver("pl_a")]}
    desired = from_plc_slivers(data, CFG, uid_of={"pl_a": 1}.get)
    assert desired.slices[0].default.max_rate_bps == CFG.node_cap_bps  # 1 Gbit/s, clamped
    assert desired.slices[0].default.min_rate_bps == CFG.bwmin_bps  # 1 kbit/s, raised


def _rspec_of(data: dict[str, object]) -> dict[str, object]:
    """The rspec bwenforcer builds for the one sliver of ``data`` (before its checks)."""
    seen: dict[str, object] = {}

    def record(db, config, default_record, uid_of, log_errors):  # type: ignore[no-untyped-def]
        seen.update(next(iter(db.values()))["rspec"])
        return from_nodemanager_db(db, config, default_record, uid_of, log_errors)

    original = plc.from_nodemanager_db
    plc.from_nodemanager_db = record
    try:
        from_plc_slivers(data, CFG, uid_of={"pl_a": 1}.get)
    finally:
        plc.from_nodemanager_db = original
    return seen


def _slivermanager_value(tag: str, default: float) -> float:
    """slivermanager.GetSlivers' conversion, restated: the default's type, else the default."""
    try:
        return type(default)(tag)
    except ValueError:
        return default


def test_plc_tags_convert_as_slivermanager_converts_them() -> None:
    data = {
        "networks": [{"is_primary": True, "bwlimit": 3_000_000}],
        "interfaces": [{"is_primary": True, "bwlimit": 7_000_000}],  # net.py's, not read here
        "slivers": [
            _sliver(
                "pl_a",
                net_min_rate="1.5e3",  # a float rate
                net_i2_max_rate=" 2000 ",
                net_share="1.5",  # no integer: the default share
                net_max_kbyte="2.0",  # no integer: the default budget
                net_thresh_kbyte=" 12 ",
                net_i2_share="1_000",
            )
        ],
    }
    rspec = _rspec_of(data)
    assert rspec["net_min_rate"] == 1500.0
    assert rspec["net_i2_max_rate"] == 2000.0
    assert rspec["net_share"] == 1
    assert rspec["net_max_kbyte"] == 10_546_875
    assert rspec["net_thresh_kbyte"] == 12
    assert rspec["net_i2_share"] == 1000
    assert rspec["net_max_rate"] == 3000.0  # networks' bwlimit, in kbit/s
    assert rspec["net_i2_min_rate"] == 1.0  # slivermanager's bwmin / 1000
    # without networks: interfaces are not slivermanager's source of the default
    del data["networks"]
    assert _rspec_of(data)["net_max_rate"] == 1_000_000.0
    # a negative bwlimit (no node limit) leaves the default alone
    data["networks"] = [{"is_primary": True, "bwlimit": -1}]
    assert _rspec_of(data)["net_max_rate"] == 1_000_000.0


@given(
    key=st.sampled_from(sorted(SLIVERMANAGER_NET_DEFAULTS)),
    tag=st.one_of(
        st.from_regex(r"\A ?[+-]?[0-9_]{0,7}(\.[0-9]{0,3})?([eE][+-]?[0-9])? ?\Z"),
        st.text(max_size=8),
    ),
)
def test_plc_tag_conversion_matches_slivermanager(key: str, tag: str) -> None:
    default = SLIVERMANAGER_NET_DEFAULTS[key]
    rspec = _rspec_of({"slivers": [_sliver("pl_a", **{key: tag})]})
    expected = _slivermanager_value(tag, default)
    got = rspec[key]
    if isinstance(expected, float) and expected != expected:  # nan: kept, refused later
        assert got != got
    else:
        assert got == expected and type(got) is type(expected)


def test_plc_tags_slivermanager_cannot_convert_refuse_only_their_record() -> None:
    data = {"slivers": [_sliver("pl_a", net_max_rate=None), _sliver("pl_b", net_max_rate="nan")]}
    data["slivers"].append(_sliver("pl_c", net_max_rate="-5"))
    data["slivers"].append(_sliver("pl_d", net_max_rate="2e3"))
    uids = {"pl_a": 1, "pl_b": 2, "pl_c": 3, "pl_d": 4}.get
    desired = from_plc_slivers(data, CFG, uid_of=uids)
    assert [(s.name, s.default.max_rate_bps) for s in desired.slices] == [("pl_d", 2_000_000)]
    assert [s.name for s in desired.invalid] == ["pl_a", "pl_b", "pl_c"]
    assert "None is not a number" in desired.errors[0]


@pytest.mark.parametrize(
    "data",
    [{"slivers": "pl_a"}, {"slivers": [{}] * 100_001}],
    ids=["not-a-list", "too-many"],
)
def test_plc_reply_that_is_no_list_of_slivers_is_one_error(data: dict[str, object]) -> None:
    with pytest.raises(SliceError, match="PLC data"):
        from_plc_slivers(data, CFG)


def test_bad_slivers_are_one_error_each_the_others_proceed() -> None:
    data = {"slivers": ["junk", {"name": 7, "attributes": "x"}, _sliver("pl_a")]}
    desired = from_plc_slivers(data, CFG, uid_of={"pl_a": 1}.get)
    assert [s.name for s in desired.slices] == ["pl_a"]
    assert len(desired.errors) == 2


@given(
    rspec=st.fixed_dictionaries(
        {},
        optional={
            k: st.integers(0, MAX_SHARE if k.endswith("share") else 10**8)
            for k in (
                "net_min_rate",
                "net_max_rate",
                "net_i2_min_rate",
                "net_i2_max_rate",
                "net_max_kbyte",
                "net_thresh_kbyte",
                "net_i2_max_kbyte",
                "net_i2_thresh_kbyte",
                "net_share",
                "net_i2_share",
            )
        },
    )
)
def test_policy_is_always_within_bounds(rspec: dict[str, int]) -> None:
    for policy, cap in zip(
        resolve_policy("pl_x", rspec, CFG)[:2], (CFG.node_cap_bps, CFG.bwmax_bps), strict=True
    ):
        assert (
            CFG.bwmin_bps <= policy.min_rate_bps <= policy.max_rate_bps <= max(cap, CFG.bwmin_bps)
        )
        assert policy.min_rate_bps <= max(CFG.bwmin_bps, cap // 4)
        assert policy.threshold_bytes <= policy.limit_bytes
        assert policy.share >= 1


def test_slices_with_the_same_rspec_share_their_policies_but_are_checked_alike() -> None:
    db = {
        "pl_a": {"name": "pl_a", "xid": 1, "_rspec": {"net_share": 2, "net_max_rate": 900}},
        "pl_b": {"name": "pl_b", "xid": 2, "_rspec": {"net_max_rate": 900, "net_share": 2}},
        "pl_c": {"name": "pl_c", "xid": 3, "_rspec": {"net_share": True, "net_max_rate": 900}},
        "pl_d": {"name": "pl_d", "xid": 4, "_rspec": {"net_share": [2]}},
        "pl_e": {"name": "pl_e", "xid": 5, "_rspec": {"net_share": 2.0, "net_max_rate": 900}},
    }
    got = from_nodemanager_db(db, CFG)
    by_name = {s.name: s for s in got.slices}
    assert set(by_name) == {"pl_a", "pl_b", "pl_e"}  # True and [2] are not numbers
    assert by_name["pl_a"].default is by_name["pl_b"].default
    assert by_name["pl_a"].exempt is by_name["pl_b"].exempt
    assert by_name["pl_e"].default == by_name["pl_a"].default
    assert len(got.errors) == 2
    assert "pl_c" in got.errors[0] and "net_share" in got.errors[0]
    assert "pl_d" in got.errors[1] and "net_share" in got.errors[1]


def test_an_agent_rereads_the_slices_file_only_once_it_changed(tmp_path: Path) -> None:
    from bwenforcer.cycle.agent import Agent

    slices = tmp_path / "slices.yaml"
    slices.write_text("slices:\n  - {name: pl_a, xid: 1}\n")
    agent = Agent(Config(slices_file=str(slices), state_file=str(tmp_path / "s.json")))
    first = agent.desired()
    assert agent.desired() is first  # a daemon's next cycle: not parsed again
    slices.write_text("slices:\n  - {name: pl_a, xid: 1}\n  - {name: pl_b, xid: 2}\n")
    assert [s.name for s in agent.desired().slices] == ["pl_a", "pl_b"]
    replaced = tmp_path / "new.yaml"
    replaced.write_text("slices:\n  - {name: pl_c, xid: 3}\n  - {name: pl_d, xid: 4}\n")
    replaced.rename(slices)  # as editors and config management write it
    assert [s.name for s in agent.desired().slices] == ["pl_c", "pl_d"]


def test_the_parsed_slices_file_is_kept_beside_the_state_while_its_bytes_are_unchanged(
    tmp_path: Path,
) -> None:
    import json

    from bwenforcer.inputs.slices import slices_cache_path

    slices = tmp_path / "slices.yaml"
    slices.write_text("slices:\n  - {name: pl_a, xid: 1, rspec: {net_share: 2}}\n")
    config = Config(state_file=str(tmp_path / "state.json"))
    assert [s.name for s in load_slices_file(str(slices), config).slices] == ["pl_a"]
    cache = Path(slices_cache_path(config))
    kept = json.loads(cache.read_text())
    assert kept["data"] == {"slices": [{"name": "pl_a", "xid": 1, "rspec": {"net_share": 2}}]}
    kept["data"]["slices"][0]["name"] = "pl_from_cache"  # proves the next load reads it
    cache.write_text(json.dumps(kept))
    assert [s.name for s in load_slices_file(str(slices), config).slices] == ["pl_from_cache"]
    slices.write_text("slices:\n  - {name: pl_b, xid: 2}\n")  # new bytes: parsed again
    assert [s.name for s in load_slices_file(str(slices), config).slices] == ["pl_b"]
    cache.write_text("{not json")  # a damaged cache is no more than a missed one
    assert [s.name for s in load_slices_file(str(slices), config).slices] == ["pl_b"]
    assert json.loads(cache.read_text())["data"]["slices"][0]["name"] == "pl_b"
    cache.unlink()
    slices.write_text("slices:\n  - {name: pl_c, xid: 3, rspec: {2021-01-01: 1}}\n")
    load_slices_file(str(slices), config)
    assert not cache.exists()  # a date key: JSON would not say what it was


def test_the_root_and_default_xids_are_refused_for_a_slice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "slices:\n"
        "  - {name: pl_root, xid: 0}\n"
        "  - {name: pl_dflt, xid: 4095}\n"
        "  - {name: pl_hex, xid: 0xfff}\n"
        "  - {name: pl_ok, xid: 1}\n"
    )
    with caplog.at_level(logging.ERROR):
        desired = load_slices_file(str(path), CFG)
    assert [s.xid for s in desired.slices] == [1]
    assert [e.split(": ", 2)[2] for e in desired.errors] == [
        "slice pl_root: xid 0 is the root class's, not a slice's (slice xids are 1..4094); skipped",
        "slice pl_dflt: xid 4095 is the default class's, not a slice's (slice xids are 1..4094);"
        " skipped",
        "slice pl_hex: xid 4095 is the default class's, not a slice's (slice xids are 1..4094);"
        " skipped",
    ]
    db = {
        "pl_a": {"name": "pl_a", "xid": 0, "_rspec": {}},
        "pl_b": {"name": "pl_b", "xid": 0xFFF, "_rspec": {}},
        "root": {"name": "root", "_rspec": {}},  # no xid: the account's uid, 0
    }
    from_db = from_nodemanager_db(db, CFG)
    assert from_db.slices == () and len(from_db.errors) == 3
    assert all("class's, not a slice's" in e and "\n" not in e for e in from_db.errors)


def test_a_name_with_a_line_break_is_refused_and_logged_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        'slices:\n  - {name: "pl_a\\n", xid: 10}\n  - {name: "pl_b\\r\\nFAKE line", xid: 11}\n'
    )
    with caplog.at_level(logging.ERROR):
        desired = load_slices_file(str(path), CFG)
    assert desired.slices == () and len(desired.errors) == 2
    assert "'pl_a\\n'" in desired.errors[0]
    assert "'pl_b\\r\\nFAKE line'" in desired.errors[1]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert not any("\n" in m or "\r" in m for m in messages + list(desired.errors))
    db = {"x": {"name": "pl_c\n", "xid": 12, "_rspec": {}}}
    errors = from_nodemanager_db(db, CFG).errors
    assert len(errors) == 1 and "'pl_c\\n'" in errors[0] and "\n" not in errors[0]


def test_an_unknown_key_in_a_slice_record_is_named_with_the_slice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "slices:\n  - {name: pl_a, xid: 10, rpsec: {net_max_rate: 5}}\n  - {name: pl_b, xid: 11}\n"
    )
    with caplog.at_level(logging.ERROR):
        desired = load_slices_file(str(path), CFG)
    assert [s.name for s in desired.slices] == ["pl_b"]
    assert desired.errors == (
        f"{path}: slices[0] (pl_a): slice pl_a: unknown key rpsec (keys: name, xid, rspec); skipped",
    )
    assert [r.getMessage() for r in caplog.records] == list(desired.errors)


def test_a_key_given_twice_in_the_slices_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("slices:\n  - name: pl_a\n    xid: 10\n    xid: 11\n")
    (line,) = load_slices_file(str(path), CFG).errors
    assert line.startswith(f"{path}: line 4: duplicate key 'xid'; ")


def test_rspec_values_have_an_upper_bound(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "slices:\n"
        "  - {name: pl_a, xid: 10, rspec: {net_max_kbyte: 1.0e+30}}\n"
        "  - {name: pl_b, xid: 11, rspec: {net_i2_max_rate: '1000000000000000000000'}}\n"
        "  - {name: pl_c, xid: 12, rspec: {net_share: 1000000000000}}\n"
        "  - {name: pl_d, xid: 13, rspec: {net_max_kbyte: 1125899906842624, net_share: 1000000}}\n"
    )
    desired = load_slices_file(str(path), CFG)
    assert [s.name for s in desired.slices] == ["pl_d"]
    assert desired.slices[0].default.limit_bytes == 2**60
    assert [e.split(": ", 2)[2] for e in desired.errors] == [
        "slice pl_a: net_max_kbyte: 1e+30 is above the maximum 1125899906842624; skipped",
        "slice pl_b: net_i2_max_rate: 1e+21 is above the maximum 10000000000; skipped",
        "slice pl_c: net_share: 1000000000000 is above the maximum 1000000; skipped",
    ]


def test_an_unknown_rspec_key_is_one_warning_naming_slice_and_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "slices:\n"
        "  - {name: pl_a, xid: 10, rspec: {net_max_rte: 5, net_max_rate: 7}}\n"
        "  - {name: pl_b, xid: 11, rspec: {net_share: 2}}\n"
    )
    config = Config(state_file=str(tmp_path / "state.json"))
    with caplog.at_level(logging.WARNING):
        desired = load_slices_file(str(path), config)
        load_slices_file(str(path), config)  # unchanged (from the cache): said once
    assert [s.name for s in desired.slices] == ["pl_a", "pl_b"] and not desired.errors
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: slices[0] (pl_a): slice pl_a: unknown rspec key net_max_rte ignored"
    ]
    caplog.clear()
    db = {"pl_a": {"name": "pl_a", "xid": 10, "_rspec": {"cpu_share": 5, "net_max_rate": 7}}}
    with caplog.at_level(logging.WARNING):
        assert [s.name for s in from_nodemanager_db(db, CFG).slices] == ["pl_a"]
    assert not caplog.records  # the node manager's rspec carries other resources


@pytest.mark.parametrize(
    "broken",
    [
        "slices:\n  - {name: pl_a, xid: 10, rspec: {net_max_kbyte: 100\n",  # a YAML error
        "",  # truncated to nothing
        "slices: [",
    ],
    ids=["yaml-error", "empty", "cut"],
)
def test_a_broken_slices_file_gives_its_last_good_list_and_one_error_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    path = tmp_path / "s.yaml"
    good = "slices:\n  - {name: pl_a, xid: 10, rspec: {net_max_kbyte: 100}}\n"
    path.write_text(good)
    config = Config(state_file=str(tmp_path / "state.json"))
    before = load_slices_file(str(path), config)
    path.write_text(broken)
    with caplog.at_level(logging.ERROR):
        first = load_slices_file(str(path), config)
        again = load_slices_file(str(path), config)  # the next cron run: not logged again
    assert first.slices == before.slices and again.slices == before.slices
    assert len(first.errors) == 1 and first.errors == again.errors
    assert first.errors[0].startswith(f"{path}: ")
    assert first.errors[0].endswith(
        "; enforcing the slices of its last good version until it is fixed"
    )
    assert [r.getMessage() for r in caplog.records] == list(first.errors)
    path.write_text(good.replace("100", "200"))  # fixed: the new list, no error
    fixed = load_slices_file(str(path), config)
    assert fixed.slices[0].default.limit_bytes == 200 * 1024 and not fixed.errors


def test_a_broken_slices_file_without_a_last_good_version_holds_every_slice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("slices: [")
    config = Config(state_file=str(tmp_path / "state.json"))
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            desired = load_slices_file(str(path), config)
            assert desired.unread and not desired.slices
    (line,) = desired.errors
    assert line.endswith(
        "; no last good version: every slice enforced keeps its limits until it is fixed"
    )
    assert [r.getMessage() for r in caplog.records] == [line]  # once per change


def test_the_last_good_version_is_kept_even_when_json_cannot_carry_it(tmp_path: Path) -> None:
    config = Config(state_file=str(tmp_path / "state.json"))
    path = tmp_path / "slices.yaml"
    path.write_text("slices:\n- {name: pl_a, xid: 1001, rspec: {net_max_kbyte: 102400}}\n")
    assert load_slices_file(str(path), config).slices[0].default.limit_bytes == 100 << 20
    # the next good version lowers pl_a and adds pl_c; one record has a date (skipped
    # with one error): JSON cannot carry the data, so the cache cannot be that version
    path.write_text(
        "slices:\n- {name: pl_a, xid: 1001, rspec: {net_max_kbyte: 1024}}\n"
        "- {name: pl_c, xid: 1003, rspec: {net_max_kbyte: 1024}}\n"
        "- {name: pl_typo, xid: 1004, rspec: {net_max_rate: 2024-01-01}}\n"
    )
    good = {s.name: s.default.limit_bytes for s in load_slices_file(str(path), config).slices}
    assert good == {"pl_a": 1 << 20, "pl_c": 1 << 20}
    path.write_text("slices:\n- {name: pl_a, xid: 1001, rspec: {net_max_kbyte: 1024}\n")
    after = load_slices_file(str(path), config)
    assert {s.name: s.default.limit_bytes for s in after.slices} == good
    assert not after.unread and "last good version" in after.errors[0]
    # kept beside the state, written by a new file renamed over it (mode 0600)
    kept = tmp_path / "state.json.slices-good"
    assert kept.stat().st_mode & 0o777 == 0o600 and b"pl_typo" in kept.read_bytes()
    # kept bytes cut short or altered are no version to enforce: every slice held
    kept.write_bytes(kept.read_bytes()[:-20])
    cache = tmp_path / "state.json.slices-cache"
    cache.unlink()
    assert load_slices_file(str(path), config).unread


def test_two_names_on_one_xid_are_one_error_naming_both_and_a_contested_claim(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("slices:\n  - {name: pl_new, xid: 10}\n  - {name: pl_old, xid: 10}\n")
    desired = load_slices_file(str(path), Config(state_file=str(tmp_path / "state.json")))
    assert [s.name for s in desired.slices] == ["pl_new"]
    assert [s.name for s in desired.contested] == ["pl_old"] and not desired.invalid
    assert desired.errors == (
        f"{path}: slices[1] (pl_old) and slices[0] (pl_new): slices pl_old and pl_new both"
        " claim xid 10; the one already enforced on it keeps it, the other is refused",
    )


PLC_SLICE_NAME = r"^[a-z0-9.]+_[a-zA-Z0-9_.]+$"  # what PLC accepts as a slice name


def test_plc_slice_names_are_accepted() -> None:
    names = ["upmc_TestSlice", "inria.fr_demo", "pl_a", "princeton_codeen.v2"]
    db = {n: {"name": n, "_rspec": {"net_max_rate": 900}} for n in names}
    uids = {n: 700 + i for i, n in enumerate(names)}.get
    desired = from_nodemanager_db(db, CFG, uid_of=uids)
    assert desired.errors == ()
    assert sorted(s.name for s in desired.slices) == sorted(names)


@given(
    name=st.one_of(
        st.from_regex(r"\A[a-z0-9.]{1,20}_[a-zA-Z0-9_.]{1,40}\Z"),
        st.text(alphabet="aZ0._/ -\n\x00é", min_size=1, max_size=12),
    )
)
def test_slice_names_follow_plcs_rule(name: str) -> None:
    import re

    db = {"x": {"name": name, "_rspec": {}}}
    desired = from_nodemanager_db(db, CFG, uid_of=lambda _: 700)
    plc_ok = re.fullmatch(PLC_SLICE_NAME.strip("^$"), name) is not None
    plain_ok = re.fullmatch(r"[a-z0-9_]{1,64}", name) is not None
    assert (desired.errors == ()) == (plc_ok or plain_ok), (name, desired.errors)


def test_a_5000_digit_number_skips_its_record_only(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    huge = "9" * 5000
    path.write_text(
        "slices:\n"
        f"  - {{name: pl_a, xid: 10, rspec: {{net_max_kbyte: {huge}}}}}\n"
        f"  - {{name: pl_b, xid: {huge}}}\n"
        "  - {name: pl_c, xid: 12}\n"
    )
    cfg = Config(state_file=str(tmp_path / "state.json"))
    desired = load_slices_file(str(path), cfg)
    assert [s.name for s in desired.slices] == ["pl_c"]
    assert [e.split(": ", 2)[2] for e in desired.errors] == [
        "slice pl_a: net_max_kbyte: <a number of 5000 digits> is not a number; skipped",
        "slice pl_b: xid <a number of 5000 digits> is not a whole number; skipped",
    ]
    assert load_slices_file(str(path), cfg).errors == desired.errors  # and once more (cache)


def test_a_nan_record_is_logged_once_per_change_of_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slices = tmp_path / "slices.yaml"
    slices.write_text(
        "slices:\n  - {name: pl_a, xid: 1, rspec: {net_max_rate: .nan}}\n  - {name: pl_b, xid: 2}\n"
    )
    config = Config(state_file=str(tmp_path / "state.json"))
    with caplog.at_level(logging.ERROR):
        for _cycle in range(3):  # three cron runs of sync
            desired = load_slices_file(str(slices), config)
            assert [s.name for s in desired.slices] == ["pl_b"]
            assert len(desired.errors) == 1 and "nan" in desired.errors[0]
    assert len([r for r in caplog.records if "pl_a" in r.getMessage()]) == 1
    slices.write_text(slices.read_text() + "  - {name: pl_c, xid: 3}\n")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        load_slices_file(str(slices), config)
    assert len([r for r in caplog.records if "pl_a" in r.getMessage()]) == 1  # changed: again


def test_notices_come_from_the_defaults_or_the_rspec_in_canonical_text() -> None:
    cfg = Config(
        node_cap_bps=10_000_000,
        bwmax_bps=100_000_000,
        defaults={
            "default": ClassDefaults(limit_bytes=10**9, notices="50%,lifted"),
            "exempt": ClassDefaults(limit_bytes=10**9),
        },
    )
    default, exempt, origin = resolve_policy("pl_a", {}, cfg)
    assert (
        exempt.notices == ""
        and default.notices == "50%,lifted"
        and origin["net_notices"] == "defaults"
    )
    with pytest.raises(SliceError, match="net_i2_notices: notice 2: shares must rise"):
        resolve_policy("pl_a", {"net_i2_notices": "80%, 12.5%"}, cfg)
    _, exempt, origin = resolve_policy("pl_a", {"net_i2_notices": "12.5%, 80%, lifted"}, cfg)
    assert exempt.notices == "12.5%,80%,lifted" and origin["net_i2_notices"] == "rspec"
    with pytest.raises(SliceError, match="slice pl_a: net_notices: notice 1: 'soon' is not"):
        resolve_policy("pl_a", {"net_notices": "soon"}, cfg)


def test_a_rollover_comes_from_the_defaults_or_the_rspec_as_a_bound_in_bytes() -> None:
    cfg = Config(
        node_cap_bps=10_000_000,
        bwmax_bps=100_000_000,
        defaults={
            "default": ClassDefaults(limit_bytes=10**9, rollover="10%"),
            "exempt": ClassDefaults(limit_bytes=10**9),
        },
    )
    default, exempt, origin = resolve_policy("pl_a", {}, cfg)
    assert (default.rollover_bytes, exempt.rollover_bytes) == (10**8, 0)
    assert origin["net_rollover"] == "defaults"
    # a share is of the slice's own limit (net_max_kbyte), a size is bytes
    default, exempt, origin = resolve_policy(
        "pl_a", {"net_max_kbyte": 1000, "net_i2_rollover": "1MiB"}, cfg
    )
    assert (default.rollover_bytes, exempt.rollover_bytes) == (102_400, 2**20)
    assert origin["net_i2_rollover"] == "rspec"
    default, _, _ = resolve_policy("pl_a", {"net_rollover": 0}, cfg)  # off, whatever the default
    assert default.rollover_bytes == 0


@pytest.mark.parametrize(
    ("rspec", "problem"),
    [
        ({"net_rollover": "150%"}, "slice pl_a: net_rollover: '150%' is not a share of the limit"),
        ({"net_i2_rollover": "soon"}, "slice pl_a: net_i2_rollover: 'soon' is not a size"),
        ({"net_rollover": -5}, "slice pl_a: net_rollover: -5 is not a size"),
        ({"net_rollover": True}, "slice pl_a: net_rollover: True is not a size or share"),
        ({"net_rollover": 1.5}, "slice pl_a: net_rollover: 1.5 is not a size or share"),
        (
            {"net_window": "30d", "net_rollover": 0, "net_i2_rollover": "1GiB"},
            "slice pl_a: net_i2_rollover: a rolling window has no period end to roll over",
        ),
        (  # the default's rollover and the slice's window: the window is named
            {"net_window": "30d"},
            "slice pl_a: net_window: a rolling window has no period end to roll over",
        ),
    ],
)
def test_a_bad_rollover_attribute_is_one_line_naming_it(
    rspec: dict[str, object], problem: str
) -> None:
    cfg = Config(
        node_cap_bps=10_000_000,
        bwmax_bps=100_000_000,
        defaults={
            "default": ClassDefaults(limit_bytes=10**9, rollover="10%"),
            "exempt": ClassDefaults(limit_bytes=10**9),
        },
    )
    with pytest.raises(SliceError) as err:
        resolve_policy("pl_a", rspec, cfg)
    assert str(err.value).startswith(problem) and "\n" not in str(err.value)

"""Config loading: every key, defaults, and one-line errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bwenforcer.config import Config, load_config, parse_config
from bwenforcer.errors import ConfigError

ETC = Path(__file__).resolve().parent.parent / "etc"


def test_example_file_loads_and_equals_the_defaults() -> None:
    loaded = load_config(str(ETC / "bwenforcer.yaml"))
    assert {**loaded.__dict__, "source": None} == {**Config().__dict__, "source": None}


def test_every_key() -> None:
    cfg = parse_config(
        {
            "device": "eth1",
            "node_cap": "100mbit",
            "bwmax": "1gbit",
            "bwmin": "16kbit",
            "period": "12h",
            "period_anchor": {
                "every": "week",
                "on": "sunday",
                "at": "06:30",
                "tz": "Europe/Berlin",
            },
            "interval": "1m",
            "state_file": "/tmp/s.json",
            "slices_file": None,
            "lock_timeout": "5s",
            "defaults": {
                "default": {
                    "limit": "1GiB",
                    "threshold": "500MB",
                    "min_rate": "1mbit",
                    "max_rate": "50mbit",
                    "share": 3,
                },
                "exempt": {"limit": "2GB"},
            },
            "mail": {
                "transport": "smtp",
                "from": "a@b.c",
                "operators": ["ops@b.c"],
                "slice_address": "{slice}@s.b.c",
                "smtp": {"host": "mx", "port": 2525, "starttls": True, "timeout": "3s"},
            },
            "metrics": {"listen": "0.0.0.0:9100", "textfile": "/tmp/x.prom"},
            "classifier": {"mode": "uid", "exempt_prefixes": ["10.1.2.3/16", "2001:db8::1/32"]},
            "history": {"hourly_keep": "2d"},
            "dry_run": True,
        },
        "t.yaml",
    )
    assert (cfg.device, cfg.node_cap_bps, cfg.bwmax_bps, cfg.bwmin_bps) == (
        "eth1",
        10**8,
        10**9,
        16000,
    )
    assert cfg.period_s == 43200 and cfg.interval_s == 60 and cfg.lock_timeout_s == 5
    assert (
        cfg.period_anchor is not None
        and cfg.period_anchor.weekday == 6
        and cfg.period_anchor.at_s == 23400
    )
    assert cfg.slices_file is None
    d = cfg.defaults["default"]
    assert (d.limit_bytes, d.threshold_bytes, d.min_rate_bps, d.max_rate_bps, d.share) == (
        2**30,
        5 * 10**8,
        10**6,
        5 * 10**7,
        3,
    )
    assert cfg.defaults["exempt"].limit_bytes == 2 * 10**9
    assert cfg.mail.smtp_port == 2525 and cfg.mail.smtp_starttls and cfg.mail.smtp_timeout_s == 3
    assert cfg.classifier.exempt_prefixes == ("10.1.0.0/16", "2001:db8::/32")
    assert cfg.history.hourly_keep_s == 2 * 86400 and cfg.dry_run


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"defaults": {"exempt": {"limit": "12 parsecs"}}},
            "t.yaml: defaults.exempt.limit: '12 parsecs' is not a size",
        ),
        ({"node_cap": "fast"}, "t.yaml: node_cap: 'fast' is not a rate"),
        ({"colour": "blue"}, "t.yaml: colour: unknown key"),
        ({"mail": {"smtp": {"prot": 25}}}, "t.yaml: mail.smtp.prot: unknown key"),
        (
            {"node_cap": "2gbit", "bwmax": "1gbit"},
            "t.yaml: node_cap: node_cap 2000000000 bit/s is above bwmax",
        ),
        ({"period": "0s"}, "t.yaml: period: must be above 0"),
        (
            {"defaults": {"default": {"limit": "1MB", "threshold": "2MB"}}},
            "t.yaml: defaults.default: threshold",
        ),
        (
            {"classifier": {"exempt_prefixes": ["10.0.0.300/8"]}},
            "'10.0.0.300/8' is not an IPv4 or IPv6 prefix",
        ),
        ({"classifier": {"mode": "gid"}}, "t.yaml: classifier.mode: 'gid' is not one of none, uid"),
        (
            {"period_anchor": {"every": "day", "tz": "Mars/Olympus"}},
            "period_anchor.tz: 'Mars/Olympus' is not a known time zone",
        ),
        (
            {"period_anchor": {"every": "month", "on": 31}},
            "period_anchor.on: 31 is not a whole number 1..28",
        ),
        (
            {"period_anchor": {"every": "day", "at": "25:00"}},
            "period_anchor.at: '25:00' is not a time of day",
        ),
        (
            {"mail": {"slice_address": "x@y"}},
            "mail.slice_address: 'x@y' has no {slice} placeholder",
        ),
        ({"metrics": {"listen": "nohost"}}, "metrics.listen: 'nohost' is not host:port"),
        ({"dry_run": "yes"}, "dry_run: 'yes' is not true or false"),
        (
            {"defaults": {"default": {"share": 0}}},
            "defaults.default.share: 0 is not a whole number",
        ),
        (["not", "a", "mapping"], "t.yaml: (top level): expected a mapping"),
    ],
)
def test_errors_name_the_key_path(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_files_env_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("device: veth9\n")
    monkeypatch.setenv("BWENFORCER_CONFIG", str(cfg))
    assert load_config(None).device == "veth9"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(str(bad))


def test_exempt_prefixes_file(tmp_path: Path) -> None:
    prefixes = tmp_path / "p.txt"
    prefixes.write_text("# research nets\n198.19.0.0/16\n\n2001:db8::/48  # v6\n")
    cfg = parse_config({"classifier": {"exempt_prefixes_file": str(prefixes)}}, "t.yaml")
    assert cfg.classifier.exempt_prefixes == ("198.19.0.0/16", "2001:db8::/48")
    prefixes.write_text("198.19.0.0/16\nnonsense\n")
    with pytest.raises(ConfigError, match=r"p.txt:2: 'nonsense' is not an IPv4 or IPv6 prefix"):
        parse_config({"classifier": {"exempt_prefixes_file": str(prefixes)}}, "t.yaml")

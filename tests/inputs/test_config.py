"""Config loading: every key, defaults, and one-line errors naming the key path."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from bwenforcer.core.model import DesiredSlice
from bwenforcer.core.settings import Config
from bwenforcer.errors import ConfigError
from bwenforcer.inputs.config import load_config, parse_config
from bwenforcer.inputs.slices import load_slices_file
from bwenforcer.inputs.yamltext import parse_yaml

ETC = Path(__file__).resolve().parents[2] / "etc"


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
                    "tiers": "75%:50mbit, 100%:2Mbit",
                    "taper": "50%-75%:60000kbit",
                },
                "exempt": {"limit": "2GB", "tiers": None, "taper": "1%-2%:1mbit", "pacing": False},
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
    assert (d.tiers, d.taper) == ("75%:50mbit,100%:2mbit", "50%-75%:60mbit")  # canonical
    assert cfg.defaults["exempt"].limit_bytes == 2 * 10**9
    e = cfg.defaults["exempt"]
    assert (e.tiers, e.taper, e.pacing, d.pacing) == ("", "1%-2%:1mbit", False, True)
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
        (
            {"defaults": {"default": {"tiers": "75%:50mbit,90%:60mbit"}}},
            "t.yaml: defaults.default.tiers: tier 2: a ceil above the tier before it",
        ),
        (
            {"defaults": {"exempt": {"taper": "75%:2mbit"}}},
            "t.yaml: defaults.exempt.taper: taper: '75%:2mbit' is not FROM-TO:CEIL",
        ),
        ({"defaults": {"default": {"tiers": 75}}}, "defaults.default.tiers: 75 is not a"),
        (
            {"defaults": {"exempt": {"pacing": False}}},
            "t.yaml: defaults.exempt.pacing: false needs tiers or a taper (else nothing caps)",
        ),
        ({"defaults": {"window": "30 parsecs"}}, "t.yaml: defaults.window: '30 parsecs' is not"),
        ({"defaults": {"window": "10m"}}, "t.yaml: defaults.window: a window must be from 1 hour"),
        ({"defaults": {"window": "400d"}}, "t.yaml: defaults.window: a window must be from"),
        ({"defaults": {"window": True}}, "t.yaml: defaults.window: True is not a duration"),
        (
            {"defaults": {"window": "30d"}, "period_anchor": {"every": "month"}},
            "t.yaml: defaults.window: a rolling window has no calendar period",
        ),
        (
            {"defaults": {"default": {"rollover": "101%"}}},
            "t.yaml: defaults.default.rollover: '101%' is not a share of the limit from 0% to 100%",
        ),
        (
            {"defaults": {"exempt": {"rollover": "lots"}}},
            "t.yaml: defaults.exempt.rollover: 'lots' is not a size",
        ),
        ({"defaults": {"default": {"rollover": -1}}}, "t.yaml: defaults.default.rollover: -1 is"),
        (
            {"defaults": {"window": "30d", "exempt": {"rollover": "10%"}}},
            "t.yaml: defaults.exempt.rollover: a rolling window has no period end to roll over",
        ),
        (
            {"defaults": {"exempt": {"notices": "80%, 50%"}}},
            "t.yaml: defaults.exempt.notices: notice 2: shares must rise (50%)",
        ),
        (
            {"defaults": {"default": {"notices": "0%"}}},
            "t.yaml: defaults.default.notices: notice 1: '0%' is not above 0% and at most 1000%",
        ),
        (  # a tier above the max rate caps nothing: refused like no tier at all
            {"defaults": {"default": {"tiers": "75%:2gbit", "max_rate": "1gbit", "pacing": False}}},
            "t.yaml: defaults.default.pacing: false needs a tier or taper below the max rate 1gbit",
        ),
        (  # the max rate unset is the class cap: the node cap here
            {
                "node_cap": "10mbit",
                "defaults": {"default": {"taper": "1%-2%:10mbit", "pacing": False}},
            },
            "t.yaml: defaults.default.pacing: false needs a tier or taper below the max rate 10mbit",
        ),
        (
            {
                "cgroups": {
                    "tenants": [
                        {
                            "match": "*.scope",
                            "defaults": {"exempt": {"tiers": "9%:20gbit", "pacing": False}},
                        }
                    ]
                }
            },
            "t.yaml: cgroups.tenants[0].defaults.exempt.pacing: false needs a tier or taper below",
        ),
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


REPO = ETC.parent
_TOP_KEYS = frozenset(yaml.safe_load((ETC / "bwenforcer.yaml").read_text()))
_YAML_KEY = re.compile(r"[a-z_]+:(?:\s|$)")
_INLINE = re.compile(r"`([a-z_]+(?:\.[a-z_]+)*): ([^`]+)`")


def _blocks(lines: list[str], prefix: re.Pattern[str]) -> list[tuple[int, str]]:
    """(first line number, text) of each run of lines matching ``prefix``, prefix removed."""
    found: list[tuple[int, str]] = []
    run: list[str] = []
    start = 0
    for number, line in enumerate([*lines, ""], 1):
        match = prefix.match(line)
        if match:
            if not run:
                start = number
            run.append(line[match.end() :])
        elif run:
            found.append((start, "\n".join(run) + "\n"))
            run = []
    return found


def yaml_snippets() -> list[tuple[str, str]]:
    """Every YAML config example in the README and etc/: (where, YAML text).

    README: indented or ```yaml fenced blocks that start with a config key, and
    inline spans such as `classifier.mode: uid` (a dotted key path: nested
    mappings). etc/*.yaml: each whole file, and each commented-out example
    (``#`` then three spaces, then a key, with the indented lines below it).
    """
    found: list[tuple[str, str]] = []
    readme = (REPO / "README.md").read_text()
    fenced = re.finditer(r"^```ya?ml\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    found += [(f"README.md fenced block {n}", m.group(1)) for n, m in enumerate(fenced)]
    for start, text in _blocks(readme.splitlines(), re.compile(r"    (?=\S)|(?=$)")):
        stripped = text.strip()
        if stripped and _YAML_KEY.match(stripped) and stripped.split(":")[0] in _TOP_KEYS:
            found.append((f"README.md:{start}", text))
    for match in _INLINE.finditer(readme):
        path, value = match.group(1).split("."), match.group(2)
        if path[0] in _TOP_KEYS:
            text = "".join(f"{'  ' * depth}{key}:\n" for depth, key in enumerate(path))
            found.append((f"README.md `{match.group(0)}`", f"{text[:-1]} {value}\n"))
    for path in sorted(ETC.glob("*.yaml")):
        lines = path.read_text().splitlines()
        found.append((f"etc/{path.name}", "\n".join(lines) + "\n"))
        # a run of commented lines is a list of alternatives, one per top-level key
        commented = re.compile(r"#   ")
        for start, text in _blocks(lines, commented):
            for offset, line in enumerate(text.splitlines()):
                if _YAML_KEY.match(line):
                    found.append((f"etc/{path.name}:{start + offset}", line + "\n"))
                elif line.startswith(" ") and found:  # a nested line of the key above
                    found[-1] = (found[-1][0], f"{found[-1][1]}{line}\n")
    return found


def test_the_snippets_are_found() -> None:
    texts = [text for _where, text in yaml_snippets()]
    assert any("on: monday" in t for t in texts)
    assert any(t.startswith("classifier:\n  mode: uid") for t in texts)
    assert sum(where.startswith("README.md:") for where, _ in yaml_snippets()) >= 1


def test_the_notices_examples_load_as_they_say() -> None:
    """README's and etc/'s early-notice examples are among the snippets loaded above, and
    mean what their comments say.
    """
    found = [(w, t) for w, t in yaml_snippets() if "notices:" in t and "null" not in t]
    assert {w.split(" ")[0].split(":")[0] for w, _ in found} >= {"README.md", "etc/slices.yaml"}
    readme = next(t for w, t in found if w.startswith("README.md"))
    cfg = parse_config(parse_yaml(readme.encode(), "README"), "README")
    assert cfg.defaults["default"].notices == "50%,80%,100%,lifted"
    assert cfg.defaults["exempt"].notices == "90%"
    slices = next(t for w, t in found if w.startswith("etc/slices.yaml"))
    (want,) = [s for s in _slices_of(slices) if s.name == "pl_example"]
    assert want.default.notices == "50%,90%,lifted" and want.exempt.notices == ""
    assert "notices: null" in (ETC / "bwenforcer.yaml").read_text()  # the key, documented


def test_the_rollover_examples_load_as_they_say() -> None:
    """README's and etc/'s rollover examples are among the snippets loaded above, and mean
    what their comments say.
    """
    found = [(w, t) for w, t in yaml_snippets() if "rollover:" in t]
    readme = next(t for w, t in found if w.startswith("README.md"))
    cfg = parse_config(parse_yaml(readme.encode(), "README"), "README")
    assert (cfg.defaults["default"].rollover, cfg.defaults["exempt"].rollover) == (
        "25%",
        "1073741824",
    )
    slices = next(t for w, t in found if w.startswith("etc/slices.yaml"))
    (want,) = [s for s in _slices_of(slices) if s.name == "pl_example"]
    assert want.default.rollover_bytes == 2**30 // 10 and want.exempt.rollover_bytes == 0
    etc = parse_config(parse_yaml((ETC / "bwenforcer.yaml").read_bytes(), "etc"), "etc")
    assert all(etc.defaults[tc].rollover == "" for tc in ("default", "exempt"))  # off by default


def _slices_of(text: str) -> tuple[DesiredSlice, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slices.yaml"
        path.write_text(text)
        return load_slices_file(str(path), Config(state_file=f"{tmp}/state.json")).slices


@pytest.mark.parametrize(("where", "text"), yaml_snippets(), ids=lambda v: str(v)[:40])
def test_every_documented_snippet_loads(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "snippet.yaml"
    path.write_text(text)
    data = parse_yaml(text.encode(), where)
    assert isinstance(data, dict), where
    if "slices" in data:
        desired = load_slices_file(str(path), Config(state_file=str(tmp_path / "state.json")))
        assert desired.slices and not desired.errors, where
    else:
        cfg = load_config(str(path))
        assert cfg.source == str(path)


def test_on_monday_as_documented() -> None:
    text = b"period_anchor: {every: week, on: monday, at: 06:30, tz: Europe/Berlin}\n"
    cfg = parse_config(parse_yaml(text, "t.yaml"), "t.yaml")
    assert cfg.period_anchor is not None
    assert (cfg.period_anchor.weekday, cfg.period_anchor.at_s) == (0, 6 * 3600 + 30 * 60)


def test_only_true_and_false_are_booleans(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dry_run: true\nmail: {smtp: {starttls: True}}\n")
    cfg = load_config(str(path))
    assert cfg.dry_run and cfg.mail.smtp_starttls
    path.write_text("dry_run: yes\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: dry_run: 'yes' is not true or false"


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("device: eth0\nnode_cap: 10mbit\ndevice: eth1\n", 3, "'device'"),
        ("mail:\n  smtp: {host: a, port: 25, host: b}\n", 2, "'host'"),
        ("period_anchor: {every: week, on: monday, on: friday}\n", 1, "'on'"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: line {line}: duplicate key {key}"


def test_a_merge_key_may_be_overridden() -> None:
    text = b"x: &base {limit: 1GiB, share: 2}\ndefaults:\n  default: {<<: *base, share: 3}\n"
    data = parse_yaml(text, "t.yaml")
    assert data == {
        "x": {"limit": "1GiB", "share": 2},
        "defaults": {"default": {"limit": "1GiB", "share": 3}},
    }


def test_keys_that_are_not_strings_give_one_line() -> None:
    data = parse_yaml(b"device: eth0\ncolour: x\n1: y\n", "t.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml: 1: unknown key$"):
        parse_config(data, "t.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node_cap: 1.0e+30\n", "node_cap: 1e+30 is above the maximum 10tbit"),
        ("bwmax: 1000000000000000000000000000000\n", "bwmax: 1000000000000000000000000000000 is"),
        ("defaults: {default: {limit: 1.0e+30}}\n", "defaults.default.limit: 1e+30 is above"),
        ("defaults: {exempt: {max_rate: 20tbit}}\n", "defaults.exempt.max_rate: '20tbit' is above"),
        ("period: 100000000d\n", "period: '100000000d' is above the maximum"),
        ("period: 367d\n", "period: '367d' is above the maximum 366d"),
        ("interval: 2d\n", "interval: '2d' is above the maximum 1d"),
        ("interval: 1.0e+30\n", "interval: 1e+30 is above the maximum 36525d"),
        ("lock_timeout: 8d\n", "lock_timeout: '8d' is above the maximum 1d"),
        ("mail: {smtp: {timeout: 2h}}\n", "mail.smtp.timeout: '2h' is above the maximum 1h"),
        ("history: {monthly_keep: 40000d}\n", "history.monthly_keep: '40000d' is above"),
        ("node_cap: 4kbit\n", "node_cap: node_cap 4000 bit/s is below bwmin 8000 bit/s"),
        ("mail: {slice_address: '{node}@x.org'}\n", "unknown placeholder {node} (only {slice})"),
        ("mail: {slice_address: '{slice}@{host}'}\n", "unknown placeholder {host}"),
        ("mail: {slice_address: '{slice'}\n", "mail.slice_address: '{slice' is not a template"),
    ],
)
def test_values_out_of_bounds_give_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("period: 100000000d\n", ["show", "pl_x"]),
        ("period: 100000000d\n", ["status"]),
        ("interval: 1000000000000d\n", ["daemon"]),
        ("node_cap: 1.0e+30\nbwmax: 1.0e+30\n", ["sync", "--dry-run"]),
        ("period_anchor: {every: week, on: monday}\nperiod_anchor: null\n", ["status"]),
        ("mail: {slice_address: '{slice}@{node}.org'}\n", ["sync", "--dry-run"]),
        ("lock_timeout: " + "9" * 5000 + "\n", ["sync"]),
        ("history: {hourly_keep: " + "9" * 5000 + "}\n", ["status"]),
    ],
)
def test_the_command_line_reports_a_bad_config_in_one_line(
    tmp_path: Path, text: str, args: list[str]
) -> None:
    path = tmp_path / "c.yaml"
    # a device that exists nowhere: should the config pass, nothing real is touched
    path.write_text(
        f"device: bwetnodev0\nstate_file: {tmp_path}/state.json\nslices_file: null\n{text}"
    )
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "bwenforcer"), "--config", str(path), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"bwenforcer: {path}: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_mail_template_with_an_unknown_placeholder_is_refused_at_load(tmp_path: Path) -> None:
    template = tmp_path / "notice.txt"
    template.write_text("Slice $slice on $node is capped.\n")
    path = tmp_path / "c.yaml"
    path.write_text(f"mail: {{template: {template}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: mail.template: {template}: unknown placeholder $node"
    template.write_text("Slice $slice on $hostname is capped.\n")
    assert load_config(str(path)).mail.template == str(template)


LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [lol]\n"
    for i in range(10)
)


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("config", f"x_laughs: {{{LAUGHS.strip().replace(chr(10), ', ')}}}\n", "aliases expanding"),
        ("slices", f"slices: []\n{LAUGHS}", "aliases expanding"),
        ("slices", "slices: []\n" + "#" * (65 * 2**20) + "\n", "larger than 64 MiB"),
    ],
)
def test_an_input_file_is_bounded_in_bytes_and_in_expanded_values(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    # nested aliases: ten lines that stand for 10**10 values once expanded
    cfg = tmp_path / "c.yaml"
    slices = tmp_path / "slices.yaml"
    base = f"device: bwetnodev0\nstate_file: {tmp_path}/state.json\nslices_file: {slices}\n"
    if name == "config":
        cfg.write_text(base + text)
        slices.write_text("slices: []\n")
    else:
        cfg.write_text(base)
        slices.write_text(text)
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "bwenforcer"), "--config", str(cfg), "sync", "--dry-run"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    if name == "config":
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        return
    # a slices file with no last good version: one error line, the state's slices
    # held, and the cycle goes on (here to the missing device: exit 4)
    assert proc.returncode == 4, proc.stderr
    assert len(lines) == 2 and needle in lines[0] and "no last good version" in lines[0]


def test_vanish_grace_defaults_to_two_intervals_or_ten_minutes() -> None:
    assert parse_config({}, "c.yaml").grace_s == 600
    assert parse_config({"interval": "15m"}, "c.yaml").grace_s == 1800
    assert parse_config({"vanish_grace": None}, "c.yaml").grace_s == 600
    assert parse_config({"vanish_grace": "0s"}, "c.yaml").grace_s == 0
    assert parse_config({"vanish_grace": "1h"}, "c.yaml").grace_s == 3600
    with pytest.raises(ConfigError, match="vanish_grace"):
        parse_config({"vanish_grace": "soon"}, "c.yaml")


def test_a_default_rolling_window() -> None:
    assert parse_config({}, "t.yaml").window_s == 0
    assert parse_config({"defaults": {"window": "30d"}}, "t.yaml").window_s == 30 * 86400
    for none in (None, 0, "none"):
        assert parse_config({"defaults": {"window": none}}, "t.yaml").window_s == 0
    # a period of its own is still the period of slices that say net_window: 0
    cfg = parse_config({"defaults": {"window": "12h"}, "period": "1d"}, "t.yaml")
    assert (cfg.window_s, cfg.period_s) == (12 * 3600, 86400)


def _readme_config(marker: str) -> Config:
    """The config of the one README example that contains ``marker``."""
    (text,) = [t for w, t in yaml_snippets() if w.startswith("README.md") and marker in t]
    return parse_config(parse_yaml(text.encode(), "README.md"), "README.md")


def test_the_readme_examples_of_tiers_and_of_a_rolling_window() -> None:
    from bwenforcer.core.policy import rate_rule, rule_ceil
    from bwenforcer.inputs.slices import resolve_policy

    tiered = _readme_config("90%:10mbit")
    d = tiered.defaults["default"]
    assert (d.tiers, d.taper) == ("75%:50mbit,90%:10mbit", "50%-75%:80mbit")
    assert tiered.defaults["exempt"].pacing is False and tiered.window_s == 0

    windowed = _readme_config("window: 30d")
    assert windowed.window_s == 30 * 86400
    default, exempt, _ = resolve_policy("pl_a", {}, windowed)
    assert default.window_s == exempt.window_s == 30 * 86400
    assert default.limit_bytes == 100 * 2**30 and exempt.limit_bytes == 300 * 2**30
    rule = rate_rule(default, windowed.node_cap_bps, windowed.bwmin_bps)
    # as the comments say: past 75 GiB at most 50 Mbit/s, past 100 GiB 2 Mbit/s, pacing off
    assert rule_ceil(rule, 76 * 2**30, 0, 1)[1:] == (50_000_000, "tier 75%")
    assert rule_ceil(rule, 101 * 2**30, 0, 1)[1:] == (2_000_000, "tier 100%")
    assert rule_ceil(rule, 74 * 2**30, 0, 1)[2] == ""

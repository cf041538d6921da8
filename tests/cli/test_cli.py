"""The command line itself: global options anywhere, help everywhere, one error line,
the journal's log format under systemd."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwenforcer.cli import JournalFormatter, build_parser, main
from bwenforcer.commands.inspect import NOW_ENV
from bwenforcer.store.state import StateStore
from tests.cli.test_cli_inspect import write_config
from tests.kernel_helpers import VENV_BIN
from tests.views.test_inspection import NOW, fixed_state

BAD_CONFIG = "device: v0\nnode_cap: 12 parsecs\n"


def parsers(
    parser: argparse.ArgumentParser, path: str = "bwenforcer"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def verb_paths() -> list[str]:
    """Every leaf verb, e.g. ``tc get`` or ``sync``."""
    out = []
    for path, parser in parsers(build_parser()):
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            out.append(path.removeprefix("bwenforcer").strip())
    return out


def test_every_option_and_verb_has_help() -> None:
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                # an alias (bwlimit's "add" for "on") shares its verb's parser and help
                helped = {id(action.choices[a.dest]) for a in action._choices_actions if a.help}
                missing += [f"{path} {v}" for v, p in action.choices.items() if id(p) not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("verb", verb_paths())
def test_global_options_are_accepted_after_every_verb(verb: str) -> None:
    parser = build_parser()
    needs_slice = (
        "show",
        "reset",
        "explain",
        "tc on",
        "tc add",
        "tc replace",
        "tc set",
        "tc off",
        "tc del",
    )
    argv = [*verb.split(), *(["x"] if verb in needs_slice else [])]
    argv = [*argv, *(["p"] if verb == "state import-legacy" else [])]
    argv = [*argv, *(["x", "1GB"] if verb == "grant" else [])]
    args = parser.parse_args([*argv, "--config", "after.yaml", "--log-level", "debug", "-q"])
    assert (args.config, args.log_level, args.quiet) == ("after.yaml", "DEBUG", True)
    # given before the verb and not after it: the verb's parser keeps it
    args = parser.parse_args(["--config", "before.yaml", "-q", *argv])
    assert (args.config, args.log_level, args.quiet) == ("before.yaml", "WARNING", True)


@pytest.mark.parametrize("argv", [["sync"], ["tc", "get"], ["status"], ["state", "show"]])
def test_config_after_the_verb_is_the_one_read(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD_CONFIG)
    assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "12 parsecs" in err and str(cfg) in err, err


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed ``bwenforcer`` as a process."""
    return subprocess.run(
        [str(VENV_BIN / "bwenforcer"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "argv", [["sync", "--bogus"], ["tc", "on"], ["state", "import-legacy"], ["nosuchverb"]]
)
def test_a_usage_error_is_one_line_with_one_prefix(argv: list[str]) -> None:
    done = cli(*argv)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bwenforcer: ") and lines[0].endswith("(see --help)")
    assert lines[0].count("bwenforcer") == 1, lines[0]


def test_a_config_error_is_printed_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BAD_CONFIG)
    done = cli("sync", "--config", str(cfg), "--log-level", "debug")
    assert done.returncode == 2
    hits = [line for line in done.stderr.splitlines() if "12 parsecs" in line]
    assert len(hits) == 1 and hits[0].startswith("bwenforcer: "), done.stderr


# --- logging under systemd -----------------------------------------------------------

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
SLICES_WITH_A_BAD_ONE = """slices:
  - {name: pl_good, xid: 10, rspec: {}}
  - {name: pl_bad, xid: 11, rspec: {net_max_rate: lots}}
"""


def warning_config(tmp: Path) -> Path:
    """A config whose slices file has a bad slice: an ERROR log line, then the cycle fails
    on the missing device (exit line)."""
    (tmp / "slices.yaml").write_text(SLICES_WITH_A_BAD_ONE)
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: bwetnodev0\nstate_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "metrics: {listen: null}\n"
    )
    return cfg


def run_with_stderr_file(tmp: Path, journal: str | None) -> list[str]:
    """Run a failing dry-run sync with stderr to a file; ``journal``: "match" sets
    $JOURNAL_STREAM to that file's device:inode, "other" to another file's."""
    cfg = warning_config(tmp)
    err_path = tmp / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        if journal == "match":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal == "other":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
        done = subprocess.run(
            [str(VENV_BIN / "bwenforcer"), "sync", "--dry-run", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 4
    return err_path.read_text().splitlines()


def test_under_the_journal_lines_carry_syslog_priorities_and_no_timestamp(
    tmp_path: Path,
) -> None:
    lines = run_with_stderr_file(tmp_path, "match")
    assert len(lines) == 2, lines
    bad, exit_line = lines
    assert bad.startswith("<3>bwenforcer.inputs.slices: ") and "pl_bad" in bad  # an ERROR record
    assert exit_line.startswith("<3>bwenforcer: ") and "bwetnodev0" in exit_line
    assert not any(TIMESTAMP.search(line) for line in lines)


@pytest.mark.parametrize("journal", [None, "other"])
def test_without_the_journal_lines_are_timestamped(tmp_path: Path, journal: str | None) -> None:
    lines = run_with_stderr_file(tmp_path, journal)
    assert len(lines) == 2, lines
    assert TIMESTAMP.match(lines[0]) and " ERROR bwenforcer.inputs.slices: " in lines[0]
    assert lines[1].startswith("bwenforcer: ")


def test_a_warning_is_priority_4_on_every_line_of_its_record() -> None:
    record = logging.LogRecord("bwenforcer.x", logging.WARNING, __file__, 1, "a\nb", None, None)
    text = JournalFormatter("%(name)s: %(message)s").format(record)
    assert text.splitlines() == ["<4>bwenforcer.x: a", "<4>b"]


def test_a_latin1_stdout_gets_escapes_not_a_traceback(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "bwtest-none0")
    StateStore(str(tmp_path / "state.json")).save(fixed_state(), NOW - 125)
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", NOW_ENV: str(NOW)}
    done = subprocess.run(
        [str(VENV_BIN / "bwenforcer"), "--config", str(cfg), "show", "pl_heavy"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"\\u2192" in done.stdout  # the period's arrow, escaped


@pytest.mark.parametrize(
    "argv",
    [
        ["tc", "get", "--dev", "bwtnodev0", "9" * 5000],
        ["tc", "off", "--dev", "bwtnodev0", "9" * 5000],
        ["show", "9" * 5000],
        ["report", "--since", "9" * 5000 + "s"],
    ],
)
def test_a_5000_digit_argument_is_one_short_line(tmp_path: Path, argv: list[str]) -> None:
    cfg = write_config(tmp_path, "bwtnodev0")
    done = cli("--config", str(cfg), *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 250, done.stderr[:300]

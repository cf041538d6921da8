"""``bwenforcer state check | show [--json] | import-legacy PATH [--force]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from bwenforcer.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from bwenforcer.store.state import LoadResult

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``state`` verb and its sub-verbs."""
    parser = sub.add_parser(
        "state",
        help="check, show or import the state file",
        description="Inspect the state file, or import a legacy PlanetLab bwmon pickle.",
    )
    verbs = parser.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)
    check = verbs.add_parser(
        "check",
        help="validate the state file and its backup (exit 5 if unusable)",
        description="Validate the state file and its backup without taking the lock."
        " Exit 0 if fine, 5 with one line per problem otherwise.",
    )
    check.set_defaults(func=run_check)
    show = verbs.add_parser(
        "show",
        help="print the saved state",
        description="Print the saved state (read without the lock; never waits for a cycle).",
    )
    show.add_argument(
        "--json",
        action="store_true",
        help="print the state file's JSON, class keys named as in the other commands",
    )
    show.set_defaults(func=run_show)
    imp = verbs.add_parser(
        "import-legacy",
        help="import a PlanetLab bwmon.pickle / bwmon.dat",
        description="Import a legacy bwmon pickle (nothing in it is executed) into the state"
        " file, under the cycle lock. The previous file is kept as the backup <state_file>.1.",
    )
    imp.add_argument("path", metavar="PATH", help="the legacy bwmon.pickle or bwmon.dat")
    imp.add_argument(
        "--force", action="store_true", help="replace a state file that already holds slices"
    )
    imp.set_defaults(func=run_import)


def _when(unix_s: int | None) -> str:
    if unix_s is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))


def run_check(args: argparse.Namespace) -> int:
    """Print ``ok: …`` (exit 0) or one line per problem (exit 5)."""
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.state import StateStore, check

    path = load_config(args.config).state_file
    problems = check(path)
    if problems:
        for line in problems:
            print(line)
        return int(ExitCode.STATE)
    state = StateStore(path).read_unlocked().state
    print(
        f"ok: {len(state.slices)} slices, {len(state.ledger)} ledger entries,"
        f" saved {_when(state.saved_s)} ({path})"
    )
    return int(ExitCode.OK)


def _show_text(path: str, loaded: LoadResult) -> str:
    from bwenforcer.core.layout import TRAFFIC_CLASSES
    from bwenforcer.core.units import human_duration, human_rate, human_size

    state = loaded.state
    lines = [f"state file {path}: saved {_when(state.saved_s)}"]
    if loaded.recovered_from:
        lines.append(f"  (file unusable: read from its backup {loaded.recovered_from})")
    lines.append(f"{len(state.slices)} slices")
    for xid, st in sorted(state.slices.items()):
        length_s = st.period_end_s - st.period_start_s
        window_s = st.default.policy.window_s
        # under a rolling window the period is the ring's current bucket
        what = f"rolling window {human_duration(window_s)}, bucket" if window_s else "period"
        lines.append(
            f"  {st.name} xid {xid}: {what} {_when(st.period_start_s)} + {human_duration(length_s)}"
        )
        for tc in TRAFFIC_CLASSES:
            cs = st.cls(tc)
            flags = " ".join(
                f for f, on in (("capped", cs.capped), ("notified", cs.notified)) if on
            )
            ceil = human_rate(cs.ceil_bps) if cs.ceil_bps else "-"
            lines.append(
                f"    {tc:7} used {human_size(cs.used_bytes)} of"
                f" {human_size(cs.policy.limit_bytes)}"
                f" (threshold {human_size(cs.policy.threshold_bytes)}),"
                f" last counter {cs.last_counter_bytes}, ceil {ceil} {flags}".rstrip()
            )
    lines.append(f"{len(state.ledger)} ledger entries")
    for name, entry in sorted(state.ledger.items()):
        st = entry.slice
        lines.append(
            f"  {name} xid {st.xid}: died {_when(entry.died_s)}, expires {_when(entry.expires_s)},"
            f" used {human_size(st.default.used_bytes)} / {human_size(st.exempt.used_bytes)}"
            " (default / exempt)"
        )
    return "\n".join(lines)


def _slice_json(obj: dict[str, Any]) -> dict[str, Any]:
    from bwenforcer.store.schema import (
        CLASS_VIEW_KEYS,  # the state file's names → the commands' ones
    )

    classes = {
        tc: {CLASS_VIEW_KEYS.get(k, k): v for k, v in cls.items()}
        for tc, cls in obj["classes"].items()
    }
    return {**obj, "classes": classes}


def operator_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The state file's object with the class keys the other commands use (``ceil``, …).

    Only class objects are renamed: slices are keyed by xid and the ledger by slice
    name, and a name may well be ``ceil_bps``.
    """
    return {
        **doc,
        "slices": {xid: _slice_json(st) for xid, st in doc["slices"].items()},
        "ledger": {
            name: {**entry, "slice": _slice_json(entry["slice"])}
            for name, entry in doc["ledger"].items()
        },
    }


def run_show(args: argparse.Namespace) -> int:
    """Print the saved state as text or JSON."""
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.codec import state_to_json
    from bwenforcer.store.state import StateStore

    path = load_config(args.config).state_file
    loaded = StateStore(path).read_unlocked()
    if args.json:
        state = loaded.state
        doc = state_to_json(state, state.saved_s or 0, view=True)
        json.dump(operator_json(doc), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_show_text(path, loaded))
    return int(ExitCode.OK)


def run_import(args: argparse.Namespace) -> int:
    """Import a legacy bwmon pickle into the state file."""
    from bwenforcer.errors import StateError
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.legacy import import_legacy
    from bwenforcer.store.state import StateStore

    config = load_config(args.config)
    store = StateStore(config.state_file)
    with store.lock(config.lock_timeout_s):
        if not args.force:
            try:
                existing = store.read_unlocked().state
            except StateError as exc:
                raise UsageError(f"{exc}; use --force to replace it with the import") from exc
            if existing.slices or existing.ledger:
                raise UsageError(
                    f"{store.path} already holds {len(existing.slices)} slices and"
                    f" {len(existing.ledger)} ledger entries; use --force to replace it"
                )
        now_s = int(time.time())
        state = import_legacy(args.path, config, now_s)
        store.save(state, now_s)
    print(
        f"imported {len(state.slices)} slices and {len(state.ledger)} ledger entries"
        f" from {args.path} into {store.path}"
    )
    return int(ExitCode.OK)

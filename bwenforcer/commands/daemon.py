"""``bwenforcer daemon``: cycles every ``interval``, serving /metrics."""

from __future__ import annotations

import argparse

ORDER = 30


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``daemon`` verb."""
    parser = sub.add_parser(
        "daemon",
        help="run a cycle every `interval`, serve /metrics",
        description=(
            "Run cycles every `interval` and serve Prometheus metrics on `metrics.listen`."
            " SIGTERM/SIGINT stop cleanly; SIGHUP reloads the config (an invalid one is"
            " refused and the old one kept)."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the daemon until it is told to stop."""
    import sys

    from bwenforcer.errors import DeviceNotSet
    from bwenforcer.inputs.config import load_config
    from bwenforcer.modes.daemon import Daemon

    config = load_config(args.config)
    if not config.device:  # the config as shipped: say so, hold nothing, exit cleanly
        print(f"bwenforcer: {DeviceNotSet()}", file=sys.stderr)
        return 0
    return Daemon(args.config, config).loop()

"""``bwenforcer demo``: the built-in demonstration (needs root)."""

from __future__ import annotations

import argparse

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` verb."""
    parser = sub.add_parser(
        "demo",
        help="the built-in demonstration in throwaway namespaces (root)",
        description=(
            "Create two network namespaces joined by veth, enforce three demo slices with"
            " a one-minute budget period, and show a heavy slice being capped, mailed and"
            " released. Everything it creates is removed when it ends or is interrupted."
        ),
    )
    parser.add_argument(
        "--mode",
        choices=("uid", "cgroup"),
        default="uid",
        help="slices by uid (default) or by cgroup: three services in a cgroup of the"
        " demo's own, found by a pattern (classifier.mode: cgroup)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    from bwenforcer.modes.demo import main

    return main(args.mode)

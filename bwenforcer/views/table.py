"""Text tables for the terminal: the one renderer every table of the CLI goes through.

Left-aligned columns two spaces apart, no trailing blanks, and optional red rows
(ANSI colour, only where :func:`use_colour` allows it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TextIO

RED = "\x1b[1;31m"
RESET = "\x1b[0m"
COLUMN_GAP = "  "


def column_widths(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[int]:
    """Each column's width: its longest cell, the header's included."""
    return [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], highlight: Sequence[bool] = ()
) -> list[str]:
    """Left-aligned columns; highlighted rows in red (the padding stays outside the colour)."""
    widths = column_widths(header, rows)

    def line(row: Sequence[str]) -> str:
        return COLUMN_GAP.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    out = [line(header)]
    for i, row in enumerate(rows):
        text = line(row)
        out.append(f"{RED}{text}{RESET}" if i < len(highlight) and highlight[i] else text)
    return out


def use_colour(stream: TextIO) -> bool:
    """ANSI colour only on a terminal, and not when NO_COLOR is set or TERM is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()

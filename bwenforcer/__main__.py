"""``python -m bwenforcer``."""

from bwenforcer.cli import console_main

console_main()

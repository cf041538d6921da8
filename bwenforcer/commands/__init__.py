"""One module per group of command-line verbs; see :mod:`bwenforcer.cli`."""

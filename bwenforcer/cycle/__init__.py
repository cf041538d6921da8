"""One enforcement cycle: run_cycle, the executor, and the Agent that wires the
real parts.
"""

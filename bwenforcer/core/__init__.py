"""The pure core: units, HTB numbering, the model, every rate rule, periods,
accounting and the planner. No I/O; time is passed in.
"""

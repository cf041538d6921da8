"""Scale benchmark of bwenforcer against `tc` itself (run: ``python -m bench``)."""

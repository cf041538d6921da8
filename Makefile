# Thin wrapper over ./dev, which needs nothing but sh (a fresh Debian has no make).
.PHONY: demo test lint bench
demo test lint bench:
	./dev $@

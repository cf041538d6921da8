"""bwenforcer: per-slice daily byte budgets enforced with HTB over netlink."""

__version__ = "0.1.0"

"""The state file: its schema, codec and store; the legacy bwmon import."""

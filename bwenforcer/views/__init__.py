"""What operators read: status, ledger, show, report, plan tables and JSON, and the
forgive reset. Pure functions over the state and history.
"""

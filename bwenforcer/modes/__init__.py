"""How the cycle is run: the runner shared by the daemon and the node-manager
thread, the daemon, the demo.
"""

"""bwmon for PlanetLab's node manager, enforced by bwenforcer.

The node manager imports ``bwmon`` by name as a core module (its database's
sync calls ``bwmon.lock.set()``); installed as /usr/share/NodeManager/bwmon.py
in place of the historic module, this file hands that protocol to
:mod:`bwenforcer.nodemanager` (``start``, ``GetSlivers``, ``lock``, ``priority``).
"""

from bwenforcer.nodemanager import GetSlivers, lock, priority, start

__all__ = ["GetSlivers", "lock", "priority", "start"]

"""bwenforcer as PlanetLab's ``bwmon``: the node manager's own loading and calling sequence.

A directory laid out as /usr/share/NodeManager holds the ``bwmon.py`` the
package installs there, a ``database`` module whose ``sync()`` wakes
``bwmon.lock`` (as PlanetLab's does) and a ``slivermanager`` that turns PLC's
``GetSlivers()`` reply into database records. The node manager's loop imports
the core modules by name, calls ``start()``, then each module's
``GetSlivers(data, config, plc)`` in priority order with PLC data of several
slices, inside a throwaway namespace holding a real HTB tree and an SMTP sink
on its loopback. The test checks the classes, the cap, the ledger and the mail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bwenforcer.kernel.htb import HtbBackend
from tests.kernel_helpers import REPO, VENV_BIN
from tests.loopback import free_port
from tests.netns import Netns

pytestmark = pytest.mark.kernel


# PlanetLab's database.py, reduced to what bwmon sees: records by name, a lock,
# and sync() computing _rspec from rspec (no loans here) and waking bwmon.
FAKE_DATABASE = """
import threading

import bwmon

db_lock = threading.RLock()
db = None


class Database(dict):
    def sync(self):
        for rec in self.values():
            if "rspec" in rec:
                rec["_rspec"] = dict(rec["rspec"])
        bwmon.lock.set()


def start():
    global db
    db = Database()
"""

# slivermanager.GetSlivers: attributes [{tagname, value}] -> rspec with its
# DEFAULT_ALLOCATION (kbit/s, KiB); records PLC no longer sends are dropped.
FAKE_SLIVERMANAGER = """
import database

priority = 10
DEFAULT_ALLOCATION = {
    "net_min_rate": 0, "net_max_rate": 1000000, "net_share": 1,
    "net_i2_min_rate": 0, "net_i2_max_rate": 1000000, "net_i2_share": 1,
    "net_max_kbyte": 10546875, "net_thresh_kbyte": 9492187,
    "net_i2_max_kbyte": 31640625, "net_i2_thresh_kbyte": 28476562,
}


def start():
    database.start()


def GetSlivers(data, config=None, plc=None):
    with database.db_lock:
        sent = set()
        for sliver in data["slivers"]:
            tags = {a["tagname"]: a["value"] for a in sliver["attributes"]}
            rspec = {}
            for name, default in DEFAULT_ALLOCATION.items():
                try:
                    rspec[name] = int(tags[name])
                except (KeyError, ValueError):
                    rspec[name] = default
            rec = {"name": sliver["name"], "instantiation": sliver["instantiation"],
                   "timestamp": data["timestamp"], "rspec": rspec, "from_plc": True}
            database.db[sliver["name"]] = rec
            sent.add(sliver["name"])
        for name in [n for n, r in database.db.items() if r.get("from_plc") and n not in sent]:
            del database.db[name]
        database.db.sync()
"""

FAKE_NODE_MANAGER = '''
import json, os, sys, time

cfg, smtp_port, repo, state_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["BWENFORCER_CONFIG"] = cfg  # where bwmon's start() finds bwenforcer's config
sys.path.append(repo)  # tests.loopback (the SMTP sink); bwmon is found beside this script

from aiosmtpd.controller import Controller

from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import LogLines
from tests.loopback import Sink

lines = LogLines.install()

sink = Sink()
smtp = Controller(sink, hostname="127.0.0.1", port=smtp_port)
smtp.start()


class PlcConfig:  # the node manager's /etc/planetlab/plc_config
    PLC_SLICE_PREFIX = "pl"


config = PlcConfig()

# NodeManager.run(): import each core module by name, start() it, order by priority
modules = []
for name in ["slivermanager", "bwmon"]:
    m = __import__(name)
    m.start()
    modules.append(m)
modules.sort(key=lambda m: getattr(m, "priority", 100))

import bwmon
import database
from bwenforcer import nodemanager

# the Unix accounts of the slivers (xid = uid), a table instead of /etc/passwd
nodemanager._shim.uid_of = {
    "pl_alpha": 501, "pl_beta": 502, "princeton_default": 503, "pl_gamma": 504, "pl_ticket": 505,
}.get


def sliver(name, instantiation="plc-instantiated", **tags):
    return {"name": name, "instantiation": instantiation, "slice_id": 1, "keys": [],
            "attributes": [{"tagname": k, "value": str(v)} for k, v in tags.items()]}


def get_slivers(timestamp, slivers):
    """NodeManager.GetSlivers: PLC's reply to every module, in priority order."""
    data = {"timestamp": timestamp, "node_id": 1, "initscripts": [], "slivers": slivers,
            "interfaces": [{"is_primary": True, "bwlimit": None}]}
    for m in modules:
        m.GetSlivers(data, config, None)


def kernel():
    """{xid: ceil of the default class} of the slices' classes."""
    with HtbBackend("v0") as k:
        snap = k.dump()
    return {xid: ks.default.rates.max_rate_bps for xid, ks in snap.slices.items()
            if 500 <= xid < 600}


def until(predicate):
    deadline = time.monotonic() + 30
    while not predicate():
        if time.monotonic() > deadline:
            print(json.dumps({"timeout": kernel(), "lines": lines.lines[-30:]}))
            sys.exit(3)
        time.sleep(0.05)


report = {}
with database.db_lock:  # a record from a delivered ticket: no rspec, so no _rspec
    database.db["pl_ticket"] = {"name": "pl_ticket", "instantiation": "delegated", "timestamp": 0}
round1 = [
    sliver("pl_alpha", net_max_rate=2000),
    sliver("pl_beta", net_thresh_kbyte=0),  # over its threshold at once: capped, mailed
    sliver("princeton_default", net_max_rate=3000),  # an ordinary slice of site princeton
    sliver("pl_default", net_max_rate=5000),  # the node's default record, no slice
    sliver("pl_deleg", instantiation="delegated"),  # no account yet
]
get_slivers(100, round1)
until(lambda: set(kernel()) == {501, 502, 503} and len(sink.envelopes) == 1)
report["round1"] = {str(x): r for x, r in kernel().items()}
get_slivers(200, round1)  # PLC says the same again: nothing new logged or mailed

round2 = [s for s in round1 if s["name"] != "pl_alpha"] + [sliver("pl_gamma")]
get_slivers(300, round2)
until(lambda: set(kernel()) == {502, 503, 504})
report["round2"] = {str(x): r for x, r in kernel().items()}

with database.db_lock:  # a loan computed by the database: only bwmon.lock says so
    database.db["pl_gamma"]["_rspec"]["net_max_rate"] = 4000
bwmon.lock.set()
until(lambda: kernel().get(504) == 4_000_000)
report["loan"] = kernel()[504]

state = StateStore(state_file).load().state
report["ledger"] = {str(x): [s.name, s.default.capped, s.default.notified, s.default.policy.max_rate_bps]
                    for x, s in state.slices.items()}

off = [s for s in round2 if s["name"] != "pl_default"] + [sliver("pl_default", net_max_rate=-1)]
get_slivers(400, off)
until(lambda: kernel() == {})
report["off"] = kernel()

nodemanager._shim.stop(timeout_s=30)
smtp.stop()
report["mail"] = [[frm, to] for frm, to, _ in sink.envelopes]
report["lines"] = lines.lines
print(json.dumps(report))
'''


def test_node_manager_loads_and_drives_bwmon_by_name(ns: Netns, tmp_path: Path) -> None:
    smtp_port = free_port()
    state = tmp_path / "state.json"
    cfg = tmp_path / "bwenforcer.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {state}\nslices_file: null\nvanish_grace: 0s\n"
        "metrics: {listen: null}\n"
        "mail: {transport: smtp, from: support@example.org, operators: [ops@example.org],\n"
        "       slice_address: '{slice}@slices.example.org', hostname: node1.example.org,\n"
        f"       smtp: {{host: 127.0.0.1, port: {smtp_port}, timeout: 2s}}}}\n"
    )
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(10_000_000, 1_000_000_000)
    nm_dir = tmp_path / "NodeManager"  # /usr/share/NodeManager
    nm_dir.mkdir()
    shutil.copy(REPO / "packaging" / "bwmon.py", nm_dir / "bwmon.py")
    (nm_dir / "database.py").write_text(FAKE_DATABASE)
    (nm_dir / "slivermanager.py").write_text(FAKE_SLIVERMANAGER)
    (nm_dir / "nodemanager.py").write_text(FAKE_NODE_MANAGER)
    proc = ns.run(
        str(VENV_BIN / "python"),
        str(nm_dir / "nodemanager.py"),
        str(cfg),
        str(smtp_port),
        str(REPO),
        str(state),
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    # classes: the slices with accounts and an _rspec; pl_default is no slice
    assert report["round1"]["501"] == 2_000_000
    assert report["round1"]["503"] == 3_000_000  # princeton_default: limited like any slice
    assert report["round2"].keys() == {"502", "503", "504"}  # pl_alpha gone, pl_gamma new
    assert report["round2"]["504"] == 10_000_000  # slivermanager's default: the node cap
    assert report["loan"] == 4_000_000  # bwmon.lock.set() after the database changed
    # the ledger: pl_beta over its threshold is capped and was notified
    ledger = report["ledger"]
    assert ledger.keys() == {"502", "503", "504"}
    assert ledger["502"][:3] == ["pl_beta", True, True]
    assert ledger["503"][:3] == ["princeton_default", False, False]
    assert report["round1"]["502"] < 10_000_000  # the cap, applied to pl_beta's class
    # one mail, to the operators and pl_beta, however many cycles ran
    assert report["mail"] == [
        ["support@example.org", ["ops@example.org", "pl_beta@slices.example.org"]]
    ]
    # pl_default net_max_rate -1: limiting off for everyone
    assert report["off"] == {}
    messages = [m for _, m in report["lines"]]
    # the records the historic bwmon skipped: one line each, not one per cycle
    assert sum("pl_deleg" in m for m in messages) == 1
    assert sum("pl_ticket" in m for m in messages) == 1
    # the limits-off lines name each slice (were "slice ? xid 502")
    for line in (
        "slice pl_beta xid 502: remove classes (limiting off)",
        "slice princeton_default xid 503: remove classes (limiting off)",
        "slice pl_gamma xid 504: remove classes (limiting off)",
    ):
        assert line in messages, messages
    assert not [m for level, m in report["lines"] if level == "ERROR"]

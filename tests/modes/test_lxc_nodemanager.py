"""bwenforcer as ``bwmon`` under an emulation of PlanetLab's python3 LXC node manager.

Restated from reading dreibh/planetlab-lxc-nodemanager (nodemanager.py, logger.py,
database.py, slivermanager.py, net.py) and plnode-utils' bwlimit_lxc.py, none of
their code copied. A directory laid out as /usr/share/NodeManager holds the
packaged ``bwmon.py`` and modules under the node manager's own names:

- ``logger``: ``log(msg, level)``, ``verbose``, ``log_exc``, levels LOG_NODE and
  LOG_VERBOSE, lines appended to a log file (/var/log/nodemanager);
- ``database``: a ``Database(dict)`` with ``_min_timestamp``, ``deliver_record``,
  ``set_min_timestamp`` and ``sync()`` ending in ``bwmon.lock.set()``; its
  ``start()`` fails to read the dumped pickle as the python3 one does (text-mode
  open) and starts with an empty database;
- ``slivermanager`` (priority 10): returns before touching the database when
  PLC's reply has no ``initscripts`` (PLC down); converts tags to the type of
  DEFAULT_ALLOCATION's values (float rates, int others); net_max_rate's default
  from ``networks``; ``set_min_timestamp`` and ``sync()`` per full reply;
- ``net`` (priority 1): ``interfaces`` else ``networks`` else nothing; with the
  ``net_max_rate -1`` override it deletes the tree, else it (re)builds it with
  bwlimit's ``init`` whenever 1:10's ceil differs from PLC's bwlimit — bwlimit's
  own ``tc`` commands (tests/bwlimit_emulation.py), errors swallowed;
- the node manager's loop: modules imported by name, ``start()`` without
  arguments, sorted by priority, ``getPLCDefaults`` into ``config.OVERRIDES``,
  and every module's ``GetSlivers(data, config, plc)`` per poll, ``data = {}``
  when PLC cannot be reached.

Slivers' packets are marked as the node manager marks them: mark = xid (SO_MARK
standing in for its ebtables ``--set-mark``), sent from the node's namespace
through the HTB device to a second namespace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kernel_helpers import REPO, VENV_BIN
from tests.netns import NetnsPair

pytestmark = pytest.mark.kernel

FAKE_LOGGER = """
import os, time, traceback

LOG_FILE = os.environ["NM_LOG_FILE"]  # /var/log/nodemanager
LOG_NONE, LOG_NODE, LOG_VERBOSE = 0, 1, 2
LOG_LEVEL = LOG_NODE


def set_level(level):
    global LOG_LEVEL
    LOG_LEVEL = level


def log(msg, level=LOG_NODE):
    if level > LOG_LEVEL:
        return
    with open(LOG_FILE, "a") as f:
        f.write("%s: %s\\n" % (time.asctime(time.gmtime()), msg))


def verbose(msg):
    log("(v) " + msg, LOG_VERBOSE)


def log_exc(msg="", name=None):
    log("%s: EXCEPTION caught <%s>\\n%s" % (name or "", msg, traceback.format_exc()))


def log_missing_data(msg, key):
    log("%s: could not find the %s key in data (PLC connection down?) - IGNORED" % (msg, key))
"""

FAKE_DATABASE = '''
import os, pickle, threading

import bwmon
import logger

DB_FILE = os.environ["NM_DB_FILE"]
db_lock = threading.RLock()
db = None


class Database(dict):
    def __init__(self):
        super().__init__()
        self._min_timestamp = 0

    def deliver_record(self, rec):
        if rec["timestamp"] < self._min_timestamp:
            return
        name = rec["name"]
        old = self.get(name)
        if old is None or rec["timestamp"] >= old["timestamp"]:
            self[name] = rec

    def set_min_timestamp(self, ts):
        self._min_timestamp = ts
        for name, rec in list(self.items()):
            if rec["timestamp"] < ts:
                del self[name]

    def sync(self):
        for rec in self.values():
            if "rspec" in rec:
                rec["_rspec"] = dict(rec["rspec"])  # no loans here
        bwmon.lock.set()


def start():
    """The python3 node manager opens its dump in text mode: pickle.load fails."""
    global db
    try:
        f = open(DB_FILE)
        try:
            db = pickle.load(f)
        finally:
            f.close()
    except Exception:
        logger.log_exc("database: failed in start")
        db = Database()
'''

FAKE_SLIVERMANAGER = """
import database
import logger

priority = 10
NODE_ID = 1
DEFAULT_ALLOCATION = {
    "net_min_rate": 1000 / 1000, "net_max_rate": 1e9 / 1000, "net_share": 1,
    "net_i2_min_rate": 1000 / 1000, "net_i2_max_rate": 1e9 / 1000, "net_i2_share": 1,
    "net_max_kbyte": 10546875, "net_thresh_kbyte": 9492187,
    "net_i2_max_kbyte": 31640625, "net_i2_thresh_kbyte": 28476562,
}


def start():
    logger.log("slivermanager: starting up")
    database.start()


def GetSlivers(data, config=None, plc=None, fullupdate=True):
    with database.db_lock:
        if "node_id" in data and data["node_id"] != NODE_ID:
            return
        for network in data.get("networks", ()):
            if network["is_primary"] and network["bwlimit"] is not None:
                DEFAULT_ALLOCATION["net_max_rate"] = network["bwlimit"] / 1000
        if "initscripts" not in data:
            logger.log_missing_data("slivermanager.GetSlivers", "initscripts")
            return
        for sliver in data["slivers"]:
            rec = dict(sliver)
            rec.setdefault("timestamp", data["timestamp"])
            attributes = {a["tagname"]: a["value"] for a in sliver["attributes"]}
            rspec = {}
            for name, default in DEFAULT_ALLOCATION.items():
                try:
                    rspec[name] = type(default).__new__(type(default), attributes[name])
                except (KeyError, ValueError):
                    rspec[name] = default
            rec["rspec"] = rspec
            database.db.deliver_record(rec)
        if fullupdate:
            database.db.set_min_timestamp(data["timestamp"])
        database.db.sync()
"""

FAKE_NET = """
import os

import logger
from tests import bwlimit_emulation as bwlimit  # stands in for plnode.bwlimit (LXC)

priority = 1
DEV = os.environ["NM_DEV"]
TC = ["tc"]  # the node's own tc: this process runs in the node's namespace


def start():
    logger.log("net: plugin starting up...")


def GetSlivers(data, config, plc):
    interfaces = data.get("interfaces") or data.get("networks")
    if not interfaces:
        logger.log_missing_data("net.GetSlivers", "interfaces")
        return
    if config.OVERRIDES.get("net_max_rate") == "-1":
        logger.log("net: Slice and node BW Limits disabled.")
        if bwlimit.get_bwcap(TC, DEV) != -1:
            logger.verbose("net: *** DISABLING NODE BW LIMITS ***")
            bwlimit.stop(TC, DEV)
        return
    for interface in interfaces:
        if not interface.get("is_primary"):
            continue
        old = bwlimit.get_bwcap(TC, DEV)
        new = interface.get("bwlimit")
        if new is None or new < 0:
            new = bwlimit.BWMAX_BPS
        if old != new:
            logger.log("net: %s: updating max rate from %d to %d" % (DEV, old, new))
            bwlimit.init(TC, DEV, new)
"""

FAKE_NODE_MANAGER = '''
import json, os, socket, sys, time

cfg, repo, state_file, sink_addr = sys.argv[1:5]
os.environ["BWENFORCER_CONFIG"] = cfg  # where bwmon's start() finds bwenforcer's config
sys.path.append(repo)  # tests.bwlimit_emulation for the net module

import logger


class Config:  # the node manager's config: plc_config and the default sliver's overrides
    PLC_SLICE_PREFIX = "pl"
    OVERRIDES = {}


config = Config()


class Plc:
    """PLC's API: the reply of the next poll, or down."""

    reply = None

    def GetSlivers(self):
        if self.reply is None:
            raise OSError("PLC unreachable")
        return json.loads(json.dumps(self.reply))  # a fresh copy each poll, as XML-RPC gives


plc = Plc()

# NodeManager.run(): the core modules by name, start() without arguments, by priority
modules = []
for name in ["net", "slivermanager", "bwmon"]:
    m = __import__(name)
    try:
        m.start()
    except Exception:
        logger.log_exc("nodemanager: module %s did not start" % name)
    modules.append(m)
modules.sort(key=lambda m: getattr(m, "priority", 100))

import database
from bwenforcer import nodemanager

UIDS = {"pl_alpha": 501, "pl_beta": 502, "upmc_TestSlice": 503, "inria.fr_demo": 504}
nodemanager._shim.uid_of = UIDS.get  # the slivers' Unix accounts, a table instead of pwd


def getPLCDefaults(data):
    for sliver in data.get("slivers", ()):
        if sliver["name"] == config.PLC_SLICE_PREFIX + "_default":
            config.OVERRIDES = {a["tagname"]: a["value"] for a in sliver["attributes"]}


def poll():
    """NodeManager.GetSlivers: PLC's reply ({} when down) to every module, by priority."""
    try:
        data = plc.GetSlivers()
    except OSError:
        data = {}
    getPLCDefaults(data)
    for m in modules:
        try:
            m.GetSlivers(data, config, plc)
        except Exception:
            logger.log_exc("nodemanager: GetSlivers failed", name=m.__name__)


def cycles_of_poll(expected=True):
    """One poll, then the cycles it caused, once the thread is quiet."""
    before = nodemanager._shim.cycles
    poll()
    deadline = time.monotonic() + (30 if expected else 0)
    while nodemanager._shim.cycles == before and time.monotonic() < deadline:
        time.sleep(0.05)
    quiet = time.monotonic() + 1.5
    last = nodemanager._shim.cycles
    while time.monotonic() < quiet:
        time.sleep(0.1)
        if nodemanager._shim.cycles != last:
            last, quiet = nodemanager._shim.cycles, time.monotonic() + 1.5
    return last - before


def sliver(name, **tags):
    return {"name": name, "instantiation": "plc-instantiated", "slice_id": 1, "keys": [],
            "attributes": [{"tagname": k, "value": str(v)} for k, v in tags.items()]}


def reply(timestamp, bwlimit, default_rate=5000):
    return {
        "timestamp": timestamp, "node_id": 1, "initscripts": [],
        "interfaces": [{"is_primary": True, "bwlimit": bwlimit}],
        "slivers": [
            sliver("pl_alpha", net_max_rate=2000),
            sliver("pl_beta"),  # slivermanager's default rate: the node cap
            sliver("upmc_TestSlice", net_max_rate=3000),
            sliver("inria.fr_demo", net_max_rate=4000),
            sliver("pl_default", net_max_rate=default_rate),
        ],
    }


def tc(*args):
    import subprocess
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=True).stdout


def ceils():
    """{xid: ceil of the default class} of the slices, from the kernel's dump."""
    from bwenforcer.kernel.htb import HtbBackend
    from bwenforcer.errors import TreeNotInitialised
    try:
        with HtbBackend(os.environ["NM_DEV"]) as k:
            snap = k.dump()
    except TreeNotInitialised:
        return None
    return {"cap": snap.cap_bps,
            **{str(x): s.default.rates.max_rate_bps for x, s in snap.slices.items()
               if 500 <= x < 600}}


def sent(classid):
    import re
    out = tc("-s", "class", "show", "dev", os.environ["NM_DEV"], "classid", classid)
    match = re.search(r"Sent (\\d+) bytes", out)
    return int(match.group(1)) if match else None


def send_marked(mark, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)  # as ebtables --set-mark <xid>
    for _ in range(count):
        s.sendto(b"x" * 1000, (sink_addr, 9))
    s.close()


def settled(classid):
    last = -1
    for _ in range(50):
        now = sent(classid)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def state():
    with open(state_file, "rb") as f:
        return f.read()


def used(xid):
    from bwenforcer.store.state import StateStore
    st = StateStore(state_file).read_unlocked().state.slices.get(xid)
    return None if st is None else st.default.used_bytes


report = {"filters_at_start": tc("filter", "show", "dev", os.environ["NM_DEV"])}
before = state()
# (a) restarted while PLC is down: an empty database, GetSlivers({}) every poll
report["down_cycles"] = [cycles_of_poll(False), cycles_of_poll(False)]
# a delivered ticket syncs the restart's empty database: still no cycle on it
with database.db_lock:
    database.db.deliver_record({"name": "pl_ticket", "timestamp": 1, "instantiation": "delegated"})
    database.db.sync()
time.sleep(1)
report["state_kept"] = state() == before
report["ceils_while_down"] = ceils()

# (b) PLC answers: node bwlimit raised from 10 to 20 Mbit/s, net re-inits the tree
plc.reply = reply(100, 20_000_000)
report["first_cycles"] = cycles_of_poll()
report["first"] = ceils()
report["filters_first"] = tc("filter", "show", "dev", os.environ["NM_DEV"])
send_marked(501, 100)  # pl_alpha's packets, marked as the node manager marks them
send_marked(503, 50)  # upmc_TestSlice's
report["alpha_bytes"] = settled("1:11f5")
report["upmc_bytes"] = settled("1:11f7")
report["default_bytes"] = settled("1:1fff")
report["same_cycles"] = cycles_of_poll()  # PLC says the same again: one cycle
report["alpha_used"] = used(501)

# (c) PLC lowers the node's bwlimit: net re-inits (filter gone, counters at 0)
plc.reply = reply(200, 15_000_000)
report["lowered_cycles"] = cycles_of_poll()
report["lowered"] = ceils()
report["alpha_used_after_reinit"] = used(501)
send_marked(501, 20)
report["alpha_bytes_after_reinit"] = settled("1:11f5")
report["same_again_cycles"] = cycles_of_poll()
report["alpha_used_counted"] = used(501)

# (d) pl_default net_max_rate -1: net deletes the tree, then back
plc.reply = reply(300, 15_000_000, default_rate=-1)
report["off_cycles"] = cycles_of_poll()
report["off"] = ceils()
plc.reply = reply(400, 15_000_000)
report["on_cycles"] = cycles_of_poll()
report["on"] = ceils()
report["alpha_used_after_on"] = used(501)
send_marked(502, 10)
report["beta_bytes"] = settled("1:11f6")

nodemanager._shim.stop(timeout_s=30)
print(json.dumps(report))
'''


def _bwlimit_tree_with_state(pair: NetnsPair, tmp_path: Path, cfg: Path) -> None:
    """The node before the restart: a tree bwlimit built (10 Mbit/s) and classes and a
    state bwenforcer made on it for pl_alpha."""
    from bwenforcer.core.model import DesiredSet
    from bwenforcer.cycle.agent import Agent
    from bwenforcer.inputs.config import load_config
    from bwenforcer.inputs.slices import from_nodemanager_db
    from tests import bwlimit_emulation as bwlimit

    bwlimit.init(["tc", "-n", pair.a.name], "va", 10_000_000)
    config = load_config(str(cfg))
    db = {"pl_alpha": {"name": "pl_alpha", "xid": 501, "_rspec": {"net_max_rate": 2000}}}
    desired: DesiredSet = from_nodemanager_db(db, config)
    agent = Agent(config, netns=pair.a.name)
    try:
        agent.cycle(desired)  # the tree is there: adopted, not built
    finally:
        agent.close()


def test_the_lxc_node_manager_drives_bwmon_with_its_own_tree_marks_and_log(
    pair: NetnsPair, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    cfg = tmp_path / "bwenforcer.yaml"
    cfg.write_text(
        # node_cap is ignored under the node manager: net.py sets 1:10 from PLC
        f"device: va\nnode_cap: 10mbit\nstate_file: {state}\nslices_file: null\n"
        "metrics: {listen: null}\nmail: {transport: none}\n"
    )
    _bwlimit_tree_with_state(pair, tmp_path, cfg)
    nm_dir = tmp_path / "NodeManager"  # /usr/share/NodeManager
    nm_dir.mkdir()
    shutil.copy(REPO / "packaging" / "bwmon.py", nm_dir / "bwmon.py")
    for name, text in (
        ("logger", FAKE_LOGGER),
        ("database", FAKE_DATABASE),
        ("slivermanager", FAKE_SLIVERMANAGER),
        ("net", FAKE_NET),
        ("nodemanager", FAKE_NODE_MANAGER),
    ):
        (nm_dir / f"{name}.py").write_text(text)
    log_file = tmp_path / "nodemanager.log"
    db_file = tmp_path / "database.pickle"
    db_file.write_bytes(b"\x80\x04\x95\x01\x00\x00\x00\x00\x00\x00\x00}\x94.")  # a dumped {}
    env = f"NM_LOG_FILE={log_file} NM_DB_FILE={db_file} NM_DEV=va"
    proc = pair.a.run(
        "env",
        *env.split(),
        str(VENV_BIN / "python"),
        str(nm_dir / "nodemanager.py"),
        str(cfg),
        str(REPO),
        str(state),
        pair.b_addr,
        check=False,
        timeout=240,
    )
    log = log_file.read_text() if log_file.exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log[-3000:]
    report = json.loads(proc.stdout)
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if ": bwmon: " in line]

    # (a) restart while PLC is down: no cycle, state and classes as they were
    assert report["down_cycles"] == [0, 0]
    assert report["state_kept"]
    assert report["ceils_while_down"] == {"cap": 10_000_000, "501": 2_000_000}
    assert sum("not filled by a full PLC reply" in m for m in lines) == 1

    # (b) one cycle per poll; the filter put back on net's new tree; ceilings follow 1:10
    assert report["first_cycles"] == 1 and report["same_cycles"] == 1
    assert "bpf" in report["filters_first"]
    assert report["first"] == {
        "cap": 20_000_000,
        "501": 2_000_000,
        "502": 20_000_000,  # slivermanager's default: the node cap, PLC's bwlimit
        "503": 3_000_000,  # upmc_TestSlice
        "504": 4_000_000,  # inria.fr_demo
    }
    # packets marked mark = xid reach the slices' classes, not the default class
    assert report["alpha_bytes"] == 100 * 1042
    assert report["upmc_bytes"] == 50 * 1042
    assert report["default_bytes"] < 10 * 1042
    assert report["alpha_used"] >= 100 * 1042

    # (c) net re-inits on a lowered bwlimit: the filter is back, ceilings follow, usage kept
    assert report["lowered_cycles"] == 1
    assert report["lowered"]["cap"] == 15_000_000 and report["lowered"]["502"] == 15_000_000
    assert report["alpha_used_after_reinit"] >= report["alpha_used"]
    assert report["alpha_bytes_after_reinit"] == 20 * 1042
    assert report["same_again_cycles"] == 1
    # the counters bwlimit reset were a restart of the counters: nothing lost, nothing twice
    assert report["alpha_used_counted"] == report["alpha_used_after_reinit"] + 20 * 1042

    # (d) limits off: net deleted the tree, nothing built; back on: rebuilt by net
    assert report["off_cycles"] == 1 and report["off"] is None
    assert report["on_cycles"] == 1
    assert report["on"]["cap"] == 15_000_000 and report["on"]["501"] == 2_000_000
    assert report["alpha_used_after_on"] >= report["alpha_used_after_reinit"]
    assert report["beta_bytes"] == 10 * 1042

    # the filter: put back after each of net's three rebuilds, one line each
    put_back = [m for m in lines if "mark → class filter missing: put back" in m]
    assert len(put_back) == 3 and all(m.startswith("bwmon: WARNING: dev va: ") for m in put_back)
    # bwenforcer's lines reach the node manager's log, levels kept, no DEBUG by default
    assert any(m.startswith("bwmon: node-manager thread started") for m in lines)
    assert any(m.startswith("bwmon: WARNING: limits disabled") for m in lines)
    assert any(
        m.startswith("bwmon: WARNING: node_cap 10000000 bit/s of the config ignored") for m in lines
    )
    assert any(m.startswith("bwmon: cycle ok") for m in lines)
    assert not any(m.startswith("bwmon: (v)") or "(v) bwmon:" in m for m in lines)
    assert not [m for m in lines if "ERROR" in m], lines
    assert "bwenforcer" not in proc.stderr and "bwmon" not in proc.stderr

"""``bwenforcer demo``: the whole mechanism, live, in about a minute.

Two namespaces joined by veth stand in for a node and the rest of the world.
The node gets the HTB tree with a small cap, four demo slices (uids that need
not exist), the uid classifier, inbound accounting, and a mail spool. A heavy
slice sends as fast as it can, a light one trickles, one sends to an exempt
destination, and one (``demo_down``, whose budget counts what it receives)
downloads from the far end until its inbound limit holds it; cycles
run every few seconds and a table shows usage, threshold, ceil and measured
throughput: the heavy slice is capped to the computed rate, its mail appears,
and the cap is lifted when its one-minute period ends. Every exit path removes
both namespaces and the processes in them.

With ``mode="cgroup"`` the slices are cgroups instead of uids: the demo makes a
cgroup of its own below the cgroup v2 mount with three services in it
(``system.slice/heavy.service`` …), the cgroup classifier, and senders that join
them; the tenants are found by a pattern, and the cgroup is removed afterwards.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from bwenforcer.core.layout import BARE_MARK_MODES
from bwenforcer.core.policy import tree_rates_bps
from bwenforcer.core.units import human_rate, human_size
from bwenforcer.errors import UsageError
from bwenforcer.files.tools import find_tool
from bwenforcer.kernel.sandbox import Pair, cgroup_sandbox, namespace_pair
from bwenforcer.modes.traffic import start_fetch, start_sender, start_sink, start_source
from bwenforcer.views.table import render_table

if TYPE_CHECKING:
    from bwenforcer.core.inbound import InboundSnapshot
    from bwenforcer.core.model import DesiredSet, KernelSnapshot
    from bwenforcer.cycle.agent import Agent
    from bwenforcer.cycle.run import CycleResult

log = logging.getLogger(__name__)

HEAVY, LIGHT, EXEMPT, DOWN = 2001, 2002, 2003, 2004
PORT = 5201
DOWN_PORT = 5202  # the far end's download server (uid mode: demo_down's budget counts it)
DOWN_RATE_BPS = 6_000_000  # the download's own pace, until its inbound limit holds it
EXEMPT_ADDR = "198.19.0.1"  # on the far end, in the config's exempt prefixes
PERIOD_S = 40
CYCLE_S = 3
RUN_S = 75  # the heavy slice is capped, released when its period ends, then we stop
NODE_CAP = "8mbit"

CONFIG = """\
device: va
node_cap: {cap}
bwmax: 100mbit
period: {period}s
interval: {cycle}s
state_file: {dir}/state.json
slices_file: {dir}/slices.yaml
defaults:
  default: {{limit: 12MB, threshold: 4MB}}
  exempt: {{limit: 50MB, threshold: 40MB, max_rate: 4mbit}}
mail:
  transport: spool
  from: support@demo.invalid
  operators: [ops@demo.invalid]
  slice_address: "{{slice}}@slices.demo.invalid"
  hostname: demo-node.invalid
  spool: {{dir: {dir}/spool}}
metrics: {{listen: null}}
inbound: {{enabled: true}}
classifier:
  mode: uid
  exempt_prefixes: [{exempt}/32]
"""

# classifier.mode cgroup: the three slices are services in the demo's own cgroup
CGROUP_CONFIG = """slices_file: null
classifier:
  mode: cgroup
  exempt_prefixes: [{exempt}/32]
cgroups:
  tenants:
    - match: {parent}/system.slice/*.service
      prefix: demo
"""
UNITS = {HEAVY: "heavy.service", LIGHT: "light.service", EXEMPT: "exempt.service"}

SLICES = f"""\
slices:
  - {{name: demo_heavy, xid: {HEAVY}, rspec: {{}}}}
  - {{name: demo_light, xid: {LIGHT}, rspec: {{}}}}
  - {{name: demo_exempt, xid: {EXEMPT}, rspec: {{}}}}
  - {{name: demo_down, xid: {DOWN}, rspec: {{net_direction: in}}}}
"""


@dataclass
class _Meter:
    """Throughput from successive kernel counters."""

    last: dict[tuple[object, ...], tuple[float, int]]

    def rate_bps(self, key: tuple[object, ...], now: float, counter: int) -> int:
        before = self.last.get(key)
        self.last[key] = (now, counter)
        if before is None or now <= before[0]:
            return 0
        return max(0, int((counter - before[1]) * 8 / (now - before[0])))


def _table(
    result: CycleResult,
    snapshot: KernelSnapshot,
    received: InboundSnapshot | None,
    meter: _Meter,
    now: float,
) -> list[str]:
    """One row per slice class; a budget of received bytes (demo_down) shows its
    downloads: usage, the inbound limit and the rate the inbound counter measured.
    """
    header = ("SLICE", "CLASS", "COUNTS", "USED", "THRESHOLD", "LIMIT", "CEIL", "MEASURED", "")
    rows: list[tuple[str, ...]] = []
    for line in result.plan.lines:
        kernel = snapshot.slices.get(line.xid)
        for cls in (line.default, line.exempt):
            key = (line.xid, cls.traffic_class)
            if cls.direction == "in":
                counter = None if received is None else received.bytes_by_class.get(key)
                measured = 0 if counter is None else meter.rate_bps((*key, "in"), now, counter)
                used, ceil = cls.in_used_bytes, cls.in_new_limit_bps
                what = "received"
            else:
                kclass = None if kernel is None else kernel.cls(cls.traffic_class)
                measured = meter.rate_bps(key, now, kclass.bytes) if kclass else 0
                used, ceil, what = cls.used_bytes, cls.new_ceil_bps, "sent"
            rows.append(
                (
                    line.name,
                    cls.traffic_class,
                    what,
                    human_size(used),
                    human_size(cls.threshold_bytes),
                    human_size(cls.limit_bytes),
                    "none" if ceil is None else human_rate(ceil),
                    human_rate(measured),
                    "CAPPED" if cls.capped else "",
                )
            )
    return render_table(header, rows)


def _show_mail(spool: Path, seen: set[Path], out: TextIO) -> None:
    for path in sorted(spool.glob("*.eml")) if spool.is_dir() else []:
        if path in seen:
            continue
        seen.add(path)
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        print(f"\n  ✉ mail spooled: {path.name}", file=out)
        for header in ("From", "To", "Subject"):
            print(f"    {header}: {str(msg[header]).strip()}", file=out)
        body = msg.get_body()
        text = body.get_content() if body is not None else ""
        for line in text.strip().splitlines()[:14]:
            print(f"    | {line}", file=out)
        print(file=out)


def _terminate(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def _cgroup_config(text: str, pair: Pair, parent: str) -> str:
    """The uid config turned into the cgroup one (slices from the tree, not the file)."""
    text = text[: text.index("slices_file:")] + text[text.index("defaults:") :]
    text = text[: text.index("inbound:")]  # the download slice is the uid demo's
    return text + CGROUP_CONFIG.format(exempt=EXEMPT_ADDR, parent=os.path.basename(parent))


def run_demo(
    out: TextIO = sys.stdout,
    run_s: float = RUN_S,
    clock: Callable[[], float] = time.time,
    mode: str = "uid",
) -> int:
    """Run the demonstration (slices by ``mode``: ``uid`` or ``cgroup``); return 0 when
    the heavy slice was capped and released.
    """
    if os.geteuid() != 0:
        raise UsageError("demo needs root (it creates network namespaces and HTB classes)")
    for tool in ("ip", "nft", "setpriv"):
        if find_tool(tool) is None:
            raise UsageError(f"demo needs {tool!r} (Debian: iproute2, nftables, util-linux)")
    from bwenforcer.core.units import parse_rate_bps
    from bwenforcer.cycle.agent import Agent, load_desired
    from bwenforcer.inputs.config import load_config
    from bwenforcer.kernel.htb import HtbBackend

    workdir = Path(tempfile.mkdtemp(prefix="bwenforcer-demo-"))
    procs: list[subprocess.Popen] = []
    try:
        with (
            namespace_pair(extra_b_addrs=(f"{EXEMPT_ADDR}/32",)) as pair,
            cgroup_sandbox() if mode == "cgroup" else contextlib.nullcontext("") as parent,
        ):
            cfg_path = workdir / "bwenforcer.yaml"
            text = CONFIG.format(
                cap=NODE_CAP, period=PERIOD_S, cycle=CYCLE_S, dir=workdir, exempt=EXEMPT_ADDR
            )
            cgroups: dict[int, str] = {}
            if parent:
                text = _cgroup_config(text, pair, parent)
                for xid, unit in UNITS.items():
                    cgroups[xid] = os.path.join(parent, "system.slice", unit)
                    os.makedirs(cgroups[xid])
            cfg_path.write_text(text)
            (workdir / "slices.yaml").write_text(SLICES)
            config = load_config(str(cfg_path))
            print(f"namespaces {pair.a} (node, HTB on {pair.dev}) and {pair.b} (far end)", file=out)
            if parent:
                print(f"cgroup {parent}: tenants system.slice/*.service", file=out)
            print(f"config {cfg_path}; node cap {NODE_CAP}; period {PERIOD_S}s", file=out)
            bare_marks = config.classifier.mode in BARE_MARK_MODES
            with HtbBackend(config.device, netns=pair.a, bare_marks=bare_marks) as kernel:
                kernel.init(*tree_rates_bps(parse_rate_bps(NODE_CAP), config.bwmax_bps))
            agent = Agent(config, clock=clock, netns=pair.a)
            desired = load_desired(config)
            agent.cycle(desired)  # classes and classifier in place before any traffic
            procs.append(start_sink(pair.b, PORT, run_s + 10))
            procs += _senders(pair, run_s, workdir, cgroups)
            if config.inbound.enabled:  # demo_down downloads from the far end
                procs.append(start_source(pair.b, DOWN_PORT, run_s + 10, 10**9, DOWN_RATE_BPS))
                procs.append(start_fetch(pair.a, DOWN, pair.b_addr, DOWN_PORT, seconds=run_s))
            return _loop(agent, desired, pair, workdir, out=out, run_s=run_s)
    finally:
        _terminate(procs)
        shutil.rmtree(workdir, ignore_errors=True)


def _senders(
    pair: Pair, run_s: float, workdir: Path, cgroups: dict[int, str]
) -> list[subprocess.Popen]:
    """The three senders, as their slice's uid (and in its cgroup, in cgroup mode)."""
    log = (workdir / "senders.log").open("ab")
    return [
        start_sender(
            pair.a, HEAVY, pair.b_addr, PORT, max_bytes=80_000_000, seconds=run_s, log=log,
            cgroup=cgroups.get(HEAVY),
        ),
        start_sender(
            pair.a, LIGHT, pair.b_addr, PORT, max_bytes=4_000_000, seconds=run_s, rate_bps=200_000,
            log=log, cgroup=cgroups.get(LIGHT),
        ),
        start_sender(
            pair.a, EXEMPT, EXEMPT_ADDR, PORT, max_bytes=8_000_000, seconds=run_s,
            rate_bps=600_000, log=log, cgroup=cgroups.get(EXEMPT),
        ),
    ]  # fmt: skip


def _loop(
    agent: Agent, desired: DesiredSet, pair: Pair, workdir: Path, *, out: TextIO, run_s: float
) -> int:
    from bwenforcer.kernel.htb import HtbBackend

    meter = _Meter({})
    seen: set[Path] = set()
    capped_once = released = down_capped = False
    inbound = agent.inbound_port()
    start = time.monotonic()
    while time.monotonic() - start < run_s:
        result = agent.cycle(desired)
        with HtbBackend(pair.dev, netns=pair.a) as kernel:
            snapshot = kernel.dump()
        received = None if inbound is None else inbound.dump()
        now = time.monotonic()
        heavy = next(line for line in result.plan.lines if line.name == "demo_heavy").default
        down = next((line for line in result.plan.lines if line.name == "demo_down"), None)
        if down is not None and down.default.in_new_limit_bps is not None and not down_capped:
            down_capped = True
            rate = human_rate(down.default.in_new_limit_bps)
            print(f"\n  ▶ demo_down past its threshold on downloads: limited to {rate}\n", file=out)
        if heavy.capped:
            capped_once = True
        elif capped_once and not released:
            released = True
            print("\n  ▶ demo_heavy's period ended: cap lifted, usage back to 0\n", file=out)
        print(f"--- t={now - start:5.1f}s  cycle {result.result}", file=out)
        errors = (workdir / "senders.log").read_text(errors="replace").strip()
        if errors:
            print(f"  traffic generator error: {errors.splitlines()[-1]}", file=out)
        for row in _table(result, snapshot, received, meter, now):
            print(f"  {row}", file=out)
        _show_mail(workdir / "spool", seen, out)
        out.flush()
        if released and now - start > PERIOD_S + 2 * CYCLE_S:
            break
        time.sleep(CYCLE_S)
    ok = capped_once and released and bool(seen) and (inbound is None or down_capped)
    print(
        "demo finished: heavy slice capped, mailed and released"
        + (", the download slice limited" if inbound is not None else "")
        if ok
        else "demo finished without showing the whole cycle (see above)",
        file=out,
    )
    return 0 if ok else 1


def main(mode: str = "uid") -> int:
    """Entry for the CLI verb: SIGTERM cleans up like Ctrl-C."""

    main_pid = os.getpid()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            # a forked copy (pyroute2's namespace-socket helper) inherits this handler;
            # unwinding there would run the demo's cleanup and kill the traffic
            os._exit(0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return run_demo(mode=mode)

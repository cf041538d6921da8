"""``python -m bench``: bwenforcer vs `tc` at N = 100, 1,000, 4,000 slices.

Everything runs in a throwaway namespace holding a veth pair. Each figure is the
median of several runs, measured side by side with the `tc` command doing the
same work in the same run, and reported as a ratio to it. Prints one markdown
table and writes ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import aged, ledger, window
from bench.launch import launched
from bwenforcer.kernel.htb import HtbBackend

if TYPE_CHECKING:
    from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.core.layout import class_minor
from bwenforcer.core.model import ClassOp, ClassRates

HERE = Path(__file__).resolve().parent
VENV_BIN = HERE.parent / ".venv" / "bin"
CAP_BPS = 1_000_000_000
BWMAX_BPS = 10_000_000_000
DEV = "v0"


def median_s(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` over ``runs`` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(
    ours: Callable[[int], object], theirs: Callable[[int], object], runs: int
) -> tuple[float, float]:
    """Medians of ``ours(i)`` and ``theirs(i)`` timed in turns, so that both see the
    same machine (this one's speed drifts by a factor of two within minutes).
    """
    our_times, their_times = [], []
    for i in range(runs):
        start = time.perf_counter()
        theirs(i)
        their_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours(i)
        our_times.append(time.perf_counter() - start)
    return statistics.median(our_times), statistics.median(their_times)


def sh(*cmd: str, stdin: str | None = None) -> None:
    """Run a command; fail loudly."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}…: {proc.stderr.strip()[:300]}")


class Namespace:
    """A namespace with a veth pair, deleted on exit."""

    def __init__(self, tag: str = "") -> None:
        self.name = f"bwbench{tag}{os.getpid()}"

    def __enter__(self) -> Namespace:
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "add", DEV, "type", "veth", "peer", "name", "v1")
        sh("ip", "-n", self.name, "link", "set", DEV, "up")
        sh("ip", "-n", self.name, "link", "set", "v1", "up")
        # Measure as a node runs: the whole process in the namespace, so no socket
        # pays for pyroute2's per-namespace helper process.
        from pyroute2 import netns as pyroute2_netns

        pyroute2_netns.setns(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        # not delete_namespace(): it kills every process inside, this one included
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)

    def tc(self, *args: str, stdin: str | None = None) -> None:
        """`tc -n NS …` (the yardstick)."""
        sh("tc", "-n", self.name, *args, stdin=stdin)

    def add_veth(self, dev: str, peer: str) -> None:
        """One more veth pair, up."""
        sh("ip", "-n", self.name, "link", "add", dev, "type", "veth", "peer", "name", peer)
        sh("ip", "-n", self.name, "link", "set", dev, "up")
        sh("ip", "-n", self.name, "link", "set", peer, "up")


def tc_build_script(n: int, cap_kbit: int) -> str:
    """`tc -batch` lines that build the same tree bwenforcer builds."""
    lines = [
        f"qdisc add dev {DEV} root handle 1: htb default 1fff",
        f"class add dev {DEV} parent 1: classid 1:1 htb rate {BWMAX_BPS // 1000}kbit",
        f"class add dev {DEV} parent 1:1 classid 1:10 htb rate 8kbit ceil {cap_kbit}kbit",
        f"class add dev {DEV} parent 1:10 classid 1:100 htb rate 8kbit ceil {cap_kbit}kbit",
        f"class add dev {DEV} parent 1:1 classid 1:20 htb rate 8kbit ceil {BWMAX_BPS // 1000}kbit",
    ]
    for xid in range(1, n + 1):
        for tc_name, parent in (("default", "1:100"), ("exempt", "1:20")):
            minor = class_minor(xid, tc_name)  # type: ignore[arg-type]
            lines.append(
                f"class add dev {DEV} parent {parent} classid 1:{minor:x} htb rate 8kbit"
                f" ceil {cap_kbit}kbit quantum 1600"
            )
            lines.append(
                f"qdisc add dev {DEV} parent 1:{minor:x} handle {minor:x}: pfifo limit 1000"
            )
    return "\n".join(lines) + "\n"


def tc_change_script(n: int, ceil_kbit: int) -> str:
    """`tc -batch` lines changing the ceil of every slice class."""
    lines = []
    for xid in range(1, n + 1):
        for tc_name, parent in (("default", "1:100"), ("exempt", "1:20")):
            minor = class_minor(xid, tc_name)  # type: ignore[arg-type]
            lines.append(
                f"class change dev {DEV} parent {parent} classid 1:{minor:x} htb rate 8kbit"
                f" ceil {ceil_kbit}kbit quantum 1600"
            )
    return "\n".join(lines) + "\n"


def change_ops(n: int, ceil_bps: int) -> list[ClassOp]:
    """bwenforcer's ops for the same changes."""
    return [
        ClassOp("change", xid, tc_name, ClassRates(8_000, ceil_bps, 1))  # type: ignore[arg-type]
        for xid in range(1, n + 1)
        for tc_name in ("default", "exempt")
    ]


def create_ops(n: int) -> list[ClassOp]:
    """bwenforcer's ops that add every slice's classes."""
    return [
        ClassOp("create", xid, tc_name, ClassRates(8_000, CAP_BPS, 1))  # type: ignore[arg-type]
        for xid in range(1, n + 1)
        for tc_name in ("default", "exempt")
    ]


# Every slice over its threshold (0) with a budget whose spread over the rest of the
# period lies between the min and max rate: each cycle a little later gives every
# class a new ceil, so a capped cycle changes all 2N classes.
CAPPED_RSPEC = (
    "{net_max_kbyte: 10000000, net_thresh_kbyte: 0,"
    " net_i2_max_kbyte: 20000000, net_i2_thresh_kbyte: 0}"
)
CAPPED_STEP_S = 60  # later by this much each capped cycle: ≥ 1 byte/s less ceil


def write_cycle_config(
    tmp: Path, n: int, capped: bool, dev: str = DEV, *, extra: str = "", settings: str = ""
) -> Path:
    """A config + slices file for `n` slices; all over their threshold when ``capped``;
    ``extra``: more rspec attributes for every slice (``key: value, …``); ``settings``:
    more lines of the config.
    """
    rspec = CAPPED_RSPEC if capped else "{}"
    if extra:
        rspec = f"{rspec[:-1]}{', ' if rspec != '{}' else ''}{extra}}}"
    slices = "\n".join(f"  - {{name: s{x}, xid: {x}, rspec: {rspec}}}" for x in range(1, n + 1))
    (tmp / "slices.yaml").write_text("slices:\n" + slices + "\n")
    cfg = tmp / "bwenforcer.yaml"
    cfg.write_text(
        f"device: {dev}\nnode_cap: {CAP_BPS // 1000}kbit\nbwmax: {BWMAX_BPS // 1000}kbit\n"
        f"state_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        f"metrics: {{listen: null, textfile: {tmp}/bwenforcer.prom}}\n{settings}"
    )
    return cfg


def run_sync(ns: Namespace, cfg: Path) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one whole `bwenforcer sync` process."""
    del ns  # this process is in the namespace already; its children are too
    rc, wall, rss_kib, err = launched([str(VENV_BIN / "bwenforcer"), "--config", str(cfg), "sync"])
    if rc not in (0, 1):
        raise SystemExit(f"sync failed (exit {rc}): {err.strip()[:300]}")
    return wall, rss_kib


def build_figures(ns: Namespace, n: int, runs: int) -> dict[str, float]:
    """(e) the tree built from nothing, bwenforcer and `tc -batch` in turns."""
    build = tc_build_script(n, CAP_BPS // 1000)

    def reset() -> None:
        subprocess.run(
            ["tc", "-n", ns.name, "qdisc", "del", "dev", DEV, "root"],
            capture_output=True,
            check=False,
        )

    tc_times, our_times = [], []
    for _ in range(runs):
        reset()
        tc_times.append(median_s(lambda: ns.tc("-batch", "-", stdin=build), 1))
        reset()
        with HtbBackend(DEV) as kernel:
            start = time.perf_counter()
            kernel.init(CAP_BPS, BWMAX_BPS)
            failures = kernel.apply(create_ops(n))
            our_times.append(time.perf_counter() - start)
            assert not failures, failures[:3]
    return {"build_tc_s": statistics.median(tc_times), "build_s": statistics.median(our_times)}


def backend_figures(ns: Namespace, n: int, runs: int) -> dict[str, float]:
    """(a) one dump vs `tc -s class show`; (b) every ceil changed vs `tc -batch`."""
    out: dict[str, float] = {}
    with HtbBackend(DEV) as kernel:
        out["dump_s"], out["dump_tc_s"] = paired(
            lambda i: kernel.dump(), lambda i: ns.tc("-s", "class", "show", "dev", DEV), runs
        )
        assert len(kernel.dump().slices) >= n
        scripts = [change_ops(n, 400_000_000 + 8000 * i) for i in range(runs)]
        tc_scripts = [tc_change_script(n, 500_000 + i) for i in range(runs)]
        out["apply_s"], out["apply_tc_s"] = paired(
            lambda i: kernel.apply(scripts[i]),
            lambda i: ns.tc("-batch", "-", stdin=tc_scripts[i]),
            runs,
        )
    return out


def capped_figures(ns: Namespace, tmp: Path, n: int, runs: int) -> dict[str, float]:
    """(c) whole cycles with every slice capped vs `tc -s class show` + `tc -batch`."""
    from bwenforcer.metrics.collector import AgentMetrics

    capped = capped_agent(tmp / "capped", n, DEV, AgentMetrics())
    tc_scripts = [tc_change_script(n, 300_000 + i) for i in range(runs)]
    ours, theirs = paired(
        capped,
        lambda i: (
            ns.tc("-s", "class", "show", "dev", DEV),
            ns.tc("-batch", "-", stdin=tc_scripts[i]),
        ),
        runs,
    )
    return {"cycle_capped_s": ours, "cycle_tc_s": theirs}


def steady_figures(ns: Namespace, tmp: Path, n: int, runs: int) -> dict[str, float]:
    """(d) whole cycles with no change vs `tc -s class show`."""
    from bwenforcer.metrics.collector import AgentMetrics

    steady, close = steady_agent(tmp, n, DEV, AgentMetrics())
    ours, theirs = paired(steady, lambda i: ns.tc("-s", "class", "show", "dev", DEV), runs)
    close()
    return {"cycle_steady_s": ours, "steady_tc_s": theirs}


def steady_agent(
    tmp: Path, n: int, dev: str, metrics: AgentMetrics | None = None, extra: str = ""
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """Run ``i`` of steady cycles (no change) on an ``n``-slice tree on ``dev`` (every
    slice's rspec with ``extra``), observed by ``metrics`` as the daemon does; and the
    agent's close.
    """
    from bwenforcer.cycle.agent import Agent, gc_paused, load_desired
    from bwenforcer.inputs.config import load_config

    tmp.mkdir(exist_ok=True)
    config = load_config(str(write_cycle_config(tmp, n, capped=False, dev=dev, extra=extra)))
    agent, desired = Agent(config), load_desired(config)
    agent.cycle(desired)
    agent.cycle(desired)

    def steady(i: int) -> None:
        with gc_paused():  # as the daemon runs a cycle
            result = agent.cycle(desired)
        if metrics is not None:
            metrics.observe(result)
        assert result.outcome is not None and not result.plan.kernel_ops()

    return steady, agent.close


def process_figures(ns: Namespace, tmp: Path, n: int, runs: int) -> dict[str, float]:
    """A whole `sync` process with no change; (f) the peak RSS of capped ones; (g) saves."""
    from bwenforcer.inputs.config import load_config
    from bwenforcer.store.state import StateStore

    steady_cfg = write_cycle_config(tmp, n, capped=False)
    run_sync(ns, steady_cfg)  # the slices cache and the state, as after a first cron run
    walls = [run_sync(ns, steady_cfg)[0] for _ in range(runs)]
    capped_cfg = write_cycle_config(tmp, n, capped=True)
    rss_kib = max(run_sync(ns, capped_cfg)[1] for _ in range(3))
    store = StateStore(load_config(str(steady_cfg)).state_file)
    state = store.load().state
    return {
        "sync_process_s": statistics.median(walls),
        "sync_peak_rss_kib": rss_kib,
        "state_save_s": median_s(lambda: store.save(state, int(time.time())), runs),
        "state_size_bytes": Path(store.path).stat().st_size,
    }


def capped_agent(
    tmp: Path, n: int, dev: str, metrics: AgentMetrics | None = None, extra: str = ""
) -> Callable[[int], None]:
    """Run ``i`` of capped cycles (every class's ceil changes) on an ``n``-slice tree on
    ``dev`` (every slice's rspec with ``extra``), observed by ``metrics`` as the daemon does.
    """
    from bwenforcer.cycle.agent import Agent, gc_paused, load_desired
    from bwenforcer.inputs.config import load_config

    tmp.mkdir()
    config = load_config(str(write_cycle_config(tmp, n, capped=True, dev=dev, extra=extra)))
    agent, desired = Agent(config), load_desired(config)
    start_s = time.time()
    agent.clock = lambda: start_s
    agent.cycle(desired)

    def capped(i: int) -> None:
        agent.clock = lambda: start_s + CAPPED_STEP_S * (i + 1)
        with gc_paused():  # as the daemon runs a cycle
            result = agent.cycle(desired)
        if metrics is not None:
            metrics.observe(result)
        changed = result.outcome.counts["changed"] if result.outcome else 0
        assert changed == 2 * n and not result.failures, (changed, result.failures[:3])

    return capped


def growth_figures(small: int, large: int, runs: int) -> dict[str, float]:
    """Capped cycles at ``small`` and ``large`` slices timed in turns, on two trees side by
    side in one namespace: how a cycle's cost grows with the slices, under one machine.
    """
    with Namespace() as ns, tempfile.TemporaryDirectory() as tmpdir:
        ns.add_veth("w0", "w1")
        for dev, n in ((DEV, small), ("w0", large)):
            with HtbBackend(dev) as kernel:
                kernel.init(CAP_BPS, BWMAX_BPS)
                assert not kernel.apply(create_ops(n))
        small_cycle = capped_agent(Path(tmpdir) / "small", small, DEV)
        large_cycle = capped_agent(Path(tmpdir) / "large", large, "w0")
        gc.collect()
        large_s, small_s = paired(large_cycle, small_cycle, runs)
    return {"small": small, "large": large, "small_s": small_s, "large_s": large_s}


def window_figures(n: int, runs: int) -> dict[str, float]:
    """The rolling-window row (bench/window.py): steady and capped cycles of ``n`` slices
    with tiers and a 30-day window on every slice against today's (neither), on two trees
    side by side in one namespace, timed in turns; and the two state files' sizes.
    """
    with Namespace() as ns, tempfile.TemporaryDirectory() as tmpdir:
        ns.add_veth("w0", "w1")
        tmp = Path(tmpdir)
        for dev in (DEV, "w0"):
            with HtbBackend(dev) as kernel:
                kernel.init(CAP_BPS, BWMAX_BPS)
                assert not kernel.apply(create_ops(n))
        out: dict[str, float] = {"n": n}
        today = capped_agent(tmp / "capped-today", n, DEV)
        windowed = capped_agent(tmp / "capped-window", n, "w0", extra=window.EXTRA)
        gc.collect()
        out["capped_window_s"], out["capped_today_s"] = paired(windowed, today, runs)
        out["state_today_bytes"] = (tmp / "capped-today" / "state.json").stat().st_size
        out["state_window_bytes"] = (tmp / "capped-window" / "state.json").stat().st_size
        steady_today, close_today = steady_agent(tmp / "steady-today", n, DEV)
        steady_window, close_window = steady_agent(
            tmp / "steady-window", n, "w0", extra=window.EXTRA
        )
        gc.collect()
        out["steady_window_s"], out["steady_today_s"] = paired(steady_window, steady_today, runs)
        close_today()
        close_window()
    out.update(window.state_sizes(n))
    return out


def bench_n(n: int, runs: int, build_runs: int) -> dict[str, float]:
    """Every measurement at one N, each in a heap emptied of what the one before left."""
    out: dict[str, float] = {"n": n}
    with Namespace() as ns, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for figures in (
            lambda: build_figures(ns, n, build_runs),
            lambda: backend_figures(ns, n, runs),
            lambda: capped_figures(ns, tmp, n, runs),
            lambda: steady_figures(ns, tmp, n, runs),
            lambda: process_figures(ns, tmp, n, runs),
        ):
            gc.collect()
            out.update(figures())
    return out


def table(rows: list[dict[str, float]], growth: dict[str, float] | None) -> str:
    """The markdown table of the results."""
    lines = [
        "| N | dump / `tc -s class show` | apply all / `tc -batch` | capped cycle / (show + batch)"
        " | steady cycle / `tc -s class show` | build / `tc -batch` | `sync` process | peak RSS"
        " | state save | state size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} "
            f"| {r['dump_s'] * 1e3:.1f} / {r['dump_tc_s'] * 1e3:.1f} ms = **{r['dump_s'] / r['dump_tc_s']:.2f}×** "
            f"| {r['apply_s'] * 1e3:.1f} / {r['apply_tc_s'] * 1e3:.1f} ms = **{r['apply_s'] / r['apply_tc_s']:.2f}×** "
            f"| {r['cycle_capped_s'] * 1e3:.0f} / {r['cycle_tc_s'] * 1e3:.0f} ms = **{r['cycle_capped_s'] / r['cycle_tc_s']:.2f}×** "
            f"| {r['cycle_steady_s'] * 1e3:.1f} / {r['steady_tc_s'] * 1e3:.1f} ms = **{r['cycle_steady_s'] / r['steady_tc_s']:.2f}×** "
            f"| {r['build_s']:.2f} / {r['build_tc_s']:.2f} s = **{r['build_s'] / r['build_tc_s']:.2f}×** "
            f"| {r['sync_process_s']:.2f} s "
            f"| {r['sync_peak_rss_kib'] / 1024:.0f} MiB "
            f"| {r['state_save_s'] * 1e3:.1f} ms "
            f"| {r['state_size_bytes'] / 1024:.0f} KiB |"
        )
    if growth is not None:
        lines.append("")
        lines.append(
            f"Capped-cycle cost from N = {int(growth['small']):,} to {int(growth['large']):,},"
            f" timed in turns on two trees: {growth['small_s'] * 1e3:.0f} →"
            f" {growth['large_s'] * 1e3:.0f} ms, grows"
            f" **{growth['large_s'] / growth['small_s']:.2f}×** (target ≤ 4.5×)."
        )
    return "\n".join(lines)


def classifier_config(tmp: Path, n: int, mode: str, parent: str | None) -> Path:
    """A config for ``n`` slices marked by ``mode``: uids 1..n from a slices file, or
    n cgroups below ``parent`` found by one pattern (no slices file).
    """
    tmp.mkdir()
    common = (
        f"device: {DEV}\nnode_cap: {CAP_BPS // 1000}kbit\nbwmax: {BWMAX_BPS // 1000}kbit\n"
        f"state_file: {tmp}/state.json\nmetrics: {{listen: null}}\n"
        "classifier: {mode: %s, exempt_prefixes: [198.19.0.0/16]}\n" % mode
    )
    if mode == "uid":
        slices = "\n".join(f"  - {{name: s{x}, xid: {x}, rspec: {{}}}}" for x in range(1, n + 1))
        (tmp / "slices.yaml").write_text("slices:\n" + slices + "\n")
        text = common + f"slices_file: {tmp}/slices.yaml\n"
    else:
        assert parent is not None
        text = common + (
            "slices_file: null\n"
            f"cgroups: {{tenants: [{{match: {os.path.basename(parent)}/machine.slice/*.scope}}]}}\n"
        )
    (tmp / "bwenforcer.yaml").write_text(text)
    return tmp / "bwenforcer.yaml"


def classifier_figures(n: int, runs: int) -> dict[str, float]:
    """Steady whole cycles of ``classifier.mode`` uid and cgroup, ``n`` slices each,
    timed in turns: each agent in a namespace of its own (one table per namespace),
    the process entering the agent's namespace before its cycle, as a node runs.
    """
    from pyroute2 import netns as pyroute2_netns

    from bwenforcer.cycle.agent import Agent, gc_paused, load_desired
    from bwenforcer.inputs.config import load_config
    from bwenforcer.kernel.sandbox import cgroup_sandbox

    with (
        Namespace() as uid_ns,
        Namespace("c") as cg_ns,
        cgroup_sandbox("bwbench") as parent,
        tempfile.TemporaryDirectory() as tmpdir,
    ):
        for i in range(n):
            os.makedirs(os.path.join(parent, "machine.slice", f"s{i + 1}.scope"))
        agents = {}
        for mode, ns in (("uid", uid_ns), ("cgroup", cg_ns)):
            pyroute2_netns.setns(ns.name)
            config = load_config(str(classifier_config(Path(tmpdir) / mode, n, mode, parent)))
            with HtbBackend(DEV) as kernel:
                kernel.init(CAP_BPS, BWMAX_BPS)
            agent, desired = Agent(config), load_desired(config)
            agent.cycle(desired)
            agent.cycle(desired)
            agents[mode] = (ns, agent, desired)

        def steady(mode: str) -> Callable[[int], None]:
            ns, agent, desired = agents[mode]

            def cycle(i: int) -> None:
                pyroute2_netns.setns(ns.name)
                with gc_paused():  # as the daemon runs a cycle
                    result = agent.cycle(desired)
                assert result.result == "ok" and not result.plan.kernel_ops(), result.failures
                assert len(result.plan.live) == n

            return cycle

        gc.collect()
        cgroup_s, uid_s = paired(steady("cgroup"), steady("uid"), runs)
        for _ns, agent, _desired in agents.values():
            agent.close()
    return {"n": n, "uid_s": uid_s, "cgroup_s": cgroup_s}


def classifier_table(rows: list[dict[str, float]]) -> str:
    """The markdown table of the classifier comparison."""
    lines = [
        "| N | steady cycle, classifier `mode: cgroup` / `mode: uid` |",
        "| --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['n']):,} | {r['cgroup_s'] * 1e3:.1f} / {r['uid_s'] * 1e3:.1f} ms"
            f" = **{r['cgroup_s'] / r['uid_s']:.2f}×** (target ≤ 1.1×) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="100,1000,4000", help="comma-separated N")
    parser.add_argument("--runs", type=int, default=15, help="runs per median (≥ 5 for the README)")
    parser.add_argument(
        "--build-runs", type=int, default=9, help="runs per median of the build (seconds each)"
    )
    parser.add_argument(
        "--json",
        default=None,
        help="where the results go (default: results/latest.json, or results/classifiers.json"
        " with --only-classifiers)",
    )
    parser.add_argument(
        "--classifier-sizes",
        default="1000,4000",
        help="comma-separated N of the uid/cgroup classifier comparison (empty: none)",
    )
    parser.add_argument(
        "--only-classifiers", action="store_true", help="run only the classifier comparison"
    )
    parser.add_argument(
        "--aged",
        default="1,10",
        help="ages in years of the aged 4,000-slice histories (fold, reports); '' for none",
    )
    parser.add_argument("--aged-runs", type=int, default=3, help="runs per median (aged)")
    parser.add_argument(
        "--churn-cycles", type=int, default=300, help="cycles of the churn row (0: none)"
    )
    parser.add_argument(
        "--ledger",
        type=int,
        default=40_000,
        help="ledger entries of the ledger row (steady cycle, RSS vs an empty ledger; 0: none)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=4000,
        help="slices of the rolling-window row (tiers and a 30-day window vs neither; 0: none)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (network namespace, HTB)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like an exception, so the namespace of the run is deleted
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = [] if args.only_classifiers else [int(n) for n in args.sizes.split(",") if n]
    if args.json is None:
        name = "classifiers.json" if args.only_classifiers else "latest.json"
        args.json = str(HERE / "results" / name)
    rows = [bench_n(n, args.runs, args.build_runs) for n in sizes]
    growth = growth_figures(1000, 4000, args.runs) if {1000, 4000} <= set(sizes) else None
    classifier_sizes = [int(n) for n in args.classifier_sizes.split(",") if n]
    classifiers = [classifier_figures(n, args.runs) for n in classifier_sizes]
    if rows:
        print(table(rows, growth))
    if classifiers:
        print()
        print(classifier_table(classifiers))
    ages = [] if args.only_classifiers else [int(y) for y in args.aged.split(",") if y]
    aged_rows = [
        aged.aged_figures(
            4000, years, args.aged_runs, aged.AGED_REPORTS.get(years, ("month", "slice"))
        )
        for years in ages
    ]
    if aged_rows:
        print()
        print(aged.aged_table(aged_rows))
    churn = None
    if args.churn_cycles and not args.only_classifiers:
        churn = aged.churn_figures(4000, args.churn_cycles, 0.05)
        print()
        print(aged.churn_line(churn))
    waiting = None
    if args.ledger and not args.only_classifiers:
        waiting = ledger.ledger_figures(4000, args.ledger, 12, 3)
        print(ledger.ledger_line(waiting))
    windowed = None
    if args.window and not args.only_classifiers:
        windowed = window_figures(args.window, args.runs)
        print()
        print(window.window_table(windowed))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    results = {
        "sizes": rows,
        "growth": growth,
        "classifiers": classifiers,
        "aged": aged_rows,
        "churn": churn,
        "ledger": waiting,
        "window": windowed,
    }
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Start-up cost and idle footprint of the agent, each beside the bare interpreter measured in the same run.

1. ``dock-agent --help`` wall time (subprocess, output discarded), median of --runs, interleaved with the
   baseline ``python -c pass`` run by the same interpreter as the console script (its shebang). Reported:
   medians, the difference and the ratio. Measured twice: in the inherited environment (here that may
   include PYTHONDONTWRITEBYTECODE=1, so the project's own modules are compiled on every start), and with a
   warm bytecode cache kept in a temp dir (PYTHONPYCACHEPREFIX; nothing is written into the source tree).
   Target (reported, not asserted): < 300 ms.
2. Idle RSS of ``dock-agent run`` with one serial scanner on a pty: after sd_notify READY=1 and --idle
   seconds, VmRSS from /proc/PID/status (target < 60 MB), beside the RSS of
   ``python -c "import time; time.sleep(...)"`` read after the same wait. Median of --rss-repeats.
3. Heavy modules in the running agent: /proc/PID/maps searched for cv2/opencv, evdev, pyzbar/zbar, paho (and
   numpy, which cv2 drags in). paho is pure Python and never appears in maps, so a second agent run with
   PYTHONPROFILEIMPORTTIME=1 lists every module it imported up to the same idle point. Expected: none.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import (  # noqa: E402
    ROOT,
    Agent,
    agent_exe,
    choose_base_dir,
    die_with_parent,
    install_signal_cleanup,
    ratio,
    script_interpreter,
    stop_process,
    vm_status,
    work_dir,
)

TARGET_HELP_MS = 300.0
TARGET_RSS_MB = 60.0
# Top-level module names (importtime) and file-name fragments (maps) that must not be in a serial-only agent.
HEAVY = {
    "cv2": ("cv2", "opencv"),
    "evdev": ("evdev",),
    "pyzbar": ("pyzbar", "libzbar"),
    "paho": ("paho",),
    "numpy": ("numpy",),
}


def time_cmd(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, cwd=ROOT, check=True, timeout=60)
    return (time.perf_counter() - t0) * 1000


def help_times(exe: str, python: str, runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Interleaved ``dock-agent --help`` / ``python -c pass`` wall times in ms, after 2 untimed runs each."""
    ours_cmd, base_cmd = [exe, "--help"], [python, "-c", "pass"]
    for _ in range(2):
        time_cmd(ours_cmd, env)
        time_cmd(base_cmd, env)
    ours, base = [], []
    for i in range(runs):
        pair = ((ours_cmd, ours), (base_cmd, base)) if i % 2 == 0 else ((base_cmd, base), (ours_cmd, ours))
        for argv, out in pair:
            out.append(time_cmd(argv, env))
    return ours, base


def heavy_in_maps(pid: int) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {k: set() for k in HEAVY}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            path = parts[5].strip() if len(parts) == 6 else ""
            low = path.lower()
            for name, frags in HEAVY.items():
                if any(fr in low for fr in frags):
                    found[name].add(path)
    return {k: sorted(v) for k, v in found.items()}


_IMPORT_LINE = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s*(\S+)\s*$")


def imported_modules(log: str) -> set[str]:
    return {m.group(1) for line in log.splitlines() if (m := _IMPORT_LINE.match(line))}


def idle_agent(base: Path, idle_s: float, extra_env: dict[str, str] | None = None
               ) -> tuple[dict[str, int], dict[str, list[str]], float, str]:
    """Start an agent, wait READY + idle, return (/proc status Vm*, heavy maps, seconds to READY, log)."""
    with work_dir(base, "dock-bench-startup") as work:
        agent = Agent(work, extra_env)
        try:
            agent.start()
            time.sleep(idle_s)
            if agent.proc is None or agent.proc.poll() is not None:
                raise RuntimeError(f"agent exited while idle\n{agent.log_tail()}")
            vm = vm_status(agent.pid)
            maps = heavy_in_maps(agent.pid)
        finally:
            agent.close()
        return vm, maps, agent.ready_s, agent.log_path.read_text(errors="replace")


def idle_python(python: str, idle_s: float) -> dict[str, int]:
    proc = subprocess.Popen([python, "-c", f"import time; time.sleep({max(5.0, idle_s + 2):g})"],
                            stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=die_with_parent)
    try:
        time.sleep(idle_s)
        return vm_status(proc.pid)
    finally:
        stop_process(proc, 5)


def mb(kb: float) -> float:
    return kb / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="dock-agent --help wall time and idle RSS of 'dock-agent run', vs the bare interpreter.",
    )
    ap.add_argument("--runs", type=int, default=20, help="timed --help runs (and baseline runs) (default 20)")
    ap.add_argument("--rss-repeats", type=int, default=3, help="agent/baseline RSS samples (default 3)")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds idle after READY before reading RSS (3)")
    ap.add_argument("--dir", default=None, metavar="DIR",
                    help="where temp state directories go (default: /var/tmp, else bench/; never a tmpfs)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.rss_repeats < 1 or args.idle < 0:
        ap.error("--runs and --rss-repeats must be >= 1, --idle >= 0")
    install_signal_cleanup()

    exe = str(agent_exe())
    python = script_interpreter(Path(exe))
    base = choose_base_dir(args.dir)
    env = dict(os.environ)
    print(f"startup: {exe} (interpreter {python}); cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}")
    print(f"  inherited PYTHONDONTWRITEBYTECODE={env.get('PYTHONDONTWRITEBYTECODE', '')!r} "
          f"PYTHONPYCACHEPREFIX={env.get('PYTHONPYCACHEPREFIX', '')!r}")

    # 1. --help wall time
    ours, bare = help_times(exe, python, args.runs, env)
    h_ours, h_bare = statistics.median(ours), statistics.median(bare)
    print(f"--help wall time, median of {args.runs} (inherited environment):")
    print(f"  dock-agent --help   {h_ours:7.1f} ms  (min {min(ours):.1f}, max {max(ours):.1f})")
    print(f"  python -c pass      {h_bare:7.1f} ms  (min {min(bare):.1f}, max {max(bare):.1f})")
    print(f"  difference {h_ours - h_bare:+.1f} ms, ratio {ratio(h_ours, h_bare):.1f}x; target < "
          f"{TARGET_HELP_MS:g} ms: {'meets' if h_ours < TARGET_HELP_MS else 'MISSES'}")
    with work_dir(base, "dock-bench-pycache") as cache:
        cenv = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cenv["PYTHONPYCACHEPREFIX"] = str(cache)
        c_ours, c_bare = help_times(exe, python, args.runs, cenv)
    hc_ours, hc_bare = statistics.median(c_ours), statistics.median(c_bare)
    print(f"--help wall time, median of {args.runs} (warm bytecode cache in a temp PYTHONPYCACHEPREFIX):")
    print(f"  dock-agent --help   {hc_ours:7.1f} ms   python -c pass {hc_bare:7.1f} ms   "
          f"difference {hc_ours - hc_bare:+.1f} ms, ratio {ratio(hc_ours, hc_bare):.1f}x")

    # 2. idle RSS, agent and bare interpreter alternating
    a_rss, a_hwm, b_rss, ready = [], [], [], []
    heavy_maps: dict[str, set[str]] = {k: set() for k in HEAVY}
    for r in range(args.rss_repeats):
        for which in (("agent", "python") if r % 2 == 0 else ("python", "agent")):
            if which == "agent":
                vm, maps, ready_s, _ = idle_agent(base, args.idle)
                a_rss.append(vm["VmRSS"])
                a_hwm.append(vm.get("VmHWM", 0))
                ready.append(ready_s)
                for k, v in maps.items():
                    heavy_maps[k].update(v)
                print(f"  repeat {r + 1} agent  VmRSS {mb(vm['VmRSS']):6.1f} MB "
                      f"(VmHWM {mb(vm.get('VmHWM', 0)):.1f} MB), READY after {ready_s:.2f} s")
            else:
                vm = idle_python(python, args.idle)
                b_rss.append(vm["VmRSS"])
                print(f"  repeat {r + 1} python VmRSS {mb(vm['VmRSS']):6.1f} MB")
    rss, rss_bare = mb(statistics.median(a_rss)), mb(statistics.median(b_rss))
    print(f"idle RSS after READY + {args.idle:g} s, median of {args.rss_repeats}:")
    hwm = mb(statistics.median(a_hwm))
    print(f"  dock-agent run (1 serial scanner on a pty)  {rss:6.1f} MB  (VmHWM {hwm:.1f} MB)")
    print(f"  python -c 'time.sleep(...)'                 {rss_bare:6.1f} MB")
    print(f"  difference {rss - rss_bare:+.1f} MB, ratio {ratio(rss, rss_bare):.1f}x; "
          f"target < {TARGET_RSS_MB:g} MB: {'meets' if rss < TARGET_RSS_MB else 'MISSES'}")
    print(f"  (informational) seconds from spawn to READY=1: median {statistics.median(ready):.2f} s")

    # 3. heavy modules: maps of the measured agents, then an import trace of one more agent
    _, _, _, log = idle_agent(base, args.idle, {"PYTHONPROFILEIMPORTTIME": "1"})
    mods = imported_modules(log)
    if not mods:
        print("  WARNING: no import trace found in the agent's log; import check incomplete")
    heavy_imports = {k: sorted(m for m in mods if m == k or m.startswith(k + ".")) for k in HEAVY}
    print(f"heavy modules in the running agent ({len(mods)} modules imported in total):")
    loaded = []
    for name in HEAVY:
        in_maps, in_imports = sorted(heavy_maps[name]), heavy_imports[name]
        if in_maps or in_imports:
            loaded.append(name)
        where = []
        if in_maps:
            where.append(f"maps: {', '.join(in_maps[:3])}{' ...' if len(in_maps) > 3 else ''}")
        if in_imports:
            where.append(f"imported: {', '.join(in_imports[:5])}{' ...' if len(in_imports) > 5 else ''}")
        state = "LOADED  " + "; ".join(where) if where else "not loaded (maps and import trace)"
        print(f"  {name:7} {state}")
    heavy_txt = "none" if not loaded else "LOADED " + ",".join(loaded)

    print(f"startup: --help {h_ours:.0f} ms (baseline {h_bare:.0f} ms, {h_ours - h_bare:+.0f} ms, "
          f"ratio {ratio(h_ours, h_bare):.1f}x; target < {TARGET_HELP_MS:g} ms); idle RSS {rss:.1f} MB "
          f"(baseline {rss_bare:.1f} MB, ratio {ratio(rss, rss_bare):.1f}x; target < {TARGET_RSS_MB:g} MB); "
          f"heavy modules: {heavy_txt} (expected none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

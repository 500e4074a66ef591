#!/usr/bin/env python3
"""Scan-to-feedback latency of the real agent over a pseudo-terminal, beside the floor cost of the same work.

OURS: ``dock-agent run`` as a real process with one serial scanner on a pty (good=06, bad=15). In lockstep,
the scanner end writes one frame (a valid IMcb plus CR) and the clock runs until the agent's 0x06 (written
only after the scan's COMMIT) is read back.

BASELINE (same run, same directory): one Python loop doing the least that path can cost: write the same
frame into a pty, read it on the other side, BEGIN IMMEDIATE / INSERT a comparable row / COMMIT
(WAL, synchronous=FULL, no indexes), write 0x06 back through the pty and read it on the scanner end.

Each repeat starts a fresh agent on a fresh state directory, waits for sd_notify READY=1 and for the port to
be open, and warms each side up with untimed scans (at least --warmup, and on until that side's WAL file has
stopped growing: the steady state of a long-running agent, see _benchlib.warm_until_wal_steady). Then the
--n timed scans of each side run in alternating blocks of --block, so that both see the same machine load.
Percentiles (p50/p95/p99/max) are taken per repeat; the medians over --repeats are reported with the ratio
ours/baseline. Afterwards the agent's database must hold every acknowledged scan.
Target (reported, not asserted): p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _benchlib import (  # noqa: E402
    GOOD,
    PCTS,
    Agent,
    PtyPort,
    bare_commit,
    bare_connect,
    bare_row,
    barcode,
    blocks,
    choose_base_dir,
    describe_fs,
    install_signal_cleanup,
    median_of,
    ratio,
    summarize_ms,
    warm_until_wal_steady,
    work_dir,
)

TARGET_P99_MS = 100.0
FEEDBACK_TIMEOUT_S = 10.0


def read_until(port: PtyPort, fd: int, want: bytes, timeout_s: float) -> bytes:
    """Read from ``fd`` until what was read ends with ``want`` (or time out); returns what was read."""
    got = b""
    deadline = time.monotonic() + timeout_s
    while not got.endswith(want):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got += port.read_some(fd, left)
    return got


class AgentSide:
    """Lockstep scans against the running agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sent = 0

    def scan(self, n: int) -> int:
        frame = barcode(n).encode() + b"\r"
        port = self.agent.port
        t0 = time.perf_counter_ns()
        port.write(frame)
        got = read_until(port, port.master, GOOD, FEEDBACK_TIMEOUT_S)
        dt = time.perf_counter_ns() - t0
        if got != GOOD:
            raise RuntimeError(f"scan of {barcode(n)}: expected {GOOD!r} within {FEEDBACK_TIMEOUT_S} s, got "
                               f"{got!r}; {self.agent.diagnose()}\n"
                               f"--- agent log tail ---\n{self.agent.log_tail()}")
        self.sent += 1
        return dt


class BaselineSide:
    """Frame through a pty, commit a comparable row, one byte back through the pty: all in one loop."""

    def __init__(self, work: Path) -> None:
        self.port = PtyPort(work, "ttyBaseline")
        self.db = work / "bare.db"
        self.conn = bare_connect(self.db)

    def scan(self, n: int) -> int:
        frame = barcode(n).encode() + b"\r"
        row = bare_row(n)  # built before the clock starts
        port = self.port
        t0 = time.perf_counter_ns()
        port.write(frame)
        got = read_until(port, port.slave, b"\r", FEEDBACK_TIMEOUT_S)  # the "agent" reads the frame
        bare_commit(self.conn, row)
        os.write(port.slave, GOOD)
        back = read_until(port, port.master, GOOD, FEEDBACK_TIMEOUT_S)
        dt = time.perf_counter_ns() - t0
        if got != frame or back != GOOD:
            raise RuntimeError(f"baseline scan of {barcode(n)}: pty round trip gave {got!r} / {back!r}")
        return dt

    def close(self) -> None:
        self.conn.close()
        self.port.close()


def count_scans(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM scans").fetchone()[0]
    finally:
        conn.close()


def one_repeat(base: Path, n: int, warmup: int, block: int, agent_first: bool
               ) -> tuple[list[int], list[int], Agent, tuple[int, int]]:
    """(agent latencies ns, baseline latencies ns, the stopped agent, warm-up scans (ours, baseline))."""
    with work_dir(base, "dock-bench-latency") as work:
        agent = Agent(work)
        bare = BaselineSide(work)
        try:
            agent.start()
            ours_side = AgentSide(agent)
            numbers = itertools.count(1)
            agent_wal = agent.state / "scans.db-wal"
            warm = (
                warm_until_wal_steady(lambda: ours_side.scan(next(numbers)), agent_wal, warmup),
                warm_until_wal_steady(lambda: bare.scan(next(numbers)), Path(f"{bare.db}-wal"), warmup),
            )
            ours: list[int] = []
            base_samples: list[int] = []
            for i, size in enumerate(blocks(n, block)):
                ks = [next(numbers) for _ in range(size)]
                sides = [(ours_side, ours), (bare, base_samples)]
                if (i % 2 == 0) != agent_first:
                    sides.reverse()
                for side, out in sides:
                    out.extend(side.scan(k) for k in ks)
        finally:
            agent.close()
            bare.close()
        stored = count_scans(agent.state / "scans.db")
        if stored != ours_side.sent:
            raise RuntimeError(f"agent acknowledged {ours_side.sent} scans but its database holds {stored}")
        return ours, base_samples, agent, warm


def fmt(stats: dict[str, float]) -> str:
    return "  ".join(f"{name} {stats[name]:7.2f}" for name, _ in PCTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Scan-to-feedback latency of the real agent over a pty vs a bare commit + pty round "
                    "trip.",
    )
    ap.add_argument("--n", type=int, default=2000, help="timed scans per repeat and side (default 2000)")
    ap.add_argument("--repeats", "-r", type=int, default=3, help="repeats; medians are reported (default 3)")
    ap.add_argument("--warmup", type=int, default=20,
                    help="untimed scans per side before timing, at least; warm-up goes on until the "
                         "side's WAL has stopped growing (default 20)")
    ap.add_argument("--block", type=int, default=100,
                    help="scans per side before switching to the other side (default 100; 0 = no "
                         "interleaving)")
    ap.add_argument("--dir", default=None, metavar="DIR",
                    help="where temp state directories go (default: /var/tmp, else bench/; never a tmpfs)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.warmup < 0 or args.block < 0:
        ap.error("--n and --repeats must be >= 1, --warmup and --block >= 0")
    install_signal_cleanup()

    base = choose_base_dir(args.dir)
    print(f"scan_latency: {args.n} lockstep scans per side x {args.repeats} repeats, interleaved in "
          f"blocks of {args.block or args.n}, after warm-up to a steady WAL (>= {args.warmup} scans)")
    print(f"  work dir: {describe_fs(base)}")
    print(f"  python: {sys.executable}  cpus: {os.cpu_count()}  load avg: {os.getloadavg()[0]:.2f}")

    ours_runs: list[dict[str, float]] = []
    base_runs: list[dict[str, float]] = []
    for r in range(args.repeats):
        ours, bare, agent, warm = one_repeat(base, args.n, args.warmup, args.block, agent_first=r % 2 == 1)
        ours_runs.append(summarize_ms(ours))
        base_runs.append(summarize_ms(bare))
        print(f"  repeat {r + 1} ours     ms: {fmt(ours_runs[-1])}   (READY {agent.ready_s:.2f} s, "
              f"port open {agent.open_s:.2f} s after spawn; {warm[0]} warm-up scans)")
        print(f"  repeat {r + 1} baseline ms: {fmt(base_runs[-1])}   ({warm[1]} warm-up scans)")

    ours_m, bare_m = median_of(ours_runs), median_of(base_runs)
    print(f"median over {args.repeats} repeats (ms):")
    print(f"  {'':9}{'ours':>10}{'baseline':>10}{'ratio':>9}{'paired':>9}")
    for name, _ in PCTS:
        paired = statistics.median(o[name] / b[name] for o, b in zip(ours_runs, base_runs))
        print(f"  {name:9}{ours_m[name]:10.2f}{bare_m[name]:10.2f}{ratio(ours_m[name], bare_m[name]):8.1f}x"
              f"{paired:8.1f}x")
    print("  (ratio = of the medians; paired = median of the per-repeat ratios)")
    verdict = "meets" if ours_m["p99"] <= TARGET_P99_MS else "MISSES"
    print(f"  target p99 <= {TARGET_P99_MS:g} ms: {verdict} (reported, not asserted)")
    print(f"scan_latency: p99 {ours_m['p99']:.1f} ms (baseline {bare_m['p99']:.1f} ms, "
          f"ratio {ratio(ours_m['p99'], bare_m['p99']):.1f}x; target <= {TARGET_P99_MS:g} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

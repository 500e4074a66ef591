#!/usr/bin/env python3
"""Throughput and per-scan latency of the store's write path, in process, beside a bare SQLite commit.

OURS: a real ``agent.store.Store`` (opened on a fresh temp state directory: migrations, counters file,
ballast), then ``Store.record_scan(ScanInput)`` called --n times, one call timed at a time. The ScanInputs are
built beforehand from ``agent.barcode.parse`` exactly as ``Agent.handle`` builds them, so only the write path
is timed: statvfs free-space check, seq counter (an fsynced counters file every 1000 scans), UUIDv7, RFC 3339
time, JSON fields, and BEGIN IMMEDIATE / INSERT / COMMIT into the real schema (UNIQUE event_id and seq, two
indexes).

BASELINE (same run, same file system): ``sqlite3`` with the same durability settings (autocommit,
WAL, synchronous=FULL), a table of the same columns without indexes or UNIQUE constraints, and rows built
beforehand; the timed part is only BEGIN IMMEDIATE / INSERT / COMMIT.

Each repeat opens a fresh Store and a fresh bare database side by side in one temp directory, warms each up
(at least --warmup writes, and on until its WAL file has stopped growing: the steady state of a long-running
agent, see _benchlib.warm_until_wal_steady), then alternates between them in blocks of --block writes (the
side going first alternates too), so that both see the same machine load. scans/s (writes / time spent in
that side's timed loops), p50, p99 and max are taken per repeat, and their medians over --repeats reported.
The ratios are the medians of the per-repeat ratios. Target (reported, not asserted): ours p50 within 1.5x
of bare.
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
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _benchlib import (  # noqa: E402
    BARE_COLUMNS,
    bare_commit,
    bare_connect,
    bare_row,
    barcode,
    blocks,
    choose_base_dir,
    describe_fs,
    install_signal_cleanup,
    median_of,
    percentile,
    ratio,
    warm_until_wal_steady,
    work_dir,
)

from agent import barcode as barcode_mod  # noqa: E402
from agent.clock import SystemClock  # noqa: E402
from agent.settings import StoreSection  # noqa: E402
from agent.store import SCAN_COLUMNS, ScanInput, Store  # noqa: E402

TARGET_RATIO = 1.5


def scan_inputs(first: int, count: int, clock: SystemClock) -> list[ScanInput]:
    """What the agent's loop passes to the store for each barcode (parse + a verdict), built before timing."""
    out = []
    for n in range(first, first + count):
        raw = barcode(n).encode()
        label = barcode_mod.parse(raw)
        assert not isinstance(label, barcode_mod.Rejection), label
        out.append(ScanInput(
            scanner="door1", raw=raw, barcode=label.normalized, kind=label.kind, symbology=label.symbology,
            fields=dict(label.fields), verdict="unverified", reason="no reference slice: stored for headquarters",
            wall_ns=time.time_ns(), mono_ns=time.monotonic_ns(), clock_synced=clock.synchronized(),
        ))
    return out


def stats(samples_ns: list[int], elapsed_ns: int) -> dict[str, float]:
    s = sorted(v / 1e6 for v in samples_ns)
    return {"scans_s": len(s) / (elapsed_ns / 1e9), "p50": percentile(s, 50), "p99": percentile(s, 99),
            "max": percentile(s, 100)}


def timed(write, items) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
    """Per-call latencies and the elapsed time of the whole loop, in ns."""
    samples = []
    start = time.perf_counter_ns()
    for item in items:
        t0 = time.perf_counter_ns()
        write(item)
        samples.append(time.perf_counter_ns() - t0)
    return samples, time.perf_counter_ns() - start


def one_repeat(base: Path, n: int, warmup: int, block: int, ours_first: bool
               ) -> tuple[dict[str, float], dict[str, float], tuple[int, int]]:
    """A fresh Store and a fresh bare database side by side; timed writes alternate between them in blocks.
    Returns (ours stats, bare stats, warm-up writes (ours, bare))."""
    with work_dir(base, "dock-bench-write") as work:
        clock = SystemClock()
        store = Store(work / "state", "dock-example-01", StoreSection(), clock)
        store.open()
        bare_db = work / "bare.db"
        conn = bare_connect(bare_db)
        try:
            numbers = itertools.count(1)
            warm = (
                warm_until_wal_steady(
                    lambda: store.record_scan(scan_inputs(next(numbers), 1, clock)[0], mode="normal"),
                    store.db_path.with_name(store.db_path.name + "-wal"), warmup),
                warm_until_wal_steady(lambda: bare_commit(conn, bare_row(next(numbers))),
                                      Path(f"{bare_db}-wal"), warmup),
            )
            first = next(numbers)
            inputs = scan_inputs(first, n, clock)  # built before timing, as are the bare rows
            rows = [bare_row(i) for i in range(first, first + n)]

            def ours_write(scan: ScanInput) -> None:
                store.record_scan(scan, mode="normal")

            def bare_write(row: tuple[object, ...]) -> None:
                bare_commit(conn, row)

            acc: dict[str, tuple[list[int], int]] = {"ours": ([], 0), "bare": ([], 0)}
            pos = 0
            for i, size in enumerate(blocks(n, block)):
                order = [("ours", ours_write, inputs), ("bare", bare_write, rows)]
                if (i % 2 == 0) != ours_first:
                    order.reverse()
                for name, write, items in order:
                    samples, elapsed = timed(write, items[pos:pos + size])
                    acc[name] = (acc[name][0] + samples, acc[name][1] + elapsed)
                pos += size
            assert store.conn is not None
            stored = store.conn.execute("SELECT count(*) FROM scans").fetchone()[0]
            if stored != warm[0] + n:
                raise RuntimeError(f"Store holds {stored} scans, expected {warm[0] + n}")
        finally:
            store.close()
            conn.close()
        return stats(*acc["ours"]), stats(*acc["bare"]), warm


def fmt(s: dict[str, float]) -> str:
    return (f"{s['scans_s']:8.0f} scans/s  p50 {s['p50']:6.3f} ms  p99 {s['p99']:6.3f} ms  "
            f"max {s['max']:7.3f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Store.record_scan in process vs a bare sqlite3 INSERT+COMMIT (WAL, synchronous=FULL).",
    )
    ap.add_argument("--n", type=int, default=2000, help="timed writes per repeat and side (default 2000)")
    ap.add_argument("--repeats", "-r", type=int, default=5, help="repeats; medians are reported (default 5)")
    ap.add_argument("--warmup", type=int, default=50,
                    help="untimed writes per side before timing, at least; warm-up goes on until the "
                         "side's WAL has stopped growing (default 50)")
    ap.add_argument("--block", type=int, default=100,
                    help="writes per side before switching to the other side (default 100; 0 = no "
                         "interleaving)")
    ap.add_argument("--dir", default=None, metavar="DIR",
                    help="where the temp databases live (default: /var/tmp, else bench/; never a tmpfs)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.warmup < 0 or args.block < 0:
        ap.error("--n and --repeats must be >= 1, --warmup and --block >= 0")
    install_signal_cleanup()

    if tuple(SCAN_COLUMNS) != BARE_COLUMNS:
        print(f"NOTE: agent.store.SCAN_COLUMNS changed; the baseline still writes {BARE_COLUMNS}")
    base = choose_base_dir(args.dir)
    print(f"write_path: {args.n} writes per side x {args.repeats} repeats, interleaved in blocks of "
          f"{args.block or args.n}, after warm-up to a steady WAL (>= {args.warmup} writes)")
    print(f"  database dir: {describe_fs(base)}")
    print(f"  python: {sys.executable}  sqlite {sqlite3.sqlite_version}  cpus: {os.cpu_count()}  "
          f"load avg: {os.getloadavg()[0]:.2f}")

    ours_runs: list[dict[str, float]] = []
    bare_runs: list[dict[str, float]] = []
    for r in range(args.repeats):
        o, b, warm = one_repeat(base, args.n, args.warmup, args.block, ours_first=r % 2 == 0)
        ours_runs.append(o)
        bare_runs.append(b)
        print(f"  repeat {r + 1} ours (Store.record_scan): {fmt(o)}   ({warm[0]} warm-up writes)")
        print(f"  repeat {r + 1} bare (INSERT+COMMIT):     {fmt(b)}   ({warm[1]} warm-up writes)  "
              f"p50 ratio {o['p50'] / b['p50']:.2f}x")

    ours, bare = median_of(ours_runs), median_of(bare_runs)
    p50_ratio = statistics.median(o["p50"] / b["p50"] for o, b in zip(ours_runs, bare_runs))
    p99_ratio = statistics.median(o["p99"] / b["p99"] for o, b in zip(ours_runs, bare_runs))
    tput_ratio = statistics.median(b["scans_s"] / o["scans_s"] for o, b in zip(ours_runs, bare_runs))
    print(f"median over {args.repeats} repeats:")
    print(f"  ours: {fmt(ours)}")
    print(f"  bare: {fmt(bare)}")
    print("  ratios ours/bare (median of the per-repeat ratios; each repeat ran both sides interleaved):")
    print(f"    p50 {p50_ratio:.2f}x   p99 {p99_ratio:.2f}x   throughput bare/ours {tput_ratio:.2f}x")
    print(f"  (ratio of the medians above: p50 {ratio(ours['p50'], bare['p50']):.2f}x, "
          f"p99 {ratio(ours['p99'], bare['p99']):.2f}x)")
    verdict = "meets" if p50_ratio <= TARGET_RATIO else "MISSES"
    print(f"  target p50 within {TARGET_RATIO}x of bare: {verdict} (reported, not asserted)")
    print(f"write_path: p50 {ours['p50']:.3f} ms, {ours['scans_s']:.0f} scans/s "
          f"(baseline {bare['p50']:.3f} ms, {bare['scans_s']:.0f} scans/s; "
          f"p50 ratio {p50_ratio:.2f}x paired; target <= {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""After a 72-hour outage: how fast the backlog drains, and what the drain does to live scans.

The same scenario as tests/test_sync_outage.py, at full size by default and with figures only:

1. OUTAGE (in process): --scans scans (default 250,000) go through the agent's own path (``Agent.handle`` ->
   barcode grammar -> verdict -> ``Store.record_scan``, one transaction each) on a FakeClock advanced evenly
   over 72 h, into the state directory of the agent started next. For speed this set-up runs the connection
   with ``synchronous = OFF`` (identical rows, no fsync per commit); ``--setup-fsync`` keeps FULL.
2. A real Mosquitto rendered from the production template (TLS, ACL; ``dock-scorer broker init`` and
   ``provision``), ``dock-agent run`` on that state directory with a serial scanner on a pty, syncing with
   mutual TLS. No scorer yet: the backlog is held. HELD: --baseline lockstep live scans (pty write -> 0x06).
3. ``dock-scorer run`` starts; the backlog drains. DURING: a live scan every --pace seconds, each timed pty
   write -> 0x06, until no backlog row is undelivered. Drain throughput = backlog / time from the scorer's
   start to the last backlog row acknowledged.
4. AFTER (the baseline: the same agent, link and scorer, no drain): --baseline live scans at the same pace.

Then every backlog and live scan must be at the scorer exactly once, else the harness fails (exit 1).
Reported (never asserted): live p50/p99/max DURING vs AFTER (ratio), and the drain rate. Targets: live p99
<= 50 ms during the drain; drain >= 2,000 scans/s on this box (>= 500/s on a Pi 4). Repeats: --repeats (the
median of each figure is reported); each repeat builds a fresh backlog, broker, scorer and agent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _benchlib import (  # noqa: E402
    GOOD,
    PCTS,
    SCANNER_NAME,
    Agent,
    choose_base_dir,
    describe_fs,
    die_with_parent,
    install_signal_cleanup,
    median_of,
    ratio,
    stop_process,
    summarize_ms,
    work_dir,
)

from agent.clock import FakeClock  # noqa: E402
from agent.loop import Agent as LoopAgent  # noqa: E402
from agent.settings import load_settings  # noqa: E402
from agent.store import Store  # noqa: E402
from drivers.base import RawScan  # noqa: E402
from scorer.provision import init_broker, provision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTAGE_S = 72 * 3600
DEVICE, SITE = "dock-01", "NDC-X"
TARGET_P99_MS = 50.0
TARGET_DRAIN = 2000.0
FEEDBACK_TIMEOUT_S = 10.0


def backlog_code(n: int) -> str:
    return f"99M123456{n:012d}"


def live_code(n: int) -> str:
    return f"99M654321{n:012d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"broker: nothing listens on 127.0.0.1:{port}")


class Broker:
    """Mosquitto from the production template on loopback. Its directory is directly under /tmp: started as
    root, mosquitto drops to user 'mosquitto', which cannot enter a 0700 work directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dock-bench-broker-", dir="/tmp"))
        self.mtls_port, self.password_port = free_port(), free_port()
        self.layout = init_broker(self.root, mtls_port=self.mtls_port, password_port=self.password_port)
        provision(self.root, DEVICE, SITE, broker_url=self.url)
        self.log = open(self.root / "mosquitto.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.layout.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_port(self.mtls_port)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.mtls_port}"

    def client(self, name: str) -> Path:
        return self.layout.clients / name

    def close(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def site_config(work: Path, broker: Broker) -> Path:
    d = broker.client(DEVICE)
    path = work / "site.toml"
    path.write_text(
        f'[site]\ndevice_id = "{DEVICE}"\nfacility = "{SITE}"\n\n'
        "[store]\nwarn_free_mb = 1\nfloor_free_mb = 0.5\nballast_mb = 0\n\n"
        f'[sync]\nenabled = true\nbroker = "{broker.url}"\nca_file = "{broker.layout.pki / "ca.crt"}"\n'
        f'client_cert_file = "{d / "client.crt"}"\nclient_key_file = "{d / "mqtt-client.key"}"\n'
        "reconnect_min_s = 0.2\nreconnect_max_s = 2\n"
    )
    return path


def build_backlog(state: Path, config: Path, n: int, fsync: bool) -> float:
    """``n`` scans over 72 h on a FakeClock, through Agent.handle; returns the seconds it took."""
    clock = FakeClock(wall_ns=time.time_ns() - OUTAGE_S * 1_000_000_000)
    store = Store(state, DEVICE, load_settings(config).store, clock)
    store.open()
    assert store.conn is not None
    if not fsync:
        store.conn.execute("PRAGMA synchronous = OFF")
    loop = LoopAgent(store, [], clock)
    step = OUTAGE_S / n
    t0 = time.perf_counter()
    try:
        for i in range(n):
            clock.advance(step)
            out = loop.handle(RawScan(SCANNER_NAME, backlog_code(i).encode(), clock.monotonic_ns(),
                                      clock.wall_ns()))
            if out.signal != "good":
                raise RuntimeError(f"backlog scan {i} not stored: {out}")
    finally:
        store.close()
    return time.perf_counter() - t0


def query(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def sync_state(agent: Agent) -> dict[str, object]:
    import json

    try:
        return json.loads((agent.state / "status.json").read_text()).get("sync") or {}
    except (OSError, ValueError):
        return {}


class Live:
    """Lockstep live scans on the agent's pty."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sent: list[str] = []

    def scan(self) -> int:
        code = live_code(len(self.sent))
        port = self.agent.port
        got = b""
        t0 = time.perf_counter_ns()
        port.write(code.encode() + b"\r")
        deadline = time.monotonic() + FEEDBACK_TIMEOUT_S
        while not got.endswith(GOOD) and time.monotonic() < deadline:
            got += port.read_some(port.master, deadline - time.monotonic())
        dt = time.perf_counter_ns() - t0
        if not got.endswith(GOOD):
            raise RuntimeError(f"live scan {code}: no 0x06 within {FEEDBACK_TIMEOUT_S} s (got {got!r}); "
                               f"{self.agent.diagnose()}\n--- agent log tail ---\n{self.agent.log_tail()}")
        self.sent.append(code)
        return dt

    def paced(self, n: int, pace_s: float) -> list[int]:
        out = []
        for _ in range(n):
            out.append(self.scan())
            time.sleep(pace_s)
        return out


def one_repeat(base: Path, args: argparse.Namespace) -> dict[str, object]:
    with work_dir(base, "dock-bench-outage") as work:
        broker = Broker()
        agent: Agent | None = None
        scorer: subprocess.Popen[bytes] | None = None
        try:
            config = site_config(work, broker)
            agent = Agent(work)
            agent.argv[agent.argv.index("--config") + 1] = str(config)
            db = agent.state / "scans.db"
            build_s = build_backlog(agent.state, config, args.scans, args.setup_fsync)
            (backlog_max,), = query(db, "SELECT max(seq) FROM scans")
            db_mb = sum(p.stat().st_size for p in agent.state.glob("scans.db*")) / 1e6
            print(f"  outage: {args.scans} scans over 72 h in {build_s:.1f} s ({args.scans / build_s:.0f}/s), "
                  f"database {db_mb:.1f} MB")

            agent.start(60)
            deadline = time.monotonic() + 30
            while sync_state(agent).get("state") != "connected":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agent never connected: {sync_state(agent)}\n{agent.log_tail()}")
                time.sleep(0.05)
            live = Live(agent)
            held = live.paced(args.baseline, args.pace)

            d = broker.client("scorer")
            scorer_db = work / "scorer.db"
            scorer_log = open(work / "scorer.log", "ab")  # noqa: SIM115
            t0 = time.monotonic()
            scorer = subprocess.Popen(
                [str(Path(sys.executable).parent / "dock-scorer"), "run", "--db", str(scorer_db), "--broker",
                 broker.url, "--instance", "hq1", "--ca-file", str(broker.layout.pki / "ca.crt"),
                 "--cert-file", str(d / "client.crt"), "--key-file", str(d / "client.key")],
                stdout=scorer_log, stderr=scorer_log, cwd=ROOT, preexec_fn=die_with_parent)
            scorer_log.close()
            during: list[int] = []
            left, next_poll = args.scans, 0.0
            while left:
                during.append(live.scan())
                time.sleep(args.pace)
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + 0.5
                    (left,), = query(db, "SELECT count(*) FROM scans WHERE delivered_at IS NULL AND seq <= ?",
                                     (backlog_max,))
                    if now - t0 > args.timeout:
                        raise RuntimeError(f"{left} backlog scans undelivered after {args.timeout} s: "
                                           f"{sync_state(agent)}")
            drain_s = time.monotonic() - t0
            after = live.paced(args.baseline, args.pace)

            deadline = time.monotonic() + 30
            while query(db, "SELECT count(*) FROM scans WHERE delivered_at IS NULL")[0][0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"live scans undelivered 30 s after the drain: {sync_state(agent)}")
                time.sleep(0.2)
            total = args.scans + len(live.sent)
            (n_hq, n_ids, n_codes), = query(scorer_db, "SELECT count(*), count(DISTINCT event_id), "
                                                      "count(DISTINCT barcode) FROM events WHERE device_id = ?",
                                            (DEVICE,))
            if not n_hq == n_ids == n_codes == total:
                raise RuntimeError(f"scorer holds {n_hq} events ({n_ids} ids, {n_codes} barcodes); "
                                   f"the dock stored {total}")
        finally:
            if scorer is not None:
                stop_process(scorer)
            if agent is not None:
                agent.close()
            broker.close()
    return {"build_s": build_s, "drain_s": drain_s, "rate": args.scans / drain_s, "db_mb": db_mb,
            "held": summarize_ms(held), "during": summarize_ms(during), "after": summarize_ms(after),
            "n_during": len(during)}


def fmt(stats: dict[str, float]) -> str:
    return "  ".join(f"{name} {stats[name]:7.1f}" for name, _ in PCTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Backlog drain after a 72 h outage and live-scan latency during "
                                             "it, against live-scan latency without a drain.")
    ap.add_argument("--scans", type=int, default=250_000, help="backlog size (default 250000)")
    ap.add_argument("--repeats", "-r", type=int, default=1, help="repeats; medians are reported (default 1)")
    ap.add_argument("--pace", type=float, default=0.02, help="seconds between live scans (default 0.02)")
    ap.add_argument("--baseline", type=int, default=500,
                    help="live scans without a drain, before (held) and after it (default 500)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the drain after this (s)")
    ap.add_argument("--setup-fsync", action="store_true", help="build the backlog with synchronous=FULL")
    ap.add_argument("--dir", default=None, metavar="DIR",
                    help="where temp state directories go (default: /var/tmp, else bench/; never a tmpfs)")
    args = ap.parse_args(argv)
    if args.scans < 1 or args.repeats < 1 or args.baseline < 1 or args.pace < 0:
        ap.error("--scans, --repeats and --baseline must be >= 1, --pace >= 0")
    if shutil.which("mosquitto") is None:
        raise SystemExit("mosquitto is not installed; run scripts/setup")
    install_signal_cleanup()

    base = choose_base_dir(args.dir)
    print(f"outage_drain: {args.scans} backlog scans over 72 h, live scan every {args.pace * 1000:.0f} ms "
          f"during the drain, {args.baseline} without one, x {args.repeats} repeats")
    print(f"  work dir: {describe_fs(base)}")
    print(f"  python: {sys.executable}  cpus: {os.cpu_count()}  load avg: {os.getloadavg()[0]:.2f}")
    runs = []
    for r in range(args.repeats):
        res = one_repeat(base, args)
        runs.append(res)
        print(f"  repeat {r + 1}: drain {res['drain_s']:.1f} s = {res['rate']:.0f} scans/s; live ms "
              f"(n={res['n_during']}) during: {fmt(res['during'])}")
        print(f"  repeat {r + 1}: live ms after (no drain): {fmt(res['after'])};  "
              f"held (no scorer): {fmt(res['held'])}")
    during = median_of([r["during"] for r in runs])
    after = median_of([r["after"] for r in runs])
    held = median_of([r["held"] for r in runs])
    rate = statistics.median(r["rate"] for r in runs)
    print(f"median over {args.repeats} repeat(s) (ms):")
    print(f"  {'':6}{'during':>10}{'after':>10}{'ratio':>9}{'held':>10}")
    for name, _ in PCTS:
        print(f"  {name:6}{during[name]:10.1f}{after[name]:10.1f}{ratio(during[name], after[name]):8.1f}x"
              f"{held[name]:10.1f}")
    print(f"  target live p99 <= {TARGET_P99_MS:g} ms during the drain: "
          f"{'meets' if during['p99'] <= TARGET_P99_MS else 'MISSES'}; drain >= {TARGET_DRAIN:g} scans/s: "
          f"{'meets' if rate >= TARGET_DRAIN else 'MISSES'} (reported, not asserted)")
    print(f"outage_drain: live p99 {during['p99']:.1f} ms during the drain (no drain {after['p99']:.1f} ms, "
          f"ratio {ratio(during['p99'], after['p99']):.1f}x; target <= {TARGET_P99_MS:g} ms), drain "
          f"{rate:.0f} scans/s (target >= {TARGET_DRAIN:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

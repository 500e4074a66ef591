#!/usr/bin/env python3
"""Backlog drain end to end: --n buffered scans from a dock's outbox to the scorer's database and back as
"delivered", beside raw mosquitto_pub -> mosquitto_sub moving the same bytes through the same broker.

SET-UP (once per run, untimed): a real Mosquitto from the production template
(``scorer.provision.init_broker`` and ``provision``: TLS with client certificates, the ACL; as
tests/mqtt_fixtures.py does, without needing pytest). A template state directory is filled with --n real
scans by ``agent.store.Store.record_scan`` (barcodes parsed by ``agent.barcode.parse`` as the agent parses a
read, verdict "unverified"; fsync is off for the fill only, which changes nothing in the rows). The bytes of
the baseline are the agent's own batch payloads: the template's backlog is run once through
``sync.outbox.Outbox`` with a capturing publish function and this broker's packet limit, exactly as the agent
packs it (only ``sent_at`` differs).

OURS: a fresh copy of the template state directory, a fresh ``dock-scorer run`` (SQLite, group commit, acks
after COMMIT) connected first, then ``dock-agent run`` on the copy with an absent serial scanner, so that the
agent only drains. Timed from the agent's "scorer ... online; draining the backlog" log line (the first batch
leaves on that loop pass) until no row of its ``scans`` is undelivered (polled every --poll s); the time from
spawning the agent is reported too. Two configurations: "tuned" (the [sync] settings --rate and --inflight,
above the defaults) and "default" (the shipped [sync] defaults), unless --no-default. After each drain the
scorer's database must hold exactly the --n event ids of the dock, each once, and the agent none undelivered.

BASELINE (same broker, same TLS listener, same run): ``mosquitto_sub -V mqttv5 -q 1 -C <messages>``
subscribed first, then ``mosquitto_pub -V mqttv5 -q 1 -l`` sending the captured payloads one per line, both
authenticating with the scorer identity's certificate on a topic its ACL lets it read and write (hq/...).
Timed from spawning mosquitto_pub until mosquitto_sub has received the last message; the received payload
bytes are checked. Reported as MB/s and as scans/s-equivalent (--n / seconds).

Each repeat runs the baseline and both configurations, in an order that rotates between repeats; medians
over --repeats are reported, with the ratio ours/raw (median of the per-repeat ratios). Targets (reported,
never asserted): >= 5,000 scans/s end to end and >= 0.3x the raw figure.

WHERE THE TIME GOES (printed per drain): when the scorer's first and last rows were committed (its database,
polled with the agent's), the CPU seconds of the agent, the scorer and the broker during the drain, the
seconds their threads were runnable but waiting for a CPU (/proc/PID/task/*/schedstat: other load on a
shared machine), and the share of the drain during which each process's busiest thread was on a CPU or
waiting for one (~100% = that thread is the bottleneck). CPU microseconds per scan are summed up at the end:
unlike the wall-clock figures they barely depend on the machine's load. The agent and the scorer share this
machine's CPUs here; in production they run on different machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _benchlib import (  # noqa: E402
    ROOT,
    NotifySocket,
    agent_exe,
    barcode,
    choose_base_dir,
    describe_fs,
    die_with_parent,
    install_signal_cleanup,
    ratio,
    stop_process,
    work_dir,
)

from agent import barcode as barcode_mod  # noqa: E402
from agent.clock import SystemClock  # noqa: E402
from agent.settings import StoreSection, SyncSection  # noqa: E402
from agent.store import ScanInput, Store  # noqa: E402
from scorer.provision import init_broker, provision  # noqa: E402
from sync.outbox import Outbox, OutboxSettings  # noqa: E402
from sync.topics import DockTopics  # noqa: E402

DEVICE, SITE, INSTANCE = "dock-bench-01", "NDC-BENCH", "hq1"
HOST = "127.0.0.1"
MAX_PACKET = 262144  # init_broker's (and `dock-scorer broker init`'s) default max_packet_size
RAW_TOPIC = "hq/bench/sync-drain"  # acl.scorer: topic readwrite hq/#
TARGET_RATE, TARGET_RATIO = 5000.0, 0.3
WATCHDOG_USEC = "30000000"  # systemd/dock-agent.service: WatchdogSec=30
DRAIN_LINE = "online; draining the backlog"  # logged by Outbox.scorer_state just before the first pump
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What the agent stores for a container placard while no reference slice is loaded (the verdict does not
# change the drain: every row travels the same way).
VERDICT, REASON = "unverified", "no reference slice loaded; stored for headquarters to check"


# -- small helpers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of a live process: (seconds on a CPU, seconds runnable but waiting for one), from
    /proc/PID/task/TID/schedstat."""
    out: dict[int, tuple[float, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                run_ns, wait_ns = Path(task, "schedstat").read_text().split()[:2]
                out[int(task.name)] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def sched_delta(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
                ) -> tuple[float, float, float]:
    """(CPU s, waiting-for-a-CPU s, busiest thread's CPU + wait s) between two ``sched`` samples."""
    cpu = wait = busiest = 0.0
    for tid, (run, waited) in after.items():
        run0, wait0 = before.get(tid, (0.0, 0.0))
        cpu += run - run0
        wait += waited - wait0
        busiest = max(busiest, run - run0 + waited - wait0)
    return cpu, wait, busiest


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_text(path: Path, text: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                  interval_s: float = 0.005) -> float:
    """Poll a log file until it contains ``text``; returns perf_counter() when seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return time.perf_counter()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode} before logging "
                               f"{text!r}\n{tail(path)}")
        time.sleep(interval_s)
    raise RuntimeError(f"{path.name}: no {text!r} within {timeout_s} s\n{tail(path)}")


def spawn(argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    """A child with its output in ``log``, killed if this benchmark dies (stopped by its pid otherwise)."""
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdin=kw.pop("stdin", subprocess.DEVNULL), stdout=f, stderr=f, cwd=ROOT,
                                preexec_fn=die_with_parent, **kw)


# -- the broker -------------------------------------------------------------------------------------------


class BenchBroker:
    """Mosquitto from the production template with one provisioned dock (certificate login)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mtls_port, self.password_port = free_port(), free_port()
        self.layout = init_broker(root, host=HOST, mtls_port=self.mtls_port, password_port=self.password_port,
                                  max_packet=MAX_PACKET)
        provision(root, DEVICE, SITE, password=False, broker_url=self.url)
        self.log = root / "mosquitto.log"
        self.proc = spawn(["mosquitto", "-c", str(self.layout.conf)], self.log)
        wait_port(self.mtls_port)

    @property
    def url(self) -> str:
        return f"mqtts://{HOST}:{self.mtls_port}"

    @property
    def ca(self) -> Path:
        return self.layout.pki / "ca.crt"

    def client(self, who: str) -> Path:
        return self.layout.clients / who

    @staticmethod
    def version() -> str:
        try:
            out = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, timeout=10,
                                 check=False).stdout
            return out.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError, IndexError):
            return "mosquitto (version unknown)"

    def close(self) -> None:
        stop_process(self.proc)


# -- the buffered backlog ---------------------------------------------------------------------------------


def scan_inputs(first: int, count: int, clock: SystemClock) -> list[ScanInput]:
    """ScanInputs for barcode(first) .. barcode(first + count - 1), parsed as the agent parses a read."""
    out = []
    for n in range(first, first + count):
        raw = barcode(n).encode()
        label = barcode_mod.parse(raw)
        if isinstance(label, barcode_mod.Rejection):
            raise RuntimeError(f"{raw!r} no longer parses: {label}")  # noqa: TRY004 (a harness failure)
        out.append(ScanInput(
            scanner="door1", raw=raw, barcode=label.normalized, kind=label.kind, symbology=label.symbology,
            fields=dict(label.fields), verdict=VERDICT, reason=REASON, wall_ns=time.time_ns(),
            mono_ns=time.monotonic_ns(), clock_synced=clock.synchronized(),
        ))
    return out


def fill_template(state: Path, n: int) -> tuple[float, list[bytes]]:
    """``n`` real scans stored by Store.record_scan in ``state``; returns (seconds, the agent's batch payloads
    for this backlog as sync.outbox.Outbox packs them for this broker)."""
    clock = SystemClock()
    store = Store(state, DEVICE, StoreSection(), clock)
    store.open()
    assert store.conn is not None
    store.conn.execute("PRAGMA synchronous = OFF")  # set-up only: the same rows, 20x faster
    t0 = time.perf_counter()
    try:
        for first in range(0, n, 1000):
            for scan in scan_inputs(first, min(1000, n - first), clock):
                store.record_scan(scan, mode="normal")
        seconds = time.perf_counter() - t0
        payloads: list[bytes] = []

        def capture(_topic: str, payload: bytes) -> int:
            payloads.append(payload)
            return len(payloads)

        outbox = Outbox(store, device_id=DEVICE, site=SITE, boot=store.boot,
                        topic=DockTopics(SITE, DEVICE).events, publish=capture, clock=clock,
                        settings=OutboxSettings(max_inflight=10**9, backlog_batches_per_s=1e9))
        outbox.link_up(MAX_PACKET)  # what the agent takes from this broker's CONNACK
        outbox.scorer_state(INSTANCE, True)
        while outbox.pump(time.monotonic()):
            pass
        if outbox.stats.events_sent != n:
            raise RuntimeError(f"packing the backlog gave {outbox.stats.events_sent} events, expected {n}")
    finally:
        store.close()
    return seconds, payloads


def agent_config(path: Path, broker: BenchBroker, extra_sync: str) -> Path:
    d = broker.client(DEVICE)
    path.write_text(
        f'[site]\ndevice_id = "{DEVICE}"\nfacility = "{SITE}"\n\n'
        f'[sync]\nenabled = true\nbroker = "{broker.url}"\nca_file = "{broker.ca}"\n'
        f'client_cert_file = "{d / "client.crt"}"\nclient_key_file = "{d / "mqtt-client.key"}"\n{extra_sync}'
    )
    return path


# -- one end-to-end drain ---------------------------------------------------------------------------------


def scorer_ids(db: Path) -> tuple[int, set[str]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute("SELECT event_id FROM events WHERE device_id = ?", (DEVICE,)).fetchall()
    finally:
        conn.close()
    return len(rows), {r[0] for r in rows}


def agent_ids(db: Path) -> tuple[set[str], int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        ids = {r[0] for r in conn.execute("SELECT event_id FROM scans")}
        undelivered = conn.execute("SELECT count(*) FROM scans WHERE delivered_at IS NULL").fetchone()[0]
    finally:
        conn.close()
    return ids, int(undelivered)


def watch_drain(state: Path, scorer_db: Path, n: int, agent: subprocess.Popen[bytes],
                scorer: subprocess.Popen[bytes], timeout_s: float, poll_s: float, logs: str
                ) -> tuple[float, float, float]:
    """Wait until the agent has no undelivered scan; returns perf_counter() at (the scorer's first commit,
    the scorer holding all ``n``, the agent holding none undelivered)."""
    conn = sqlite3.connect(state / "scans.db", timeout=30)
    hq = sqlite3.connect(scorer_db, timeout=30)
    first = every = math.nan
    try:
        deadline = time.monotonic() + timeout_s
        while conn.execute("SELECT 1 FROM scans WHERE delivered_at IS NULL LIMIT 1").fetchone():
            if math.isnan(every):  # the scorer's progress: its events rowids only grow
                with contextlib.suppress(sqlite3.Error):
                    stored = hq.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
                    now = time.perf_counter()
                    if stored and math.isnan(first):
                        first = now
                    if stored >= n:
                        every = now
            if agent.poll() is not None or scorer.poll() is not None:
                raise RuntimeError(f"agent or scorer exited during the drain\n{logs}")
            if time.monotonic() > deadline:
                left = conn.execute("SELECT count(*) FROM scans WHERE delivered_at IS NULL").fetchone()[0]
                raise RuntimeError(f"{left} of {n} scans still undelivered after {timeout_s:g} s\n{logs}")
            time.sleep(poll_s)
        return first, every, time.perf_counter()
    finally:
        conn.close()
        hq.close()


def drain_once(broker: BenchBroker, template: Path, work: Path, tag: str, extra_sync: str, n: int,
               timeout_s: float, poll_s: float) -> dict[str, float]:
    """One scorer + one agent on a fresh copy of the backlog; returns timings, CPU and resend counts."""
    run = work / tag
    run.mkdir()
    state = run / "state"
    shutil.copytree(template, state)
    config = agent_config(run / "site.toml", broker, extra_sync)
    scorer_db, scorer_log, agent_log = run / "scorer.db", run / "scorer.log", run / "agent.log"
    s = broker.client("scorer")
    scorer = spawn([str(agent_exe().with_name("dock-scorer")), "run", "--db", str(scorer_db), "--broker",
                    broker.url, "--instance", INSTANCE, "--ca-file", str(broker.ca), "--cert-file",
                    str(s / "client.crt"), "--key-file", str(s / "client.key")], scorer_log)
    agent: subprocess.Popen[bytes] | None = None
    notify = NotifySocket(run / "notify.sock")
    try:
        wait_for_text(scorer_log, f"scorer {INSTANCE}: connected", 30, scorer)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=WATCHDOG_USEC)
        env.pop("RUNTIME_DIRECTORY", None)  # status.json goes to the state dir
        env.pop("JOURNAL_STREAM", None)
        argv = [str(agent_exe()), "run", "--config", str(config), "--state-dir", str(state),
                "--scanner", f"serial://{run}/no-such-tty?name=door1"]
        t_spawn = time.perf_counter()
        agent = spawn(argv, agent_log, env=env)
        notify.start()
        notify.wait_for("READY=1", 60, agent)
        t_ready = time.perf_counter()
        t_drain = wait_for_text(agent_log, DRAIN_LINE, 60, agent, interval_s=0.002)
        at_drain = (sched(agent.pid), sched(scorer.pid), cpu_s(broker.proc.pid))
        logs = f"--- agent ---\n{tail(agent_log)}\n--- scorer ---\n{tail(scorer_log)}"
        try:
            t_first, t_all, t_done = watch_drain(state, scorer_db, n, agent, scorer, timeout_s, poll_s, logs)
        except RuntimeError as e:
            raise RuntimeError(f"[{tag}] {e}") from None
        agent_d = sched_delta(at_drain[0], sched(agent.pid))
        scorer_d = sched_delta(at_drain[1], sched(scorer.pid))
        broker_cpu = cpu_s(broker.proc.pid) - at_drain[2]
        status = stop_process(agent)
        if status != 0:
            raise RuntimeError(f"[{tag}] agent exited with status {status} on SIGTERM\n{tail(agent_log)}")
    finally:
        if agent is not None:
            stop_process(agent)
        notify.close()
        stop_process(scorer)
    try:
        sync = json.loads((state / "status.json").read_text()).get("sync") or {}
    except (OSError, ValueError):
        sync = {}
    # Correctness: every buffered scan is in the scorer's database exactly once, and marked delivered.
    ours, undelivered = agent_ids(state / "scans.db")
    rows, theirs = scorer_ids(scorer_db)
    if len(ours) != n or undelivered != 0 or rows != n or theirs != ours:
        raise RuntimeError(f"[{tag}] agent holds {len(ours)} scans ({undelivered} undelivered); scorer holds "
                           f"{rows} rows, {len(theirs)} distinct, {len(theirs & ours)} of the agent's; "
                           f"expected {n} each")
    drain = t_done - t_drain
    shutil.rmtree(run, ignore_errors=True)
    return {
        "scans_s": n / drain, "drain_s": drain, "spawn_scans_s": n / (t_done - t_spawn),
        "total_s": t_done - t_spawn, "ready_s": t_ready - t_spawn, "to_drain_s": t_drain - t_spawn,
        "first_stored_s": t_first - t_drain, "all_stored_s": t_all - t_drain,
        "agent_cpu": agent_d[0], "agent_wait": agent_d[1], "agent_busiest": agent_d[2] / drain,
        "scorer_cpu": scorer_d[0], "scorer_wait": scorer_d[1], "scorer_busiest": scorer_d[2] / drain,
        "broker_cpu": broker_cpu,
        "batches_sent": float(sync.get("batches_sent", math.nan)),
        "resent": float(sync.get("events_sent", math.nan)) - n,
    }


# -- the raw baseline -------------------------------------------------------------------------------------


def raw_once(broker: BenchBroker, lines: Path, count: int, nbytes: int, n: int, work: Path, tag: str,
             timeout_s: float) -> dict[str, float]:
    """mosquitto_sub (subscribed first) <- broker <- mosquitto_pub -l, QoS 1 both ways, scorer identity."""
    s = broker.client("scorer")
    common = ["-V", "mqttv5", "-q", "1", "-h", HOST, "-p", str(broker.mtls_port), "--cafile", str(broker.ca),
              "--cert", str(s / "client.crt"), "--key", str(s / "client.key"), "-t", RAW_TOPIC]
    out, pub_log = work / f"{tag}-sub.out", work / f"{tag}-pub.log"
    cpu0 = children_cpu_s()
    broker0 = cpu_s(broker.proc.pid)
    # -d prints the SUBACK, so the publisher starts only once the subscription is in place; stdbuf -oL makes
    # mosquitto_sub's stdout (a file, so block-buffered) show it at once.
    sub = spawn(["stdbuf", "-oL", "mosquitto_sub", *common, "-C", str(count), "-i",
                 f"bench-sub-{os.getpid()}", "-d"], out)
    pub: subprocess.Popen[bytes] | None = None
    try:
        wait_for_text(out, "Subscribed (mid", 30, sub, interval_s=0.002)
        with open(lines, "rb") as stdin:
            t0 = time.perf_counter()
            pub = spawn(["mosquitto_pub", *common, "-i", f"bench-pub-{os.getpid()}", "-l"], pub_log,
                        stdin=stdin)
        try:
            sub.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"[{tag}] mosquitto_sub did not receive {count} messages within "
                               f"{timeout_s:g} s\n{tail(pub_log)}") from None
        t1 = time.perf_counter()
        broker1 = cpu_s(broker.proc.pid)
        if pub.wait(30) != 0 or sub.returncode != 0:
            raise RuntimeError(f"[{tag}] mosquitto_pub exited {pub.returncode}, mosquitto_sub "
                               f"{sub.returncode}\n{tail(pub_log)}")
    finally:
        if pub is not None:
            stop_process(pub)
        stop_process(sub)
    got = [ln for ln in out.read_bytes().split(b"\n") if ln.startswith(b"{")]
    if len(got) != count or sum(map(len, got)) != nbytes:
        raise RuntimeError(f"[{tag}] mosquitto_sub printed {len(got)} payloads, {sum(map(len, got))} bytes; "
                           f"expected {count}, {nbytes}")
    out.unlink()
    seconds = t1 - t0
    return {"scans_s": n / seconds, "mb_s": nbytes / seconds / 1e6, "seconds": seconds,
            "clients_cpu": children_cpu_s() - cpu0, "broker_cpu": broker1 - broker0}


# -- reporting --------------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the work tree differs from it (the figures depend on both)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"git {head}" + (f" + uncommitted changes in {len(dirty)} tracked files" if dirty else "")


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fmt_drain(r: dict[str, float]) -> str:
    return (f"{r['scans_s']:7,.0f} scans/s  drain {r['drain_s']:6.2f} s (from spawn {r['total_s']:6.2f} s "
            f"= {r['spawn_scans_s']:,.0f}/s; READY {r['ready_s']:.2f} s, first batch "
            f"{r['to_drain_s']:.2f} s)\n"
            f"      scorer: first commit {r['first_stored_s']:.2f} s, all {r['all_stored_s']:.2f} s into the "
            f"drain, last acks {r['drain_s'] - r['all_stored_s']:.2f} s later; "
            f"batches {r['batches_sent']:.0f}, "
            f"events resent {r['resent']:.0f}\n"
            f"      CPU s (waiting for a CPU s): agent {r['agent_cpu']:.1f} ({r['agent_wait']:.1f}), scorer "
            f"{r['scorer_cpu']:.1f} ({r['scorer_wait']:.1f}), broker {r['broker_cpu']:.1f}; busiest thread "
            f"busy: agent {r['agent_busiest']:.0%}, scorer {r['scorer_busiest']:.0%} of the drain")


def fmt_raw(r: dict[str, float]) -> str:
    return (f"{r['scans_s']:7,.0f} scans/s-equivalent  {r['seconds']:6.2f} s  {r['mb_s']:6.1f} MB/s  "
            f"CPU s pub+sub {r['clients_cpu']:4.1f} broker {r['broker_cpu']:4.1f}")


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]], nbytes: int) -> None:
    raw = runs["raw"]
    print(f"median over {args.repeats} repeats (load avg now {os.getloadavg()[0]:.2f}):")
    print(f"  raw (pub -> sub):  {med(raw, 'scans_s'):7,.0f} scans/s-equivalent, {med(raw, 'mb_s'):.1f} MB/s "
          f"({med(raw, 'seconds'):.2f} s for {nbytes / 1e6:.1f} MB; CPU s mosquitto_pub + mosquitto_sub "
          f"{med(raw, 'clients_cpu'):.1f}, broker {med(raw, 'broker_cpu'):.1f})")
    ratios: dict[str, float] = {}
    for name, rs in runs.items():
        if name == "raw":
            continue
        ratios[name] = statistics.median(o["scans_s"] / b["scans_s"] for o, b in zip(rs, raw))
        agent_us, scorer_us = (med(rs, k) / args.n * 1e6 for k in ("agent_cpu", "scorer_cpu"))
        print(f"  ours {name:8}     {med(rs, 'scans_s'):7,.0f} scans/s end to end, "
              f"{med(rs, 'drain_s'):.2f} s "
              f"drain (from spawn {med(rs, 'spawn_scans_s'):,.0f}/s); ratio ours/raw {ratios[name]:.2f}x "
              f"(paired; of the medians {ratio(med(rs, 'scans_s'), med(raw, 'scans_s')):.2f}x)")
        print(f"      scorer held all {args.n:,} after {med(rs, 'all_stored_s'):.2f} s; busiest thread busy "
              f"{med(rs, 'agent_busiest'):.0%} (agent), {med(rs, 'scorer_busiest'):.0%} (scorer) of the "
              f"drain; "
              f"waiting for a CPU {med(rs, 'agent_wait'):.1f} s (agent), {med(rs, 'scorer_wait'):.1f} s "
              f"(scorer)")
        print(f"      CPU per scan: agent {agent_us:.0f} us, scorer {scorer_us:.0f} us, broker "
              f"{med(rs, 'broker_cpu') / args.n * 1e6:.1f} us (one core each: at most "
              f"{1e6 / max(agent_us, scorer_us):,.0f} scans/s)")
    rate, r_tuned = med(runs["tuned"], "scans_s"), ratios["tuned"]
    verdict = {True: "meets", False: "MISSES"}
    print(f"  target >= {TARGET_RATE:,.0f} scans/s end to end: {verdict[rate >= TARGET_RATE]}; target >= "
          f"{TARGET_RATIO}x raw: {verdict[r_tuned >= TARGET_RATIO]} (tuned settings; reported, not asserted)")
    default_note = ""
    if "default" in runs:
        default_note = f"; default settings {med(runs['default'], 'scans_s'):,.0f}/s {ratios['default']:.2f}x"
    print(f"sync_drain: {rate:,.0f} scans/s end to end (raw {med(raw, 'scans_s'):,.0f} scans/s-equivalent, "
          f"ratio {r_tuned:.2f}x; rate {args.rate:g}/s, inflight {args.inflight}{default_note}; targets "
          f">= {TARGET_RATE:,.0f}/s and >= {TARGET_RATIO}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Backlog drain end to end (agent -> broker -> scorer commit -> ack -> delivered) vs raw "
                    "mosquitto_pub/mosquitto_sub moving the same bytes through the same broker.")
    ap.add_argument("--n", type=int, default=100_000, help="buffered scans per drain (default 100000)")
    ap.add_argument("--repeats", "-r", type=int, default=3, help="repeats; medians are reported (default 3)")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="[sync] backlog_batches_per_s of the tuned configuration (default 1000, the most "
                         "the agent accepts)")
    ap.add_argument("--inflight", type=int, default=32,
                    help="[sync] max_inflight of the tuned configuration (default 32)")
    ap.add_argument("--no-default", action="store_true",
                    help="skip the drains with the shipped [sync] defaults")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one drain may take (default 900)")
    ap.add_argument("--poll", type=float, default=0.02,
                    help="seconds between checks of the agent's undelivered rows (default 0.02)")
    ap.add_argument("--dir", default=None, metavar="DIR",
                    help="where state dirs and scorer databases live (default: /var/tmp, else bench/; never "
                         "a tmpfs); the broker's own files go under /tmp, where user mosquitto reaches them")
    args = ap.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.inflight < 1 or args.rate <= 0:
        ap.error("--n, --repeats and --inflight must be >= 1, --rate > 0")
    SyncSection(max_inflight=args.inflight, backlog_batches_per_s=args.rate)  # the agent would refuse it
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub", "openssl", "mosquitto_passwd", "stdbuf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found; scripts/setup installs it")
    install_signal_cleanup()
    defaults = SyncSection()
    configs = [("tuned", f"backlog_batches_per_s = {args.rate:g}\nmax_inflight = {args.inflight}\n")]
    if not args.no_default:
        configs.append(("default", ""))

    base = choose_base_dir(args.dir)
    broker_root = Path(tempfile.mkdtemp(prefix="dock-bench-broker-", dir="/tmp"))
    broker: BenchBroker | None = None
    try:
        with work_dir(base, "dock-bench-drain") as work:
            broker = BenchBroker(broker_root)
            print(f"sync_drain: {args.n:,} buffered scans per drain x {args.repeats} repeats; "
                  f"{BenchBroker.version()} from the production template (TLS, client certificates, ACL), "
                  f"max_packet_size {MAX_PACKET}")
            print(f"  code: {code_version()}")
            print(f"  state dirs and scorer databases: {describe_fs(base)}")
            print(f"  python: {sys.executable}  sqlite {sqlite3.sqlite_version}  cpus: {os.cpu_count()}  "
                  f"load avg: {os.getloadavg()[0]:.2f}")
            print(f"  ours tuned:   [sync] backlog_batches_per_s = {args.rate:g}, max_inflight = "
                  f"{args.inflight} (batch_max_events {defaults.batch_max_events}, the rest default)")
            if not args.no_default:
                print(f"  ours default: [sync] backlog_batches_per_s = {defaults.backlog_batches_per_s:g}, "
                      f"max_inflight = {defaults.max_inflight}, batch_max_events {defaults.batch_max_events}")
            template = work / "template"
            fill_s, payloads = fill_template(template, args.n)
            nbytes = sum(map(len, payloads))
            if any(b"\n" in p for p in payloads):
                raise RuntimeError("a batch payload contains a newline; mosquitto_pub -l would split it")
            lines = work / "raw-payloads.lines"
            lines.write_bytes(b"".join(p + b"\n" for p in payloads))
            print(f"  backlog: {args.n:,} scans stored by Store.record_scan in {fill_s:.1f} s; packed by "
                  f"sync.outbox into {len(payloads)} batches, {nbytes / 1e6:.1f} MB "
                  f"({nbytes / len(payloads):,.0f} bytes per message, {nbytes / args.n:.0f} per scan)")
            print(f"  raw: mosquitto_pub -V mqttv5 -q 1 -l -> broker -> mosquitto_sub -V mqttv5 -q 1 -C "
                  f"{len(payloads)}, scorer identity, topic {RAW_TOPIC}, the same {len(payloads)} payloads")

            runs: dict[str, list[dict[str, float]]] = {"raw": [], **{name: [] for name, _ in configs}}
            sides: list[tuple[str, Callable[[str], dict[str, float]]]] = [
                ("raw", lambda tag: raw_once(broker, lines, len(payloads), nbytes, args.n, work, tag,
                                             args.timeout)),
                *[(name, (lambda tag, extra=extra: drain_once(broker, template, work, tag, extra, args.n,
                                                              args.timeout, args.poll)))
                  for name, extra in configs],
            ]
            labels = {"raw": "raw (pub -> sub)", "tuned": "ours tuned", "default": "ours default"}
            for r in range(args.repeats):
                for name, run in sides[r % len(sides):] + sides[:r % len(sides)]:
                    result = run(f"r{r + 1}-{name}")
                    runs[name].append(result)
                    line = fmt_raw(result) if name == "raw" else fmt_drain(result)
                    print(f"  repeat {r + 1} {labels[name]:17} {line}", flush=True)
            report(args, runs, nbytes)
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(broker_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

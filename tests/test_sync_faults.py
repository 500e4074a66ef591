"""Acceptance: store-and-forward survives faults while two docks stream scans.

    Faults during a stream of >= 10,000 scans from two docks: the broker killed with SIGKILL and restarted
    10 times, the scorer restarted 10 times, the agent killed with SIGKILL 10 times, the broker unreachable
    for a while: the scorer ends with every acknowledged scan exactly once, and both docks' outboxes empty
    within 60 s of the last fault (the test configuration caps the reconnect backoff accordingly).

Two docks (dock-01 and dock-02 of the broker fixture, facility NDC-X) each run a real agent fed by its own
pseudo-terminal. A streaming thread per dock sends unique IMcb barcodes in lockstep (one frame, then wait for
its one feedback byte, at most one frame every FRAME_INTERVAL_S), so a frame whose ACK (0x06) came back is
*acknowledged*: the dock committed it and it must reach the scorer exactly once. A frame without feedback
(the agent was killed around it) is *unknown*: stored at most once, and if the dock stored it the scorer
must have it too.

A fault thread injects, in a shuffled order paced by the stream's progress (fault k fires once the docks
have had (k + 1) / (F + 1) of the scans acknowledged), 10 broker SIGKILLs each followed by a restart on the
same ports (persistence on), 10 scorer restarts (half SIGKILL, half SIGTERM; a new process on the same
database), 10 agent SIGKILLs (alternating docks; that dock's streamer pauses until the new agent is READY
and holds the port) and one period of the broker being unreachable: a network partition (nftables drops
every packet of the broker's ports for 25 s, so open connections hang rather than close and the docks must
give up on missing PUBACKs) where nftables can be used, otherwise the broker stopped for 8 s. The stream ends
once both docks have their share of acknowledged scans and the last fault is over; the agents keep running,
and both outboxes must then be empty within 60 s of the last fault. The schedule, with wall-clock times, is
written to faults.txt beside the logs.

Then the scorer's database is compared with the scanner side and with each dock's own database.

DOCK_FAULT_SCANS sets the total number of acknowledged scans (default 10,000); DOCK_SEED replays a schedule;
DOCK_FAULT_UNREACHABLE = drop | stop forces how the broker is made unreachable, DOCK_FAULT_UNREACHABLE_S for
how long; DOCK_FAULT_EXTRA_SYNC adds lines to the docks' [sync] section (e.g. "puback_timeout_s = 5").
"""

from __future__ import annotations

import math
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import BAD, GOOD, AgentProcess, PtyScanner
from tests.mqtt_fixtures import Broker, ScorerProcess, agent_undelivered, dock_config, status_json, wait_until

SCANS = int(os.environ.get("DOCK_FAULT_SCANS", "10000"))
SEED = int(os.environ.get("DOCK_SEED", str(random.SystemRandom().randrange(1 << 32))))
FAULTS_EACH = 10
FRAME_INTERVAL_S = 1 / 60  # per dock: ~60 scans/s each, ~120/s in all
FEEDBACK_TIMEOUT_S = 2.0  # lockstep: the feedback of a frame the (live) agent received comes within this
DEATH_GRACE_S = 0.05  # after the agent is killed, its last feedback byte may still be in the pty
STALL_QUIET_S = 1.0  # after a frame got no feedback from a live agent: wait, then drop any late byte
# How the broker is made unreachable: "drop" (a partition: needs root and nftables; chosen when usable) or
# "stop" (the broker stopped: connections refused), and for how long.
UNREACHABLE = os.environ.get("DOCK_FAULT_UNREACHABLE", "auto")
UNREACHABLE_S = {mode: float(os.environ.get("DOCK_FAULT_UNREACHABLE_S", default))
                 for mode, default in (("drop", 25.0), ("stop", 8.0))}
MIN_GAP_S = 0.5  # between the end of one fault and the next, at least
DRAIN_DEADLINE_S = 60.0  # both outboxes empty within this of the last fault
MAX_STALLS = 5
# Handling a frame takes a small part of its cycle, so a kill at a random moment mostly lands between frames.
# This share of the agent kills waits for the next frame to be written and kills 0-2 ms later: mid-read,
# mid-commit, between COMMIT and the ACK, or while the scan is being published.
ALIGNED_KILLS = 0.5
DOCK_NAMES = (("dock-01", "NDC-X"), ("dock-02", "NDC-X"))
# The configuration under test is dock_config's: reconnect backoff capped at 2 s, ack_timeout_s = 5, the other
# sync settings at their defaults (a link that stops returning PUBACKs is given up after puback_timeout_s = 20).
EXTRA_SYNC = os.environ.get("DOCK_FAULT_EXTRA_SYNC", "").replace("\\n", "\n")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300 + int(SCANS * 0.03))]


def barcode(dock_no: int, n: int) -> str:
    """A valid IMcb: 99M + Mailer ID 1{dock}0000 + a 12-digit serial (unique per dock and frame)."""
    return f"99M1{dock_no}0000{n:012d}"


def wait_port_open(pid: int, tty: str, timeout_s: float = 10.0) -> bool:
    """True once process ``pid`` holds ``tty`` open (pyserial flushes input right after opening)."""
    deadline = time.monotonic() + timeout_s
    fd_dir = f"/proc/{pid}/fd"
    while time.monotonic() < deadline:
        try:
            for fd in os.listdir(fd_dir):
                try:
                    if os.readlink(f"{fd_dir}/{fd}") == tty:
                        time.sleep(0.005)  # past the open-then-flush window
                        return True
                except OSError:
                    continue
        except OSError:
            return False  # the process is gone
        time.sleep(0.002)
    return False


def drain(scanner: PtyScanner) -> bytes:
    """Feedback bytes still in the pty (written for frames already counted as unknown)."""
    out = b""
    while select.select([scanner.master], [], [], 0.02)[0]:
        chunk = os.read(scanner.master, 4096)
        if not chunk:
            break
        out += chunk
    return out


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Dock:
    """One dock: its pty, its agent (replaced after each kill), its streamer and what the scanner saw."""

    def __init__(self, tmp: Path, broker: Broker, device: str, site: str, no: int, quota: int,
                 rng: random.Random) -> None:
        self.device, self.site, self.no, self.quota = device, site, no, quota
        self.rng = rng  # used on the fault thread only
        self.dir = tmp / device
        self.dir.mkdir()
        self.state = self.dir / "state"
        self.scanner = PtyScanner(self.dir)
        self.tty = os.path.realpath(self.scanner.path)
        self.uri = f"serial://{self.scanner.path}?baud=115200&good=06&bad=15&name=door{no}"
        self.config = dock_config(self.dir, broker, device, site, extra_sync=EXTRA_SYNC)
        self.agent: AgentProcess | None = None
        self.boots = 0
        self.alive = threading.Event()  # the streamer may write frames (an agent is READY and holds the port)
        self.idle = threading.Event()  # the streamer saw ``alive`` cleared and writes nothing
        self.stream_over = threading.Event()
        self.frame_sent = threading.Event()
        self.acked: list[str] = []
        self.unknown: list[str] = []
        self.nak: list[str] = []
        self.stalls: list[str] = []
        self.latencies: list[float] = []
        self.late_bytes = 0
        self.next_n = 1
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"stream-{device}", daemon=True)

    @property
    def log_path(self) -> Path:
        return self.dir / "agent.log"

    @property
    def sent(self) -> int:
        return len(self.acked) + len(self.unknown) + len(self.nak)

    def start_agent(self) -> None:
        """A new agent on the same state dir; returns once it is READY and holds the port."""
        assert not self.alive.is_set()
        self.agent = AgentProcess(self.dir, self.state, ["--scanner", self.uri], config=self.config)
        self.boots += 1
        try:
            self.agent.wait_ready(30)
        except TimeoutError:
            raise AssertionError(f"{self.device}: no READY=1 (exit {self.agent.proc.poll()})\n"
                                 f"{log_tail(self.log_path)}") from None
        assert wait_port_open(self.agent.proc.pid, self.tty), (
            f"{self.device}: the agent did not open {self.scanner.path}\n{log_tail(self.log_path)}"
        )
        self.late_bytes += len(drain(self.scanner))
        self.alive.set()

    def kill_agent(self) -> None:
        """SIGKILL the agent, wherever the stream is; the streamer stops writing until the next start."""
        assert self.agent is not None
        if self.rng.random() < ALIGNED_KILLS:
            # Aim at the few hundred microseconds a frame is read, committed, published and acknowledged.
            self.frame_sent.clear()
            self.frame_sent.wait(1.0)
            time.sleep(self.rng.uniform(0, 0.002))
        else:
            time.sleep(self.rng.uniform(0, FRAME_INTERVAL_S))
        assert self.agent.proc.poll() is None, (
            f"{self.device}: the agent exited by itself ({self.agent.proc.returncode})\n{log_tail(self.log_path)}"
        )
        self.agent.proc.send_signal(signal.SIGKILL)
        self.alive.clear()  # a frame now without feedback is unknown, not a stall
        assert self.agent.proc.wait(10) == -signal.SIGKILL
        self.agent.close()
        assert self.idle.wait(FEEDBACK_TIMEOUT_S + STALL_QUIET_S + 5), f"{self.device}: the streamer did not pause"

    def stop_agent(self) -> int | None:
        self.alive.clear()
        if self.agent is None:
            return None
        return self.agent.stop()

    # -- the streamer ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._stream()
        except BaseException as e:  # noqa: BLE001  # re-raised by the main thread
            self.error = e
        finally:
            self.idle.set()

    def _stream(self) -> None:
        while not (self.stream_over.is_set() and len(self.acked) >= self.quota):
            if not self.alive.is_set():
                self.idle.set()
                self.alive.wait(0.05)
                continue
            self.idle.clear()
            if not self.alive.is_set():
                continue
            code = barcode(self.no, self.next_n)
            self.next_n += 1
            sent_at = time.monotonic()
            self.scanner.write(code.encode() + b"\r\n")
            self.frame_sent.set()
            fb = self._feedback(sent_at + FEEDBACK_TIMEOUT_S)
            if fb == GOOD:
                self.acked.append(code)
                self.latencies.append(time.monotonic() - sent_at)
            elif fb == BAD:
                self.nak.append(code)
            elif fb:
                raise AssertionError(f"{self.device}: unexpected feedback {fb!r} for {code}")
            else:
                self.unknown.append(code)
                if self.alive.is_set():
                    # The agent ran and said nothing: a late byte would be taken for the next frame's.
                    agent = self.agent
                    exited = agent.proc.poll() if agent is not None else None
                    self.stalls.append(f"{code} at {time.strftime('%H:%M:%S')} (agent exit status {exited})")
                    time.sleep(STALL_QUIET_S)
                    self.late_bytes += len(drain(self.scanner))
                    if exited is not None:
                        raise AssertionError(f"{self.device}: the agent died by itself ({exited})\n"
                                             f"{log_tail(self.log_path)}")
            pause = sent_at + FRAME_INTERVAL_S - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def _feedback(self, deadline: float) -> bytes:
        master = self.scanner.master
        dead_seen: float | None = None
        while True:
            now = time.monotonic()
            if not self.alive.is_set():
                dead_seen = dead_seen or now
                deadline = min(deadline, dead_seen + DEATH_GRACE_S)
            left = deadline - now
            if left <= 0:
                return b""
            ready, _, _ = select.select([master], [], [], min(left, 0.01))
            if ready:
                return os.read(master, 1)


@dataclass
class Fault:
    kind: str  # broker_kill | scorer_kill | scorer_term | agent_kill | broker_unreachable
    target: str = ""
    began: float = 0.0
    ended: float = 0.0
    at_acked: int = 0
    wall: str = ""


@dataclass
class Faults:
    """The fault thread: the schedule, paced by the number of acknowledged scans."""

    broker: Broker
    docks: list[Dock]
    tmp: Path
    db: Path
    rng: random.Random
    unreachable: str = "stop"
    scorer: ScorerProcess | None = None
    _scorer_log_from: int = 0
    done: list[Fault] = field(default_factory=list)
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def plan(self) -> list[Fault]:
        plan = [Fault("broker_kill") for _ in range(FAULTS_EACH)]
        plan += [Fault("scorer_kill" if i % 2 == 0 else "scorer_term") for i in range(FAULTS_EACH)]
        plan += [Fault("agent_kill", self.docks[i % 2].device) for i in range(FAULTS_EACH)]
        plan.append(Fault("broker_unreachable"))
        self.rng.shuffle(plan)
        return plan

    def start_scorer(self) -> None:
        log = self.tmp / "scorer-hq1.log"
        self._scorer_log_from = log.stat().st_size if log.exists() else 0
        self.scorer = ScorerProcess(self.tmp, self.broker, self.db)

    def scorer_connected(self) -> bool:
        """The current scorer process has connected (its signal handlers are installed, it subscribed)."""
        with open(self.tmp / "scorer-hq1.log", "rb") as f:
            f.seek(self._scorer_log_from)
            return b"scorer hq1: connected to" in f.read()

    def acked(self) -> int:
        return sum(len(d.acked) for d in self.docks)

    def run(self) -> None:
        try:
            plan = self.plan()
            for k, fault in enumerate(plan):
                threshold = (k + 1) * SCANS / (len(plan) + 1)
                while self.acked() < threshold:
                    if any(d.error for d in self.docks):
                        return
                    time.sleep(0.01)
                if self.done:
                    time.sleep(max(0.0, self.done[-1].ended + MIN_GAP_S - time.monotonic()))
                if fault.kind.startswith("scorer_"):
                    # Restart a scorer that got going, not one still importing (a SIGTERM then just ends it).
                    assert wait_until(self.scorer_connected, 20), "the scorer did not connect within 20 s"
                time.sleep(self.rng.uniform(0, 0.03))
                fault.at_acked = self.acked()
                fault.began = time.monotonic()
                fault.wall = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
                self.inject(fault)
                fault.ended = time.monotonic()
                self.done.append(fault)
        except BaseException as e:  # noqa: BLE001  # re-raised by the main thread
            self.error = e
        finally:
            self.finished.set()

    def inject(self, fault: Fault) -> None:
        if fault.kind == "broker_kill":
            self.broker.kill()
            time.sleep(self.rng.uniform(0, 1.0))
            self.broker.start()
        elif fault.kind == "broker_unreachable":
            if self.unreachable == "drop":
                with Partition([self.broker.mtls_port, self.broker.password_port]):
                    time.sleep(UNREACHABLE_S["drop"])
            else:
                self.broker.stop()
                time.sleep(UNREACHABLE_S["stop"])
                self.broker.start()
        elif fault.kind in ("scorer_kill", "scorer_term"):
            assert self.scorer is not None
            old = self.scorer
            assert old.proc.poll() is None, f"the scorer exited by itself ({old.proc.returncode})"
            if fault.kind == "scorer_kill":
                old.kill()
            old.stop()
            time.sleep(self.rng.uniform(0, 1.0))
            self.start_scorer()
        elif fault.kind == "agent_kill":
            dock = next(d for d in self.docks if d.device == fault.target)
            dock.kill_agent()
            dock.start_agent()
        else:
            raise AssertionError(fault.kind)


class Partition:
    """Every packet to or from the broker's ports dropped (nftables, loopback included), then let through again.

    The rules live in a table of their own named after this process; tables left behind by a test process
    that died are removed first (their ports could be handed to another broker later).
    """

    PREFIX = "dock_faults_"

    def __init__(self, ports: list[int]) -> None:
        self.table = f"{self.PREFIX}{os.getpid()}"
        self.ports = ", ".join(str(p) for p in ports)

    @classmethod
    def usable(cls) -> bool:
        """True if nftables can be driven here (root, nft installed, CAP_NET_ADMIN); sweeps stale tables."""
        if os.geteuid() != 0 or shutil.which("nft") is None:
            return False
        listed = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True, check=False)
        if listed.returncode != 0:
            return False
        for name in re.findall(rf"table inet ({cls.PREFIX}(\d+))", listed.stdout):
            if not Path(f"/proc/{name[1]}").exists():
                subprocess.run(["nft", "delete", "table", "inet", name[0]], capture_output=True, check=False)
        probe = f"{cls.PREFIX}{os.getpid()}"
        made = subprocess.run(["nft", "add", "table", "inet", probe], capture_output=True, check=False)
        subprocess.run(["nft", "delete", "table", "inet", probe], capture_output=True, check=False)
        return made.returncode == 0

    def __enter__(self) -> Self:
        script = (f"add table inet {self.table}\n"
                  f"add chain inet {self.table} input {{ type filter hook input priority -10; policy accept; }}\n"
                  f"add rule inet {self.table} input tcp dport {{ {self.ports} }} drop\n"
                  f"add rule inet {self.table} input tcp sport {{ {self.ports} }} drop\n")
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
        return self

    def __exit__(self, *_exc: object) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], check=True, capture_output=True)


def dock_rows(state: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(f"file:{state / 'scans.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT barcode, event_id, seq FROM scans ORDER BY seq").fetchall()
    finally:
        conn.close()


def scorer_rows(db: Path) -> list[tuple[str, str, str | None, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT device_id, event_id, barcode, seq FROM events").fetchall()
    finally:
        conn.close()


def test_faults_during_a_two_dock_stream_lose_and_repeat_nothing(tmp_path: Path, broker: Broker) -> None:
    rng = random.Random(SEED)
    quota = math.ceil(SCANS / len(DOCK_NAMES))
    docks = [Dock(tmp_path, broker, device, site, i + 1, quota, rng) for i, (device, site) in enumerate(DOCK_NAMES)]
    db = tmp_path / "scorer.db"
    unreachable = UNREACHABLE if UNREACHABLE != "auto" else ("drop" if Partition.usable() else "stop")
    faults = Faults(broker, docks, tmp_path, db, rng, unreachable)
    fault_thread = threading.Thread(target=faults.run, name="faults", daemon=True)
    began = time.monotonic()
    where = f"(seed {SEED}, logs in {tmp_path})"
    try:
        faults.start_scorer()
        for d in docks:
            d.start_agent()
        for d in docks:
            assert wait_until(lambda d=d: (status_json(d.state).get("sync") or {}).get("scorers_online") == ["hq1"],
                              20), f"{d.device}: no scorer seen online: {status_json(d.state).get('sync')} {where}"
        stream_began = time.monotonic()
        for d in docks:
            d.thread.start()
        fault_thread.start()

        # The stream runs until every fault is injected and each dock has its share of acknowledged scans.
        while not faults.finished.wait(0.2):
            assert not any(d.error for d in docks), "a streamer failed"
        if faults.error is not None:
            raise faults.error
        for d in docks:
            d.stream_over.set()
        for d in docks:
            d.thread.join(SCANS * FRAME_INTERVAL_S + 60)
            assert not d.thread.is_alive(), f"{d.device}: the streamer hung {where}"
            if d.error is not None:
                raise d.error
        stream_ended = time.monotonic()
        last_fault = max(f.ended for f in faults.done)

        # The agents keep running: both outboxes must empty within the deadline of the last fault.
        def all_delivered() -> bool:
            return all(agent_undelivered(d.state) == 0 for d in docks)

        wait_until(all_delivered, max(0.0, last_fault + DRAIN_DEADLINE_S - time.monotonic()), 0.2)
        emptied = time.monotonic()
        undelivered = {d.device: agent_undelivered(d.state) for d in docks}
        assert all(n == 0 for n in undelivered.values()), (
            f"outboxes not empty {DRAIN_DEADLINE_S:g} s after the last fault: {undelivered}; sync status "
            f"{ {d.device: status_json(d.state).get('sync') for d in docks} } {where}"
        )

        # -- what the scorer stored, against the scanner side and the docks' own records --------------------
        stored = scorer_rows(db)
        per_device: dict[str, list[tuple[str, str | None, int]]] = {}
        for device, event_id, code, seq in stored:
            per_device.setdefault(device, []).append((event_id, code, seq))
        assert set(per_device) <= {d.device for d in docks}, f"events from unknown devices: {set(per_device)}"
        ids = Counter((device, event_id) for device, event_id, _, _ in stored)
        assert not [k for k, n in ids.items() if n > 1], "an event_id stored twice for one device"
        by_code = Counter(code for _, _, code, _ in stored)
        twice = sorted(c for c, n in by_code.items() if n > 1)
        assert not twice, f"{len(twice)} barcodes stored more than once at the scorer, e.g. {twice[:10]} {where}"
        summary_parts = []
        for d in docks:
            mine = per_device.get(d.device, [])
            codes = {code for _, code, _ in mine}
            sent = set(d.acked) | set(d.unknown) | set(d.nak)
            missing = sorted(set(d.acked) - codes)
            assert not missing, (
                f"{d.device}: {len(missing)} acknowledged scans missing at the scorer, e.g. {missing[:10]} {where}"
            )
            strangers = sorted(c for c in codes if c not in sent)
            assert not strangers, f"{d.device}: the scorer has scans never sent: {strangers[:10]} {where}"
            nak_stored = sorted(codes & set(d.nak))
            assert not nak_stored, f"{d.device}: signalled bad yet stored: {nak_stored[:10]}"
            local = dock_rows(d.state)
            local_codes = Counter(code for code, _, _ in local)
            assert not [c for c, n in local_codes.items() if n > 1], f"{d.device}: a barcode stored twice locally"
            assert len(mine) == len(local), (
                f"{d.device}: the scorer has {len(mine)} events, the dock stored {len(local)} {where}"
            )
            # Field for field the same identity: the scorer's copy is the dock's record.
            assert {(eid, code, seq) for eid, code, seq in mine} == {(e, c, s) for c, e, s in local}, (
                f"{d.device}: the scorer's (event_id, barcode, seq) differ from the dock's {where}"
            )
            unknown_stored = len(set(d.unknown) & codes)
            text = d.log_path.read_text(errors="replace")
            summary_parts.append(
                f"{d.device}: {d.sent} sent, {len(d.acked)} acked, {len(d.unknown)} unknown "
                f"({unknown_stored} stored), {len(d.nak)} nak, {len(local)} stored = {len(mine)} at the scorer, "
                f"{d.boots} boots, {len(d.stalls)} stalls, {d.late_bytes} late feedback bytes, feedback p99 "
                f"{statistics.quantiles(d.latencies, n=100)[98] * 1000:.0f} ms max {max(d.latencies) * 1000:.0f} ms, "
                f"{text.count('sync: connected to')} connections, "
                f"{text.count('not acknowledged within')} ack-timeout resends"
            )

        logs = {d.device: d.log_path.read_text(errors="replace") for d in docks}
        for device, text in logs.items():
            assert "Traceback" not in text, f"{device}: {text[text.index('Traceback'):][:3000]}"
        stalls = [s for d in docks for s in d.stalls]
        assert len(stalls) <= MAX_STALLS, f"{len(stalls)} frames got no feedback from a live agent: {stalls[:10]}"
    finally:
        for d in docks:
            d.stream_over.set()
            d.quota = 0
        fault_thread.join(30)
        for d in docks:
            if d.thread.ident is not None:
                d.thread.join(10)
            d.stop_agent()
            d.scanner.close()
        if faults.scorer is not None:
            faults.scorer.stop()
        if unreachable == "drop":  # in case the fault thread was cut short inside the partition
            subprocess.run(["nft", "delete", "table", "inet", Partition([]).table], capture_output=True, check=False)
        (tmp_path / "faults.txt").write_text("".join(
            f"{f.wall} +{f.ended - f.began:5.2f} s {f.kind:18} {f.target:8} at {f.at_acked} acked\n"
            for f in faults.done))
        broker.stop()
        (tmp_path / "mosquitto.log").write_text(broker.log())  # the broker's directory goes with the fixture

    # Duplicate deliveries the scorer saw: only instances that stopped cleanly log their totals.
    scorer_log = (tmp_path / "scorer-hq1.log").read_text(errors="replace")
    stops = re.findall(r"stopped: (\d+) messages, (\d+) new events, (\d+) duplicates", scorer_log)
    dups = sum(int(s[2]) for s in stops)
    kinds = Counter(f.kind for f in faults.done)
    agent_kills = Counter(f.target for f in faults.done if f.kind == "agent_kill")
    print(
        f"\nsync faults: {SCANS} scans asked, streamed {stream_ended - stream_began:.1f} s; "
        + "; ".join(summary_parts)
        + f"; faults: {kinds['broker_kill']} broker SIGKILL, {kinds['scorer_kill']} scorer SIGKILL + "
        f"{kinds['scorer_term']} SIGTERM, {kinds['agent_kill']} agent SIGKILL {dict(agent_kills)}, "
        f"{kinds['broker_unreachable']} x {UNREACHABLE_S[unreachable]:g} s unreachable ({unreachable}); outboxes empty "
        f"{emptied - last_fault:.1f} s after the last fault ({faults.done[-1].kind}), "
        f"{emptied - stream_ended:.1f} s after the stream; scorer saw {dups} duplicates in "
        f"{len(stops)}/{kinds['scorer_term'] + 1} cleanly stopped instances; "
        f"{time.monotonic() - began:.1f} s total, seed {SEED}"
    )
    assert kinds == Counter(broker_kill=FAULTS_EACH, scorer_kill=FAULTS_EACH // 2,
                            scorer_term=FAULTS_EACH - FAULTS_EACH // 2, agent_kill=FAULTS_EACH,
                            broker_unreachable=1), kinds
    assert sum(len(d.acked) for d in docks) >= SCANS
    scorer_tracebacks = scorer_log.count("Traceback")
    assert scorer_tracebacks == 0, scorer_log[scorer_log.index("Traceback"):][:3000]

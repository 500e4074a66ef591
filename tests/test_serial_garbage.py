"""Line noise on a real serial port (pty): valid frames survive, bad ones are counted with a reason."""

from __future__ import annotations

import os
import random
import resource
import select
import threading
import time
from pathlib import Path

from agent.clock import SystemClock
from agent.loop import Agent
from agent.settings import Feedback, SerialScanner, StoreSection
from agent.store import Store
from drivers.runner import ScannerRunner
from drivers.serial_scanner import SerialDriver
from tests.conftest import PtyScanner


class FeedbackSink(threading.Thread):
    """Reads the feedback bytes the agent writes back, as a scanner would (else the pty fills up)."""

    def __init__(self, scanner: PtyScanner) -> None:
        super().__init__(daemon=True)
        self.scanner = scanner
        self.bytes = bytearray()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            fd = self.scanner.master
            if fd < 0:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    self.bytes += os.read(fd, 65536)
            except OSError:
                time.sleep(0.01)


def start_agent(tmp_path: Path, port: Path) -> tuple[Agent, ScannerRunner, threading.Event, threading.Thread]:
    store = Store(tmp_path / "state", "dock-test", StoreSection(floor_free_mb=0, warn_free_mb=0), SystemClock())
    store.open()
    cfg = SerialScanner(type="serial", name="door1", port=str(port), baud=115200, max_frame_bytes=4096,
                        feedback=Feedback(good="06", bad="15"))
    runner = ScannerRunner(SerialDriver(cfg), "serial", cap_s=0.5)
    agent = Agent(store, [runner], SystemClock())
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return agent, runner, stop, thread


def wait_for(predicate, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def stored_barcodes(agent: Agent) -> list[str]:
    assert agent.store.conn is not None
    return [r[0] for r in agent.store.conn.execute("SELECT barcode FROM scans ORDER BY seq")]


def test_garbage_between_valid_frames(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    rng = random.Random(20261122)
    agent, runner, stop, thread = start_agent(tmp_path, pty_scanner.path)
    sink = FeedbackSink(pty_scanner)
    sink.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        assert wait_for(lambda: runner.health.state == "ok", 10)
        expected: list[str] = []
        binary_frames = 0
        # 1. one MB of random bytes, then a terminator so the next frame starts clean.
        pty_scanner.write(rng.randbytes(1 << 20) + b"\r")
        # 2. a 1 MB line without a terminator (then one, which ends the oversized frame).
        pty_scanner.write(b"9" * (1 << 20) + b"\r")
        # 3. valid frames with binary frames interleaved 1:100 (binary without CR/LF is exactly one frame).
        for i in range(2000):
            code = f"99M123456{i:012d}"
            expected.append(code)
            pty_scanner.write(code.encode() + b"\r\n")
            if i % 100 == 99:
                junk = bytes(b for b in rng.randbytes(40) if b not in (10, 13)) + b"\x00"
                pty_scanner.write(junk + b"\r")
                binary_frames += 1
        assert wait_for(lambda: len(stored_barcodes(agent)) >= len(expected), 120), len(stored_barcodes(agent))
        assert stored_barcodes(agent) == expected  # every valid frame recovered, in order, once
        bad = runner.health.bad_frames
        assert bad.get("frame over 4096 bytes without a terminator; dropped", 0) >= 1
        # Every binary frame was judged unusable with a reason naming the byte, and kept for diagnosis.
        assert agent.store.conn is not None
        reasons = [r[0] for r in agent.store.conn.execute("SELECT reason FROM rejections")]
        assert sum("non-printable" in r for r in reasons) >= binary_frames
        assert agent.counts["invalid"] == len(reasons)  # each unusable read counted once
        assert agent.counts["unverified"] == len(expected)
        # Memory stayed bounded: the driver never buffered more than one frame's worth.
        assert runner.scanner._framer.buffered <= 4096  # type: ignore[attr-defined]
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert grown_mb < 64, f"RSS grew {grown_mb:.0f} MB"
        # Feedback: one good byte per stored scan.
        assert wait_for(lambda: sink.bytes.count(b"\x06") >= len(expected), 10)
        assert sink.bytes.count(b"\x06") == len(expected)
    finally:
        stop.set()
        thread.join(10)
        sink.stop.set()
        agent.store.close()


def test_port_vanishing_mid_frame(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    agent, runner, stop, thread = start_agent(tmp_path, pty_scanner.path)
    try:
        assert wait_for(lambda: runner.health.state == "ok", 10)
        pty_scanner.write(b"99M123456000000000001\r")
        assert wait_for(lambda: len(stored_barcodes(agent)) == 1, 10)
        pty_scanner.write(b"99M12345600")
        time.sleep(0.2)
        pty_scanner.unplug()
        assert wait_for(lambda: runner.health.state == "absent", 10)
        assert runner.health.last_error
        pty_scanner.plug()
        assert wait_for(lambda: runner.health.state == "ok", 10), runner.health
        time.sleep(0.1)
        pty_scanner.write(b"99M123456000000000002\r")
        assert wait_for(lambda: len(stored_barcodes(agent)) == 2, 10)
        assert stored_barcodes(agent) == ["99M123456000000000001", "99M123456000000000002"]
        lost = [r for r in runner.health.bad_frames if "lost when the port closed" in r]
        assert lost, runner.health.bad_frames
        assert runner.health.opens == 2
    finally:
        stop.set()
        thread.join(10)
        agent.store.close()

"""The real pyserial driver on a pseudo-terminal: a scan is committed, signalled good, and listed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BAD, GOOD, AgentProcess, PtyScanner, run_cli


def serial_uri(p: PtyScanner, extra: str = "") -> str:
    return f"serial://{p.path}?baud=115200&good=06&bad=15&attention=07&name=door1{extra}"


def test_scan_over_pty_is_committed_signalled_and_listed(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    state = tmp_path / "state"
    agent = AgentProcess(tmp_path, state, ["--scanner", serial_uri(pty_scanner)])
    try:
        agent.wait_ready()
        pty_scanner.write(b"99M123456000000123456\r\n")
        assert pty_scanner.read_feedback(5.0) == GOOD
        pty_scanner.write(b"99M12345600000012345\r")  # 20 characters
        assert pty_scanner.read_feedback(5.0) == BAD
        pty_scanner.write(b"]C199M900012345000987654\r")
        assert pty_scanner.read_feedback(5.0) == GOOD
        listed = run_cli("scans", "--json", "--state-dir", str(state))
        assert listed.returncode == 0, listed.stderr
        scans = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [s["barcode"] for s in scans] == ["99M123456000000123456", "99M900012345000987654"]
        first = scans[0]
        assert first["scanner"] == "door1" and first["kind"] == "imcb" and first["seq"] == 1
        assert first["fields"] == {"mid": "123456", "serial": "000000123456", "mid_length": "6"}
        assert first["device_id"] == "dock-example-01" and first["boot"] == 1
        assert first["raw"] == "99M123456000000123456" and scans[1]["raw"].startswith("]C1")
        assert scans[1]["symbology"] == "gs1-128"
        assert first["verdict"] == "unverified" and first["delivered_at"] is None
        assert first["scanned_at"].endswith("Z") and len(first["event_id"]) == 36
        status = run_cli("status", "--json", "--state-dir", str(state))
        body = json.loads(status.stdout)
        assert body["running"] is True and body["totals"]["scans"] == 2 and body["totals"]["rejections"] == 1
        assert body["totals"]["undelivered"] == 2 and body["totals"]["oldest_undelivered_age_s"] is not None
        assert [s["name"] for s in body["scanners"]] == ["door1"]
    finally:
        assert agent.stop() == 0
    # Read-only commands work with the agent stopped too.
    after = run_cli("status", "--json", "--state-dir", str(state))
    assert json.loads(after.stdout)["state"] == "not running" and after.returncode == 3
    assert len(run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()) == 2


def test_absent_scanner_is_degraded_not_fatal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/no-such-tty?name=door9"])
    try:
        agent.wait_ready()
        agent.notify.wait_for("WATCHDOG=1", 5)
        deadline_status = None
        for _ in range(50):
            deadline_status = json.loads(run_cli("status", "--json", "--state-dir", str(state)).stdout)
            if deadline_status["scanners"] and deadline_status["scanners"][0]["state"] == "absent":
                break
            agent.notify.wait_for("WATCHDOG=1", 5)
        assert deadline_status is not None
        assert deadline_status["state"] == "degraded"
        assert any("door9" in p and "absent" in p for p in deadline_status["problems"])
        assert agent.proc.poll() is None  # still running
    finally:
        assert agent.stop() == 0


def test_replugged_scanner_is_reopened(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    state = tmp_path / "state"
    agent = AgentProcess(tmp_path, state, ["--scanner", serial_uri(pty_scanner)])
    try:
        agent.wait_ready()
        pty_scanner.write(b"99M123456000000000001\r")
        assert pty_scanner.read_feedback(5.0) == GOOD
        pty_scanner.write(b"99M1234560000")  # the port vanishes mid-frame
        pty_scanner.unplug()
        pty_scanner.plug()
        got = b""
        for _ in range(100):  # the driver reopens with backoff (capped at 5 s)
            pty_scanner.write(b"99M123456000000000002\r")
            got = pty_scanner.read_feedback(0.3)
            if got:
                break
        assert got == GOOD
    finally:
        assert agent.stop() == 0
    rows = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
    assert [r["barcode"] for r in rows] == ["99M123456000000000001", "99M123456000000000002"]

"""The sd_notify contract, against our own NOTIFY_SOCKET, and the systemd unit that relies on it.

READY=1 comes with STATUS= and MAINPID=; WATCHDOG=1 keeps coming while the agent idles; SIGTERM gives
STOPPING=1 and exit status 0; without a notify socket (or with nobody listening) the agent runs all the
same; the abstract-namespace form (NOTIFY_SOCKET=@name) works. The unit file is checked by
``systemd-analyze verify`` where it exists, and its contract is read with configparser everywhere.
"""

from __future__ import annotations

import configparser
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.notify import Notifier
from tests.conftest import EXAMPLE_CONFIG, GOOD, ROOT, AgentProcess, PtyScanner, agent_cmd, run_cli

UNIT = ROOT / "systemd" / "dock-agent.service"
TICK_S = 0.5  # the loop's pass; WATCHDOG=1 is sent once per pass


def serial_uri(p: PtyScanner) -> str:
    return f"serial://{p.path}?baud=115200&good=06&bad=15&name=door1"


def fields(message: str) -> dict[str, str]:
    """A notify datagram as KEY -> VALUE; every line must be KEY=VALUE."""
    out: dict[str, str] = {}
    for line in message.split("\n"):
        key, eq, value = line.partition("=")
        assert eq and re.fullmatch(r"[A-Z_]+", key), f"not a KEY=VALUE line: {line!r} in {message!r}"
        out[key] = value
    return out


def recv_for(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram received during ``seconds``, with its arrival time."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append((time.monotonic(), msg))
    return got


def wait_for(sock: socket.socket, field: str, timeout_s: float = 20.0) -> list[str]:
    """Datagrams received until one has the line ``field``; fails the test on timeout."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            break
        seen.append(msg)
        if field in msg.split("\n"):
            return seen
    pytest.fail(f"no {field} within {timeout_s} s; got {seen}")


@contextmanager
def spawn(tmp: Path, state: Path, args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``dock-agent run`` with exactly the notify environment given (AgentProcess always sets its own)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUNTIME_DIRECTORY")}
    with open(tmp / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            [*agent_cmd(), "run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state), *args],
            stdout=log, stderr=log, env={**base, **env}, cwd=ROOT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def scan_until_acknowledged(p: PtyScanner, timeout_s: float = 20.0) -> int:
    """Send fresh barcodes until one is ACKed (the agent is up and has the port); returns how many were sent."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n += 1
        p.write(f"99M123456{n:012d}\r\n".encode())
        fb = p.read_feedback(0.3)
        if fb:
            assert fb == GOOD
            return n
    pytest.fail(f"no feedback for any of {n} scans within {timeout_s} s")


def log_text(tmp: Path) -> str:
    return (tmp / "agent.log").read_text(errors="replace")


# -- against the real agent process ------------------------------------------------------------------------


def test_ready_carries_status_and_mainpid(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    agent = AgentProcess(tmp_path, tmp_path / "state", ["--scanner", serial_uri(pty_scanner)])
    try:
        seen = agent.notify.wait_for("READY=1")
        ready = fields(seen[-1])
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(agent.proc.pid)
        status = ready.get("STATUS", "")
        assert re.match(r"(ok|degraded: .+) \| mode ", status), status
        assert "\n" not in status
        for earlier in seen[:-1]:  # nothing before READY claims readiness or stopping
            assert not {"READY", "STOPPING"} & fields(earlier).keys(), earlier
    finally:
        assert agent.stop() == 0


def test_watchdog_keeps_arriving_while_idle(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    agent = AgentProcess(tmp_path, tmp_path / "state", ["--scanner", serial_uri(pty_scanner)])  # WATCHDOG_USEC=2 s
    try:
        agent.wait_ready()
        got = recv_for(agent.notify.sock, 3.0)
        pings = [t for t, msg in got if "WATCHDOG=1" in msg.split("\n")]
        assert len(pings) >= 3, f"only {len(pings)} WATCHDOG=1 in 3 s: {[m for _, m in got]}"
        # systemd's advice: ping at least every half of WATCHDOG_USEC (here 2 s).
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0, f"watchdog gaps {gaps}"
        assert not any("STOPPING=1" in m.split("\n") for _, m in got)
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0


def test_sigterm_sends_stopping_and_exits_zero(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    agent = AgentProcess(tmp_path, tmp_path / "state", ["--scanner", serial_uri(pty_scanner)])
    try:
        agent.wait_ready()
        assert scan_until_acknowledged(pty_scanner) >= 1
        agent.notify.drain()
        agent.proc.send_signal(signal.SIGTERM)
        seen = agent.notify.wait_for("STOPPING=1", 15)
        assert not any("READY=1" in m.split("\n") for m in seen)
        assert agent.proc.wait(15) == 0
        after = agent.notify.drain()
        assert not any("READY=1" in m.split("\n") for m in after), after
    finally:
        agent.close()
    assert "Traceback" not in log_text(tmp_path)


@pytest.mark.parametrize("notify_socket", [None, "dangling"])
def test_runs_without_a_notify_listener(tmp_path: Path, pty_scanner: PtyScanner, notify_socket: str | None) -> None:
    """No NOTIFY_SOCKET (run by hand), or one nobody listens on: the agent serves scans all the same."""
    env = {} if notify_socket is None else {"NOTIFY_SOCKET": str(tmp_path / "nobody.sock"), "WATCHDOG_USEC": "2000000"}
    state = tmp_path / "state"
    with spawn(tmp_path, state, ["--scanner", serial_uri(pty_scanner)], env) as proc:
        sent = scan_until_acknowledged(pty_scanner)
        time.sleep(3 * TICK_S)  # several loop passes, each trying to feed the watchdog
        assert proc.poll() is None, log_text(tmp_path)
        pty_scanner.write(b"99M123456999999999999\r\n")
        assert pty_scanner.read_feedback(5.0) == GOOD
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log_text(tmp_path)
    assert "Traceback" not in log_text(tmp_path)
    listed = run_cli("scans", "--json", "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    assert 2 <= len(listed.stdout.splitlines()) <= sent + 1


def test_abstract_namespace_notify_socket(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    name = f"dock-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"}
        with spawn(tmp_path, tmp_path / "state", ["--scanner", serial_uri(pty_scanner)], env) as proc:
            ready = fields(wait_for(sock, "READY=1")[-1])
            assert ready["MAINPID"] == str(proc.pid) and ready.get("STATUS")
            wait_for(sock, "WATCHDOG=1", 5)
            assert scan_until_acknowledged(pty_scanner) >= 1
            proc.send_signal(signal.SIGTERM)
            wait_for(sock, "STOPPING=1", 15)
            assert proc.wait(15) == 0, log_text(tmp_path)
    finally:
        sock.close()


# -- Notifier on its own -------------------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, path
    sock.close()


def test_notifier_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An explicit environ is all the Notifier reads, even when the process has a NOTIFY_SOCKET.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "process-wide.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    n = Notifier({})
    assert not n.enabled and n.watchdog_s == 0.0
    assert n.send("X=1") is False
    assert (n.ready("ok"), n.watchdog(), n.status("ok"), n.stopping()) == (False, False, False, False)


def test_notifier_sends_protocol_lines_to_a_path_socket(listener: tuple[socket.socket, Path]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_s == 30
    assert n.ready("ok | mode normal") is True
    assert sock.recv(4096).decode() == f"READY=1\nSTATUS=ok | mode normal\nMAINPID={os.getpid()}"
    assert n.watchdog() is True and sock.recv(4096) == b"WATCHDOG=1"
    assert n.status("degraded: disk low") is True and sock.recv(4096) == b"STATUS=degraded: disk low"
    assert n.stopping() is True and sock.recv(4096) == b"STOPPING=1"
    assert n.send("A=1", "B=2") is True and sock.recv(4096) == b"A=1\nB=2"


def test_watchdog_is_fed_only_when_asked_for(listener: tuple[socket.socket, Path]) -> None:
    sock, path = listener
    assert Notifier({"NOTIFY_SOCKET": str(path)}).watchdog() is False
    assert Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog() is False
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_notifier_abstract_namespace() -> None:
    name = f"dock-agent-unit-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        assert n.address == "\0" + name
        assert n.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_notifier_never_raises_when_nobody_listens(tmp_path: Path) -> None:
    path = tmp_path / "gone.sock"
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
    assert n.enabled and n.watchdog_s == 30
    assert n.ready("ok") is False and n.watchdog() is False  # no such socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    assert n.watchdog() is True and sock.recv(4096) == b"WATCHDOG=1"
    sock.close()  # the listener goes away (systemd restarted): still no exception
    assert n.stopping() is False
    assert Notifier({"NOTIFY_SOCKET": "@" + "x" * 200}).watchdog() is False  # address too long


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, 0.0),
        ({"WATCHDOG_USEC": ""}, 0.0),
        ({}, 0.0),
    ],
)
def test_notifier_watchdog_interval(env: dict[str, str], expected: float) -> None:
    assert Notifier(env).watchdog_s == expected


# -- the systemd unit ------------------------------------------------------------------------------------


def _service_values(text: str, key: str) -> list[str]:
    """Every value of a (repeatable) directive in [Service], in order; configparser keeps only the last."""
    values: list[str] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        k, eq, v = line.partition("=")
        if eq and section == "Service" and k.strip() == key:
            values.append(v.strip())
    return values


def _timespan_s(value: str) -> float:
    """A systemd time span ('30', '30s', '1min 30s', '500ms') in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and all(u in units for _, u in parts), f"not a time span: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def check_unit_contract(unit: Path) -> None:
    text = unit.read_text()
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    cp.read_string(text, source=str(unit))
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    svc = cp["Service"]
    assert svc.get("Type") == "notify"
    assert svc.get("NotifyAccess", "main") in ("main", "exec", "all")
    assert "WatchdogSec" in svc, "WatchdogSec= (the loop feeds the watchdog)"
    assert _timespan_s(svc["WatchdogSec"]) >= 4 * TICK_S, svc["WatchdogSec"]  # pinged every loop pass
    assert svc.get("Restart") == "on-failure"
    assert svc.get("StateDirectory"), "StateDirectory= (STATE_DIRECTORY, /var/lib/dock-agent)"
    creds = [c.partition(":") for c in _service_values(text, "LoadCredential")]  # ID[:PATH]
    assert creds and all(cid and (not sep or path.startswith("/")) for cid, sep, path in creds), creds
    assert " run " in f" {svc['ExecStart']} " and svc["ExecStart"].split()[0].endswith("/dock-agent")
    groups = {g for v in _service_values(text, "SupplementaryGroups") for g in v.split()}
    assert {"dialout", "input", "video"} <= groups, groups
    allow = [v.split()[0] for v in _service_values(text, "DeviceAllow")]
    for dev in ("ttyACM", "ttyUSB", "input", "video"):
        assert any(dev in a for a in allow), f"no DeviceAllow= for {dev}: {allow}"
    assert svc.get("PrivateDevices", "no").lower() not in ("yes", "true", "on", "1"), "scanners are devices"
    families = _service_values(text, "RestrictAddressFamilies")
    assert families and not any(f.startswith("~") for f in families), families
    allowed = {f for v in families for f in v.split()}
    assert {"AF_UNIX", "AF_NETLINK"} <= allowed, allowed


def test_unit_file_contract() -> None:
    check_unit_contract(UNIT)


def test_unit_file_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` when the tool exists; otherwise the configparser contract stands in."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        check_unit_contract(UNIT)
        return
    text = UNIT.read_text()
    installed = re.findall(r"^ExecStart(?:Pre)?=-?(\S+)", text, flags=re.MULTILINE)
    assert installed, "no ExecStart="
    # verify checks that each executable exists: point them at this checkout's entry point.
    for exe in set(installed):
        text = text.replace(exe, agent_cmd()[0])
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if UNIT.name in line]
    assert res.returncode == 0 and not complaints, f"rc {res.returncode}\n{res.stdout}{res.stderr}"

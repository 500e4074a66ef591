"""Shared fixtures: real pseudo-terminals as serial scanners, agents run as real processes, sd_notify sockets."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.mqtt_fixtures", "tests.pg_fixtures"]
EXAMPLE_CONFIG = ROOT / "config" / "site.example.toml"
GOOD, BAD, ATTENTION = b"\x06", b"\x15", b"\x07"


def agent_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "dock-agent"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]


class PtyScanner:
    """The scanner's end of a pseudo-terminal; the agent opens ``path`` (a stable symlink) with pyserial."""

    def __init__(self, directory: Path, name: str = "ttyScanner") -> None:
        self.path = directory / name
        self.master = -1
        self._slave = -1
        self.plug()

    def plug(self) -> None:
        """(Re)create the port: a fresh pty behind the same path, as when a USB scanner is plugged in."""
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        self.path.symlink_to(os.ttyname(self._slave))

    def unplug(self) -> None:
        """The port vanishes: the agent's reads fail and the path is gone."""
        self.path.unlink(missing_ok=True)
        for fd in (self.master, self._slave):
            if fd >= 0:
                os.close(fd)
        self.master = self._slave = -1

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def read_feedback(self, timeout_s: float, n: int = 1) -> bytes:
        """Up to ``n`` feedback bytes the agent wrote back, waiting at most ``timeout_s``."""
        out = b""
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    out += os.read(self.master, n - len(out))
                except OSError:
                    break
        return out

    def close(self) -> None:
        self.unplug()


@pytest.fixture
def pty_scanner(tmp_path: Path) -> Iterator[PtyScanner]:
    p = PtyScanner(tmp_path)
    yield p
    p.close()


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, field: str, timeout_s: float = 15.0) -> list[str]:
        """Messages received until one contains ``field`` (e.g. 'READY=1'); raises TimeoutError."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            seen.append(msg)
            if field in msg.split("\n"):
                return seen
        raise TimeoutError(f"no {field} within {timeout_s} s; got {seen}")

    def drain(self) -> list[str]:
        self.sock.settimeout(0)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (BlockingIOError, TimeoutError):
                return out

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class AgentProcess:
    """``dock-agent run`` as a real process, with its own notify socket."""

    def __init__(self, tmp: Path, state_dir: Path, args: list[str], config: Path = EXAMPLE_CONFIG) -> None:
        self.notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="2000000")
        env.pop("RUNTIME_DIRECTORY", None)
        self.log = open(tmp / "agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*agent_cmd(), "run", "--config", str(config), "--state-dir", str(state_dir), *args],
            stdout=self.log, stderr=self.log, env=env, cwd=ROOT,
        )

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        try:
            self.notify.wait_for("READY=1", timeout_s)
        except TimeoutError:
            self.proc.poll()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self.notify.close()
        self.log.close()


def run_cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*agent_cmd(), *args], capture_output=True, text=True, input=input, timeout=timeout,
                          cwd=ROOT)


def is_root() -> bool:
    return os.geteuid() == 0


def require_root() -> None:
    """Root-only tests run in CI (root). Elsewhere they are a failure under CI=true, a skip otherwise."""
    if is_root():
        return
    if os.environ.get("CI"):
        pytest.fail("this test needs root and CI runs as root")
    pytest.skip("needs root (tmpfs mounts)")


def which_or_fail(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; scripts/setup installs it")
    return path

"""A real Mosquitto on loopback, configured from the production template, plus scorer and agent processes.

The broker directory is made by the same code a technician runs (`dock-scorer broker init` and
`dock-scorer provision`), so the tests exercise the shipped TLS, password and ACL configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from scorer.provision import BrokerLayout, init_broker, provision
from tests.conftest import ROOT, which_or_fail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class Broker:
    """Mosquitto from the production template; kill -9 and restart on the same ports."""

    def __init__(self, root: Path, docks: list[tuple[str, str]], host: str = "127.0.0.1",
                 max_packet: int = 262144) -> None:
        which_or_fail("mosquitto")
        self.host = host
        self.mtls_port = free_port()
        self.password_port = free_port()
        self.layout: BrokerLayout = init_broker(root, host=host, mtls_port=self.mtls_port,
                                                password_port=self.password_port, max_packet=max_packet)
        self.passwords: dict[str, str] = {}
        for device, site in docks:
            p = provision(root, device, site, broker_url=self.mtls_url)
            assert p.password
            self.passwords[device] = p.password
        self.passwords["scorer"] = (self.layout.clients / "scorer" / "mqtt-password").read_text().strip()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "mosquitto.log"
        self.start()

    @property
    def mtls_url(self) -> str:
        return f"mqtts://{self.host}:{self.mtls_port}"

    @property
    def password_url(self) -> str:
        return f"mqtts://{self.host}:{self.password_port}"

    @property
    def ca(self) -> Path:
        return self.layout.pki / "ca.crt"

    def client_dir(self, device: str) -> Path:
        return self.layout.clients / device

    def start(self, netns: str | None = None) -> None:
        cmd = ["mosquitto", "-c", str(self.layout.conf)]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if netns is None:
            wait_port(self.host, self.mtls_port)
            wait_port(self.host, self.password_port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


DOCKS = [("dock-01", "NDC-X"), ("dock-02", "NDC-X"), ("dock-03", "SCF-Y")]


def broker_dir() -> Path:
    """Outside pytest's 0700 temp tree: mosquitto, started as root, drops to user 'mosquitto' and must reach it."""
    return Path(tempfile.mkdtemp(prefix="dock-broker-", dir="/tmp"))


@pytest.fixture
def broker():  # type: ignore[no-untyped-def]
    root = broker_dir()
    b = Broker(root, DOCKS)
    yield b
    b.stop()
    shutil.rmtree(root, ignore_errors=True)


def dock_config(tmp: Path, broker: Broker, device: str, site: str, *, auth: str = "cert",
                extra_sync: str = "", extra: str = "") -> Path:
    """A site.toml for a dock syncing to ``broker`` (auth: 'cert' = mutual TLS, 'password')."""
    d = broker.client_dir(device)
    if auth == "cert":
        creds = (f'broker = "{broker.mtls_url}"\nclient_cert_file = "{d / "client.crt"}"\n'
                 f'client_key_file = "{d / "mqtt-client.key"}"\n')
    else:
        creds = f'broker = "{broker.password_url}"\nusername = "{device}"\npassword_file = "{d / "mqtt-password"}"\n'
    path = tmp / f"{device}-site.toml"
    path.write_text(
        f'[site]\ndevice_id = "{device}"\nfacility = "{site}"\n\n'
        f"[store]\nwarn_free_mb = 1\nfloor_free_mb = 0.5\nballast_mb = 0\n{extra}\n"
        f'[sync]\nenabled = true\nca_file = "{broker.ca}"\n{creds}'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 2\nack_timeout_s = 5\nstatus_interval_s = 1\n{extra_sync}"
    )
    return path


class ScorerProcess:
    """``dock-scorer run`` as a real process (mutual TLS as 'scorer'); ``db`` is a SQLite path or a database URL."""

    def __init__(self, tmp: Path, broker: Broker, db: Path | str, instance: str = "hq1") -> None:
        d = broker.client_dir("scorer")
        exe = Path(sys.executable).parent / "dock-scorer"
        self.log = open(tmp / f"scorer-{instance}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(exe), "run", "--db", str(db), "--broker", broker.mtls_url, "--instance", instance,
             "--ca-file", str(broker.ca), "--cert-file", str(d / "client.crt"), "--key-file", str(d / "client.key")],
            stdout=self.log, stderr=self.log, cwd=ROOT,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def scorer_events(db: Path) -> list[dict[str, Any]]:
    import sqlite3

    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY device_id, seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def agent_undelivered(state_dir: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(state_dir / "scans.db")
    try:
        n = int(conn.execute("SELECT count(*) FROM scans WHERE delivered_at IS NULL").fetchone()[0])
        has_records = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchone()
        if has_records:
            n += int(conn.execute("SELECT count(*) FROM records WHERE delivered_at IS NULL").fetchone()[0])
        return n
    finally:
        conn.close()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()


def status_json(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


os.environ.setdefault("PYTHONUNBUFFERED", "1")

"""End to end on a real broker: agent -> Mosquitto (TLS, ACL) -> scorer -> acknowledgement -> delivered."""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sync.schema import validate_message
from tests.conftest import GOOD, AgentProcess, PtyScanner, run_cli
from tests.mqtt_fixtures import (
    Broker,
    ScorerProcess,
    agent_undelivered,
    dock_config,
    scorer_events,
    status_json,
    wait_until,
)


class Observer:
    """A scorer-identity client that records every message on docks/# and hq/# (to check them all)."""

    def __init__(self, broker: Broker) -> None:
        d = broker.client_dir("scorer")
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="observer", protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.ca), certfile=str(d / "client.crt"), keyfile=str(d / "client.key"),
                            cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(broker.host, broker.mtls_port)
        self.client.subscribe([("docks/#", 1), ("hq/#", 1)])
        self.client.loop_start()
        assert ready.wait(5)

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_scan_travels_to_the_scorer_and_comes_back_delivered(tmp_path: Path, broker: Broker,
                                                              pty_scanner: PtyScanner) -> None:
    observer = Observer(broker)
    scorer_db = tmp_path / "scorer.db"
    scorer = ScorerProcess(tmp_path, broker, scorer_db)
    state = tmp_path / "dock-01"
    config = dock_config(tmp_path, broker, "dock-01", "NDC-X")
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{pty_scanner.path}?good=06&bad=15&name=door1"],
                         config=config)
    try:
        agent.wait_ready()
        codes = [f"99M123456{n:012d}" for n in range(20)] + ["DOCK:LOAD:1234567890"]
        for code in codes:
            pty_scanner.write(code.encode() + b"\r")
            assert pty_scanner.read_feedback(5.0) == GOOD
        assert wait_until(lambda: agent_undelivered(state) == 0, 30), status_json(state).get("sync")
        everything = scorer_events(scorer_db)
        stored = [e for e in everything if e["type"] in ("scan", "command")]
        assert sorted(e.get("barcode") or f"DOCK:{e['command']}:{e['arg']}" for e in stored) == sorted(codes)
        # The load it opened is a record, delivered the same way.
        assert [(e["type"], e["data"]["appointment"]) for e in everything if e["type"] == "load_open"] == [
            ("load_open", "1234567890")]
        assert {e["device_id"] for e in stored} == {"dock-01"} and {e["site"] for e in stored} == {"NDC-X"}
        scans = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
        assert all(s["delivered_at"] for s in scans)
        # The scorer's copy is the dock's record, field for field.
        first = next(e for e in stored if e.get("barcode") == codes[0])
        dock_first = next(s for s in scans if s["barcode"] == codes[0])
        for key in ("event_id", "seq", "boot", "scanned_at", "scanner", "kind", "fields", "reason"):
            assert first[key] == dock_first[key], key
        assert first["schema"] == "dock-scan/1" and first["disposition"] == "unverified"
        # The status shows a healthy link, a scorer online, acknowledgements flowing.
        sync = wait_until(lambda: (status_json(state).get("sync") or {}).get("events_delivered") == len(codes) + 1 and
                          status_json(state)["sync"], 10)
        assert sync["state"] == "connected" and sync["scorers_online"] == ["hq1"] and sync["tls"] is True
        status = json.loads(run_cli("status", "--json", "--state-dir", str(state)).stdout)
        assert status["state"] == "ok", status["problems"]
        assert status["totals"]["undelivered"] == 0
    finally:
        assert agent.stop() == 0
        scorer.stop()
    # Every message anyone emitted follows the schema (batches, acks, birth, state, status, scorer state).
    wait_until(lambda: any(t.endswith("/state") and b"offline" in p for t, p, _ in observer.messages
                           if t.startswith("docks/")), 5)
    observer.close()
    kinds: dict[str, int] = {}
    for topic, payload, _retained in observer.messages:
        if not payload:
            continue
        name = validate_message(json.loads(payload))
        kinds[name] = kinds.get(name, 0) + 1
        if topic.startswith("docks/NDC-X/dock-01/"):
            assert json.loads(payload)["device_id"] == "dock-01"
    assert {"dock-batch/1", "dock-ack/1", "dock-birth/1", "dock-state/1", "dock-status/1",
            "scorer-state/1"} <= kinds.keys(), kinds
    # The dock's clean stop left a retained 'offline'.
    states = [json.loads(p)["state"] for t, p, _ in observer.messages if t == "docks/NDC-X/dock-01/state" and p]
    assert states[0] == "online" and states[-1] == "offline"


def test_password_login_and_dead_scorer_holds_the_backlog(tmp_path: Path, broker: Broker) -> None:
    """No scorer online: scans are stored and kept; the backlog drains once a scorer appears."""
    state = tmp_path / "dock-02"
    config = dock_config(tmp_path, broker, "dock-02", "NDC-X", auth="password")
    shift = tmp_path / "shift.txt"
    shift.write_text("".join(f"99M654321{n:012d}\n" for n in range(300)))
    agent = AgentProcess(tmp_path, state, ["--scanner", f"replay://{shift}?speed=0"], config=config)
    try:
        agent.wait_ready()
        # The replay ends; the agent exits after storing everything, with the link never draining.
        assert agent.proc.wait(30) == 0
        assert agent_undelivered(state) == 300
        agent2 = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/no-tty?name=door2"],
                              config=config)
        try:
            agent2.wait_ready()
            assert wait_until(lambda: (status_json(state).get("sync") or {}).get("state") == "connected", 10)
            s = status_json(state)
            assert s["sync"]["scorers_online"] == [] and agent_undelivered(state) == 300
            scorer = ScorerProcess(tmp_path, broker, tmp_path / "scorer.db")
            try:
                assert wait_until(lambda: agent_undelivered(state) == 0, 30)
            finally:
                scorer.stop()
            assert len({e["event_id"] for e in scorer_events(tmp_path / "scorer.db")}) == 300
        finally:
            agent2.close()
    finally:
        agent.close()


def test_headquarters_declares_a_national_outage_and_the_all_clear(tmp_path: Path, broker: Broker) -> None:
    import subprocess
    import sys

    scorer_db = tmp_path / "scorer.db"
    scorer = ScorerProcess(tmp_path, broker, scorer_db)
    state = tmp_path / "dock-01"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/no-tty?name=door1"],
                         config=dock_config(tmp_path, broker, "dock-01", "NDC-X"))
    exe = str(Path(sys.executable).parent / "dock-scorer")
    try:
        agent.wait_ready()
        assert wait_until(lambda: (status_json(state).get("sync") or {}).get("state") == "connected", 15)
        subprocess.run([exe, "outage", "start", "--db", str(scorer_db), "--id", "national-1"], check=True,
                       capture_output=True)
        assert wait_until(lambda: status_json(state).get("mode") == "national_outage", 15), status_json(state)
        subprocess.run([exe, "outage", "end", "--db", str(scorer_db)], check=True, capture_output=True)
        assert wait_until(lambda: status_json(state).get("mode") == "post_outage", 15)
    finally:
        assert agent.stop() == 0
        scorer.stop()
    # The change was recorded on the dock with who set it, and synced back to headquarters.
    import sqlite3

    conn = sqlite3.connect(state / "scans.db")
    modes = [json.loads(d) for (d,) in conn.execute("SELECT data FROM records WHERE type = 'mode' ORDER BY seq")]
    conn.close()
    assert [(m["declaration"], m["source"], m["outage_id"]) for m in modes] == [
        ("outage", "hq", "national-1"), ("allclear", "hq", "national-1")]
    assert all(m["by"].startswith("headquarters") for m in modes)
    # A restart sees the retained declaration again and records nothing new.
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/no-tty?name=door1"],
                         config=dock_config(tmp_path, broker, "dock-01", "NDC-X"))
    scorer = ScorerProcess(tmp_path, broker, scorer_db)
    try:
        agent.wait_ready()
        assert wait_until(lambda: (status_json(state).get("sync") or {}).get("state") == "connected", 15)
        time.sleep(3)
    finally:
        agent.stop()
        scorer.stop()
    conn = sqlite3.connect(state / "scans.db")
    assert conn.execute("SELECT count(*) FROM records WHERE type = 'mode'").fetchone()[0] == 2
    conn.close()

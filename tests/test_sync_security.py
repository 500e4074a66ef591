"""Security on the real broker (the production Mosquitto template: mutual TLS, passwords, per-dock ACL).

1. The connection matrix: real agents with a bad credential each (wrong password, no client certificate, a
   certificate from another CA, an expired certificate, a dock posing as another dock), plus one genuine dock
   as the control, all against one broker and one real scorer. Each bad dock keeps scanning, says why it
   cannot deliver (status.json, ``dock-agent status --json``), keeps its scans undelivered; the scorer gets
   none of them.
2. Raw MQTT 5 clients: a dock forging an acknowledgement, publishing or subscribing as another dock, or
   publishing past the broker's maximum packet size: refused with the broker's reason, nothing at the scorer.
3. Hostile inbound messages to a running agent, sent with the headquarters identity (which may write acks):
   each is counted under its kind and ignored; a row is marked delivered only by a matching acknowledgement.
4. Unit level: an event too big for the broker is dead-lettered, never sent; an oversized ack is not parsed.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import FakeClock, rfc3339
from agent.settings import StoreSection
from agent.store import ScanInput, Store
from scorer.provision import issue_cert, make_ca
from sync import payloads
from sync.outbox import PACKET_TOO_LARGE, Outbox
from sync.schema import validate
from tests.conftest import GOOD, AgentProcess, PtyScanner, run_cli
from tests.mqtt_fixtures import (
    DOCKS,
    Broker,
    ScorerProcess,
    broker_dir,
    dock_config,
    scorer_events,
    status_json,
    wait_until,
)

NOT_AUTHORIZED = 0x87
MAX_PACKET = 262144  # the production broker's max_packet_size (init_broker's default)


# -- helpers -------------------------------------------------------------------------------------------------


def swap(path: Path, old: str, new: str) -> Path:
    """Swap one credential line of a dock_config() file for a bad one."""
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))
    return path


def rows(state_dir: Path) -> dict[str, str | None]:
    """event_id -> delivered_at of every row of the agent's scans.db (read-only, beside the running agent)."""
    conn = sqlite3.connect(f"file:{state_dir / 'scans.db'}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT event_id, delivered_at FROM scans ORDER BY seq").fetchall())
    finally:
        conn.close()


def dead_letters(state_dir: Path) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(f"file:{state_dir / 'scans.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT event_id, reason_code, reason FROM dead_letters ORDER BY seq").fetchall()
    finally:
        conn.close()


def sync_of(state_dir: Path) -> dict[str, Any]:
    return status_json(state_dir).get("sync") or {}


def make_event(device: str, site: str, seq: int, code: str = "99M123456000000000001") -> dict[str, Any]:
    """A valid dock-scan/1 event (as a dock would build it from its stored row)."""
    row = {"event_id": str(uuid.uuid4()), "device_id": device, "seq": seq, "boot": 1,
           "scanned_at": rfc3339(time.time_ns()), "clock_synced": True, "scanner": "door1", "mode": "normal",
           "kind": "imcb", "barcode": code, "symbology": None, "fields": {"mid": "123456"}, "ticket": None,
           "appointment": None, "verdict": "unverified", "reason": "r"}
    return payloads.event_from_row(row, site)


def make_batch(device: str, site: str, n: int, first_seq: int = 1) -> tuple[bytes, list[str]]:
    """One valid dock-batch/1 of ``n`` events, whatever its size, and its event ids."""
    events = [make_event(device, site, first_seq + i) for i in range(n)]
    batches, too_big = payloads.pack_batches(events, device_id=device, site=site, boot=1,
                                             sent_at=rfc3339(time.time_ns()), historical=False,
                                             max_bytes=1 << 28, max_events=5000)
    assert len(batches) == 1 and not too_big
    validate("batch", json.loads(batches[0].payload))
    return batches[0].payload, [e["event_id"] for e in events]


def ack(device: str, event_ids: list[str], scorer: str = "hq1") -> bytes:
    return payloads.make_ack(device, event_ids, rfc3339(time.time_ns()), scorer)


class Raw:
    """A raw paho MQTT 5 client with one identity; records PUBACK/SUBACK codes, messages and disconnects."""

    def __init__(self, broker: Broker, identity: str, client_id: str, *, password: bool = False,
                 max_packet: int | None = None, will: tuple[str, bytes] | None = None) -> None:
        d = broker.client_dir(identity)
        self.lock = threading.Lock()
        self.pubacks: dict[int, int] = {}
        self.subacks: list[list[int]] = []
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[int] = []
        self.connack: int | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False)
        if password:
            c.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
            c.username_pw_set(identity, broker.passwords[identity])
            port = broker.password_port
        else:
            key = d / ("client.key" if identity == "scorer" else "mqtt-client.key")
            c.tls_set(ca_certs=str(broker.ca), certfile=str(d / "client.crt"), keyfile=str(key),
                      cert_reqs=ssl.CERT_REQUIRED)
            port = broker.mtls_port
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        if max_packet:
            props.MaximumPacketSize = max_packet
        c.connect(broker.host, port, properties=props)
        c.loop_start()
        self.client = c
        assert wait_until(lambda: self.connack is not None, 5), f"{identity}: no CONNACK"
        assert self.connack == 0, f"{identity}: CONNACK {self.connack:#x}"

    def _on_connect(self, _c, _u, _f, rc, _p) -> None:  # type: ignore[no-untyped-def]
        self.connack = int(rc.value)

    def _on_publish(self, _c, _u, mid, rc, _p) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.pubacks[mid] = int(rc.value)

    def _on_subscribe(self, _c, _u, _mid, rcs, _p) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.subacks.append([int(r.value) for r in rcs])

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_disconnect(self, _c, _u, _f, rc, _p) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.disconnects.append(int(rc.value))

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout_s: float = 5.0) -> int | None:
        """QoS 1; the PUBACK reason code, or None when the broker cut the connection instead."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.pubacks or self.disconnects, timeout_s, 0.02)
        return self.pubacks.get(info.mid)

    def subscribe(self, topic: str) -> list[int]:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        assert wait_until(lambda: len(self.subacks) > n, 5, 0.02)
        return self.subacks[n]

    def received(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT (a power cut): the broker publishes the Last Will, if it may."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


# -- the connection matrix: real agents, a real scorer ------------------------------------------------------


@dataclass
class Dock:
    """One agent of the matrix: its state dir, scanner, process and the codes it scanned."""

    name: str
    state: Path
    scanner: PtyScanner
    agent: AgentProcess
    codes: list[str] = field(default_factory=list)


@dataclass
class Lab:
    broker: Broker
    scorer_db: Path
    docks: dict[str, Dock]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("sec-matrix")
    root = broker_dir()
    broker = Broker(root, DOCKS)  # max_packet_size 262144, as shipped
    rogue = tmp / "rogue"
    make_ca(rogue / "pki", name="dock-agent site CA")  # same name as the site CA, different key
    issue_cert(rogue / "pki", rogue / "client.key", rogue / "client.crt", "dock-01")
    expired = tmp / "expired"
    issue_cert(broker.layout.pki, expired / "client.key", expired / "client.crt", "dock-01",
               faketime="-10d", days=1)  # signed by the site CA, expired 9 days ago
    d1 = broker.client_dir("dock-01")
    cert_line = f'client_cert_file = "{d1 / "client.crt"}"\nclient_key_file = "{d1 / "mqtt-client.key"}"\n'
    bad_password = tmp / "bad-password"
    bad_password.write_text("not-the-password\n")

    def config(case: str) -> Path:
        d = tmp / case
        d.mkdir()
        if case == "wrong_password":
            path = dock_config(d, broker, "dock-01", "NDC-X", auth="password")
            return swap(path, str(d1 / "mqtt-password"), str(bad_password))
        if case == "control":
            return dock_config(d, broker, "dock-03", "SCF-Y")
        path = dock_config(d, broker, "dock-01", "NDC-X")
        if case == "no_client_certificate":
            return swap(path, cert_line, "")
        if case == "foreign_ca":
            return swap(path, cert_line, f'client_cert_file = "{rogue / "client.crt"}"\n'
                                         f'client_key_file = "{rogue / "client.key"}"\n')
        if case == "expired_certificate":
            return swap(path, cert_line, f'client_cert_file = "{expired / "client.crt"}"\n'
                                         f'client_key_file = "{expired / "client.key"}"\n')
        if case == "posing_as_dock_02":  # dock-01's certificate, configured as dock-02: uses dock-02's topics
            return swap(path, 'device_id = "dock-01"', 'device_id = "dock-02"')
        raise AssertionError(case)

    scorer_db = tmp / "scorer.db"
    scorer = ScorerProcess(tmp, broker, scorer_db)
    cases = ["wrong_password", "no_client_certificate", "foreign_ca", "expired_certificate",
             "posing_as_dock_02", "control"]
    docks: dict[str, Dock] = {}
    try:
        for case in cases:
            cfg = config(case)
            scanner = PtyScanner(cfg.parent)
            state = cfg.parent / "state"
            serial = f"serial://{scanner.path}?good=06&bad=15&name=door1"
            agent = AgentProcess(cfg.parent, state, ["--scanner", serial], config=cfg)
            docks[case] = Dock(case, state, scanner, agent)
        for i, dock in enumerate(docks.values()):
            dock.agent.wait_ready()
            for n in range(3):
                code = f"99M123456{i * 100 + n:012d}"
                dock.scanner.write(code.encode() + b"\r")
                assert dock.scanner.read_feedback(5.0) == GOOD, f"{dock.name}: scan not taken"
                dock.codes.append(code)
        # Everything the matrix asserts has had time to happen: the control delivered, the impostor's scans
        # refused max_refusals times and dead-lettered, every refused dock has tried (and failed) repeatedly.
        wait_until(lambda: all(rows(docks["control"].state).values()), 20)
        wait_until(lambda: sync_of(docks["posing_as_dock_02"].state).get("dead_lettered") == 3, 20)
        yield Lab(broker, scorer_db, docks)
    finally:
        for dock in docks.values():  # SIGTERM them all at once, then collect
            if dock.agent.proc.poll() is None:
                dock.agent.proc.terminate()
        for dock in docks.values():
            try:
                dock.agent.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass  # stop() below kills it and the exit code shows it
        codes = {name: dock.agent.stop() for name, dock in docks.items()}
        for dock in docks.values():
            dock.scanner.close()
        scorer.stop()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert codes == dict.fromkeys(docks, 0), codes  # every agent, refused or not, stopped cleanly


REFUSED = {
    # case -> what the technician reads in sync.last_error and `dock-agent status` (lower case, a regex)
    "wrong_password": r"not authorized.*wrong user name or password",
    "no_client_certificate": r"client certificate.*sent none|sends no client certificate",
    "foreign_ca": r"client certificate.*another ca",
    "expired_certificate": r"certificate.*expired",
}


def at_scorer(lab: Lab) -> dict[str, dict[str, Any]]:
    return {e["event_id"]: e for e in scorer_events(lab.scorer_db)}


def test_control_dock_delivers_so_the_matrix_can_fail(lab: Lab) -> None:
    """The genuine dock on the same broker and scorer delivers, so 'nothing reaches the scorer' means it."""
    dock = lab.docks["control"]
    delivered = rows(dock.state)
    assert len(delivered) == 3 and all(delivered.values()), delivered
    stored = at_scorer(lab)
    assert set(delivered) <= set(stored)
    assert sorted(stored[eid]["barcode"] for eid in delivered) == dock.codes
    assert sync_of(dock.state)["state"] == "connected"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_connection_is_reported_and_nothing_is_delivered(lab: Lab, case: str) -> None:
    dock = lab.docks[case]
    why = REFUSED[case]
    assert dock.agent.proc.poll() is None, f"{case}: the agent died"
    sync = wait_until(lambda: (s := sync_of(dock.state)).get("last_error") and s, 10)
    assert sync["state"] != "connected", sync
    assert sync["events_sent"] == 0 and sync["reconnects"] == 0, sync  # never got as far as CONNACK
    err = sync["last_error"]
    assert re.search(why, err.lower()), f"{case}: last_error {err!r} should say /{why}/"
    # The status command lists the headquarters link as a problem, with the same reason.
    res = run_cli("status", "--json", "--state-dir", str(dock.state))
    status = json.loads(res.stdout)
    assert res.returncode == 1 and status["state"] == "degraded", status
    link = [p for p in status["problems"] if p.startswith("headquarters link")]
    assert link and re.search(why, link[0].lower()), status["problems"]
    assert status["totals"]["undelivered"] == 3
    # Scanning went on; every scan is kept undelivered; none reached the scorer.
    mine = rows(dock.state)
    assert len(mine) == 3 and not any(mine.values()), mine
    assert not set(mine) & set(at_scorer(lab))


def test_dock_posing_as_another_dock_is_refused_by_the_acl(lab: Lab) -> None:
    """dock-01's certificate with device_id dock-02: the broker accepts the login (the identity is genuine)
    but refuses every publish on dock-02's topics (PUBACK 0x87); after max_refusals the scans are
    dead-lettered with the broker's reason, reported, kept, and never seen by the scorer."""
    dock = lab.docks["posing_as_dock_02"]
    assert dock.agent.proc.poll() is None
    sync = sync_of(dock.state)
    assert sync["dead_lettered"] == 3 and sync["refusals"] >= 3 and sync["events_delivered"] == 0, sync
    mine = rows(dock.state)
    assert len(mine) == 3 and not any(mine.values())
    dead = dead_letters(dock.state)
    assert sorted(eid for eid, _, _ in dead) == sorted(mine)
    assert {(code, reason) for _, code, reason in dead} == {(NOT_AUTHORIZED, "Not authorized")}
    status = json.loads(run_cli("status", "--json", "--state-dir", str(dock.state)).stdout)
    assert status["state"] == "degraded"
    assert "3 scans refused by the broker (dead letters)" in status["problems"]
    stored = at_scorer(lab)
    assert not set(mine) & set(stored)
    assert not [e for e in stored.values() if e["device_id"] == "dock-02"]


def test_raw_clients_cannot_forge_acks_cross_publish_snoop_or_oversize(lab: Lab) -> None:
    broker = lab.broker
    # A dock forging an acknowledgement for itself, on either listener: Not authorized (0x87).
    forger = Raw(broker, "dock-01", "forger-mtls")
    forger_pw = Raw(broker, "dock-01", "forger-password", password=True)
    fake_ack = ack("dock-01", [str(uuid.uuid4())])
    try:
        assert forger.publish("docks/NDC-X/dock-01/acks", fake_ack) == NOT_AUTHORIZED
        assert forger_pw.publish("docks/NDC-X/dock-01/acks", fake_ack) == NOT_AUTHORIZED
        # Publishing another dock's events, at the same site or another: 0x87.
        as_02, ids_02 = make_batch("dock-02", "NDC-X", 3)
        as_03, ids_03 = make_batch("dock-03", "SCF-Y", 3, first_seq=9001)
        assert forger.publish("docks/NDC-X/dock-02/events", as_02) == NOT_AUTHORIZED
        assert forger_pw.publish("docks/SCF-Y/dock-03/events", as_03) == NOT_AUTHORIZED
        # Reading another dock's acknowledgements: Mosquitto 2.0 grants the SUBSCRIBE (it checks read access
        # per message, at delivery), but delivers nothing from it.
        assert forger.subscribe("docks/NDC-X/dock-02/acks") in ([1], [NOT_AUTHORIZED])
        assert forger.subscribe("docks/NDC-X/dock-01/acks") == [1]  # its own: granted QoS 1
    finally:
        forger_pw.close()
    hq = Raw(broker, "scorer", "hq-test")
    try:
        assert (hq.publish("docks/NDC-X/dock-02/acks", ack("dock-02", ids_02)) or 0) < 0x80
        assert (hq.publish("docks/NDC-X/dock-01/acks", ack("dock-01", ids_02)) or 0) < 0x80
        assert wait_until(lambda: forger.received("docks/NDC-X/dock-01/acks"), 5)  # the path works...
        assert forger.received("docks/NDC-X/dock-02/acks") == []  # ...and the other dock's stays closed
    finally:
        hq.close()
        forger.close()
    # Oversized: a valid batch bigger than max_packet_size on the dock's own topic. The broker drops the
    # client (no PUBACK); the same client's small batch afterwards is stored (so the path itself works).
    big, big_ids = make_batch("dock-03", "SCF-Y", 1000, first_seq=10_001)
    assert len(big) > MAX_PACKET
    dock3 = Raw(broker, "dock-03", "raw-dock-03")
    try:
        assert dock3.publish("docks/SCF-Y/dock-03/events", big) is None
        assert dock3.disconnects, "the broker should have cut the oversized publisher off"
    finally:
        dock3.close()
    dock3 = Raw(broker, "dock-03", "raw-dock-03")
    small, small_ids = make_batch("dock-03", "SCF-Y", 2, first_seq=20_001)
    try:
        assert dock3.publish("docks/SCF-Y/dock-03/events", small) == 0
    finally:
        dock3.close()
    assert wait_until(lambda: set(small_ids) <= set(at_scorer(lab)), 10)
    stored = at_scorer(lab)
    assert not (set(big_ids) | set(ids_02) | set(ids_03)) & set(stored)


def test_a_last_will_on_another_docks_topic_is_not_published(lab: Lab) -> None:
    """A dock cannot make another dock look offline through its Last Will (the ACL is applied to the will)."""
    broker = lab.broker
    hq = Raw(broker, "scorer", "hq-will-watch")
    try:
        hq.subscribe("docks/NDC-X/+/state")
        forged = b'{"forged": "offline"}'
        try:
            Raw(broker, "dock-01", "will-forger", will=("docks/NDC-X/dock-02/state", forged)).drop()
        except AssertionError:
            pass  # a broker that checks the will at CONNECT refuses the connection: as good
        Raw(broker, "dock-01", "will-genuine", will=("docks/NDC-X/dock-01/state", forged)).drop()  # control
        assert wait_until(lambda: hq.received("docks/NDC-X/dock-01/state"), 5), "the genuine will never came"
        time.sleep(0.5)
        assert forged not in hq.received("docks/NDC-X/dock-02/state")
    finally:
        hq.close()


@pytest.mark.xfail(strict=True, reason=(
    "known gap: Mosquitto lets any authenticated client take over any client id, so a client with dock-01's "
    "credentials and client id 'dock-03' throws the real dock-03 off the broker (denial of service; nothing "
    "is forged or read). Fix: use_username_as_clientid true on both listeners of "
    "config/mosquitto/mosquitto.conf.template, with one broker identity per scorer instance (their client "
    "ids scorer-<instance> would otherwise collide, all being user 'scorer')."))
def test_a_dock_cannot_throw_another_dock_off_the_broker(lab: Lab) -> None:
    control = lab.docks["control"]  # dock-03's agent, MQTT client id "dock-03", connected
    before = sync_of(control.state)["reconnects"]
    try:
        Raw(lab.broker, "dock-01", "dock-03").close()
    except AssertionError:
        pass  # refusing the impostor's CONNECT closes the gap too
    kicked = wait_until(lambda: sync_of(control.state).get("reconnects", 0) > before, 3)
    assert not kicked, "dock-03's agent lost its connection to a client with dock-01's credentials"


# -- hostile inbound messages to a running agent -------------------------------------------------------------


def test_hostile_inbound_messages_are_counted_and_ignored(tmp_path: Path) -> None:
    """The headquarters identity (allowed to write acks and hq/#) sends the agent garbage. No real scorer
    runs: this test is the scorer, so that every acknowledgement the agent sees is one it chose.

    The broker here allows 1 MiB packets so that a message over the agent's own limit (512 KiB, advertised
    as its MQTT 5 Maximum Packet Size) gets past the broker's ingress and the agent's limit is what is tested.
    """
    root = broker_dir()
    broker = Broker(root, DOCKS, max_packet=1 << 20)
    scanner = PtyScanner(tmp_path)
    state = tmp_path / "dock-01"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{scanner.path}?good=06&bad=15&name=door1"],
                         config=dock_config(tmp_path, broker, "dock-01", "NDC-X"))
    clients: list[Raw] = []
    acks = "docks/NDC-X/dock-01/acks"
    try:
        hq = Raw(broker, "scorer", "hq-test")
        clients.append(hq)
        hq.subscribe("docks/NDC-X/dock-01/events")
        agent.wait_ready()
        assert wait_until(lambda: sync_of(state).get("state") == "connected", 10), sync_of(state)
        for n in range(3):
            scanner.write(f"99M123456{n:012d}\r".encode())
            assert scanner.read_feedback(5.0) == GOOD
        # No scorer is online, so each live scan is published once and stays unacknowledged.
        assert wait_until(lambda: len(hq.received("docks/NDC-X/dock-01/events")) >= 3, 10)
        batches = hq.received("docks/NDC-X/dock-01/events")
        sent = [e["event_id"] for p in batches for e in json.loads(p)["events"]]
        ids = list(rows(state))
        assert sorted(sent) == sorted(ids) and len(ids) == 3
        assert not any(rows(state).values())

        expected: Counter[str] = Counter()

        def send(topic: str, payload: bytes, kind: str | None, retain: bool = False) -> None:
            """Publish as headquarters; the agent counts it under ``kind`` (None: it never gets it)."""
            before = rows(state)
            assert hq.publish(topic, payload, retain=retain) in (0, 0x10)
            if kind is not None:
                expected[kind] += 1
            assert wait_until(lambda: sync_of(state).get("inbound_ignored") == dict(expected), 5), (
                kind, sync_of(state).get("inbound_ignored"), dict(expected))
            assert rows(state) == before, f"{kind}: a row changed"
            assert agent.proc.poll() is None, f"{kind}: the agent died"

        send(acks, b"\xff\xfe\x00\x80 not UTF-8 \xc3\x28", "not_utf8")
        send(acks, b'{"schema": "dock-ack/1", "device_id": ', "bad_json")
        send(acks, b"[" * 10_000 + b"]" * 10_000, "too_deep")
        send(acks, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "too_deep")
        send(acks, json.dumps({"schema": "dock-ack/1", "device_id": "dock-01", "event_ids": ids[0],
                               "acked_at": rfc3339(time.time_ns()), "scorer": "hq1"}).encode(), "bad_schema")
        send(acks, ack("dock-01", [str(uuid.uuid4())]), "ack_unknown_or_repeated")  # an id it never had
        send(acks, ack("dock-02", ids), "other_device")  # this dock's ids, addressed to another dock
        send("hq/scorers/evil/state", b"{not json", "bad_json", retain=True)
        send("hq/scorers/evil/state", payloads.make_scorer_state("hq1", "online", rfc3339(time.time_ns())),
             "bad_schema")  # a state naming another instance than its topic
        send("hq/sites/NDC-X/outage", b"\x00junk", "unhandled_topic")
        assert sync_of(state)["scorers_online"] == []
        # Over the agent's advertised Maximum Packet Size: the broker accepts it (it has subscribers) but must
        # not forward it to the agent; the agent stays connected and nothing is counted or changed.
        reconnects = sync_of(state)["reconnects"]
        send(acks, b" " * (600 * 1024), None)
        time.sleep(1.5)
        assert sync_of(state)["inbound_ignored"] == dict(expected)
        assert sync_of(state)["state"] == "connected" and sync_of(state)["reconnects"] == reconnects

        # A dock forging the acknowledgement it wants: refused by the broker, nothing delivered.
        forger = Raw(broker, "dock-01", "forger")
        try:
            assert forger.publish(acks, ack("dock-01", ids)) == NOT_AUTHORIZED
        finally:
            forger.close()
        time.sleep(1.0)
        assert not any(rows(state).values())

        # The genuine acknowledgement, for the first scan only: exactly that row is delivered.
        hq.publish(acks, ack("dock-01", [ids[0]]))
        assert wait_until(lambda: rows(state)[ids[0]], 5)
        after = rows(state)
        assert [eid for eid, at in after.items() if at] == [ids[0]]
        assert wait_until(lambda: sync_of(state).get("events_delivered") == 1, 5)
        # Replayed: counted, and the delivered row keeps its first delivered_at.
        send(acks, ack("dock-01", [ids[0]]), "ack_unknown_or_repeated")
        assert rows(state) == after
        # A genuine ack naming a delivered, an undelivered and an unknown id: only the undelivered changes.
        expected["ack_unknown_or_repeated"] += 2
        hq.publish(acks, ack("dock-01", [ids[0], ids[1], str(uuid.uuid4())]))
        assert wait_until(lambda: rows(state)[ids[1]], 5)
        assert wait_until(lambda: sync_of(state).get("inbound_ignored") == dict(expected), 5), sync_of(state)
        final = rows(state)
        assert final[ids[0]] == after[ids[0]] and final[ids[2]] is None
        assert sync_of(state)["events_delivered"] == 2

        # Through all of it the agent kept scanning and publishing.
        scanner.write(b"99M123456000000000099\r")
        assert scanner.read_feedback(5.0) == GOOD
        assert wait_until(lambda: len(hq.received("docks/NDC-X/dock-01/events")) >= 4, 10)
        assert sync_of(state)["state"] == "connected" and agent.proc.poll() is None
        assert sum(1 for at in rows(state).values() if at is None) == 2
        # Each malformed message left one log line saying what was wrong (unknown or repeated ids are routine:
        # the scorer acknowledges duplicates again; facility topics are not handled yet: counted only).
        logged = (tmp_path / "agent.log").read_text(errors="replace").count("sync: ignored a message on ")
        quiet = expected["ack_unknown_or_repeated"] + expected["unhandled_topic"]
        assert logged == sum(expected.values()) - quiet
    finally:
        for client in clients:
            client.close()
        code = agent.stop()
        scanner.close()
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0


# -- unit level ----------------------------------------------------------------------------------------------


class Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def publish(self, _topic: str, payload: bytes) -> int | None:
        self.sent.append(payload)
        return len(self.sent)


def test_an_event_too_big_for_the_broker_is_dead_lettered_not_sent(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path, "dock-01", StoreSection(floor_free_mb=0, warn_free_mb=0, ballast_mb=0), clock)
    store.open()
    try:
        def scan(code: str, fields: dict[str, str]) -> dict[str, Any]:
            scan_input = ScanInput("door1", code.encode(), code, "imcb", None, fields, "unverified", "r",
                                   clock.wall_ns(), 0, True)
            return store.record_scan(scan_input).row

        wire = Wire()
        box = Outbox(store, device_id="dock-01", site="NDC-X", boot=store.boot,
                     topic="docks/NDC-X/dock-01/events", publish=wire.publish, clock=clock)
        box.link_up(4096)  # the broker's Maximum Packet Size from CONNACK
        huge = scan("99M123456000000000001", {f"k{i}": "x" * 256 for i in range(32)})  # ~9 KB, schema-valid
        small = scan("99M123456000000000002", {"mid": "123456"})
        assert box.offer_live(huge) is False and wire.sent == []
        assert box.offer_live(small) is True and len(wire.sent) == 1
        assert [e["event_id"] for e in json.loads(wire.sent[0])["events"]] == [small["event_id"]]
        assert box.stats.dead_lettered == 1
        (eid, code, reason), = store.conn.execute("SELECT event_id, reason_code, reason FROM dead_letters")
        assert (eid, code) == (huge["event_id"], PACKET_TOO_LARGE)
        assert "exceeds the broker's maximum packet size" in reason
        assert store.backlog() == (2, huge["scanned_at"], 1)  # kept, undelivered, never dropped
        # The backlog drain (after a reconnect, a scorer online) resends the small one, never the dead letter.
        box.link_down()
        box.link_up(4096)
        box.scorer_state("hq1", True)
        assert box.pump(100.0) == 1
        assert [e["event_id"] for e in json.loads(wire.sent[-1])["events"]] == [small["event_id"]]
        assert box.stats.dead_lettered == 1
    finally:
        store.close()


def test_pack_batches_never_emits_a_batch_over_the_budget() -> None:
    events = [make_event("dock-01", "NDC-X", i + 1) for i in range(50)]
    events[7]["fields"] = {f"k{i}": "y" * 256 for i in range(32)}
    batches, too_big = payloads.pack_batches(events, device_id="dock-01", site="NDC-X", boot=1,
                                             sent_at=rfc3339(time.time_ns()), historical=True, max_bytes=4096,
                                             max_events=500)
    assert [ev["seq"] for ev, _ in too_big] == [8]
    assert all(len(b.payload) <= 4096 - payloads.MQTT_OVERHEAD for b in batches)
    assert sorted(s for b in batches for s in b.seqs) == [i + 1 for i in range(50) if i != 7]


def test_oversized_inbound_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(payloads.BadMessage) as e:
        payloads.read_ack(b"[" * (payloads.MAX_INBOUND_BYTES + 1), "dock-01")
    assert e.value.kind == "oversized"
    with pytest.raises(payloads.BadMessage) as e:
        payloads.read_scorer_state(b" " * 4097)
    assert e.value.kind == "oversized"

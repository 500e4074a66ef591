"""``dock-scorer run``: ingest over MQTT 5 with a shared subscription, acknowledging only after commit.

paho's network thread only queues messages. A writer thread takes everything queued (group commit), checks it
through scorer.ingest, commits once, and only then publishes each dock's acknowledgement naming exactly the
events now stored (new ones and earlier duplicates alike, so a resend is always acknowledged). The instance's
retained ``hq/scorers/{instance}/state`` says online while it runs; its Last Will says offline.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.clock import rfc3339
from scorer.db import ScorerDB
from scorer.ingest import Accepted, Ingestor
from sync import payloads
from sync.mqtt_link import LinkConfig
from sync.schema import SchemaError, validate_message
from sync.topics import NATIONAL_OUTAGE, DockTopics, events_share_filter, parse_dock_topic, queries_share_filter, scorer_state

log = logging.getLogger(__name__)

PRESENCE_FILTERS = ("docks/+/+/birth", "docks/+/+/state", "docks/+/+/status")
MAX_ACK_IDS = 5000
GROUP_BYTES = 2_500_000


class ScorerService:
    """One scorer instance."""

    def __init__(self, db: ScorerDB, link: LinkConfig, instance: str) -> None:
        self.db = db
        self.link = link  # the same connection settings the docks use (sync.mqtt_link.LinkConfig)
        self.instance = instance
        self.ingestor = Ingestor(db, time.time_ns)
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.acks_sent = 0
        self._outage_published: tuple[str, str] | None = None  # (state, at) last published on hq/national/outage
        self._outage_checked = 0.0
        self.answers_sent = 0
        self.max_packet: int | None = None  # the broker's, from CONNACK (answers must fit it)
        self.client = self._make_client()
        self.writer = threading.Thread(target=self._write_loop, name="scorer-writer", daemon=True)

    def _now(self) -> str:
        return rfc3339(time.time_ns())

    def _make_client(self) -> mqtt.Client:
        link = self.link
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=link.client_id,
                             protocol=mqtt.MQTTv5)
        client.will_set(scorer_state(self.instance), payloads.make_scorer_state(self.instance, "offline", self._now()),
                        qos=1, retain=True)
        if link.url.tls:
            client.tls_set(ca_certs=link.ca_file, certfile=link.cert_file, keyfile=link.key_file,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if link.username:
            client.username_pw_set(link.username, link.password)
        client.reconnect_delay_set(0.2, 5)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- paho callbacks (network thread) -----------------------------------------------------------------

    def _on_connect(self, client, _u, _f, reason_code, _p) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.error("scorer: broker refused the connection: %s", reason_code)
            return
        self.max_packet = getattr(_p, "MaximumPacketSize", None) if _p else None
        client.subscribe(events_share_filter(), qos=1)
        client.subscribe(queries_share_filter(), qos=1)
        for f in PRESENCE_FILTERS:
            client.subscribe(f, qos=1)
        client.publish(scorer_state(self.instance),
                       payloads.make_scorer_state(self.instance, "online", self._now()), qos=1, retain=True)
        self.connected.set()
        self._outage_published = None  # publish the current declaration again on every connection
        log.info("scorer %s: connected to %s:%d", self.instance, self.link.url.host, self.link.url.port)

    def _on_disconnect(self, _c, _u, _f, reason_code, _p) -> None:  # type: ignore[no-untyped-def]
        self.connected.clear()
        if not self.stop_event.is_set():
            log.warning("scorer %s: disconnected: %s", self.instance, reason_code)

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        self.inbox.put(msg)

    # -- the writer thread -------------------------------------------------------------------------------

    def _publish_outage(self) -> None:
        """Keep hq/national/outage (retained) equal to the latest declaration in the database: `dock-scorer
        outage start|end` and the scorecard page record it, and every running instance publishes it."""
        now = time.monotonic()
        if not self.connected.is_set() or now - self._outage_checked < 2.0:
            return
        self._outage_checked = now
        outages = self.db.outages()
        if not outages:
            return
        oid, started, ended = outages[-1]
        current = ("allclear", ended) if ended else ("outage", started)
        if current == self._outage_published:
            return
        by = "headquarters"
        self.client.publish(NATIONAL_OUTAGE, payloads.make_hq_outage(current[0], oid, current[1], by), qos=1,
                            retain=True)
        self._outage_published = current
        log.info("scorer: published the national %s %s", "outage" if current[0] == "outage" else "all-clear", oid)

    def _write_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._publish_outage()
            except Exception:  # a database hiccup must not stop ingest
                log.exception("scorer: could not publish the outage state")
            try:
                first = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            msgs = [first]
            size = len(first.payload)
            # A group commit of at most ~2.5 MB (about 5,000 events): acks go out steadily, not in big bursts.
            while len(msgs) < 200 and size < GROUP_BYTES:
                try:
                    msgs.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
                size += len(msgs[-1].payload)
            try:
                self._process(msgs)
            except Exception:
                # A storage failure must not kill ingest: nothing was acknowledged, the docks will resend.
                log.exception("scorer: could not store %d messages; docks will resend them", len(msgs))
                time.sleep(1.0)

    def _process(self, msgs: list[mqtt.MQTTMessage]) -> None:
        accepted: list[Accepted] = []
        for msg in msgs:
            where = parse_dock_topic(msg.topic)
            if where is None:
                continue
            if where[2] == "events":
                a = self.ingestor.check(bytes(msg.payload), f"mqtt:{msg.topic}", msg.topic)
                if a is not None:
                    accepted.append(a)
            elif where[2] == "query":
                self._answer(where, bytes(msg.payload), msg.topic)
            else:
                self._presence(where, bytes(msg.payload), msg.topic)
        if not accepted:
            return
        committed = self.ingestor.commit(accepted)  # returns only after COMMIT
        for (site, device), ids in committed.items():
            topic = DockTopics(site, device).acks
            for i in range(0, len(ids), MAX_ACK_IDS):
                chunk = list(dict.fromkeys(ids[i:i + MAX_ACK_IDS]))
                self.client.publish(topic, payloads.make_ack(device, chunk, self._now(), self.instance), qos=1)
                self.acks_sent += 1

    def _answer(self, where: tuple[str, str, str], payload: bytes, topic: str) -> None:
        """A dock asks about containers its reference slice does not know (docs/protocol.md, dock-query/1)."""
        import datetime as dt

        from scorer.slices import answer_query
        from sync.slices import DEFAULT_MAX_PACKET, read_query

        site, device, _leaf = where
        try:
            query = read_query(payload)
        except payloads.BadMessage as e:
            self.ingestor.stats.rejected["bad_query"] += 1
            log.warning("scorer: ignored %s: %s", topic, e)
            return
        if query["device_id"] != device or query["site"] != site:
            self.ingestor.stats.rejected["bad_query"] += 1
            return
        reply = DockTopics(site, device).answers
        try:  # never let a question take the events of the same group down with it
            answer = answer_query(self.db, query, scorer=self.instance, now=dt.datetime.now(dt.timezone.utc),
                                  max_packet=min(self.max_packet or DEFAULT_MAX_PACKET, DEFAULT_MAX_PACKET),
                                  answers_topic=reply)
        except Exception:
            self.ingestor.stats.rejected["query_failed"] += 1
            log.exception("scorer: could not answer %s", topic)
            return
        self.client.publish(reply, answer, qos=1)
        self.answers_sent += 1

    def _presence(self, where: tuple[str, str, str], payload: bytes, topic: str) -> None:
        site, device, leaf = where
        if not payload:
            return  # a cleared retained message
        try:
            obj = payloads.loads_bounded(payload, 65536)
            validate_message(obj)
        except (payloads.BadMessage, SchemaError) as e:
            self.ingestor.stats.rejected["bad_presence"] += 1
            log.warning("scorer: ignored %s: %s", topic, e)
            return
        if obj.get("device_id") != device or obj.get("site") != site:
            self.ingestor.stats.rejected["bad_presence"] += 1
            return
        fields: dict[str, object] = {"boot": obj.get("boot")}
        if leaf == "state":
            fields["state"] = obj.get("state")
        elif leaf == "birth":
            fields["birth"] = payload.decode()
        elif leaf == "status":
            fields["status"] = payload.decode()
        self.db.dock_seen(device, site, self._now(), **fields)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.writer.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect_async(self.link.url.host, self.link.url.port, keepalive=self.link.keepalive_s,
                                  clean_start=True, properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Clean stop: say offline (retained), drain what was received, disconnect."""
        if self.connected.is_set():
            info = self.client.publish(scorer_state(self.instance),
                                       payloads.make_scorer_state(self.instance, "offline", self._now()),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self.stop_event.set()
        self.writer.join(5)
        self.client.disconnect()
        self.client.loop_stop()

"""The dock's sync service: wires the MQTT link, the outbox policy and presence (birth, state, status).

Called only from the agent's main loop. Link threads post events to the loop's queue; the loop hands them to
``handle``; the loop's tick calls ``tick``. Capture and commit never wait for any of this.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock import Clock, rfc3339
from agent.errors import ConfigError
from agent.settings import Settings, SyncSection, read_secret
from sync import payloads
from sync.mqtt_link import BrokerURL, Inbound, LinkConfig, LinkDown, LinkUp, MqttLink, Published
from sync.outbox import Outbox, OutboxSettings, OutboxStore
from sync.slices import SliceDone, SliceService, make_query, read_answer
from sync.topics import NATIONAL_OUTAGE, SCORER_STATE_FILTER, DockTopics, parse_scorer_state_topic

log = logging.getLogger(__name__)

LINK_EVENTS = (LinkUp, LinkDown, Published, Inbound)


def link_config(cfg: SyncSection, device_id: str, broker_override: str | None = None) -> LinkConfig:
    """Connection settings with secrets read from their files.

    Raises:
        ConfigError: a bad broker URL, plaintext without consent, or an unreadable secret.
    """
    try:
        url = BrokerURL.parse(broker_override or cfg.broker)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not url.tls and not (cfg.allow_plaintext or broker_override):
        raise ConfigError("sync.broker is mqtt:// (no TLS); use mqtts:// or set sync.allow_plaintext = true")
    key_file = cfg.client_key_file
    if cfg.client_cert_file and not key_file:
        key_file = _credential_path("mqtt-client.key")
    password = None
    if cfg.password_file:
        password = read_secret("mqtt-password", explicit_path=cfg.password_file)
    elif _credential_path("mqtt-password", must_exist=False):
        password = read_secret("mqtt-password")
    username = cfg.username or (device_id if password else None)
    return LinkConfig(
        url=url, client_id=device_id, ca_file=cfg.ca_file, cert_file=cfg.client_cert_file, key_file=key_file,
        username=username, password=password, keepalive_s=cfg.keepalive_s, reconnect_min_s=cfg.reconnect_min_s,
        reconnect_max_s=cfg.reconnect_max_s,
    )


def _credential_path(name: str, must_exist: bool = True) -> str | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(directory) / name if directory else None
    if path is not None and path.exists():
        return str(path)
    if must_exist:
        raise ConfigError(f"secret {name!r}: set its path in the configuration or provide it as a credential")
    return None


class DockSync:
    """Store-and-forward for one dock."""

    def __init__(
        self,
        settings: Settings,
        store: OutboxStore,
        clock: Clock,
        *,
        boot: int,
        post: Callable[[object], None],
        version: str,
        config_hash: str,
        scanners: list[dict[str, str]],
        broker_override: str | None = None,
    ) -> None:
        self.cfg = settings.sync
        self.post = post
        self.device_id = settings.site.device_id
        self.site = settings.site.facility
        self.clock = clock
        self.boot = boot
        self.version = version
        self.config_hash = config_hash
        self.scanners = scanners
        self.started_at = rfc3339(clock.wall_ns())
        self.topics = DockTopics(self.site, self.device_id)
        self.inbound_ignored: Counter[str] = Counter()
        self._last_status_mono = float("-inf")
        self._status_source: Callable[[], dict[str, Any]] | None = None
        self.outbox = Outbox(
            store, device_id=self.device_id, site=self.site, boot=boot, topic=self.topics.events,
            publish=self._publish_event, clock=clock,
            settings=OutboxSettings(
                max_inflight=self.cfg.max_inflight, batch_max_events=self.cfg.batch_max_events,
                backlog_batches_per_s=self.cfg.backlog_batches_per_s, ack_timeout_s=self.cfg.ack_timeout_s,
                puback_timeout_s=self.cfg.puback_timeout_s, max_refusals=self.cfg.max_refusals,
            ),
        )
        self.link = MqttLink(
            link_config(self.cfg, self.device_id, broker_override),
            will=(self.topics.state, self._state_payload("offline")),
            subscriptions=[self.topics.acks, SCORER_STATE_FILTER, self.topics.hq_site, self.topics.answers,
                           NATIONAL_OUTAGE],
            post=post,
        )
        # Reference slices (hq/sites/{site}/slice/...): assembled here, installed in the state directory.
        state_dir = getattr(store, "state_dir", None)
        self.slices: SliceService | None = None
        if state_dir is not None:
            floor_mb = max(settings.store.warn_free_mb, settings.store.floor_free_mb)
            max_age_h = getattr(getattr(settings, "workflow", None), "slice_max_age_h", 24)
            self.slices = SliceService(
                self.site, Path(state_dir), post=post, wall_ns=clock.wall_ns, min_free_bytes=int(floor_mb * 1048576),
                stale_after=dt.timedelta(hours=max_age_h), on_corrupt=self._refetch_slice,
            )

    def set_status_source(self, source: Callable[[], dict[str, Any]]) -> None:
        """Where the periodic retained status gets its health facts (the agent's snapshot)."""
        self._status_source = source

    def set_slice_listener(self, listener: Callable[[Any], None]) -> None:
        """Who gets the reference slice (sync.slices.Slice, or None) each time it is installed or loaded, on the
        loop thread (e.g. the workflow: ``lambda s: setattr(agent.workflow, "slice", s)``)."""
        if self.slices is not None:
            self.slices.listener = listener

    def start(self) -> None:
        if self.slices is not None:
            self.slices.start()
        self.link.start()

    def stop(self) -> None:
        self.link.stop(final=(self.topics.state, self._state_payload("offline")))

    # -- events from the link ----------------------------------------------------------------------------

    def handle(self, event: object) -> None:
        if isinstance(event, Published):
            self.outbox.published(event.mid, event.code, event.reason)
        elif isinstance(event, Inbound):
            self._inbound(event)
        elif isinstance(event, LinkUp):
            self.outbox.link_up(event.max_packet)
            self._publish_presence()
        elif isinstance(event, LinkDown):
            self.outbox.link_down()
        elif isinstance(event, SliceDone) and self.slices is not None:
            self.slices.done(event)

    def _inbound(self, msg: Inbound) -> None:
        try:
            if msg.topic == self.topics.acks:
                ack = payloads.read_ack(msg.payload, self.device_id)
                self.outbox.acknowledged(ack.event_ids)
            elif (instance := parse_scorer_state_topic(msg.topic)) is not None:
                if not msg.payload:
                    self.outbox.scorer_state(instance, False)  # retained state cleared
                    return
                name, online = payloads.read_scorer_state(msg.payload)
                if name != instance:
                    raise payloads.BadMessage("bad_schema", f"state of {name!r} on the topic of {instance!r}")
                self.outbox.scorer_state(instance, online, fresh=not msg.retained)
            elif msg.topic == NATIONAL_OUTAGE:
                if msg.payload:
                    self.post(payloads.read_hq_outage(msg.payload))  # the loop applies it to the workflow
            elif self.slices is not None and msg.topic.startswith(f"hq/sites/{self.site}/slice/"):
                self.slices.offer(msg.topic, msg.payload)
            elif msg.topic == self.topics.answers and self.slices is not None:
                self.slices.answered(read_answer(msg.payload, self.device_id))
            else:
                self.inbound_ignored["unhandled_topic"] += 1  # facility topics: later issues
        except payloads.BadMessage as e:
            self.inbound_ignored[e.kind] += 1
            log.warning("sync: ignored a message on %s: %s", msg.topic, e)

    def _refetch_slice(self, reason: str) -> None:
        """The installed slice is unusable: reconnect, so the broker sends the retained slice again."""
        if self.link.connected:
            self.link.force_reconnect(reason)

    def ask(self, imcbs: list[str]) -> str | None:
        """Ask headquarters about containers the slice does not know (``dock-query/1``); the answer arrives in
        ``self.slices.answers[query_id]``. None when offline (nothing is queued: ask again later)."""
        if self.slices is None or not self.link.connected:
            return None
        query_id, payload = make_query(self.device_id, self.site, imcbs, rfc3339(self.clock.wall_ns()),
                                       self.slices.version)
        if self.link.publish(self.topics.query, payload) is None:
            return None
        self.slices.queries_sent += 1
        return query_id

    # -- publishing --------------------------------------------------------------------------------------

    def _publish_event(self, topic: str, payload: bytes) -> int | None:
        return self.link.publish(topic, payload)

    def _state_payload(self, state: str) -> bytes:
        return payloads.make_state(self.device_id, self.site, self.boot, state, rfc3339(self.clock.wall_ns()))

    def _publish_presence(self) -> None:
        now = rfc3339(self.clock.wall_ns())
        birth = payloads.make_birth(
            device_id=self.device_id, site=self.site, boot=self.boot, version=self.version,
            config_hash=self.config_hash, started_at=self.started_at, at=now, scanners=self.scanners,
        )
        self.link.publish(self.topics.birth, birth, retain=True)
        self.link.publish(self.topics.state, self._state_payload("online"), retain=True)
        self._last_status_mono = float("-inf")

    def status_payload(self) -> bytes:
        facts = self._status_source() if self._status_source else {}
        backlog = facts.get("backlog", {}) if isinstance(facts.get("backlog"), dict) else {}
        return payloads.make_status(
            device_id=self.device_id, site=self.site, boot=self.boot, at=rfc3339(self.clock.wall_ns()),
            mode=facts.get("mode", "normal"), backlog=backlog.get("rows", 0),
            oldest_undelivered_at=backlog.get("oldest_at"), oldest_undelivered_age_s=backlog.get("oldest_age_s"),
            dead_letters=backlog.get("dead_letters", 0), health=facts.get("health", "ok"),
            problems=list(facts.get("problems", []))[:32],
        )

    # -- the loop's tick ---------------------------------------------------------------------------------

    def on_committed(self, row: dict[str, Any]) -> None:
        self.outbox.offer_live(row)

    def tick(self, now_mono: float) -> None:
        if not self.link.connected:
            return
        if self.outbox.stalled(now_mono):
            self.outbox.shrink()
            self.link.force_reconnect(f"no PUBACK within {self.cfg.puback_timeout_s:g} s")
            return
        self.outbox.pump(now_mono)
        if now_mono - self._last_status_mono >= self.cfg.status_interval_s:
            self._last_status_mono = now_mono
            self.link.publish(self.topics.status, self.status_payload(), retain=True)

    def health(self) -> dict[str, Any]:
        st = self.outbox.stats
        ignored = st.inbound_ignored + self.inbound_ignored
        return {
            "broker": f"{self.link.cfg.url.host}:{self.link.cfg.url.port}",
            "tls": self.link.cfg.url.tls,
            "state": self.link.state,
            "last_error": self.link.last_error,
            "reconnects": self.link.reconnects,
            "scorers_online": sorted(self.outbox.scorers_online),
            "draining": self.outbox.draining,
            "inflight_batches": len(self.outbox.inflight),
            "awaiting_ack": len(self.outbox.awaiting),
            "batches_sent": st.batches_sent,
            "events_sent": st.events_sent,
            "events_delivered": st.events_delivered,
            "refusals": st.refusals,
            "last_refusal": st.last_refusal,
            "dead_lettered": st.dead_lettered,
            "last_ack_at": rfc3339(st.last_ack_wall_ns) if st.last_ack_wall_ns else None,
            "inbound_ignored": dict(ignored),
            "slice": self.slices.health() if self.slices is not None else None,
        }

"""Outbox policy: what to publish next, what is in flight, what an acknowledgement or a refusal changes.

The SQLite ``scans`` table is the only queue. This class keeps a small window in memory and is called only
from the agent's main loop (the store's single owner), so it needs no locks:

- a *live* scan is published as soon as it is committed, ahead of the backlog, whether or not a scorer is
  known to be online (it is small and it is what the dock is doing now);
- the *backlog* (every other undelivered row) is drained in batches, flagged ``historical``, rate-limited by a
  token bucket, and only while at least one scorer instance's retained state is ``online``;
- a batch is *sent* on PUBACK and its rows are *delivered* only on the scorer's acknowledgement naming them;
- a PUBACK reason code >= 0x80 is a refusal: counted, logged, retried a bounded number of times, then the rows
  go to the dead-letter table with the reason (never retried forever, never dropped);
- on any disconnect, or when a scorer comes (back) online, or when an acknowledgement is overdue, every
  undelivered row becomes eligible again (the scorer deduplicates).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.clock import Clock, rfc3339
from sync.payloads import Batch, event_from_row, pack_batches

log = logging.getLogger(__name__)

PACKET_TOO_LARGE = 0x95


class OutboxStore(Protocol):
    """What the outbox needs from the scan store."""

    def undelivered(self, after_seq: int, limit: int) -> list[dict[str, Any]]: ...

    def mark_delivered(self, event_ids: list[str], when_wall_ns: int) -> int: ...

    def dead_letter(self, rows: list[tuple[str, int]], code: int, reason: str) -> int: ...


@dataclass
class OutboxSettings:
    """Tuning of the window and the drain (from the [sync] section)."""

    max_inflight: int = 8
    batch_max_events: int = 500
    backlog_batches_per_s: float = 20.0
    ack_timeout_s: float = 30.0
    puback_timeout_s: float = 20.0
    max_refusals: int = 3
    live_max_inflight: int = 64
    max_unacked_batches: int = 16


@dataclass
class _InFlight:
    batch: Batch
    sent_mono: float


@dataclass
class SyncStats:
    """Counters for status, /metrics and tests."""

    batches_sent: int = 0
    events_sent: int = 0
    events_delivered: int = 0
    refusals: int = 0
    dead_lettered: int = 0
    resend_passes: int = 0
    last_ack_wall_ns: int = 0
    last_refusal: str = ""
    inbound_ignored: Counter[str] = field(default_factory=Counter)


class Outbox:
    """The dock side of store-and-forward."""

    def __init__(
        self,
        store: OutboxStore,
        *,
        device_id: str,
        site: str,
        boot: int,
        topic: str,
        publish: Callable[[str, bytes], int | None],
        clock: Clock,
        settings: OutboxSettings | None = None,
    ) -> None:
        self.store = store
        self.device_id = device_id
        self.site = site
        self.boot = boot
        self.topic = topic
        self.publish = publish
        self.clock = clock
        self.cfg = settings or OutboxSettings()
        self.stats = SyncStats()
        self.connected = False
        self.max_packet = 256 * 1024
        self.scorers_online: set[str] = set()
        self.inflight: dict[int, _InFlight] = {}
        self._inflight_ids: set[str] = set()
        self.awaiting: dict[str, float] = {}  # event_id -> monotonic time its PUBACK came
        self.refusals: Counter[str] = Counter()
        self.cursor = 0
        self._tokens = 1.0
        self._last_refill = 0.0
        self._hold_until = 0.0
        self._pass_done_at: float | None = None
        self.batch_events = self.cfg.batch_max_events  # shrinks after a PUBACK timeout, grows back on success
        self._last_puback_mono = 0.0

    # -- link and presence events ------------------------------------------------------------------------

    def link_up(self, max_packet: int | None) -> None:
        self.connected = True
        if max_packet:
            self.max_packet = min(max_packet, 256 * 1024 * 1024)
        self._restart_pass()

    def link_down(self) -> None:
        self.connected = False
        self.inflight.clear()
        self._inflight_ids.clear()
        self._restart_pass()

    def scorer_state(self, instance: str, online: bool, fresh: bool = False) -> None:
        """A scorer instance's retained state. ``fresh`` (not a retained copy) means it has just (re)connected:
        whatever it had not acknowledged may have reached nobody (a broker restarted before it), so resend."""
        was = bool(self.scorers_online)
        if online:
            self.scorers_online.add(instance)
        else:
            self.scorers_online.discard(instance)
        if online and (not was or fresh):
            log.info("sync: scorer %r online; draining the backlog", instance)
            self._restart_pass()  # a scorer that restarted lost nothing committed, but its acks may be gone
        elif was and not self.scorers_online:
            log.warning("sync: no scorer online; holding the backlog")

    @property
    def draining(self) -> bool:
        return self.connected and bool(self.scorers_online)

    def _restart_pass(self) -> None:
        self.awaiting.clear()
        self.cursor = 0
        self._pass_done_at = None
        self.stats.resend_passes += 1

    # -- publishing --------------------------------------------------------------------------------------

    def offer_live(self, row: dict[str, Any]) -> bool:
        """Publish a just-committed scan at once, ahead of the backlog. False if it must wait for the backlog."""
        if not self.connected or len(self.inflight) >= self.cfg.live_max_inflight:
            return False
        return self._send([row], historical=False) > 0

    def pump(self, now_mono: float, max_batches: int = 2) -> int:
        """Publish backlog batches while the window, the rate and the scorer gate allow; returns how many.

        At most ``max_batches`` per call (packing one costs ~10 ms): the loop calls again after every PUBACK,
        so a scan waiting in the queue is never held behind a burst of batches, while two per call still let
        the in-flight window fill (one per call would keep a single batch in flight).
        """
        if not self.draining or now_mono < self._hold_until:
            return 0
        self._refill(now_mono)
        sent = 0
        while sent < max_batches and len(self.inflight) < self.cfg.max_inflight and self._tokens >= 1.0:
            if self._pass_done_at is not None:
                if not self._expire_overdue(now_mono):
                    break
            if len(self.awaiting) >= self.cfg.max_unacked_batches * self.cfg.batch_max_events:
                break  # the scorer is behind: do not pile more on the broker (acks time out, tails get resent)
            rows = self._next_rows()
            if not rows:
                self._pass_done_at = now_mono
                break
            n = self._send(rows[: self.batch_events], historical=True)
            if n == 0:
                break
            self._tokens -= 1.0
            sent += 1
        return sent

    def _next_rows(self) -> list[dict[str, Any]]:
        """Up to batch_max_events rows after the cursor that are neither in flight nor awaiting the scorer."""
        want = self.batch_events
        out: list[dict[str, Any]] = []
        after = self.cursor
        while len(out) < want:
            rows = self.store.undelivered(after, want)
            if not rows:
                break
            out += [r for r in rows if r["event_id"] not in self.awaiting and r["event_id"] not in self._inflight_ids]
            after = rows[-1]["seq"]
            if len(rows) < want:
                break
        return out[:want]

    def _expire_overdue(self, now_mono: float) -> bool:
        """At the end of a pass: rows whose acknowledgement is overdue become eligible again."""
        overdue = [eid for eid, t in self.awaiting.items() if now_mono - t >= self.cfg.ack_timeout_s]
        if not overdue and self.awaiting:
            return False
        for eid in overdue:
            del self.awaiting[eid]
        if overdue:
            log.warning("sync: %d events not acknowledged within %.0f s; sending them again",
                        len(overdue), self.cfg.ack_timeout_s)
        elif now_mono - (self._pass_done_at or now_mono) < 1.0:
            return False  # nothing awaited, nothing new: look again in a second
        self.cursor = 0
        self._pass_done_at = None
        return True

    def _refill(self, now_mono: float) -> None:
        rate = self.cfg.backlog_batches_per_s
        self._tokens = min(max(1.0, rate), self._tokens + (now_mono - self._last_refill) * rate)
        self._last_refill = now_mono

    def _send(self, rows: list[dict[str, Any]], *, historical: bool) -> int:
        events = [event_from_row(r, self.site) for r in rows]
        batches, too_big = pack_batches(
            events, device_id=self.device_id, site=self.site, boot=self.boot,
            sent_at=rfc3339(self.clock.wall_ns()), historical=historical,
            max_bytes=self.max_packet - len(self.topic.encode()), max_events=self.batch_events,
        )
        for ev, why in too_big:
            self.store.dead_letter([(ev["event_id"], ev["seq"])], PACKET_TOO_LARGE, why)
            self.stats.dead_lettered += 1
            log.error("sync: event %s (seq %d) dead-lettered: %s", ev["event_id"], ev["seq"], why)
        published = 0
        for batch in batches:
            mid = self.publish(self.topic, batch.payload)
            if mid is None:
                break
            self.inflight[mid] = _InFlight(batch, self.clock.monotonic_ns() / 1e9)
            self._inflight_ids.update(batch.event_ids)
            self.cursor = max(self.cursor, batch.seqs[-1])
            self.stats.batches_sent += 1
            self.stats.events_sent += len(batch.event_ids)
            published += 1
        return published

    # -- outcomes ----------------------------------------------------------------------------------------

    def published(self, mid: int, reason_code: int, reason: str) -> None:
        """PUBACK for ``mid``: sent (awaiting the scorer), or refused by the broker."""
        flight = self.inflight.pop(mid, None)
        if flight is None:
            return
        now = self.clock.monotonic_ns() / 1e9
        batch = flight.batch
        self._inflight_ids.difference_update(batch.event_ids)
        self._last_puback_mono = now
        if reason_code < 0x80:
            self.stats.last_refusal = ""  # the broker takes our publishes again
            self.batch_events = min(self.cfg.batch_max_events, self.batch_events * 2)
            for eid in batch.event_ids:
                self.awaiting[eid] = now
            return
        self.stats.refusals += 1
        self.stats.last_refusal = f"{reason} (0x{reason_code:02x}) publishing to {self.topic}"
        self.cursor = min(self.cursor, batch.seqs[0] - 1)
        self._hold_until = now + 2.0
        if reason_code == PACKET_TOO_LARGE and len(batch.event_ids) > 1:
            self.max_packet = max(1024, len(batch.payload) // 2)
            log.warning("sync: broker refused a %d-byte batch as too large; packing under %d bytes",
                        len(batch.payload), self.max_packet)
            return
        dead: list[tuple[str, int]] = []
        for eid, seq in zip(batch.event_ids, batch.seqs, strict=True):
            self.refusals[eid] += 1
            if self.refusals[eid] >= self.cfg.max_refusals:
                dead.append((eid, seq))
                del self.refusals[eid]
        log.error("sync: broker refused a batch of %d events: %s (0x%02x)%s", len(batch.event_ids), reason,
                  reason_code, f"; {len(dead)} dead-lettered after {self.cfg.max_refusals} refusals" if dead else "")
        if dead:
            self.store.dead_letter(dead, reason_code, reason)
            self.stats.dead_lettered += len(dead)

    def acknowledged(self, event_ids: tuple[str, ...]) -> int:
        """The scorer committed these events: mark them delivered. Returns how many rows changed."""
        changed = self.store.mark_delivered(list(event_ids), self.clock.wall_ns())
        for eid in event_ids:
            self.awaiting.pop(eid, None)
        self.stats.events_delivered += changed
        self.stats.last_ack_wall_ns = self.clock.wall_ns()
        if changed < len(event_ids):
            self.stats.inbound_ignored["ack_unknown_or_repeated"] += len(event_ids) - changed
        return changed

    def stalled(self, now_mono: float) -> bool:
        """True when a PUBACK is overdue: the link is silently dead and should be re-established. Measured from
        the later of the batch's sending and the last PUBACK, so a batch queued behind others on a slow link is
        not taken for a dead one."""
        if not self.inflight:
            return False
        oldest = min(f.sent_mono for f in self.inflight.values())
        return now_mono - max(oldest, self._last_puback_mono) > self.cfg.puback_timeout_s

    def shrink(self) -> None:
        """After a PUBACK timeout: smaller batches, so a slow, lossy link still makes progress."""
        self.batch_events = max(1, self.batch_events // 2)
        log.warning("sync: PUBACK timed out; backlog batches of at most %d events", self.batch_events)

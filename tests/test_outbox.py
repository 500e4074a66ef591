"""The outbox policy on its own: a real store, a fake publisher, a fake clock. What goes out, and when."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.settings import StoreSection
from agent.store import ScanInput, Store
from sync.outbox import Outbox, OutboxSettings
from sync.schema import validate


class Wire:
    """Records publishes; hands out mids like paho."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, dict]] = []  # type: ignore[type-arg]
        self.next_mid = 1
        self.up = True

    def publish(self, topic: str, payload: bytes) -> int | None:
        if not self.up:
            return None
        mid = self.next_mid
        self.next_mid += 1
        self.sent.append((mid, topic, json.loads(payload)))
        return mid

    def events(self) -> list[str]:
        return [e["event_id"] for _, _, b in self.sent for e in b["events"]]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    s = Store(tmp_path, "dock-01", StoreSection(floor_free_mb=0, warn_free_mb=0, ballast_mb=0), clock)
    s.open()
    yield s
    s.close()


def add(store: Store, n: int, start: int = 0) -> list[dict]:  # type: ignore[type-arg]
    rows = []
    for i in range(start, start + n):
        code = f"99M123456{i:012d}"
        stored = store.record_scan(ScanInput("door1", code.encode(), code, "imcb", None, {"mid": "123456"},
                                             "unverified", "r", store.clock.wall_ns(), 0, True))
        rows.append(stored.row)
    return rows


def make(store: Store, wire: Wire, **kw: float) -> Outbox:
    return Outbox(store, device_id="dock-01", site="NDC-X", boot=store.boot, topic="docks/NDC-X/dock-01/events",
                  publish=wire.publish, clock=store.clock, settings=OutboxSettings(**kw))  # type: ignore[arg-type]


def undelivered(store: Store) -> int:
    return store.backlog()[0]


def test_backlog_waits_for_a_scorer_then_drains_in_historical_batches(store: Store) -> None:
    add(store, 1200)
    wire = Wire()
    box = make(store, wire, batch_max_events=500, max_inflight=8, backlog_batches_per_s=1000)
    box.link_up(None)
    assert box.pump(10.0, max_batches=100) == 0 and wire.sent == []  # no scorer online: hold
    box.scorer_state("hq1", True)
    assert box.pump(10.0, max_batches=100) == 3
    assert [len(b["events"]) for _, _, b in wire.sent] == [500, 500, 200]
    assert all(b["historical"] for _, _, b in wire.sent)
    for _, _, body in wire.sent:
        validate("batch", body)
    for mid, _, _ in list(wire.sent):
        box.published(mid, 0, "Success")
    assert undelivered(store) == 1200  # PUBACK is not delivery
    assert box.acknowledged(tuple(wire.events())) == 1200
    assert undelivered(store) == 0


def test_live_scans_go_at_once_and_ahead_of_the_backlog(store: Store) -> None:
    add(store, 100)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000)
    box.link_up(None)
    live = add(store, 1, start=100)[0]
    assert box.offer_live(live)  # no scorer online yet: live goes anyway
    assert wire.sent[0][2]["historical"] is False and wire.sent[0][2]["events"][0]["seq"] == live["seq"]
    box.scorer_state("hq1", True)
    box.pump(1.0, max_batches=100)
    backlog_ids = [e["event_id"] for _, _, b in wire.sent[1:] for e in b["events"]]
    assert live["event_id"] not in backlog_ids and len(backlog_ids) == 100  # not sent twice while in flight


def test_rate_limit_and_window(store: Store) -> None:
    add(store, 5000)
    wire = Wire()
    box = make(store, wire, batch_max_events=100, max_inflight=4, backlog_batches_per_s=2)
    box.link_up(None)
    box.scorer_state("hq1", True)
    assert box.pump(100.0, max_batches=100) == 2  # two tokens at most in the bucket
    assert box.pump(100.0, max_batches=100) == 0
    assert box.pump(100.5, max_batches=100) == 1  # refilled one token in half a second
    for mid, _, _ in list(wire.sent):
        box.published(mid, 0, "Success")
    assert box.pump(110.0, max_batches=100) == 2
    box2 = make(store, Wire(), batch_max_events=100, max_inflight=4, backlog_batches_per_s=1000)
    box2.link_up(None)
    box2.scorer_state("hq1", True)
    assert box2.pump(1.0, max_batches=100) == 4  # window full: no PUBACKs yet


def test_reconnect_resends_everything_undelivered(store: Store) -> None:
    add(store, 30)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000)
    box.link_up(None)
    box.scorer_state("hq1", True)
    box.pump(1.0, max_batches=100)
    first = wire.events()
    box.published(wire.sent[0][0], 0, "Success")
    box.acknowledged(tuple(first[:10]))
    box.link_down()
    box.link_up(None)
    wire.sent.clear()
    box.pump(2.0, max_batches=100)
    assert sorted(wire.events()) == sorted(first[10:])


def test_overdue_acknowledgements_are_resent(store: Store) -> None:
    add(store, 10)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000, ack_timeout_s=30)
    box.link_up(None)
    box.scorer_state("hq1", True)
    box.pump(1.0, max_batches=100)
    box.published(wire.sent[0][0], 0, "Success")
    wire.sent.clear()
    box.pump(5.0, max_batches=100)
    assert wire.sent == []  # awaiting the scorer, not yet overdue
    store.clock.advance(31)
    box.pump(40.0, max_batches=100)
    assert len(wire.events()) == 10


def test_scorer_coming_back_makes_everything_eligible_again(store: Store) -> None:
    add(store, 10)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000)
    box.link_up(None)
    box.scorer_state("hq1", True)
    box.pump(1.0, max_batches=100)
    box.published(wire.sent[0][0], 0, "Success")
    box.scorer_state("hq1", False)
    assert not box.draining
    box.scorer_state("hq2", True)  # another instance: the dock drains while any is online
    wire.sent.clear()
    box.pump(2.0, max_batches=100)
    assert len(wire.events()) == 10


def test_refusals_are_retried_then_dead_lettered_never_dropped(store: Store) -> None:
    add(store, 3)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000, max_refusals=2)
    box.link_up(None)
    box.scorer_state("hq1", True)
    now = 1.0
    for _attempt in range(2):
        wire.sent.clear()
        box.pump(now, max_batches=100)
        assert len(wire.events()) == 3
        box.published(wire.sent[0][0], 0x87, "Not authorized")
        now += 3.0  # the hold after a refusal
    assert box.stats.dead_lettered == 3
    assert store.backlog() == (3, store.backlog()[1], 3)  # still undelivered, counted as dead letters
    assert store.conn is not None
    reasons = store.conn.execute("SELECT reason_code, reason FROM dead_letters").fetchall()
    assert reasons == [(0x87, "Not authorized")] * 3
    wire.sent.clear()
    box.pump(now + 10, max_batches=100)
    assert wire.sent == []  # dead letters are not retried forever


def test_packet_too_large_shrinks_batches(store: Store) -> None:
    add(store, 50)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000)
    box.link_up(4096)
    box.scorer_state("hq1", True)
    box.pump(1.0, max_batches=100)
    assert all(len(json.dumps(b, separators=(",", ":"), ensure_ascii=False)) + 64 <= 4096 for _, _, b in wire.sent)
    assert len(wire.sent) > 1
    big = wire.sent[0]
    box.published(big[0], 0x95, "Packet too large")
    assert box.max_packet < 4096 and box.stats.dead_lettered == 0


def test_only_matching_acknowledgements_deliver(store: Store) -> None:
    rows = add(store, 3)
    box = make(store, Wire())
    assert box.acknowledged(("00000000-0000-7000-8000-000000000000",)) == 0
    assert box.acknowledged((rows[0]["event_id"],)) == 1
    assert box.acknowledged((rows[0]["event_id"],)) == 0  # replayed
    assert undelivered(store) == 2
    assert box.stats.inbound_ignored["ack_unknown_or_repeated"] == 2


def test_two_batches_per_call_by_default_so_scans_never_wait_behind_a_burst(store: Store) -> None:
    add(store, 3000)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000)
    box.link_up(None)
    box.scorer_state("hq1", True)
    assert box.pump(1.0) == 2 and box.pump(1.0) == 2


def test_a_puback_timeout_shrinks_batches_until_the_link_keeps_up(store: Store) -> None:
    add(store, 2000)
    wire = Wire()
    box = make(store, wire, backlog_batches_per_s=1000, puback_timeout_s=20, batch_max_events=500)
    box.link_up(None)
    box.scorer_state("hq1", True)
    box.pump(0.0)
    store.clock.advance(21)
    assert box.stalled(store.clock.monotonic_ns() / 1e9)
    box.shrink()
    box.link_down()
    box.link_up(None)
    wire.sent.clear()
    box.pump(30.0)
    assert len(wire.sent[0][2]["events"]) == 250
    box.published(wire.sent[0][0], 0, "Success")
    assert box.batch_events == 500  # grows back on success
    # A batch queued behind others is not taken for a dead link while PUBACKs keep coming.
    box.pump(31.0, max_batches=3)
    store.clock.advance(15)
    box.published(wire.sent[1][0], 0, "Success")
    store.clock.advance(10)
    assert not box.stalled(store.clock.monotonic_ns() / 1e9)

"""One path for every event that reaches headquarters (MQTT or a JSON-lines file): bound, parse, validate,
check it comes from who it says, store idempotently. A bad message is counted, logged and kept aside in
``rejected_messages``; it never stops ingest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.clock import rfc3339
from scorer.db import ScorerDB
from sync.payloads import BadMessage, loads_bounded
from sync.schema import EVENT_DEFS, SchemaError, validate_message
from sync.topics import parse_dock_topic

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that passed every check, ready to be committed."""

    device_id: str
    site: str
    events: list[dict[str, Any]]
    historical: bool


@dataclass
class IngestStats:
    messages: int = 0
    events_new: int = 0
    events_duplicate: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class Ingestor:
    """Validation and idempotent storage of dock events."""

    def __init__(self, db: ScorerDB, clock_wall_ns: Any) -> None:
        self.db = db
        self.wall_ns = clock_wall_ns
        self.stats = IngestStats()

    def check(self, payload: bytes, source: str, topic: str | None = None) -> Accepted | None:
        """Parse and validate one message; None (after recording why) if it is rejected."""
        self.stats.messages += 1
        try:
            obj = loads_bounded(payload, MAX_BATCH_BYTES)
            return self._accept(obj, topic)
        except BadMessage as e:
            self._reject(source, e.kind, str(e), payload)
        except SchemaError as e:
            self._reject(source, "bad_schema", str(e), payload)
        return None

    def _accept(self, obj: Any, topic: str | None) -> Accepted:
        kind = validate_message(obj)
        if kind == "dock-batch/1":
            events, device, site, historical = obj["events"], obj["device_id"], obj["site"], obj["historical"]
        elif kind in EVENT_DEFS:
            events, device, site, historical = [obj], obj["device_id"], obj["site"], True
        else:
            raise BadMessage("wrong_kind", f"{kind} is not an event or a batch of events")
        if topic is not None:
            where = parse_dock_topic(topic)
            if where is None or where[2] != "events" or where[:2] != (site, device):
                raise BadMessage("wrong_topic", f"batch of {site}/{device} arrived on {topic}")
        for i, ev in enumerate(events):
            if ev["device_id"] != device or ev["site"] != site:
                raise BadMessage("mixed_devices", f"events[{i}] is from {ev['site']}/{ev['device_id']}, "
                                                  f"the batch from {site}/{device}")
        return Accepted(device, site, events, historical)

    def _reject(self, source: str, kind: str, reason: str, payload: bytes) -> None:
        self.stats.rejected[kind] += 1
        log.warning("ingest: rejected a message from %s (%s): %s", source, kind, reason)
        self.db.reject(rfc3339(self.wall_ns()), source, f"{kind}: {reason}", payload)

    def commit(self, accepted: Iterable[Accepted]) -> dict[tuple[str, str], list[str]]:
        """Store the accepted messages; returns, per (site, device), the event ids now safely stored."""
        committed: dict[tuple[str, str], list[str]] = {}
        received_at = rfc3339(self.wall_ns())
        by_flag: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for a in accepted:
            by_flag[a.historical].extend(a.events)
            committed.setdefault((a.site, a.device_id), []).extend(ev["event_id"] for ev in a.events)
        for historical, events in by_flag.items():
            if events:
                result = self.db.store_events(events, received_at, historical)
                self.stats.events_new += result.new
                self.stats.events_duplicate += result.duplicates
        return committed

    def ingest_lines(self, lines: Iterable[bytes], source: str) -> tuple[int, int]:
        """``dock-scorer ingest FILE``: every line through the same checks and dedup. Returns (lines, rejected)."""
        n = bad = 0
        pending: list[Accepted] = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            n += 1
            accepted = self.check(line.strip(), f"{source}:{i}")
            if accepted is None:
                bad += 1
                continue
            pending.append(accepted)
            if sum(len(a.events) for a in pending) >= 5000:
                self.commit(pending)
                pending = []
        if pending:
            self.commit(pending)
        return n, bad

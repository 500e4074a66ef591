"""Build and read the sync protocol's messages (docs/protocol.md). Pure: no I/O, no MQTT.

Batches are packed under a byte budget (the broker's Maximum Packet Size from CONNACK, less the topic and
headers) because paho does not enforce it and a broker refuses an oversized packet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sync.schema import SchemaError, validate

MQTT_OVERHEAD = 64  # fixed header, topic length prefix, packet id, properties: generous


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def event_from_row(row: Mapping[str, Any], site: str) -> dict[str, Any]:
    """The protocol event for one stored row of ``scans`` (a container scan or an operator command) or of
    ``records`` (a disposition change, or any other fact the dock records)."""
    if row.get("table") == "records":
        return _event_from_record(row, site)
    fields = row["fields"]
    if isinstance(fields, str):
        fields = json.loads(fields)
    common = {
        "event_id": row["event_id"], "device_id": row["device_id"], "site": site, "seq": row["seq"],
        "boot": row["boot"], "scanned_at": row["scanned_at"], "clock_synced": bool(row["clock_synced"]),
        "scanner": row["scanner"], "mode": row["mode"],
    }
    if row["kind"] == "command":
        return {"schema": "dock-command/1", "type": "command", **common,
                "command": fields.get("command", ""), "arg": fields.get("arg", "")}
    event = {
        "schema": "dock-scan/1", "type": "scan", **common,
        "barcode": row["barcode"], "kind": row["kind"], "symbology": row["symbology"], "fields": fields,
        "ticket": row.get("ticket"), "appointment": row.get("appointment"),
        "disposition": row["verdict"] if row["verdict"] in ("accept", "reject", "pending") else "unverified",
        "reason": row["reason"],
    }
    if row.get("role") == "placard":
        event["role"] = "placard"
    return event


def _event_from_record(row: Mapping[str, Any], site: str) -> dict[str, Any]:
    data = json.loads(row["data"]) if isinstance(row["data"], str) else dict(row["data"])
    common = {
        "event_id": row["event_id"], "device_id": row["device_id"], "site": site, "seq": row["seq"],
        "boot": row["boot"], "scanned_at": row["recorded_at"], "clock_synced": bool(row["clock_synced"]),
        "scanner": row["scanner"], "mode": row["mode"],
    }
    if row["type"] == "disposition":
        return {"schema": "dock-disposition/1", "type": "disposition", **common,
                "ref_event_id": data["ref_event_id"], "disposition": data["disposition"],
                "reason": str(data.get("reason", ""))[:500], "form": data.get("form")}
    return {"schema": "dock-record/1", "type": row["type"], **common, "data": data}


@dataclass(frozen=True, slots=True)
class Batch:
    """One message ready to publish, and the events it carries."""

    payload: bytes
    event_ids: tuple[str, ...]
    seqs: tuple[int, ...]
    historical: bool


def pack_batches(
    events: Iterable[dict[str, Any]],
    *,
    device_id: str,
    site: str,
    boot: int,
    sent_at: str,
    historical: bool,
    max_bytes: int,
    max_events: int,
) -> tuple[list[Batch], list[tuple[dict[str, Any], str]]]:
    """Pack events into as few batches as fit ``max_bytes`` and ``max_events``.

    Returns (batches, too_big) where ``too_big`` lists events that cannot fit even alone, with why.
    """
    head = _dumps({"schema": "dock-batch/1", "device_id": device_id, "site": site, "boot": boot,
                   "sent_at": sent_at, "historical": historical, "events": []})[:-3]  # up to ..."events":
    budget = max_bytes - MQTT_OVERHEAD
    batches: list[Batch] = []
    too_big: list[tuple[dict[str, Any], str]] = []
    parts: list[bytes] = []
    ids: list[str] = []
    seqs: list[int] = []
    empty = len(head) + 3  # '[' + ']}'
    size = empty

    def flush() -> None:
        nonlocal parts, ids, seqs, size
        if parts:
            batches.append(Batch(head + b"[" + b",".join(parts) + b"]}", tuple(ids), tuple(seqs), historical))
        parts, ids, seqs, size = [], [], [], empty

    for ev in events:
        body = _dumps(ev)
        if empty + len(body) > budget:
            too_big.append((ev, f"event of {len(body)} bytes exceeds the broker's maximum packet size {max_bytes}"))
            continue
        if parts and (size + 1 + len(body) > budget or len(parts) >= max_events):
            flush()
        parts.append(body)
        ids.append(ev["event_id"])
        seqs.append(ev["seq"])
        size += len(body) + (1 if len(parts) > 1 else 0)
    flush()
    return batches, too_big


@dataclass(frozen=True, slots=True)
class Ack:
    """A validated acknowledgement for this dock."""

    event_ids: tuple[str, ...]
    scorer: str


class BadMessage(ValueError):
    """An inbound message the dock ignores; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


MAX_INBOUND_BYTES = 512 * 1024
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
MAX_JSON_DEPTH = 32


def loads_bounded(payload: bytes, max_bytes: int = MAX_INBOUND_BYTES) -> Any:
    """JSON from an untrusted peer: size, UTF-8 and nesting depth are checked before parsing.

    Raises:
        BadMessage: oversized, not UTF-8, too deep, or not JSON.
    """
    if len(payload) > max_bytes:
        raise BadMessage("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadMessage("not_utf8", f"not UTF-8 at byte {e.start}") from None
    # Pre-scan (json.loads recurses: a 10k-deep document would blow the stack). Brackets inside strings
    # only make the estimate deeper, never shallower, so this is safe; the regex keeps it off the Python loop.
    depth = 0
    for ch in _NOT_BRACKETS.sub("", text):
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadMessage("too_deep", f"nested deeper than {MAX_JSON_DEPTH}")
        else:
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadMessage("bad_json", f"not JSON: {e}") from None


def read_ack(payload: bytes, device_id: str) -> Ack:
    """Parse and check an acknowledgement addressed to ``device_id``.

    Raises:
        BadMessage: not JSON, not a dock-ack/1, or for another dock.
    """
    obj = loads_bounded(payload)
    try:
        validate("ack", obj)
    except SchemaError as e:
        raise BadMessage("bad_schema", str(e)) from None
    if obj["device_id"] != device_id:
        raise BadMessage("other_device", f"acknowledgement for {obj['device_id']!r}, this dock is {device_id!r}")
    return Ack(tuple(obj["event_ids"]), obj["scorer"])


def make_ack(device_id: str, event_ids: list[str], acked_at: str, scorer: str) -> bytes:
    return _dumps({"schema": "dock-ack/1", "device_id": device_id, "event_ids": event_ids, "acked_at": acked_at,
                   "scorer": scorer})


def make_state(device_id: str, site: str, boot: int, state: str, at: str) -> bytes:
    return _dumps({"schema": "dock-state/1", "device_id": device_id, "site": site, "boot": boot, "state": state,
                   "at": at})


def make_scorer_state(instance: str, state: str, at: str) -> bytes:
    return _dumps({"schema": "scorer-state/1", "instance": instance, "state": state, "at": at})


def make_birth(
    *, device_id: str, site: str, boot: int, version: str, config_hash: str, started_at: str, at: str,
    scanners: list[dict[str, str]],
) -> bytes:
    return _dumps({"schema": "dock-birth/1", "device_id": device_id, "site": site, "boot": boot,
                   "version": version, "config_hash": config_hash, "started_at": started_at, "at": at,
                   "scanners": scanners})


def make_status(**fields: Any) -> bytes:
    return _dumps({"schema": "dock-status/1", **fields})


def read_scorer_state(payload: bytes) -> tuple[str, bool]:
    """(instance, online) from a retained scorer state message.

    Raises:
        BadMessage: when it is not a valid scorer-state/1 (an empty retained message clears the state: the
        caller treats an empty payload as offline before calling this).
    """
    obj = loads_bounded(payload, 4096)
    try:
        validate("scorer_state", obj)
    except SchemaError as e:
        raise BadMessage("bad_schema", str(e)) from None
    return obj["instance"], obj["state"] == "online"


@dataclass(frozen=True, slots=True)
class HqDeclaration:
    """Headquarters' national-outage declaration or all-clear (retained on hq/national/outage)."""

    state: str
    outage_id: str
    at: str
    by: str


def make_hq_outage(state: str, outage_id: str, at: str, by: str) -> bytes:
    return _dumps({"schema": "hq-outage/1", "state": state, "id": outage_id, "at": at, "by": by})


def read_hq_outage(payload: bytes) -> HqDeclaration:
    """Raises BadMessage when it is not a valid hq-outage/1."""
    obj = loads_bounded(payload, 4096)
    try:
        validate("hq_outage", obj)
    except SchemaError as e:
        raise BadMessage("bad_schema", str(e)) from None
    return HqDeclaration(obj["state"], obj["id"], obj["at"], obj["by"])

"""Reference slices on the dock: the wire format, the assembler, atomic install, load, and the query messages.

Headquarters (scorer/slices.py) cuts, per facility, the reference data the rules of scorer/rules.py need to
judge a container at scan time, serialises it as deterministic JSON (``dock-slice/1``), compresses it with
zlib, and publishes it as retained messages: a manifest (``dock-slice-manifest/1``) on
``hq/sites/{site}/slice/manifest`` and chunks (``dock-slice-chunk/1``) on ``hq/sites/{site}/slice/{version}/{index}``,
each under the broker's Maximum Packet Size. This module is both ends of that format (pure functions), plus
the dock's side of it:

- ``Assembler`` takes manifest and chunk messages in any order, duplicated, mixed with other versions and with
  garbage; checks each chunk's size and SHA-256 against its own header and the manifest; and says ``Ready``
  only when one version is complete. Nothing is written before that.
- ``install`` checks the whole (compressed size, bounded decompression, content size and SHA-256, schema,
  agreement with the manifest, every row decodable), then writes one file atomically (tmp, fsync, rename,
  fsync the directory). The previous slice stays in place until the rename.
- ``load_slice`` reads it back as ``Slice``: scorer.rules data classes keyed as scorer.scorecard.Reference keys
  them (``edoc``, ``mid_crid``, ``continuous``, ``mailers``, ``facilities``, ``mdf``, ``zones``), plus the
  facility's recent containers, the version and the build time (``stale()``: older than 24 h by default).
- ``SliceService`` runs the above inside the agent: the heavy install/load runs in a worker thread and posts
  ``SliceDone`` to the main loop, so a scan never waits for a slice.

The slice carries no money: the dock judges, headquarters assesses. ``EdocRow.postage`` and
``postage_if_none`` are ``NOT_CARRIED`` (a quiet Decimal NaN, so an assessment computed from them can never
pass for a real amount) and the price maps are empty.

The file on disk (``reference-slice.bin`` in the state directory): one line of the manifest's canonical JSON,
a newline, then the compressed content exactly as the manifest describes it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import functools
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from scorer.rules import Container, EdocRow, Facility, Mailer, MdfRow, Scan
from sync.payloads import BadMessage, loads_bounded
from sync.schema import SchemaError, validate
from sync.topics import parse_slice_topic, slice_chunk_topic, slice_manifest_topic

log = logging.getLogger(__name__)

UTC = dt.UTC
SLICE_SCHEMA = "dock-slice/1"
MANIFEST_SCHEMA = "dock-slice-manifest/1"
CHUNK_SCHEMA = "dock-slice-chunk/1"
FORMAT = "zlib+json"
SLICE_FILE = "reference-slice.bin"
STALE_AFTER = dt.timedelta(hours=24)   # the workflow's default (workflow.slice_max_age_h)
DEFAULT_MAX_PACKET = 262144            # the production broker's max_packet_size
DOCK_MAX_PACKET = 512 * 1024           # what a dock advertises (sync.mqtt_link LinkConfig.max_inbound_bytes)
MAX_COMPRESSED = 64 * 1024 * 1024      # the dock refuses a slice larger than this (compressed) ...
MAX_CONTENT = 512 * 1024 * 1024        # ... or than this (uncompressed)
MAX_CHUNKS = 10_000
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MAX_QUERY_IMCBS = 100
NOT_CARRIED = Decimal("NaN")           # postage is not in the slice (one shared object: rows still compare equal)

EDOC_COLUMNS = ("imcb", "statement_id", "submitter_crid", "owner_crid", "statement_status", "finalized_at",
                "uploaded_at", "mailing_date", "einduction", "destination_zip", "entry_facility_type",
                "entry_discount", "mail_class", "zone_claimed")
CONTAINER_COLUMNS = ("site", "imcb", "local_date", "event_id", "device_id", "scanned_at", "appointment", "mode",
                     "disposition", "scans")


class SliceError(Exception):
    """A slice (or part of one) was refused; ``kind`` is the counter it goes to, the message says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- serialisation (both ends) -------------------------------------------------------------------------------


def _dumps(obj: object) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(at: dt.datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: object, what: str) -> dt.datetime:
    if not isinstance(text, str):
        raise SliceError("bad_content", f"{what}: not a time")
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SliceError("bad_content", f"{what}: {text[:40]!r} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise SliceError("bad_content", f"{what}: {text[:40]!r} has no time zone")
    return t.astimezone(UTC)


def _date(text: object, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SliceError("bad_content", f"{what}: {str(text)[:40]!r} is not a date") from None


def _str(v: object, what: str, nullable: bool = False) -> Any:
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        raise SliceError("bad_content", f"{what}: expected text, got {type(v).__name__}")
    return v


def loads_flat(payload: bytes, max_bytes: int) -> Any:
    """JSON of a slice message, bounded: size and UTF-8 are checked, and a nesting bomb is caught (json's C
    decoder raises RecursionError). ``payloads.loads_bounded`` pre-scans every character in Python, ~15 times
    slower on a 256 KiB chunk, and the loop thread pays for it.

    Raises:
        BadMessage: oversized, not UTF-8, or not JSON.
    """
    if len(payload) > max_bytes:
        raise BadMessage("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadMessage("not_utf8", f"not UTF-8 at byte {e.start}") from None
    except (ValueError, RecursionError) as e:
        raise BadMessage("bad_json", f"not JSON: {str(e)[:80]}") from None


def encode_facility(f: Facility) -> dict[str, Any]:
    return {"facility": f.facility, "zip3": f.zip3, "tz": f.tz, "entry_levels": sorted(f.entry_levels)}


def decode_facility(obj: Mapping[str, Any]) -> Facility:
    return Facility(_str(obj.get("facility"), "facility"), _str(obj.get("zip3"), "facility.zip3"),
                    _str(obj.get("tz"), "facility.tz"),
                    frozenset(_str(x, "facility.entry_levels") for x in obj.get("entry_levels", [])))


def encode_edoc(rows: Iterable[EdocRow]) -> dict[str, Any]:
    """Column-oriented eDoc rows, sorted by (IMcb, statement id); no postage (the dock does not assess)."""
    out = [[r.imcb, r.statement_id, r.submitter_crid, r.owner_crid, r.statement_status,
            rfc3339(r.finalized_at) if r.finalized_at else None, rfc3339(r.uploaded_at), r.mailing_date.isoformat(),
            bool(r.einduction), r.destination_zip, r.entry_facility_type, r.entry_discount, r.mail_class,
            r.zone_claimed] for r in rows]
    out.sort(key=lambda x: (x[0], x[1]))
    return {"columns": list(EDOC_COLUMNS), "rows": out}


@functools.lru_cache(maxsize=65536)
def _time_cached(text: str) -> dt.datetime:
    return parse_time(text, "time")


@functools.lru_cache(maxsize=4096)
def _date_cached(text: str) -> dt.date:
    return _date(text, "date")


_EDOC_TEXT = (0, 1, 2, 3, 4, 6, 7, 9, 10, 11, 12)  # positions in EDOC_COLUMNS that are always text


def decode_edoc(section: Mapping[str, Any]) -> dict[str, list[EdocRow]]:
    if tuple(section.get("columns", ())) != EDOC_COLUMNS:
        raise SliceError("bad_content", f"edoc: columns {section.get('columns')!r}, expected {list(EDOC_COLUMNS)}")
    out: dict[str, list[EdocRow]] = {}
    n = len(EDOC_COLUMNS)
    for i, r in enumerate(section.get("rows", [])):
        if (type(r) is not list or len(r) != n or not all(type(r[j]) is str for j in _EDOC_TEXT)
                or type(r[8]) is not bool or not (r[5] is None or type(r[5]) is str)
                or not (r[13] is None or type(r[13]) is int)):
            raise SliceError("bad_content", f"edoc row {i}: expected {n} values of the types of {list(EDOC_COLUMNS)}")
        try:
            row = EdocRow(
                imcb=r[0], statement_id=sys.intern(r[1]), submitter_crid=sys.intern(r[2]),
                owner_crid=sys.intern(r[3]), statement_status=sys.intern(r[4]),
                finalized_at=_time_cached(r[5]) if r[5] is not None else None, uploaded_at=_time_cached(r[6]),
                mailing_date=_date_cached(r[7]), einduction=r[8], destination_zip=sys.intern(r[9]),
                entry_facility_type=sys.intern(r[10]), entry_discount=sys.intern(r[11]),
                mail_class=sys.intern(r[12]), zone_claimed=r[13],
                postage=NOT_CARRIED, postage_if_none=NOT_CARRIED, postage_by_level=_NO_PRICES,
                postage_by_zone=_NO_PRICES,
            )
        except SliceError as e:
            raise SliceError("bad_content", f"edoc row {i}: {e}") from None
        out.setdefault(row.imcb, []).append(row)
    return out


_NO_PRICES: Mapping[Any, Any] = MappingProxyType({})  # one shared, read-only "not carried" for every row


def encode_mailers(mailers: Iterable[tuple[Mailer, Iterable[str]]]) -> list[dict[str, Any]]:
    """(mailer, its MIDs) -> sorted records with the flags the rules use (seamless, continuous MIDs)."""
    out = [{"crid": m.crid, "seamless": bool(m.seamless), "mids": sorted(set(mids)),
            "continuous_mids": sorted(m.continuous_mids)} for m, mids in mailers]
    out.sort(key=lambda x: x["crid"])
    return out


def decode_mailers(items: Sequence[Any]) -> tuple[dict[str, Mailer], dict[str, str], set[str]]:
    mailers: dict[str, Mailer] = {}
    mid_crid: dict[str, str] = {}
    continuous: set[str] = set()
    for i, m in enumerate(items):
        if not isinstance(m, dict) or not isinstance(m.get("seamless"), bool):
            raise SliceError("bad_content", f"mailer {i}: not a mailer record")
        crid = _str(m.get("crid"), f"mailer {i} crid")
        cont = frozenset(_str(x, f"mailer {i} continuous_mids") for x in m.get("continuous_mids", []))
        mailers[crid] = Mailer(crid, m["seamless"], cont)
        continuous |= cont
        for mid in m.get("mids", []):
            mid_crid[_str(mid, f"mailer {i} mids")] = crid
    return mailers, mid_crid, continuous


def encode_mdf(rows: Iterable[MdfRow]) -> list[list[str]]:
    return sorted({(r.destination_zip, r.entry_facility_type, r.facility) for r in rows})  # type: ignore[return-value]


def decode_mdf(items: Sequence[Any]) -> dict[tuple[str, str], MdfRow]:
    out: dict[tuple[str, str], MdfRow] = {}
    for i, r in enumerate(items):
        if not isinstance(r, list) or len(r) != 3:
            raise SliceError("bad_content", f"mdf row {i}: expected [destination_zip, entry_facility_type, facility]")
        z, eft, fac = (_str(x, f"mdf row {i}") for x in r)
        out[(z, eft)] = MdfRow(z, eft, fac)
    return out


def encode_zones(zones: Iterable[tuple[tuple[str, str], int]]) -> list[list[Any]]:
    return sorted([o, d, int(z)] for (o, d), z in zones)


def decode_zones(items: Sequence[Any]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for i, r in enumerate(items):
        if (not isinstance(r, list) or len(r) != 3 or not isinstance(r[2], int) or isinstance(r[2], bool)):
            raise SliceError("bad_content", f"zone row {i}: expected [origin_zip3, destination_zip3, zone]")
        out[(_str(r[0], "zone"), _str(r[1], "zone"))] = r[2]
    return out


def encode_containers(containers: Iterable[Container]) -> dict[str, Any]:
    """Each container's first scan, its appointment (the first non-null of its scans), local date and final
    disposition: what the B-3 Duplicate rule needs of an original."""
    rows = [[c.site, c.imcb, c.local_date.isoformat(), c.first.event_id, c.first.device_id,
             rfc3339(c.first.scanned_at), c.appointment, c.first.mode, c.disposition, len(c.scans)]
            for c in containers]
    rows.sort(key=lambda x: (x[1], x[5], x[3], x[0]))
    return {"columns": list(CONTAINER_COLUMNS), "rows": rows}


def decode_containers(section: Mapping[str, Any]) -> dict[str, list[Container]]:
    if tuple(section.get("columns", ())) != CONTAINER_COLUMNS:
        raise SliceError("bad_content", f"containers: columns {section.get('columns')!r}")
    out: dict[str, list[Container]] = {}
    for i, r in enumerate(section.get("rows", [])):
        if not isinstance(r, list) or len(r) != len(CONTAINER_COLUMNS):
            raise SliceError("bad_content", f"container row {i}: expected {len(CONTAINER_COLUMNS)} values")
        site, imcb, local, event_id, device_id, at, appointment, mode, disposition, _n = r
        what = f"container row {i}"
        scan = Scan(event_id=_str(event_id, what), device_id=_str(device_id, what), site=_str(site, what),
                    imcb=_str(imcb, what), scanned_at=parse_time(at, f"{what} scanned_at"),
                    appointment=_str(appointment, what, nullable=True), mode=_str(mode, what),
                    disposition=_str(disposition, what))
        out.setdefault(scan.imcb, []).append(Container(scan.site, scan.imcb, [scan], _date(local, what),
                                                       scan.disposition))
    for group in out.values():
        group.sort(key=lambda c: (c.first.scanned_at, c.first.event_id))
    return out


def make_content(*, site: str, version: int, built_at: dt.datetime, as_of: dt.datetime, window: Mapping[str, str],
                 facility: Facility, zones: Iterable[tuple[tuple[str, str], int]], mdf: Iterable[MdfRow],
                 mailers: Iterable[tuple[Mailer, Iterable[str]]], edoc: Iterable[EdocRow],
                 containers: Iterable[Container]) -> bytes:
    """The uncompressed ``dock-slice/1`` document: the same inputs give the same bytes."""
    return _dumps({
        "schema": SLICE_SCHEMA, "site": site, "version": version, "built_at": rfc3339(built_at),
        "as_of": rfc3339(as_of), "window": dict(window), "facility": encode_facility(facility),
        "zones": encode_zones(zones), "mdf": encode_mdf(mdf), "mailers": encode_mailers(mailers),
        "edoc": encode_edoc(edoc), "containers": encode_containers(containers),
    })


# -- manifest and chunks ---------------------------------------------------------------------------------------


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def packet_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 5 PUBLISH at QoS 1 without properties (what a broker's max_packet_size limits)."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    return 1 + _varint_len(remaining) + remaining


@dataclass(frozen=True)
class Split:
    """One slice ready to publish (or to write to files)."""

    site: str
    version: int
    manifest: bytes
    chunks: list[tuple[str, bytes]]  # (topic, payload)
    content_bytes: int
    compressed_bytes: int
    content_sha256: str

    @property
    def manifest_topic(self) -> str:
        return slice_manifest_topic(self.site)


def _chunk_payload(site: str, version: int, index: int, count: int, data: bytes) -> bytes:
    return _dumps({"schema": CHUNK_SCHEMA, "site": site, "version": version, "index": index, "count": count,
                   "sha256": hashlib.sha256(data).hexdigest(), "data": base64.b64encode(data).decode()})


def split_slice(content: bytes, *, site: str, version: int, built_at: dt.datetime,
                max_packet: int = DEFAULT_MAX_PACKET) -> Split:
    """Compress ``content`` and cut it into chunks whose PUBLISH packets (topic included) fit ``max_packet``.

    Raises:
        ValueError: ``max_packet`` too small to carry anything, or a manifest that would not fit it.
    """
    blob = zlib.compress(content, 9)
    # Envelope bytes that are not data, at their widest (the last index, the count), plus the topic.
    count = 1
    for _ in range(8):
        probe = _chunk_payload(site, version, max(count - 1, 0), count, b"")
        room = max_packet - packet_size(slice_chunk_topic(site, version, max(count - 1, 0)), probe) - 8
        raw = (room // 4) * 3
        if raw < 256:
            raise ValueError(f"max packet size {max_packet} is too small for slice chunks")
        new_count = max(1, -(-len(blob) // raw))
        if new_count == count:
            break
        count = new_count
    pieces = [blob[i:i + raw] for i in range(0, len(blob), raw)] or [b""]
    if len(pieces) > MAX_CHUNKS:
        raise ValueError(f"slice of {len(blob)} compressed bytes needs {len(pieces)} chunks (at most {MAX_CHUNKS})")
    chunks = [(slice_chunk_topic(site, version, i), _chunk_payload(site, version, i, len(pieces), p))
              for i, p in enumerate(pieces)]
    manifest = _dumps({
        "schema": MANIFEST_SCHEMA, "site": site, "version": version, "built_at": rfc3339(built_at),
        "format": FORMAT, "content_bytes": len(content), "content_sha256": hashlib.sha256(content).hexdigest(),
        "compressed_bytes": len(blob),
        "chunks": [{"bytes": len(p), "sha256": hashlib.sha256(p).hexdigest()} for p in pieces],
    })
    for topic, payload in [*chunks, (slice_manifest_topic(site), manifest)]:
        if packet_size(topic, payload) > max_packet:
            raise ValueError(f"{topic}: {packet_size(topic, payload)} bytes exceed the maximum packet size {max_packet}")
    return Split(site, version, manifest, chunks, len(content), len(blob), hashlib.sha256(content).hexdigest())


@dataclass(frozen=True)
class Manifest:
    site: str
    version: int
    built_at: dt.datetime
    content_bytes: int
    content_sha256: str
    compressed_bytes: int
    chunks: tuple[tuple[int, str], ...]  # (bytes, sha256) per index
    canonical: bytes                    # the manifest as compact JSON (one line)


def read_manifest(payload: bytes) -> Manifest:
    """Parse and check a manifest message.

    Raises:
        SliceError: not JSON, not a dock-slice-manifest/1, or chunk sizes that do not add up.
    """
    try:
        obj = loads_flat(payload, MAX_MANIFEST_BYTES)
        validate("slice_manifest", obj)
    except BadMessage as e:
        raise SliceError("bad_manifest", str(e)) from None
    except SchemaError as e:
        raise SliceError("bad_manifest", str(e)) from None
    chunks = tuple((c["bytes"], c["sha256"]) for c in obj["chunks"])
    if sum(b for b, _ in chunks) != obj["compressed_bytes"]:
        raise SliceError("bad_manifest", f"version {obj['version']}: chunk sizes add up to "
                                         f"{sum(b for b, _ in chunks)}, not {obj['compressed_bytes']}")
    return Manifest(obj["site"], obj["version"], parse_time(obj["built_at"], "built_at"), obj["content_bytes"],
                    obj["content_sha256"], obj["compressed_bytes"], chunks, _dumps(obj))


# -- the assembler -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """Every chunk of one version, checked against its manifest: ready for ``install``."""

    manifest: Manifest
    blob: bytes


@dataclass
class _Pending:
    manifest: Manifest | None = None
    count: int | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks.values())


class Assembler:
    """Collects one facility's slice messages; says ``Ready`` once a version newer than the installed one is
    complete. Bounded: at most ``max_pending`` versions and ``max_compressed`` bytes are held in memory."""

    def __init__(self, site: str, installed: int | None = None, *, max_compressed: int = MAX_COMPRESSED,
                 max_content: int = MAX_CONTENT, max_pending: int = 2) -> None:
        self.site = site
        self.installed = installed
        self.installing: int | None = None
        self.failed: set[int] = set()
        self.pending: dict[int, _Pending] = {}
        self.max_compressed = max_compressed
        self.max_content = max_content
        self.max_pending = max_pending
        self.rejected: Counter[str] = Counter()  # garbage and refusals, by kind
        self.seen: Counter[str] = Counter()      # normal traffic not acted on (repeats, old versions, clears)
        self.last_problem: str | None = None

    def _reject(self, kind: str, why: str) -> None:
        self.rejected[kind] += 1
        self.last_problem = why
        log.warning("slice: %s", why)

    def _wanted(self, version: int) -> bool:
        """A version worth holding: newer than installed and installing, not failed, not superseded."""
        if self.installed is not None and version <= self.installed:
            return False
        if (self.installing is not None and version <= self.installing) or version in self.failed:
            return False
        return not any(p.manifest is not None and v > version for v, p in self.pending.items())

    def offer(self, topic: str, payload: bytes) -> Ready | None:
        """One inbound message on a slice topic; a ``Ready`` when it completed a version."""
        where = parse_slice_topic(topic)
        if where is None or where[0] != self.site:
            self._reject("bad_topic", f"{topic[:120]!r} is not a slice topic of {self.site}")
            return None
        if not payload:
            self.seen["cleared"] += 1  # an old chunk's retained message being cleared
            return None
        try:
            if where[1] is None:
                return self._manifest(payload)
            assert where[2] is not None
            return self._chunk(where[1], where[2], payload)
        except SliceError as e:
            self._reject(e.kind, str(e))
            return None

    def _manifest(self, payload: bytes) -> Ready | None:
        m = read_manifest(payload)
        if m.site != self.site:
            raise SliceError("other_site", f"manifest of {m.site!r} on the topic of {self.site!r}")
        if m.compressed_bytes > self.max_compressed or m.content_bytes > self.max_content:
            raise SliceError("too_big", f"version {m.version}: {m.compressed_bytes} compressed / {m.content_bytes} "
                                        f"bytes exceed this dock's limits")
        if not self._wanted(m.version):
            self.seen["not_newer"] += 1
            return None
        p = self.pending.setdefault(m.version, _Pending())
        if p.manifest is not None and p.manifest.canonical == m.canonical:
            self.seen["repeat"] += 1
            return self._complete(m.version)
        p.manifest = m  # the latest manifest of a version wins, as a retained message does
        for v in [v for v in self.pending if v < m.version]:
            del self.pending[v]
        for i, data in sorted(p.chunks.items()):
            problem = self._against_manifest(m, i, len(m.chunks) if p.count is None else p.count, data)
            if problem:
                del p.chunks[i]
                self._reject("chunk_mismatch", problem)
        p.count = len(m.chunks)
        return self._complete(m.version)

    @staticmethod
    def _against_manifest(m: Manifest, index: int, count: int, data: bytes) -> str | None:
        if count != len(m.chunks) or index >= len(m.chunks):
            return f"version {m.version}: chunk {index} of {count}, the manifest has {len(m.chunks)}"
        size, sha = m.chunks[index]
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            return f"version {m.version}: chunk {index} differs from the manifest (size or SHA-256)"
        return None

    def _chunk(self, version: int, index: int, payload: bytes) -> Ready | None:
        if not self._wanted(version):
            self.seen["not_newer"] += 1  # decided from the topic alone: nothing is parsed
            return None
        try:
            obj = loads_flat(payload, DOCK_MAX_PACKET)
            validate("slice_chunk", obj)
        except (BadMessage, SchemaError) as e:
            raise SliceError("bad_chunk", f"version {version} chunk {index}: {e}") from None
        if (obj["site"], obj["version"], obj["index"]) != (self.site, version, index):
            raise SliceError("bad_chunk", f"chunk {obj['site']}/{obj['version']}/{obj['index']} on the topic of "
                                          f"{self.site}/{version}/{index}")
        if index >= obj["count"]:
            raise SliceError("bad_chunk", f"version {version}: chunk index {index} >= count {obj['count']}")
        try:
            data = base64.b64decode(obj["data"], validate=True)
        except (binascii.Error, ValueError):
            raise SliceError("bad_chunk", f"version {version} chunk {index}: data is not base64") from None
        if hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise SliceError("corrupt_chunk", f"version {version} chunk {index}: SHA-256 mismatch")
        p = self.pending.get(version)
        if p is None:
            if len(self.pending) >= self.max_pending:
                lowest = min(self.pending)
                if lowest > version:
                    self.seen["buffer_full"] += 1
                    return None
                del self.pending[lowest]
            p = self.pending[version] = _Pending()
        if p.manifest is not None:
            problem = self._against_manifest(p.manifest, index, obj["count"], data)
            if problem:
                raise SliceError("chunk_mismatch", problem)
        elif p.count is not None and p.count != obj["count"]:
            raise SliceError("chunk_mismatch", f"version {version}: chunk {index} says {obj['count']} chunks, "
                                               f"others said {p.count}")
        p.count = obj["count"]
        if index in p.chunks:
            self.seen["repeat"] += 1
            return None
        if sum(q.size for q in self.pending.values()) + len(data) > self.max_compressed:
            del self.pending[version]
            raise SliceError("too_big", f"version {version}: more than {self.max_compressed} bytes buffered")
        p.chunks[index] = data
        return self._complete(version)

    def _complete(self, version: int) -> Ready | None:
        p = self.pending.get(version)
        if p is None or p.manifest is None or len(p.chunks) != len(p.manifest.chunks):
            return None
        blob = b"".join(p.chunks[i] for i in range(len(p.manifest.chunks)))
        for v in [v for v in self.pending if v <= version]:
            del self.pending[v]
        self.installing = version
        return Ready(p.manifest, blob)

    def installed_ok(self, version: int) -> None:
        self.installed = version if self.installed is None else max(self.installed, version)
        if self.installing is not None and self.installing <= version:
            self.installing = None

    def install_failed(self, version: int, why: str) -> None:
        self.failed.add(version)
        if self.installing == version:
            self.installing = None
        self._reject("install_failed", f"version {version} not installed: {why}")

    def progress(self) -> list[dict[str, Any]]:
        return [{"version": v, "chunks": len(p.chunks), "of": p.count, "manifest": p.manifest is not None}
                for v, p in sorted(self.pending.items())]


# -- the installed slice -------------------------------------------------------------------------------------


@dataclass
class Slice:
    """A facility's reference slice as the rules consume it (the attribute names of scorer.scorecard.Reference,
    so scorer.scorecard.evaluate can run on it), and where it came from."""

    site: str
    version: int
    built_at: dt.datetime
    as_of: dt.datetime
    content_sha256: str
    facility: Facility
    edoc: dict[str, list[EdocRow]]
    mailers: dict[str, Mailer]
    mid_crid: dict[str, str]
    continuous: set[str]
    mdf: dict[tuple[str, str], MdfRow]
    zones: dict[tuple[str, str], int]
    containers: dict[str, list[Container]]  # by IMcb, each list in first-scan order
    window: dict[str, str] = field(default_factory=dict)

    @property
    def facilities(self) -> dict[str, Facility]:
        return {self.site: self.facility}

    @property
    def scans(self) -> list[Scan]:
        return [c.first for group in self.containers.values() for c in group]

    def age_s(self, now: dt.datetime) -> float:
        return (now - self.built_at).total_seconds()

    def stale(self, now: dt.datetime, max_age: dt.timedelta = STALE_AFTER) -> bool:
        return now - self.built_at > max_age

    def merged(self, answer: Answer) -> Slice:
        """This slice plus headquarters' answer about some IMcbs (their rows replace the slice's)."""
        containers = dict(self.containers)
        for imcb, group in answer.containers.items():
            known = {(c.site, c.first.event_id) for c in containers.get(imcb, [])}
            containers[imcb] = sorted([*containers.get(imcb, []),
                                       *(c for c in group if (c.site, c.first.event_id) not in known)],
                                      key=lambda c: (c.first.scanned_at, c.first.event_id))
        return dataclasses.replace(
            self, edoc={**self.edoc, **answer.edoc}, mailers={**self.mailers, **answer.mailers},
            mid_crid={**self.mid_crid, **answer.mid_crid}, continuous=self.continuous | answer.continuous,
            mdf={**self.mdf, **answer.mdf}, containers=containers)

    def counts(self) -> dict[str, int]:
        return {"edoc_rows": sum(len(v) for v in self.edoc.values()), "imcbs": len(self.edoc),
                "mailers": len(self.mailers), "mdf": len(self.mdf), "zones": len(self.zones),
                "containers": sum(len(v) for v in self.containers.values())}


def verify_blob(m: Manifest, blob: bytes) -> bytes:
    """The content of a complete slice, checked against its manifest (decompression bounded by its size).

    Raises:
        SliceError: sizes, zlib stream or SHA-256 disagree with the manifest.
    """
    if len(blob) != m.compressed_bytes:
        raise SliceError("corrupt", f"version {m.version}: {len(blob)} compressed bytes, manifest says "
                                    f"{m.compressed_bytes}")
    d = zlib.decompressobj()
    try:
        content = d.decompress(blob, m.content_bytes + 1)
    except zlib.error as e:
        raise SliceError("corrupt", f"version {m.version}: not a zlib stream ({e})") from None
    if len(content) != m.content_bytes or not d.eof or d.unconsumed_tail or d.unused_data:
        raise SliceError("corrupt", f"version {m.version}: content is not the {m.content_bytes} bytes the manifest "
                                    "says")
    if hashlib.sha256(content).hexdigest() != m.content_sha256:
        raise SliceError("corrupt", f"version {m.version}: content SHA-256 differs from the manifest")
    return content


def parse_content(content: bytes, m: Manifest) -> Slice:
    """The checked content as rule objects.

    Raises:
        SliceError: not JSON, not a dock-slice/1, disagreeing with its manifest, or an undecodable row.
    """
    # Building ~10^5 objects next to a freshly parsed JSON graph makes the cyclic GC rescan it over and over;
    # nothing here makes cycles, so it pauses (process-wide, for the second or two this takes), and the
    # result is frozen out of later collections (else the first one after loading walks it all: 100-250 ms
    # pauses measured by bench/workflow_latency.py).
    paused = gc.isenabled()
    gc.disable()
    try:
        return _parse_content(content, m)
    finally:
        if paused:
            gc.freeze()
            gc.enable()


def _parse_content(content: bytes, m: Manifest) -> Slice:
    try:
        obj = json.loads(content)
    except (ValueError, RecursionError) as e:
        raise SliceError("bad_content", f"version {m.version}: not JSON ({str(e)[:80]})") from None
    try:
        validate("slice", obj)
    except SchemaError as e:
        raise SliceError("bad_content", f"version {m.version}: {e}") from None
    if (obj["site"], obj["version"]) != (m.site, m.version) or parse_time(obj["built_at"], "built_at") != m.built_at:
        raise SliceError("bad_content", f"content says {obj['site']} version {obj['version']}, the manifest "
                                        f"{m.site} version {m.version}")
    mailers, mid_crid, continuous = decode_mailers(obj["mailers"])
    return Slice(site=m.site, version=m.version, built_at=m.built_at, as_of=parse_time(obj["as_of"], "as_of"),
                 content_sha256=m.content_sha256, facility=decode_facility(obj["facility"]),
                 edoc=decode_edoc(obj["edoc"]), mailers=mailers, mid_crid=mid_crid, continuous=continuous,
                 mdf=decode_mdf(obj["mdf"]), zones=decode_zones(obj["zones"]),
                 containers=decode_containers(obj["containers"]), window=dict(obj["window"]))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(state_dir: Path, ready: Ready, *, min_free_bytes: int = 0) -> Slice:
    """Check a complete slice end to end, then replace the installed one atomically.

    Raises:
        SliceError: anything wrong with it (nothing was written), or no room on the disk above
            ``min_free_bytes`` (kept for the scans).
    """
    m = ready.manifest
    s = parse_content(verify_blob(m, ready.blob), m)
    body = m.canonical + b"\n" + ready.blob
    path = state_dir / SLICE_FILE
    tmp = state_dir / (SLICE_FILE + ".tmp")
    try:
        if shutil.disk_usage(state_dir).free - len(body) < min_free_bytes:
            raise SliceError("disk", f"version {m.version}: {len(body)} bytes would leave less than "
                                     f"{min_free_bytes} bytes free (kept for scans)")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(state_dir)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SliceError("disk", f"version {m.version}: cannot write {path}: {e.strerror or e}") from None
    return s


def read_installed_manifest(state_dir: Path) -> Manifest | None:
    """The installed slice's manifest (its first line only: cheap); None when there is none.

    Raises:
        SliceError: the file exists but its first line is not a manifest.
    """
    try:
        with open(state_dir / SLICE_FILE, "rb") as f:
            header = f.readline(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SliceError("corrupt", f"cannot read {state_dir / SLICE_FILE}: {e.strerror or e}") from None
    if not header.endswith(b"\n"):
        raise SliceError("corrupt", f"{state_dir / SLICE_FILE}: no manifest line")
    return read_manifest(header[:-1])


def load_slice(state_dir: Path) -> Slice | None:
    """The installed slice, checked again end to end; None when none is installed.

    Raises:
        SliceError: the file is damaged (the dock should fetch the slice again).
    """
    path = state_dir / SLICE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SliceError("corrupt", f"cannot read {path}: {e.strerror or e}") from None
    header, nl, blob = data.partition(b"\n")
    if not nl:
        raise SliceError("corrupt", f"{path}: no manifest line")
    m = read_manifest(header)
    return parse_content(verify_blob(m, blob), m)


def install_files(state_dir: Path, directory: Path, site: str, *, min_free_bytes: int = 0) -> Slice:
    """Install a slice written by ``dock-scorer slice build --out DIR`` (manual transfer), through the same
    assembler and checks as one received over MQTT.

    Raises:
        SliceError: incomplete, corrupt, for another site, or not newer than the installed one.
    """
    installed = read_installed_manifest(state_dir)
    asm = Assembler(site, installed.version if installed else None)
    ready = None
    topics = json.loads((directory / "topics.json").read_text())
    for name, topic in topics.items():
        ready = asm.offer(topic, (directory / name).read_bytes()) or ready
    if ready is None:
        raise SliceError("incomplete", asm.last_problem or f"{directory}: no complete slice newer than the installed one")
    return install(state_dir, ready, min_free_bytes=min_free_bytes)


# -- asking headquarters about a container the slice does not know -------------------------------------------


def make_query(device_id: str, site: str, imcbs: Sequence[str], asked_at: str,
               slice_version: int | None) -> tuple[str, bytes]:
    """(query_id, payload) of a ``dock-query/1`` for up to 100 IMcbs."""
    query_id = str(uuid.uuid4())
    wanted = list(dict.fromkeys(imcbs))
    if not 1 <= len(wanted) <= MAX_QUERY_IMCBS:
        raise ValueError(f"a query asks about 1 to {MAX_QUERY_IMCBS} IMcbs, not {len(wanted)}")
    return query_id, _dumps({"schema": "dock-query/1", "device_id": device_id, "site": site, "query_id": query_id,
                             "asked_at": asked_at, "imcbs": wanted, "slice_version": slice_version})


def read_query(payload: bytes) -> dict[str, Any]:
    """A dock's question, checked (the scorer side).

    Raises:
        BadMessage: not JSON or not a dock-query/1.
    """
    obj = loads_bounded(payload, 65536)
    try:
        validate("query", obj)
    except SchemaError as e:
        raise BadMessage("bad_schema", str(e)) from None
    return obj  # type: ignore[no-any-return]


def make_answer(*, device_id: str, site: str, query_id: str, answered_at: str, scorer: str, imcbs: Sequence[str],
                edoc: Iterable[EdocRow], mailers: Iterable[tuple[Mailer, Iterable[str]]], mdf: Iterable[MdfRow],
                containers: Iterable[Container], unknown: Sequence[str], truncated: Sequence[str],
                slice_version: int | None) -> bytes:
    return _dumps({"schema": "dock-answer/1", "device_id": device_id, "site": site, "query_id": query_id,
                   "answered_at": answered_at, "scorer": scorer, "imcbs": list(imcbs), "edoc": encode_edoc(edoc),
                   "mailers": encode_mailers(mailers), "mdf": encode_mdf(mdf),
                   "containers": encode_containers(containers), "unknown": list(unknown),
                   "truncated": list(truncated), "slice_version": slice_version})


@dataclass(frozen=True)
class Answer:
    """Headquarters' answer about some IMcbs: rule objects, like a small slice without facility data."""

    query_id: str
    answered_at: dt.datetime
    imcbs: tuple[str, ...]
    edoc: dict[str, list[EdocRow]]
    mailers: dict[str, Mailer]
    mid_crid: dict[str, str]
    continuous: set[str]
    mdf: dict[tuple[str, str], MdfRow]
    containers: dict[str, list[Container]]
    unknown: tuple[str, ...]     # in no eDoc headquarters holds (matchable from now on)
    truncated: tuple[str, ...]   # not answered (the answer had to fit a packet): ask again
    slice_version: int | None    # the latest slice headquarters published for the site


def read_answer(payload: bytes, device_id: str) -> Answer:
    """Parse and check an answer addressed to ``device_id``.

    Raises:
        BadMessage: not JSON, not a dock-answer/1, for another dock, or with undecodable rows.
    """
    obj = loads_bounded(payload)
    try:
        validate("answer", obj)
    except SchemaError as e:
        raise BadMessage("bad_schema", str(e)) from None
    if obj["device_id"] != device_id:
        raise BadMessage("other_device", f"answer for {obj['device_id']!r}, this dock is {device_id!r}")
    try:
        mailers, mid_crid, continuous = decode_mailers(obj["mailers"])
        return Answer(obj["query_id"], parse_time(obj["answered_at"], "answered_at"), tuple(obj["imcbs"]),
                      decode_edoc(obj["edoc"]), mailers, mid_crid, continuous, decode_mdf(obj["mdf"]),
                      decode_containers(obj["containers"]), tuple(obj["unknown"]), tuple(obj["truncated"]),
                      obj["slice_version"])
    except SliceError as e:
        raise BadMessage("bad_schema", str(e)) from None


# -- inside the agent ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceDone:
    """Posted to the agent's loop by the worker: ``installed``, ``loaded``, ``failed`` or ``load_failed``."""

    kind: str
    version: int | None
    slice: Slice | None = None
    reason: str = ""


class SliceService:
    """The dock's slice: receives, installs (in a worker thread), keeps the loaded one, answers health.

    Called only from the agent's loop thread, except the worker, which only posts ``SliceDone``.
    """

    MAX_ANSWERS = 1000

    def __init__(self, site: str, state_dir: Path, *, post: Callable[[object], None], wall_ns: Callable[[], int],
                 min_free_bytes: int = 0, stale_after: dt.timedelta = STALE_AFTER,
                 on_corrupt: Callable[[str], None] | None = None) -> None:
        self.site = site
        self.state_dir = state_dir
        self.post = post
        self.wall_ns = wall_ns
        self.min_free_bytes = min_free_bytes
        self.stale_after = stale_after
        self.on_corrupt = on_corrupt
        self.current: Slice | None = None
        self.installed_at: str | None = None
        self.problem: str | None = None
        self.version: int | None = None
        self.built_at: dt.datetime | None = None
        try:
            m = read_installed_manifest(state_dir)
        except SliceError as e:
            m = None
            self.problem = str(e)
        if m is not None:
            self.version, self.built_at = m.version, m.built_at
        self.assembler = Assembler(site, self.version)
        self._busy = False
        self._next: Ready | None = None
        self.answers: OrderedDict[str, Answer] = OrderedDict()
        self.queries_sent = 0
        self.answers_received = 0
        self.listener: Callable[[Slice | None], None] | None = None  # told on the loop thread when ``current`` changes

    def start(self) -> None:
        """Load the installed slice in the background (it is checked end to end first)."""
        if self.version is not None:
            self._busy = True
            self._spawn(self._load_job)

    def offer(self, topic: str, payload: bytes) -> None:
        ready = self.assembler.offer(topic, payload)
        if ready is not None:
            self._submit(ready)

    def _submit(self, ready: Ready) -> None:
        if self._busy:
            if self._next is None or self._next.manifest.version < ready.manifest.version:
                self._next = ready
            return
        self._busy = True
        self._spawn(lambda: self._install_job(ready))

    def _spawn(self, job: Callable[[], None]) -> None:
        threading.Thread(target=job, name="slice-install", daemon=True).start()

    def _install_job(self, ready: Ready) -> None:
        v = ready.manifest.version
        try:
            t0 = time.monotonic()
            s = install(self.state_dir, ready, min_free_bytes=self.min_free_bytes)
            log.info("slice: installed version %d of %s (%d bytes, %.2f s)", v, self.site, len(ready.blob),
                     time.monotonic() - t0)
            self.post(SliceDone("installed", v, s))
        except SliceError as e:
            self.post(SliceDone("failed", v, None, str(e)))
        except Exception as e:  # a bug must not leave the service busy forever
            log.exception("slice: install of version %d failed", v)
            self.post(SliceDone("failed", v, None, f"internal error: {e}"))

    def _load_job(self) -> None:
        try:
            s = load_slice(self.state_dir)
            self.post(SliceDone("loaded", s.version if s else None, s))
        except SliceError as e:
            self.post(SliceDone("load_failed", None, None, str(e)))
        except Exception as e:
            log.exception("slice: load failed")
            self.post(SliceDone("load_failed", None, None, f"internal error: {e}"))

    def done(self, event: SliceDone) -> None:
        """A worker's result, on the loop thread."""
        self._busy = False
        if event.kind in ("installed", "loaded") and event.slice is not None:
            s = event.slice
            self.current = s
            self.version, self.built_at = s.version, s.built_at
            self.assembler.installed_ok(s.version)
            self.problem = None
            if event.kind == "installed":
                self.installed_at = rfc3339(dt.datetime.fromtimestamp(self.wall_ns() / 1e9, UTC))
            if self.listener is not None:
                self.listener(s)
        elif event.kind == "failed" and event.version is not None:
            self.assembler.install_failed(event.version, event.reason)
            self.problem = event.reason
        elif event.kind == "load_failed":
            log.error("slice: the installed slice is unusable (%s); fetching it again", event.reason)
            self.problem = event.reason
            self.current = None
            self.version = self.built_at = None
            self.assembler.installed = None
            if self.listener is not None:
                self.listener(None)
            if self.on_corrupt is not None:
                self.on_corrupt(f"reference slice on disk is unusable: {event.reason}")
        if self._next is not None:
            ready, self._next = self._next, None
            if self.assembler.installed is None or ready.manifest.version > self.assembler.installed:
                self._busy = True
                self._spawn(lambda: self._install_job(ready))

    def answered(self, answer: Answer) -> None:
        self.answers_received += 1
        self.answers[answer.query_id] = answer
        while len(self.answers) > self.MAX_ANSWERS:
            self.answers.popitem(last=False)

    def health(self) -> dict[str, Any]:
        now = dt.datetime.fromtimestamp(self.wall_ns() / 1e9, UTC)
        built = self.built_at
        return {
            "version": self.version,
            "built_at": rfc3339(built) if built else None,
            "age_s": round((now - built).total_seconds(), 1) if built else None,
            "state": "none" if built is None else ("stale" if now - built > self.stale_after else "fresh"),
            "loaded": self.current is not None,
            "installed_at": self.installed_at,
            "counts": self.current.counts() if self.current else None,
            "assembling": self.assembler.progress(),
            "installing": self.assembler.installing,
            "ignored": dict(self.assembler.rejected),
            "last_problem": self.problem or self.assembler.last_problem,
            "queries_sent": self.queries_sent,
            "answers_received": self.answers_received,
        }

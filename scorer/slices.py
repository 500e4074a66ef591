"""Reference slices for docks, at headquarters: per facility, the data scorer.rules needs to judge a container at
scan time, cut from the scorer database, versioned, compressed, chunked and published as retained messages
(the wire format and the dock's side are in sync/slices.py; the protocol in docs/protocol.md).

What a facility's slice holds (``Selector.select``):

- **eDoc rows expected there.** An IMcb is in the slice when one of its rows
  (a) has a Mail Direction File facility (``rules.mdf_lookup`` of its destination ZIP and entry facility type)
      that is this facility, and a mailing date no older than the 45-day duplicate window; or
  (b) was scanned at this facility in the last 46 days (a re-presentation is a duplicate candidate); or
  (c) has no MDF entry at all and a mailing date from 7 days back to 14 days ahead: the MDF cannot say where
      it goes, so every facility gets it (cheap: such rows are few, and it is safe: a dock never has to guess).
  A container whose MDF facility is another one is *not* in the slice: at this dock it is misshipped or
  unknown, and an online dock asks headquarters (``answer_query``, ``dock-query/1``).
  For each IMcb taken, every row ``rules.match_edoc`` can still return for a scan from now on is taken (the
  latest row mailed on or before the build date, minus a day of time-zone margin, and every later one), so the
  dock matches exactly as headquarters does. Postage is left out: the dock judges, headquarters assesses.
- **Mailers**: the flags (seamless, continuous MIDs) and MIDs of the CRIDs of those IMcbs' MIDs and submitters,
  and of every CRID with a continuous MID (an IMcb in no eDoc is "pending", not "undocumented", when its MID
  is continuous: the dock must know that of any IMcb).
- **Mail Direction File**: the rows pointing at this facility, the 5-digit rows under a 3-digit row pointing
  here (so the longest-prefix lookup gives headquarters' answer for any ZIP under it), and the row each taken
  eDoc row resolves to.
- **The facility** (entry levels, ZIP3, time zone) and the **zones** from its ZIP3.
- **Containers** scanned at this facility in the last 46 days, and those of the taken IMcbs elsewhere: first scan
  (event id, device, time), appointment, local date, disposition: the originals of the B-3 Duplicate rule.

Versions are per facility and strictly increasing: the larger of (last version + 1) and the build's Unix time,
so they keep increasing even if this database is rebuilt. The ``slice_versions`` table (created here) records
each version's chunk count, so publishing version N clears (empty retained messages) the chunks of every older
version still on the broker.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scorer import rules
from scorer.rules import Container, EdocRow, Facility, Mailer, MdfRow, Scan
from scorer.scorecard import EDOC_COLUMNS, Reference, edoc_row, load_reference, load_scans
from sync import slices as wire

log = logging.getLogger(__name__)

UTC = dt.UTC
VERSIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS slice_versions (
        site TEXT NOT NULL, version BIGINT NOT NULL, built_at TEXT NOT NULL, state TEXT NOT NULL,
        content_sha256 TEXT, content_bytes BIGINT, compressed_bytes BIGINT, chunks INTEGER, updated_at TEXT NOT NULL,
        PRIMARY KEY (site, version)
    )
"""
# state: building -> built (chunk count known) -> published -> cleared (its chunks removed from the broker);
# or building -> file (written to files, never on the broker).


class SliceBuildError(Exception):
    """A slice cannot be built or published; the message says why."""


@dataclass(frozen=True)
class Window:
    """How far the selection reaches (see the module docstring)."""

    edoc_back: dt.timedelta = rules.DUPLICATE_WINDOW
    no_mdf_back: dt.timedelta = dt.timedelta(days=7)
    no_mdf_ahead: dt.timedelta = dt.timedelta(days=14)
    scans: dt.timedelta = rules.DUPLICATE_WINDOW + dt.timedelta(days=1)


@dataclass
class SliceData:
    """One facility's selection, before versioning."""

    site: str
    as_of: dt.datetime
    window: dict[str, str]
    facility: Facility
    zones: list[tuple[tuple[str, str], int]]
    mdf: list[MdfRow]
    mailers: list[tuple[Mailer, list[str]]]
    edoc: list[EdocRow]
    containers: list[Container]
    reasons: dict[str, int] = field(default_factory=dict)  # IMcbs taken by each criterion

    def content(self, version: int, built_at: dt.datetime) -> bytes:
        return wire.make_content(site=self.site, version=version, built_at=built_at, as_of=self.as_of,
                                 window=self.window, facility=self.facility, zones=self.zones, mdf=self.mdf,
                                 mailers=self.mailers, edoc=self.edoc, containers=self.containers)


def _rank(r: EdocRow) -> tuple[dt.date, dt.datetime, str]:
    return (r.mailing_date, r.uploaded_at, r.statement_id)  # rules.match_edoc's order


def matchable(rows: Iterable[EdocRow], first_day: dt.date) -> list[EdocRow]:
    """The rows of one IMcb that ``rules.match_edoc`` can still return for a scan on or after ``first_day``:
    the best row mailed on or before it (it beats every older one from then on) and every later one."""
    rows = list(rows)
    old = [r for r in rows if r.mailing_date <= first_day]
    best = [max(old, key=_rank)] if old else []
    return best + sorted((r for r in rows if r.mailing_date > first_day), key=_rank)


def _first_day(as_of: dt.datetime) -> dt.date:
    """The earliest local date a scan after ``as_of`` can have anywhere (UTC date minus a day of margin)."""
    return as_of.astimezone(UTC).date() - dt.timedelta(days=1)


class Selector:
    """Selections for any number of facilities from one load of the database."""

    def __init__(self, ref: Reference, scans: Sequence[Scan], changes: dict[str, str], as_of: dt.datetime,
                 window: Window | None = None) -> None:
        self.ref = ref
        self.as_of = as_of.astimezone(UTC)
        self.w = window or Window()
        first = _first_day(self.as_of)
        self.edoc_from = first - self.w.edoc_back
        self.no_mdf_from = first - self.w.no_mdf_back
        self.no_mdf_to = self.as_of.date() + self.w.no_mdf_ahead
        self.scans_from = self.as_of - self.w.scans
        tz_of = {f: fac.tz for f, fac in ref.facilities.items()}
        self.containers = [c for c in rules.group_containers(scans, tz_of, changes)
                           if self.scans_from <= c.first.scanned_at <= self.as_of]
        self.kept = {imcb: kept for imcb, rows in ref.edoc.items() if (kept := matchable(rows, first))}
        self._mdf_memo: dict[tuple[str, str], MdfRow | None] = {}
        self.by_facility: dict[str, set[str]] = defaultdict(set)
        self.no_mdf: set[str] = set()
        for imcb, rows in self.kept.items():
            for r in rows:
                hit = self.mdf_of(r)
                if hit is None:
                    if self.no_mdf_from <= r.mailing_date <= self.no_mdf_to:
                        self.no_mdf.add(imcb)
                elif r.mailing_date >= self.edoc_from:
                    self.by_facility[hit.facility].add(imcb)
        self.mids_of: dict[str, list[str]] = defaultdict(list)
        for mid, crid in ref.mid_crid.items():
            self.mids_of[crid].append(mid)

    def mdf_of(self, r: EdocRow) -> MdfRow | None:
        key = (r.destination_zip[:5], r.entry_facility_type.upper())
        if key not in self._mdf_memo:
            self._mdf_memo[key] = rules.mdf_lookup(self.ref.mdf, r.destination_zip, r.entry_facility_type)
        return self._mdf_memo[key]

    def select(self, site: str) -> SliceData:
        """Raises SliceBuildError: the facility is not in the facilities table."""
        ref = self.ref
        fac = ref.facilities.get(site)
        if fac is None:
            raise SliceBuildError(f"facility {site!r} is not in the facilities table (dock-scorer import facilities)")
        here = [c for c in self.containers if c.site == site]
        scanned = {c.imcb for c in here} & self.kept.keys()
        by_mdf = self.by_facility.get(site, set())
        chosen = by_mdf | scanned | self.no_mdf
        rows = [r for imcb in sorted(chosen) for r in self.kept[imcb]]
        mdf: dict[tuple[str, str], MdfRow] = {k: m for k, m in ref.mdf.items() if m.facility == site}
        prefixes = {(z, eft) for (z, eft) in mdf if len(z) == 3}
        mdf.update({(z, eft): m for (z, eft), m in ref.mdf.items() if len(z) == 5 and (z[:3], eft) in prefixes})
        for r in rows:
            hit = self.mdf_of(r)
            if hit is not None:
                mdf[(hit.destination_zip, hit.entry_facility_type)] = hit
        crids = {c for imcb in chosen if (c := ref.mid_crid.get(rules.mid_of(imcb)))}
        crids |= {r.submitter_crid for r in rows}
        crids |= {c for c, m in ref.mailers.items() if m.continuous_mids}
        mailers = [(ref.mailers[c], self.mids_of.get(c, [])) for c in sorted(crids) if c in ref.mailers]
        elsewhere = [c for c in self.containers if c.site != site and c.imcb in chosen]
        window = {"edoc_mailing_from": self.edoc_from.isoformat(), "no_mdf_mailing_from": self.no_mdf_from.isoformat(),
                  "no_mdf_mailing_to": self.no_mdf_to.isoformat(), "containers_from": wire.rfc3339(self.scans_from)}
        return SliceData(
            site=site, as_of=self.as_of, window=window, facility=fac,
            zones=[(k, z) for k, z in ref.zones.items() if k[0] == fac.zip3], mdf=list(mdf.values()),
            mailers=mailers, edoc=rows, containers=here + elsewhere,
            reasons={"mdf": len(by_mdf), "scanned_here": len(scanned), "no_mdf_recent": len(self.no_mdf),
                     "imcbs": len(chosen)},
        )


def selector(db: Any, as_of: dt.datetime, window: Window | None = None) -> Selector:
    """Load the database once (reference data and the containers of the scan window)."""
    w = window or Window()
    ref = load_reference(db)
    scans, changes = load_scans(db, as_of - w.scans - dt.timedelta(days=1), as_of + dt.timedelta(seconds=1))
    return Selector(ref, scans, changes, as_of, w)


# -- versions ------------------------------------------------------------------------------------------------


def _now_text() -> str:
    return wire.rfc3339(dt.datetime.now(UTC))


def ensure_table(db: Any) -> None:
    db.backend.executescript([VERSIONS_TABLE])


def reserve_version(db: Any, site: str, built_at: dt.datetime) -> int:
    """The next version of ``site``: max(last + 1, Unix time of the build), recorded as 'building'."""
    ensure_table(db)
    for _ in range(20):
        last = db.backend.query("SELECT max(version) FROM slice_versions WHERE site = ?", (site,))[0][0]
        version = max(int(last or 0) + 1, int(built_at.timestamp()))
        try:
            db.backend.execute(
                "INSERT INTO slice_versions (site, version, built_at, state, updated_at) VALUES (?, ?, ?, 'building', ?)",
                (site, version, wire.rfc3339(built_at), _now_text()))
            return version
        except Exception as e:  # a concurrent build took it (primary key; the error type is the driver's)
            if "unique" not in str(e).lower() and "constraint" not in str(e).lower():
                raise
    raise SliceBuildError(f"could not reserve a slice version for {site}")


def _record(db: Any, site: str, version: int, state: str, split: wire.Split | None = None) -> None:
    if split is None:
        db.backend.execute("UPDATE slice_versions SET state = ?, updated_at = ? WHERE site = ? AND version = ?",
                           (state, _now_text(), site, version))
    else:
        db.backend.execute(
            "UPDATE slice_versions SET state = ?, content_sha256 = ?, content_bytes = ?, compressed_bytes = ?,"
            " chunks = ?, updated_at = ? WHERE site = ? AND version = ?",
            (state, split.content_sha256, split.content_bytes, split.compressed_bytes, len(split.chunks),
             _now_text(), site, version))


def latest_published(db: Any, site: str) -> int | None:
    ensure_table(db)
    row = db.backend.query("SELECT max(version) FROM slice_versions WHERE site = ? AND state = 'published'", (site,))
    return int(row[0][0]) if row and row[0][0] is not None else None


@dataclass(frozen=True)
class Built:
    data: SliceData
    split: wire.Split
    built_at: dt.datetime


def build(db: Any, sel: Selector, site: str, *, max_packet: int, state: str = "built") -> Built:
    """Select, version, serialise, compress and chunk one facility's slice."""
    data = sel.select(site)
    built_at = dt.datetime.now(UTC)
    version = reserve_version(db, site, built_at)
    try:
        split = wire.split_slice(data.content(version, built_at), site=site, version=version, built_at=built_at,
                                 max_packet=max_packet)
    except ValueError as e:
        _record(db, site, version, "cleared")
        raise SliceBuildError(str(e)) from None
    _record(db, site, version, state, split)
    return Built(data, split, built_at)


def write_files(b: Built, out: Path) -> list[Path]:
    """The messages as files (for tests and manual transfer): manifest.json, chunk-NNNNN.json, topics.json
    (file name -> topic, what ``sync.slices.install_files`` reads) and content.json (uncompressed, to read)."""
    out.mkdir(parents=True, exist_ok=True)
    topics = {"manifest.json": b.split.manifest_topic}
    (out / "manifest.json").write_bytes(b.split.manifest)
    for i, (topic, payload) in enumerate(b.split.chunks):
        name = f"chunk-{i:05d}.json"
        (out / name).write_bytes(payload)
        topics[name] = topic
    (out / "topics.json").write_text(json.dumps(topics, indent=1) + "\n")
    (out / "content.json").write_bytes(b.data.content(b.split.version, b.built_at))
    return [out / n for n in topics]


# -- publishing ----------------------------------------------------------------------------------------------


class PublishError(Exception):
    """The broker refused or did not acknowledge a publish; the message says which."""


@dataclass(frozen=True)
class Target:
    url: Any  # sync.mqtt_link.BrokerURL
    client_id: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None


class Publisher:
    """A short-lived MQTT 5 connection that publishes retained messages and waits for every PUBACK."""

    def __init__(self, target: Target, timeout_s: float = 30.0) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.timeout_s = timeout_s
        self.target = target
        self.max_packet: int | None = None
        self._cond = threading.Condition()
        self._acks: dict[int, tuple[int, str]] = {}
        self._connected = False
        self._gone: str | None = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=target.client_id, protocol=mqtt.MQTTv5)
        if target.url.tls:
            c.tls_set(ca_certs=target.ca_file, certfile=target.cert_file, keyfile=target.key_file,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if target.username:
            c.username_pw_set(target.username, target.password)
        c.max_inflight_messages_set(50)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c

    def _on_connect(self, _c, _u, _f, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            if reason_code.is_failure:
                self._gone = f"broker refused the connection: {reason_code}"
            else:
                self._connected = True
                self.max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
            self._cond.notify_all()

    def _on_disconnect(self, _c, _u, _f, reason_code, _p) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self._gone = self._gone or f"disconnected by the broker: {reason_code}"
            self._connected = False
            self._cond.notify_all()

    def _on_publish(self, _c, _u, mid, reason_code, _p) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self._acks[mid] = (int(reason_code.value), str(reason_code))
            self._cond.notify_all()

    def connect(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        try:
            self.client.connect(self.target.url.host, self.target.url.port, keepalive=30, clean_start=True,
                                properties=props)
        except (OSError, ssl.SSLError) as e:
            raise PublishError(f"cannot connect to {self.target.url.host}:{self.target.url.port}: {e}") from None
        self.client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connected or self._gone, self.timeout_s):
                raise PublishError("no CONNACK from the broker")
            if self._gone:
                raise PublishError(self._gone)

    def publish_all(self, messages: Sequence[tuple[str, bytes]], retain: bool = True) -> None:
        """Publish at QoS 1 and return once every PUBACK is in.

        Raises:
            PublishError: a refusal (reason code >= 0x80), a lost connection, or a PUBACK overdue.
        """
        mids = []
        for topic, payload in messages:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != 0:
                raise PublishError(f"{topic}: not sent (paho rc {info.rc}; {self._gone or 'connection lost'})")
            mids.append((info.mid, topic))
        deadline = time.monotonic() + self.timeout_s + 0.01 * len(messages)
        with self._cond:
            for mid, topic in mids:
                while mid not in self._acks:
                    left = deadline - time.monotonic()
                    if self._gone:
                        raise PublishError(f"{topic}: {self._gone}")
                    if left <= 0:
                        raise PublishError(f"{topic}: no PUBACK within {self.timeout_s:g} s")
                    self._cond.wait(left)
                code, reason = self._acks.pop(mid)
                if code >= 0x80:
                    raise PublishError(f"{topic}: refused by the broker: {reason} (0x{code:02x})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Published:
    built: Built
    cleared_chunks: int
    max_packet: int


def packet_limit(requested: int | None, broker: int | None) -> int:
    """Chunk packets fit the broker's Maximum Packet Size (CONNACK), what the docks accept, and the request;
    256 KiB when neither the request nor the broker says."""
    limits = [wire.DOCK_MAX_PACKET, *(x for x in (requested, broker) if x)]
    if not (requested or broker):
        limits.append(wire.DEFAULT_MAX_PACKET)
    return min(limits)


def publish(db: Any, sel: Selector, site: str, pub: Publisher, *, max_packet: int | None = None) -> Published:
    """Build, publish the chunks and then the manifest (retained), then clear older versions' chunks.

    A dock swaps in the new slice only when it holds all of it, so the order only matters for the broker's
    memory: the old chunks go once the new manifest is acknowledged.
    """
    limit = packet_limit(max_packet, pub.max_packet)
    b = build(db, sel, site, max_packet=limit)
    v = b.split.version
    pub.publish_all(b.split.chunks)
    pub.publish_all([(b.split.manifest_topic, b.split.manifest)])
    _record(db, site, v, "published")
    old = db.backend.query(
        "SELECT version, chunks FROM slice_versions WHERE site = ? AND version < ? AND state IN ('built', 'published')",
        (site, v))
    cleared = 0
    for version, chunks in old:
        pub.publish_all([(wire.slice_chunk_topic(site, version, i), b"") for i in range(int(chunks or 0))])
        cleared += int(chunks or 0)
        _record(db, site, version, "cleared")
    return Published(b, cleared, limit)


# -- answering a dock's question -----------------------------------------------------------------------------


def answer_query(db: Any, query: dict[str, Any], *, scorer: str, now: dt.datetime,
                 max_packet: int = wire.DEFAULT_MAX_PACKET, answers_topic: str = "") -> bytes:
    """The ``dock-answer/1`` to a checked ``dock-query/1``: the IMcbs' matchable eDoc rows, their MDF rows,
    mailer flags and recent containers (anywhere), in the slice's encoding. Targeted queries only (no full
    load). IMcbs that do not fit the packet are listed in ``truncated`` (the dock asks again)."""
    q = db.backend.query
    imcbs: list[str] = list(dict.fromkeys(query["imcbs"]))
    marks = ", ".join("?" * len(imcbs))
    first = _first_day(now)
    rows_by: dict[str, list[EdocRow]] = defaultdict(list)
    for r in q(f"SELECT {EDOC_COLUMNS} FROM edoc WHERE imcb IN ({marks})", imcbs):
        row = edoc_row(r)
        rows_by[row.imcb].append(row)
    kept = {i: k for i, rows in rows_by.items() if (k := matchable(rows, first))}
    mdf_memo: dict[tuple[str, str], MdfRow | None] = {}

    def mdf_for(r: EdocRow) -> MdfRow | None:
        key = (r.destination_zip[:5], r.entry_facility_type.upper())
        if key not in mdf_memo:
            found = {(z, e): MdfRow(z, e, f) for z, e, f in q(
                "SELECT destination_zip, entry_facility_type, facility FROM mdf WHERE entry_facility_type = ?"
                " AND destination_zip IN (?, ?)", (key[1], key[0], key[0][:3]))}
            mdf_memo[key] = rules.mdf_lookup(found, r.destination_zip, r.entry_facility_type)
        return mdf_memo[key]

    mailer_memo: dict[str, tuple[Mailer, list[str]] | None] = {}

    def mailer_of(mid: str) -> tuple[Mailer, list[str]] | None:
        if mid not in mailer_memo:
            found = q("SELECT crid, mids, seamless, continuous_mids FROM mailers WHERE ';' || mids || ';' LIKE ?",
                      (f"%;{mid};%",))
            mailer_memo[mid] = None
            if found:
                crid, mids, seamless, cont = found[0]
                mailer_memo[mid] = (Mailer(crid, bool(seamless), frozenset(filter(None, cont.split(";")))),
                                    list(filter(None, mids.split(";"))))
        return mailer_memo[mid]

    tz_of = {f: tz for f, tz in q("SELECT facility, tz FROM facilities")}
    since = (now - Window().scans - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    scans = [Scan(event_id=eid, device_id=dev, site=site, imcb=code, scanned_at=wire.parse_time(at, "scanned_at"),
                  appointment=appt, ticket=ticket, mode=mode, disposition=disp or "unverified", role=role or "container")
             for eid, dev, site, code, at, appt, ticket, mode, disp, role in q(
                 "SELECT event_id, device_id, site, barcode, scanned_at, appointment, ticket, mode, disposition, role"
                 f" FROM events WHERE type = 'scan' AND kind = 'imcb' AND barcode IN ({marks}) AND scanned_at >= ?",
                 [*imcbs, since])]
    changes: dict[str, str] = {}
    ids = [s.event_id for s in scans]
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        for ref_id, disp in q("SELECT ref_event_id, disposition FROM events WHERE type = 'disposition' AND"
                              f" ref_event_id IN ({', '.join('?' * len(part))}) ORDER BY device_id, seq", part):
            changes[ref_id] = disp
    containers = [c for c in rules.group_containers(scans, tz_of, changes)
                  if c.first.scanned_at >= now - Window().scans]
    published = latest_published(db, query["site"])

    def render(answered: list[str]) -> bytes:
        rows = [r for i in answered for r in kept.get(i, [])]
        mailers: dict[str, tuple[Mailer, list[str]]] = {}
        for i in answered:
            m = mailer_of(rules.mid_of(i))
            if m is not None:
                mailers[m[0].crid] = m
        mdf = [m for r in rows if (m := mdf_for(r)) is not None]
        return wire.make_answer(
            device_id=query["device_id"], site=query["site"], query_id=query["query_id"],
            answered_at=wire.rfc3339(now), scorer=scorer, imcbs=answered, edoc=rows, mailers=mailers.values(),
            mdf=mdf, containers=[c for c in containers if c.imcb in set(answered)],
            unknown=[i for i in answered if i not in kept], truncated=imcbs[len(answered):],
            slice_version=published)

    n = len(imcbs)
    while True:
        payload = render(imcbs[:n])
        if wire.packet_size(answers_topic, payload) <= max_packet or n == 0:
            return payload
        n //= 2


def _summary(b: Built) -> str:
    s = b.split
    return (f"{b.data.site}: version {s.version}, {len(s.chunks)} chunk(s), {s.compressed_bytes} bytes compressed "
            f"({s.content_bytes} uncompressed), {len(b.data.edoc)} eDoc rows of {b.data.reasons['imcbs']} IMcbs "
            f"(MDF {b.data.reasons['mdf']}, scanned here {b.data.reasons['scanned_here']}, no MDF "
            f"{b.data.reasons['no_mdf_recent']}), {len(b.data.containers)} containers")

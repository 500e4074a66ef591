"""Reference slices for docks: selection at headquarters, the wire format, the dock's assembler and install, the
query/answer path, and the whole thing over the real broker with the production ACL.

The central check (``test_the_dock_judges_like_headquarters``): containers scanned after a slice was built are
judged with the same scorer.rules functions twice, once with headquarters' full reference and every scan, once
with nothing but the slice: every verdict agrees.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from scorer import rules
from scorer import slices as hq
from scorer.db import ScorerDB
from scorer.reference import read_csv, read_text
from scorer.rules import Container, EdocRow, Scan
from scorer.scorecard import load_reference, load_scans
from sync import slices as wire
from sync.schema import validate, validate_message
from tests.conftest import ROOT, AgentProcess
from tests.mqtt_fixtures import DOCKS, Broker, ScorerProcess, broker_dir, dock_config, status_json, wait_until

UTC = dt.UTC
AS_OF = dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SAMPLES = ROOT / "config" / "samples"
EDOC_HEADER = ("imcb,submitter_crid,owner_crid,statement_id,statement_status,finalized_at,uploaded_at,mailing_date,"
               "einduction,destination_zip,entry_facility_type,entry_discount,mail_class,zone_claimed,postage,"
               "postage_if_none,postage_by_level,postage_by_zone")

# IMcbs of the test database (MID 123456 = CRID 1000001, 234567 = 1000002, 345678 = 1000003 continuous,
# 456789 = 1000009).
I_MDF = "99M123456000000900001"        # MDF -> NDC-X, mailed 2 days ago: expected
I_MDF_OLD = "99M123456000000900002"    # MDF -> NDC-X, mailed 60 days ago: not
I_ELSEWHERE = "99M123456000000900003"  # MDF -> SCF-Y, never scanned at NDC-X: not (a dock asks)
I_SCANNED = "99M123456000000900004"    # MDF -> SCF-Y, but scanned at NDC-X 9 days ago: expected
I_NOMDF = "99M234567000000900005"      # no MDF row, mailed yesterday: expected everywhere
I_NOMDF_OLD = "99M234567000000900006"  # no MDF row, mailed 20 days ago: not
I_MULTI = "99M123456000000900007"      # three statements: the oldest can no longer match
I_OVERRIDE = "99M123456000000900008"   # 5-digit MDF row sends 19002 to SCF-Y: not
I_OTHER_MAILER = "99M456789000000900009"
I_PER = "99M123456000000900010"        # Periodicals claiming zone 0 where it is 1
I_EST = "99M123456000000900011"        # statement in EST: undocumented
I_UPD = "99M123456000000900012"        # statement not finalised: not paid at the dock
I_EPD = "99M123456000000900014"        # claims DDU, NDC-X offers DNDC and DSCF
I_CONT_UNKNOWN = "99M345678000000900013"  # in no eDoc, continuous MID: pending
I_UNKNOWN = "99M123456000000999999"       # in no eDoc: undocumented


def day(n: int) -> str:
    return (AS_OF.date() + dt.timedelta(days=n)).isoformat()


def edoc_line(imcb: str, statement: str, mailing: str, dest: str, eft: str, disc: str, *, status: str = "FIN",
              cls: str = "MKT", zone: str = "", crid: str = "1000001") -> str:
    fin = f"{mailing}T08:00:00Z" if status in ("FIN", "FPP") else ""
    return (f"{imcb},{crid},{crid},{statement},{status},{fin},{mailing}T07:00:00Z,{mailing},Y,{dest},{eft},{disc},"
            f"{cls},{zone},100.00,120.00,,")


EXTRA_EDOC = [
    edoc_line(I_MDF, "T-1", day(-2), "19001", "DNDC", "DNDC"),
    edoc_line(I_MDF_OLD, "T-2", day(-60), "19005", "DNDC", "DNDC"),
    edoc_line(I_ELSEWHERE, "T-3", day(-3), "60601", "DSCF", "DSCF"),
    edoc_line(I_SCANNED, "T-4", day(-10), "60601", "DSCF", "DSCF"),
    edoc_line(I_NOMDF, "T-5", day(-1), "30301", "DNDC", "NONE", crid="1000002"),
    edoc_line(I_NOMDF_OLD, "T-6", day(-20), "30301", "DNDC", "NONE", crid="1000002"),
    edoc_line(I_MULTI, "T-M1", day(-50), "19001", "DNDC", "DNDC"),
    edoc_line(I_MULTI, "T-M2", day(-5), "19001", "DNDC", "DNDC"),
    edoc_line(I_MULTI, "T-M3", day(3), "19001", "DNDC", "DNDC"),
    edoc_line(I_OVERRIDE, "T-8", day(-2), "19002", "DNDC", "DNDC"),
    edoc_line(I_OTHER_MAILER, "T-9", day(-2), "60601", "DSCF", "DSCF", crid="1000009"),
    edoc_line(I_PER, "T-10", day(-2), "19101", "DSCF", "DSCF", cls="PER", zone="0"),
    edoc_line(I_EST, "T-11", day(-1), "19001", "DNDC", "DNDC", status="EST"),
    edoc_line(I_UPD, "T-12", day(-1), "19001", "DNDC", "DNDC", status="UPD"),
    edoc_line(I_EPD, "T-14", day(-2), "19101", "DSCF", "DDU"),
]


def scan_event(imcb: str, at: dt.datetime, *, site: str = "NDC-X", device: str = "dock-01",
               appointment: str | None = None, seq: int = 0) -> dict[str, Any]:
    eid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{site}/{device}/{imcb}/{at.isoformat()}"))  # same in every DB
    return {"schema": "dock-scan/1", "type": "scan", "event_id": eid, "device_id": device,
            "site": site, "seq": seq, "boot": 1, "scanned_at": wire.rfc3339(at), "clock_synced": True,
            "scanner": "door1", "mode": "normal", "barcode": imcb, "kind": "imcb", "symbology": None,
            "fields": {}, "ticket": None, "appointment": appointment, "disposition": "unverified", "reason": "r"}


def make_db(url: Path | str) -> ScorerDB:
    """The shipped samples, plus the rows above, an MDF override, a mailer, a zone and the scan history."""
    db = ScorerDB.open(str(url))
    for kind in ("facilities", "mailers", "mdf", "zones", "edoc"):
        db.import_reference(kind, read_csv(kind, SAMPLES / f"{kind}.csv").rows)
    db.import_reference("edoc", read_text("edoc", EDOC_HEADER + "\n" + "\n".join(EXTRA_EDOC) + "\n").rows)
    db.import_reference("mdf", read_text("mdf", "destination_zip,entry_facility_type,facility\n"
                                                "19002,DNDC,SCF-Y\n").rows)
    db.import_reference("mailers", read_text("mailers", "crid,mids,seamless,continuous_mids\n"
                                                        "1000009,456789,N,\n").rows)
    db.import_reference("zones", read_text("zones", "origin_zip3,destination_zip3,zone\n190,191,1\n").rows)
    h = dt.timedelta(hours=1)
    rejected = scan_event(I_EPD, AS_OF - 72 * h, seq=5)
    history = [
        scan_event(I_SCANNED, AS_OF - 9 * 24 * h, seq=1),
        scan_event(I_SCANNED, AS_OF - 8 * 24 * h, site="SCF-Y", device="dock-03", seq=1),
        scan_event(I_MDF, AS_OF - 50 * 24 * h, seq=2),                   # outside the 46 days
        scan_event(I_MULTI, AS_OF - 30 * h, appointment="A-1", seq=3),
        scan_event(I_MULTI, AS_OF - 29 * h, appointment="A-1", seq=4),   # the same container
        rejected,
    ]
    db.store_events(history, wire.rfc3339(AS_OF), historical=True)
    db.store_events([{"schema": "dock-disposition/1", "type": "disposition",
                      "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "reject-" + rejected["event_id"])),
                      "device_id": "dock-01", "site": "NDC-X", "seq": 6, "boot": 1,
                      "scanned_at": wire.rfc3339(AS_OF - 71 * h), "mode": "normal",
                      "ref_event_id": rejected["event_id"], "disposition": "reject"}], wire.rfc3339(AS_OF), True)
    return db


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = make_db(tmp_path / "scorer.db")
    yield d
    d.close()


def ready_of(split: wire.Split, messages: list[tuple[str, bytes]] | None = None,
             asm: wire.Assembler | None = None) -> tuple[wire.Assembler, list[wire.Ready]]:
    asm = asm or wire.Assembler(split.site)
    got = [r for t, p in (messages if messages is not None else all_messages(split)) if (r := asm.offer(t, p))]
    return asm, got


def all_messages(split: wire.Split) -> list[tuple[str, bytes]]:
    return [(split.manifest_topic, split.manifest), *split.chunks]


def built_slice(db: ScorerDB, site: str = "NDC-X", max_packet: int = wire.DEFAULT_MAX_PACKET) -> hq.Built:
    return hq.build(db, hq.selector(db, AS_OF), site, max_packet=max_packet, state="file")


def synthetic_split(version: int, rows: int = 600, max_packet: int = 2048, seed: int = 1) -> wire.Split:
    """A slice of ``rows`` random eDoc rows (big enough for many chunks)."""
    rnd = random.Random(seed)
    fac = rules.Facility("NDC-X", "190", "America/New_York", frozenset({"DNDC", "DSCF"}))
    edoc = [EdocRow(imcb=f"99M123456{rnd.randrange(10**12):012d}", submitter_crid="1000001", owner_crid="1000001",
                    statement_id=f"S-{rnd.randrange(10**6)}", statement_status="FIN",
                    finalized_at=AS_OF - dt.timedelta(seconds=rnd.randrange(10**6)),
                    uploaded_at=AS_OF - dt.timedelta(seconds=rnd.randrange(10**6)),
                    mailing_date=AS_OF.date() - dt.timedelta(days=rnd.randrange(40)), einduction=True,
                    destination_zip=f"190{rnd.randrange(100):02d}", entry_facility_type="DNDC",
                    entry_discount="DNDC", mail_class="MKT", zone_claimed=None, postage=wire.NOT_CARRIED,
                    postage_if_none=wire.NOT_CARRIED) for _ in range(rows)]
    content = wire.make_content(site="NDC-X", version=version, built_at=AS_OF, as_of=AS_OF, window={},
                                facility=fac, zones=[], mdf=[rules.MdfRow("190", "DNDC", "NDC-X")], mailers=[],
                                edoc=edoc, containers=[])
    return wire.split_slice(content, site="NDC-X", version=version, built_at=AS_OF, max_packet=max_packet)


# -- selection -------------------------------------------------------------------------------------------------


def test_selection_takes_what_the_rules_need_and_nothing_else(db: ScorerDB) -> None:
    data = hq.selector(db, AS_OF).select("NDC-X")
    imcbs = {r.imcb for r in data.edoc}
    assert {I_MDF, I_SCANNED, I_NOMDF, I_MULTI, I_PER, I_EST, I_UPD, I_EPD} <= imcbs
    assert not imcbs & {I_MDF_OLD, I_ELSEWHERE, I_NOMDF_OLD, I_OVERRIDE, I_OTHER_MAILER}
    # Only the statements match_edoc can still pick: T-M1 is beaten by T-M2 for any scan from now on.
    assert sorted(r.statement_id for r in data.edoc if r.imcb == I_MULTI) == ["T-M2", "T-M3"]
    assert data.reasons["mdf"] == 9 and data.reasons["scanned_here"] == 2 and data.reasons["no_mdf_recent"] == 1
    # MDF: rows pointing here, the 5-digit override under 190/DNDC, and what each taken row resolves to.
    mdf = {(m.destination_zip, m.entry_facility_type): m.facility for m in data.mdf}
    assert mdf == {("190", "DNDC"): "NDC-X", ("191", "DNDC"): "NDC-X", ("191", "DSCF"): "NDC-X", ("19002", "DNDC"): "SCF-Y",
                   ("606", "DSCF"): "SCF-Y"}
    # Mailers: those of the taken IMcbs and every continuous one; not the unrelated one.
    assert sorted(m.crid for m, _ in data.mailers) == ["1000001", "1000002", "1000003"]
    assert data.facility.entry_levels == {"DNDC", "DSCF"}
    assert sorted(k for k, _ in data.zones) == [("190", "190"), ("190", "191"), ("190", "606")]
    # Containers: the 46 days at NDC-X (the rejected one dropped, the 50-day-old one out), and the taken
    # IMcbs' containers elsewhere (for cross-facility duplicates).
    got = sorted((c.site, c.imcb, len(c.scans)) for c in data.containers)
    assert got == [("NDC-X", I_SCANNED, 1), ("NDC-X", I_MULTI, 2), ("SCF-Y", I_SCANNED, 1)]
    # The other facility gets its own.
    other = {r.imcb for r in hq.selector(db, AS_OF).select("SCF-Y").edoc}
    assert {I_ELSEWHERE, I_SCANNED, I_OVERRIDE, I_OTHER_MAILER, I_NOMDF} <= other and I_MDF not in other
    with pytest.raises(hq.SliceBuildError, match="not in the facilities table"):
        hq.selector(db, AS_OF).select("NOPE")


def test_serialisation_is_deterministic_and_versions_increase(db: ScorerDB) -> None:
    sel = hq.selector(db, AS_OF)
    a = sel.select("NDC-X").content(7, AS_OF)
    b = hq.selector(db, AS_OF).select("NDC-X").content(7, AS_OF)
    assert a == b
    obj = json.loads(a)
    validate("slice", obj)
    assert obj["edoc"]["columns"] == list(wire.EDOC_COLUMNS) and "postage" not in a.decode()
    v1 = built_slice(db).split.version
    v2 = built_slice(db).split.version
    assert v2 == v1 + 1 and v1 >= int(time.time()) - 60
    s1 = wire.split_slice(a, site="NDC-X", version=7, built_at=AS_OF, max_packet=4096)
    s2 = wire.split_slice(a, site="NDC-X", version=7, built_at=AS_OF, max_packet=4096)
    assert s1 == s2


def test_selection_answers_and_versions_agree_on_postgresql(tmp_path: Path, pg_url_factory: Any) -> None:
    lite, pg = make_db(tmp_path / "scorer.db"), make_db(pg_url_factory())
    try:
        assert (hq.selector(pg, AS_OF).select("NDC-X").content(7, AS_OF)
                == hq.selector(lite, AS_OF).select("NDC-X").content(7, AS_OF))
        query = wire.read_query(wire.make_query("dock-01", "NDC-X", [I_ELSEWHERE, I_SCANNED, I_UNKNOWN],
                                                wire.rfc3339(AS_OF), None)[1])
        assert hq.answer_query(pg, query, scorer="hq1", now=AS_OF) == hq.answer_query(lite, query, scorer="hq1",
                                                                                      now=AS_OF)
        v1 = built_slice(pg).split.version
        assert hq.reserve_version(pg, "NDC-X", AS_OF) == v1 + 1
    finally:
        lite.close()
        pg.close()


# -- the dock judges like headquarters -------------------------------------------------------------------------


def judge(ref: Any, site: str, c: Container, originals: list[Container], as_of: dt.datetime) -> dict[str, Any]:
    """Everything the dock decides at scan time, with scorer.rules only."""
    row = rules.match_edoc(ref.edoc.get(c.imcb, ()), c.local_date)
    continuous = c.mid in ref.continuous
    out: dict[str, Any] = {"undocumented": rules.undocumented(row, continuous=continuous,
                                                              scanned_at=c.first.scanned_at, as_of=as_of)}
    if out["undocumented"] != "ok":
        return out
    assert row is not None
    fac = ref.facilities.get(site)
    mdf = rules.mdf_lookup(ref.mdf, row.destination_zip, row.entry_facility_type)
    out.update(statement=row.statement_id, paid_at_dock=rules.payment_confirmed_at_dock(row, c.first.scanned_at),
               misshipped=rules.misshipped_error(row, site, mdf), mdf=mdf and mdf.facility,
               entry_point=rules.entry_point_error(row, fac),
               zone=rules.zone_error(row, ref.zones.get((fac.zip3, row.destination_zip[:3]))),
               crid=ref.mid_crid.get(c.mid), seamless=ref.mailers[row.submitter_crid].seamless)
    same = [o for o in originals if o.imcb == c.imcb and o.first.scanned_at < c.first.scanned_at
            and (m := rules.match_edoc(ref.edoc.get(o.imcb, ()), o.local_date)) is not None
            and m.statement_id == row.statement_id]
    original = min(same, key=lambda o: (o.first.scanned_at, o.first.event_id)) if same else None
    out["duplicate"] = original is not None and rules.duplicate_error(c, original, row)
    return out


NEW_SCANS = [I_MDF, I_SCANNED, I_NOMDF, I_MULTI, I_PER, I_EST, I_UPD, I_EPD, I_CONT_UNKNOWN, I_UNKNOWN]


def new_containers(site: str = "NDC-X") -> list[Container]:
    scans = [Scan(str(uuid.uuid4()), "dock-01", site, imcb, AS_OF + dt.timedelta(hours=1, minutes=i))
             for i, imcb in enumerate(NEW_SCANS)]
    return rules.group_containers(scans, {site: "America/New_York"})


def test_the_dock_judges_like_headquarters(tmp_path: Path, db: ScorerDB) -> None:
    b = built_slice(db, max_packet=1024)
    assert len(b.split.chunks) > 1
    state = tmp_path / "state"
    state.mkdir()
    _, ready = ready_of(b.split)
    wire.install(state, ready[0])
    dock = wire.load_slice(state)
    assert dock is not None and dock.version == b.split.version
    ref = load_reference(db)
    scans, changes = load_scans(db, AS_OF - dt.timedelta(days=400), AS_OF + dt.timedelta(days=1))
    hq_containers = rules.group_containers(scans, {f: x.tz for f, x in ref.facilities.items()}, changes)
    dock_originals = [c for group in dock.containers.values() for c in group]
    as_of = AS_OF + dt.timedelta(hours=2)
    verdicts = {}
    for c in new_containers():
        at_hq = judge(ref, "NDC-X", c, hq_containers, as_of)
        at_dock = judge(dock, "NDC-X", c, dock_originals, as_of)
        assert at_dock == at_hq, c.imcb
        verdicts[c.imcb] = at_dock
    assert verdicts[I_MDF] == {"undocumented": "ok", "statement": "T-1", "paid_at_dock": True, "misshipped": False,
                               "mdf": "NDC-X", "entry_point": False, "zone": False, "crid": "1000001",
                               "seamless": False, "duplicate": False}
    assert verdicts[I_SCANNED]["misshipped"] and verdicts[I_SCANNED]["duplicate"]
    assert verdicts[I_MULTI]["duplicate"] and verdicts[I_MULTI]["statement"] == "T-M2"
    assert verdicts[I_PER]["zone"] and verdicts[I_EPD]["entry_point"]
    assert not verdicts[I_UPD]["paid_at_dock"]
    assert verdicts[I_EST]["undocumented"] == "error" and verdicts[I_UNKNOWN]["undocumented"] == "error"
    assert verdicts[I_CONT_UNKNOWN]["undocumented"] == "pending"
    assert verdicts[I_NOMDF]["mdf"] is None and not verdicts[I_NOMDF]["misshipped"]
    # What the slice does not know, headquarters answers, and the merged view judges as headquarters does.
    c = rules.group_containers([Scan("e-x", "dock-01", "NDC-X", I_ELSEWHERE, AS_OF + dt.timedelta(hours=1))],
                               {"NDC-X": "America/New_York"})[0]
    assert judge(dock, "NDC-X", c, dock_originals, as_of)["undocumented"] == "error"  # not in the slice
    query_id, query = wire.make_query("dock-01", "NDC-X", [I_ELSEWHERE, I_UNKNOWN], wire.rfc3339(AS_OF),
                                      dock.version)
    payload = hq.answer_query(db, wire.read_query(query), scorer="hq1", now=AS_OF)
    validate_message(json.loads(payload))
    answer = wire.read_answer(payload, "dock-01")
    assert answer.query_id == query_id and answer.unknown == (I_UNKNOWN,) and answer.truncated == ()
    merged = dock.merged(answer)
    assert judge(merged, "NDC-X", c, dock_originals, as_of) == judge(ref, "NDC-X", c, hq_containers, as_of)
    assert judge(merged, "NDC-X", c, dock_originals, as_of)["misshipped"] is True


def test_an_answer_too_big_for_a_packet_lists_the_rest_as_truncated(db: ScorerDB) -> None:
    _qid, query = wire.make_query("dock-01", "NDC-X", [I_MDF, I_MULTI, I_SCANNED, I_EPD], wire.rfc3339(AS_OF), None)
    payload = hq.answer_query(db, wire.read_query(query), scorer="hq1", now=AS_OF, max_packet=1500,
                              answers_topic="docks/NDC-X/dock-01/answers")
    answer = wire.read_answer(payload, "dock-01")
    assert wire.packet_size("docks/NDC-X/dock-01/answers", payload) <= 1500
    assert answer.truncated and set(answer.imcbs) | set(answer.truncated) == {I_MDF, I_MULTI, I_SCANNED, I_EPD}
    with pytest.raises(wire.BadMessage, match="this dock is 'dock-02'") as e:
        wire.read_answer(payload, "dock-02")
    assert e.value.kind == "other_device"


# -- chunks, assembly, install ---------------------------------------------------------------------------------


def test_every_chunk_fits_the_packet_size_and_a_tiny_limit_is_refused() -> None:
    for limit, rows in ((1024, 60), (2048, 600), (65536, 600)):
        split = synthetic_split(1, rows=rows, max_packet=limit)
        sizes = [wire.packet_size(t, p) for t, p in all_messages(split)]
        assert max(sizes) <= limit, (limit, max(sizes))
        for _t, p in split.chunks:
            validate_message(json.loads(p))
        validate_message(json.loads(split.manifest))
    assert len(synthetic_split(1, max_packet=2048).chunks) > 5
    with pytest.raises(ValueError, match="too small"):
        synthetic_split(1, max_packet=300)
    with pytest.raises(ValueError, match="manifest: .* exceed the maximum packet size 1024"):
        synthetic_split(1, rows=600, max_packet=1024)  # 30 chunks: their manifest does not fit 1 KiB


def test_shuffled_duplicated_chunks_install_exactly_once(tmp_path: Path) -> None:
    split = synthetic_split(5)
    messages = all_messages(split) * 2 + split.chunks[:3]
    random.Random(7).shuffle(messages)
    asm, ready = ready_of(split, messages)
    assert len(ready) == 1 and ready[0].manifest.version == 5
    assert asm.seen["repeat"] > 0 and not asm.rejected
    s = wire.install(tmp_path, ready[0])
    asm.installed_ok(5)
    loaded = wire.load_slice(tmp_path)
    assert loaded is not None and loaded.version == 5 and loaded.counts() == s.counts()
    assert loaded.content_sha256 == split.content_sha256
    assert not list(tmp_path.glob("*.tmp"))
    # Everything of version 5 again (a reconnect re-delivers retained messages): ignored from the topic alone.
    assert ready_of(split, messages, asm)[1] == [] and asm.seen["not_newer"] >= len(messages)


def test_one_chunk_missing_installs_nothing(tmp_path: Path) -> None:
    split = synthetic_split(5)
    messages = [m for m in all_messages(split) if not m[0].endswith("/2")]
    asm, ready = ready_of(split, messages)
    assert ready == [] and not (tmp_path / wire.SLICE_FILE).exists()
    assert asm.progress() == [{"version": 5, "chunks": len(split.chunks) - 1, "of": len(split.chunks),
                               "manifest": True}]
    # The missing one arrives: complete.
    assert asm.offer(*next(m for m in all_messages(split) if m[0].endswith("/2"))) is not None


def corrupt_chunk(payload: bytes, *, keep_sha: bool) -> bytes:
    obj = json.loads(payload)
    data = bytearray(wire.base64.b64decode(obj["data"]))
    data[len(data) // 2] ^= 0xFF
    obj["data"] = wire.base64.b64encode(bytes(data)).decode()
    if not keep_sha:
        obj["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    return json.dumps(obj).encode()


def test_corrupted_chunks_are_rejected_with_a_reason_and_good_copies_still_complete(tmp_path: Path) -> None:
    split = synthetic_split(5)
    topic, good = split.chunks[1]
    asm = wire.Assembler("NDC-X")
    assert asm.offer(topic, corrupt_chunk(good, keep_sha=True)) is None
    assert asm.rejected["corrupt_chunk"] == 1 and "SHA-256 mismatch" in (asm.last_problem or "")
    # Self-consistent but not what the manifest says (it arrives before the manifest, and after it).
    assert asm.offer(topic, corrupt_chunk(good, keep_sha=False)) is None
    assert asm.offer(split.manifest_topic, split.manifest) is None
    assert asm.rejected["chunk_mismatch"] == 1
    assert asm.offer(topic, corrupt_chunk(good, keep_sha=False)) is None
    assert asm.rejected["chunk_mismatch"] == 2 and "differs from the manifest" in (asm.last_problem or "")
    ready = [r for t, p in split.chunks if (r := asm.offer(t, p))]
    assert len(ready) == 1
    wire.install(tmp_path, ready[0])


def test_content_that_does_not_match_its_manifest_is_refused_and_the_old_slice_stays(tmp_path: Path) -> None:
    old = synthetic_split(4, seed=2)
    asm, ready = ready_of(old)
    wire.install(tmp_path, ready[0])
    asm.installed_ok(4)
    before = (tmp_path / wire.SLICE_FILE).read_bytes()
    new = synthetic_split(5)
    manifest = json.loads(new.manifest)
    manifest["content_sha256"] = "0" * 64  # chunks intact, the whole wrong
    ready = [r for t, p in [(new.manifest_topic, json.dumps(manifest).encode()), *new.chunks] if (r := asm.offer(t, p))]
    assert len(ready) == 1
    with pytest.raises(wire.SliceError, match="content SHA-256 differs") as e:
        wire.install(tmp_path, ready[0])
    assert e.value.kind == "corrupt"
    asm.install_failed(5, str(e.value))
    assert (tmp_path / wire.SLICE_FILE).read_bytes() == before
    assert wire.load_slice(tmp_path).version == 4  # type: ignore[union-attr]
    assert asm.rejected["install_failed"] == 1 and "content SHA-256" in (asm.last_problem or "")
    assert ready_of(new, None, asm)[1] == []  # a failed version is not retried
    # Decompression is bounded by the manifest's size: a stream longer than announced is refused.
    manifest = json.loads(new.manifest)
    manifest["content_bytes"] = 100
    m = wire.read_manifest(json.dumps(manifest).encode())
    with pytest.raises(wire.SliceError, match="not the 100 bytes"):
        wire.verify_blob(m, b"".join(wire.base64.b64decode(json.loads(p)["data"]) for _t, p in new.chunks))


def test_newer_versions_replace_older_ones_in_any_order(tmp_path: Path) -> None:
    v1, v2, v3 = synthetic_split(101, seed=1), synthetic_split(102, seed=2), synthetic_split(103, seed=3)
    asm = wire.Assembler("NDC-X")
    # v2's chunks arrive first (published before its manifest), interleaved with all of v1.
    messages = v2.chunks + all_messages(v1)
    random.Random(3).shuffle(messages)
    ready = [r for t, p in messages if (r := asm.offer(t, p))]
    assert [r.manifest.version for r in ready] == [101]
    wire.install(tmp_path, ready[0])
    asm.installed_ok(101)
    ready2 = asm.offer(v2.manifest_topic, v2.manifest)  # its chunks were held: complete at once
    assert ready2 is not None and ready2.manifest.version == 102
    wire.install(tmp_path, ready2)
    asm.installed_ok(102)
    assert wire.load_slice(tmp_path).version == 102  # type: ignore[union-attr]
    # Old messages afterwards, and the empty retained messages that clear v1's chunks: ignored.
    assert ready_of(v1, None, asm)[1] == []
    for t, _p in v1.chunks:
        assert asm.offer(t, b"") is None
    assert asm.seen["cleared"] == len(v1.chunks)
    # v3's manifest supersedes a v2-that-never-was: chunks of older versions are dropped.
    ready = ready_of(v3, None, asm)[1]
    assert [r.manifest.version for r in ready] == [103] and asm.pending == {}
    assert not asm.rejected


def test_garbage_on_slice_topics_is_counted_not_fatal() -> None:
    split = synthetic_split(5)
    asm = wire.Assembler("NDC-X")
    topic, chunk = split.chunks[0]
    bad = {
        "bad_manifest": (split.manifest_topic, b"\xff\xfe not json"),
        "other_site": (split.manifest_topic, split.manifest.replace(b'"NDC-X"', b'"SCF-Y"')),
        "bad_chunk": (topic, b'{"schema": "dock-slice-chunk/1"}'),
        "bad_json": (topic, b"[" * 100_000 + b"]" * 100_000),  # a nesting bomb: caught, not a crash
        "bad_topic": ("hq/sites/SCF-Y/slice/manifest", split.manifest),
    }
    for kind, (t, p) in bad.items():
        assert asm.offer(t, p) is None
        assert asm.rejected["bad_chunk" if kind == "bad_json" else kind] >= 1, kind
        if kind == "bad_json":
            assert "not JSON" in (asm.last_problem or "")
    assert asm.offer(split.chunks[1][0], chunk) is None  # chunk 0 on chunk 1's topic
    assert asm.rejected["bad_chunk"] == 3
    huge = json.loads(split.manifest)
    huge["content_bytes"] = wire.MAX_CONTENT + 1
    assert asm.offer(split.manifest_topic, json.dumps(huge).encode()) is None and asm.rejected["too_big"] == 1
    assert len(ready_of(split, None, asm)[1]) == 1  # and the genuine slice still goes in


def test_a_damaged_file_is_reported_and_stale_is_24_hours(tmp_path: Path) -> None:
    split = synthetic_split(5)
    wire.install(tmp_path, ready_of(split)[1][0])
    path = tmp_path / wire.SLICE_FILE
    s = wire.load_slice(tmp_path)
    assert s is not None
    assert not s.stale(AS_OF + dt.timedelta(hours=23)) and s.stale(AS_OF + dt.timedelta(hours=25))
    assert s.age_s(AS_OF + dt.timedelta(hours=1)) == 3600
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(wire.SliceError):
        wire.load_slice(tmp_path)
    assert wire.read_installed_manifest(tmp_path).version == 5  # type: ignore[union-attr]
    path.write_bytes(b"no manifest line")
    with pytest.raises(wire.SliceError):
        wire.read_installed_manifest(tmp_path)


def test_slice_service_installs_in_a_worker_and_reports_health(tmp_path: Path) -> None:
    posted: list[object] = []
    got = threading.Event()

    def post(item: object) -> None:
        posted.append(item)
        got.set()

    now_ns = int((AS_OF + dt.timedelta(hours=2)).timestamp() * 1e9)
    svc = wire.SliceService("NDC-X", tmp_path, post=post, wall_ns=lambda: now_ns)
    told: list[wire.Slice | None] = []
    svc.listener = told.append
    assert svc.health()["state"] == "none"
    split = synthetic_split(5)
    for t, p in all_messages(split):
        svc.offer(t, p)
    assert got.wait(10)
    svc.done(posted.pop())  # type: ignore[arg-type]
    h = svc.health()
    assert h["version"] == 5 and h["state"] == "fresh" and h["age_s"] == 7200 and h["loaded"]
    assert h["counts"]["edoc_rows"] == 600
    assert [s.version for s in told if s] == [5]
    # A restart: the header gives the version at once; the full load runs in the worker.
    got.clear()
    svc2 = wire.SliceService("NDC-X", tmp_path, post=post, wall_ns=lambda: now_ns + 23 * 3600 * 10**9)
    assert svc2.health()["version"] == 5 and svc2.health()["state"] == "stale"
    svc2.start()
    assert got.wait(10)
    svc2.done(posted.pop())  # type: ignore[arg-type]
    assert svc2.current is not None and svc2.current.version == 5


def test_build_cli_writes_files_a_dock_can_install(tmp_path: Path) -> None:
    dbpath = tmp_path / "scorer.db"
    for kind in ("facilities", "mailers", "mdf", "zones", "edoc"):
        r = scorer_cli("import", "--db", str(dbpath), kind, str(SAMPLES / f"{kind}.csv"))
        assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = scorer_cli("slice", "build", "--db", str(dbpath), "--site", "NDC-X", "--as-of", "2026-11-03T00:00:00Z",
                   "--out", str(out), "--max-packet", "1024")
    assert r.returncode == 0, r.stderr
    assert "NDC-X: version" in r.stdout and "3 eDoc rows" in r.stdout
    state = tmp_path / "state"
    state.mkdir()
    s = wire.install_files(state, out, "NDC-X")
    assert s.counts()["edoc_rows"] == 3 and wire.load_slice(state).version == s.version  # type: ignore[union-attr]
    with pytest.raises(wire.SliceError, match="newer"):
        wire.install_files(state, out, "NDC-X")  # the same version again
    r = scorer_cli("slice", "build", "--db", str(dbpath), "--site", "NOPE", "--out", str(out))
    assert r.returncode == 1 and "not in the facilities table" in r.stderr


def scorer_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dock-scorer"
    return subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)


# -- over the real broker --------------------------------------------------------------------------------------


class Client:
    """A raw MQTT 5 client with one identity (mutual TLS): records messages, SUBACK and PUBACK codes."""

    def __init__(self, broker: Broker, identity: str, client_id: str) -> None:
        d = broker.client_dir(identity)
        key = d / ("client.key" if identity == "scorer" else "mqtt-client.key")
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.acks: dict[int, int] = {}
        self.subacks: list[list[int]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.ca), certfile=str(d / "client.crt"), keyfile=str(key),
                            cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.mtls_port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def _on_publish(self, _c, _u, mid, rc, _p) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.acks[mid] = int(rc.value)
            self.cond.notify_all()

    def _on_subscribe(self, _c, _u, _mid, rcs, _p) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            self.subacks.append([int(r.value) for r in rcs])
            self.cond.notify_all()

    def subscribe(self, topic: str) -> list[int]:
        n = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.subacks) > n, 5)
            return self.subacks[n]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int | None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            self.cond.wait_for(lambda: info.mid in self.acks, 5)
            return self.acks.get(info.mid)

    def received(self, prefix: str) -> list[tuple[str, bytes, bool]]:
        with self.cond:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def big_db(path: Path, rows: int = 2500) -> None:
    """Samples plus ``rows`` eDoc rows routed to NDC-X (so the slice needs several chunks)."""
    db = make_db(path)
    rnd = random.Random(11)
    lines = [edoc_line(f"99M123456{rnd.randrange(10**12):012d}", f"B-{rnd.randrange(10**9)}",
                       day(-rnd.randrange(30)), f"190{rnd.randrange(100):02d}", "DNDC", "DNDC") for _ in range(rows)]
    db.import_reference("edoc", read_text("edoc", EDOC_HEADER + "\n" + "\n".join(lines) + "\n").rows)
    db.close()


def publish_cli(broker: Broker, dbpath: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    d = broker.client_dir("scorer")
    return scorer_cli("slice", "publish", "--db", str(dbpath), "--site", "NDC-X", "--broker", broker.mtls_url,
                      "--ca-file", str(broker.ca), "--cert-file", str(d / "client.crt"), "--key-file",
                      str(d / "client.key"), "--as-of", wire.rfc3339(AS_OF), *extra)


def test_publish_then_an_agent_installs_it_over_the_real_broker(tmp_path: Path) -> None:
    """`dock-scorer slice publish` -> Mosquitto (production template and ACL, 16 KiB packets) -> a running agent
    installs the slice; a second publish replaces it and clears the first one's chunks; a dock of another site
    cannot read it, and no dock can forge one."""
    root = broker_dir()
    limit = 16384
    broker = Broker(root, DOCKS, max_packet=limit)
    dbpath = tmp_path / "scorer.db"
    big_db(dbpath)
    state = tmp_path / "dock-01"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{tmp_path}/no-tty?name=door1"],
                         config=dock_config(tmp_path, broker, "dock-01", "NDC-X"))
    observer = Client(broker, "scorer", "observer")
    try:
        agent.wait_ready()
        assert wait_until(lambda: (status_json(state).get("sync") or {}).get("state") == "connected", 15)
        assert status_json(state)["sync"]["slice"]["state"] == "none"
        t0 = time.monotonic()
        r = publish_cli(broker, dbpath)
        assert r.returncode == 0, r.stderr
        assert f"chunks <= {limit} bytes" in r.stdout
        v1 = int(r.stdout.split("version ")[1].split(",")[0])
        chunks_v1 = int(r.stdout.split(", ")[1].split(" ")[0])
        assert chunks_v1 > 1, r.stdout
        sl = wait_until(lambda: ((status_json(state).get("sync") or {}).get("slice") or {}).get("version") == v1
                        and status_json(state)["sync"]["slice"], 20)
        assert sl, status_json(state).get("sync")
        installed_after = time.monotonic() - t0
        assert sl["state"] == "fresh" and sl["age_s"] < 60 and sl["loaded"] and not sl["ignored"]
        assert sl["counts"]["edoc_rows"] >= 2400
        s = wire.load_slice(state)
        assert s is not None and s.version == v1 and s.site == "NDC-X"
        # Every retained message the broker holds fits its packet limit and follows the schema.
        assert observer.subscribe("hq/sites/NDC-X/slice/#") == [1]
        assert wait_until(lambda: len(observer.received("hq/sites/NDC-X/slice/")) >= chunks_v1 + 1, 5)
        for topic, payload, retained in observer.received("hq/sites/NDC-X/slice/"):
            assert retained and wire.packet_size(topic, payload) <= limit
            validate_message(json.loads(payload))
        # A second publish: the agent swaps to it; the broker keeps only the new version's chunks.
        r = publish_cli(broker, dbpath)
        assert r.returncode == 0, r.stderr
        v2 = int(r.stdout.split("version ")[1].split(",")[0])
        assert v2 > v1 and f"{chunks_v1} old chunk(s) cleared" in r.stdout
        assert wait_until(lambda: status_json(state)["sync"]["slice"]["version"] == v2, 20), status_json(state)
        assert wire.load_slice(state).version == v2  # type: ignore[union-attr]
        late = Client(broker, "scorer", "late-observer")
        try:
            late.subscribe("hq/sites/NDC-X/slice/#")
            time.sleep(1.0)
            versions = {t.split("/")[4] for t, p, _r in late.received("hq/sites/NDC-X/slice/") if p}
            assert versions == {"manifest", str(v2)}, versions
        finally:
            late.close()
        # ACL: the same site's other dock reads the manifest; a dock of SCF-Y gets nothing from NDC-X.
        same = Client(broker, "dock-02", "acl-dock-02")
        other = Client(broker, "dock-03", "acl-dock-03")
        try:
            same.subscribe("hq/sites/NDC-X/slice/manifest")
            other.subscribe("hq/sites/NDC-X/#")
            other.subscribe("hq/sites/+/slice/manifest")
            assert wait_until(lambda: same.received("hq/sites/NDC-X/slice/manifest"), 5)
            time.sleep(1.0)
            assert other.received("hq/") == []
            # No dock may publish a slice (only headquarters writes hq/#).
            assert same.publish("hq/sites/NDC-X/slice/manifest", b"{}", retain=True) == 0x87
        finally:
            same.close()
            other.close()
        assert status_json(state)["sync"]["slice"]["version"] == v2
    finally:
        assert agent.stop() == 0
        observer.close()
        broker.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(f"slice v1 installed {installed_after:.2f} s after publish started")


def test_a_dock_asks_headquarters_about_an_unknown_container(tmp_path: Path, broker: Broker) -> None:
    """dock-query/1 on the dock's own topic -> the running scorer -> dock-answer/1 on its answers topic; the
    ACL keeps other docks from asking on its behalf or reading its answers."""
    dbpath = tmp_path / "scorer.db"
    make_db(dbpath).close()
    scorer = ScorerProcess(tmp_path, broker, dbpath)
    dock = Client(broker, "dock-02", "query-dock-02")
    other = Client(broker, "dock-03", "query-dock-03")
    try:
        assert dock.subscribe("docks/NDC-X/dock-02/answers") == [1]
        other.subscribe("docks/NDC-X/dock-02/answers")
        query_id, query = wire.make_query("dock-02", "NDC-X", [I_ELSEWHERE, I_UNKNOWN], wire.rfc3339(AS_OF), None)
        # Another site's dock cannot ask as dock-02.
        assert other.publish("docks/NDC-X/dock-02/query", query) == 0x87
        ok = wait_until(lambda: dock.publish("docks/NDC-X/dock-02/query", query) == 0 and
                        wait_until(lambda: dock.received("docks/NDC-X/dock-02/answers"), 3), 20)
        assert ok, (tmp_path / "scorer-hq1.log").read_text()[-2000:]
        payload = dock.received("docks/NDC-X/dock-02/answers")[0][1]
        validate_message(json.loads(payload))
        answer = wire.read_answer(payload, "dock-02")
        assert answer.query_id == query_id and answer.unknown == (I_UNKNOWN,)
        assert [r.statement_id for r in answer.edoc[I_ELSEWHERE]] == ["T-3"]
        assert answer.mdf[("606", "DSCF")].facility == "SCF-Y" and "1000001" in answer.mailers
        time.sleep(0.5)
        assert other.received("docks/") == []
    finally:
        dock.close()
        other.close()
        scorer.stop()

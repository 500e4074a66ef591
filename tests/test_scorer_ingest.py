"""Headquarters ingest without a broker: the file path shares the MQTT path's checks and dedup.

The tests that store events run on both backends (``db_url_factory``: SQLite and a real PostgreSQL server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scorer.db import ScorerDB
from scorer.ingest import Ingestor
from tests.conftest import ROOT


def event(seq: int, device: str = "dock-01", site: str = "NDC-X", **over: object) -> dict:  # type: ignore[type-arg]
    ev = {"schema": "dock-scan/1", "type": "scan", "event_id": f"019aa7a2-1c3e-7b5e-9f4c-{seq:012x}",
          "device_id": device, "site": site, "seq": seq, "boot": 1, "scanned_at": "2026-11-22T01:08:06.123Z",
          "clock_synced": True, "scanner": "door1", "mode": "normal", "barcode": f"99M123456{seq:012d}",
          "kind": "imcb", "symbology": None, "fields": {"mid": "123456"}, "ticket": None, "appointment": None,
          "disposition": "unverified", "reason": "r"}
    ev.update(over)
    return ev


def batch(events: list[dict], device: str = "dock-01", site: str = "NDC-X") -> dict:  # type: ignore[type-arg]
    return {"schema": "dock-batch/1", "device_id": device, "site": site, "boot": 1,
            "sent_at": "2026-11-22T01:08:07.000Z", "historical": True, "events": events}


def scorer(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dock-scorer"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_ingest_file_dedups_and_keeps_bad_lines_aside(tmp_path: Path,
                                                       db_url_factory: Callable[[], str]) -> None:
    lines = [
        json.dumps(batch([event(1), event(2)])),
        json.dumps(event(2)),                                   # a duplicate, alone
        json.dumps(batch([event(3), event(1)])),                # one new, one duplicate
        "{not json",
        json.dumps(batch([event(4, device="dock-02")])),        # event of another dock inside dock-01's batch
        json.dumps(event(5, boot=0)),                           # schema: boot >= 1
        json.dumps({"schema": "dock-ack/1", "device_id": "dock-01", "event_ids": [event(1)["event_id"]],
                    "acked_at": "2026-11-22T01:08:07.000Z", "scorer": "x"}),  # not an event
        "",
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    db = db_url_factory()
    res = scorer("ingest", "--db", db, str(path))
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith("7 lines: 3 new events, 2 duplicates, 4 rejected")
    listed = [json.loads(x) for x in scorer("scans", "--db", db, "--json").stdout.splitlines()]
    assert [e["seq"] for e in listed] == [1, 2, 3]
    conn = ScorerDB.open(db)
    try:
        assert conn.count("rejected_messages") == 4
        reasons = [r[0] for r in conn.backend.query("SELECT reason FROM rejected_messages ORDER BY id")]
        assert reasons[0].startswith("bad_json") and reasons[1].startswith("mixed_devices")
        assert reasons[2].startswith("bad_schema") and reasons[3].startswith("wrong_kind")
        assert all(r for r in conn.backend.query("SELECT source FROM rejected_messages")), "source names file:line"
    finally:
        conn.close()
    again = scorer("ingest", "--db", db, str(path))
    assert "0 new events, 5 duplicates" in again.stdout


def test_topic_must_match_the_batch(db_url_factory: Callable[[], str]) -> None:
    db = ScorerDB.open(db_url_factory())
    ing = Ingestor(db, time.time_ns)
    payload = json.dumps(batch([event(1)])).encode()
    assert ing.check(payload, "t", "docks/NDC-X/dock-01/events") is not None
    assert ing.check(payload, "t", "docks/NDC-X/dock-02/events") is None
    assert ing.check(payload, "t", "docks/NDC-X/dock-01/status") is None
    assert ing.check(b"\xff\xfe", "t") is None
    assert ing.check(b"[" * 100 + b"]" * 100, "t") is None
    assert dict(ing.stats.rejected) == {"wrong_topic": 2, "not_utf8": 1, "too_deep": 1}
    db.close()


def test_provision_writes_identity_acl_and_snippet(tmp_path: Path) -> None:
    root = tmp_path / "broker"
    assert scorer("broker", "init", "--dir", str(root)).returncode == 0
    res = scorer("provision", "dock-07", "--site", "NDC-X", "--dir", str(root), "--broker-url", "mqtts://hq:8883")
    assert res.returncode == 0, res.stderr
    d = root / "clients" / "dock-07"
    assert {p.name for p in d.iterdir()} >= {"ca.crt", "client.crt", "mqtt-client.key", "mqtt-password",
                                             "site-sync.toml"}
    acl = (root / "acl").read_text()
    assert "user dock-07\ntopic write docks/NDC-X/dock-07/events" in acl
    assert "topic read docks/NDC-X/dock-07/acks" in acl and "topic read hq/sites/NDC-X/#" in acl
    assert "dock-07:" in (root / "passwd").read_text()
    out = subprocess.run(["openssl", "x509", "-in", str(d / "client.crt"), "-noout", "-subject"],
                         capture_output=True, text=True)
    assert "CN = dock-07" in out.stdout or "CN=dock-07" in out.stdout
    assert 'broker = "mqtts://hq:8883"' in res.stdout and 'device_id = "dock-07"' in res.stdout
    # The snippet is a valid [sync] configuration for the agent.
    from agent.settings import parse_settings
    import tomllib

    parse_settings(tomllib.loads((d / "site-sync.toml").read_text()))
    bad = scorer("provision", "scorer", "--site", "NDC-X", "--dir", str(root))
    assert bad.returncode == 1 and "reserved" in bad.stderr

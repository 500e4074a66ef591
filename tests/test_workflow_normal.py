"""A normal-mode load through a real pty scanner, judged against a reference slice built by the scorer and
installed on the dock: each verdict reason, from the scorer's own rule functions."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from sync.slices import install_files
from tests.conftest import ATTENTION, GOOD, ROOT, AgentProcess, PtyScanner, run_cli

SAMPLES = ROOT / "config" / "samples"
EXTRA_EDOC = """\
99M123456000000123459,1000001,1000001,S-103,FIN,2026-11-01T12:00:00Z,2026-11-01T11:00:00Z,2026-11-02,Y,19103,DNDC,DDU,MKT,,200.00,220.00,,
99M123456000000123460,1000001,1000001,S-104,FIN,2026-11-01T12:00:00Z,2026-11-01T11:00:00Z,2026-11-02,Y,19103,DNDC,DNDC,MKT,,200.00,220.00,,
"""


def scorer(*args: str) -> str:
    exe = str(Path(sys.executable).parent / "dock-scorer")
    res = subprocess.run([exe, *args], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout


def event(i: int, code: str, at: dt.datetime, appointment: str) -> str:
    return json.dumps({"schema": "dock-scan/1", "type": "scan", "event_id": f"019aa7a2-1c3e-7b5e-9f4c-{i:012x}",
                       "device_id": "dock-hq", "site": "NDC-X", "seq": i, "boot": 1,
                       "scanned_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                       "clock_synced": True, "scanner": "door9", "mode": "normal", "barcode": code, "kind": "imcb",
                       "symbology": None, "fields": {}, "ticket": None, "appointment": appointment,
                       "disposition": "accept", "reason": ""})


def test_each_normal_mode_verdict_reason_through_a_pty(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    db = tmp_path / "scorer.db"
    edoc = tmp_path / "edoc.csv"
    edoc.write_text((SAMPLES / "edoc.csv").read_text() + EXTRA_EDOC)
    for kind in ("mailers", "facilities", "mdf", "zones"):
        scorer("import", "--db", str(db), kind, str(SAMPLES / f"{kind}.csv"))
    scorer("import", "--db", str(db), "edoc", str(edoc))
    now = dt.datetime.now(dt.timezone.utc)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        event(1, "99M123456000000123460", now - dt.timedelta(hours=10), "A0"),  # an earlier container here
        event(2, "99M123456000000123457", now - dt.timedelta(days=3), "A0"),    # seen here: in the slice
    ]) + "\n")
    scorer("ingest", "--db", str(db), str(events))
    out = tmp_path / "slices"
    scorer("slice", "build", "--db", str(db), "--site", "NDC-X", "--out", str(out))
    state = tmp_path / "state"
    state.mkdir()
    built = next(p for p in out.rglob("topics.json")).parent
    installed = install_files(state, built, "NDC-X")
    assert installed.site == "NDC-X"
    config = tmp_path / "site.toml"
    config.write_text('[site]\ndevice_id = "dock-n"\nfacility = "NDC-X"\n[store]\nwarn_free_mb = 1\n'
                      "floor_free_mb = 0.5\nballast_mb = 0\n")
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{pty_scanner.path}?good=06&bad=15&attention=07"
                                           "&name=door1"], config=config)
    cases = [
        ("99M123456000000123456", GOOD, "accept", "documented and paid"),
        ("99M345678000000000001", GOOD, "accept", "continuous MID"),
        ("99M123456000000999999", ATTENTION, "pending", "undocumented: IMcb in no eDoc"),
        ("99M234567000000000001", ATTENTION, "pending", "undocumented: statement S-200 is EST"),
        ("99M123456000000123458", ATTENTION, "pending", "payment not finalised 2 hours before the scan"),
        ("99M123456000000123457", ATTENTION, "pending", "misshipped: the Mail Direction File sends it to SCF-Y"),
        ("99M123456000000123460", ATTENTION, "pending", "duplicate: already received"),
        ("99M123456000000123459", ATTENTION, "pending", "entry discount DDU not available here"),
    ]
    try:
        agent.wait_ready()
        pty_scanner.write(b"DOCK:LOAD:777\r")
        assert pty_scanner.read_feedback(5) == GOOD
        for code, signal, _, _ in cases:
            pty_scanner.write(code.encode() + b"\r")
            assert pty_scanner.read_feedback(5) == signal, code
        # Resolve the undocumented one against a PS 8125, reject the misshipped one.
        for line, signal in [(b"DOCK:FORM8125:F-1", GOOD), (b"99M123456000000999999", GOOD), (b"DOCK:ENDFORM", GOOD),
                             (b"DOCK:REJECT:MISSHIPPED", GOOD), (b"99M123456000000123457", GOOD),
                             (b"DOCK:CLOSE", ATTENTION)]:
            pty_scanner.write(line + b"\r")
            assert pty_scanner.read_feedback(5) == signal, line
    finally:
        assert agent.stop() == 0
    scans = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
    by_code = {}
    for s in scans:
        by_code.setdefault(s["barcode"], []).append(s)
    for code, _, disposition, reason in cases:
        first = by_code[code][0]
        assert first["verdict"] == disposition and reason in first["reason"], (code, first["reason"])
        assert first["appointment"] == "777"
    rows = json.loads(run_cli("export", "reconciliation", "--format", "json", "--state-dir", str(state)).stdout)
    final = {r["imcb"]: (r["disposition"], r["form_8125"]) for r in rows}
    assert final["99M123456000000999999"] == ("accept", "F-1")
    assert final["99M123456000000123457"] == ("reject", None)
    assert final["99M123456000000123456"] == ("accept", None)

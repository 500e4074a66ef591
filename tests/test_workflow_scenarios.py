"""Dock scenarios driven through a real pty scanner with command barcodes, checked by the reconciliation export."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ATTENTION, BAD, GOOD, AgentProcess, PtyScanner, run_cli


def config(tmp: Path) -> Path:
    pin = tmp / "lead-pin"
    pin.write_text("4242\n")
    path = tmp / "site.toml"
    path.write_text(f'[site]\ndevice_id = "dock-07"\nfacility = "NDC-X"\n\n'
                    f"[store]\nwarn_free_mb = 1\nfloor_free_mb = 0.5\nballast_mb = 0\n\n"
                    f'[workflow]\nlead_pin_file = "{pin}"\n')
    return path


class Door:
    def __init__(self, scanner: PtyScanner) -> None:
        self.scanner = scanner

    def scan(self, text: str) -> bytes:
        self.scanner.write(text.encode() + b"\r")
        return self.scanner.read_feedback(5.0)


def start(tmp: Path, state: Path, scanner: PtyScanner) -> AgentProcess:
    agent = AgentProcess(tmp, state, ["--scanner", f"serial://{scanner.path}?good=06&bad=15&attention=07&name=door1"],
                         config=config(tmp))
    agent.wait_ready()
    return agent


def export(state: Path, *extra: str) -> list[dict]:  # type: ignore[type-arg]
    res = run_cli("export", "reconciliation", "--format", "json", "--state-dir", str(state), *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def imcb(n: int) -> str:
    return f"99M123456{n:012d}"


def test_national_outage_mixed_load_with_one_placard_never_collected(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    state = tmp_path / "state"
    agent = start(tmp_path, state, pty_scanner)
    door = Door(pty_scanner)
    try:
        assert door.scan("DOCK:OUTAGE:NATIONAL") == BAD          # the lead's PIN first
        assert door.scan("DOCK:LEAD:1111") == BAD
        assert door.scan("DOCK:LEAD:4242") == GOOD
        assert door.scan("DOCK:OUTAGE:NATIONAL") == GOOD
        assert door.scan("DOCK:OPERATOR:E77") == GOOD
        assert door.scan("DOCK:LOAD:5550001") == GOOD
        assert door.scan("DOCK:FORM8125:PV-1") == GOOD           # the PVDS part of the mixed load
        assert door.scan(imcb(1)) == GOOD
        assert door.scan(imcb(2)) == GOOD
        assert door.scan("DOCK:ENDFORM") == GOOD
        assert door.scan(imcb(3)) == ATTENTION                   # COLLECT PLACARD
        assert door.scan(imcb(4)) == ATTENTION
        assert door.scan("DOCK:PLACARD") == GOOD
        assert door.scan(imcb(3)) == GOOD                        # the pulled placard of container 3
        assert door.scan("DOCK:PLACARD") == GOOD
        assert door.scan(imcb(9)) == ATTENTION                   # not a container of this load
        assert door.scan("DOCK:CLOSE") == ATTENTION              # 1 container still needs a placard
        status = json.loads(run_cli("status", "--json", "--state-dir", str(state)).stdout)
        assert status["mode"] == "national_outage"
    finally:
        assert agent.stop() == 0
    rows = export(state)
    got = [(r["imcb"], r["disposition"], r["form_8125"], r["placard_collected"], r["released_at"] is not None,
            r["mode"], r["appointment"]) for r in rows]
    assert got == [
        (imcb(1), "accept", "PV-1", False, True, "national_outage", "5550001"),
        (imcb(2), "accept", "PV-1", False, True, "national_outage", "5550001"),
        (imcb(3), "accept", None, True, True, "national_outage", "5550001"),
        (imcb(4), "accept", None, False, False, "national_outage", "5550001"),
    ]
    assert all(r["arrival_at"] == r["scanned_at"] for r in rows)
    loads = json.loads(run_cli("export", "loads", "--state-dir", str(state)).stdout)
    assert loads[0]["forms_8125"] == ["PV-1"] and loads[0]["placards_retained"] == [imcb(3)]
    assert loads[0]["summary"]["placards_missing"] == 1 and loads[0]["operator"] == "E77"
    csv_text = run_cli("export", "reconciliation", "--state-dir", str(state)).stdout
    assert csv_text.splitlines()[0].startswith("load_id,scanner,appointment,ticket,imcb,event_id,scanned_at,")
    # The outage is known by its declaration and filters the export.
    scans = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
    assert not any("4242" in s["raw"] or "4242" in s["barcode"] for s in scans)  # the PIN is never stored


def test_restart_in_the_middle_of_a_load_keeps_the_load_and_the_open_8125(tmp_path: Path,
                                                                           pty_scanner: PtyScanner) -> None:
    state = tmp_path / "state"
    agent = start(tmp_path, state, pty_scanner)
    door = Door(pty_scanner)
    try:
        assert door.scan("DOCK:LOAD:777") == GOOD
        assert door.scan("DOCK:FORM8125:F-77") == GOOD
        assert door.scan(imcb(11)) == GOOD
    finally:
        agent.kill()
        agent.close()
    agent = start(tmp_path, state, pty_scanner)
    try:
        assert door.scan(imcb(12)) == GOOD                       # still reconciled to F-77 after the restart
        assert door.scan("DOCK:ENDFORM") == GOOD
        assert door.scan("DOCK:CLOSE") == GOOD
    finally:
        assert agent.stop() == 0
    rows = export(state)
    assert [(r["imcb"], r["form_8125"], r["appointment"]) for r in rows] == [
        (imcb(11), "F-77", "777"), (imcb(12), "F-77", "777")]


def test_local_outage_under_a_ticket_and_cli_commands(tmp_path: Path, pty_scanner: PtyScanner) -> None:
    state = tmp_path / "state"
    agent = start(tmp_path, state, pty_scanner)
    door = Door(pty_scanner)
    try:
        assert door.scan("DOCK:TICKET:HD-1") == BAD              # no open load yet
        assert door.scan("DOCK:LOAD:888") == GOOD
        assert door.scan("DOCK:TICKET:HD-1") == GOOD
        assert door.scan(imcb(21)) == ATTENTION                  # contingency: collect a placard
        # The same commands from the shell, through the control socket.
        res = run_cli("placard", "--state-dir", str(state))
        assert res.returncode == 0, res.stderr
        assert door.scan(imcb(21)) == GOOD
        assert run_cli("void", "--state-dir", str(state)).returncode == 0  # voids the scanner's last scan
        res = run_cli("load", "close", "--state-dir", str(state), "--json")
        body = json.loads(res.stdout)
        assert body["display"] == "LOAD CLOSED" and "0 containers scanned" in body["reason"]
        res = run_cli("mailing-log", "add", "--state-dir", str(state), "--permit-holder", "ACME MAIL", "--pieces",
                      "12000", "--approx", "--postage", "3456.78", "--job", "J-1", "--einduction", "Y",
                      "--arrival", "2099-01-01T00:00:00Z")
        assert res.returncode == 0, res.stderr
        res = run_cli("mailing-log", "complete", "1", "--state-dir", str(state), "--entry-date", "2026-11-23",
                      "--initials", "jd", "--transaction", "T-900", "--finalized")
        assert res.returncode == 0, res.stderr
        bad = run_cli("mailing-log", "add", "--state-dir", str(state), "--permit-holder", "X", "--pieces", "1",
                      "--postage", "lots", "--einduction", "N")
        assert bad.returncode == 1 and "total_postage" in bad.stderr
    finally:
        assert agent.stop() == 0
    rows = export(state)
    assert [(r["imcb"], r["ticket"], r["voided"], r["placard_collected"]) for r in rows] == [
        (imcb(21), "HD-1", True, True)]
    log = json.loads(run_cli("export", "mailing-log", "--format", "json", "--state-dir", str(state)).stdout)
    assert len(log) == 1
    entry = log[0]
    assert entry["permit_holder"] == "ACME MAIL" and entry["pieces_approx"] is True
    assert entry["arrival_at"] < "2099" and entry["initials"] == "JD" and entry["finalized"] is True
    assert run_cli("placard", "--state-dir", str(state)).returncode == 3  # the agent is not running

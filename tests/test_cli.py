"""The command line as scripts use it: parse, run on a replay file, scans, status."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import EXAMPLE_CONFIG, ROOT, run_cli

SHIFT = ROOT / "config" / "samples" / "dock-shift.txt"


def test_parse_json_one_object_per_input_and_exit_status() -> None:
    res = run_cli("parse", "--json", "99M123456000000123456", "99M12345600000012345", "DOCK:VOID")
    assert res.returncode == 1  # one input is invalid
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["input"] for o in objs] == ["99M123456000000123456", "99M12345600000012345", "DOCK:VOID"]
    assert objs[0] == {"input": "99M123456000000123456", "ok": True, "kind": "imcb",
                       "normalized": "99M123456000000123456",
                       "fields": {"mid": "123456", "serial": "000000123456", "mid_length": "6"}}
    assert objs[1]["ok"] is False and objs[1]["reason"] == "20 characters, an IMcb has 21"
    assert objs[2]["kind"] == "command" and objs[2]["fields"]["command"] == "VOID"
    assert run_cli("parse", "99M123456000000123456").returncode == 0


def test_parse_reads_stdin() -> None:
    res = run_cli("parse", "--json", input="]C199M900012345000987654\r\n\n9300112345600000000019\n")
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0
    assert [(o["kind"], o["normalized"]) for o in objs] == [
        ("imcb", "99M900012345000987654"), ("impb", "9300112345600000000019")]
    assert objs[0]["symbology"] == "gs1-128"


def test_run_on_the_sample_shift_prints_verdicts_and_a_summary(tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = run_cli("run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state),
                  "--scanner", f"replay://{SHIFT}?speed=0")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any("99M123456000000123456" in line and "UNVERIFIED" in line for line in lines)
    assert any("20 characters, an IMcb has 21" in line and "INVALID" in line for line in lines)
    assert any("tray/sack label" in line for line in lines)
    assert "summary: 21 reads, 17 stored, 4 unusable, 0 not stored" in res.stdout
    scans = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
    seqs = [s["seq"] for s in scans]
    assert len(scans) == 17 and seqs == sorted(set(seqs)) and seqs[0] == 1
    assert len({s["event_id"] for s in scans}) == 17
    # The load the shift opened and closed are records sharing the seq space (operator, load_open, load_close).
    import sqlite3

    conn = sqlite3.connect(state / "scans.db")
    records = [r[0] for r in conn.execute("SELECT type FROM records ORDER BY seq")]
    record_seqs = [r[0] for r in conn.execute("SELECT seq FROM records")]
    conn.close()
    assert records == ["operator", "load_open", "load_close"]
    assert sorted(seqs + record_seqs) == list(range(1, 21))
    # A second run continues the sequence and counts a new boot.
    run_cli("run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state), "--scanner", f"replay://{SHIFT}?speed=0")
    scans = [json.loads(x) for x in run_cli("scans", "--json", "--state-dir", str(state)).stdout.splitlines()]
    seqs2 = [s["seq"] for s in scans]
    assert len(scans) == 34 and seqs2 == sorted(set(seqs2)) and seqs2[17] == 21 and {s["boot"] for s in scans} == {1, 2}
    newest = run_cli("scans", "--json", "--limit", "2", "--state-dir", str(state)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in newest] == seqs2[-2:]


def test_run_refuses_a_bad_scanner_uri_and_a_bad_config(tmp_path: Path) -> None:
    res = run_cli("run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(tmp_path), "--scanner", "usb:///x")
    assert res.returncode == 2 and "unknown scheme 'usb'" in res.stderr
    res = run_cli("run", "--config", str(tmp_path / "none.toml"), "--state-dir", str(tmp_path))
    assert res.returncode == 2 and "cannot read configuration" in res.stderr


def test_read_only_commands_without_a_database(tmp_path: Path) -> None:
    res = run_cli("scans", "--state-dir", str(tmp_path))
    assert res.returncode == 1 and "no scan database" in res.stderr
    res = run_cli("status", "--json", "--state-dir", str(tmp_path))
    body = json.loads(res.stdout)
    assert res.returncode == 3 and body["state"] == "not running" and body["totals"]["scans"] == 0


def test_status_text_is_readable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_cli("run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state), "--scanner", f"replay://{SHIFT}?speed=0")
    text = run_cli("status", "--state-dir", str(state)).stdout
    assert "state:     NOT RUNNING" in text
    assert "scans:     17 stored, 17 not yet delivered" in text and "unusable:  4 reads" in text


def test_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    import subprocess
    import time

    from tests.conftest import agent_cmd

    state = tmp_path / "state"
    first = subprocess.Popen([*agent_cmd(), "run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state),
                              "--scanner", "replay:-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if (state / "status.json").exists():
                break
            time.sleep(0.05)
        second = run_cli("run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(state), "--scanner", "replay:-",
                         input="")
        assert second.returncode == 2 and "another dock-agent" in second.stderr
    finally:
        first.communicate(b"99M123456000000123456\n", timeout=20)
    assert first.returncode == 0

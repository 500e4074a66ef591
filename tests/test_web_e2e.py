"""What people see, in a real headless Chromium (Debian's, driven by Playwright): the dock screen, its PIN-guarded
actions, the headquarters scorecard page; plus /metrics through a Prometheus parser. Screenshots go to
artifacts/ (kept by CI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BAD, GOOD, ROOT, AgentProcess, PtyScanner, run_cli
from tests.mqtt_fixtures import free_port, wait_port

ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; scripts/setup installs it")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def dock_config(tmp: Path) -> Path:
    pin = tmp / "lead-pin"
    pin.write_text("2468\n")
    path = tmp / "site.toml"
    path.write_text('[site]\ndevice_id = "dock-web"\nfacility = "NDC-X"\n\n'
                    "[store]\nwarn_free_mb = 1\nfloor_free_mb = 0.5\nballast_mb = 0\n\n"
                    f'[workflow]\nlead_pin_file = "{pin}"\n')
    return path


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def test_dock_screen_live_verdicts_outage_banner_and_pin(tmp_path: Path, pty_scanner: PtyScanner, browser) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    state = tmp_path / "state"
    agent = AgentProcess(tmp_path, state, ["--scanner", f"serial://{pty_scanner.path}?good=06&bad=15&attention=07&name=door1",
                                           "--http", f"127.0.0.1:{port}"], config=dock_config(tmp_path))
    url = f"http://127.0.0.1:{port}/"
    try:
        agent.wait_ready()
        wait_port("127.0.0.1", port)
        before = metrics(url)
        page = browser.new_page(viewport={"width": 800, "height": 480})  # a 7-inch screen
        page.goto(url)
        page.wait_for_selector("#display")
        t0 = time.monotonic()
        pty_scanner.write(b"99M123456000000000777\r")
        assert pty_scanner.read_feedback(5) == GOOD
        page.wait_for_function("document.querySelector('#barcode').textContent.includes('000000000777')", timeout=5000)
        shown_after = time.monotonic() - t0
        assert page.text_content("#display") == "UNVERIFIED"
        assert page.get_attribute("#verdict", "class") == "good"
        colour = page.eval_on_selector("#verdict", "e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(10, 125, 36)"  # green
        assert shown_after < 2.0, f"verdict shown {shown_after:.2f} s after the scan"
        page.screenshot(path=str(ARTIFACTS / "dock-screen-verdict.png"))
        pty_scanner.write(b"99M12345600000000077\r")
        assert pty_scanner.read_feedback(5) == BAD
        page.wait_for_function("document.querySelector('#verdict').className === 'bad'", timeout=5000)
        assert "20 characters" in page.text_content("#reason")
        # /metrics parses and moves as scans flow.
        after = metrics(url)
        assert after["dock_scans_total{scanner=door1}"] == before["dock_scans_total{scanner=door1}"] + 2
        assert after["dock_verdicts_total{verdict=unverified}"] == 1 and after["dock_verdicts_total{verdict=invalid}"] == 1
        assert after["dock_link_up"] == 0
        deadline = time.monotonic() + 6
        while metrics(url)["dock_backlog_rows"] < 1 and time.monotonic() < deadline:  # refreshed every 2 s
            time.sleep(0.2)
        assert metrics(url)["dock_backlog_rows"] >= 1
        # The PIN guards the dock-lead actions: a wrong PIN changes nothing.
        page.click("button[data-act=outage]")
        for d in "1111":
            page.click(f"#pad button:text-is('{d}')")
        page.click("#pad button[data-key=ok]")
        page.wait_for_function("document.querySelector('#msg').textContent.includes('wrong PIN')", timeout=5000)
        assert page.get_attribute("#banner", "class") == "normal"
        page.click("button[data-act=outage]")
        for d in "2468":
            page.click(f"#pad button:text-is('{d}')")
        page.click("#pad button[data-key=ok]")
        page.wait_for_function("document.querySelector('#banner').className === 'national_outage'", timeout=5000)
        assert "NATIONAL OUTAGE" in page.text_content("#banner")
        assert page.is_visible("#banner")
        page.screenshot(path=str(ARTIFACTS / "dock-screen-national-outage.png"))
        # The all-clear from the box's shell turns the banner to post-outage.
        assert run_cli("outage", "allclear", "--state-dir", str(state)).returncode == 0
        page.wait_for_function("document.querySelector('#banner').className === 'post_outage'", timeout=5000)
        # A load opened from the screen shows on it, with what is missing.
        page.click("button[data-act=load_open]")
        for d in "2468":
            page.click(f"#pad button:text-is('{d}')")
        page.click("#pad button[data-key=ok]")
        for d in "555":
            page.click(f"#pad button:text-is('{d}')")
        page.click("#pad button[data-key=ok]")
        page.wait_for_function("document.querySelector('#doorlist').textContent.includes('appointment 555')",
                               timeout=5000)
        pty_scanner.write(b"99M123456000000000888\r")
        assert pty_scanner.read_feedback(5) == b"\x07"
        page.wait_for_function("document.querySelector('#doorlist').textContent.includes('still need a placard')",
                               timeout=5000)
        page.screenshot(path=str(ARTIFACTS / "dock-screen-load.png"))
        ready = urllib.request.urlopen(url + "readyz", timeout=5)
        assert ready.status == 200 and json.loads(ready.read())["link"] == "off"
        page.close()
    finally:
        assert agent.stop() == 0


def test_scorecard_page_matches_the_cli(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "scorer.db"
    exe = str(Path(sys.executable).parent / "dock-scorer")
    for kind in ("mailers", "facilities", "mdf", "zones", "edoc"):
        subprocess.run([exe, "import", "--db", str(db), kind, str(ROOT / "config" / "samples" / f"{kind}.csv")],
                       check=True, capture_output=True)
    events = tmp_path / "scans.jsonl"
    lines = []
    for i, (code, at, appt) in enumerate([
        ("99M123456000000123456", "2026-11-03T14:00:00.000Z", "A1"), ("99M123456000000123457", "2026-11-03T14:05:00.000Z", "A1"),
        ("99M123456000000123458", "2026-11-03T14:06:00.000Z", "A1"), ("99M900012345000987654", "2026-11-03T14:07:00.000Z", "A1"),
        ("99M123456000000123456", "2026-11-04T14:00:00.000Z", "A2"), ("99M123456000000999999", "2026-11-04T14:01:00.000Z", "A2"),
    ], 1):
        lines.append(json.dumps({"schema": "dock-scan/1", "type": "scan", "event_id": f"019aa7a2-1c3e-7b5e-9f4c-{i:012x}",
                                 "device_id": "dock-01", "site": "NDC-X", "seq": i, "boot": 1, "scanned_at": at,
                                 "clock_synced": True, "scanner": "door1", "mode": "normal", "barcode": code,
                                 "kind": "imcb", "symbology": None, "fields": {}, "ticket": None, "appointment": appt,
                                 "disposition": "unverified", "reason": ""}))
    events.write_text("\n".join(lines) + "\n")
    subprocess.run([exe, "ingest", "--db", str(db), str(events)], check=True, capture_output=True)
    users = tmp_path / "users"
    subprocess.run([exe, "user", "add", "alice", "--users", str(users)], input="correct horse battery\n", text=True,
                   check=True, capture_output=True)
    port = free_port()
    web = subprocess.Popen([exe, "web", "--db", str(db), "--listen", f"127.0.0.1:{port}", "--users", str(users)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/?crid=1000001&month=2026-11")
        assert "/login" in page.url  # a login is required
        page.fill("input[name=user]", "alice")
        page.fill("input[name=password]", "wrong password")
        page.click("button[type=submit]")
        assert "failed=1" in page.url
        page.fill("input[name=user]", "alice")
        page.fill("input[name=password]", "correct horse battery")
        page.click("button[type=submit]")
        page.goto(f"http://127.0.0.1:{port}/?crid=1000001&month=2026-11&as_of=2026-12-01T00:00:00Z")
        page.wait_for_selector("svg[role=img]")
        page.screenshot(path=str(ARTIFACTS / "scorecard.png"), full_page=True)
        cli = json.loads(subprocess.run([exe, "scorecard", "--db", str(db), "--crid", "1000001", "--month", "2026-11",
                                         "--as-of", "2026-12-01T00:00:00Z", "--json"],
                                        check=True, capture_output=True, text=True).stdout)
        head = page.query_selector("h2[data-crid]")
        assert head is not None
        assert int(head.get_attribute("data-containers") or -1) == cli["containers"]
        assert int(head.get_attribute("data-pending") or -1) == cli["pending"]
        for rule in ("undocumented", "payment", "duplicate", "misshipped", "entry_point_discount", "zone"):
            row = page.query_selector(f"tr[data-rule={rule}]")
            assert row is not None
            assert int(row.get_attribute("data-errors") or -1) == cli[rule]["errors"]
            assert float(row.get_attribute("data-rate") or -1) == cli[rule]["rate"]
            assert int(row.get_attribute("data-assessed") or -1) == cli[rule]["assessed"]
            assert row.get_attribute("data-assessment") == f"{cli[rule]['assessment_usd']:.2f}"
        assert page.get_attribute("td[data-total]", "data-total") == f"{cli['assessment_usd']:.2f}"
        # Drill down to the errors of one rule, with their evidence.
        page.click("tr[data-rule=misshipped] a")
        page.wait_for_selector("tr[data-imcb]")
        assert len(page.query_selector_all("tr[data-imcb]")) == cli["misshipped"]["errors"]
        assert "facility" in page.text_content("pre")
        page.screenshot(path=str(ARTIFACTS / "scorecard-errors.png"), full_page=True)
        # A change made through the page is audited with the user.
        page.goto(f"http://127.0.0.1:{port}/docks")
        page.fill("input[name=ticket]", "HD-42")
        page.click("text=Mark resolved")
        page.screenshot(path=str(ARTIFACTS / "scorer-docks.png"), full_page=True)
        page.close()
    finally:
        web.terminate()
        web.wait(10)
    import sqlite3

    conn = sqlite3.connect(db)
    audit = conn.execute("SELECT actor, action, detail FROM audit ORDER BY id").fetchall()
    conn.close()
    assert ("web:alice", "ticket resolve", "HD-42") in audit and ("web:alice", "login", "") in audit

"""The all-clear and the 48-hour continuation, on an injected clock, through the real loop and store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from agent.barcode import Label, parse
from agent.clock import FakeClock
from agent.loop import Agent
from agent.settings import StoreSection
from agent.store import Store
from agent.workflow import Workflow
from drivers.base import RawScan

T0 = int(dt.datetime(2026, 11, 22, 6, 0, tzinfo=dt.timezone.utc).timestamp() * 1e9)


def make(tmp: Path) -> tuple[Agent, FakeClock]:
    clock = FakeClock(wall_ns=T0)
    store = Store(tmp, "dock-09", StoreSection(floor_free_mb=0, warn_free_mb=0, ballast_mb=0), clock)
    store.open()
    return Agent(store, [], clock, workflow=Workflow("NDC-X")), clock


def scan(agent: Agent, clock: FakeClock, text: str, scanner: str = "door1"):  # type: ignore[no-untyped-def]
    clock.advance(1)
    return agent.handle(RawScan(scanner, text.encode(), clock.monotonic_ns(), clock.wall_ns()))


def test_allclear_then_48_hours_of_contingency_then_normal(tmp_path: Path) -> None:
    agent, clock = make(tmp_path)
    assert agent.handle_control({"op": "outage", "kind": "outage", "by": "test"})["ok"]
    assert agent.mode == "national_outage"
    scan(agent, clock, "DOCK:LOAD:A1")
    o = scan(agent, clock, "99M123456000000000001")
    assert (o.verdict, o.display, o.signal) == ("accept", "COLLECT PLACARD", "attention")
    clock.advance(3600)
    assert agent.handle_control({"op": "outage", "kind": "allclear", "by": "test"})["ok"]
    assert agent.mode == "post_outage"
    clock.advance(47 * 3600)
    o = scan(agent, clock, "99M123456000000000002")
    assert o.display == "COLLECT PLACARD"  # still contingency acceptance, 47 h after the all-clear
    clock.advance(3600)
    assert agent.mode == "normal"
    o = scan(agent, clock, "99M123456000000000003")
    assert (o.verdict, o.display, o.signal) == ("unverified", "UNVERIFIED", "good")  # normal: no slice here
    conn = agent.store.conn
    assert conn is not None
    modes = [r for (r,) in conn.execute("SELECT mode FROM scans WHERE kind = 'imcb' ORDER BY seq")]
    assert modes == ["national_outage", "post_outage", "normal"]
    declarations = [json.loads(d)["declaration"] for (d,) in conn.execute(
        "SELECT data FROM records WHERE type = 'mode' ORDER BY seq")]
    assert declarations == ["outage", "allclear"]
    agent.store.close()


def test_mode_and_doors_survive_a_restart(tmp_path: Path) -> None:
    agent, clock = make(tmp_path)
    agent.handle_control({"op": "outage", "kind": "outage", "by": "test"})
    scan(agent, clock, "DOCK:LOAD:B2")
    scan(agent, clock, "DOCK:FORM8125:F-2")
    agent.store.close()
    store = Store(tmp_path, "dock-09", StoreSection(floor_free_mb=0, warn_free_mb=0, ballast_mb=0), clock)
    store.open()
    again = Agent(store, [], clock, workflow=Workflow("NDC-X"))
    assert again.mode == "national_outage"
    door = again.workflow.door("door1")
    assert (door.appointment, door.form) == ("B2", "F-2")
    o = scan(again, clock, "99M123456000000000004")
    assert o.display == "ACCEPT: 8125 F-2"
    store.close()


def test_control_requests_are_checked(tmp_path: Path) -> None:
    agent, _clock = make(tmp_path)
    assert agent.handle_control({"op": "fly"}) == {"ok": False, "error": "unknown op 'fly'"}
    assert not agent.handle_control({"op": "outage", "kind": "maybe"})["ok"]
    assert "unknown command" in agent.handle_control({"op": "command", "command": "JUMP"})["error"]
    r = agent.handle_control({"op": "mailing_log_add", "permit_holder": "", "total_pieces": 1,
                              "total_postage": "1", "einduction": "Y"})
    assert r == {"ok": False, "error": "permit_holder is required"}
    label = parse("DOCK:CLOSE")
    assert isinstance(label, Label)
    agent.store.close()

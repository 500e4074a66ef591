"""Persistence of the workflow: the SQL that a decision adds to its read's transaction, and the restore at start.

Everything here runs inside the store's single writer (agent.store.Store.commit_read); a restart rebuilds doors,
the mode declaration and the open loads' containers exactly as they were committed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from typing import Any

from agent.workflow import ContainerState, Decision, Declaration, Door, Workflow


def decision_sql(scanner: str, d: Decision) -> list[tuple[str, tuple[Any, ...]]]:
    """The state writes of one decision (the scan and records are written by the store itself)."""
    out: list[tuple[str, tuple[Any, ...]]] = []
    if d.door is not None:
        out.append(("INSERT OR REPLACE INTO workflow_state (key, value) VALUES (?, ?)",
                    (f"door:{scanner}", json.dumps(d.door.as_dict()))))
    if d.declaration is not None:
        decl = d.declaration
        out.append(("INSERT OR REPLACE INTO workflow_state (key, value) VALUES (?, ?)",
                    ("declaration", json.dumps({"kind": decl.kind, "at": decl.at.isoformat(), "by": decl.by,
                                                "source": decl.source, "outage_id": decl.outage_id}))))
    c = d.container
    if c is not None:
        out.append((
            "INSERT OR REPLACE INTO load_containers (load_id, imcb, event_id, scanned_at, disposition, form,"
            " needs_placard, placard_at, released_at, voided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (c.load_id, c.imcb, c.event_id, c.scanned_at, c.disposition, c.form, int(c.needs_placard),
             c.placard_at, c.released_at, int(c.voided)),
        ))
    for kind, data in d.records:
        if kind == "load_open":
            out.append(("INSERT OR REPLACE INTO loads (load_id, scanner, appointment, operator, opened_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (data["load_id"], scanner, data["appointment"], data.get("operator"), _now_from(data))))
        elif kind == "load_close":
            out.append(("UPDATE loads SET closed_at = ?, summary = ? WHERE load_id = ?",
                        (_now_from(data), json.dumps(data.get("summary", {})), data["load_id"])))
        elif kind == "ticket":
            out.append(("UPDATE loads SET ticket = ? WHERE load_id = ?", (data["ticket"], data["load_id"])))
    return out


def _now_from(data: dict[str, Any]) -> str:
    at = data.get("at")
    if at:
        return str(at)
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restore(conn: sqlite3.Connection, wf: Workflow) -> None:
    """Doors, the declaration and the containers of open loads, as last committed."""
    for key, value in conn.execute("SELECT key, value FROM workflow_state"):
        data = json.loads(value)
        if key.startswith("door:"):
            fields = {f.name for f in dataclasses.fields(Door)}
            wf.doors[key[5:]] = Door(**{k: v for k, v in data.items() if k in fields})
        elif key == "declaration":
            wf.declaration = Declaration(data["kind"], dt.datetime.fromisoformat(data["at"]), data["by"],
                                         data["source"], data.get("outage_id", ""))
        elif key == "resolved_tickets":
            wf.resolved_tickets = set(data)
    for row in conn.execute(
        "SELECT c.load_id, c.imcb, c.event_id, c.scanned_at, c.disposition, c.form, c.needs_placard, c.placard_at,"
        " c.released_at, c.voided FROM load_containers c JOIN loads l ON l.load_id = c.load_id"
        " WHERE l.closed_at IS NULL"
    ):
        load_id, imcb, event_id, scanned_at, disposition, form, needs, placard_at, released_at, voided = row
        wf.containers.setdefault(load_id, {})[imcb] = ContainerState(
            event_id, load_id, imcb, scanned_at, disposition, form, bool(needs), placard_at, released_at, bool(voided))

"""Read-only exports for restoration and reconciliation (seed 000 §3.5, §3.6, §8): the containers of every load
with their disposition, PS 8125, placard and release, and the Record of Mailings log. Safe while the agent runs.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from typing import Any

RECONCILIATION_COLUMNS = (
    "load_id", "scanner", "appointment", "ticket", "imcb", "event_id", "scanned_at", "disposition", "form_8125",
    "placard_collected", "placard_at", "released_at", "arrival_at", "mode", "voided",
)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outage_window(conn: sqlite3.Connection, outage: str, continuation_h: float = 48.0
                  ) -> tuple[str, str | None]:
    """(start, end) of the outage named ``outage`` (its id, or the time it was declared): from its declaration
    to its all-clear plus the contingency continuation; end None while it lasts.

    Raises:
        ValueError: no such outage was recorded here.
    """
    rows = [json.loads(d) for (d,) in conn.execute("SELECT data FROM records WHERE type = 'mode' ORDER BY seq")]
    start = None
    for i, r in enumerate(rows):
        if r.get("declaration") == "outage" and (r.get("outage_id") == outage or r.get("at") == outage):
            start = r["at"]
            for later in rows[i + 1:]:
                if later.get("declaration") == "allclear":
                    end = dt.datetime.fromisoformat(later["at"].replace("Z", "+00:00")) + dt.timedelta(
                        hours=continuation_h)
                    return start, end.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            return start, None
    known = sorted({r.get("outage_id") or r.get("at") for r in rows if r.get("declaration") == "outage"})
    raise ValueError(f"no outage {outage!r} recorded here; known: {', '.join(known) or 'none'}")


def reconciliation(conn: sqlite3.Connection, outage: str | None = None) -> list[dict[str, Any]]:
    """One row per container of every load (or of the loads scanned during ``outage``)."""
    sql = (
        "SELECT c.load_id, l.scanner, l.appointment, l.ticket, c.imcb, c.event_id, c.scanned_at, c.disposition,"
        " c.form, c.placard_at, c.released_at, s.mode, c.voided, s.scanned_at"
        " FROM load_containers c JOIN loads l ON l.load_id = c.load_id"
        " LEFT JOIN scans s ON s.event_id = c.event_id"
    )
    params: list[Any] = []
    if outage is not None:
        start, end = outage_window(conn, outage)
        sql += " WHERE c.scanned_at >= ?"
        params.append(start)
        if end is not None:
            sql += " AND c.scanned_at <= ?"
            params.append(end)
    sql += " ORDER BY l.opened_at, c.scanned_at, c.imcb"
    now = _now()
    out = []
    for (load_id, scanner, appt, ticket, imcb, event_id, scanned_at, disposition, form, placard_at, released_at,
         mode, voided, first_scan) in conn.execute(sql, params):
        arrival = min(first_scan or scanned_at, now)  # seed 000 §3.2.5: never later than now
        out.append({
            "load_id": load_id, "scanner": scanner, "appointment": appt, "ticket": ticket, "imcb": imcb,
            "event_id": event_id, "scanned_at": scanned_at, "disposition": disposition, "form_8125": form,
            "placard_collected": placard_at is not None, "placard_at": placard_at, "released_at": released_at,
            "arrival_at": arrival, "mode": mode or "normal", "voided": bool(voided),
        })
    return out


def loads(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Each load with the forms and placards to retain for reconciliation."""
    out = []
    for load_id, scanner, appt, ticket, operator, opened, closed, summary in conn.execute(
        "SELECT load_id, scanner, appointment, ticket, operator, opened_at, closed_at, summary FROM loads"
        " ORDER BY opened_at"
    ):
        forms = sorted({f for (f,) in conn.execute(
            "SELECT form FROM load_containers WHERE load_id = ? AND form IS NOT NULL AND voided = 0", (load_id,))})
        placards = [i for (i,) in conn.execute(
            "SELECT imcb FROM load_containers WHERE load_id = ? AND placard_at IS NOT NULL AND voided = 0"
            " ORDER BY placard_at", (load_id,))]
        out.append({"load_id": load_id, "scanner": scanner, "appointment": appt, "ticket": ticket,
                    "operator": operator, "opened_at": opened, "closed_at": closed,
                    "summary": json.loads(summary) if summary else None, "forms_8125": forms,
                    "placards_retained": placards})
    return out


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("Y" if v is True else "N" if v is False else "" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


MAILING_LOG_COLUMNS = ("id", "arrival_at", "permit_holder", "total_pieces", "pieces_approx", "total_postage",
                       "mailer_job_id", "einduction", "outage_id", "entry_date", "initials", "transaction_no",
                       "finalized", "entered_at")


def mailing_log(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {', '.join(MAILING_LOG_COLUMNS)} FROM mailing_log ORDER BY id").fetchall()
    out = []
    for r in rows:
        d = dict(zip(MAILING_LOG_COLUMNS, r, strict=True))
        d["pieces_approx"] = bool(d["pieces_approx"])
        d["einduction"] = "Y" if d["einduction"] else "N"
        d["finalized"] = bool(d["finalized"])
        out.append(d)
    return out

"""USPS Record of Mailings log (seed 000 §3, §3.3, §3.4): what acceptance records about each mailing during an
outage, and the items completed after restoration: (21) entry date, (22) initials, (23) transaction number,
(25) eDoc postage statement finalised. Entries are records, synced like scans; nothing here slows a scan.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from decimal import Decimal, InvalidOperation
from typing import Any

from agent.clock import parse_rfc3339

COLUMNS = ("id", "entered_at", "arrival_at", "permit_holder", "total_pieces", "pieces_approx", "total_postage",
           "mailer_job_id", "einduction", "outage_id", "entry_date", "initials", "transaction_no", "finalized")


def _time(text: str, what: str) -> str:
    return parse_rfc3339(text, what).isoformat(timespec="seconds").replace("+00:00", "Z")


def add_statement(body: dict[str, Any], now: str, declaration: Any) -> tuple[dict[str, Any], list[tuple[str, tuple[Any, ...]]]]:
    """A new log entry: permit holder, total pieces (exact or approximate), total postage, mailer job ID,
    eInduction Y/N, arrival time (never later than now).

    Raises:
        ValueError: naming the field that is missing or wrong.
    """
    holder = str(body.get("permit_holder") or "").strip()
    if not holder:
        raise ValueError("permit_holder is required")
    try:
        pieces = int(body.get("total_pieces"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("total_pieces must be a whole number") from None
    if pieces < 0:
        raise ValueError("total_pieces must not be negative")
    try:
        postage = Decimal(str(body.get("total_postage")))
    except InvalidOperation:
        raise ValueError("total_postage must be an amount such as 1234.56") from None
    if not postage.is_finite() or postage < 0:
        raise ValueError("total_postage must be a non-negative amount")
    job = str(body.get("mailer_job_id") or "").strip()
    einduction = str(body.get("einduction") or "").upper()
    if einduction not in ("Y", "N"):
        raise ValueError("einduction must be Y or N")
    arrival = _time(str(body.get("arrival_at") or now), "arrival_at")
    if arrival > now:
        arrival = now  # seed 000 §3.2.5: the adjusted check-in time can never be later than now
    outage = ""
    if declaration is not None:
        outage = declaration.outage_id or f"{declaration.source}-{declaration.at.isoformat(timespec='seconds')}"
    data = {"permit_holder": holder[:200], "total_pieces": pieces, "pieces_approx": bool(body.get("approx")),
            "total_postage": str(postage), "mailer_job_id": job[:64], "einduction": einduction,
            "arrival_at": arrival, "entered_at": now, "outage_id": outage}
    sql = ("INSERT INTO mailing_log (entered_at, arrival_at, permit_holder, total_pieces, pieces_approx,"
           " total_postage, mailer_job_id, einduction, outage_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    return data, [(sql, (now, arrival, data["permit_holder"], pieces, int(data["pieces_approx"]), str(postage),
                         data["mailer_job_id"], int(einduction == "Y"), outage))]


def complete_statement(body: dict[str, Any], conn: sqlite3.Connection | None
                       ) -> tuple[dict[str, Any], list[tuple[str, tuple[Any, ...]]]]:
    """After restoration: items (21) entry date, (22) initials, (23) transaction number, (25) finalised."""
    try:
        entry = int(body.get("id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("id must be the log entry's number") from None
    if conn is None or conn.execute("SELECT 1 FROM mailing_log WHERE id = ?", (entry,)).fetchone() is None:
        raise ValueError(f"no log entry {entry}")
    date = str(body.get("entry_date") or "")
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
        raise ValueError("entry_date (item 21) must be YYYY-MM-DD")
    initials = str(body.get("initials") or "").strip()
    if not re.match(r"^[A-Za-z]{1,4}$", initials):
        raise ValueError("initials (item 22) must be 1-4 letters")
    txn = str(body.get("transaction") or "").strip()
    if not txn:
        raise ValueError("transaction (item 23) is required")
    finalized = bool(body.get("finalized"))
    data = {"id": entry, "entry_date": date, "initials": initials.upper(), "transaction_no": txn[:64],
            "finalized": finalized}
    return data, [("UPDATE mailing_log SET entry_date = ?, initials = ?, transaction_no = ?, finalized = ?"
                   " WHERE id = ?", (date, initials.upper(), txn[:64], int(finalized), entry))]

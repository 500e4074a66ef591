"""The scorer's storage: events keyed by (device_id, event_id), stored once however often they arrive.

SQLite is the embedded default. The SQL is kept portable (``INSERT ... ON CONFLICT DO NOTHING``, no SQLite-only
types) and every statement goes through ``Backend``, so a PostgreSQL backend can be added beside it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS events (
        device_id    TEXT    NOT NULL,
        event_id     TEXT    NOT NULL,
        site         TEXT    NOT NULL,
        seq          BIGINT  NOT NULL,
        boot         INTEGER NOT NULL,
        type         TEXT    NOT NULL,
        scanned_at   TEXT    NOT NULL,
        barcode      TEXT,
        kind         TEXT,
        disposition  TEXT,
        mode         TEXT    NOT NULL,
        appointment  TEXT,
        ticket       TEXT,
        role         TEXT,
        ref_event_id TEXT,
        historical   INTEGER NOT NULL,
        body         TEXT    NOT NULL,
        received_at  TEXT    NOT NULL,
        PRIMARY KEY (device_id, event_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_by_device_seq ON events (device_id, seq)",
    "CREATE INDEX IF NOT EXISTS events_by_barcode ON events (barcode)",
    """
    CREATE TABLE IF NOT EXISTS edoc (
        imcb TEXT NOT NULL, statement_id TEXT NOT NULL, submitter_crid TEXT NOT NULL, owner_crid TEXT NOT NULL,
        statement_status TEXT NOT NULL, finalized_at TEXT, uploaded_at TEXT NOT NULL, mailing_date TEXT NOT NULL,
        einduction INTEGER NOT NULL, destination_zip TEXT NOT NULL, entry_facility_type TEXT NOT NULL,
        entry_discount TEXT NOT NULL, mail_class TEXT NOT NULL, zone_claimed INTEGER, postage TEXT NOT NULL,
        postage_if_none TEXT NOT NULL, postage_by_level TEXT NOT NULL, postage_by_zone TEXT NOT NULL,
        PRIMARY KEY (imcb, statement_id)
    )
    """,
    "CREATE INDEX IF NOT EXISTS edoc_by_crid_date ON edoc (submitter_crid, mailing_date)",
    """
    CREATE TABLE IF NOT EXISTS mailers (
        crid TEXT PRIMARY KEY, mids TEXT NOT NULL, seamless INTEGER NOT NULL, continuous_mids TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS facilities (
        facility TEXT PRIMARY KEY, zip3 TEXT NOT NULL, tz TEXT NOT NULL, entry_levels TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS mdf (
        destination_zip TEXT NOT NULL, entry_facility_type TEXT NOT NULL, facility TEXT NOT NULL,
        PRIMARY KEY (destination_zip, entry_facility_type)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS zones (
        origin_zip3 TEXT NOT NULL, destination_zip3 TEXT NOT NULL, zone INTEGER NOT NULL,
        PRIMARY KEY (origin_zip3, destination_zip3)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS outages (
        id TEXT PRIMARY KEY, scope TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, declared_by TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS tickets (
        ticket TEXT PRIMARY KEY, resolved_at TEXT, resolved_by TEXT
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS rejected_messages (
        id           INTEGER PRIMARY KEY,
        received_at  TEXT    NOT NULL,
        source       TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        payload      BLOB    NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS docks (
        device_id    TEXT PRIMARY KEY,
        site         TEXT NOT NULL,
        state        TEXT,
        boot         INTEGER,
        birth        TEXT,
        status       TEXT,
        last_seen    TEXT NOT NULL
    )
    """,
]

EVENT_COLUMNS = ("device_id", "event_id", "site", "seq", "boot", "type", "scanned_at", "barcode", "kind",
                 "disposition", "mode", "appointment", "ticket", "role", "ref_event_id", "historical", "body",
                 "received_at")


class Backend(Protocol):
    """The few operations the scorer needs from a database."""

    def executescript(self, statements: Sequence[str]) -> None: ...

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> int: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class SQLiteBackend:
    """SQLite in WAL mode with synchronous=FULL: an acknowledged event survives a power cut at HQ too."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.lock = threading.Lock()

    def executescript(self, statements: Sequence[str]) -> None:
        with self.lock:
            for s in statements:
                self.conn.execute(s)

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert in one transaction; returns how many were new (the rest were duplicates)."""
        sql = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
               " ON CONFLICT (device_id, event_id) DO NOTHING")
        with self.lock:
            before = self.conn.total_changes
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.executemany(sql, rows)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            return self.conn.total_changes - before

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.lock:
            self.conn.execute(sql, params)

    def transaction(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Run (sql, many-params) pairs in one transaction: all or nothing."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, many in statements:
                    self.conn.executemany(sql, many)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What one commit did: all listed events are now stored (new or earlier)."""

    new: int
    duplicates: int


class ScorerDB:
    """The scorer's data, over a Backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        backend.executescript(SCHEMA)

    @classmethod
    def open(cls, url_or_path: str) -> ScorerDB:
        """``sqlite:///path/to/scorer.db`` or a plain path (PostgreSQL arrives with the scorecard issue)."""
        path = url_or_path.removeprefix("sqlite:///") if url_or_path.startswith("sqlite:///") else url_or_path
        if "://" in path:
            raise ValueError(f"unsupported database URL {url_or_path!r}; use a file path or sqlite:///path")
        return cls(SQLiteBackend(Path(path)))

    def store_events(self, events: Sequence[dict[str, Any]], received_at: str, historical: bool) -> StoredBatch:
        rows = [
            (ev["device_id"], ev["event_id"], ev["site"], ev["seq"], ev["boot"], ev["type"], ev["scanned_at"],
             ev.get("barcode"), ev.get("kind"), ev.get("disposition"), ev["mode"], ev.get("appointment"),
             ev.get("ticket"), ev.get("role", "container") if ev["type"] == "scan" else None,
             ev.get("ref_event_id"), int(historical), json.dumps(ev, separators=(",", ":")), received_at)
            for ev in events
        ]
        new = self.backend.insert_events(rows)
        return StoredBatch(new, len(rows) - new)

    def reject(self, received_at: str, source: str, reason: str, payload: bytes) -> None:
        self.backend.execute(
            "INSERT INTO rejected_messages (received_at, source, reason, payload) VALUES (?, ?, ?, ?)",
            (received_at, source, reason[:500], payload[:65536]),
        )

    def dock_seen(self, device_id: str, site: str, at: str, **fields: Any) -> None:
        cols = ["device_id", "site", "last_seen", *fields]
        values = [device_id, site, at, *fields.values()]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
        self.backend.execute(
            f"INSERT INTO docks ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            f" ON CONFLICT (device_id) DO UPDATE SET {updates}",
            values,
        )

    def events(self, device_id: str | None = None, limit: int = 0) -> Iterator[dict[str, Any]]:
        sql = "SELECT body, historical, received_at FROM events"
        params: list[Any] = []
        if device_id:
            sql += " WHERE device_id = ?"
            params.append(device_id)
        sql += " ORDER BY device_id, seq"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        for body, historical, received_at in self.backend.query(sql, params):
            ev = json.loads(body)
            ev["historical"] = bool(historical)
            ev["received_at"] = received_at
            yield ev

    def count(self, table: str) -> int:
        if table not in ("events", "rejected_messages", "docks"):
            raise ValueError(table)
        return int(self.backend.query(f"SELECT count(*) FROM {table}")[0][0])

    def docks(self) -> list[dict[str, Any]]:
        rows = self.backend.query("SELECT device_id, site, state, boot, birth, status, last_seen FROM docks"
                                  " ORDER BY device_id")
        out = []
        for device_id, site, state, boot, birth, status, last_seen in rows:
            out.append({"device_id": device_id, "site": site, "state": state, "boot": boot,
                        "birth": json.loads(birth) if birth else None,
                        "status": json.loads(status) if status else None, "last_seen": last_seen})
        return out

    # -- reference data, outages, tickets ------------------------------------------------------------

    def import_reference(self, kind: str, rows: Sequence[dict[str, Any]], *, replace: bool = False,
                         actor: str = "cli") -> int:
        """Store checked rows (scorer.reference.read_csv) in one transaction: all or nothing. Rows with the same
        key are replaced (an eDoc row by imcb + statement_id); ``replace`` empties the table first.

        Raises:
            ValueError: a Mailer ID would belong to two CRIDs (nothing is stored).
        """
        if not rows:
            return 0
        cols = list(rows[0])
        if kind == "mailers" and not replace:
            owner = {}
            for crid, mids in self.backend.query("SELECT crid, mids FROM mailers"):
                for m in filter(None, mids.split(";")):
                    owner[m] = crid
            incoming = {r["crid"] for r in rows}
            for r in rows:
                for m in filter(None, r["mids"].split(";")):
                    if m in owner and owner[m] != r["crid"] and owner[m] not in incoming:
                        raise ValueError(f"Mailer ID {m} of {r['crid']} already belongs to {owner[m]}")
        statements: list[tuple[str, Sequence[Sequence[Any]]]] = []
        if replace:
            statements.append((f"DELETE FROM {kind}", [()]))
        statements.append((
            f"INSERT OR REPLACE INTO {kind} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [tuple(r[c] for c in cols) for r in rows],
        ))
        statements.append(("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                           [(_now(), actor, f"import {kind}", f"{len(rows)} rows{' (replace)' if replace else ''}")]))
        self.backend.transaction(statements)
        return len(rows)

    def outage_start(self, outage_id: str, at: str, actor: str) -> None:
        self.backend.transaction([
            ("INSERT INTO outages (id, scope, started_at, ended_at, declared_by) VALUES (?, 'national', ?, NULL, ?)",
             [(outage_id, at, actor)]),
            ("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
             [(_now(), actor, "outage start", f"{outage_id} at {at}")]),
        ])

    def outage_end(self, at: str, actor: str) -> str | None:
        """All-clear for the open national outage; returns its id (None if none was open)."""
        open_ = self.backend.query("SELECT id FROM outages WHERE ended_at IS NULL ORDER BY started_at DESC LIMIT 1")
        if not open_:
            return None
        oid = open_[0][0]
        self.backend.transaction([
            ("UPDATE outages SET ended_at = ? WHERE id = ?", [(at, oid)]),
            ("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
             [(_now(), actor, "outage end", f"{oid} at {at}")]),
        ])
        return str(oid)

    def outages(self) -> list[tuple[str, str, str | None]]:
        return [(r[0], r[1], r[2]) for r in self.backend.query(
            "SELECT id, started_at, ended_at FROM outages ORDER BY started_at")]

    def resolve_ticket(self, ticket: str, at: str, actor: str) -> None:
        self.backend.transaction([
            ("INSERT OR REPLACE INTO tickets (ticket, resolved_at, resolved_by) VALUES (?, ?, ?)",
             [(ticket, at, actor)]),
            ("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
             [(_now(), actor, "ticket resolve", ticket)]),
        ])

    def resolved_tickets(self) -> dict[str, str]:
        return {t: at for t, at in self.backend.query(
            "SELECT ticket, resolved_at FROM tickets WHERE resolved_at IS NOT NULL")}

    def close(self) -> None:
        self.backend.close()


def _now() -> str:
    import time

    from agent.clock import rfc3339

    return rfc3339(time.time_ns())

"""The scorer's storage: events keyed by (device_id, event_id), stored once however often they arrive.

Two backends behind one ``Backend`` protocol, chosen by the database URL (``ScorerDB.open``):

- SQLite (a file path or ``sqlite:///path``), the embedded default;
- PostgreSQL (``postgresql://...``, psycopg 3), for several scorer instances sharing one database.

ScorerDB writes portable SQL (``?`` placeholders, ``INSERT ... ON CONFLICT``, no engine-only types); what differs
lives in the backends: DDL types (SQLite ``BLOB`` / ``INTEGER PRIMARY KEY`` become ``BYTEA`` / an identity column,
and every PostgreSQL ``TEXT`` is ``COLLATE "C"`` so ordering and range comparisons are byte-wise as in SQLite,
whatever the database's locale), placeholders (``%s``), bulk paths (PostgreSQL loads through ``COPY``), and how an
idempotent insert counts what was new (exact under concurrent writers on both).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

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
    # The scorecard reads a period's scans (a range of scanned_at: without it, every event ever stored) and
    # every disposition change (without it, a scan of the whole table to find a few rows).
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (scanned_at)",
    "CREATE INDEX IF NOT EXISTS events_dispositions ON events (device_id, seq) WHERE type = 'disposition'",
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


REFERENCE_TABLES = ("edoc", "mailers", "facilities", "mdf", "zones")
# The primary key of every table that ScorerDB upserts into (``INSERT ... ON CONFLICT (key) DO UPDATE``).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "edoc": ("imcb", "statement_id"), "mailers": ("crid",), "facilities": ("facility",),
    "mdf": ("destination_zip", "entry_facility_type"), "zones": ("origin_zip3", "destination_zip3"),
    "tickets": ("ticket",), "docks": ("device_id",),
}


@dataclass(frozen=True, slots=True)
class Upsert:
    """One transaction step: insert ``rows``; a row whose ``key`` exists replaces that row's other columns.

    Keys must be unique within ``rows`` (ScorerDB keeps the last row of each key, as a replace would)."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    rows: Sequence[Sequence[Any]]

    def sql(self, placeholder: str) -> str:
        """The portable single-row statement (SQLite >= 3.24 and PostgreSQL >= 9.5 share this syntax)."""
        updates = [f"{c} = excluded.{c}" for c in self.columns if c not in self.key]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        return (f"INSERT INTO {self.table} ({', '.join(self.columns)}) "
                f"VALUES ({', '.join([placeholder] * len(self.columns))}) ON CONFLICT ({', '.join(self.key)}) {action}")


# A transaction step: (sql with ? placeholders, one parameter tuple per execution), or an Upsert.
Step = tuple[str, Sequence[Sequence[Any]]] | Upsert


class Backend(Protocol):
    """The few operations the scorer needs from a database. SQL is written with ``?`` placeholders."""

    def executescript(self, statements: Sequence[str]) -> None:
        """Create the schema (``CREATE ... IF NOT EXISTS``, SQLite type names); safe to run concurrently."""

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert event rows (EVENT_COLUMNS) in one transaction, skipping keys already stored; returns how many
        were new. Exact when several processes insert the same events at the same time."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def transaction(self, statements: Sequence[Step]) -> None:
        """Run the steps in one transaction: all or nothing."""

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
        """Insert in one transaction; returns how many were new (the rest were duplicates). BEGIN IMMEDIATE takes
        the write lock first, so a concurrent writer's rows are either all visible or not yet started."""
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

    def transaction(self, statements: Sequence[Step]) -> None:
        """Run the steps in one transaction: all or nothing."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for step in statements:
                    if isinstance(step, Upsert):
                        self.conn.executemany(step.sql("?"), step.rows)
                    else:
                        sql, many = step
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


# -- PostgreSQL ----------------------------------------------------------------------------------------------

_PG_SCHEMA_LOCK = 0x646F636B5F736372  # pg_advisory_xact_lock key ("dock_scr"): one schema creator at a time
_SQLITE_ONLY = re.compile(r"\b(INSERT\s+OR\s+\w+|REPLACE\s+INTO|AUTOINCREMENT|WITHOUT\s+ROWID|PRAGMA|GLOB)\b",
                          re.IGNORECASE)


def pg_ddl(statement: str) -> str:
    """A schema statement written for SQLite, in PostgreSQL's types."""
    if _SQLITE_ONLY.search(statement):
        raise ValueError(f"SQLite-only DDL, write it portably: {statement.strip()[:120]}")
    s = re.sub(r"\bINTEGER\s+PRIMARY\s+KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement)
    s = re.sub(r"\bBLOB\b", "BYTEA", s)
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', s)


@functools.lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """``?`` placeholders (outside string literals) become ``%s``; a literal ``%`` is doubled."""
    if _SQLITE_ONLY.search(sql):
        raise ValueError(f"SQLite-only SQL, write it portably: {sql.strip()[:120]}")
    parts = sql.split("'")
    for i in range(0, len(parts), 2):  # even parts are outside quotes ('' escapes keep the parity)
        parts[i] = parts[i].replace("%", "%%").replace("?", "%s")
    return "'".join(parts)


class PostgresBackend:
    """PostgreSQL through psycopg 3: one connection (autocommit outside explicit transactions), reopened after
    the server or the network dropped it. Durability is the server's (``synchronous_commit`` on by default): a
    COMMIT returns once the WAL is flushed, so an acknowledged event survives a crash of the database host.

    Event inserts go through ``COPY`` into a session temporary table, then one
    ``INSERT ... SELECT ... ORDER BY key ON CONFLICT DO NOTHING`` whose row count is exactly the new events:
    a concurrent transaction inserting the same key makes this one wait for its outcome and then skip the row,
    and the fixed key order means two scorers inserting overlapping batches wait on each other in the same
    order (no deadlock). Deadlocks and serialization failures are retried all the same.
    """

    RETRIES = 5

    def __init__(self, url: str, *, connect_timeout_s: int = 10) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the installation
            raise RuntimeError("PostgreSQL support needs psycopg 3: pip install 'dock-agent[postgres]'") from None
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.lock = threading.RLock()
        self.conn = self._connect()
        self._staging: Any = None  # the connection on which the events staging table exists

    def _connect(self) -> Any:
        params = self._psycopg.conninfo.conninfo_to_dict(self.url)
        params.setdefault("application_name", "dock-scorer")
        params.setdefault("connect_timeout", str(self.connect_timeout_s))
        return self._psycopg.connect(autocommit=True, **params)

    def _connection(self) -> Any:
        if self.conn.closed or self.conn.broken:
            log.warning("scorer db: PostgreSQL connection lost; reconnecting")
            try:
                self.conn.close()
            finally:
                self.conn = self._connect()
        return self.conn

    def _in_transaction(self, body: Any) -> Any:
        errors = self._psycopg.errors
        for attempt in range(1, self.RETRIES + 1):
            with self.lock:
                conn = self._connection()
                try:
                    with conn.transaction():
                        return body(conn)
                except (errors.DeadlockDetected, errors.SerializationFailure) as e:
                    if attempt == self.RETRIES:
                        raise
                    log.warning("scorer db: %s; retrying the transaction (%d)", type(e).__name__, attempt)
            time.sleep(0.02 * attempt)
        raise AssertionError("unreachable")

    def executescript(self, statements: Sequence[str]) -> None:
        def body(conn: Any) -> None:
            # CREATE ... IF NOT EXISTS is not safe against a concurrent creator (a unique violation in the
            # catalogue): scorer instances starting together take turns.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
            for s in statements:
                conn.execute(pg_ddl(s))

        self._in_transaction(body)

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        cols = ", ".join(EVENT_COLUMNS)

        def body(conn: Any) -> int:
            if self._staging is not conn:
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS events_in ON COMMIT DELETE ROWS AS "
                             f"SELECT {cols} FROM events WITH NO DATA")
                self._staging = conn
            with conn.cursor() as cur:
                with cur.copy(f"COPY events_in ({cols}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
                cur.execute(f"INSERT INTO events ({cols}) SELECT {cols} FROM events_in ORDER BY device_id, event_id"
                            " ON CONFLICT (device_id, event_id) DO NOTHING")
                return int(cur.rowcount)

        return int(self._in_transaction(body))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.lock:
            if params:
                self._connection().execute(pg_sql(sql), tuple(params))
            else:
                self._connection().execute(sql)

    def _upsert(self, conn: Any, step: Upsert) -> None:
        if not step.rows:
            return
        cols = ", ".join(step.columns)
        stage = f"{step.table}_in"
        updates = [f"{c} = excluded.{c}" for c in step.columns if c not in step.key]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        with conn.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {step.table} WITH NO DATA")
            with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                for r in step.rows:
                    copy.write_row(r)
            cur.execute(f"INSERT INTO {step.table} ({cols}) SELECT {cols} FROM {stage} ORDER BY {', '.join(step.key)}"
                        f" ON CONFLICT ({', '.join(step.key)}) {action}")
            cur.execute(f"DROP TABLE {stage}")

    def transaction(self, statements: Sequence[Step]) -> None:
        def body(conn: Any) -> None:
            with conn.cursor() as cur:
                for step in statements:
                    if isinstance(step, Upsert):
                        self._upsert(conn, step)
                        continue
                    sql, many = step
                    if all(len(p) == 0 for p in many):
                        for _ in many:
                            cur.execute(sql)
                    else:
                        cur.executemany(pg_sql(sql), [tuple(p) for p in many])

        self._in_transaction(body)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            conn = self._connection()
            with conn.cursor() as cur:
                if params:
                    cur.execute(pg_sql(sql), tuple(params))
                else:
                    cur.execute(sql)
                return cur.fetchall()

    def close(self) -> None:
        self.conn.close()


def _text(value: str | None) -> str | None:
    """A free-text value for a TEXT column. JSON lets a dock send U+0000 and lone surrogates (``\\ud800``);
    PostgreSQL refuses the first, and UTF-8 (so SQLite's driver) the second, which would make the whole batch a
    poison message on every retry. Both become U+FFFD in the column; the event's body keeps the exact text."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    return value


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
        """``postgresql://[user@]host[:port]/dbname`` (any libpq URI: ``postgresql:///scorer?host=/run/postgresql``;
        a password is best kept in ``~/.pgpass`` or ``$PGPASSFILE``, not in the URL), ``sqlite:///path/to/scorer.db``
        or a plain path (SQLite)."""
        if url_or_path.startswith(("postgresql://", "postgres://")):
            return cls(PostgresBackend(url_or_path))
        path = url_or_path.removeprefix("sqlite:///") if url_or_path.startswith("sqlite:///") else url_or_path
        if "://" in path:
            raise ValueError(f"unsupported database URL {url_or_path!r}; use a file path, sqlite:///path or "
                             "postgresql://...")
        return cls(SQLiteBackend(Path(path)))

    def store_events(self, events: Sequence[dict[str, Any]], received_at: str, historical: bool) -> StoredBatch:
        rows = [
            (ev["device_id"], ev["event_id"], ev["site"], ev["seq"], ev["boot"], ev["type"], ev["scanned_at"],
             _text(ev.get("barcode")), ev.get("kind"), ev.get("disposition"), ev["mode"], _text(ev.get("appointment")),
             _text(ev.get("ticket")), ev.get("role", "container") if ev["type"] == "scan" else None,
             ev.get("ref_event_id"), int(historical), json.dumps(ev, separators=(",", ":")), received_at)
            for ev in events
        ]
        new = self.backend.insert_events(rows)
        return StoredBatch(new, len(rows) - new)

    def reject(self, received_at: str, source: str, reason: str, payload: bytes) -> None:
        self.backend.execute(
            "INSERT INTO rejected_messages (received_at, source, reason, payload) VALUES (?, ?, ?, ?)",
            (received_at, _text(source), _text(reason[:500]), payload[:65536]),
        )

    def dock_seen(self, device_id: str, site: str, at: str, **fields: Any) -> None:
        cols = ("device_id", "site", "last_seen", *fields)
        values = [device_id, site, at, *(_text(v) if isinstance(v, str) else v for v in fields.values())]
        self.backend.execute(Upsert("docks", cols, TABLE_KEYS["docks"], ()).sql("?"), values)

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
            ValueError: an unknown kind, or a Mailer ID would belong to two CRIDs (nothing is stored).
        """
        if kind not in REFERENCE_TABLES:
            raise ValueError(f"unknown reference data {kind!r}; one of {', '.join(REFERENCE_TABLES)}")
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
        key = TABLE_KEYS[kind]
        by_key = {tuple(r[c] for c in key): tuple(r[c] for c in cols) for r in rows}  # the last row of a key wins
        statements: list[Step] = []
        if replace:
            statements.append((f"DELETE FROM {kind}", [()]))
        statements.append(Upsert(kind, tuple(cols), key, list(by_key.values())))
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
            Upsert("tickets", ("ticket", "resolved_at", "resolved_by"), TABLE_KEYS["tickets"], [(ticket, at, actor)]),
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

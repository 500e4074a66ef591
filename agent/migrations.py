"""Versioned schema of the scan store; each step runs once, in order, recorded in PRAGMA user_version."""

from __future__ import annotations

import sqlite3

# Append only: never edit a step that has shipped. Index i brings the schema to version i + 1.
STEPS: list[str] = [
    # 1: scans (seq is the rowid: one b-tree fewer per insert), unusable reads, key/value metadata.
    """
    CREATE TABLE scans (
        seq           INTEGER PRIMARY KEY,
        event_id      TEXT    NOT NULL UNIQUE,
        device_id     TEXT    NOT NULL,
        boot          INTEGER NOT NULL,
        scanner       TEXT    NOT NULL,
        raw           BLOB    NOT NULL,
        barcode       TEXT    NOT NULL,
        kind          TEXT    NOT NULL,
        symbology     TEXT,
        fields        TEXT    NOT NULL DEFAULT '{}',
        verdict       TEXT    NOT NULL,
        reason        TEXT    NOT NULL DEFAULT '',
        mode          TEXT    NOT NULL DEFAULT 'normal',
        scanned_at    TEXT    NOT NULL,
        wall_ns       INTEGER NOT NULL,
        mono_ns       INTEGER NOT NULL,
        clock_synced  INTEGER NOT NULL,
        delivered_at  TEXT
    );
    CREATE INDEX scans_undelivered ON scans(seq) WHERE delivered_at IS NULL;
    CREATE TABLE rejections (
        id          INTEGER PRIMARY KEY,
        scanner     TEXT    NOT NULL,
        raw         BLOB    NOT NULL,
        reason      TEXT    NOT NULL,
        kind        TEXT,
        scanned_at  TEXT    NOT NULL,
        boot        INTEGER NOT NULL
    );
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    INSERT INTO meta(key, value) VALUES ('mode', 'normal');
    """,
    # 2: sync. Rows the broker refused max_refusals times wait here, with the reason, for a technician.
    """
    ALTER TABLE scans ADD COLUMN dead_lettered_at TEXT;
    CREATE TABLE dead_letters (
        event_id     TEXT    PRIMARY KEY,
        seq          INTEGER NOT NULL,
        reason_code  INTEGER NOT NULL,
        reason       TEXT    NOT NULL,
        at           TEXT    NOT NULL,
        requeued_at  TEXT
    );
    """,
    # 3: the dock's workflow. Scans carry their load context; every other fact the dock records (load opened,
    # form opened, placard collected, release, void, mode change, disposition change, ...) is a record that
    # shares the scans' seq space and outbox; open loads, doors and the mode survive restarts.
    """
    ALTER TABLE scans ADD COLUMN appointment TEXT;
    ALTER TABLE scans ADD COLUMN ticket TEXT;
    ALTER TABLE scans ADD COLUMN role TEXT;
    ALTER TABLE scans ADD COLUMN form TEXT;
    ALTER TABLE scans ADD COLUMN load_id TEXT;
    ALTER TABLE scans ADD COLUMN operator TEXT;
    ALTER TABLE scans ADD COLUMN display TEXT;
    CREATE TABLE records (
        seq              INTEGER PRIMARY KEY,
        event_id         TEXT    NOT NULL UNIQUE,
        device_id        TEXT    NOT NULL,
        boot             INTEGER NOT NULL,
        scanner          TEXT    NOT NULL,
        type             TEXT    NOT NULL,
        data             TEXT    NOT NULL,
        mode             TEXT    NOT NULL,
        recorded_at      TEXT    NOT NULL,
        clock_synced     INTEGER NOT NULL,
        delivered_at     TEXT,
        dead_lettered_at TEXT
    );
    CREATE INDEX records_undelivered ON records(seq) WHERE delivered_at IS NULL;
    CREATE INDEX records_by_type ON records(type);
    CREATE TABLE workflow_state (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    CREATE TABLE loads (
        load_id      TEXT PRIMARY KEY,
        scanner      TEXT NOT NULL,
        appointment  TEXT NOT NULL,
        ticket       TEXT,
        operator     TEXT,
        opened_at    TEXT NOT NULL,
        closed_at    TEXT,
        summary      TEXT
    );
    CREATE TABLE load_containers (
        load_id       TEXT NOT NULL,
        imcb          TEXT NOT NULL,
        event_id      TEXT NOT NULL,
        scanned_at    TEXT NOT NULL,
        disposition   TEXT NOT NULL,
        form          TEXT,
        needs_placard INTEGER NOT NULL,
        placard_at    TEXT,
        released_at   TEXT,
        voided        INTEGER NOT NULL,
        PRIMARY KEY (load_id, imcb)
    );
    CREATE TABLE mailing_log (
        id              INTEGER PRIMARY KEY,
        entered_at      TEXT NOT NULL,
        arrival_at      TEXT NOT NULL,
        permit_holder   TEXT NOT NULL,
        total_pieces    INTEGER NOT NULL,
        pieces_approx   INTEGER NOT NULL,
        total_postage   TEXT NOT NULL,
        mailer_job_id   TEXT NOT NULL,
        einduction      INTEGER NOT NULL,
        outage_id       TEXT,
        entry_date      TEXT,
        initials        TEXT,
        transaction_no  TEXT,
        finalized       INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 4: 2D mobile barcode samples (DMM 709 4.0) and IBI indicia seen at acceptance (by payload hash only).
    """
    CREATE TABLE samples (
        id               INTEGER PRIMARY KEY,
        recorded_at      TEXT NOT NULL,
        promotion        TEXT NOT NULL,
        statement_id     TEXT,
        mailing_date     TEXT NOT NULL,
        mail_class       TEXT NOT NULL,
        shape            TEXT NOT NULL,
        verdict          TEXT NOT NULL,
        image_path       TEXT,
        image_sha256     TEXT,
        retain_until     TEXT,
        result           TEXT NOT NULL
    );
    CREATE TABLE indicia (
        sha256       TEXT PRIMARY KEY,
        symbology    TEXT NOT NULL,
        first_seen   TEXT NOT NULL,
        first_event  TEXT NOT NULL,
        seen         INTEGER NOT NULL
    );
    """,
    # 5: pruning delivered rows by age without reading every row.
    """
    CREATE INDEX scans_delivered ON scans(delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE INDEX records_delivered ON records(delivered_at) WHERE delivered_at IS NOT NULL;
    """,
]

LATEST = len(STEPS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring ``conn`` (autocommit mode) to the latest schema; returns the version it was at.

    Raises:
        sqlite3.DatabaseError: a newer schema than this software knows, or a failed step (rolled back).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise sqlite3.DatabaseError(
            f"database schema version {version} is newer than this software ({LATEST}); upgrade dock-agent"
        )
    for number in range(version, LATEST):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(STEPS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

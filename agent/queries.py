"""Read-only views of the store for the CLI (scans, status, exports); safe while the agent is running.

Reads go through sqlite-utils on a ``query_only`` connection: WAL lets them run beside the agent's writes
without blocking it, and nothing here can change a stored row.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils


from agent.status import LOCK_NAME, problems, read_snapshot
from agent.store import DB_NAME, connect


class ReadOnlyStore:
    """Queries over a state directory's database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.db = sqlite_utils.Database(conn)

    @classmethod
    @contextmanager
    def open_or_report(cls, state_dir: Path) -> Iterator[ReadOnlyStore | None]:
        """Yields None (after printing why to stderr) when there is no database to read."""
        path = state_dir / DB_NAME
        if not path.exists():
            print(f"dock-agent: no scan database in {state_dir} (nothing stored yet?)", file=sys.stderr)
            yield None
            return
        conn = connect(path, readonly=True)
        try:
            yield cls(conn)
        finally:
            conn.close()

    def scans(self, *, limit: int = 0, undelivered: bool = False) -> Iterator[dict[str, Any]]:
        where = "delivered_at IS NULL" if undelivered else None
        order = "seq DESC" if limit else "seq"
        rows = self.db["scans"].rows_where(where, order_by=order, limit=limit or None)
        found = [_public(r) for r in rows]
        yield from (reversed(found) if limit else found)

    def totals(self) -> dict[str, Any]:
        by_verdict = {v: n for v, n in self.db.execute("SELECT verdict, count(*) FROM scans GROUP BY verdict")}
        undelivered = self.db.execute("SELECT count(*) FROM scans WHERE delivered_at IS NULL").fetchone()[0]
        first = self.db.execute(
            "SELECT scanned_at FROM scans WHERE delivered_at IS NULL ORDER BY seq LIMIT 1"
        ).fetchone()
        oldest = first[0] if first else None
        return {
            "scans": sum(by_verdict.values()),
            "by_verdict": by_verdict,
            "undelivered": undelivered,
            "oldest_undelivered_at": oldest,
            "rejections": self.db.execute("SELECT count(*) FROM rejections").fetchone()[0],
            "mode": self.mode(),
        }


    def mode(self) -> str:
        """The mode from the latest declaration recorded (agent.workflow.mode_at), as the agent computes it."""
        import datetime as dt

        from agent.workflow import Declaration, mode_at

        has = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'workflow_state'").fetchone()
        row = self.db.execute("SELECT value FROM workflow_state WHERE key = 'declaration'").fetchone() if has else None
        if not row:
            return "normal"
        d = json.loads(row[0])
        decl = Declaration(d["kind"], dt.datetime.fromisoformat(d["at"]), d["by"], d["source"])
        return mode_at(decl, dt.datetime.now(dt.timezone.utc))


def _public(row: dict[str, Any]) -> dict[str, Any]:
    raw: bytes = row.pop("raw")
    row["raw"] = raw.decode("latin-1")
    row["fields"] = json.loads(row["fields"])
    row["clock_synced"] = bool(row["clock_synced"])
    return row


def agent_pid(state_dir: Path) -> int | None:
    """The pid of the agent running on ``state_dir``, or None."""
    try:
        pid = int((state_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _age_s(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    t = dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return max(0.0, time.time() - t.timestamp())


def gather_status(state_dir: Path) -> dict[str, Any]:
    """Everything ``dock-agent status`` shows, from the database and the running agent's snapshot."""
    status: dict[str, Any] = {"state_dir": str(state_dir)}
    pid = agent_pid(state_dir)
    snap = read_snapshot(state_dir) if pid else None
    status["running"] = pid is not None
    status["pid"] = pid
    path = state_dir / DB_NAME
    if path.exists():
        conn = connect(path, readonly=True)
        try:
            totals = ReadOnlyStore(conn).totals()
        finally:
            conn.close()
        totals["oldest_undelivered_age_s"] = _age_s(totals["oldest_undelivered_at"])
    else:
        totals = {"scans": 0, "undelivered": 0, "oldest_undelivered_at": None, "oldest_undelivered_age_s": None,
                  "mode": "normal", "rejections": 0, "by_verdict": {}}
    status["mode"] = totals.pop("mode")
    status["totals"] = totals
    try:
        status["boot"] = json.loads((state_dir / "counters.json").read_text()).get("boot")
    except (OSError, ValueError):
        status["boot"] = None
    if snap is not None:
        status["sync"] = snap.get("sync")
        status["scanners"] = snap.get("scanners", [])
        status["storage"] = snap.get("storage", {})
        status["last"] = snap.get("last")
        status["config_hash"] = snap.get("config_hash")
        status["problems"] = problems(snap)
        status["state"] = "degraded" if status["problems"] else "ok"
    else:
        status["scanners"] = []
        status["problems"] = ["agent not running"]
        status["state"] = "not running"
    return status


def render_status(s: dict[str, Any]) -> str:
    t = s["totals"]
    age = t.get("oldest_undelivered_age_s")
    lines = [
        f"state:     {s['state'].upper()}" + (f" (pid {s['pid']})" if s.get("pid") else ""),
        f"mode:      {s['mode']}",
        f"scans:     {t['scans']} stored, {t['undelivered']} not yet delivered"
        + (f", oldest {_human_age(age)} old" if age is not None else ""),
        f"unusable:  {t['rejections']} reads kept for diagnosis",
    ]
    storage = s.get("storage")
    if storage:
        lines.append(f"disk:      {storage.get('free_mb')} MB free ({storage.get('level')})")
    sync = s.get("sync")
    if sync:
        scorers = ", ".join(sync.get("scorers_online") or []) or "none online"
        err = f" - last failure: {sync['last_error']}" if sync.get("last_error") else ""
        lines.append(f"link:      {sync.get('state')} to {sync.get('broker')} ({'TLS' if sync.get('tls') else 'plain'}),"
                     f" scorers: {scorers}, {sync.get('reconnects', 0)} reconnects{err}")
        lines.append(f"sync:      {sync.get('events_delivered', 0)} delivered this run, "
                     f"{sync.get('awaiting_ack', 0)} awaiting acknowledgement, {sync.get('dead_lettered', 0)} dead letters")
    for sc in s.get("scanners", []):
        bad = sum(sc.get("bad_frames", {}).values())
        err = f" - {sc['last_error']}" if sc.get("last_error") else ""
        lines.append(f"scanner:   {sc['name']} ({sc['kind']}) {sc['state']}, {sc['frames']} frames, "
                     f"{bad} dropped{err}")
    for p in s.get("problems", []):
        lines.append(f"problem:   {p}")
    return "\n".join(lines)


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"

"""The agent's state at a glance: the runtime snapshot file and the one sentence shown in systemd and logs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SNAPSHOT = "status.json"
LOCK_NAME = "agent.lock"


def runtime_dir(state_dir: Path) -> Path:
    """Where the snapshot lives: ``$RUNTIME_DIRECTORY`` (tmpfs under systemd, spares the SD card) or state dir."""
    env = os.environ.get("RUNTIME_DIRECTORY")
    return Path(env.split(":")[0]) if env else state_dir


class StatusWriter:
    """Writes the snapshot atomically, at most once a second, and at least every 10 s (a heartbeat)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / SNAPSHOT
        self._last_body = ""
        self._last_write = 0.0

    def write(self, snapshot: dict[str, object], force: bool = False) -> None:
        body = json.dumps({k: v for k, v in snapshot.items() if k != "updated_at"}, sort_keys=True)
        now = time.monotonic()
        if not force:
            if now - self._last_write < 1.0 or (body == self._last_body and now - self._last_write < 10.0):
                return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(snapshot, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            return  # a full disk must not stop the loop; status shows storage errors from the store itself
        self._last_body = body
        self._last_write = now


def read_snapshot(state_dir: Path) -> dict[str, object] | None:
    for d in (runtime_dir(state_dir), state_dir):
        try:
            return json.loads((d / SNAPSHOT).read_text())
        except (OSError, ValueError):
            continue
    return None


def problems(snapshot: dict[str, object]) -> list[str]:
    """What makes the agent degraded, in words a technician can act on."""
    out: list[str] = []
    storage = snapshot.get("storage") or {}
    assert isinstance(storage, dict)
    if storage.get("level") == "floor" or str(storage.get("last_error", "")).startswith("storage_full"):
        out.append(f"disk full: {storage.get('free_mb')} MB free, new scans refused")
    elif storage.get("level") == "warn":
        out.append(f"disk low: {storage.get('free_mb')} MB free")
    if storage.get("last_error") and not out:
        out.append(f"storage: {storage.get('last_error')}")
    sync = snapshot.get("sync")
    if isinstance(sync, dict) and sync.get("state") != "connected":
        out.append(f"headquarters link {sync.get('state')}: {sync.get('last_error') or 'not connected yet'}")
    elif isinstance(sync, dict) and not sync.get("scorers_online"):
        out.append("headquarters link up, but no scorer is online: backlog held")
    if isinstance(sync, dict) and sync.get("last_refusal"):
        out.append(f"the broker refused: {sync['last_refusal']}")
    ref = snapshot.get("slice")
    if isinstance(ref, dict) and ref.get("stale"):
        out.append(f"reference slice is stale ({ref.get('age_s', 0) / 3600:.0f} h old): verdicts are 'unverified'")
    backlog = snapshot.get("backlog")
    if isinstance(backlog, dict) and backlog.get("dead_letters"):
        out.append(f"{backlog['dead_letters']} scans refused by the broker (dead letters)")
    scanners = snapshot.get("scanners") or []
    assert isinstance(scanners, list)
    for s in scanners:
        if s.get("state") == "absent":
            out.append(f"scanner '{s.get('name')}' absent: {s.get('last_error')}")
    if not scanners:
        out.append("no scanner configured")
    return out


def sentence(snapshot: dict[str, object]) -> str:
    """One line: 'ok: ...' or 'degraded: ...'."""
    found = problems(snapshot)
    counts = snapshot.get("counts") or {}
    assert isinstance(counts, dict)
    stored = sum(v for k, v in counts.items() if k not in ("invalid", "not_stored"))
    scanners = snapshot.get("scanners") or []
    assert isinstance(scanners, list)
    head = "degraded: " + "; ".join(found) if found else "ok"
    return f"{head} | mode {snapshot.get('mode')}, {len(scanners)} scanner(s), {stored} scans stored this boot"

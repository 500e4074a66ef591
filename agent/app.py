"""Composition root for ``dock-agent run``: configuration, lock, store, scanners, loop, signals."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import IO

from agent.clock import SystemClock
from agent.errors import AgentError, StorageError
from agent.loop import Agent, Outcome
from agent.notify import Notifier
from agent.settings import ScannerConfig, Settings, config_hash, read_secret
from agent.workflow import Workflow
from agent.status import LOCK_NAME, StatusWriter, runtime_dir
from agent.store import Store
from drivers import build
from drivers.runner import ScannerRunner

log = logging.getLogger(__name__)




class InstanceLock:
    """One agent per state directory: an advisory lock that dies with the process (SIGKILL included)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises StorageError naming the running agent when the lock is held."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StorageError(
                "locked", f"another dock-agent (pid {holder or '?'}) is running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def print_outcome(out: IO[str]):  # type: ignore[no-untyped-def]
    """A callback printing one line per read: time, scanner, barcode, kind, VERDICT, reason."""

    def emit(o: Outcome) -> None:
        seq = f"#{o.seq}" if o.seq is not None else "-"
        out.write(f"{o.scanned_at or '-':24} {o.scanner:10} {seq:>7} {o.text:28} {o.kind or '?':8} "
                  f"{o.verdict.upper():11} {o.display}: {o.reason}\n")
        out.flush()

    return emit


def _make_web(settings: Settings, agent: Agent, http: str | None, state_dir: Path):  # type: ignore[no-untyped-def]
    """The status screen (agent.web), or None when it is off."""
    listen = http or (settings.http.listen if settings.http.enabled else None)
    if not listen or listen == "off":
        return None
    from agent.web import Board, WebServer

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    token = None
    if settings.http.token_file:
        token = read_secret("http-token", explicit_path=settings.http.token_file)
    elif os.environ.get("CREDENTIALS_DIRECTORY") and (Path(os.environ["CREDENTIALS_DIRECTORY"]) / "http-token").exists():
        token = read_secret("http-token")
    agent.board = Board()
    agent.board.publish(agent.snapshot())

    def ready() -> tuple[bool, dict[str, object]]:
        snap = agent.board.snapshot
        storage = snap.get("storage") or {}
        scanners = snap.get("scanners") or []
        db_ok = storage.get("level") != "floor" and not str(storage.get("last_error", "")).startswith("storage")
        present = any(s.get("state") in ("ok", "exhausted") for s in scanners)
        reasons = ([] if db_ok else ["database not writable: " + str(storage.get("last_error") or "disk full")]) + (
            [] if present else ["no scanner present"])
        sync = snap.get("sync") or {}
        return db_ok and present, {"ready": db_ok and present, "problems": reasons,
                                   "link": sync.get("state", "off"), "link_error": sync.get("last_error", "")}

    def action(body: dict[str, object]) -> dict[str, object]:
        from agent.control import ControlRequest

        kind = body.get("action")
        scanner = body.get("scanner")
        if kind == "load_open":
            req = {"op": "command", "command": "LOAD", "arg": str(body.get("arg") or ""), "scanner": scanner}
        elif kind == "load_close":
            req = {"op": "command", "command": "CLOSE", "scanner": scanner}
        elif kind in ("outage", "allclear"):
            req = {"op": "outage", "kind": kind, "by": "dock lead (status screen)", "scanner": scanner}
        else:
            return {"ok": False, "error": f"unknown action {str(kind)[:40]!r}"}
        r = ControlRequest(req)
        agent.queue.put(r)
        try:
            return r.reply.get(timeout=10)
        except Exception:  # noqa: BLE001 - the loop did not answer: say so, never hang the page
            return {"ok": False, "error": "the agent did not answer within 10 s"}

    def extra() -> dict[str, float]:
        import time as _time

        size = sum(p.stat().st_size for p in state_dir.glob("scans.db*") if p.exists())
        sync = agent.board.snapshot.get("sync") or {}
        out: dict[str, float] = {"db_bytes": float(size)}
        if sync.get("last_ack_at"):
            import datetime as dt

            at = dt.datetime.fromisoformat(str(sync["last_ack_at"]).replace("Z", "+00:00")).timestamp()
            out["last_ack_age_s"] = max(0.0, _time.time() - at)
        if settings.sync.client_cert_file:
            out["cert_expiry_s"] = _cert_expiry_s(settings.sync.client_cert_file)
        return out

    return WebServer(host, int(port), agent.board, ready=ready, action=action, lead_pin=agent.workflow.lead_pin,
                     token=token, extra=extra)


def _installed_slice(state_dir: Path):  # type: ignore[no-untyped-def]
    """The reference slice installed in the state directory (None: verdicts are 'unverified')."""
    try:
        from sync.slices import load_slice

        ref = load_slice(state_dir)
    except Exception as e:  # noqa: BLE001 - a bad slice file must never stop scanning
        log.warning("reference slice not loaded: %s", e)
        return None
    if ref is not None:
        log.info("reference slice version %s of %s loaded", getattr(ref, "version", "?"),
                 ref.built_at.isoformat())
    return ref


def _cert_expiry_s(path: str) -> float:
    """Seconds until a PEM certificate expires (-1 if it cannot be read)."""
    import ssl
    import time as _time

    try:
        info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]  # CPython's own PEM reader
        return ssl.cert_time_to_seconds(info["notAfter"]) - _time.time()
    except (OSError, ValueError, KeyError, AttributeError):
        return -1.0


def make_workflow(settings: Settings) -> Workflow:
    """The workflow with the site's settings; the lead PIN from its file or the 'lead-pin' credential."""
    import datetime as dt

    cfg = settings.workflow
    pin = None
    if cfg.lead_pin_file:
        pin = read_secret("lead-pin", explicit_path=cfg.lead_pin_file)
    elif os.environ.get("CREDENTIALS_DIRECTORY") and (Path(os.environ["CREDENTIALS_DIRECTORY"]) / "lead-pin").exists():
        pin = read_secret("lead-pin")
    return Workflow(settings.site.facility, lead_pin=pin, slice_max_age=dt.timedelta(hours=cfg.slice_max_age_h),
                    continuation=dt.timedelta(hours=cfg.post_outage_h))


def summary(agent: Agent) -> str:
    c: Counter[str] = agent.counts
    stored = sum(v for k, v in c.items() if k not in ("invalid", "not_stored"))
    lines = [
        "",
        f"summary: {sum(c.values())} reads, {stored} stored, {c['invalid']} unusable, {c['not_stored']} not stored",
    ]
    for verdict, n in sorted(c.items()):
        lines.append(f"  {verdict:12} {n}")
    for r in agent.runners.values():
        h = r.health
        bad = sum(h.bad_frames.values())
        lines.append(f"  scanner {h.name!r}: {h.frames} frames, {bad} dropped frames, state {h.state}")
    lines.append(f"  stored in {agent.store.db_path} (boot {agent.store.boot})")
    return "\n".join(lines)


def run(
    settings: Settings,
    state_dir: Path,
    scanners: list[ScannerConfig],
    *,
    out: IO[str] = sys.stdout,
    stop: threading.Event | None = None,
    broker: str | None = None,
    http: str | None = None,
) -> int:
    """Run the agent in the foreground until SIGTERM/SIGINT, or until every replay scanner is exhausted.

    Returns the process exit status.
    """
    stop = stop or threading.Event()
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = InstanceLock(state_dir)
    try:
        lock.acquire()
    except (StorageError, OSError) as e:
        log.error("%s", e)
        return 2
    clock = SystemClock()
    store = Store(state_dir, settings.site.device_id, settings.store, clock)
    try:
        recovery = store.open()
    except AgentError as e:
        log.error("cannot start: %s", e)
        lock.release()
        return 1
    for message in recovery.messages:
        log.warning("store: %s", message)
    # A keyboard-wedge scanner is searched for again on every retry: re-attach within ~1 s (RELIABILITY R9).
    runners = [ScannerRunner(build(cfg), cfg.type, cap_s=1.0 if cfg.type == "hid" else 5.0) for cfg in scanners]
    finite = bool(runners) and all(cfg.type == "replay" for cfg in scanners)
    try:
        workflow = make_workflow(settings)
    except AgentError as e:
        log.error("cannot start: %s", e)
        store.close()
        lock.release()
        return 2
    agent = Agent(
        store, runners, clock,
        notifier=Notifier(), status=StatusWriter(runtime_dir(state_dir)), on_outcome=print_outcome(out),
        config_hash=config_hash(settings), workflow=workflow, control_dir=runtime_dir(state_dir),
    )
    try:
        web = _make_web(settings, agent, http, state_dir)
    except (AgentError, ValueError) as e:
        log.error("cannot start the status screen: %s", e)
        store.close()
        lock.release()
        return 2
    except OSError as e:
        # A busy port must not stop scanning: the screen is degraded, capture goes on.
        log.error("status screen not started: %s", e)
        agent.http_error = f"status screen not started: {e.strerror or e}"
        web = None
    if not (settings.sync.enabled or broker):
        agent.workflow.slice = _installed_slice(state_dir)  # with sync on, its slice service loads it (once)
    if settings.sync.enabled or broker:
        try:
            agent.sync = _make_sync(settings, agent, scanners, broker)
        except AgentError as e:
            log.error("cannot start sync: %s", e)
            store.close()
            lock.release()
            return 2
    if not runners:
        log.warning("no scanner configured: the agent will wait, degraded, until one is")
    log.info(
        "dock-agent %s starting: device %s, facility %s, boot %d, %d scanner(s), state in %s",
        _version(), settings.site.device_id, settings.site.facility, store.boot, len(runners), state_dir,
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if web is not None:
        web.start()
        agent.http_url = f"http://{web.address[0]}:{web.address[1]}/"
    try:
        agent.run(stop, until_done=finite)
    finally:
        if web is not None:
            web.stop()
        store.close()
        lock.release()
    if finite:
        out.write(summary(agent) + "\n")
        out.flush()
    return 0


def _make_sync(settings: Settings, agent: Agent, scanners: list[ScannerConfig], broker: str | None):  # type: ignore[no-untyped-def]
    from sync.service import DockSync  # paho is imported only when sync is on

    sync = DockSync(
        settings, agent.store, agent.clock, boot=agent.store.boot, post=agent.queue.put, version=_version(),
        config_hash=agent.config_hash, scanners=[{"name": c.name, "kind": c.type} for c in scanners],
        broker_override=broker,
    )
    sync.set_status_source(agent.status_facts)
    if hasattr(sync, "set_slice_listener"):
        sync.set_slice_listener(lambda ref: setattr(agent.workflow, "slice", ref))
    return sync


def _version() -> str:
    from agent import __version__

    return __version__

"""The main loop: the single thread that judges each read, commits it, and only then signals the scanner.

Driver threads put RawScan on one queue; only this loop touches the store. Each pass also feeds the
systemd watchdog, so a wedged loop (and only a wedged loop) gets the agent restarted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent import barcode
from agent.clock import Clock, parse_rfc3339, rfc3339
from agent.errors import StorageError
from agent.notify import Notifier
from agent.status import StatusWriter, problems, sentence
from agent.store import ScanInput, Store
from agent.control import ControlRequest, ControlServer
from agent.ids import uuid7
from agent.workflow import Decision, Workflow, mode_at
from agent.workflow_store import decision_sql, restore
from drivers.base import RawScan, ScannerDone, Signal
from drivers.runner import ScannerRunner

log = logging.getLogger(__name__)

MAINTAIN_EVERY_S = 60.0
BACKLOG_EVERY_S = 2.0
DISK_EVERY_S = 5.0
TICK_S = 0.5
READY_WAIT_S = 5.0


class Inbox(queue.PriorityQueue):  # type: ignore[type-arg]
    """The loop's one queue. Scans jump ahead of link traffic, so a backlog drain never delays a beep."""

    def __init__(self) -> None:
        super().__init__()
        self._n = itertools.count()

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:  # type: ignore[override]
        prio = 0 if isinstance(item, RawScan | ScannerDone) else 1
        super().put((prio, next(self._n), item), block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> object:  # type: ignore[override]
        return super().get(block, timeout)[2]


class SyncLike(Protocol):
    """What the loop needs from the sync service (sync.service.DockSync); keeps agent/ free of paho."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def handle(self, event: object) -> None: ...

    def on_committed(self, row: dict[str, Any]) -> None: ...

    def tick(self, now_mono: float) -> None: ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one read: shown to the employee, printed, counted."""

    scanner: str
    text: str
    kind: str | None
    verdict: str
    reason: str
    signal: Signal
    seq: int | None = None
    event_id: str | None = None
    scanned_at: str = ""
    display: str = ""


class Agent:
    """Ties scanners, the store and the employee's feedback together."""

    def __init__(
        self,
        store: Store,
        runners: list[ScannerRunner],
        clock: Clock,
        *,
        notifier: Notifier | None = None,
        status: StatusWriter | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        config_hash: str = "",
        sync: SyncLike | None = None,
        workflow: Workflow | None = None,
        control_dir: Path | None = None,
        board: Any = None,
    ) -> None:
        self.store = store
        self.runners = {r.name: r for r in runners}
        self.clock = clock
        self.queue: queue.Queue[object] = Inbox()
        self.sync = sync
        self.workflow = workflow or Workflow("unknown")
        self.control = ControlServer(control_dir, self.queue.put) if control_dir is not None else None
        self.board = board  # agent.web.Board: the status screen's view, published from this loop only
        self.http_url: str | None = None
        self.http_error = ""
        if store.conn is not None:
            restore(store.conn, self.workflow)
        for r in runners:
            r.out = self.queue
        self.notifier = notifier or Notifier({})
        self.status_writer = status
        self.on_outcome = on_outcome
        self.config_hash = config_hash
        self.counts: Counter[str] = Counter()
        self.storage_error = ""
        self.last_outcome: Outcome | None = None
        self.done: set[str] = set()
        self.started_wall_ns = clock.wall_ns()
        self._last_maintain = 0.0
        self._last_tick = 0.0
        self._last_backlog = float("-inf")
        self._last_disk = 0.0
        self._last_board: dict[str, Any] = {}
        self.backlog: dict[str, Any] = {"rows": 0, "oldest_at": None, "oldest_age_s": None, "dead_letters": 0}
        # Feed the watchdog at least twice per WatchdogSec, and never less often than every TICK_S.
        self.tick_s = min(TICK_S, self.notifier.watchdog_s / 2) if self.notifier.watchdog_s else TICK_S

    @property
    def mode(self) -> str:
        return self.workflow.mode(_dt(self.clock.wall_ns()))

    # -- one read ----------------------------------------------------------------------------------------

    def handle(self, raw: RawScan) -> Outcome:
        """Parse, decide (agent.workflow), commit everything the read changes, then signal.

        A read that is not committed is never signalled good.
        """
        indicium = _indicium(raw.data)
        if indicium is not None:
            return self.record_indicium(raw, *indicium)
        result = barcode.parse(raw.data)
        if isinstance(result, barcode.Rejection):
            self.store.record_rejection(raw.scanner, raw.data, result.reason, result.kind, raw.wall_ns)
            outcome = Outcome(
                raw.scanner, _printable(raw.data), result.kind, "invalid", result.reason, "bad",
                scanned_at=rfc3339(raw.wall_ns), display="BAD READ",
            )
            self.counts["invalid"] += 1
            return self._finish(outcome)
        return self.decide(raw.scanner, result, raw.data, raw.wall_ns, raw.mono_ns)

    def decide(self, scanner: str, label: barcode.Label, raw_data: bytes, wall_ns: int, mono_ns: int,
               decision: Decision | None = None, *, from_scanner: bool = True) -> Outcome:
        """Run one usable read (or a control command) through the workflow and commit it."""
        now = _dt(wall_ns)
        event_id = uuid7(wall_ns)
        if decision is None:
            decision = self.workflow.on_read(scanner, label, now, mono_ns / 1e9, event_id)
        text = label.normalized
        if label.kind == "command" and label.fields.get("command") == "LEAD":
            # The dock lead's PIN authorises a command; it is never stored or synced.
            raw_data, text = b"DOCK:LEAD:***", "DOCK:LEAD:***"
            label = barcode.Label("command", text, {"command": "LEAD", "arg": "***"}, label.symbology)
        scan = ScanInput(
            scanner=scanner, raw=raw_data, barcode=text, kind=label.kind, symbology=label.symbology,
            fields=dict(label.fields), verdict=decision.disposition, reason=decision.reason,
            wall_ns=wall_ns, mono_ns=mono_ns, clock_synced=self.clock.synchronized(),
        )
        decl = decision.declaration or self.workflow.declaration
        mode = mode_at(decl, now, self.workflow.continuation)
        try:
            stored, record_rows = self.store.commit_read(
                scan if decision.store_scan else None, mode=mode, event_id=event_id,
                extra={**decision.scan_fields, "display": decision.display},
                records=[(kind, data, scanner) for kind, data in decision.records],
                statements=decision_sql(scanner, decision),
            )
        except StorageError as e:
            self.storage_error = f"{e.code}: {e}"
            self.counts["not_stored"] += 1
            log.error("scanner %r: %s NOT STORED: %s", scanner, text, e)
            outcome = Outcome(scanner, text, label.kind, "not_stored", str(e), "bad", scanned_at=rfc3339(wall_ns),
                              display="NOT STORED")
            return self._finish(outcome, from_scanner)
        self.workflow.apply(scanner, decision)
        self.storage_error = ""
        self.counts[decision.disposition] += 1
        if self.sync is not None:
            if stored is not None:
                self.sync.on_committed(stored.row)
            for row in record_rows:
                self.sync.on_committed(row)
        outcome = Outcome(
            scanner, text, label.kind, decision.disposition, decision.reason, decision.signal,
            stored.seq if stored else None, stored.event_id if stored else None,
            stored.scanned_at if stored else rfc3339(wall_ns), display=decision.display,
        )
        return self._finish(outcome, from_scanner)

    def _commit_records(self, records: list[tuple[str, dict[str, Any], str]],
                        statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Commit records (no scan) with their state writes, then offer them to the outbox.

        Raises:
            StorageError: nothing was stored.
        """
        _, rows = self.store.commit_read(None, mode=self.mode, records=records, statements=statements)
        if self.sync is not None:
            for row in rows:
                self.sync.on_committed(row)

    def record_indicium(self, raw: RawScan, symbology: str, payload: bytes) -> Outcome:
        """An IBI indicium (binary Data Matrix / PDF417) read at acceptance: recorded as postage evidence by the
        hash of its payload; one seen before on another piece is flagged as possibly duplicated (seed 002)."""
        from agent.samples import indicium_hash

        digest = indicium_hash(payload)
        at = rfc3339(raw.wall_ns)
        conn = self.store.conn
        assert conn is not None
        seen = conn.execute("SELECT first_seen, seen FROM indicia WHERE sha256 = ?", (digest,)).fetchone()
        data = {"sha256": digest, "symbology": symbology, "bytes": len(payload),
                "duplicate_of_first_seen": seen[0] if seen else None}
        sql = [("INSERT INTO indicia (sha256, symbology, first_seen, first_event, seen) VALUES (?, ?, ?, ?, 1)"
                " ON CONFLICT (sha256) DO UPDATE SET seen = seen + 1", (digest, symbology, at, digest[:16]))]
        try:
            self._commit_records([("indicium", data, raw.scanner)], sql)
        except StorageError as e:
            self.storage_error = f"{e.code}: {e}"
            return self._finish(Outcome(raw.scanner, f"indicium {digest[:12]}", "ibi", "not_stored", str(e), "bad",
                                        scanned_at=at, display="NOT STORED"))
        if seen:
            self.counts["indicium_duplicate"] += 1
            outcome = Outcome(raw.scanner, f"indicium {digest[:12]}", "ibi", "indicium",
                              f"possible duplicated indicium: the same payload was seen on another piece at {seen[0]}",
                              "attention", scanned_at=at, display="DUPLICATE INDICIUM?")
        else:
            self.counts["indicium"] += 1
            outcome = Outcome(raw.scanner, f"indicium {digest[:12]}", "ibi", "indicium",
                              "postage evidence recorded (hash of the payload)", "good", scanned_at=at,
                              display="INDICIUM")
        return self._finish(outcome)

    def handle_control(self, body: dict[str, Any]) -> dict[str, Any]:
        """A request from the local control socket (CLI, status screen), run like a command barcode."""
        op = body.get("op")
        wall_ns, mono_ns = self.clock.wall_ns(), self.clock.monotonic_ns()
        scanner = str(body.get("scanner") or self._default_scanner())
        try:
            if op == "command":
                code = f"DOCK:{body.get('command', '')}" + (f":{body['arg']}" if body.get("arg") else "")
                label = barcode.parse(code)
                if isinstance(label, barcode.Rejection):
                    return {"ok": False, "error": label.reason}
                outcome = self.decide(scanner, label, code.encode(), wall_ns, mono_ns, from_scanner=False)
            elif op == "outage":
                kind = body.get("kind")
                if kind not in ("outage", "allclear"):
                    return {"ok": False, "error": "kind must be outage or allclear"}
                decision = self.workflow.declare(kind, _dt(wall_ns), str(body.get("by") or "shell"), "local")
                code = "DOCK:OUTAGE:NATIONAL" if kind == "outage" else "DOCK:ALLCLEAR"
                label = barcode.parse(code)
                assert isinstance(label, barcode.Label)
                outcome = self.decide(scanner, label, code.encode(), wall_ns, mono_ns, decision=decision,
                                      from_scanner=False)
            elif op in ("mailing_log_add", "mailing_log_complete"):
                return self._mailing_log(op, body, wall_ns)
            elif op == "sample_record":
                return self._sample(body, wall_ns)
            else:
                return {"ok": False, "error": f"unknown op {str(op)[:40]!r}"}
        except (KeyError, ValueError, TypeError) as e:
            return {"ok": False, "error": f"bad request: {e}"}
        return {"ok": outcome.verdict != "not_stored" and outcome.signal != "bad", "signal": outcome.signal,
                "display": outcome.display, "reason": outcome.reason, "seq": outcome.seq, "scanner": scanner,
                "mode": self.mode}

    def apply_hq_declaration(self, hq: Any) -> Outcome | None:
        """Headquarters declared a national outage or its all-clear (sync.payloads.HqDeclaration): the latest
        declaration wins; the retained message seen again after a reconnect changes nothing."""
        at = dt.datetime.fromisoformat(hq.at.replace("Z", "+00:00"))
        current = self.workflow.declaration
        if current is not None and (current.at > at or (current.at == at and current.kind == hq.state)):
            return None
        decision = self.workflow.declare(hq.state, at, f"headquarters ({hq.by})", "hq", outage_id=hq.outage_id)
        code = "DOCK:OUTAGE:NATIONAL" if hq.state == "outage" else "DOCK:ALLCLEAR"
        label = barcode.parse(code)
        assert isinstance(label, barcode.Label)
        log.warning("headquarters declared %s (%s)", "a national outage" if hq.state == "outage" else "the all-clear",
                    hq.outage_id)
        return self.decide("headquarters", label, code.encode(), self.clock.wall_ns(), self.clock.monotonic_ns(),
                           decision=decision, from_scanner=False)

    def _sample(self, body: dict[str, Any], wall_ns: int) -> dict[str, Any]:
        """Record a verified 2D barcode sample (agent.samples), synced to headquarters like scans."""
        result = body.get("result")
        if not isinstance(result, dict) or "verdict" not in result:
            return {"ok": False, "error": "result (a sample verdict) is required"}
        at = rfc3339(wall_ns)
        data = {"promotion": str(body.get("promotion", ""))[:64], "statement_id": body.get("statement_id"),
                "mailing_date": str(body.get("mailing_date", "")), "mail_class": str(body.get("mail_class", "")),
                "shape": str(body.get("shape", "")), "verdict": result["verdict"], "checks": result.get("checks", []),
                "code": result.get("code"), "image_sha256": body.get("image_sha256"),
                "retain_until": body.get("retain_until")}
        sql = [("INSERT INTO samples (recorded_at, promotion, statement_id, mailing_date, mail_class, shape, verdict,"
                " image_path, image_sha256, retain_until, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, data["promotion"], data["statement_id"], data["mailing_date"], data["mail_class"], data["shape"],
                 data["verdict"], body.get("image_path"), data["image_sha256"], data["retain_until"],
                 __import__("json").dumps(result)))]
        try:
            self._commit_records([("sample", data, "sample-desk")], sql)
        except StorageError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "verdict": data["verdict"], "recorded_at": at}

    def _default_scanner(self) -> str:
        return next(iter(self.runners)) if len(self.runners) == 1 else "shell"

    def _mailing_log(self, op: str, body: dict[str, Any], wall_ns: int) -> dict[str, Any]:
        """Record of Mailings log (seed 000 §3): entries during an outage, completed after restoration."""
        from agent.mailing_log import add_statement, complete_statement

        try:
            if op == "mailing_log_add":
                data, sql = add_statement(body, rfc3339(wall_ns), self.workflow.declaration)
            else:
                data, sql = complete_statement(body, self.store.conn)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        try:
            self._commit_records([("mailing_log", data, "shell")], sql)
        except StorageError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "entry": data}

    def _finish(self, outcome: Outcome, from_scanner: bool = True) -> Outcome:
        runner = self.runners.get(outcome.scanner) if from_scanner else None
        if runner is not None:  # a command from the shell or the screen does not beep a scanner
            runner.signal(outcome.signal)
        self.last_outcome = outcome
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if self.board is not None:
            self.board.publish(self.snapshot())
        return outcome

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, until_done: bool = False) -> None:
        """Serve until ``stop`` is set (or, with ``until_done``, until every finite scanner is exhausted)."""
        for r in self.runners.values():
            r.start()
        if self.sync is not None:
            self.sync.start()
        if self.control is not None:
            self.control.start()
        # READY only once every scanner has had its first open attempt: a driver that opens after READY
        # (pyserial flushes the input on open) would drop a scan sent in between. Absent ones stay degraded.
        deadline = time.monotonic() + READY_WAIT_S
        while time.monotonic() < deadline and any(r.health.state == "starting" for r in self.runners.values()):
            time.sleep(0.01)
        self.notifier.ready(self.status_sentence())
        self.tick(force=True)
        try:
            while not stop.is_set():
                try:
                    item = self.queue.get(timeout=self.tick_s)
                except queue.Empty:
                    item = None
                if isinstance(item, RawScan):
                    self.handle(item)
                elif isinstance(item, ScannerDone):
                    self.done.add(item.scanner)
                elif isinstance(item, ControlRequest):
                    item.reply.put(self.handle_control(item.body))
                elif getattr(item, "outage_id", None) is not None and hasattr(item, "state"):
                    self.apply_hq_declaration(item)
                elif item is not None and self.sync is not None:
                    self.sync.handle(item)
                if self.sync is not None:
                    self.sync.tick(time.monotonic())
                self.tick()
                if until_done and self.done >= set(self.runners) and self.queue.empty():
                    break
        finally:
            self.notifier.stopping()
            for r in self.runners.values():
                r.stop()
            if self.sync is not None:
                self.sync.stop()
            if self.control is not None:
                self.control.stop()
            self.tick(force=True)
            self.notifier.close()

    def tick(self, force: bool = False) -> None:
        """Watchdog, status snapshot, periodic store upkeep."""
        now = time.monotonic()
        if not force and now - self._last_tick < self.tick_s:
            return
        self._last_tick = now
        self.notifier.watchdog()
        if force or now - self._last_backlog >= BACKLOG_EVERY_S:
            self._last_backlog = now
            self.refresh_backlog()
        if now - self._last_disk >= DISK_EVERY_S:
            self._last_disk = now
            self.store.watch_disk()
        if force or now - self._last_maintain >= MAINTAIN_EVERY_S:
            self._last_maintain = now
            self.store.maintain()
            self.notifier.status(self.status_sentence())
        if self.status_writer is not None or self.board is not None:
            snap = self.snapshot()
            if self.status_writer is not None:
                self.status_writer.write(snap, force=force)
            same = {k: v for k, v in snap.items() if k != "updated_at"}
            if self.board is not None and (force or same != self._last_board):
                self._last_board = same
                self.board.publish(snap)

    # -- health ------------------------------------------------------------------------------------------

    def refresh_backlog(self) -> None:
        rows, oldest, dead = self.store.backlog()
        age = None
        if oldest:
            age = max(0.0, (self.clock.wall_ns() - _parse_rfc3339_ns(oldest)) / 1e9)
        self.backlog = {"rows": rows, "oldest_at": oldest, "oldest_age_s": age, "dead_letters": dead}

    def status_facts(self) -> dict[str, Any]:
        """What the retained MQTT status carries (sync.service.DockSync.set_status_source)."""
        snap = self.snapshot()
        found = problems(snap)
        return {"mode": snap["mode"], "backlog": self.backlog, "health": "degraded" if found else "ok",
                "problems": found}

    def snapshot(self) -> dict[str, object]:
        disk = self.store.disk
        last = self.last_outcome
        return {
            "pid": os.getpid(),
            "updated_at": rfc3339(self.clock.wall_ns()),
            "started_at": rfc3339(self.started_wall_ns),
            "boot": self.store.boot,
            "device_id": self.store.device_id,
            "config_hash": self.config_hash,
            "mode": self.mode,
            "counts": dict(self.counts),
            "storage": {
                "level": disk.level, "free_mb": round(disk.free_bytes / 1048576, 1),
                "last_error": self.storage_error or disk.last_error, "refused": disk.refused,
                "ballast_present": disk.ballast_present,
            },
            "scanners": [r.health.as_dict() for r in self.runners.values()],
            "backlog": dict(self.backlog),
            "sync": self.sync.health() if self.sync is not None else None,
            "last": None if last is None else {
                "scanner": last.scanner, "barcode": last.text, "verdict": last.verdict, "reason": last.reason,
                "at": last.scanned_at, "display": last.display, "signal": last.signal,
            },
            "doors": self.doors(),
            "http": {"url": self.http_url, "error": self.http_error},
            "slice": self.slice_facts(),
        }

    def doors(self) -> list[dict[str, Any]]:
        """Each scanner's open load with its running counts and what is still missing."""
        out = []
        for name in sorted(set(self.runners) | set(self.workflow.doors)):
            door = self.workflow.door(name)
            summary = self.workflow.load_summary(door.load_id) if door.load_id else None
            out.append({"scanner": name, "appointment": door.appointment, "ticket": door.ticket, "form": door.form,
                        "operator": door.operator, "placard_mode": door.placard_mode,
                        "reject_next": door.reject_reason, "summary": summary})
        return out

    def slice_facts(self) -> dict[str, Any] | None:
        ref = self.workflow.slice
        if ref is None:
            return None
        age = (_dt(self.clock.wall_ns()) - ref.built_at).total_seconds()
        return {"version": getattr(ref, "version", None), "built_at": ref.built_at.isoformat(), "age_s": age,
                "stale": age > self.workflow.slice_max_age.total_seconds()}

    def status_sentence(self) -> str:
        return sentence(self.snapshot())


def _indicium(data: bytes) -> tuple[str, bytes] | None:
    """(symbology, payload) when a read is a binary Data Matrix / PDF417 (an IBI indicium), else None."""
    for prefix, symbology in ((b"]d", "datamatrix"), (b"]L", "pdf417")):
        if data.startswith(prefix) and len(data) > 3:
            payload = data[3:]
            if any(b < 0x20 and b not in (0x09, 0x0A, 0x0D, 0x1D) or b > 0x7E for b in payload):
                return symbology, payload
    return None


def _dt(wall_ns: int):  # type: ignore[no-untyped-def]
    import datetime as dt

    return dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.timezone.utc)


def _parse_rfc3339_ns(text: str) -> int:
    return int(parse_rfc3339(text).timestamp() * 1e9)


def _printable(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("latin-1")
    out = "".join(c if 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in text)
    return out + ("..." if len(data) > limit else "")

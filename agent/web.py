"""The dock's status screen and health endpoints, served by the agent itself (standard library only).

- ``/`` the status page (agent/static/status.html): last verdict in large type and colour, mode banner, each
  door's open load and what is missing, scanner health, link and backlog; live via Server-Sent Events.
- ``/events`` the SSE stream (one snapshot per change); ``/api/status`` the same snapshot as JSON.
- ``/healthz`` (process alive), ``/readyz`` (database writable and a scanner present; the link is reported
  but a missing broker is not unready), ``/metrics`` (Prometheus text format).
- ``POST /api/action`` dock-lead actions (open/close a load, declare an outage, all-clear) behind the lead PIN,
  run through the loop like the CLI's control requests.

Bound to 127.0.0.1 by default. Any other address needs a token (the ``http-token`` credential): the page is
opened once as ``/?token=...``, which sets a cookie.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Board:
    """The latest snapshot, published by the main loop, waited on by the page's event streams."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.version = 0
        self.snapshot: dict[str, Any] = {}

    def publish(self, snapshot: dict[str, Any]) -> None:
        with self._cond:
            self.snapshot = snapshot
            self.version += 1
            self._cond.notify_all()

    def wait(self, after: int, timeout_s: float) -> tuple[int, dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: self.version != after, timeout_s)
            return self.version, self.snapshot


def prometheus(snap: dict[str, Any], extra: dict[str, float] | None = None) -> str:
    """The snapshot as Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    scanners = snap.get("scanners") or []
    metric("dock_scans_total", "counter", "Frames read per scanner.",
           [({"scanner": s["name"]}, s.get("frames", 0)) for s in scanners])
    metric("dock_scanner_up", "gauge", "1 when the scanner is open.",
           [({"scanner": s["name"]}, 1 if s.get("state") in ("ok", "exhausted") else 0) for s in scanners])
    metric("dock_dropped_frames_total", "counter", "Frames dropped by the framer, per scanner.",
           [({"scanner": s["name"]}, sum((s.get("bad_frames") or {}).values())) for s in scanners])
    metric("dock_verdicts_total", "counter", "Reads by verdict since start.",
           [({"verdict": k}, v) for k, v in sorted((snap.get("counts") or {}).items())])
    backlog = snap.get("backlog") or {}
    metric("dock_backlog_rows", "gauge", "Events not yet acknowledged by headquarters.",
           [({}, backlog.get("rows", 0))])
    metric("dock_backlog_bytes", "gauge", "Size of the database holding the backlog, bytes.",
           [({}, (extra or {}).get("db_bytes", 0))])
    metric("dock_oldest_unsent_age_seconds", "gauge", "Age of the oldest unacknowledged event.",
           [({}, backlog.get("oldest_age_s") or 0)])
    metric("dock_dead_letters", "gauge", "Events the broker refused, kept for a technician.",
           [({}, backlog.get("dead_letters", 0))])
    sync = snap.get("sync") or {}
    metric("dock_link_up", "gauge", "1 when connected to the broker.",
           [({}, 1 if sync.get("state") == "connected" else 0)])
    metric("dock_reconnects_total", "counter", "Broker connections lost.", [({}, sync.get("reconnects", 0))])
    metric("dock_events_delivered_total", "counter", "Events acknowledged by headquarters this run.",
           [({}, sync.get("events_delivered", 0))])
    metric("dock_last_ack_age_seconds", "gauge", "Seconds since the last acknowledgement (-1: none yet).",
           [({}, (extra or {}).get("last_ack_age_s", -1))])
    storage = snap.get("storage") or {}
    metric("dock_disk_free_bytes", "gauge", "Free space where the database lives.",
           [({}, round((storage.get("free_mb") or 0) * 1048576))])
    metric("dock_scans_refused_total", "counter", "Scans refused because the disk was full.",
           [({}, storage.get("refused", 0))])
    metric("dock_certificate_expiry_seconds", "gauge", "Seconds until the client certificate expires (-1: none).",
           [({}, (extra or {}).get("cert_expiry_s", -1))])
    metric("dock_mode", "gauge", "1 for the current mode.",
           [({"mode": m}, 1 if snap.get("mode") == m else 0) for m in ("normal", "national_outage", "post_outage")])
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class WebServer:
    """A small threaded HTTP server for the screen, health and metrics."""

    def __init__(self, host: str, port: int, board: Board, *, ready: Callable[[], tuple[bool, dict[str, Any]]],
                 action: Callable[[dict[str, Any]], dict[str, Any]], lead_pin: str | None = None,
                 token: str | None = None, extra: Callable[[], dict[str, float]] | None = None) -> None:
        if host not in LOOPBACK and not token:
            raise ValueError(f"the status screen on {host} (beyond this box) needs a token: provide the "
                             "'http-token' credential, or bind to 127.0.0.1")
        self.board = board
        self.ready = ready
        self.action = action
        self.lead_pin = lead_pin
        self.token = token
        self.extra = extra or (lambda: {})
        self.page = resources.files("agent").joinpath("static", "status.html").read_bytes()
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self.failed_pins = 0

    def start(self) -> None:
        self._thread.start()
        log.info("status screen on http://%s:%d/", self.address[0], self.address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):  # type: ignore[no-untyped-def]
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "dock-agent"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the journal is for the dock's events
                log.debug("http: " + fmt, *args)

            def _authorised(self) -> bool:
                if not server.token:
                    return True
                query = parse_qs(urlsplit(self.path).query)
                cookie = self.headers.get("Cookie", "")
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                given = (query.get("token") or [""])[0] or bearer or next(
                    (c.split("=", 1)[1] for c in cookie.split("; ") if c.startswith("dock_token=")), "")
                return hmac.compare_digest(given.encode(), server.token.encode())

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = urlsplit(self.path).path
                if path == "/healthz":
                    return self._json(200, {"ok": True})
                if not self._authorised():
                    return self._json(401, {"error": "token required"})
                if path == "/":
                    headers = {}
                    if server.token:
                        headers["Set-Cookie"] = f"dock_token={server.token}; HttpOnly; SameSite=Strict; Path=/"
                    return self._send(200, server.page, "text/html; charset=utf-8", headers)
                if path == "/api/status":
                    return self._json(200, {**server.board.snapshot, "actions": bool(server.lead_pin)})
                if path == "/readyz":
                    ok, body = server.ready()
                    return self._json(200 if ok else 503, body)
                if path == "/metrics":
                    text = prometheus(server.board.snapshot, server.extra())
                    return self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
                if path == "/events":
                    return self._events()
                return self._json(404, {"error": f"no page {path}"})

            def _events(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                version = -1
                deadline = time.monotonic() + 3600
                try:
                    while time.monotonic() < deadline:
                        version, snap = server.board.wait(version, 15.0)
                        data = json.dumps({**snap, "actions": bool(server.lead_pin)})
                        self.wfile.write(f"id: {version}\ndata: {data}\n\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    return

            def do_POST(self) -> None:  # noqa: N802
                if urlsplit(self.path).path != "/api/action":
                    return self._json(404, {"error": "no such action endpoint"})
                if not self._authorised():
                    return self._json(401, {"error": "token required"})
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    if length > 4096:
                        raise ValueError("request too large")
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("a JSON object is expected")
                except ValueError as e:
                    return self._json(400, {"ok": False, "error": str(e)})
                if not server.lead_pin:
                    return self._json(403, {"ok": False, "error": "no dock lead PIN is configured on this box"})
                if not hmac.compare_digest(str(body.get("pin", "")).encode(), server.lead_pin.encode()):
                    server.failed_pins += 1
                    time.sleep(min(2.0, 0.2 * server.failed_pins))  # slow down guessing
                    return self._json(403, {"ok": False, "error": "wrong PIN"})
                server.failed_pins = 0
                return self._json(200, server.action(body))

        return Handler

"""The local control interface: a UNIX socket through which CLI subcommands (and the status screen) ask the
running agent to do what a command barcode would. The agent stays the only writer of its database: requests
are queued to the main loop, which answers after its commit.

Protocol: one JSON object per connection, one JSON reply. ``{"op": "command", "command": "LOAD", "arg":
"1234567890", "scanner": "door-1"}``, ``{"op": "outage", "kind": "outage"|"allclear", "by": "..."}``,
``{"op": "mailing_log_add", ...}``, ``{"op": "mailing_log_complete", ...}``. The socket is created 0660 in the
runtime directory: shell access to the box (root or the dock-agent group) is the authority.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024


@dataclass
class ControlRequest:
    """A request handed to the main loop; it puts the reply in ``reply``."""

    body: dict[str, Any]
    reply: queue.Queue[dict[str, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1))


class ControlServer:
    """Accepts local connections and forwards each request to the loop's queue."""

    def __init__(self, directory: Path, post: Any) -> None:
        self.path = directory / SOCKET_NAME
        self.post = post
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(self.path))
        os.chmod(self.path, 0o660)
        s.listen(8)
        s.settimeout(0.5)
        self._sock = s
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                data = b""
                while b"\n" not in data and len(data) < MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                body = json.loads(data.decode("utf-8"))
                if not isinstance(body, dict):
                    raise ValueError("a request is a JSON object")
            except (ValueError, UnicodeDecodeError, OSError) as e:
                self._send(conn, {"ok": False, "error": f"bad request: {e}"})
                return
            req = ControlRequest(body)
            self.post(req)
            try:
                answer = req.reply.get(timeout=10)
            except queue.Empty:
                answer = {"ok": False, "error": "the agent did not answer within 10 s"}
            self._send(conn, answer)

    @staticmethod
    def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
        try:
            conn.sendall(json.dumps(obj).encode() + b"\n")
        except OSError:
            pass


def call(directory: Path, body: dict[str, Any], timeout_s: float = 15.0) -> dict[str, Any]:
    """Send one request to a running agent (used by the CLI).

    Raises:
        ConnectionError: no agent listens in ``directory``.
    """
    path = directory / SOCKET_NAME
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        raise ConnectionError(f"no running agent answers on {path} ({e.strerror or e})") from None
    with s:
        s.sendall(json.dumps(body).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.decode()) if data else {"ok": False, "error": "no answer"}

"""systemd notify protocol (sd_notify): READY, WATCHDOG and STATUS; a no-op without NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET`` (a path, or '@name' for the abstract namespace)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        self._sock: socket.socket | None = None
        if self.address:
            # Non-blocking: a service manager that stops reading must never stall the scan loop.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines; returns False (never raises) when nobody is listening."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def watchdog(self) -> bool:
        """Feed the service manager's watchdog, if it asked for one (WatchdogSec=)."""
        return self.send("WATCHDOG=1") if self.watchdog_s > 0 else False

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

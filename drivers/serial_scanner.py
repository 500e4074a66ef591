"""Serial scanners (RS-232, or USB in CDC/virtual-COM mode) through pyserial."""

from __future__ import annotations

import threading
import time

import serial

from agent.settings import SerialScanner
from drivers.base import Signal
from drivers.framing import Framer


class SerialDriver:
    """Reads frames from a serial port and writes the configured feedback bytes back to it."""

    def __init__(self, cfg: SerialScanner) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._port: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._framer = Framer(
            bytes.fromhex(cfg.terminator), cfg.max_frame_bytes, int(cfg.inter_char_timeout_s * 1e9)
        )
        self._errors: list[str] = []
        self._signals: dict[str, bytes] = {
            "good": bytes.fromhex(cfg.feedback.good),
            "bad": bytes.fromhex(cfg.feedback.bad),
            "attention": bytes.fromhex(cfg.feedback.attention),
        }

    @property
    def exhausted(self) -> bool:
        return False

    def open(self) -> None:
        port = serial.Serial(
            self.cfg.port, baudrate=self.cfg.baud, bytesize=self.cfg.bytesize, parity=self.cfg.parity,
            stopbits=self.cfg.stopbits, timeout=0.05, write_timeout=0.5, exclusive=True,
        )
        with self._write_lock:
            self._port = port

    def read(self, timeout_s: float) -> list[bytes]:
        port = self._port
        if port is None:
            raise OSError(f"scanner {self.name!r}: port is not open")
        deadline = time.monotonic() + timeout_s
        frames: list[bytes] = []
        while True:
            chunk = port.read(max(1, min(port.in_waiting, 65536)))
            got, errors = self._framer.feed(chunk, time.monotonic_ns())
            frames += got
            self._errors += errors
            if frames or time.monotonic() >= deadline:
                return frames

    def close(self) -> None:
        self._errors += self._framer.reset()
        with self._write_lock:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except OSError:
                pass

    def signal(self, kind: Signal) -> None:
        data = self._signals[kind]
        if not data:
            return
        with self._write_lock:
            if self._port is None:
                return
            try:
                self._port.write(data)
            except (OSError, serial.SerialException):
                pass  # the reader thread sees the port fail and reopens it

    def take_frame_errors(self) -> list[str]:
        errors, self._errors = self._errors, []
        return errors

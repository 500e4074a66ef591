"""Scanner drivers behind one protocol (drivers.base.Scanner), built from configuration, imported lazily.

A box with serial scanners only never imports evdev or OpenCV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.settings import ScannerConfig
    from drivers.base import Scanner


def build(cfg: ScannerConfig) -> Scanner:
    """The driver for one configured scanner."""
    if cfg.type == "serial":
        from drivers.serial_scanner import SerialDriver

        return SerialDriver(cfg)
    if cfg.type == "hid":
        from drivers.hid_scanner import HidDriver

        return HidDriver(cfg)
    if cfg.type == "camera":
        from drivers.camera_scanner import CameraDriver

        return CameraDriver(cfg)
    if cfg.type == "replay":
        from drivers.replay import ReplayDriver

        return ReplayDriver(cfg)
    raise ValueError(f"no driver for scanner type {cfg.type!r}")

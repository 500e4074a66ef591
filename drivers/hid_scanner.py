"""USB keyboard-wedge scanners through the Linux input layer (python-evdev, imported only when one is built).

A wedge scanner is a USB keyboard that types each barcode and presses Enter. The driver finds it under
``/dev/input``, takes it exclusively (EVIOCGRAB) so no scan ever reaches a console or a desktop, and turns its
key events into scans with :class:`drivers.hid_keymap.KeyDecoder`.

Selecting the device: any of ``path`` (``/dev/input/by-id/...-event-kbd`` is stable across replugging and
reboots; ``/dev/input/eventN`` is not), ``device_name`` (exactly as ``evtest`` prints it) and ``usb_id``
(``vvvv:pppp``, hex); every one given must match. One driver drives one device: a name or USB id that matches
more than one keyboard-like device is refused with an error naming the matches (two scanners of the same
model are told apart by their by-id or by-path paths). Name and USB id searches consider only devices that
can type digits and Enter, so a scanner's extra consumer-control or mouse interfaces never match.

Hotplug and loss: ``open()`` searches again every time :class:`drivers.runner.ScannerRunner` retries, so a
scanner plugged in later, or plugged back in, is found within the runner's backoff cap. A read that fails
(ENODEV when the scanner is unplugged) raises OSError; the runner then calls :meth:`HidDriver.close`, which
drops any partial scan with the reason "device vanished mid-scan", ungrabs and closes the device.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import select
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from agent.errors import DriverError
from drivers.base import Signal
from drivers.hid_keymap import KeyDecoder

EV_SYN, EV_KEY = 0, 1
SYN_REPORT, SYN_DROPPED = 0, 3
_KEY_1, _KEY_ENTER = 2, 28
_MAX_EVENTS_PER_DRAIN = 2048  # a flood cannot keep read() from returning
_USB_ID = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$")


class DeviceInfo(Protocol):
    @property
    def vendor(self) -> int: ...

    @property
    def product(self) -> int: ...


class KeyEventLike(Protocol):
    """What the driver reads of an evdev.InputEvent."""

    sec: int
    usec: int
    type: int
    code: int
    value: int


class InputDeviceLike(Protocol):
    """The part of evdev.InputDevice the driver uses; tests pass a fake typed against it."""

    @property
    def path(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def info(self) -> DeviceInfo: ...

    def fileno(self) -> int: ...

    def read_one(self) -> KeyEventLike | None:
        """The next pending event or None; OSError (ENODEV) once the device is gone."""
        ...

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def close(self) -> None: ...

    def capabilities(self) -> Mapping[int, Sequence[object]]: ...

    def active_keys(self) -> Sequence[int]: ...


class HidSettings(Protocol):
    """The configuration the driver reads (agent.settings' HID scanner model)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str | None: ...
    @property
    def device_name(self) -> str | None: ...
    @property
    def usb_id(self) -> str | None: ...
    @property
    def layout(self) -> str: ...
    @property
    def terminators(self) -> Sequence[str]: ...
    @property
    def inter_key_timeout_s(self) -> float: ...
    @property
    def max_scan_chars(self) -> int: ...
    @property
    def grab(self) -> bool: ...


def event_paths(directory: str = "/dev/input") -> list[str]:
    """``/dev/input/event*`` in numeric order (unreadable ones too, so permission problems are reported)."""
    def number(p: str) -> int:
        digits = re.sub(r"\D", "", os.path.basename(p))
        return int(digits) if digits else -1

    return sorted(glob.glob(os.path.join(directory, "event*")), key=number)


def _usb_id(dev: InputDeviceLike) -> str:
    return f"{dev.info.vendor:04x}:{dev.info.product:04x}"


def _describe(dev: InputDeviceLike) -> str:
    return f"{dev.name!r} ({_usb_id(dev)}) at {dev.path}"


def _is_keyboard(dev: InputDeviceLike) -> bool:
    keys = dev.capabilities().get(EV_KEY, [])
    return _KEY_1 in keys and _KEY_ENTER in keys


class HidDriver:
    """One keyboard-wedge scanner: find, grab, decode, release.

    ``signal`` does nothing: the host cannot make a keyboard-wedge scanner beep or flash (the scanner beeps by
    itself when it has read a code, before the agent knows whether the read is usable), so good/bad feedback
    for HID scanners is only what the status screen shows.
    """

    def __init__(
        self, cfg: HidSettings, *, list_paths: Callable[[], list[str]] | None = None,
        open_device: Callable[[str], InputDeviceLike] | None = None,
    ) -> None:
        if not (cfg.path or cfg.device_name or cfg.usb_id):
            raise ValueError(f"scanner {cfg.name!r}: give a path, a device_name or a usb_id")
        if cfg.usb_id and not _USB_ID.match(cfg.usb_id):
            raise ValueError(f"scanner {cfg.name!r}: usb_id must be vvvv:pppp in hex, got {cfg.usb_id!r}")
        self.cfg = cfg
        self.name = cfg.name
        if open_device is None:
            try:
                import evdev
            except ImportError as e:
                raise DriverError(f"scanner {cfg.name!r}: python-evdev is not installed ({e})") from None
            open_device = evdev.InputDevice
        self._open_device = open_device
        self._list_paths = list_paths or event_paths
        self._decoder = KeyDecoder(
            cfg.layout, cfg.terminators, int(cfg.inter_key_timeout_s * 1e9), cfg.max_scan_chars
        )
        self._dev: InputDeviceLike | None = None
        self._grabbed = False
        self._lost = False
        self._syncing = False  # after SYN_DROPPED: skip events up to the next SYN_REPORT
        self._last_event_ns = 0
        self._pending_error: OSError | None = None
        self._errors: list[str] = []

    @property
    def exhausted(self) -> bool:
        return False

    @property
    def device(self) -> InputDeviceLike | None:
        """The device held now (None while absent)."""
        return self._dev

    # -- finding the device ---------------------------------------------------------------------------
    def _matches(self, dev: InputDeviceLike) -> bool:
        if self.cfg.device_name is not None and dev.name.strip() != self.cfg.device_name.strip():
            return False
        return self.cfg.usb_id is None or _usb_id(dev) == self.cfg.usb_id.lower()

    def _selector(self) -> str:
        parts = [f"{k}={v!r}" for k in ("path", "device_name", "usb_id") if (v := getattr(self.cfg, k))]
        return " ".join(parts)

    def find(self) -> InputDeviceLike:
        """Open the one device the configuration selects (not grabbed yet).

        Raises:
            OSError: no such device (absent, unplugged, or not readable by this user).
            DriverError: the selector matches several devices, or the path is another device.
        """
        if self.cfg.path:
            try:
                dev = self._open_device(self.cfg.path)
            except FileNotFoundError:
                raise OSError(errno.ENOENT, f"{self.cfg.path} does not exist (scanner unplugged?)") from None
            except PermissionError:
                raise OSError(errno.EACCES, f"{self.cfg.path}: permission denied; add the agent's user to "
                                            "group 'input'") from None
            if not self._matches(dev):
                found = _describe(dev)
                dev.close()
                raise DriverError(f"{self.cfg.path} is {found}, not the configured {self._selector()}")
            return dev
        matches: list[InputDeviceLike] = []
        seen: list[str] = []
        denied = 0
        for path in self._list_paths():
            try:
                dev = self._open_device(path)
            except PermissionError:
                denied += 1
                continue
            except OSError:
                continue  # vanished between listing and opening
            try:
                keyboard = _is_keyboard(dev)
            except OSError:
                keyboard = False
            if keyboard and self._matches(dev):
                matches.append(dev)
                continue
            if keyboard:
                seen.append(_describe(dev))
            dev.close()
        if len(matches) == 1:
            return matches[0]
        for dev in matches:
            dev.close()
        if matches:
            raise DriverError(
                f"{self._selector()} matches {len(matches)} devices: "
                + "; ".join(_describe(d) for d in matches)
                + ". Select one by its /dev/input/by-id (or by-path) path"
            )
        hint = ""
        if denied:
            hint = f"; {denied} input devices are not readable: add the agent's user to group 'input'"
        others = f"; keyboards present: {'; '.join(seen)}" if seen else "; no keyboard-like device present"
        raise OSError(errno.ENODEV, f"no input device matches {self._selector()}{others}{hint}")

    # -- the Scanner protocol -------------------------------------------------------------------------
    def open(self) -> None:
        dev = self.find()
        if self.cfg.grab:
            try:
                dev.grab()
            except OSError as e:
                dev.close()
                raise OSError(e.errno, f"cannot take {_describe(dev)} exclusively ({e.strerror}); "
                                       "another program holds it") from None
        self._grabbed = self.cfg.grab
        self._lost = False
        self._syncing = False
        self._last_event_ns = 0
        self._pending_error = None
        self._dev = dev

    def read(self, timeout_s: float) -> list[bytes]:
        dev = self._dev
        if dev is None:
            raise OSError(errno.ENODEV, f"scanner {self.name!r}: device is not open")
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        deadline = time.monotonic() + timeout_s
        frames: list[bytes] = []
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                ready, _, _ = select.select([dev], [], [], left)
            except (OSError, ValueError) as e:
                self._lost = True
                raise OSError(errno.ENODEV, f"{dev.path}: cannot wait for key events: {e}") from None
            if ready:
                try:
                    self._drain(dev, frames)
                except OSError as e:
                    if not frames:
                        raise
                    self._pending_error = e  # hand over the scans completed before the loss first
                    return frames
            self._errors += self._decoder.expire(time.monotonic_ns())
            if frames or time.monotonic() >= deadline:
                return frames

    def _drain(self, dev: InputDeviceLike, frames: list[bytes]) -> None:
        mono_now, wall_now = time.monotonic_ns(), time.time_ns()
        for _ in range(_MAX_EVENTS_PER_DRAIN):
            try:
                ev = dev.read_one()
            except BlockingIOError:
                return
            except OSError as e:
                self._lost = True
                what = "vanished (unplugged?)" if e.errno == errno.ENODEV else f"failed: {e.strerror or e}"
                raise OSError(e.errno or errno.EIO, f"{dev.path} {what}") from None
            if ev is None:
                return
            if ev.type == EV_SYN:
                if ev.code == SYN_DROPPED:
                    self._syncing = True
                    self._errors += self._decoder.reset("the kernel dropped key events (SYN_DROPPED)")
                elif ev.code == SYN_REPORT and self._syncing:
                    self._syncing = False
                    with contextlib.suppress(OSError):  # the next read reports the loss
                        self._decoder.resync(dev.active_keys())
                continue
            if ev.type != EV_KEY or self._syncing:
                continue
            got, errors = self._decoder.feed(ev.code, ev.value, self._event_ns(ev, mono_now, wall_now))
            frames += got
            self._errors += errors

    def _event_ns(self, ev: KeyEventLike, mono_now: int, wall_now: int) -> int:
        """The event's time on the monotonic clock.

        The kernel stamps events with the wall clock, which can step; the read time is monotonic but late by
        however long the events waited. So: read time minus the event's age by the wall clock, kept between
        the previous event's time and the read time (a wall-clock step can then only shorten a gap).
        """
        age = wall_now - (ev.sec * 1_000_000_000 + ev.usec * 1000)
        t = min(mono_now, max(self._last_event_ns, mono_now - max(0, age)))
        self._last_event_ns = t
        return t

    def close(self) -> None:
        why = "device vanished mid-scan" if self._lost else "device closed mid-scan"
        self._errors += self._decoder.reset(why)
        dev, self._dev = self._dev, None
        if dev is None:
            return
        if self._grabbed:
            self._grabbed = False
            with contextlib.suppress(OSError):  # a vanished device is released by the kernel
                dev.ungrab()
        with contextlib.suppress(OSError):
            dev.close()

    def signal(self, kind: Signal) -> None:
        """No-op: a keyboard-wedge scanner cannot be signalled by the host."""

    def take_frame_errors(self) -> list[str]:
        errors, self._errors = self._errors, []
        return errors

    @property
    def unknown_keys(self) -> int:
        """Key presses the layout had no character for, since the driver was built."""
        return self._decoder.unknown_keys

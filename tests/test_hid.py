"""USB keyboard-wedge scanners: key-event streams (evdev.InputEvent, since there is no /dev/uinput here)
decode to the right text on US and German layouts, partial scans are dropped with a reason, and a device that
vanishes mid-scan (ENODEV) is released and re-attached by a real ScannerRunner. What only hardware shows
(grab, by-id, hotplug) is in docs/hardware-checklist.md."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pytest
from evdev import InputEvent, ecodes
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import barcode
from agent.errors import DriverError
from drivers.base import RawScan
from drivers.hid_keymap import KEY, KeyDecoder
from drivers.hid_scanner import HidDriver, InputDeviceLike, KeyEventLike
from drivers.runner import ScannerRunner
from tests.conftest import ROOT

E = ecodes
GS = b"\x1d"
IMCB = "99M123456000000123456"
PIC = "9200191234567800000018"  # an IMpb tracking number (check digit 8)


# ----------------------------------------------------------------------------------------------------------
# Building key-event streams the way a scanner sends them


class Keys:
    """Key events as a scanner emits them: press/release pairs a few milliseconds apart, with SYN_REPORTs."""

    def __init__(self, t0: float | None = None, gap_s: float = 0.002, syn: bool = False) -> None:
        self.t = time.time() if t0 is None else t0
        self.gap_s = gap_s
        self.syn = syn
        self.events: list[InputEvent] = []

    def ev(self, code: int, value: int) -> Keys:
        sec = int(self.t)
        usec = round((self.t - sec) * 1e6)
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self.events.append(InputEvent(sec, usec, E.EV_KEY, code, value))
        if self.syn:
            self.events.append(InputEvent(sec, usec, E.EV_SYN, E.SYN_REPORT, 0))
        self.t += self.gap_s
        return self

    def tap(self, code: int, *mods: int) -> Keys:
        for m in mods:
            self.ev(m, 1)
        self.ev(code, 1).ev(code, 0)
        for m in reversed(mods):
            self.ev(m, 0)
        return self

    def pause(self, seconds: float) -> Keys:
        self.t += seconds
        return self

    def alt_code(self, digits: str, alt: int = E.KEY_LEFTALT) -> Keys:
        """Hold Alt, type ``digits`` on the keypad, release Alt (how wedge scanners send GS: Alt+029)."""
        self.ev(alt, 1)
        for d in digits:
            self.tap(E.ecodes[f"KEY_KP{d}"])
        return self.ev(alt, 0)

    def us(self, text: str, shift: int = E.KEY_LEFTSHIFT) -> Keys:
        """Type ``text`` as a US-layout scanner would (with a key map written here, not the driver's)."""
        for ch in text:
            code, shifted = US_KEYS[ch]
            self.tap(code, shift) if shifted else self.tap(code)
        return self

    def enter(self) -> Keys:
        return self.tap(E.KEY_ENTER)


def _us_keys() -> dict[str, tuple[int, bool]]:
    keys: dict[str, tuple[int, bool]] = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        keys[c] = (E.ecodes[f"KEY_{c.upper()}"], False)
        keys[c.upper()] = (E.ecodes[f"KEY_{c.upper()}"], True)
    for d in "0123456789":
        keys[d] = (E.ecodes[f"KEY_{d}"], False)
    for ch, name, shifted in [
        ("]", "RIGHTBRACE", False), ("[", "LEFTBRACE", False), ("-", "MINUS", False), ("/", "SLASH", False),
        (" ", "SPACE", False), (":", "SEMICOLON", True), ("(", "9", True), (")", "0", True), ("@", "2", True),
        (".", "DOT", False), ("#", "3", True), ("_", "MINUS", True), ("{", "LEFTBRACE", True),
    ]:
        keys[ch] = (E.ecodes[f"KEY_{name}"], shifted)
    return keys


US_KEYS = _us_keys()


def ns(ev: InputEvent) -> int:
    return ev.sec * 1_000_000_000 + ev.usec * 1000


def decode(events: Iterable[InputEvent], dec: KeyDecoder | None = None) -> tuple[list[bytes], list[str]]:
    dec = dec or KeyDecoder()
    frames: list[bytes] = []
    errors: list[str] = []
    for ev in events:
        if ev.type == E.EV_KEY:
            got, errs = dec.feed(ev.code, ev.value, ns(ev))
            frames += got
            errors += errs
    return frames, errors


# ----------------------------------------------------------------------------------------------------------
# The decoder (pure)


def test_key_codes_are_the_linux_numbers() -> None:
    for name, code in KEY.items():
        assert E.ecodes[name] == code, name


def test_keymap_does_not_import_evdev() -> None:
    code = ("import sys, drivers.hid_keymap, drivers.hid_scanner; "
            "print('evdev' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_lowercase_and_uppercase_with_either_shift() -> None:
    k = Keys().us("abc").us("XY").us("Z", shift=E.KEY_RIGHTSHIFT).enter()
    assert decode(k.events) == ([b"abcXYZ"], [])


def test_one_shift_released_while_the_other_is_held_still_shifts() -> None:
    k = Keys().ev(E.KEY_LEFTSHIFT, 1).ev(E.KEY_RIGHTSHIFT, 1).ev(E.KEY_LEFTSHIFT, 0).tap(E.KEY_A)
    k.ev(E.KEY_RIGHTSHIFT, 0).tap(E.KEY_A).enter()
    assert decode(k.events) == ([b"Aa"], [])


def test_caps_lock_changes_letters_not_digits_and_shift_inverts_it() -> None:
    k = Keys().tap(E.KEY_CAPSLOCK).us("ab12").tap(E.KEY_C, E.KEY_LEFTSHIFT).tap(E.KEY_1, E.KEY_LEFTSHIFT)
    k.tap(E.KEY_CAPSLOCK).us("d").enter()
    assert decode(k.events) == ([b"AB12c!d"], [])


def test_full_imcb_with_enter_is_a_container_label() -> None:
    frames, errors = decode(Keys().us(IMCB).enter().events)
    assert (frames, errors) == ([IMCB.encode()], [])
    label = barcode.parse(frames[0])
    assert isinstance(label, barcode.Label) and label.kind == "imcb"


def test_aim_prefix_right_bracket_is_unshifted_on_us() -> None:
    assert US_KEYS["]"] == (E.KEY_RIGHTBRACE, False)
    frames, errors = decode(Keys().us("]C1" + IMCB).enter().events)
    assert frames == [b"]C1" + IMCB.encode()] and not errors
    label = barcode.parse(frames[0])
    assert isinstance(label, barcode.Label) and label.kind == "imcb" and label.symbology == "gs1-128"


@pytest.mark.parametrize("digits", ["029", "29", "0029"])
def test_alt_numpad_gs_inside_an_impb(digits: str) -> None:
    k = Keys().us("42020260").alt_code(digits).us(PIC).enter()
    frames, errors = decode(k.events)
    assert (frames, errors) == ([b"42020260" + GS + PIC.encode()], [])
    label = barcode.parse(frames[0])
    assert isinstance(label, barcode.Label) and label.kind == "impb"
    assert label.fields["routing_zip"] == "20260" and label.fields["pic"] == PIC


def test_alt_numpad_with_right_alt_on_us_and_other_control_characters() -> None:
    k = Keys().alt_code("30", alt=E.KEY_RIGHTALT).alt_code("04").alt_code("0233").enter()
    assert decode(k.events) == ([b"\x1e\x04\xe9"], [])


def test_ctrl_right_bracket_is_gs_on_us() -> None:
    k = Keys().us("42020260").tap(E.KEY_RIGHTBRACE, E.KEY_LEFTCTRL).us(PIC).enter()
    assert decode(k.events) == ([b"42020260" + GS + PIC.encode()], [])


def test_alt_numpad_code_over_255_drops_the_scan() -> None:
    frames, errors = decode(Keys().us("12").alt_code("300").us("3").enter().events)
    assert frames == [] and errors == ["scan dropped: Alt+numpad code 300 is over 255"]


def test_alt_numpad_not_finished_before_enter_drops_the_scan() -> None:
    k = Keys().us("12").ev(E.KEY_LEFTALT, 1).tap(E.KEY_KP2).tap(E.KEY_KP9).enter().ev(E.KEY_LEFTALT, 0)
    frames, errors = decode(k.events)
    assert frames == [] and errors == ["scan dropped: Alt+numpad sequence unfinished at the terminator"]


def test_alt_with_a_normal_key_is_unmapped() -> None:
    frames, errors = decode(Keys().us("12").tap(E.KEY_F, E.KEY_LEFTALT).enter().events)
    assert frames == [] and errors == ["scan dropped: Alt+KEY_F has no character in layout 'us'"]


def test_german_layout_swaps_y_z_and_types_umlauts_sharp_s_and_altgr_symbols() -> None:
    dec = KeyDecoder("de")
    k = Keys()
    k.tap(E.KEY_Y).tap(E.KEY_Z).tap(E.KEY_Y, E.KEY_LEFTSHIFT)  # z y Z
    k.tap(E.KEY_MINUS).tap(E.KEY_APOSTROPHE).tap(E.KEY_SEMICOLON)  # ß ä ö
    k.tap(E.KEY_LEFTBRACE, E.KEY_RIGHTSHIFT)  # Ü
    altgr = E.KEY_RIGHTALT
    k.tap(E.KEY_Q, altgr).tap(E.KEY_8, altgr).tap(E.KEY_9, altgr)  # @ [ ]
    k.tap(E.KEY_MINUS, altgr).tap(E.KEY_102ND, altgr).tap(E.KEY_RIGHTBRACE, altgr)  # \ | ~
    k.tap(E.KEY_7, E.KEY_LEFTSHIFT).tap(E.KEY_3, E.KEY_LEFTSHIFT).tap(E.KEY_2, E.KEY_LEFTSHIFT)  # / § "
    k.tap(E.KEY_SLASH).tap(E.KEY_SLASH, E.KEY_LEFTSHIFT).tap(E.KEY_RIGHTBRACE).tap(E.KEY_BACKSLASH)  # - _ + #
    k.tap(E.KEY_KPDOT).tap(E.KEY_Q, E.KEY_LEFTCTRL, E.KEY_LEFTALT)  # keypad ',' and Ctrl+Alt+Q = AltGr+Q = @
    k.tap(E.KEY_CAPSLOCK).tap(E.KEY_APOSTROPHE).tap(E.KEY_MINUS).tap(E.KEY_CAPSLOCK)  # Caps: Ä, ß stays
    frames, errors = decode(k.enter().events, dec)
    assert errors == []
    assert frames == ["zyZßäöÜ@[]\\|~/§\"-_+#,@Äß".encode("latin-1")]


def test_german_scanner_decoded_as_us_gives_wrong_text_so_layout_must_match() -> None:
    k = Keys().tap(E.KEY_Z).tap(E.KEY_Y).enter()
    assert decode(k.events, KeyDecoder("de"))[0] == [b"yz"]
    assert decode(k.events, KeyDecoder("us"))[0] == [b"zy"]


def test_german_dead_keys_compose_and_nodeadkeys_types_them_at_once() -> None:
    k = Keys().tap(E.KEY_GRAVE).tap(E.KEY_SPACE)  # ^ then space = ^
    k.tap(E.KEY_GRAVE).tap(E.KEY_A)  # ^ a = â
    k.tap(E.KEY_EQUAL).tap(E.KEY_E, E.KEY_LEFTSHIFT)  # ´ E = É
    k.tap(E.KEY_EQUAL, E.KEY_LEFTSHIFT).tap(E.KEY_1)  # ` 1 = `1
    k.tap(E.KEY_GRAVE).enter()  # a pending accent is typed before the terminator
    assert decode(k.events, KeyDecoder("de")) == (["^âÉ`1^".encode("latin-1")], [])
    k2 = Keys().tap(E.KEY_GRAVE).tap(E.KEY_A).enter()
    assert decode(k2.events, KeyDecoder("de_nodeadkeys")) == ([b"^a"], [])


def test_german_euro_sign_has_no_latin1_byte_and_drops_the_scan() -> None:
    frames, errors = decode(Keys().tap(E.KEY_1).tap(E.KEY_E, E.KEY_RIGHTALT).enter().events, KeyDecoder("de"))
    assert frames == [] and errors == ["scan dropped: '€' has no Latin-1 byte"]


def test_german_impb_with_gs_by_alt_numpad() -> None:
    k = Keys()
    for d in "42020260":
        k.tap(E.ecodes[f"KEY_{d}"])
    k.alt_code("029")
    for d in PIC:
        k.tap(E.ecodes[f"KEY_{d}"])
    assert decode(k.enter().events, KeyDecoder("de")) == ([b"42020260" + GS + PIC.encode()], [])


def test_keypad_enter_terminates_by_default_and_keypad_digits_are_digits() -> None:
    k = Keys().us("99M").tap(E.KEY_KP1).tap(E.KEY_KP2).tap(E.KEY_KPENTER)
    assert decode(k.events) == ([b"99M12"], [])


def test_tab_terminates_only_when_configured() -> None:
    k = Keys().us("abc").tap(E.KEY_TAB).us("def").enter()
    assert decode(k.events) == ([b"abc\tdef"], [])
    assert decode(k.events, KeyDecoder(terminators=("enter", "tab"))) == ([b"abc", b"def"], [])
    assert decode(k.events, KeyDecoder(terminators=("tab",))) == ([b"abc"], [])  # then "def\r" stays partial


def test_unknown_terminator_or_layout_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="choose from enter, kp_enter, tab"):
        KeyDecoder(terminators=("esc",))
    with pytest.raises(ValueError, match="choose one of us, de, de_nodeadkeys"):
        KeyDecoder("fr")


def test_inter_key_timeout_drops_the_partial_with_a_reason_and_never_emits_it() -> None:
    dec = KeyDecoder(timeout_ns=200_000_000)
    k = Keys().us("99M1234").pause(0.5).us(IMCB).enter()
    frames, errors = decode(k.events, dec)
    assert frames == [IMCB.encode()]
    assert errors == ["partial scan dropped: no key for 0.2 s before a terminator"]


def test_idle_partial_expires_without_further_keys() -> None:
    dec = KeyDecoder(timeout_ns=200_000_000)
    k = Keys().us("99M1234")
    frames, errors = decode(k.events, dec)
    assert frames == [] and errors == [] and dec.partial
    last = ns(k.events[-1])
    assert dec.expire(last + 150_000_000) == []
    assert dec.expire(last + 250_000_000) == ["partial scan dropped: no key for 0.2 s before a terminator"]
    assert not dec.partial and dec.expire(last + 10**10) == []
    assert decode(Keys(t0=k.t + 5).enter().events, dec) == ([], [])  # the partial is gone, not completed


def test_slow_but_steady_keys_within_the_timeout_are_one_scan() -> None:
    k = Keys(gap_s=0.15).us("1234").enter()
    assert decode(k.events, KeyDecoder(timeout_ns=200_000_000)) == ([b"1234"], [])


def test_autorepeat_is_ignored_and_counted() -> None:
    dec = KeyDecoder()
    k = Keys().ev(E.KEY_1, 1).ev(E.KEY_1, 2).ev(E.KEY_1, 2).ev(E.KEY_1, 2).ev(E.KEY_1, 0).us("2").enter()
    assert decode(k.events, dec) == ([b"12"], [])
    assert dec.repeats == 3


def test_unknown_keys_are_counted_and_drop_their_scan_only() -> None:
    dec = KeyDecoder()
    k = Keys().us("123").tap(E.KEY_F5).tap(E.KEY_UP).us("4").enter().us(IMCB).enter()
    frames, errors = decode(k.events, dec)
    assert frames == [IMCB.encode()]
    assert errors == ["scan dropped: KEY_F5 has no character in layout 'us'"]
    assert dec.unknown_keys == 2


def test_modifier_only_keys_and_numlock_are_not_unknown() -> None:
    dec = KeyDecoder()
    k = Keys().tap(E.KEY_NUMLOCK).tap(E.KEY_LEFTMETA).tap(E.KEY_LEFTCTRL).us("7").enter()
    assert decode(k.events, dec) == ([b"7"], []) and dec.unknown_keys == 0


def test_enter_alone_is_no_scan() -> None:
    assert decode(Keys().enter().enter().tap(E.KEY_KPENTER).events) == ([], [])


def test_a_10000_character_flood_is_bounded_and_reported_once() -> None:
    dec = KeyDecoder(max_chars=4096)
    k = Keys(gap_s=0.0005)
    for i in range(10_000):
        k.tap(E.ecodes[f"KEY_{i % 10}"])
    frames, errors = decode(k.events, dec)
    assert frames == [] and errors == ["scan dropped: over 4096 characters without a terminator"]
    assert dec.buffered == 0
    frames, errors = decode(Keys(t0=k.t).enter().us(IMCB).enter().events, dec)
    assert frames == [IMCB.encode()] and errors == []  # the flood's Enter ended it silently


def test_a_scan_of_exactly_max_chars_passes() -> None:
    assert decode(Keys().us("1" * 64).enter().events, KeyDecoder(max_chars=64)) == ([b"1" * 64], [])


_CODES = st.sampled_from(sorted(set(KEY.values()) | {0, 200, 255, 0x2FF}))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(_CODES, st.integers(-1, 3), st.integers(0, 400_000_000)), max_size=300),
       st.sampled_from(["us", "de", "de_nodeadkeys"]))
def test_any_event_stream_decodes_without_raising_and_frames_are_bounded(
    events: list[tuple[int, int, int]], layout: str
) -> None:
    dec = KeyDecoder(layout, ("enter", "kp_enter", "tab"), timeout_ns=300_000_000, max_chars=32)
    t = 0
    for code, value, gap in events:
        t += gap
        frames, errors = dec.feed(code, value, t)
        for f in frames:
            assert 0 < len(f) <= 32
            f.decode("latin-1")
        assert all(isinstance(e, str) and e for e in errors)
    dec.expire(t + 10**9)
    assert not dec.partial


# ----------------------------------------------------------------------------------------------------------
# A thin fake input device, typed against the driver's protocol


@dataclass
class FakeInfo:
    vendor: int
    product: int


VANISH = object()


class FakeDevice:
    """A plugged-in scanner (the physical device): key events it sends reach every open handle."""

    def __init__(self, path: str, name: str, vendor: int, product: int, keyboard: bool = True) -> None:
        self.path = path
        self.name = name
        self.info = FakeInfo(vendor, product)
        self.caps: Mapping[int, Sequence[int]] = (
            {E.EV_KEY: sorted(KEY.values()), E.EV_MSC: [E.MSC_SCAN]} if keyboard
            else {E.EV_KEY: [E.KEY_VOLUMEUP, E.KEY_MUTE]}
        )
        self.handles: list[FakeHandle] = []
        self.gone = False
        self.grabbed_by: object | None = None
        self.ungrabs = 0
        self.held: list[int] = []

    def push(self, events: Iterable[InputEvent], then_vanish: bool = False) -> None:
        """Send events; ``then_vanish``: the cable is pulled right after the reader has taken them."""
        events = list(events) + ([VANISH] if then_vanish else [])  # type: ignore[list-item]
        for h in list(self.handles):
            if self.grabbed_by in (None, h):
                h.push(events)

    def vanish(self) -> None:
        self.gone = True
        for h in list(self.handles):
            h.wake()


class FakeHandle:
    """One open of a FakeDevice, standing in for evdev.InputDevice: a pipe makes it selectable."""

    def __init__(self, dev: FakeDevice) -> None:
        self.dev = dev
        self.path, self.name, self.info = dev.path, dev.name, dev.info
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._events: deque[object] = deque()
        self._lock = threading.Lock()
        self.closed = False
        dev.handles.append(self)

    def fileno(self) -> int:
        return self._r

    def push(self, events: list[object]) -> None:
        with self._lock:
            self._events.extend(events)
            os.write(self._w, b"!")

    def wake(self) -> None:
        with self._lock:
            os.write(self._w, b"!")

    def read_one(self) -> KeyEventLike | None:
        with self._lock:
            if self.dev.gone:
                raise OSError(errno.ENODEV, "No such device")
            if self._events:
                ev = self._events.popleft()
                if isinstance(ev, InputEvent):
                    return ev
                self.dev.gone = True
                raise OSError(errno.ENODEV, "No such device")
            with contextlib.suppress(BlockingIOError):
                os.read(self._r, 4096)
            return None

    def grab(self) -> None:
        if self.dev.gone:
            raise OSError(errno.ENODEV, "No such device")
        if self.dev.grabbed_by is not None:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.dev.grabbed_by = self

    def ungrab(self) -> None:
        self.dev.ungrabs += 1
        if self.dev.gone:
            raise OSError(errno.ENODEV, "No such device")
        if self.dev.grabbed_by is self:
            self.dev.grabbed_by = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.dev.handles.remove(self)
            if self.dev.grabbed_by is self:
                self.dev.grabbed_by = None  # closing the fd releases a grab, as in the kernel
            os.close(self._r)
            os.close(self._w)

    def capabilities(self) -> Mapping[int, Sequence[object]]:
        return self.dev.caps

    def active_keys(self) -> Sequence[int]:
        if self.dev.gone:
            raise OSError(errno.ENODEV, "No such device")
        return list(self.dev.held)


class FakeInput:
    """/dev/input: devices plugged at paths; every open is a new handle."""

    def __init__(self) -> None:
        self.plugged: dict[str, FakeDevice] = {}
        self.denied: set[str] = set()
        self.opened: list[FakeHandle] = []

    def plug(self, path: str, name: str = "Honeywell Imaging & Mobility 1900", vendor: int = 0x0C2E,
             product: int = 0x0B61, keyboard: bool = True) -> FakeDevice:
        dev = FakeDevice(path, name, vendor, product, keyboard)
        self.plugged[path] = dev
        return dev

    def unplug(self, path: str) -> FakeDevice:
        dev = self.plugged.pop(path)
        dev.vanish()
        return dev

    def list_paths(self) -> list[str]:
        return sorted(self.plugged) + sorted(self.denied)

    def open_device(self, path: str) -> InputDeviceLike:
        if path in self.denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        dev = self.plugged.get(path)
        if dev is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        handle = FakeHandle(dev)
        self.opened.append(handle)
        return handle


@dataclass(frozen=True)
class Cfg:
    """The fields of the proposed HID scanner model in agent.settings (see the driver's HidSettings)."""

    name: str = "door2"
    path: str | None = None
    device_name: str | None = None
    usb_id: str | None = None
    layout: str = "us"
    terminators: tuple[str, ...] = ("enter", "kp_enter")
    inter_key_timeout_s: float = 0.5
    max_scan_chars: int = 4096
    grab: bool = True


BY_ID = "/dev/input/by-id/usb-Honeywell_Imaging___Mobility_1900_21123B0405-event-kbd"


def driver(bus: FakeInput, **kw: object) -> HidDriver:
    return HidDriver(Cfg(**kw), list_paths=bus.list_paths, open_device=bus.open_device)  # type: ignore[arg-type]


def read_until(drv: HidDriver, n: int, timeout_s: float = 3.0) -> list[bytes]:
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < n and time.monotonic() < deadline:
        frames += drv.read(0.05)
    return frames


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
    return time.monotonic() - start


# ----------------------------------------------------------------------------------------------------------
# Selecting, grabbing, reading


def test_select_by_by_id_path_grab_read_and_release() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID)
    drv.open()
    assert dev.grabbed_by is drv.device is not None
    dev.push(Keys(syn=True).us(IMCB).enter().events)
    assert read_until(drv, 1) == [IMCB.encode()]
    drv.close()
    assert dev.grabbed_by is None and not dev.handles and dev.ungrabs == 1
    drv.close()  # safe twice
    assert drv.take_frame_errors() == []


def test_select_by_name_or_usb_id_ignores_the_scanners_non_keyboard_interfaces() -> None:
    bus = FakeInput()
    bus.plug("/dev/input/event2", name="AT Translated Set 2 keyboard", vendor=0x0001, product=0x0001)
    bus.plug("/dev/input/event5", keyboard=False)  # the scanner's consumer-control interface: same name, id
    scanner = bus.plug("/dev/input/event6")
    for kw in ({"device_name": "Honeywell Imaging & Mobility 1900"}, {"usb_id": "0C2E:0B61"},
               {"usb_id": "0c2e:0b61", "device_name": "Honeywell Imaging & Mobility 1900"}):
        drv = driver(bus, **kw)
        drv.open()
        assert isinstance(drv.device, FakeHandle) and drv.device.dev is scanner
        drv.close()
    assert all(h.closed for h in bus.opened)  # every device looked at was closed again


def test_ambiguous_selector_is_refused_naming_the_matches() -> None:
    bus = FakeInput()
    bus.plug("/dev/input/event6")
    bus.plug("/dev/input/event9")
    with pytest.raises(DriverError, match=r"matches 2 devices: .*event6.*event9.*by-id"):
        driver(bus, usb_id="0c2e:0b61").open()
    assert all(h.closed for h in bus.opened)


def test_no_match_names_the_keyboards_present_and_permission_problems() -> None:
    bus = FakeInput()
    bus.plug("/dev/input/event2", name="AT Translated Set 2 keyboard", vendor=0x0001, product=0x0001)
    bus.denied.add("/dev/input/event7")
    with pytest.raises(OSError) as ei:
        driver(bus, usb_id="0c2e:0b61").open()
    msg = str(ei.value)
    assert "no input device matches usb_id='0c2e:0b61'" in msg
    assert "'AT Translated Set 2 keyboard' (0001:0001) at /dev/input/event2" in msg
    assert "group 'input'" in msg
    with pytest.raises(OSError, match="does not exist"):
        driver(bus, path=BY_ID).open()


def test_a_path_to_another_device_is_refused_when_name_or_id_is_given() -> None:
    bus = FakeInput()
    bus.plug("/dev/input/event2", name="AT Translated Set 2 keyboard", vendor=0x0001, product=0x0001)
    with pytest.raises(DriverError, match="is 'AT Translated.*not the configured"):
        driver(bus, path="/dev/input/event2", usb_id="0c2e:0b61").open()


def test_a_device_grabbed_elsewhere_is_reported_and_not_held() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    dev.grabbed_by = "another program"
    with pytest.raises(OSError, match="exclusively.*another program holds it"):
        driver(bus, path=BY_ID).open()
    assert not dev.handles and dev.grabbed_by == "another program"


def test_selector_is_required_and_usb_id_checked() -> None:
    with pytest.raises(ValueError, match="path, a device_name or a usb_id"):
        driver(FakeInput())
    with pytest.raises(ValueError, match="vvvv:pppp"):
        driver(FakeInput(), usb_id="0c2e-0b61")


def test_partial_scan_times_out_through_the_driver() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID, inter_key_timeout_s=0.1)
    drv.open()
    dev.push(Keys().us("99M123").events)
    assert read_until(drv, 1, timeout_s=0.4) == []
    assert drv.take_frame_errors() == ["partial scan dropped: no key for 0.1 s before a terminator"]
    drv.close()
    assert drv.take_frame_errors() == []


def test_kernel_dropped_events_drop_the_partial_and_resync_modifiers() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID)
    drv.open()
    k = Keys().us("99M12")
    t = k.t
    dev.held = [E.KEY_LEFTSHIFT]  # Shift is down when the kernel's buffer overflowed
    k.events += [
        InputEvent(int(t), 0, E.EV_SYN, E.SYN_DROPPED, 0),
        InputEvent(int(t), 0, E.EV_KEY, E.KEY_9, 1),  # lost with the overflow: skipped up to the SYN_REPORT
        InputEvent(int(t), 0, E.EV_SYN, E.SYN_REPORT, 0),
    ]
    k.tap(E.KEY_A).ev(E.KEY_LEFTSHIFT, 0).us("b").enter()
    dev.push(k.events)
    assert read_until(drv, 1) == [b"Ab"]
    assert drv.take_frame_errors() == ["partial scan dropped: the kernel dropped key events (SYN_DROPPED)"]
    drv.close()


def test_signal_is_a_no_op() -> None:
    bus = FakeInput()
    bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID)
    for kind in ("good", "bad", "attention"):
        drv.signal(kind)  # type: ignore[arg-type]
    drv.open()
    drv.signal("good")
    drv.close()


# ----------------------------------------------------------------------------------------------------------
# In a real ScannerRunner: ENODEV mid-scan, re-attach, late plug, several scanners


def scans(out: queue.Queue[object]) -> list[RawScan]:
    got = []
    while True:
        try:
            item = out.get_nowait()
        except queue.Empty:
            return got
        assert isinstance(item, RawScan)
        got.append(item)


def test_enodev_mid_scan_drops_the_partial_releases_and_reattaches() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID, name="door2")
    runner = ScannerRunner(drv, "hid", cap_s=0.3)
    runner.start()
    try:
        wait_for(lambda: runner.health.state == "ok" and dev.grabbed_by is drv.device is not None)
        dev.push(Keys().us(IMCB).enter().events)
        wait_for(lambda: runner.health.frames == 1)
        dev.push(Keys().us("99M1234").events)  # half a scan ...
        time.sleep(0.1)
        bus.unplug(BY_ID)  # ... and the cable is pulled
        wait_for(lambda: runner.health.state == "absent")
        assert "vanished" in runner.health.last_error
        wait_for(lambda: not dev.handles)
        assert dev.ungrabs == 1 and drv.device is None
        wait_for(lambda: runner.health.bad_frames.get("partial scan dropped: device vanished mid-scan") == 1)
        time.sleep(0.5)  # it stays absent (retrying) while the scanner is away
        assert runner.health.state == "absent" and "does not exist" in runner.health.last_error
        back = bus.plug(BY_ID)  # plugged back in
        t0 = time.monotonic()
        wait_for(lambda: runner.health.state == "ok")
        assert time.monotonic() - t0 <= 2.0
        assert runner.health.opens == 2 and back.grabbed_by is drv.device is not None
        back.push(Keys().us("]C1" + IMCB).enter().events)
        wait_for(lambda: runner.health.frames == 2)
    finally:
        runner.stop()
    got = scans(runner.out)
    assert [s.data for s in got] == [IMCB.encode(), b"]C1" + IMCB.encode()]  # the partial never became a scan
    assert all(s.scanner == "door2" for s in got)
    assert runner.health.state == "stopped"
    assert not back.handles and back.grabbed_by is None


def test_scans_completed_just_before_the_loss_are_delivered_first() -> None:
    bus = FakeInput()
    dev = bus.plug(BY_ID)
    drv = driver(bus, path=BY_ID)
    drv.open()
    dev.push(Keys().us(IMCB).enter().us("99M12").events, then_vanish=True)
    assert drv.read(1.0) == [IMCB.encode()]
    with pytest.raises(OSError, match="vanished"):
        drv.read(1.0)
    drv.close()
    assert drv.take_frame_errors() == ["partial scan dropped: device vanished mid-scan"]
    assert dev.ungrabs == 1 and not dev.handles


def test_a_scanner_plugged_in_later_is_found() -> None:
    bus = FakeInput()
    runner = ScannerRunner(driver(bus, usb_id="0c2e:0b61"), "hid", cap_s=0.3)
    runner.start()
    try:
        wait_for(lambda: runner.health.state == "absent")
        assert "no input device matches usb_id='0c2e:0b61'" in runner.health.last_error
        time.sleep(0.5)
        dev = bus.plug("/dev/input/event11")
        assert wait_for(lambda: runner.health.state == "ok") <= 2.0
        dev.push(Keys().us(IMCB).enter().events)
        wait_for(lambda: runner.health.frames == 1)
    finally:
        runner.stop()
    assert [s.data for s in scans(runner.out)] == [IMCB.encode()]


def test_several_scanners_at_once_each_with_its_own_layout() -> None:
    bus = FakeInput()
    us_dev = bus.plug("/dev/input/event6", name="Zebra Symbol DS2208", vendor=0x05E0, product=0x1200)
    de_dev = bus.plug("/dev/input/event8")
    out: queue.Queue[object] = queue.Queue()
    runners = [
        ScannerRunner(driver(bus, name="door1", usb_id="05e0:1200"), "hid", out, cap_s=0.3),
        ScannerRunner(driver(bus, name="door2", device_name="Honeywell Imaging & Mobility 1900", layout="de"),
                      "hid", out, cap_s=0.3),
    ]
    for r in runners:
        r.start()
    try:
        wait_for(lambda: all(r.health.state == "ok" for r in runners))
        us_dev.push(Keys().us("zy1").enter().events)
        de_dev.push(Keys().us("zy2").enter().events)  # the same keys on a German scanner are "yz"
        wait_for(lambda: all(r.health.frames == 1 for r in runners))
    finally:
        for r in runners:
            r.stop()
    assert sorted((s.scanner, s.data) for s in scans(out)) == [("door1", b"zy1"), ("door2", b"yz2")]

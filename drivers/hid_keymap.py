"""Turns keyboard-wedge key events into scans: layouts, Shift/Caps/AltGr/Ctrl, Alt+numpad, terminators. Pure.

No evdev import: key codes are the Linux numbers of ``<linux/input-event-codes.h>`` (the same values as
``evdev.ecodes``). A USB scanner in keyboard mode "types" each character with the key a person would press on
the layout it was configured for, so the host must know that layout: ``y`` on a German scanner is the key
that is ``z`` on a US keyboard. Control characters (the GS that separates an IMpb's ZIP from its tracking
number) arrive as Alt + keypad digits (Alt+029) or as Ctrl + key (Ctrl+] on a US layout).

:class:`KeyDecoder` is fed one ``(code, value, time_ns)`` at a time (value 1 press, 0 release, 2 autorepeat)
and, like :class:`drivers.framing.Framer`, returns complete scans as Latin-1 bytes plus the reasons for every
scan it dropped. A scan is dropped, never emitted, when it has no terminator within the inter-key timeout,
grows past ``max_chars``, or contains a key the layout cannot turn into a character.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

# Linux key codes (input-event-codes.h); tests check each against evdev.ecodes.
KEY: dict[str, int] = {
    "KEY_ESC": 1, "KEY_1": 2, "KEY_2": 3, "KEY_3": 4, "KEY_4": 5, "KEY_5": 6, "KEY_6": 7, "KEY_7": 8,
    "KEY_8": 9, "KEY_9": 10, "KEY_0": 11, "KEY_MINUS": 12, "KEY_EQUAL": 13, "KEY_BACKSPACE": 14,
    "KEY_TAB": 15, "KEY_Q": 16, "KEY_W": 17, "KEY_E": 18, "KEY_R": 19, "KEY_T": 20, "KEY_Y": 21,
    "KEY_U": 22, "KEY_I": 23, "KEY_O": 24, "KEY_P": 25, "KEY_LEFTBRACE": 26, "KEY_RIGHTBRACE": 27,
    "KEY_ENTER": 28, "KEY_LEFTCTRL": 29, "KEY_A": 30, "KEY_S": 31, "KEY_D": 32, "KEY_F": 33, "KEY_G": 34,
    "KEY_H": 35, "KEY_J": 36, "KEY_K": 37, "KEY_L": 38, "KEY_SEMICOLON": 39, "KEY_APOSTROPHE": 40,
    "KEY_GRAVE": 41, "KEY_LEFTSHIFT": 42, "KEY_BACKSLASH": 43, "KEY_Z": 44, "KEY_X": 45, "KEY_C": 46,
    "KEY_V": 47, "KEY_B": 48, "KEY_N": 49, "KEY_M": 50, "KEY_COMMA": 51, "KEY_DOT": 52, "KEY_SLASH": 53,
    "KEY_RIGHTSHIFT": 54, "KEY_KPASTERISK": 55, "KEY_LEFTALT": 56, "KEY_SPACE": 57, "KEY_CAPSLOCK": 58,
    "KEY_F1": 59, "KEY_F2": 60, "KEY_F3": 61, "KEY_F4": 62, "KEY_F5": 63, "KEY_F6": 64, "KEY_F7": 65,
    "KEY_F8": 66, "KEY_F9": 67, "KEY_F10": 68, "KEY_NUMLOCK": 69, "KEY_SCROLLLOCK": 70, "KEY_KP7": 71,
    "KEY_KP8": 72, "KEY_KP9": 73, "KEY_KPMINUS": 74, "KEY_KP4": 75, "KEY_KP5": 76, "KEY_KP6": 77,
    "KEY_KPPLUS": 78, "KEY_KP1": 79, "KEY_KP2": 80, "KEY_KP3": 81, "KEY_KP0": 82, "KEY_KPDOT": 83,
    "KEY_102ND": 86, "KEY_F11": 87, "KEY_F12": 88, "KEY_KPENTER": 96, "KEY_RIGHTCTRL": 97,
    "KEY_KPSLASH": 98, "KEY_SYSRQ": 99, "KEY_RIGHTALT": 100, "KEY_HOME": 102, "KEY_UP": 103,
    "KEY_PAGEUP": 104, "KEY_LEFT": 105, "KEY_RIGHT": 106, "KEY_END": 107, "KEY_DOWN": 108,
    "KEY_PAGEDOWN": 109, "KEY_INSERT": 110, "KEY_DELETE": 111, "KEY_KPEQUAL": 117, "KEY_KPCOMMA": 121,
    "KEY_LEFTMETA": 125, "KEY_RIGHTMETA": 126, "KEY_COMPOSE": 127,
}
_NAMES = {v: k for k, v in KEY.items()}
KEY_ENTER, KEY_KPENTER, KEY_TAB = KEY["KEY_ENTER"], KEY["KEY_KPENTER"], KEY["KEY_TAB"]
KEY_LEFTALT, KEY_RIGHTALT, KEY_CAPSLOCK = KEY["KEY_LEFTALT"], KEY["KEY_RIGHTALT"], KEY["KEY_CAPSLOCK"]

TERMINATORS: dict[str, int] = {"enter": KEY_ENTER, "kp_enter": KEY_KPENTER, "tab": KEY_TAB}

_SHIFTS = frozenset({KEY["KEY_LEFTSHIFT"], KEY["KEY_RIGHTSHIFT"]})
_CTRLS = frozenset({KEY["KEY_LEFTCTRL"], KEY["KEY_RIGHTCTRL"]})
# Keys that change nothing by themselves; pressing them is never an "unmapped key".
_IGNORED = frozenset({KEY[k] for k in ("KEY_NUMLOCK", "KEY_SCROLLLOCK", "KEY_LEFTMETA", "KEY_RIGHTMETA")})
_KP_DIGITS = {KEY[f"KEY_KP{d}"]: str(d) for d in range(10)}
# Keys that mean the same on every layout. Keypad digits are digits whatever the NumLock state: a scanner that
# types on the keypad means digits, and the host cannot know the LED state a grabbed device was left in.
_COMMON: dict[int, str] = {
    KEY["KEY_SPACE"]: " ", KEY["KEY_TAB"]: "\t", KEY["KEY_ENTER"]: "\r", KEY["KEY_KPENTER"]: "\r",
    KEY["KEY_ESC"]: "\x1b", KEY["KEY_BACKSPACE"]: "\x08", KEY["KEY_DELETE"]: "\x7f",
    KEY["KEY_KPASTERISK"]: "*", KEY["KEY_KPMINUS"]: "-", KEY["KEY_KPPLUS"]: "+", KEY["KEY_KPSLASH"]: "/",
    KEY["KEY_KPEQUAL"]: "=", KEY["KEY_KPCOMMA"]: ",", **_KP_DIGITS,
}
_DIGIT_ROW = [KEY[f"KEY_{k}"] for k in [*"1234567890", "MINUS", "EQUAL"]]
_TOP_ROW = [KEY[f"KEY_{k}"] for k in [*"QWERTYUIOP", "LEFTBRACE", "RIGHTBRACE"]]
_HOME_ROW = [KEY[f"KEY_{k}"] for k in [*"ASDFGHJKL", "SEMICOLON", "APOSTROPHE"]]
_LOW_ROW = [KEY[f"KEY_{k}"] for k in [*"ZXCVBNM", "COMMA", "DOT", "SLASH"]]
_ROWS = (_DIGIT_ROW, _TOP_ROW, _HOME_ROW, _LOW_ROW)
_COMBINING = {"^": "\u0302", "´": "\u0301", "`": "\u0300", "~": "\u0303", "¨": "\u0308"}


def key_name(code: int) -> str:
    """``KEY_F5`` for 63; ``key code 240`` for codes this module has no name for."""
    return _NAMES.get(code, f"key code {code}")


@dataclass(frozen=True)
class Layout:
    """What each key types: (unshifted, shifted, AltGr) per key code, plus the layout's dead keys.

    ``dead`` holds the characters that do not print by themselves but accent the next letter (German ``^``):
    followed by a space they give the accent itself, by a vowel the accented vowel, by anything else both.
    """

    name: str
    keys: dict[int, tuple[str, str, str | None]]
    kp_decimal: str = "."
    dead: frozenset[str] = field(default_factory=frozenset)

    @property
    def has_altgr(self) -> bool:
        return any(v[2] for v in self.keys.values())


def _layout(
    name: str, rows: tuple[str, ...], shifted: tuple[str, ...], extra: dict[str, tuple[str, str, str | None]],
    altgr: dict[str, str], kp_decimal: str = ".", dead: str = "",
) -> Layout:
    keys: dict[int, tuple[str, str, str | None]] = {}
    for codes, base, shift in zip(_ROWS, rows, shifted, strict=True):
        assert len(codes) == len(base) == len(shift), (name, base)
        for code, b, s in zip(codes, base, shift, strict=True):
            keys[code] = (b, s, None)
    for key, value in extra.items():
        keys[KEY[f"KEY_{key}"]] = value
    for key, ch in altgr.items():
        code = KEY[f"KEY_{key}"]
        keys[code] = (keys[code][0], keys[code][1], ch)
    return Layout(name, keys, kp_decimal, frozenset(dead))


US = _layout(
    "us",
    ("1234567890-=", "qwertyuiop[]", "asdfghjkl;'", "zxcvbnm,./"),
    ("!@#$%^&*()_+", "QWERTYUIOP{}", 'ASDFGHJKL:"', "ZXCVBNM<>?"),
    {"GRAVE": ("`", "~", None), "BACKSLASH": ("\\", "|", None), "102ND": ("\\", "|", None)},
    {},
)
# German QWERTZ (T1, as Windows and Linux "de" lay it out): y/z swapped, umlauts, ß, AltGr @ { [ ] } \ ~ |.
# '€' (AltGr+E) is in the table so that a scan with it is reported as "not Latin-1", not as an unknown key.
DE = _layout(
    "de",
    ("1234567890ß´", "qwertzuiopü+", "asdfghjklöä", "yxcvbnm,.-"),
    ('!"§$%&/()=?`', "QWERTZUIOPÜ*", "ASDFGHJKLÖÄ", "YXCVBNM;:_"),
    {"GRAVE": ("^", "°", None), "BACKSLASH": ("#", "'", None), "102ND": ("<", ">", "|")},
    {"2": "²", "3": "³", "7": "{", "8": "[", "9": "]", "0": "}", "MINUS": "\\", "Q": "@", "E": "€",
     "RIGHTBRACE": "~", "M": "µ"},
    kp_decimal=",",
    dead="^´`",
)
DE_NODEADKEYS = Layout("de_nodeadkeys", DE.keys, DE.kp_decimal)
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (US, DE, DE_NODEADKEYS)}


def layout_named(name: str) -> Layout:
    """The layout called ``name`` (``us``, ``de``, ``de_nodeadkeys``); ValueError naming the choices."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown keyboard layout {name!r}; choose one of {', '.join(LAYOUTS)}") from None


def terminator_codes(names: Iterable[str]) -> frozenset[int]:
    """Key codes for terminator names (``enter``, ``kp_enter``, ``tab``); ValueError naming the choices."""
    codes = set()
    for n in names:
        if n not in TERMINATORS:
            raise ValueError(f"unknown terminator key {n!r}; choose from {', '.join(TERMINATORS)}")
        codes.add(TERMINATORS[n])
    if not codes:
        raise ValueError("at least one terminator key is needed")
    return frozenset(codes)


def _control(ch: str) -> str | None:
    """Ctrl + a character: the ASCII control character (Ctrl+] = GS), or None if there is none."""
    up = ch.upper()
    if len(up) == 1 and "@" <= up <= "_":
        return chr(ord(up) - 0x40)
    if ch == "?":
        return "\x7f"
    return None


class KeyDecoder:
    """Assembles key events into scans. Not thread-safe: one decoder per device, fed from one thread.

    Modifiers: both Shifts; Caps Lock toggles (letters only, as on a PC); AltGr is Right Alt (or Ctrl + Left
    Alt, as Windows treats it) on layouts that have an AltGr level, else Right Alt is a second Alt; Ctrl + key
    gives the ASCII control character; Alt held while keypad digits are typed gives, on Alt's release, the
    character with that decimal code (Alt+029 = GS; codes 0-255 are taken as Latin-1 bytes).
    Autorepeat events (value 2) are ignored and counted: a scanner never holds a key.

    Timing: ``time_ns`` is any monotonic clock. A partial scan with no key event for longer than
    ``timeout_ns`` is dropped with a reason (at the next event, or when :meth:`expire` is called). The keys
    after the gap start a new scan; a scanner sends a whole barcode in one burst, so a stall mid-barcode means
    a fault, and the barcode grammar's check digits are the second guard.
    """

    def __init__(
        self, layout: str | Layout = "us", terminators: Iterable[str] = ("enter", "kp_enter"),
        timeout_ns: int = 500_000_000, max_chars: int = 4096,
    ) -> None:
        if timeout_ns <= 0 or max_chars <= 0:
            raise ValueError("timeout_ns and max_chars must be positive")
        self.layout = layout_named(layout) if isinstance(layout, str) else layout
        self.terminators = terminator_codes(terminators)
        self.timeout_ns = timeout_ns
        self.max_chars = max_chars
        self.unknown_keys = 0  # key presses the layout has no character for
        self.repeats = 0  # autorepeat events ignored
        self._shift: set[int] = set()
        self._ctrl: set[int] = set()
        self._alt: set[int] = set()
        self._altgr: set[int] = set()
        self._caps = False
        self._reset_scan()
        self._last_ns: int | None = None

    # -- the scan in progress -------------------------------------------------------------------------
    def _reset_scan(self) -> None:
        self._buf: list[str] = []
        self._taint: str | None = None  # why the scan in progress will be dropped at its end
        self._overflowing = False  # over max_chars: everything up to the next terminator is discarded
        self._alt_digits = ""
        self._dead: str | None = None

    @property
    def partial(self) -> bool:
        """True while a scan has started and not ended."""
        return bool(self._buf or self._taint or self._overflowing or self._alt_digits or self._dead)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _drop(self, default_reason: str) -> list[str]:
        """End the scan in progress without emitting it; returns the reason (none if already reported)."""
        if not self.partial:
            return []
        reason = None if self._overflowing else (self._taint or default_reason)
        self._reset_scan()
        return [reason] if reason else []

    def expire(self, now_ns: int) -> list[str]:
        """Drop a partial scan that has seen no key event for longer than the timeout."""
        if self.partial and self._last_ns is not None and now_ns - self._last_ns > self.timeout_ns:
            t = self.timeout_ns / 1e9
            return self._drop(f"partial scan dropped: no key for {t:g} s before a terminator")
        return []

    def reset(self, why: str) -> list[str]:
        """The device went away or was closed: drop the partial scan (reason ``partial scan dropped: why``)
        and forget held modifiers. Caps Lock is forgotten too: a re-attached scanner starts afresh."""
        errors = self._drop(f"partial scan dropped: {why}")
        self._shift.clear()
        self._ctrl.clear()
        self._alt.clear()
        self._altgr.clear()
        self._caps = False
        self._last_ns = None
        return errors

    def resync(self, held: Iterable[int]) -> None:
        """Set the held modifiers from the keys the device reports down (after events were lost)."""
        held = set(held)
        self._shift = held & _SHIFTS
        self._ctrl = held & _CTRLS
        alts = held & {KEY_LEFTALT, KEY_RIGHTALT}
        self._altgr = alts & {KEY_RIGHTALT} if self.layout.has_altgr else set()
        self._alt = alts - self._altgr

    # -- events ---------------------------------------------------------------------------------------
    def feed(self, code: int, value: int, time_ns: int) -> tuple[list[bytes], list[str]]:
        """One key event; returns (complete scans, reasons for dropped scans)."""
        errors = self.expire(time_ns)
        self._last_ns = time_ns
        frames: list[bytes] = []
        if value == 2:
            self.repeats += 1
            return frames, errors
        if value not in (0, 1):
            return frames, errors
        down = value == 1
        if self._modifier(code, down, errors):
            return frames, errors
        if not down or code in _IGNORED:
            return frames, errors
        if code in self.terminators:
            self._terminate(frames, errors)
            return frames, errors
        via_ctrl_alt = self.layout.has_altgr and bool(self._ctrl) and KEY_LEFTALT in self._alt
        altgr = bool(self._altgr) or via_ctrl_alt
        ctrl = bool(self._ctrl) and not via_ctrl_alt
        alt = bool(self._alt) and not via_ctrl_alt
        if alt:
            if code in _KP_DIGITS and not ctrl:
                self._flush_dead(errors)
                self._alt_digits += _KP_DIGITS[code]
            else:
                self._unmapped(f"Alt+{key_name(code)}")
            return frames, errors
        ch, from_table = self._char(code, altgr)
        if ch is None:
            self._unmapped(("AltGr+" if altgr else "") + key_name(code))
            return frames, errors
        if ctrl:
            control = _control(ch)
            if control is None:
                self._unmapped(f"Ctrl+{key_name(code)}")
                return frames, errors
            self._flush_dead(errors)
            self._append(control, errors)
            return frames, errors
        if from_table or ch == " ":
            self._typed(ch, errors)
        else:
            self._flush_dead(errors)
            self._append(ch, errors)
        return frames, errors

    def _modifier(self, code: int, down: bool, errors: list[str]) -> bool:
        """Track a modifier key; False if ``code`` is not one."""
        if code in _SHIFTS:
            held = self._shift
        elif code in _CTRLS:
            held = self._ctrl
        elif code == KEY_RIGHTALT and self.layout.has_altgr:
            held = self._altgr
        elif code in (KEY_LEFTALT, KEY_RIGHTALT):
            if down:
                self._alt.add(code)
            else:
                self._alt.discard(code)
                if not self._alt and self._alt_digits:
                    self._alt_code(errors)
            return True
        elif code == KEY_CAPSLOCK:
            if down:
                self._caps = not self._caps
            return True
        else:
            return False
        if down:
            held.add(code)
        else:
            held.discard(code)
        return True

    def _char(self, code: int, altgr: bool) -> tuple[str | None, bool]:
        """The character a key types with the current modifiers, and whether it came from the layout table."""
        entry = self.layout.keys.get(code)
        if entry is not None:
            base, shifted, level3 = entry
            if altgr:
                return level3, True
            upper = bool(self._shift)
            if self._caps and base.isalpha() and shifted == base.upper():
                upper = not upper
            return (shifted if upper else base), True
        if altgr:
            return None, False
        if code == KEY["KEY_KPDOT"]:
            return self.layout.kp_decimal, False
        return _COMMON.get(code), False

    def _alt_code(self, errors: list[str]) -> None:
        digits, self._alt_digits = self._alt_digits, ""
        value = int(digits)
        if value > 255:
            self._taint = self._taint or f"scan dropped: Alt+numpad code {value} is over 255"
            return
        self._append(chr(value), errors)

    def _typed(self, ch: str, errors: list[str]) -> None:
        """A character from the layout table, with dead-key composition."""
        dead, self._dead = self._dead, None
        if dead is not None:
            if ch in self.layout.dead:  # two dead keys: both print
                self._append(dead, errors)
                self._append(ch, errors)
                return
            if ch == " ":
                self._append(dead, errors)
                return
            composed = unicodedata.normalize("NFC", ch + _COMBINING.get(dead, ""))
            if len(composed) == 1 and composed != ch:
                self._append(composed, errors)
                return
            self._append(dead, errors)
            self._append(ch, errors)
            return
        if ch in self.layout.dead:
            self._dead = ch
            return
        self._append(ch, errors)

    def _flush_dead(self, errors: list[str]) -> None:
        if self._dead is not None:
            dead, self._dead = self._dead, None
            self._append(dead, errors)

    def _unmapped(self, what: str) -> None:
        self.unknown_keys += 1
        if not self._overflowing:
            why = f"scan dropped: {what} has no character in layout '{self.layout.name}'"
            self._taint = self._taint or why

    def _append(self, ch: str, errors: list[str]) -> None:
        if self._overflowing:
            return
        if ord(ch) > 255:
            self._taint = self._taint or f"scan dropped: {ch!r} has no Latin-1 byte"
            return
        if len(self._buf) >= self.max_chars:
            errors.append(f"scan dropped: over {self.max_chars} characters without a terminator")
            self._reset_scan()
            self._overflowing = True
            return
        self._buf.append(ch)

    def _terminate(self, frames: list[bytes], errors: list[str]) -> None:
        self._flush_dead(errors)
        if self._alt_digits and not self._taint:
            self._taint = "scan dropped: Alt+numpad sequence unfinished at the terminator"
        if self._overflowing or self._taint:
            errors += self._drop("")
            return
        if self._buf:
            frames.append("".join(self._buf).encode("latin-1"))
        self._reset_scan()

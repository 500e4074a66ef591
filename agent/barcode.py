"""Turn one raw scanner read into a Label (IMcb, IMtb, IMb, IMpb or DOCK: command) or a Rejection."""

import re
from dataclasses import dataclass

__all__ = ["COMMANDS", "Label", "Rejection", "mod10_check_digit", "normalize", "parse", "render_imcb"]

GS = "\x1d"  # FNC1 as a field separator, as scanners transmit it
_EDGE = " \t\r\n"
_AIM = re.compile(r"\](?P<code>[A-Za-z])(?P<modifier>[0-9A-Z])")
_SYMBOLOGIES = {
    "A": "code39",
    "C": "code128",
    "d": "datamatrix",
    "E": "ean-upc",
    "e": "gs1-databar",
    "F": "codabar",
    "G": "code93",
    "I": "itf",
    "L": "pdf417",
    "Q": "qr",
    "z": "aztec",
}
_HRI = re.compile(r"(?:\(\d{2,4}\)[^()]*)+")
_HRI_AI = re.compile(r"\((\d{2,4})\)")
_UNPRINTABLE_TEXT = re.compile(r"[^\x20-\x7e\t\r\n\x1d]")
_UNPRINTABLE_BYTES = re.compile(rb"[^\x20-\x7e\t\r\n\x1d]")

# Command name -> example argument for the "needs an argument" reason, or None if it takes none.
_COMMAND_ARGS: dict[str, str | None] = {
    "LOAD": "<appointment>",
    "CLOSE": None,
    "FORM8125": "<form number>",
    "ENDFORM": None,
    "PLACARD": None,
    "REJECT": "<reason>",
    "TICKET": "<ticket number>",
    "OPERATOR": "<operator id>",
    "VOID": None,
    "OUTAGE": "NATIONAL",
    "ALLCLEAR": None,
    "LEAD": "<PIN>",
}
COMMANDS: frozenset[str] = frozenset(_COMMAND_ARGS)

_IMB_LENGTHS = (20, 25, 29, 31)
_PIC_LENGTHS = (22, 26, 30, 34)
_CHANNELS = ("91", "92", "93", "94", "95")
_MID_LENGTH_BY_CHANNEL = {"92": 9, "93": 6}
_LEGACY_LABELS = {8: "8-digit sack", 10: "10-digit tray"}
_EXPECTED = "expected a 99M container label, a 24-digit tray label, an IMb, an IMpb or a DOCK: command"


@dataclass(frozen=True, slots=True)
class Label:
    """A read the dock understands.

    Attributes:
        kind: "imcb", "imtb", "impb", "imb" or "command".
        normalized: Canonical text, the form that is stored and synced.
        fields: Parsed fields, all strings with leading zeros kept.
        symbology: Name taken from the AIM identifier (e.g. "gs1-128", "qr"), or None without one.
        ok: Always True, so callers can test ``result.ok``.
    """

    kind: str
    normalized: str
    fields: dict[str, str]
    symbology: str | None
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Rejection:
    """A read the dock cannot use, with a reason a dock employee can act on.

    Attributes:
        reason: One sentence naming what is wrong, e.g. "20 characters, an IMcb has 21".
        normalized: Best-effort normalised text ("" if there is none).
        kind: The kind the read was taken for, when known.
        ok: Always False.
    """

    reason: str
    normalized: str
    kind: str | None = None
    ok: bool = False


class _Invalid(Exception):
    """Internal signal from a validator; parse turns it into a Rejection."""

    def __init__(self, reason: str, normalized: str = "", kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.normalized = normalized
        self.kind = kind


def normalize(raw: str | bytes) -> tuple[str, str | None]:
    """Canonicalise the transport form of a read without judging its content.

    Strips surrounding CR/LF/TAB/spaces, an AIM symbology identifier (``]C1`` and the like) and a
    leading or trailing GS. A ``DOCK:`` command keeps its inner spaces and gets an uppercase name;
    any other text loses all whitespace and the parentheses of GS1 HRI style (``(99)M...``). A GS
    inside the data is kept, because it separates an IMpb's routing from its tracking number.
    Dashes and letter case are never changed.

    Args:
        raw: The read as the scanner sent it; bytes are decoded as latin-1.

    Returns:
        The normalised text and the symbology name from the AIM identifier (None without one).
    """
    text, symbology = _strip_aim(_as_text(raw).strip(_EDGE))
    text = text.strip(_EDGE + GS).replace("\t", " ")
    if _is_command(text):
        return _canonical_command(text), symbology
    return _unparenthesise(text.replace(" ", "")), symbology


def parse(raw: str | bytes) -> Label | Rejection:
    """Read one scan as a dock label or command; never raises.

    Order of checks: non-printable characters (anything but printable ASCII, GS, CR, LF, TAB),
    empty read, line break inside the data, ``DOCK:`` command (prefix and name in any case), GS
    inside the data (only an IMpb may have one, after 420+ZIP), all digits, IMcb attempt, unknown.

    An IMcb attempt is non-digit text starting "99" + a letter, or 20-22 characters starting "99"
    or with "M"/"m" third. Its checks run AI 99, then the 'M' (a lowercase 'm' is refused), then
    the length (21), then the Mailer ID, then the serial. Serial letters may be either case and
    are kept as read; '-' may only pad the start of the serial.

    All-digit text is told apart by length and prefix; no two kinds share a length and prefix:

    - 24 digits: IMtb.
    - 20, 25, 29 or 31 digits: IMb.
    - "420" + a 5- or 9-digit ZIP + a 22/26/30/34-digit tracking number (30, 34, 38, 42 or 46
      digits): IMpb with routing. A GS after the ZIP settles the split. Without one, both splits
      are tried and the one whose check digit validates wins; if both validate (possible for 34,
      38 and 42 digits) the ZIP+4 reading, with the shorter and more common tracking number, wins.
    - Otherwise 22, 26 or 34 digits, or 30 digits starting 91-95: a bare IMpb tracking number.
    - Anything else, including 30 digits that start neither 420 nor 91-95, is rejected.

    The symbology is reported, not policed: an IMcb read as ``]C0`` or ``]Q1`` is still a Label.
    Positions in reasons count from 1, and at most 40 characters of input are quoted.

    Args:
        raw: The read as the scanner sent it: str, or bytes (also bytearray or memoryview)
            decoded as latin-1.

    Returns:
        A Label, or a Rejection whose reason names the problem. A non-str, non-bytes argument is
        also returned as a Rejection so that a driver bug cannot stop the scan loop.
    """
    if not isinstance(raw, str | bytes | bytearray | memoryview):
        kind_name = type(raw).__name__
        return Rejection(f"scanner sent a {kind_name}, not text or bytes; report this to the maintainer", "")
    try:
        return _parse(bytes(raw) if isinstance(raw, bytearray | memoryview) else raw)
    except _Invalid as bad:
        return Rejection(bad.reason, _printable(bad.normalized), bad.kind)


def mod10_check_digit(digits: str) -> int:
    """Compute the GS1/UPC mod-10 check digit used by the IMpb.

    Weights 3, 1, 3, ... run leftwards from the rightmost digit; the check digit is
    (10 - sum mod 10) mod 10.

    Args:
        digits: The data digits, without the check digit.

    Returns:
        The check digit, 0-9.

    Raises:
        ValueError: If digits is empty or holds anything but 0-9.
    """
    if not _is_digits(digits):
        raise ValueError(f"mod-10 needs one or more digits 0-9, got {_show(digits)!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def render_imcb(mid: str, serial: str) -> str:
    """Build the 21-character IMcb data that parse reads back as this Mailer ID and serial.

    Args:
        mid: A 6-digit Mailer ID starting 0-8, or a 9-digit one starting 9.
        serial: The serial at full width (12 or 9 characters), already padded with zeros or
            leading dashes.

    Returns:
        "99M" + mid + serial.

    Raises:
        ValueError: If the Mailer ID or serial would not make a valid IMcb.
    """
    if not (_is_digits(mid) and len(mid) == (9 if mid[0] == "9" else 6)):
        raise ValueError(
            f"Mailer ID must be 6 digits starting 0-8 or 9 digits starting 9, got {_show(mid)!r}"
        )
    width = 18 - len(mid)
    if len(serial) != width:
        raise ValueError(
            f"serial must be {width} characters with a {len(mid)}-digit Mailer ID, got {len(serial)}"
        )
    problem = _serial_problem(serial, first_position=4 + len(mid))
    if problem:
        raise ValueError(problem)
    return f"99M{mid}{serial}"


def _parse(raw: str | bytes) -> Label:
    """Dispatch a read to the parser for its kind; raise _Invalid for anything unusable."""
    _check_printable(raw)
    text, symbology = normalize(raw)
    if not text:
        raise _Invalid("empty read")
    if "\r" in text or "\n" in text:
        raise _Invalid(
            "contains a line break inside the data; two reads may have run together, scan again", text
        )
    if _is_command(text):
        return _parse_command(text, symbology)
    if GS in text:
        return _parse_separated(text, symbology)
    if _is_digits(text):
        return _parse_digits(text, symbology)
    if _looks_like_imcb(text):
        return _parse_imcb(text, symbology)
    read_as = f" (read as {symbology})" if symbology else ""
    raise _Invalid(f"not a barcode this dock reads: {_show(text)!r}{read_as}; {_EXPECTED}", text)


def _as_text(raw: str | bytes) -> str:
    """Return str input unchanged and decode bytes as latin-1 (which never fails)."""
    return raw if isinstance(raw, str) else raw.decode("latin-1")


def _check_printable(raw: str | bytes) -> None:
    """Reject any character outside printable ASCII other than GS, CR, LF and TAB."""
    if isinstance(raw, str):
        found = _UNPRINTABLE_TEXT.search(raw)
        if found:
            code = ord(found.group())
            what = "non-ASCII" if code > 0x7F else "non-printable"
            raise _Invalid(
                f"contains a {what} character U+{code:04X} at position {found.start() + 1}; "
                "not a barcode this dock reads"
            )
        return
    found_byte = _UNPRINTABLE_BYTES.search(raw)
    if found_byte:
        raise _Invalid(
            f"contains a non-printable byte 0x{found_byte.group()[0]:02X} at position "
            f"{found_byte.start() + 1}; not a barcode this dock reads"
        )


def _strip_aim(text: str) -> tuple[str, str | None]:
    """Remove a leading AIM symbology identifier and name the symbology it gives."""
    found = _AIM.match(text)
    if not found:
        return text, None
    code, modifier = found.group("code"), found.group("modifier")
    if code == "C" and modifier == "1":
        return text[3:], "gs1-128"  # FNC1 in first position
    return text[3:], _SYMBOLOGIES.get(code, f"aim-{code}")


def _unparenthesise(text: str) -> str:
    """Turn GS1 HRI such as "(420)20260(92)001..." into the encoded digits."""
    if text.startswith("(") and _HRI.fullmatch(text):
        return _HRI_AI.sub(r"\1", text)
    return text


def _is_command(text: str) -> bool:
    """Tell whether normalised text is an operator command."""
    return text[:5].upper() == "DOCK:"


def _canonical_command(text: str) -> str:
    """Write a command as DOCK:NAME or DOCK:NAME:ARG; the argument keeps its case and inner spaces."""
    name, _, arg = text[5:].partition(":")
    canonical = "DOCK:" + name.strip().upper()
    arg = arg.strip()
    return f"{canonical}:{arg}" if arg else canonical


def _parse_command(text: str, symbology: str | None) -> Label:
    """Check a canonical DOCK: command against the known names and their arguments."""
    name, _, arg = text[5:].partition(":")
    known = ", ".join(sorted(COMMANDS))
    if GS in text:
        raise _Invalid("command contains a group separator (GS); reprint the command label", text, "command")
    if not name:
        raise _Invalid(f"DOCK: has no command name; known commands: {known}", text, "command")
    if name not in _COMMAND_ARGS:
        raise _Invalid(f"unknown command DOCK:{_show(name)}; known commands: {known}", text, "command")
    example = _COMMAND_ARGS[name]
    if example is None and arg:
        raise _Invalid(
            f"DOCK:{name} takes no argument, found {_show(arg)!r}; scan DOCK:{name}", text, "command"
        )
    if example is not None and not arg:
        raise _Invalid(f"DOCK:{name} needs an argument, e.g. DOCK:{name}:{example}", text, "command")
    if name == "OUTAGE":
        arg = arg.upper()
        if arg != "NATIONAL":
            raise _Invalid(f"DOCK:OUTAGE takes only NATIONAL, found {_show(arg)!r}", text, "command")
    normalized = f"DOCK:{name}:{arg}" if arg else f"DOCK:{name}"
    return Label("command", normalized, {"command": name, "arg": arg}, symbology)


def _parse_separated(text: str, symbology: str | None) -> Label:
    """Read "420" + ZIP + GS + tracking number; any other GS is an error."""
    routing, _, pic = text.partition(GS)
    flat = text.replace(GS, "")
    if not routing.startswith("420") or GS in pic:
        position = text.index(GS, len(routing) + 1 if routing.startswith("420") else 0) + 1
        raise _Invalid(
            f"group separator (GS) at position {position}; only an IMpb has one, "
            "between 420+ZIP and the tracking number",
            flat,
            "impb" if routing.startswith("420") else None,
        )
    zip_code = routing[3:]
    if not (_is_digits(zip_code) and len(zip_code) in (5, 9)):
        raise _Invalid(
            f"IMpb routing before the GS must be 420 and a 5- or 9-digit ZIP, found {_show(routing)!r}",
            flat,
            "impb",
        )
    return Label("impb", flat, {"routing_zip": zip_code, **_pic_fields(pic, flat)}, symbology)


def _parse_digits(text: str, symbology: str | None) -> Label:
    """Tell the all-digit kinds apart by length (see parse) and parse the match."""
    length = len(text)
    if length == 24:
        return Label("imtb", text, {"zip": text[:5], "cin": text[5:8], "rest": text[8:]}, symbology)
    if length in _IMB_LENGTHS:
        return _parse_imb(text, symbology)
    if text.startswith("420") and (length - 8 in _PIC_LENGTHS or length - 12 in _PIC_LENGTHS):
        return _parse_routed(text, symbology)
    if length in _PIC_LENGTHS and (length != 30 or text[:2] in _CHANNELS):
        return Label("impb", text, {"routing_zip": "", **_pic_fields(text, text)}, symbology)
    if length == 30:
        raise _Invalid("30 digits; an IMb has 20, 25, 29 or 31", text, "imb")
    if length in _LEGACY_LABELS:
        raise _Invalid(
            f"{length} digits: looks like a legacy {_LEGACY_LABELS[length]} label; "
            "this dock reads the 24-digit IMtb",
            text,
        )
    raise _Invalid(f"{length} digits; not an IMcb, IMtb (24), IMb (20/25/29/31) or IMpb", text)


def _parse_imb(text: str, symbology: str | None) -> Label:
    """Split an IMb digit string into barcode ID, service type, Mailer ID, serial and routing."""
    barcode_id = text[:2]
    if barcode_id[1] not in "01234":
        raise _Invalid(
            f"IMb barcode ID is {barcode_id}; its second digit must be 0-4, found {barcode_id[1]}",
            text,
            "imb",
        )
    mid_length = 9 if text[5] == "9" else 6
    fields = {
        "barcode_id": barcode_id,
        "service_type": text[2:5],
        "mid": text[5 : 5 + mid_length],
        "serial": text[5 + mid_length : 20],
        "routing": text[20:],
    }
    return Label("imb", text, fields, symbology)


def _parse_routed(text: str, symbology: str | None) -> Label:
    """Split "420" + ZIP + tracking number without a GS, preferring ZIP+4 when both splits validate."""
    readings = [
        (text[3 : 3 + size], text[3 + size :]) for size in (9, 5) if len(text) - 3 - size in _PIC_LENGTHS
    ]
    # Readings with a real channel come first, so a failure reported is the most telling one.
    readings.sort(key=lambda reading: reading[1][:2] not in _CHANNELS)
    failures = []
    for zip_code, pic in readings:
        try:
            fields = _pic_fields(pic, text)
        except _Invalid as bad:
            failures.append(bad)
            continue
        return Label("impb", text, {"routing_zip": zip_code, **fields}, symbology)
    raise failures[0]


def _pic_fields(pic: str, normalized: str) -> dict[str, str]:
    """Validate an IMpb tracking number (PIC) and return its fields."""
    if not _is_digits(pic):
        raise _Invalid(
            f"IMpb tracking number after the GS must be digits, found {_show(pic)!r}", normalized, "impb"
        )
    if len(pic) not in _PIC_LENGTHS:
        raise _Invalid(
            f"IMpb tracking number has {len(pic)} digits; it must have 22, 26, 30 or 34", normalized, "impb"
        )
    channel = pic[:2]
    if channel not in _CHANNELS:
        raise _Invalid(
            f"IMpb tracking number must start with 91-95 (channel), found {channel}", normalized, "impb"
        )
    expected = mod10_check_digit(pic[:-1])
    if pic[-1] != str(expected):
        raise _Invalid(f"IMpb check digit is {pic[-1]}, expected {expected}", normalized, "impb")
    fields = {"channel": channel, "stc": pic[2:5], "pic": pic, "check_digit": pic[-1]}
    mid_length = _MID_LENGTH_BY_CHANNEL.get(channel)
    if mid_length:
        fields["mid"] = pic[5 : 5 + mid_length]
        fields["serial"] = pic[5 + mid_length : -1]
    return fields


def _looks_like_imcb(text: str) -> bool:
    """Tell whether non-digit text was meant as an IMcb: "99" + letter, or 20-22 long with 99 or M first."""
    if text[:2] == "99" and len(text) > 2 and text[2].isalpha():
        return True
    return 20 <= len(text) <= 22 and (text[:2] == "99" or text[2] in "Mm")


def _parse_imcb(text: str, symbology: str | None) -> Label:
    """Check "99" + "M" + Mailer ID + serial (21 characters) and split it."""
    if text[:2] != "99":
        raise _Invalid(f"application identifier must be 99, found {text[:2]}", text, "imcb")
    if text[2] == "m":
        raise _Invalid("type indicator must be uppercase 'M', found lowercase 'm'", text, "imcb")
    if text[2] != "M":
        raise _Invalid(f"type indicator must be 'M' after 99, found {text[2]!r}", text, "imcb")
    if len(text) != 21:
        raise _Invalid(f"{len(text)} characters, an IMcb has 21", text, "imcb")
    mid_length = 9 if text[3] == "9" else 6
    for index in range(3, 3 + mid_length):
        if not _is_digits(text[index]):
            raise _Invalid(
                f"Mailer ID must be digits, found {text[index]!r} at position {index + 1}", text, "imcb"
            )
    problem = _serial_problem(text[3 + mid_length :], first_position=4 + mid_length)
    if problem:
        raise _Invalid(problem, text, "imcb")
    fields = {
        "mid": text[3 : 3 + mid_length],
        "serial": text[3 + mid_length :],
        "mid_length": str(mid_length),
    }
    return Label("imcb", text, fields, symbology)


def _serial_problem(serial: str, first_position: int) -> str | None:
    """Name what is wrong with an IMcb serial, or None if it is fine.

    A serial is ASCII letters (either case, kept as read) and digits, optionally left-padded
    with a run of '-'; it may not be all padding.
    """
    padding = len(serial) - len(serial.lstrip("-"))
    if padding == len(serial):
        return "serial is all '-' padding; it needs at least one letter or digit"
    for position, char in enumerate(serial[padding:], start=first_position + padding):
        if char == "-":
            return f"'-' may only pad the start of the serial (position {position})"
        if not (char.isascii() and char.isalnum()):
            return f"serial must be letters and digits, found {char!r} at position {position}"
    return None


def _is_digits(text: str) -> bool:
    """Tell whether text is one or more ASCII digits."""
    return text.isascii() and text.isdigit()


def _show(text: str, limit: int = 40) -> str:
    """Shorten input quoted in a reason to at most limit characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    """Drop GS, CR and LF so that a Rejection's normalised text is printable."""
    return text.translate({0x1D: None, 0x0D: None, 0x0A: None})

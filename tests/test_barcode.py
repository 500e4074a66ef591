"""Tests for agent.barcode: DOMAIN.md section 8 tables, normalisation, commands and hypothesis properties."""

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.barcode import (
    COMMANDS,
    Label,
    Rejection,
    mod10_check_digit,
    normalize,
    parse,
    render_imcb,
)

GS = "\x1d"
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
CHEAP = settings(max_examples=500, deadline=None)

# ---------------------------------------------------------------------------------------------
# DOMAIN.md section 8 (plus the published IMpb numbers of section 2.3)

# fmt: off
VALID = [
    ("1-imcb-6-digit-mid", "99M123456000000123456", "imcb",
     {"mid": "123456", "serial": "000000123456", "mid_length": "6"}),
    ("2-imcb-9-digit-mid", "99M900012345000987654", "imcb",
     {"mid": "900012345", "serial": "000987654", "mid_length": "9"}),
    ("3-imcb-dash-padding", "99M123456------ABC123", "imcb",
     {"mid": "123456", "serial": "------ABC123", "mid_length": "6"}),
    ("4-imcb-aim-c1", "]C199M123456000000123456", "imcb",
     {"mid": "123456", "serial": "000000123456", "mid_length": "6"}),
    ("5-imcb-hri-spaces", "99  M  123456  000000123456", "imcb",
     {"mid": "123456", "serial": "000000123456", "mid_length": "6"}),
    ("6-imcb-mid-starting-9", "99M923456000000123456", "imcb",
     {"mid": "923456000", "serial": "000123456", "mid_length": "9"}),
    ("7-imb-31-digits", "0030012345612345678920260000101", "imb",
     {"barcode_id": "00", "service_type": "300", "mid": "123456", "serial": "123456789",
      "routing": "20260000101"}),
    ("8-imb-20-digits", "00300123456123456789", "imb",
     {"barcode_id": "00", "service_type": "300", "mid": "123456", "serial": "123456789", "routing": ""}),
    ("9-impb-420-zip5", "420202609200191234567800000018", "impb",
     {"routing_zip": "20260", "channel": "92", "stc": "001", "pic": "9200191234567800000018",
      "check_digit": "8", "mid": "912345678", "serial": "0000001"}),
    ("10-impb-bare-pic", "9300112345600000000019", "impb",
     {"routing_zip": "", "channel": "93", "stc": "001", "pic": "9300112345600000000019",
      "check_digit": "9", "mid": "123456", "serial": "0000000001"}),
    ("11-imtb", "202605120012345678901234", "imtb",
     {"zip": "20260", "cin": "512", "rest": "0012345678901234"}),
    ("bcoca-impb-22", "9374890100000003985039", "impb",
     {"routing_zip": "", "channel": "93", "stc": "748", "pic": "9374890100000003985039",
      "check_digit": "9", "mid": "901000", "serial": "0000398503"}),
    ("jkeen-impb-26", "92023999991043543415313958", "impb",
     {"routing_zip": "", "channel": "92", "stc": "023", "pic": "92023999991043543415313958",
      "check_digit": "8", "mid": "999991043", "serial": "54341531395"}),
    ("jkeen-impb-420-zip9", "4201028212169270490119521303389129", "impb",
     {"routing_zip": "102821216", "channel": "92", "stc": "704", "pic": "9270490119521303389129",
      "check_digit": "9", "mid": "901195213", "serial": "0338912"}),
]

INVALID = [
    ("imcb-20-chars", "99M12345600000012345", "imcb", ["20 characters", "21"]),
    ("imcb-type-x", "99X123456000000123456", "imcb", ["'M'", "'X'"]),
    ("imcb-ai-98", "98M123456000000123456", "imcb", ["99", "98"]),
    ("imcb-mid-letter", "99M12A456000000123456", "imcb", ["digits", "'A'", "position 6"]),
    ("imcb-inner-dash", "99M123456000-00123456", "imcb", ["'-'", "position 13"]),
    ("imcb-space-inside", "99M123456000000 12345", "imcb", ["20 characters"]),
    ("imcb-22-chars", "99M9000123450009876545", "imcb", ["22 characters"]),
    ("imb-barcode-id-05", "0530012345612345678920260000101", "imb", ["05", "0-4"]),
    ("imb-30-digits", "003001234561234567892026000010", "imb", ["30 digits", "20, 25, 29 or 31"]),
    ("impb-check-digit", "9200191234567800000017", "impb", ["check digit is 7, expected 8"]),
    ("imtb-23-digits", "20260512001234567890123", None, ["23 digits", "IMtb (24)"]),
    ("imcb-lowercase-m", "99m123456000000123456", "imcb", ["uppercase 'M'", "'m'"]),
    ("imcb-all-dashes", "99M123456------------", "imcb", ["all '-'"]),
    ("imcb-symbol-in-serial", "99M123456-----#ABC123", "imcb", ["'#'", "position 15"]),
    ("imcb-dash-in-mid", "99M12-456000000123456", "imcb", ["digits", "'-'", "position 6"]),
    ("imcb-3-chars", "99M", "imcb", ["3 characters"]),
    ("impb-420-30-bad-check", "420202609200191234567800000017", "impb", ["check digit is 7, expected 8"]),
    ("impb-bad-channel", "8800191234567800000018", "impb", ["91-95", "88"]),
    ("digits-21", "991234560000001234567", None, ["21 digits"]),
    ("legacy-tray", "2026051201", None, ["10 digits", "legacy"]),
    ("legacy-sack", "20260512", None, ["8 digits", "sack"]),
    ("unknown-text", "HELLO WORLD", None, ["not a barcode this dock reads", "HELLOWORLD"]),
    ("unknown-url", "]Q1https://example.com/x", None, ["not a barcode this dock reads", "qr"]),
]
# fmt: on


@pytest.mark.parametrize(("raw", "kind", "fields"), [case[1:] for case in VALID], ids=[c[0] for c in VALID])
def test_valid_examples_parse_to_kind_and_fields(raw: str, kind: str, fields: dict[str, str]) -> None:
    result = parse(raw)
    assert isinstance(result, Label), result
    assert result.ok is True
    assert (result.kind, result.fields) == (kind, fields)


@pytest.mark.parametrize(
    ("raw", "kind", "facts"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_examples_are_rejected_with_the_key_fact(
    raw: str, kind: str | None, facts: list[str]
) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection), result
    assert result.ok is False
    assert result.kind == kind
    for fact in facts:
        assert fact in result.reason


def test_normalized_text_is_the_bare_data() -> None:
    for raw in ("]C199M123456000000123456", "99  M  123456  000000123456", "(99)M123456000000123456"):
        assert parse(raw).normalized == "99M123456000000123456"


def test_rejection_keeps_best_effort_normalized_text() -> None:
    assert parse("]C199M123456000000 12345").normalized == "99M12345600000012345"


# ---------------------------------------------------------------------------------------------
# Normalisation: AIM identifiers, GS, CR/LF/TAB, HRI styles, bytes

IMCB = "99M123456000000123456"


@pytest.mark.parametrize(
    ("prefix", "symbology"),
    [
        ("]C1", "gs1-128"),
        ("]C0", "code128"),
        ("]C2", "code128"),
        ("]Q1", "qr"),
        ("]Q3", "qr"),
        ("]d2", "datamatrix"),
        ("]e0", "gs1-databar"),
        ("]E0", "ean-upc"),
        ("]I0", "itf"),
        ("]L2", "pdf417"),
        ("]A0", "code39"),
        ("]X0", "aim-X"),
        ("]y1", "aim-y"),
    ],
)
def test_aim_identifier_is_stripped_and_named(prefix: str, symbology: str) -> None:
    assert normalize(prefix + IMCB) == (IMCB, symbology)
    result = parse(prefix + IMCB)
    assert isinstance(result, Label)
    assert (result.kind, result.normalized, result.symbology) == ("imcb", IMCB, symbology)


def test_no_aim_identifier_means_no_symbology() -> None:
    assert normalize(IMCB) == (IMCB, None)


def test_bracket_without_aim_shape_is_not_stripped() -> None:
    assert isinstance(parse("]-1" + IMCB), Rejection)


@pytest.mark.parametrize(
    "raw",
    [
        IMCB + "\r",
        IMCB + "\n",
        IMCB + "\r\n",
        "\t" + IMCB + "\t",
        " " + IMCB + " ",
        "]C1" + IMCB + "\r\n",
        GS + IMCB,
        "]C1" + GS + IMCB,
        IMCB + GS,
        "\r\n" + GS + " " + IMCB,
    ],
    ids=["cr", "lf", "crlf", "tabs", "spaces", "aim-crlf", "leading-gs", "aim-gs", "trailing-gs", "mixed"],
)
def test_transport_noise_is_stripped(raw: str) -> None:
    result = parse(raw)
    assert isinstance(result, Label), result
    assert result.normalized == IMCB


@pytest.mark.parametrize(
    "raw",
    ["99  M  123456  -----ABC1234", "99 M 123456 -----ABC1234", "99\tM\t123456\t-----ABC1234"],
    ids=["bcoca-two-blanks", "single-blanks", "tabs"],
)
def test_hand_keyed_hri_with_whitespace(raw: str) -> None:
    result = parse(raw)
    assert isinstance(result, Label)
    assert result.fields == {"mid": "123456", "serial": "-----ABC1234", "mid_length": "6"}


@pytest.mark.parametrize(
    "raw",
    [
        "(420)20260(92)00191234567800000018",
        "(420)20260 9200191234567800000018",
        "(420) 20260 (92) 0019 1234 5678 0000 0018",
        "]C1(420)20260(92)00191234567800000018",
    ],
)
def test_gs1_hri_parentheses_are_removed(raw: str) -> None:
    result = parse(raw)
    assert isinstance(result, Label), result
    assert result.normalized == "420202609200191234567800000018"
    assert result.fields["routing_zip"] == "20260"


def test_parentheses_not_in_hri_shape_are_rejected() -> None:
    assert isinstance(parse("(99M)123456000000123456"), Rejection)


def test_gs_between_zip5_and_pic_splits_the_impb() -> None:
    raw = "]C142020260" + GS + "9200191234567800000018"
    assert normalize(raw) == ("42020260" + GS + "9200191234567800000018", "gs1-128")
    result = parse(raw)
    assert isinstance(result, Label)
    assert result.normalized == "420202609200191234567800000018"
    assert (result.fields["routing_zip"], result.fields["pic"]) == ("20260", "9200191234567800000018")


def test_gs_between_zip9_and_pic_splits_the_impb() -> None:
    result = parse("420102821216" + GS + "9270490119521303389129")
    assert isinstance(result, Label)
    assert result.normalized == "4201028212169270490119521303389129"
    assert result.fields["routing_zip"] == "102821216"


@pytest.mark.parametrize(
    ("raw", "fact"),
    [
        ("99M1234" + GS + "56000000123456", "position 8"),
        ("42020260" + GS + "92001912345678" + GS + "00000018", "position 24"),
        ("4202026" + GS + "9200191234567800000018", "5- or 9-digit ZIP"),
        ("42020260" + GS + "9200191234567800000017", "check digit is 7, expected 8"),
        ("42020260" + GS + "92001912345678000000X8", "must be digits"),
    ],
    ids=["gs-in-imcb", "second-gs", "short-zip", "bad-check", "letter-in-pic"],
)
def test_misplaced_or_broken_gs_reads_are_rejected(raw: str, fact: str) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection)
    assert fact in result.reason
    assert GS not in result.normalized


def test_never_strips_dashes_or_changes_case() -> None:
    result = parse("99M123456---abcDEF123")
    assert isinstance(result, Label)
    assert result.fields["serial"] == "---abcDEF123"


def test_bytes_input_is_decoded() -> None:
    for raw in (IMCB.encode(), b"]C1" + IMCB.encode() + b"\r\n"):
        result = parse(raw)
        assert isinstance(result, Label), result
        assert (result.normalized, result.kind) == (IMCB, "imcb")


def test_bytearray_and_memoryview_are_read_like_bytes() -> None:
    for raw in (bytearray(IMCB.encode()), memoryview(IMCB.encode())):
        result = parse(raw)  # type: ignore[arg-type]  # drivers may hand over their read buffer
        assert isinstance(result, Label), result
        assert result.normalized == IMCB


@pytest.mark.parametrize(
    ("raw", "facts"),
    [
        (b"99M1\x07" + b"0" * 16, ["byte 0x07", "position 5"]),
        (b"\xff", ["byte 0xFF", "position 1"]),
        (b"\x00" + IMCB.encode(), ["byte 0x00", "position 1"]),
        (IMCB.encode() + b"\x7f", ["byte 0x7F", "position 22"]),
        ("99M\x00" + "0" * 18, ["U+0000", "position 4"]),
        ("99M123456000000123456\u20ac", ["non-ASCII", "U+20AC", "position 22"]),
        ("\ud800", ["U+D800"]),
    ],
    ids=["bel", "0xff", "nul-first", "del-last", "str-nul", "str-euro", "str-surrogate"],
)
def test_non_printable_input_is_named(raw: str | bytes, facts: list[str]) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection)
    assert "not a barcode this dock reads" in result.reason
    for fact in facts:
        assert fact in result.reason


@pytest.mark.parametrize("raw", ["", b"", "   ", "\r\n", b"\t\r\n", "]C1", "]C1\r\n", GS])
def test_empty_reads(raw: str | bytes) -> None:
    result = parse(raw)
    assert isinstance(result, Rejection)
    assert result.reason == "empty read"


def test_line_break_inside_the_data_is_rejected() -> None:
    result = parse("99M123456\r\n000000123456")
    assert isinstance(result, Rejection)
    assert "line break" in result.reason


def test_non_text_input_is_a_rejection_not_an_exception() -> None:
    result = parse(None)  # type: ignore[arg-type]
    assert isinstance(result, Rejection)
    assert "NoneType" in result.reason


def test_long_junk_is_truncated_in_the_reason() -> None:
    result = parse("Z" * 500)
    assert isinstance(result, Rejection)
    assert max(len(run) for run in re.findall(r"Z+", result.reason)) <= 40
    assert len(result.reason) < 200


# ---------------------------------------------------------------------------------------------
# Digit-string precedence


def test_ambiguous_420_split_prefers_zip_plus_4() -> None:
    # ZIP+4 20260-9102 + 22-digit PIC; read as ZIP5 the PIC "9102..." (26 digits) also validates.
    raw = "420202609102" + "9200191234567800000018"
    result = parse(raw)
    assert isinstance(result, Label)
    assert (result.fields["routing_zip"], result.fields["pic"]) == ("202609102", "9200191234567800000018")


def test_gs_overrides_the_zip_plus_4_preference() -> None:
    result = parse("42020260" + GS + "91029200191234567800000018")
    assert isinstance(result, Label)
    assert (result.fields["routing_zip"], result.fields["pic"]) == ("20260", "91029200191234567800000018")


def test_420_split_falls_back_to_zip5_when_only_it_validates() -> None:
    pic26 = "92023999991043543415313958"
    result = parse("42020260" + pic26)
    assert isinstance(result, Label)
    assert (result.fields["routing_zip"], result.fields["pic"]) == ("20260", pic26)


def test_bare_30_digit_pic() -> None:
    body = "92001912345678000000000000001"
    raw = body + str(mod10_check_digit(body))
    result = parse(raw)
    assert isinstance(result, Label)
    assert (result.kind, result.fields["routing_zip"], result.fields["pic"]) == ("impb", "", raw)


def test_31_digits_starting_420_is_an_imb() -> None:
    result = parse("4200012345612345678920260000101")
    assert isinstance(result, Label)
    assert (result.kind, result.fields["barcode_id"]) == ("imb", "42")


@pytest.mark.parametrize(
    ("length", "kind"), [(20, "imb"), (24, "imtb"), (25, "imb"), (29, "imb"), (31, "imb")]
)
def test_digit_lengths_pick_the_kind(length: int, kind: str) -> None:
    result = parse("0" * length)
    assert isinstance(result, Label)
    assert result.kind == kind


def test_imb_nine_digit_mid() -> None:
    result = parse("01234912345678123456")
    assert isinstance(result, Label)
    assert (result.fields["mid"], result.fields["serial"]) == ("912345678", "123456")


def test_impb_channels_without_a_known_mid_width_have_no_mid_field() -> None:
    body = "940011234567890123456"
    result = parse(body + str(mod10_check_digit(body)))
    assert isinstance(result, Label)
    assert "mid" not in result.fields
    assert result.fields["channel"] == "94"


# ---------------------------------------------------------------------------------------------
# Operator commands

COMMAND_ARGS = {
    "LOAD": "APPT123",
    "CLOSE": "",
    "FORM8125": "8125-0042",
    "ENDFORM": "",
    "PLACARD": "",
    "REJECT": "wet pallet",
    "TICKET": "HD-7781",
    "OPERATOR": "jsmith",
    "VOID": "",
    "OUTAGE": "NATIONAL",
    "ALLCLEAR": "",
    "LEAD": "4821",
}


def test_command_table_covers_every_known_command() -> None:
    assert set(COMMAND_ARGS) == COMMANDS


@pytest.mark.parametrize(("name", "arg"), sorted(COMMAND_ARGS.items()))
def test_each_known_command_parses(name: str, arg: str) -> None:
    raw = f"DOCK:{name}:{arg}" if arg else f"DOCK:{name}"
    result = parse(raw)
    assert isinstance(result, Label), result
    assert (result.kind, result.normalized, result.fields) == ("command", raw, {"command": name, "arg": arg})


@pytest.mark.parametrize("name", sorted(name for name, arg in COMMAND_ARGS.items() if arg))
def test_missing_argument_is_named(name: str) -> None:
    for raw in (f"DOCK:{name}", f"DOCK:{name}:", f"DOCK:{name}:   "):
        result = parse(raw)
        assert isinstance(result, Rejection)
        assert result.reason.startswith(f"DOCK:{name} needs an argument, e.g. DOCK:{name}:")
        assert result.kind == "command"


def test_missing_load_argument_reason_is_exact() -> None:
    result = parse("DOCK:LOAD")
    assert isinstance(result, Rejection)
    assert result.reason == "DOCK:LOAD needs an argument, e.g. DOCK:LOAD:<appointment>"


@pytest.mark.parametrize("name", sorted(name for name, arg in COMMAND_ARGS.items() if not arg))
def test_argument_to_a_command_that_takes_none_is_rejected(name: str) -> None:
    result = parse(f"DOCK:{name}:extra")
    assert isinstance(result, Rejection)
    assert f"DOCK:{name} takes no argument" in result.reason


def test_unknown_command_lists_the_known_ones() -> None:
    result = parse("DOCK:UNLOAD:5")
    assert isinstance(result, Rejection)
    assert "unknown command DOCK:UNLOAD" in result.reason
    for name in COMMANDS:
        assert name in result.reason


def test_command_without_a_name() -> None:
    result = parse("DOCK:")
    assert isinstance(result, Rejection)
    assert "no command name" in result.reason


def test_outage_takes_only_national() -> None:
    rejected = parse("DOCK:OUTAGE:LOCAL")
    assert isinstance(rejected, Rejection)
    assert "NATIONAL" in rejected.reason
    result = parse("DOCK:OUTAGE:national")
    assert isinstance(result, Label)
    assert result.normalized == "DOCK:OUTAGE:NATIONAL"


def test_command_argument_keeps_colons_spaces_and_case() -> None:
    result = parse("]C0 dock: reject :Pallet wet: see photo 3 \r\n")
    assert isinstance(result, Label)
    assert result.normalized == "DOCK:REJECT:Pallet wet: see photo 3"
    assert result.fields == {"command": "REJECT", "arg": "Pallet wet: see photo 3"}
    assert result.symbology == "code128"


def test_command_from_bytes() -> None:
    result = parse(b"DOCK:LOAD:A-17\r\n")
    assert isinstance(result, Label)
    assert result.fields == {"command": "LOAD", "arg": "A-17"}


# ---------------------------------------------------------------------------------------------
# mod-10 and render_imcb


@pytest.mark.parametrize(
    "pic",
    [
        "9374890100000003985039",
        "92023999991043543415313958",
        "9270490119521303389129",
        "9200191234567800000018",
        "9300112345600000000019",
    ],
)
def test_mod10_matches_published_and_example_numbers(pic: str) -> None:
    assert mod10_check_digit(pic[:-1]) == int(pic[-1])


@pytest.mark.parametrize("bad", ["", "12a4", "１２３", "12 3"])
def test_mod10_rejects_non_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="mod-10"):
        mod10_check_digit(bad)


@pytest.mark.parametrize(
    ("mid", "serial", "fact"),
    [
        ("923456", "000000123456", "Mailer ID"),
        ("12345", "0000000123456", "Mailer ID"),
        ("123456", "00000123456", "12 characters"),
        ("123456", "------------", "all '-'"),
        ("123456", "00000 123456", "' ' at position 15"),
        ("900012345", "0000-9876", "'-'"),
    ],
)
def test_render_imcb_refuses_what_parse_would_not_read_back(mid: str, serial: str, fact: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fact)):
        render_imcb(mid, serial)


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies

DIGITS = string.digits
ALNUM = string.ascii_letters + string.digits
CHANNELS = ("91", "92", "93", "94", "95")


def digits(count: int) -> st.SearchStrategy[str]:
    """Strings of exactly count ASCII digits (drawn as one integer: much faster than per character)."""
    if count == 0:
        return st.just("")
    return st.integers(0, 10**count - 1).map(lambda value: str(value).zfill(count))


mids = st.one_of(
    st.builds(str.__add__, st.sampled_from("012345678"), digits(5)),
    st.builds(str.__add__, st.just("9"), digits(8)),
)


@st.composite
def imcb_parts(draw: st.DrawFn) -> tuple[str, str]:
    """A Mailer ID and a full-width serial, sometimes dash-padded."""
    mid = draw(mids)
    width = 18 - len(mid)
    body = draw(st.text(ALNUM, min_size=1, max_size=width))
    return mid, "-" * (width - len(body)) + body


@st.composite
def pics(draw: st.DrawFn) -> str:
    """A valid IMpb tracking number of any PIC length."""
    length = draw(st.sampled_from((22, 26, 30, 34)))
    body = draw(st.sampled_from(CHANNELS)) + draw(digits(length - 3))
    return body + str(mod10_check_digit(body))


@st.composite
def imbs(draw: st.DrawFn) -> str:
    """A valid IMb digit string with any routing length."""
    mid = draw(mids)
    tracking = (
        draw(digits(1)) + draw(st.sampled_from("01234")) + draw(digits(3)) + mid + draw(digits(15 - len(mid)))
    )
    return tracking + draw(digits(draw(st.sampled_from((0, 5, 9, 11)))))


@st.composite
def routed_impbs(draw: st.DrawFn) -> str:
    """An IMpb with 420 + ZIP5 or ZIP9 routing, with or without the GS separator."""
    separator = draw(st.sampled_from(("", GS)))
    return "420" + draw(st.one_of(digits(5), digits(9))) + separator + draw(pics())


command_args = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30)


@st.composite
def commands(draw: st.DrawFn) -> str:
    """A valid operator command, in any case for the prefix and name."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    if name == "OUTAGE":
        arg = "NATIONAL"
    elif COMMAND_ARGS[name]:
        arg = draw(command_args.filter(str.strip))
    else:
        arg = ""
    text = f"DOCK:{name}:{arg}" if arg else f"DOCK:{name}"
    return text.lower() if draw(st.booleans()) else text


valid_texts = st.one_of(
    st.builds(lambda parts: render_imcb(*parts), imcb_parts()),
    digits(24),
    imbs(),
    pics(),
    routed_impbs(),
    commands(),
)

AIM_PREFIXES = {"": None, "]C1": "gs1-128", "]C0": "code128", "]Q1": "qr", "]d2": "datamatrix"}


def decorate(text: str, prefix: str, ending: str, spaced: bool, as_bytes: bool) -> str | bytes:
    """Text as a scanner might send it: AIM prefix, HRI spaces, line ending, maybe bytes."""
    if spaced and not text.upper().startswith("DOCK:"):
        text = " ".join(text[i : i + 4] for i in range(0, len(text), 4))
    wrapped = prefix + text + ending
    return wrapped.encode("ascii") if as_bytes else wrapped


def assert_well_formed(result: Label | Rejection) -> None:
    """Every result is one of the two types with printable, bounded text."""
    assert isinstance(result, Label | Rejection)
    assert PRINTABLE_ASCII.fullmatch(result.normalized)
    if isinstance(result, Rejection):
        assert result.ok is False
        assert result.reason
        assert PRINTABLE_ASCII.fullmatch(result.reason)
        assert len(result.reason) <= 250
    else:
        assert result.ok is True
        assert all(isinstance(value, str) for value in result.fields.values())


def ambiguous_routing(label: Label) -> bool:
    """True when a GS-split IMpb would also validate, read without the GS, as ZIP+4 + a shorter PIC."""
    zip_code, pic = label.fields.get("routing_zip", ""), label.fields.get("pic", "")
    if len(zip_code) != 5 or len(pic) < 26:
        return False
    shorter = pic[4:]
    return shorter[:2] in CHANNELS and mod10_check_digit(shorter[:-1]) == int(shorter[-1])


# ---------------------------------------------------------------------------------------------
# Properties


@CHEAP
@given(st.binary(max_size=64))
def test_parse_never_raises_on_bytes(raw: bytes) -> None:
    assert_well_formed(parse(raw))
    normalize(raw)


@CHEAP
@given(st.text(max_size=64))
def test_parse_never_raises_on_text(raw: str) -> None:
    assert_well_formed(parse(raw))
    normalize(raw)


@CHEAP
@given(st.text(alphabet="0123456789Mm-]C1Qd()\x1d\r\n\t :DOCKLAXz#", max_size=48))
def test_parse_never_raises_on_barcode_like_text(raw: str) -> None:
    assert_well_formed(parse(raw))
    normalize(raw)


@CHEAP
@given(imcb_parts())
def test_render_imcb_round_trips(parts: tuple[str, str]) -> None:
    mid, serial = parts
    text = render_imcb(mid, serial)
    result = parse(text)
    assert isinstance(result, Label)
    assert (result.kind, result.normalized) == ("imcb", text)
    assert result.fields == {"mid": mid, "serial": serial, "mid_length": str(len(mid))}


@CHEAP
@given(pics())
def test_appending_the_check_digit_makes_a_pic_validate(pic: str) -> None:
    result = parse(pic)
    assert isinstance(result, Label)
    assert (result.kind, result.fields["pic"]) == ("impb", pic)


@CHEAP
@given(pics(), st.integers(0, 33), st.integers(1, 9))
def test_changing_any_single_digit_breaks_the_pic(pic: str, where: int, shift: int) -> None:
    index = where % len(pic)
    changed = pic[:index] + str((int(pic[index]) + shift) % 10) + pic[index + 1 :]
    assert mod10_check_digit(changed[:-1]) != int(changed[-1])
    result = parse(changed)
    if isinstance(result, Label):  # the change made "420" + ZIP + a different, valid PIC
        assert changed.startswith("420") and result.fields["pic"] != changed
    elif result.kind == "impb":
        assert ("check digit" in result.reason) or ("91-95" in result.reason)
    else:  # 30 digits that no longer start 91-95 read as a broken IMb
        assert (len(pic), result.reason) == (30, "30 digits; an IMb has 20, 25, 29 or 31")


@CHEAP
@given(valid_texts)
def test_normalized_text_parses_to_the_same_label(text: str) -> None:
    label = parse(text)
    assert isinstance(label, Label), label
    assert normalize(label.normalized) == (label.normalized, None)
    again = parse(label.normalized)
    assert isinstance(again, Label)
    assert (again.kind, again.normalized) == (label.kind, label.normalized)
    if again.fields != label.fields:
        assert ambiguous_routing(label), (label, again)


@CHEAP
@given(
    valid_texts,
    st.sampled_from(sorted(AIM_PREFIXES)),
    st.sampled_from(["", "\r", "\n", "\r\n"]),
    st.booleans(),
    st.booleans(),
)
def test_scanner_decoration_does_not_change_the_label(
    text: str, prefix: str, ending: str, spaced: bool, as_bytes: bool
) -> None:
    plain, read = parse(text), parse(decorate(text, prefix, ending, spaced, as_bytes))
    assert isinstance(plain, Label) and isinstance(read, Label), (plain, read)
    assert (read.kind, read.normalized, read.fields) == (plain.kind, plain.normalized, plain.fields)
    assert read.symbology == AIM_PREFIXES[prefix]


def test_ambiguity_helper_recognises_the_documented_case() -> None:
    label = parse("42020260" + GS + "91029200191234567800000018")
    assert isinstance(label, Label)
    assert ambiguous_routing(label)

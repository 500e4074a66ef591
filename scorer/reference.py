"""Reference data import (``dock-scorer import KIND FILE``): eDoc, mailers, facilities, Mail Direction File, zones.

CSV with a header row; every column is read as text (ZIPs and MIDs keep their leading zeros). Each row is
checked; every bad row is reported with file, line and reason, and an import is all-or-nothing: one bad row
and nothing is stored. See docs/reference-data.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.clock import parse_rfc3339

KINDS = ("edoc", "mailers", "facilities", "mdf", "zones")

COLUMNS: dict[str, tuple[str, ...]] = {
    "edoc": ("imcb", "submitter_crid", "owner_crid", "statement_id", "statement_status", "finalized_at",
             "uploaded_at", "mailing_date", "einduction", "destination_zip", "entry_facility_type",
             "entry_discount", "mail_class", "zone_claimed", "postage", "postage_if_none", "postage_by_level",
             "postage_by_zone"),
    "mailers": ("crid", "mids", "seamless", "continuous_mids"),
    "facilities": ("facility", "zip3", "tz", "entry_levels"),
    "mdf": ("destination_zip", "entry_facility_type", "facility"),
    "zones": ("origin_zip3", "destination_zip3", "zone"),
}

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DIGITS = re.compile(r"^\d+$")
_LEVEL = re.compile(r"^[A-Z0-9]{1,12}$")


class ImportError_(Exception):
    """The file was rejected; ``problems`` lists 'file:line: reason' for every bad row (up to 100)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RowError(ValueError):
    pass


def rfc3339(text: str, column: str) -> dt.datetime:
    try:
        return parse_rfc3339(text, column)
    except ValueError as e:
        raise RowError(str(e)) from None


def date(text: str, column: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise RowError(f"{column} {text!r} is not a date YYYY-MM-DD") from None


def money(text: str, column: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowError(f"{column} {text!r} is not an amount in USD such as 812.40") from None
    if not value.is_finite() or value < 0:
        raise RowError(f"{column} {text!r} must be a non-negative amount")
    return value


def yes_no(text: str, column: str) -> bool:
    if text.upper() not in ("Y", "N"):
        raise RowError(f"{column} must be Y or N, got {text!r}")
    return text.upper() == "Y"


def priced(text: str, column: str, key: Callable[[str], Any]) -> dict[Any, Decimal]:
    """``DNDC=812.40;DSCF=790.10`` (may be blank)."""
    out: dict[Any, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, amount = part.partition("=")
        if not sep:
            raise RowError(f"{column}: {part!r} is not NAME=AMOUNT")
        out[key(name.strip())] = money(amount.strip(), column)
    return out


def mid_list(text: str, column: str) -> list[str]:
    mids = [m.strip() for m in text.split(";") if m.strip()]
    for m in mids:
        if not (_DIGITS.match(m) and (len(m) == 9 if m[0] == "9" else len(m) == 6)):
            raise RowError(f"{column}: {m!r} is not a Mailer ID (6 digits, or 9 starting with 9)")
    return mids


def _zip(text: str, column: str, lengths: tuple[int, ...]) -> str:
    if not (_DIGITS.match(text) and len(text) in lengths):
        raise RowError(f"{column} {text!r} must be {' or '.join(map(str, lengths))} digits")
    return text


def _level(text: str, column: str) -> str:
    v = text.upper()
    if not _LEVEL.match(v):
        raise RowError(f"{column} {text!r} is not a level such as NONE, DNDC, DSCF, DDU")
    return v


def check_edoc(r: dict[str, str]) -> dict[str, Any]:
    from agent.barcode import parse

    label = parse(r["imcb"])
    if not label.ok or label.kind != "imcb":
        raise RowError(f"imcb {r['imcb']!r}: {getattr(label, 'reason', 'not an IMcb')}")
    for c in ("submitter_crid", "owner_crid", "statement_id"):
        if not _ID.match(r[c]):
            raise RowError(f"{c} {r[c]!r} is missing or has characters other than letters, digits, . _ -")
    status = r["statement_status"].upper()
    if not re.match(r"^[A-Z]{3}$", status):
        raise RowError(f"statement_status {r['statement_status']!r} is not a 3-letter status such as FIN")
    finalized = rfc3339(r["finalized_at"], "finalized_at") if r["finalized_at"] else None
    if status in ("FIN", "FPP") and finalized is None:
        raise RowError(f"finalized_at is required when statement_status is {status}")
    if status not in ("FIN", "FPP") and finalized is not None:
        raise RowError(f"finalized_at must be blank unless statement_status is FIN or FPP (it is {status})")
    zone = r["zone_claimed"]
    if zone and not _DIGITS.match(zone):
        raise RowError(f"zone_claimed {zone!r} must be a whole number or blank")
    return {
        "imcb": label.normalized, "submitter_crid": r["submitter_crid"], "owner_crid": r["owner_crid"],
        "statement_id": r["statement_id"], "statement_status": status,
        "finalized_at": finalized.isoformat() if finalized else None,
        "uploaded_at": rfc3339(r["uploaded_at"], "uploaded_at").isoformat(),
        "mailing_date": date(r["mailing_date"], "mailing_date").isoformat(),
        "einduction": int(yes_no(r["einduction"], "einduction")),
        "destination_zip": _zip(r["destination_zip"], "destination_zip", (5, 9)),
        "entry_facility_type": _level(r["entry_facility_type"], "entry_facility_type"),
        "entry_discount": _level(r["entry_discount"], "entry_discount"),
        "mail_class": _level(r["mail_class"], "mail_class"),
        "zone_claimed": int(zone) if zone else None,
        "postage": str(money(r["postage"], "postage")),
        "postage_if_none": str(money(r["postage_if_none"], "postage_if_none")),
        "postage_by_level": _canonical(priced(r["postage_by_level"], "postage_by_level", lambda k: _level(k, "level"))),
        "postage_by_zone": _canonical(priced(r["postage_by_zone"], "postage_by_zone", _zone_key)),
    }


def _zone_key(k: str) -> int:
    if not _DIGITS.match(k):
        raise RowError(f"postage_by_zone: zone {k!r} must be a whole number")
    return int(k)


def _canonical(prices: dict[Any, Decimal]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(prices.items()))


def check_mailers(r: dict[str, str]) -> dict[str, Any]:
    if not _ID.match(r["crid"]):
        raise RowError(f"crid {r['crid']!r} is missing or malformed")
    mids = mid_list(r["mids"], "mids")
    continuous = mid_list(r["continuous_mids"], "continuous_mids")
    stray = sorted(set(continuous) - set(mids))
    if stray:
        raise RowError(f"continuous_mids {stray} are not among this CRID's mids")
    return {"crid": r["crid"], "mids": ";".join(mids), "seamless": int(yes_no(r["seamless"], "seamless")),
            "continuous_mids": ";".join(continuous)}


def check_facilities(r: dict[str, str]) -> dict[str, Any]:
    if not _ID.match(r["facility"]):
        raise RowError(f"facility {r['facility']!r} is missing or malformed")
    try:
        ZoneInfo(r["tz"])
    except (ZoneInfoNotFoundError, ValueError):
        raise RowError(f"tz {r['tz']!r} is not an IANA time zone such as America/Chicago") from None
    levels = [_level(x.strip(), "entry_levels") for x in r["entry_levels"].split(";") if x.strip()]
    return {"facility": r["facility"], "zip3": _zip(r["zip3"], "zip3", (3,)), "tz": r["tz"],
            "entry_levels": ";".join(levels)}


def check_mdf(r: dict[str, str]) -> dict[str, Any]:
    if not _ID.match(r["facility"]):
        raise RowError(f"facility {r['facility']!r} is missing or malformed")
    return {"destination_zip": _zip(r["destination_zip"], "destination_zip", (3, 5)),
            "entry_facility_type": _level(r["entry_facility_type"], "entry_facility_type"),
            "facility": r["facility"]}


def check_zones(r: dict[str, str]) -> dict[str, Any]:
    if not _DIGITS.match(r["zone"]) or int(r["zone"]) > 9:
        raise RowError(f"zone {r['zone']!r} must be a whole number 0-9")
    return {"origin_zip3": _zip(r["origin_zip3"], "origin_zip3", (3,)),
            "destination_zip3": _zip(r["destination_zip3"], "destination_zip3", (3,)), "zone": int(r["zone"])}


CHECKS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "edoc": check_edoc, "mailers": check_mailers, "facilities": check_facilities, "mdf": check_mdf,
    "zones": check_zones,
}
KEYS: dict[str, tuple[str, ...]] = {
    "edoc": ("imcb", "statement_id"), "mailers": ("crid",), "facilities": ("facility",),
    "mdf": ("destination_zip", "entry_facility_type"), "zones": ("origin_zip3", "destination_zip3"),
}


@dataclass(frozen=True)
class Parsed:
    kind: str
    rows: list[dict[str, Any]]


def read_csv(kind: str, path: Path | str, stream: Iterable[str] | None = None) -> Parsed:
    """Parse and check a whole file.

    Raises:
        ImportError_: listing every bad row ('file:line: reason'); nothing is stored.
    """
    if kind not in CHECKS:
        raise ImportError_([f"unknown kind {kind!r}; one of {', '.join(KINDS)}"])
    name = str(path)
    try:
        handle = stream if stream is not None else open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as e:
        raise ImportError_([f"{name}: cannot read: {e.strerror}"]) from None
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], int] = {}
    try:
        reader = csv.DictReader(handle if stream is not None else handle, strict=True)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS[kind] if c not in header]
        extra = [c for c in header if c not in COLUMNS[kind]]
        if missing or extra:
            parts = ([f"missing columns {missing}"] if missing else []) + ([f"unknown columns {extra}"] if extra else [])
            raise ImportError_([f"{name}:1: header: " + "; ".join(parts)])
        for raw in reader:
            line = reader.line_num
            if None in raw or any(v is None for v in raw.values()):
                problems.append(f"{name}:{line}: {len(header)} columns expected")
                continue
            try:
                row = CHECKS[kind]({k: (v or "").strip() for k, v in raw.items()})
            except RowError as e:
                problems.append(f"{name}:{line}: {e}")
                continue
            key = tuple(row[k] for k in KEYS[kind])
            if key in seen:
                problems.append(f"{name}:{line}: same {'/'.join(KEYS[kind])} as line {seen[key]}")
                continue
            seen[key] = line
            rows.append(row)
            if len(problems) >= 100:
                break
    except (csv.Error, UnicodeDecodeError) as e:
        problems.append(f"{name}: not a readable CSV file: {e}")
    finally:
        if stream is None:
            handle.close()  # type: ignore[union-attr]
    if problems:
        raise ImportError_(problems)
    if kind == "mailers":
        owner: dict[str, str] = {}
        for r in rows:
            for m in filter(None, r["mids"].split(";")):
                if m in owner:
                    problems.append(f"{name}: Mailer ID {m} belongs to both {owner[m]} and {r['crid']}")
                owner[m] = r["crid"]
        if problems:
            raise ImportError_(problems)
    return Parsed(kind, rows)


def read_text(kind: str, text: str, name: str = "<text>") -> Parsed:
    return read_csv(kind, name, io.StringIO(text))

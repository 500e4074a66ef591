"""2D mobile barcode sample verification (DMM 709 4.0, seed 001) and IBI indicia as postage evidence (seed 002).

Pure: ``verify`` takes what the camera pipeline decoded from a sample piece plus the claim (promotion, mailing
date, class, shape) and returns a verdict with one reason per rule. Promotions are data (config/promotions/
*.toml): a later year's rules are a new file, not new code. What a machine cannot judge (relevance to the
contents, purpose) is reported as "needs human confirmation", never guessed.

An indicium (an IBI Data Matrix or PDF417) is recorded by the SHA-256 of its payload; its layout is not
public, so no postage value is read from it. The same payload seen on another piece is flagged as a possible
duplicated (unpaid) indicium.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMOTIONS_DIR = Path(__file__).resolve().parent.parent / "config" / "promotions"
TWO_D = frozenset({"qr", "datamatrix", "aztec", "pdf417", "maxicode", "micro-qr"})
IBI_SYMBOLOGIES = frozenset({"datamatrix", "pdf417"})


class PromotionError(ValueError):
    """A promotion file is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Promotion:
    id: str
    title: str
    source: str
    discount_percent: float
    mailing_window: tuple[dt.date, dt.date]
    pvds_origin_window: tuple[dt.date, dt.date] | None
    pvds_destination_window: tuple[dt.date, dt.date] | None
    payment_method: str
    sample_retention_until: dt.date | None
    two_d_only: bool
    smartphone_symbologies: frozenset[str]
    forbidden: frozenset[str]
    qualifying: frozenset[str]
    human_checks: tuple[str, ...]
    eligible: tuple[tuple[str, frozenset[str]], ...]
    classes: tuple[tuple[str, re.Pattern[str]], ...]


def _window(v: Any, key: str, path: Path) -> tuple[dt.date, dt.date] | None:
    if v is None:
        return None
    try:
        a, b = (dt.date.fromisoformat(str(x)) for x in v)
    except (ValueError, TypeError):
        raise PromotionError(f"{path}: {key} must be [\"YYYY-MM-DD\", \"YYYY-MM-DD\"]") from None
    if b < a:
        raise PromotionError(f"{path}: {key} ends before it starts")
    return a, b


def load_promotion(path: Path) -> Promotion:
    """Read and check one promotion file.

    Raises:
        PromotionError: naming the file and what is wrong.
    """
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PromotionError(f"{path}: {e}") from None
    known = {"id", "title", "source", "discount_percent", "mailing_window", "pvds_origin_window",
             "pvds_destination_window", "payment_method", "sample_retention_until", "two_d_only",
             "smartphone_symbologies", "forbidden", "qualifying", "human_checks", "eligible", "classes"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise PromotionError(f"{path}: unknown keys {unknown}")
    try:
        classes = tuple((c["name"], re.compile(c["pattern"])) for c in d.get("classes", []))
        eligible = tuple((e["mail_class"].upper(), frozenset(s.lower() for s in e["shapes"]))
                         for e in d.get("eligible", []))
        window = _window(d["mailing_window"], "mailing_window", path)
        assert window is not None
        retention = d.get("sample_retention_until")
        return Promotion(
            id=d["id"], title=d.get("title", d["id"]), source=d.get("source", ""),
            discount_percent=float(d.get("discount_percent", 0)), mailing_window=window,
            pvds_origin_window=_window(d.get("pvds_origin_window"), "pvds_origin_window", path),
            pvds_destination_window=_window(d.get("pvds_destination_window"), "pvds_destination_window", path),
            payment_method=d.get("payment_method", ""),
            sample_retention_until=dt.date.fromisoformat(str(retention)) if retention else None,
            two_d_only=bool(d.get("two_d_only", True)),
            smartphone_symbologies=frozenset(d.get("smartphone_symbologies", ["qr"])),
            forbidden=frozenset(d.get("forbidden", [])), qualifying=frozenset(d.get("qualifying", [])),
            human_checks=tuple(d.get("human_checks", [])), eligible=eligible, classes=classes,
        )
    except (KeyError, TypeError, re.error, ValueError) as e:
        raise PromotionError(f"{path}: {type(e).__name__}: {e}") from None


def find_promotion(promotion_id: str, directory: Path = PROMOTIONS_DIR) -> Promotion:
    """The promotion with this id among the files of ``directory``.

    Raises:
        PromotionError: no such promotion (the known ids are listed).
    """
    found = {}
    for path in sorted(directory.glob("*.toml")):
        p = load_promotion(path)
        found[p.id] = p
    if promotion_id not in found:
        raise PromotionError(f"no promotion {promotion_id!r} in {directory}; known: {', '.join(sorted(found)) or 'none'}")
    return found[promotion_id]


@dataclass(frozen=True)
class Read:
    """One code decoded from the sample image."""

    symbology: str
    payload: bytes

    @property
    def text(self) -> str | None:
        try:
            t = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return t if t.isprintable() else None


def classify(read: Read, promotion: Promotion) -> tuple[str, str]:
    """(class, why) of a code's content."""
    text = read.text
    if text is None:
        if read.symbology in IBI_SYMBOLOGIES:
            return "postage_evidence", "binary payload of a Data Matrix/PDF417: postage evidence (an IBI indicium)"
        return "binary", "binary payload"
    for name, pattern in promotion.classes:
        if pattern.search(text):
            return name, f"matches the {name.replace('_', ' ')} pattern"
    return "unknown", "content of no known kind"


@dataclass
class Check:
    rule: str
    result: str  # pass | fail | human
    reason: str


@dataclass
class SampleVerdict:
    promotion: str
    verdict: str  # eligible | ineligible | needs_human
    checks: list[Check] = field(default_factory=list)
    code: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"promotion": self.promotion, "verdict": self.verdict, "code": self.code,
                "checks": [{"rule": c.rule, "result": c.result, "reason": c.reason} for c in self.checks]}


def verify(reads: list[Read], promotion: Promotion, *, mailing_date: dt.date, mail_class: str, shape: str,
           pvds: str | None = None) -> SampleVerdict:
    """Judge a sample piece against a promotion: one check per rule, the verdict from all of them."""
    checks: list[Check] = []
    two_d = [r for r in reads if r.symbology in TWO_D]
    chosen = next((r for r in two_d if r.symbology in promotion.smartphone_symbologies), two_d[0] if two_d else None)
    if chosen is None:
        if reads:
            checks.append(Check("2d_barcode", "fail", f"only one-dimensional codes ({', '.join(sorted({r.symbology for r in reads}))}) "
                                "were read: one-dimensional barcodes do not qualify (4.2a)"))
        else:
            checks.append(Check("2d_barcode", "fail", "no readable barcode on the sample (4.2a/b)"))
    elif chosen.symbology not in promotion.smartphone_symbologies:
        checks.append(Check("2d_barcode", "fail", f"a {chosen.symbology} symbol is not one a consumer smartphone "
                            f"reads ({', '.join(sorted(promotion.smartphone_symbologies))}) (4.2b)"))
    else:
        checks.append(Check("2d_barcode", "pass", f"a {chosen.symbology} symbol a smartphone reads"))
    code = None
    if chosen is not None:
        kind, why = classify(chosen, promotion)
        code = {"symbology": chosen.symbology, "text": chosen.text,
                "payload_sha256": hashlib.sha256(chosen.payload).hexdigest(), "class": kind}
        if kind in promotion.forbidden:
            checks.append(Check("content", "fail", f"{why}: {kind.replace('_', ' ')} content is not eligible (4.2b)"))
        elif kind in promotion.qualifying:
            checks.append(Check("content", "pass", f"{why}"))
        else:
            checks.append(Check("content", "human", f"{why}: a person must confirm it is marketing, promotional or "
                                "educational content (4.2b)"))
    checks.append(_date_check(promotion, mailing_date, pvds))
    allowed = dict(promotion.eligible)
    shapes = allowed.get(mail_class.upper())
    if shapes is None:
        checks.append(Check("class_shape", "fail", f"{mail_class} is not an eligible class "
                            f"({', '.join(sorted(allowed))}) (4.2c)"))
    elif shape.lower() not in shapes:
        checks.append(Check("class_shape", "fail", f"{shape} is not eligible for {mail_class} "
                            f"({', '.join(sorted(shapes))}) (4.2c)"))
    else:
        checks.append(Check("class_shape", "pass", f"{mail_class} {shape} is eligible"))
    for text in promotion.human_checks:
        checks.append(Check("human", "human", f"needs human confirmation: {text}"))
    if any(c.result == "fail" for c in checks):
        verdict = "ineligible"
    elif any(c.result == "human" for c in checks):
        verdict = "needs_human"
    else:
        verdict = "eligible"
    return SampleVerdict(promotion.id, verdict, checks, code)


def _date_check(p: Promotion, mailing_date: dt.date, pvds: str | None) -> Check:
    if pvds == "origin" and p.pvds_origin_window:
        lo, hi = p.pvds_origin_window
        where = "PVDS origin acceptance"
    elif pvds == "destination" and p.pvds_destination_window:
        lo, hi = p.pvds_destination_window
        where = "PVDS destination entry"
    else:
        lo, hi = p.mailing_window
        where = "mailing"
    if lo <= mailing_date <= hi:
        return Check("date", "pass", f"{where} date {mailing_date} is within {lo} to {hi}")
    return Check("date", "fail", f"{where} date {mailing_date} is outside {lo} to {hi} (4.1)")


def indicium_hash(payload: bytes) -> str:
    """IBI indicia are recorded by the hash of their payload only (seed 002; DOMAIN.md §6)."""
    return hashlib.sha256(payload).hexdigest()

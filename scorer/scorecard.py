"""The Table B-3 scorecard: containers from scans, each judged by scorer.rules, counted and assessed per CRID.

Loading reads the database once (reference data, the period's scans and those of the 46 days before it, which
can be the originals of duplicates); evaluation is pure Python over dictionaries; the outputs are the JSON/CSV
scorecard and the list of errors with their evidence.
"""

from __future__ import annotations

import bisect
import datetime as dt
import gc
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from scorer import rules
from scorer.rules import Container, EdocRow, Facility, Mailer, MdfRow, Scan

UTC = dt.timezone.utc


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _prices(text: str, key: Any) -> dict[Any, Decimal]:
    out = {}
    for part in filter(None, text.split(";")):
        k, _, v = part.partition("=")
        out[key(k)] = Decimal(v)
    return out


class LazyPrices(Mapping[Any, Decimal]):
    """``DNDC=812.40;DSCF=790.10`` parsed on first use: only an assessed error reads it (10 % of a 1M-container
    scorecard went to parsing prices nobody looked at)."""

    __slots__ = ("_text", "_key", "_parsed")
    _EMPTY: dict[Any, Decimal] = {}

    def __init__(self, text: str, key: Any) -> None:
        self._text = text
        self._key = key
        self._parsed: dict[Any, Decimal] | None = None if text else self._EMPTY

    def _get(self) -> dict[Any, Decimal]:
        if self._parsed is None:
            self._parsed = _prices(self._text, self._key)
        return self._parsed

    def __getitem__(self, k: Any) -> Decimal:
        return self._get()[k]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


@dataclass
class Reference:
    """Everything the rules consult, keyed for constant-time lookups."""

    edoc: dict[str, list[EdocRow]] = field(default_factory=dict)
    mid_crid: dict[str, str] = field(default_factory=dict)
    continuous: set[str] = field(default_factory=set)
    mailers: dict[str, Mailer] = field(default_factory=dict)
    facilities: dict[str, Facility] = field(default_factory=dict)
    mdf: dict[tuple[str, str], MdfRow] = field(default_factory=dict)
    zones: dict[tuple[str, str], int] = field(default_factory=dict)
    postage_by_crid: dict[str, tuple[list[dt.date], list[Decimal]]] = field(default_factory=dict)

    def average_postage(self, crid: str, last_day: dt.date) -> Decimal | None:
        """Containers of the submitter CRID with mailing dates in the 30 days ending on ``last_day``."""
        dates, prefix = self.postage_by_crid.get(crid, ([], [Decimal(0)]))
        lo = bisect.bisect_left(dates, last_day - dt.timedelta(days=29))
        hi = bisect.bisect_right(dates, last_day)
        if hi <= lo:
            return None
        return (prefix[hi] - prefix[lo]) / (hi - lo)


def edoc_row(r: tuple[Any, ...]) -> EdocRow:
    (imcb, statement_id, submitter, owner, status, finalized, uploaded, mailing, einduction, dest, eft, disc, cls,
     zone, postage, if_none, by_level, by_zone) = r
    return EdocRow(
        imcb=imcb, submitter_crid=submitter, owner_crid=owner, statement_id=statement_id, statement_status=status,
        finalized_at=_t(finalized) if finalized else None, uploaded_at=_t(uploaded),
        mailing_date=dt.date.fromisoformat(mailing), einduction=bool(einduction), destination_zip=dest,
        entry_facility_type=eft, entry_discount=disc, mail_class=cls, zone_claimed=zone,
        postage=Decimal(postage), postage_if_none=Decimal(if_none), postage_by_level=LazyPrices(by_level, str),
        postage_by_zone=LazyPrices(by_zone, int),
    )


EDOC_COLUMNS = ("imcb, statement_id, submitter_crid, owner_crid, statement_status, finalized_at, uploaded_at, "
                "mailing_date, einduction, destination_zip, entry_facility_type, entry_discount, mail_class, "
                "zone_claimed, postage, postage_if_none, postage_by_level, postage_by_zone")


def load_reference(db: Any, imcbs: Iterable[str] | None = None) -> Reference:
    """Reference data from the scorer database (``imcbs`` limits the eDoc rows loaded, for a dock slice)."""
    ref = Reference()
    q = db.backend.query
    for crid, mids, seamless, continuous in q("SELECT crid, mids, seamless, continuous_mids FROM mailers"):
        cont = frozenset(filter(None, continuous.split(";")))
        ref.mailers[crid] = Mailer(crid, bool(seamless), cont)
        ref.continuous |= cont
        for m in filter(None, mids.split(";")):
            ref.mid_crid[m] = crid
    for fac, zip3, tz, levels in q("SELECT facility, zip3, tz, entry_levels FROM facilities"):
        ref.facilities[fac] = Facility(fac, zip3, tz, frozenset(filter(None, levels.split(";"))))
    for dz, eft, fac in q("SELECT destination_zip, entry_facility_type, facility FROM mdf"):
        ref.mdf[(dz, eft)] = MdfRow(dz, eft, fac)
    for o, d, z in q("SELECT origin_zip3, destination_zip3, zone FROM zones"):
        ref.zones[(o, d)] = int(z)
    postage: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    wanted = set(imcbs) if imcbs is not None else None
    for r in q(f"SELECT {EDOC_COLUMNS} FROM edoc"):
        if wanted is not None and r[0] not in wanted:
            continue
        row = edoc_row(r)
        ref.edoc.setdefault(row.imcb, []).append(row)
        postage[row.submitter_crid].append((row.mailing_date, row.postage))
    for crid, items in postage.items():
        items.sort()
        prefix = [Decimal(0)]
        for _, p in items:
            prefix.append(prefix[-1] + p)
        ref.postage_by_crid[crid] = ([d for d, _ in items], prefix)
    return ref


def load_scans(db: Any, since: dt.datetime, until: dt.datetime
               ) -> tuple[list[Scan], dict[str, tuple[dt.datetime, str]]]:
    """Container scans (IMcb) between two instants, and the later disposition changes by scan event id (the last
    change of a scan wins, with its time: the container's final disposition is its latest decision)."""
    scans = [
        Scan(event_id=eid, device_id=dev, site=site, imcb=barcode, scanned_at=_t(at), appointment=appt,
             ticket=ticket, mode=mode, disposition=disp or "unverified", role=role or "container")
        for eid, dev, site, barcode, at, appt, ticket, mode, disp, role in db.backend.query(
            "SELECT event_id, device_id, site, barcode, scanned_at, appointment, ticket, mode, disposition, role"
            " FROM events WHERE type = 'scan' AND kind = 'imcb' AND scanned_at >= ? AND scanned_at < ?",
            (since.strftime("%Y-%m-%dT%H:%M:%S"), until.strftime("%Y-%m-%dT%H:%M:%S")),
        )
    ]
    changes: dict[str, tuple[dt.datetime, str]] = {}
    for ref_id, disp, at in db.backend.query(
        "SELECT ref_event_id, disposition, scanned_at FROM events WHERE type = 'disposition' ORDER BY device_id, seq"
    ):
        changes[ref_id] = (_t(at), disp)
    return scans, changes


@dataclass
class Judged:
    """One container and what the rules found."""

    container: Container
    crid: str | None
    owner: str | None
    row: EdocRow | None
    state: str  # scored | pending
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> evidence


@dataclass(frozen=True)
class Settings:
    thresholds: Mapping[str, Decimal] = field(default_factory=lambda: dict(rules.THRESHOLDS))
    grace: dt.timedelta = rules.CONTINUOUS_GRACE
    continuation: dt.timedelta = rules.POST_OUTAGE


def evaluate(ref: Reference, scans: list[Scan], changes: Mapping[str, str | tuple[dt.datetime, str]],
             as_of: dt.datetime,
             outages: list[tuple[dt.datetime, dt.datetime | None]], tickets: Mapping[str, dt.datetime],
             settings: Settings | None = None) -> list[Judged]:
    """Every container of ``scans`` judged by every rule that applies."""
    cfg = settings or Settings()
    tz_of = {f: fac.tz for f, fac in ref.facilities.items()}
    judged: list[Judged] = []
    for c in rules.group_containers(scans, tz_of, changes):
        row = rules.match_edoc(ref.edoc.get(c.imcb, ()), c.local_date)
        continuous = c.mid in ref.continuous
        if not rules.is_einduction(row, continuous):
            continue
        covering = [end for start, end in outages if start <= c.first.scanned_at]
        if rules.contingency_pending(c, as_of, covering, tickets, cfg.continuation):
            judged.append(Judged(c, _crid(ref, c, row), row.owner_crid if row else None, row, "pending"))
            continue
        und = rules.undocumented(row, continuous=continuous, scanned_at=c.first.scanned_at, as_of=as_of,
                                 grace=cfg.grace)
        if und == "pending":
            judged.append(Judged(c, ref.mid_crid.get(c.mid), None, None, "pending"))
            continue
        if und == "error":
            j = Judged(c, ref.mid_crid.get(c.mid), row.owner_crid if row else None, row, "scored")
            j.errors["undocumented"] = {"reason": "IMcb in no eDoc" if row is None else
                                        f"statement {row.statement_id} is EST", "continuous_mid": continuous}
            judged.append(j)
            continue
        assert row is not None
        j = Judged(c, row.submitter_crid, row.owner_crid, row, "scored")
        if rules.payment_error(row):
            j.errors["payment"] = {"statement_status": row.statement_status}
        facility = ref.facilities.get(c.site)
        mdf = rules.mdf_lookup(ref.mdf, row.destination_zip, row.entry_facility_type)
        if rules.misshipped_error(row, c.site, mdf):
            assert mdf is not None
            j.errors["misshipped"] = {"mdf": {"destination_zip": mdf.destination_zip,
                                              "entry_facility_type": mdf.entry_facility_type,
                                              "facility": mdf.facility}, "scanned_at_facility": c.site}
        if rules.entry_point_error(row, facility):
            assert facility is not None
            j.errors["entry_point_discount"] = {"claimed": row.entry_discount,
                                                "available": sorted(facility.entry_levels)}
        correct = ref.zones.get((facility.zip3, row.destination_zip[:3])) if facility else None
        if rules.zone_error(row, correct):
            j.errors["zone"] = {"claimed": row.zone_claimed, "correct": correct}
        judged.append(j)
    _duplicates(judged)
    return judged


def _crid(ref: Reference, c: Container, row: EdocRow | None) -> str | None:
    return row.submitter_crid if row is not None and row.statement_status != "EST" else ref.mid_crid.get(c.mid)


def _duplicates(judged: list[Judged]) -> None:
    """B-3 Duplicate across facilities: containers of one IMcb on one statement, in order of first scan."""
    by_statement: dict[tuple[str, str], list[Judged]] = defaultdict(list)
    for j in judged:
        if j.row is not None and "undocumented" not in j.errors:
            by_statement[(j.container.imcb, j.row.statement_id)].append(j)
    for group in by_statement.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda j: (j.container.first.scanned_at, j.container.first.event_id))
        original = group[0]
        for j in group[1:]:
            assert j.row is not None
            if j.state == "scored" and rules.duplicate_error(j.container, original.container, j.row):
                j.errors["duplicate"] = {"original_event_id": original.container.first.event_id,
                                         "original_scanned_at": original.container.first.scanned_at.isoformat(),
                                         "original_site": original.container.site,
                                         "mailing_date": j.row.mailing_date.isoformat()}


# -- the scorecard -----------------------------------------------------------------------------------------


def _in_period(j: Judged, crid: str, start: dt.date, end: dt.date, owner: str | None) -> bool:
    return (j.crid == crid and start <= j.container.local_date <= end
            and (owner is None or j.owner == owner))


def assess(ref: Reference, judged: list[Judged], crid: str, start: dt.date, end: dt.date,
           owner: str | None = None, settings: Settings | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scorecard of one CRID for a period, and its errors with evidence and assessment."""
    cfg = settings or Settings()
    mine = [j for j in judged if _in_period(j, crid, start, end, owner)]
    scored = [j for j in mine if j.state == "scored"]
    n = len(scored)
    mailer = ref.mailers.get(crid)
    seamless = bool(mailer and mailer.seamless)
    average = ref.average_postage(crid, end)
    card: dict[str, Any] = {"crid": crid, "from": start.isoformat(), "to": end.isoformat(), "containers": n,
                            "pending": len(mine) - n}
    if owner is not None:
        card["owner"] = owner
    errors_out: list[dict[str, Any]] = []
    for rule in rules.RULES:
        threshold = cfg.thresholds[rule]
        hits = sorted((j for j in scored if rule in j.errors),
                      key=lambda j: (j.container.first.scanned_at, j.container.first.event_id))
        free = rules.free_errors(threshold, n)
        total = Decimal(0)
        assessed = 0
        flags: set[str] = set()
        for i, j in enumerate(hits):
            amount, flag = _amount(rule, ref, j, average)
            if flag:
                flags.add(flag)
            charged = i >= free and not (seamless and rule in ("undocumented", "payment"))
            value = rules.cents(amount) if charged else Decimal(0)
            if charged:
                assessed += 1
                total += value
            errors_out.append(_error_record(j, rule, charged, value, flag))
        if seamless and rule in ("undocumented", "payment") and hits:
            flags.add("seamless: not assessed")
        card[rule] = {"errors": len(hits), "rate": (len(hits) / n) if n else 0.0, "threshold": float(threshold),
                      "assessed": assessed, "assessment_usd": float(total)}
        if flags:
            card[rule]["flags"] = sorted(flags)
    card["assessment_usd"] = float(sum((Decimal(str(card[r]["assessment_usd"])) for r in rules.RULES), Decimal(0)))
    return card, errors_out


def _amount(rule: str, ref: Reference, j: Judged, average: Decimal | None) -> tuple[Decimal, str | None]:
    row = j.row
    if rule in ("undocumented", "duplicate"):
        if average is None:
            return Decimal(0), "no eDoc postage in the 30 days: average unknown, assessed 0"
        return average, None
    assert row is not None
    if rule == "payment":
        return row.postage, None
    if rule == "misshipped":
        return rules.misshipped_assessment(row), None
    if rule == "entry_point_discount":
        return rules.entry_point_assessment(row, ref.facilities.get(j.container.site)), None
    correct = j.errors["zone"]["correct"]
    amount, unpriced = rules.zone_assessment(row, correct)
    return amount, ("unpriced: postage_by_zone lacks the correct zone" if unpriced else None)


def _error_record(j: Judged, rule: str, charged: bool, value: Decimal, flag: str | None) -> dict[str, Any]:
    c = j.container
    row = j.row
    return {
        "crid": j.crid, "rule": rule, "imcb": c.imcb, "site": c.site, "local_date": c.local_date.isoformat(),
        "scan": {"event_id": c.first.event_id, "device_id": c.first.device_id,
                 "scanned_at": c.first.scanned_at.isoformat().replace("+00:00", "Z"),
                 "appointment": c.appointment, "scans": len(c.scans)},
        "edoc": None if row is None else {
            "statement_id": row.statement_id, "statement_status": row.statement_status,
            "mailing_date": row.mailing_date.isoformat(), "destination_zip": row.destination_zip,
            "entry_facility_type": row.entry_facility_type, "entry_discount": row.entry_discount,
            "mail_class": row.mail_class, "zone_claimed": row.zone_claimed, "postage": str(row.postage),
            "postage_if_none": str(row.postage_if_none), "owner_crid": row.owner_crid},
        "evidence": j.errors[rule],
        "assessed": charged, "assessment_usd": float(value), **({"flag": flag} if flag else {}),
    }


def scorecard_csv(card: dict[str, Any]) -> str:
    lines = ["crid,from,to,containers,pending,rule,errors,rate,threshold,assessed,assessment_usd"]
    for rule in rules.RULES:
        r = card[rule]
        lines.append(f"{card['crid']},{card['from']},{card['to']},{card['containers']},{card['pending']},{rule},"
                     f"{r['errors']},{r['rate']!r},{r['threshold']!r},{r['assessed']},{r['assessment_usd']:.2f}")
    return "\n".join(lines) + "\n"


def errors_csv(errors: list[dict[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["crid", "rule", "imcb", "site", "local_date", "event_id", "device_id", "scanned_at",
                "statement_id", "assessed", "assessment_usd", "evidence"])
    for e in errors:
        w.writerow([e["crid"], e["rule"], e["imcb"], e["site"], e["local_date"], e["scan"]["event_id"],
                    e["scan"]["device_id"], e["scan"]["scanned_at"], (e["edoc"] or {}).get("statement_id", ""),
                    "Y" if e["assessed"] else "N", f"{e['assessment_usd']:.2f}", json.dumps(e["evidence"])])
    return out.getvalue()


def compute(db: Any, crid: str, start: dt.date, end: dt.date, *, as_of: dt.datetime, owner: str | None = None,
            settings: Settings | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load what the period needs from ``db`` and score it.

    Millions of small objects and no cycles: the cyclic garbage collector is paused while they are built and
    judged (it took about 40 % of a 1,000,000-container scorecard rescanning them).
    """
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        ref = load_reference(db)
        since = dt.datetime.combine(start, dt.time(), UTC) - rules.DUPLICATE_WINDOW - dt.timedelta(days=2)
        until = dt.datetime.combine(end, dt.time(), UTC) + dt.timedelta(days=2)
        scans, changes = load_scans(db, since, until)
        outages = [(_t(s), _t(e) if e else None) for _id, s, e in db.outages()]
        tickets = {t: _t(at) for t, at in db.resolved_tickets().items()}
        judged = evaluate(ref, scans, changes, as_of, outages, tickets, settings)
        return assess(ref, judged, crid, start, end, owner, settings)
    finally:
        if gc_was_on:
            gc.enable()


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """``YYYY-MM`` -> (first day, last day)."""
    first = dt.date.fromisoformat(month + "-01")
    nxt = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return first, nxt - dt.timedelta(days=1)

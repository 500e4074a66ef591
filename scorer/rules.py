"""The eInduction scorecard rules (Pub 685 Table B-3, seed 004), each implemented once, as pure functions.

The scorer applies them to every container of a period; the dock (workflow issue) applies the same functions
to its local reference slice for an immediate verdict. Each function cites the rule it implements. Money is
``Decimal`` throughout; an assessment is never negative and is rounded half-up to the cent per container.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from zoneinfo import ZoneInfo

RULES = ("undocumented", "payment", "duplicate", "misshipped", "entry_point_discount", "zone")

# Table B-3 thresholds, as fractions (0.17 % = 0.0017). Configurable per run.
THRESHOLDS: dict[str, Decimal] = {
    "undocumented": Decimal("0.0000"),
    "payment": Decimal("0.0000"),
    "duplicate": Decimal("0.0017"),
    "misshipped": Decimal("0.0105"),
    "entry_point_discount": Decimal("0.005"),
    "zone": Decimal("0.0001"),
}

SAME_CONTAINER = dt.timedelta(hours=4)          # B-3 Duplicate: "greater than 4 hours of the original scan"
DUPLICATE_WINDOW = dt.timedelta(days=45)        # B-3 Duplicate: "within 45 days of the ... Mailing Date"
CONTINUOUS_GRACE = dt.timedelta(days=10)        # B-3 Undocumented: 10-day grace (DOMAIN.md §3: configurable)
POST_OUTAGE = dt.timedelta(hours=48)            # seed 000 §8: contingency acceptance continues 48 hours
DOCK_PAYMENT_LEAD = dt.timedelta(hours=2)       # Pub 685 4-3.2.1: FIN/FPP 2 hours before the scan
PAID_STATUSES = frozenset({"FIN", "FPP"})
ZONE_CLASSES = frozenset({"PER", "BPM"})        # B-3 Zone: Periodicals and BPM only
CENT = Decimal("0.01")


# -- reference data ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdocRow:
    """One container on one postage statement (the `edoc` import)."""

    imcb: str
    submitter_crid: str
    owner_crid: str
    statement_id: str
    statement_status: str
    finalized_at: dt.datetime | None
    uploaded_at: dt.datetime
    mailing_date: dt.date
    einduction: bool
    destination_zip: str
    entry_facility_type: str
    entry_discount: str
    mail_class: str
    zone_claimed: int | None
    postage: Decimal
    postage_if_none: Decimal
    postage_by_level: Mapping[str, Decimal] = field(default_factory=dict)
    postage_by_zone: Mapping[int, Decimal] = field(default_factory=dict)

    @property
    def claims_entry_discount(self) -> bool:
        return self.entry_discount.upper() not in ("", "NONE")


@dataclass(frozen=True, slots=True)
class Mailer:
    crid: str
    seamless: bool
    continuous_mids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Facility:
    facility: str
    zip3: str
    tz: str
    entry_levels: frozenset[str]


@dataclass(frozen=True, slots=True)
class MdfRow:
    destination_zip: str
    entry_facility_type: str
    facility: str


# -- scans and containers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scan:
    """A container scan as headquarters (or the dock) knows it."""

    event_id: str
    device_id: str
    site: str
    imcb: str
    scanned_at: dt.datetime
    appointment: str | None = None
    ticket: str | None = None
    mode: str = "normal"
    disposition: str = "unverified"
    role: str = "container"


@dataclass
class Container:
    """One placard id received at one facility (B-3 "scanned container")."""

    site: str
    imcb: str
    scans: list[Scan]
    local_date: dt.date
    disposition: str = "unverified"

    @property
    def first(self) -> Scan:
        return self.scans[0]

    @property
    def appointment(self) -> str | None:
        return next((s.appointment for s in self.scans if s.appointment), None)

    @property
    def mid(self) -> str:
        return mid_of(self.imcb)

    @property
    def contingency(self) -> bool:
        return any(s.mode in ("national_outage", "post_outage") for s in self.scans)

    @property
    def tickets(self) -> set[str]:
        return {s.ticket for s in self.scans if s.ticket}


def mid_of(imcb: str) -> str:
    """The Mailer ID inside an IMcb: 9 digits when the first is 9, else 6 (DOMAIN.md §1.1)."""
    body = imcb[3:]
    return body[:9] if body[:1] == "9" else body[:6]


@cache
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_date(at: dt.datetime, tz: str) -> dt.date:
    """Periods and mailing dates are local dates of the scanning facility (issue 4, "Periods")."""
    # UTC offsets are whole quarter hours and change on quarter hours: one conversion per zone and quarter.
    return _local_date_q(tz, int(at.timestamp()) // 900)


@cache
def _local_date_q(tz: str, quarter: int) -> dt.date:
    return dt.datetime.fromtimestamp(quarter * 900, dt.timezone.utc).astimezone(_zone(tz)).date()


def group_containers(scans: Iterable[Scan], tz_of: Mapping[str, str] | None = None,
                     final_dispositions: Mapping[str, str | tuple[dt.datetime, str]] | None = None
                     ) -> list[Container]:
    """Scans -> containers.

    Rule (issue 4 item 2, after B-3 Duplicate): re-scans of a placard at one facility within 4 hours of the
    container's first (original) scan, or on the same non-null appointment, are the same container.
    Placard-confirmation scans (role ``placard``) are not container scans. A container whose final
    disposition is ``reject`` is dropped: it is not on the scorecard (Pub 685 4-3.2.1), and a later
    presentation of the placard is the container. ``final_dispositions`` maps a scan's event_id to a later
    disposition change of that scan (the last one wins), optionally with the change's time: the container's
    final disposition is the latest decision about any of its scans (a change made after a re-scan, to the
    first scan, still decides), ties going to the later scan.
    """
    tz_of = tz_of or {}
    changed = final_dispositions or {}
    by_key: dict[tuple[str, str], list[Scan]] = {}
    for s in scans:
        if s.role != "container":
            continue
        by_key.setdefault((s.site, s.imcb), []).append(s)
    out: list[Container] = []
    for (site, imcb), group in by_key.items():
        group.sort(key=lambda s: (s.scanned_at, s.event_id))
        current: Container | None = None
        for s in group:
            if current is not None and (
                s.scanned_at - current.first.scanned_at <= SAME_CONTAINER
                or (s.appointment is not None and s.appointment == current.appointment)
            ):
                current.scans.append(s)
            else:
                if current is not None:
                    out.append(current)
                current = Container(site, imcb, [s], local_date(s.scanned_at, tz_of.get(site, "UTC")))
        if current is not None:
            out.append(current)
    for c in out:
        c.disposition = _final_disposition(c, changed)
    return [c for c in out if c.disposition != "reject"]


def _final_disposition(c: Container, changed: Mapping[str, str | tuple[dt.datetime, str]]) -> str:
    """Issue 4 item 2 ("a container whose final disposition is reject is not on the scorecard") with the sync
    protocol's "the last change of a scan wins": the container's final disposition is its latest decision, each
    scan contributing its last change (else its own disposition), by time."""
    decisions = []
    for i, s in enumerate(c.scans):
        change = changed.get(s.event_id)
        at, disposition = (s.scanned_at, s.disposition) if change is None else (
            change if isinstance(change, tuple) else (s.scanned_at, change))
        decisions.append((max(at, s.scanned_at), i, disposition))
    return max(decisions)[2]


# -- matching ----------------------------------------------------------------------------------------------


def match_edoc(rows: Sequence[EdocRow], scan_local_date: dt.date) -> EdocRow | None:
    """The eDoc row of the IMcb with the latest mailing date on or before the scan's local date (issue 4);
    ties go to the latest upload, then the statement id."""
    best: EdocRow | None = None
    for r in rows:
        if r.mailing_date <= scan_local_date and (
            best is None or (r.mailing_date, r.uploaded_at, r.statement_id)
            > (best.mailing_date, best.uploaded_at, best.statement_id)
        ):
            best = r
    return best


def is_einduction(row: EdocRow | None, continuous: bool) -> bool:
    """B-3 counts "scanned eInduction containers": an eDoc with einduction=N is not one, but a container with
    an eInduction Continuous MID is one whatever its eDoc says (Pub 685 ch.4, DOMAIN.md §3); an undocumented
    container scanned at an eInduction dock is one (it is what the Undocumented rate counts)."""
    return continuous or row is None or row.einduction


# -- the six rules -----------------------------------------------------------------------------------------


def undocumented(row: EdocRow | None, *, continuous: bool, scanned_at: dt.datetime, as_of: dt.datetime,
                 grace: dt.timedelta = CONTINUOUS_GRACE) -> str:
    """B-3 (Extra) Undocumented: the IMcb is in no eDoc, or in an eDoc on a statement in EST status.
    Continuous Mailers have a grace period to upload the eDoc after the scan: inside it the container is
    ``pending``; an eDoc uploaded after it does not count. Returns ``ok``, ``error`` or ``pending``."""
    if continuous and row is not None and row.uploaded_at > scanned_at + grace:
        row = None
    if row is not None and row.statement_status.upper() != "EST":
        return "ok"
    if continuous and as_of <= scanned_at + grace:
        return "pending"
    return "error"


def payment_error(row: EdocRow) -> bool:
    """B-3 Payment: the container's postage statement is not in FIN or FPP status (EST is Undocumented)."""
    return row.statement_status.upper() not in PAID_STATUSES


def payment_confirmed_at_dock(row: EdocRow, scanned_at: dt.datetime) -> bool:
    """Pub 685 4-3.2.1 (dock check): the statement was FIN or FPP 2 hours before the scan."""
    return (row.statement_status.upper() in PAID_STATUSES and row.finalized_at is not None
            and row.finalized_at <= scanned_at - DOCK_PAYMENT_LEAD)


def duplicate_error(container: Container, original: Container, row: EdocRow) -> bool:
    """B-3 Duplicate: the same IMcb on another container, received on a different appointment more than
    4 hours after the original container's scan, within 45 days of the statement's mailing date. The error
    is on the second and each later container (never on the original)."""
    if container is original:
        return False
    later = container.first.scanned_at - original.first.scanned_at > SAME_CONTAINER
    other_appointment = container.appointment is None or container.appointment != original.appointment
    within = dt.timedelta(0) <= dt.timedelta(days=(container.local_date - row.mailing_date).days) <= DUPLICATE_WINDOW
    return later and other_appointment and within


def mdf_lookup(rows: Mapping[tuple[str, str], MdfRow], destination_zip: str, entry_facility_type: str
               ) -> MdfRow | None:
    """Mail Direction File: the longest destination-ZIP prefix (5, then 3 digits) for the entry type wins."""
    for n in (5, 3):
        hit = rows.get((destination_zip[:n], entry_facility_type.upper()))
        if hit is not None:
            return hit
    return None


def misshipped_error(row: EdocRow, site: str, mdf: MdfRow | None) -> bool:
    """B-3 Misshipped: a container claiming a destination entry discount scanned at a facility other than
    the Mail Direction File's one for its destination ZIP and container-level entry facility type."""
    return row.claims_entry_discount and mdf is not None and mdf.facility != site


def entry_point_error(row: EdocRow, facility: Facility | None) -> bool:
    """B-3 Entry Point Discount: the container claims an entry discount level not available where it was
    entered (the Mail Direction File's entry levels of that facility)."""
    return (row.claims_entry_discount and facility is not None
            and row.entry_discount.upper() not in facility.entry_levels)


def zone_error(row: EdocRow, correct_zone: int | None) -> bool:
    """B-3 Zone (Periodicals and BPM only): the claimed zone is lower than the zone between the entry
    facility's ZIP3 and the destination ZIP3."""
    return (row.mail_class.upper() in ZONE_CLASSES and row.zone_claimed is not None and correct_zone is not None
            and row.zone_claimed < correct_zone)


# -- thresholds and assessments ----------------------------------------------------------------------------


def free_errors(threshold: Decimal, containers: int) -> int:
    """Only containers over the threshold are assessed: with N containers the first floor(t x N) errors
    (by scan time) are free."""
    return math.floor(threshold * containers)


def cents(amount: Decimal) -> Decimal:
    """Never negative; rounded half-up to the cent."""
    return max(Decimal(0), amount).quantize(CENT, rounding=ROUND_HALF_UP)


def average_postage(postages: Sequence[Decimal]) -> Decimal | None:
    """B-3 Undocumented/Duplicate: the 30-day average postage per container of the submitter CRID."""
    if not postages:
        return None
    return sum(postages, Decimal(0)) / len(postages)


def misshipped_assessment(row: EdocRow) -> Decimal:
    """B-3 Misshipped: postage recomputed with entry discount "None", minus the postage paid."""
    return row.postage_if_none - row.postage


def entry_point_assessment(row: EdocRow, facility: Facility | None) -> Decimal:
    """B-3 EPD: postage at the correct entry discount (the lowest priced level available at the facility,
    else no discount) minus the postage paid."""
    levels = facility.entry_levels if facility else frozenset()
    priced = [p for lvl, p in row.postage_by_level.items() if lvl.upper() in levels]
    return (min(priced) if priced else row.postage_if_none) - row.postage


def zone_assessment(row: EdocRow, correct_zone: int) -> tuple[Decimal, bool]:
    """B-3 Zone: postage at the correct zone minus the postage paid; (0, True) when that zone is unpriced."""
    price = row.postage_by_zone.get(correct_zone)
    if price is None:
        return Decimal(0), True
    return price - row.postage, False


def contingency_pending(container: Container, as_of: dt.datetime, outage_ends: Sequence[dt.datetime | None],
                        resolved_tickets: Mapping[str, dt.datetime], continuation: dt.timedelta = POST_OUTAGE
                        ) -> bool:
    """Seed 000 §5 and §8: a container accepted under the contingency plan is pending, not an error, until the
    all-clear plus 48 hours; one under a Help Desk ticket (a local outage) until the ticket is resolved."""
    tickets = container.tickets
    if tickets:
        return any(t not in resolved_tickets or resolved_tickets[t] > as_of for t in tickets)
    if not container.contingency:
        return False
    start = container.first.scanned_at
    relevant = [end for end in outage_ends if end is None or end + continuation >= start]
    if not relevant:
        # Accepted in outage mode but no declaration covers it (a local declaration headquarters never saw):
        # pending until the continuation after its own scan has passed.
        return as_of < start + continuation
    return any(end is None or as_of < end + continuation for end in relevant)

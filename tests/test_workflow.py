"""The workflow on its own (pure): verdicts from a slice with the scorer's rules, contingency, doors, modes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from agent.barcode import Label, parse
from agent.workflow import Declaration, Workflow, judge_container, mode_at
from scorer import rules

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 3, 15, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)


def row(imcb: str, **over: object) -> rules.EdocRow:
    base = dict(imcb=imcb, submitter_crid="1000001", owner_crid="1000001", statement_id="S-1",
                statement_status="FIN", finalized_at=NOW - 5 * HOUR, uploaded_at=NOW - 6 * HOUR,
                mailing_date=dt.date(2026, 11, 3), einduction=True, destination_zip="19103",
                entry_facility_type="DNDC", entry_discount="DNDC", mail_class="MKT", zone_claimed=None,
                postage=Decimal("100"), postage_if_none=Decimal("120"))
    base.update(over)
    return rules.EdocRow(**base)  # type: ignore[arg-type]


@dataclass
class FakeSlice:
    built_at: dt.datetime = NOW - HOUR
    facility: rules.Facility | None = field(
        default_factory=lambda: rules.Facility("NDC-X", "190", "America/New_York", frozenset({"DNDC", "DSCF"})))
    edoc: dict[str, list[rules.EdocRow]] = field(default_factory=dict)
    continuous: set[str] = field(default_factory=set)
    mdf: dict[tuple[str, str], rules.MdfRow] = field(default_factory=lambda: {
        ("191", "DNDC"): rules.MdfRow("191", "DNDC", "NDC-X"), ("606", "DSCF"): rules.MdfRow("606", "DSCF", "SCF-Y")})
    zones: dict[tuple[str, str], int] = field(default_factory=dict)
    containers: dict[str, list[rules.Container]] = field(default_factory=dict)

    def seen(self, imcb: str, at: dt.datetime, appointment: str | None) -> None:
        self.containers.setdefault(imcb, []).append(rules.Container(
            "NDC-X", imcb, [rules.Scan("e0", "d", "NDC-X", imcb, at, appointment)], at.date()))


def code(n: int) -> str:
    return f"99M123456{n:012d}"


@pytest.mark.parametrize(("setup", "disposition", "reason"), [
    (lambda s: s.edoc.update({code(1): [row(code(1))]}), "accept", "documented and paid"),
    (lambda s: None, "pending", "undocumented: IMcb in no eDoc"),
    (lambda s: s.edoc.update({code(1): [row(code(1), statement_status="EST", finalized_at=None)]}), "pending",
     "undocumented: statement S-1 is EST"),
    (lambda s: s.edoc.update({code(1): [row(code(1), finalized_at=NOW - HOUR)]}), "pending",
     "payment not finalised 2 hours before the scan"),
    (lambda s: s.edoc.update({code(1): [row(code(1), statement_status="UPD", finalized_at=None)]}), "pending",
     "payment not finalised"),
    (lambda s: s.edoc.update({code(1): [row(code(1), destination_zip="60601", entry_facility_type="DSCF",
                                            entry_discount="DSCF")]}), "pending", "misshipped: the Mail Direction "
                                                                                   "File sends it to SCF-Y"),
    (lambda s: (s.edoc.update({code(1): [row(code(1), mailing_date=dt.date(2026, 10, 20))]}),
                s.seen(code(1), NOW - 5 * HOUR, "A0")), "pending", "duplicate"),
    (lambda s: (s.edoc.update({code(1): [row(code(1), mailing_date=dt.date(2026, 10, 20))]}),
                s.seen(code(1), NOW - 3 * HOUR, "A0")), "accept", "documented"),  # within 4 h
    (lambda s: s.edoc.update({code(1): [row(code(1), destination_zip="19103", entry_discount="DDU")]}), "pending",
     "entry discount DDU not available here"),
    (lambda s: s.continuous.add("123456"), "accept", "continuous MID"),
])
def test_normal_mode_verdicts_come_from_the_scorers_rules(setup, disposition: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    s = FakeSlice()
    setup(s)
    v = judge_container(code(1), "NDC-X", NOW, "A1", s, NOW, dt.timedelta(hours=24))
    assert v.disposition == disposition and reason in v.reason, v


def test_no_or_stale_slice_is_unverified() -> None:
    assert judge_container(code(1), "NDC-X", NOW, None, None, NOW, dt.timedelta(hours=24)).disposition == "unverified"
    stale = FakeSlice(built_at=NOW - 25 * HOUR)
    v = judge_container(code(1), "NDC-X", NOW, None, stale, NOW, dt.timedelta(hours=24))
    assert v.disposition == "unverified" and "25 h old" in v.reason


def test_modes_follow_the_latest_declaration() -> None:
    assert mode_at(None, NOW) == "normal"
    assert mode_at(Declaration("outage", NOW, "hq", "hq"), NOW + 100 * HOUR) == "national_outage"
    allclear = Declaration("allclear", NOW, "hq", "hq")
    assert mode_at(allclear, NOW + 47 * HOUR) == "post_outage"
    assert mode_at(allclear, NOW + 48 * HOUR) == "normal"


def run(wf: Workflow, text: str, at: dt.datetime, scanner: str = "door1", mono: float = 0.0):  # type: ignore[no-untyped-def]
    label = parse(text)
    assert isinstance(label, Label), label
    d = wf.on_read(scanner, label, at, mono, f"e-{text}-{at.timestamp()}")
    wf.apply(scanner, d)
    return d


def test_resolving_a_pending_container_is_a_disposition_change() -> None:
    wf = Workflow("NDC-X")
    wf.slice = FakeSlice()
    run(wf, "DOCK:LOAD:A1", NOW)
    first = run(wf, code(7), NOW)
    assert first.disposition == "pending" and first.signal == "attention" and first.display == "RESOLVE: undocumented"
    run(wf, "DOCK:FORM8125:F-9", NOW + dt.timedelta(minutes=1))
    again = run(wf, code(7), NOW + dt.timedelta(minutes=2))
    assert again.disposition == "accept" and again.display == "ACCEPT: 8125 F-9"
    kinds = [k for k, _ in again.records]
    assert kinds[0] == "disposition" and again.records[0][1]["disposition"] == "accept"
    assert again.records[0][1]["ref_event_id"] == first.container.event_id  # type: ignore[union-attr]
    run(wf, "DOCK:REJECT:wrong facility", NOW + dt.timedelta(minutes=3))
    rejected = run(wf, code(8), NOW + dt.timedelta(minutes=4))
    assert rejected.disposition == "reject" and rejected.reason == "wrong facility"
    summary = wf.load_summary(wf.door("door1").load_id or "")
    assert summary["rejected"] == 1 and summary["reconciled"] == {"F-9": 1} and summary["pending"] == 0


def test_two_doors_keep_their_own_load_form_and_operator() -> None:
    wf = Workflow("NDC-X")
    run(wf, "DOCK:OPERATOR:E1", NOW, "door1")
    run(wf, "DOCK:LOAD:A1", NOW, "door1")
    run(wf, "DOCK:FORM8125:F1", NOW, "door1")
    run(wf, "DOCK:LOAD:B2", NOW, "door2")
    assert wf.door("door1").appointment == "A1" and wf.door("door1").form == "F1"
    assert wf.door("door2").appointment == "B2" and wf.door("door2").form is None
    d = run(wf, code(1), NOW, "door2")
    assert d.scan_fields["appointment"] == "B2" and d.scan_fields["operator"] is None


def test_outage_commands_need_the_lead_pin_within_a_minute() -> None:
    wf = Workflow("NDC-X", lead_pin="7788")
    assert run(wf, "DOCK:OUTAGE:NATIONAL", NOW, mono=10).display == "LEAD PIN NEEDED"
    assert run(wf, "DOCK:LEAD:0000", NOW, mono=11).display == "WRONG PIN"
    assert run(wf, "DOCK:LEAD:7788", NOW, mono=12).display == "LEAD OK"
    assert run(wf, "DOCK:OUTAGE:NATIONAL", NOW, mono=100).display == "LEAD PIN NEEDED"  # expired
    run(wf, "DOCK:LEAD:7788", NOW, mono=101)
    d = run(wf, "DOCK:OUTAGE:NATIONAL", NOW, mono=102)
    assert d.display == "NATIONAL OUTAGE" and wf.mode(NOW) == "national_outage"
    assert run(wf, "DOCK:ALLCLEAR", NOW, mono=103).display == "LEAD PIN NEEDED"  # the PIN is spent
    # Without a configured PIN nobody can declare at a scanner.
    assert run(Workflow("NDC-X"), "DOCK:LEAD:7788", NOW).display == "WRONG PIN"


def test_the_latest_declaration_wins() -> None:
    wf = Workflow("NDC-X")
    wf.apply("hq", wf.declare("outage", NOW, "hq", "hq"))
    older = wf.declare("allclear", NOW - HOUR, "lead", "local")
    assert older.signal == "bad" and older.declaration is None
    wf.apply("hq", wf.declare("allclear", NOW + HOUR, "lead", "local"))
    assert wf.mode(NOW + 2 * HOUR) == "post_outage" and wf.mode(NOW + 50 * HOUR) == "normal"


def test_void_marks_the_last_scan_and_close_lists_what_is_missing() -> None:
    wf = Workflow("NDC-X")
    wf.apply("x", wf.declare("outage", NOW, "hq", "hq"))
    run(wf, "DOCK:LOAD:A1", NOW)
    run(wf, code(1), NOW)
    run(wf, code(2), NOW)
    v = run(wf, "DOCK:VOID", NOW)
    assert v.display == "VOIDED" and v.records[0][0] == "void"
    run(wf, code(3), NOW)
    close = run(wf, "DOCK:CLOSE", NOW)
    assert close.signal == "attention"
    assert "2 containers still need a placard" in close.reason and "2 containers scanned" in close.reason

"""The dock's workflow, normal and contingency (seed 000 §5, §8): what each read means and what it changes.

Pure: ``Workflow.on_read`` takes a parsed read, the scanner it came from, the time and the current reference
slice, and returns a ``Decision``: the scan's disposition and reason, the records to store with it (load
opened, 8125 form opened, placard collected, container released, mode change, ...), the new state of the
door, the feedback signal and the words for the display. The main loop commits all of it in one transaction
and only then signals the scanner; a restart rebuilds the same state from the store.

Per scanner ("door"): the open load (FAST appointment), its Help Desk ticket, the open PS 8125, placard mode,
a pending reject reason, the operator. Per box: the mode, from the latest national-outage declaration
(headquarters' or the dock lead's, whichever is newer): ``national_outage``; ``post_outage`` for 48 hours after
the all-clear (seed 000 §8); then ``normal``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from agent.barcode import Label
from drivers.base import Signal
from scorer import rules

NOT_A_PLACARD = {"imtb": "tray/sack label", "impb": "package barcode", "imb": "mailpiece barcode"}
LEAD_WINDOW_S = 60.0  # a lead PIN authorises outage commands for this long on that scanner
CONTAINER_KINDS = frozenset({"imcb"})


# -- state ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Door:
    """What one scanner is doing."""

    load_id: str | None = None
    appointment: str | None = None
    ticket: str | None = None
    form: str | None = None
    placard_mode: bool = False
    reject_reason: str | None = None
    operator: str | None = None
    lead_until_mono: float = 0.0
    last_scan: str | None = None  # event id of the last container scan (for DOCK:VOID)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "lead_until_mono"}


@dataclass(frozen=True)
class Declaration:
    """A national-outage declaration or all-clear (``kind`` outage | allclear)."""

    kind: str
    at: dt.datetime
    by: str
    source: str  # hq | local
    outage_id: str = ""


def mode_at(decl: Declaration | None, now: dt.datetime,
            continuation: dt.timedelta = rules.POST_OUTAGE) -> str:
    """Seed 000 §5.1 and §8: national_outage until the all-clear, post_outage for 48 hours after it."""
    if decl is None:
        return "normal"
    if decl.kind == "outage":
        return "national_outage"
    return "post_outage" if now < decl.at + continuation else "normal"


@dataclass
class ContainerState:
    """A container of an open load, as far as reconciliation cares."""

    event_id: str
    load_id: str
    imcb: str
    scanned_at: str
    disposition: str
    form: str | None = None
    needs_placard: bool = False
    placard_at: str | None = None
    released_at: str | None = None
    voided: bool = False


# -- decisions -----------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """Everything one read changes; committed together, then signalled."""

    signal: Signal
    display: str                      # what the employee reads ("ACCEPT", "COLLECT PLACARD", ...)
    reason: str
    disposition: str = "command"      # for the scan row: accept, reject, pending, unverified, command
    store_scan: bool = True
    scan_fields: dict[str, Any] = field(default_factory=dict)   # appointment, ticket, role, form, load_id, ...
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (type, data) to store and sync
    door: Door | None = None          # new state of this scanner's door (None = unchanged)
    container: ContainerState | None = None  # a container added or changed in the open load
    declaration: Declaration | None = None   # a new mode declaration


class Slice(Protocol):
    """The facility's reference slice (sync.slices.Slice): what the rules need at the dock."""

    built_at: dt.datetime
    facility: rules.Facility
    edoc: Mapping[str, list[rules.EdocRow]]
    continuous: set[str]
    mdf: Mapping[tuple[str, str], rules.MdfRow]
    zones: Mapping[tuple[str, str], int]
    containers: Mapping[str, list[rules.Container]]  # the facility's recent containers by IMcb


@dataclass
class Verdict:
    disposition: str
    reason: str


def judge_container(imcb: str, site: str, scanned_at: dt.datetime, appointment: str | None, ref: Slice | None,
                    now: dt.datetime, max_age: dt.timedelta) -> Verdict:
    """Normal-mode verdict from the local slice, with the scorer's own rule functions (issue 5 §3)."""
    if ref is None:
        return Verdict("unverified", "no reference slice: stored for headquarters to check")
    age = now - ref.built_at
    if age > max_age:
        return Verdict("unverified", f"reference slice is {_age(age)} old: stored for headquarters to check")
    mid = rules.mid_of(imcb)
    if mid in ref.continuous:
        return Verdict("accept", "continuous MID: accepted (eDoc due after the scan)")
    tz = ref.facility.tz if ref.facility else "UTC"
    row = rules.match_edoc(ref.edoc.get(imcb, ()), rules.local_date(scanned_at, tz))
    if row is None or row.statement_status.upper() == "EST":
        return Verdict("pending", "undocumented: IMcb in no eDoc" if row is None
                       else f"undocumented: statement {row.statement_id} is EST")
    if not row.einduction:
        return Verdict("pending", "not in eInduction: needs PS 8125")
    if not rules.payment_confirmed_at_dock(row, scanned_at):
        return Verdict("pending", f"payment not finalised 2 hours before the scan (statement {row.statement_id} "
                                  f"{row.statement_status})")
    mdf = rules.mdf_lookup(ref.mdf, row.destination_zip, row.entry_facility_type)
    if rules.misshipped_error(row, site, mdf):
        assert mdf is not None
        return Verdict("pending", f"misshipped: the Mail Direction File sends it to {mdf.facility}")
    this = rules.Container(site, imcb, [rules.Scan("", "", site, imcb, scanned_at, appointment)],
                           rules.local_date(scanned_at, tz))
    for original in ref.containers.get(imcb, ()):
        if rules.duplicate_error(this, original, row):
            return Verdict("pending", f"duplicate: already received {original.first.scanned_at:%Y-%m-%d %H:%M}Z "
                                      "within 45 days")
    if rules.entry_point_error(row, ref.facility):
        return Verdict("pending", f"entry discount {row.entry_discount} not available here")
    return Verdict("accept", "documented and paid")


def _age(d: dt.timedelta) -> str:
    hours = d.total_seconds() / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.1f} days"


# -- the workflow --------------------------------------------------------------------------------------------


class Workflow:
    """State of every door and of the box's mode, and the rules that move it."""

    def __init__(self, site: str, *, lead_pin: str | None = None, slice_max_age: dt.timedelta = dt.timedelta(hours=24),
                 continuation: dt.timedelta = rules.POST_OUTAGE) -> None:
        self.site = site
        self.lead_pin = lead_pin
        self.slice_max_age = slice_max_age
        self.continuation = continuation
        self.doors: dict[str, Door] = {}
        self.declaration: Declaration | None = None
        self.containers: dict[str, dict[str, ContainerState]] = {}  # load_id -> imcb -> state (latest scan)
        self.resolved_tickets: set[str] = set()
        self.slice: Slice | None = None

    def door(self, scanner: str) -> Door:
        return self.doors.get(scanner, Door())

    def mode(self, now: dt.datetime) -> str:
        return mode_at(self.declaration, now, self.continuation)

    def apply(self, scanner: str, d: Decision) -> None:
        """Make a committed decision the current state."""
        if d.door is not None:
            self.doors[scanner] = d.door
        if d.declaration is not None:
            self.declaration = d.declaration
        if d.container is not None:
            self.containers.setdefault(d.container.load_id, {})[d.container.imcb] = d.container
        for kind, data in d.records:
            if kind == "load_close":
                self.containers.pop(data["load_id"], None)

    # -- reads --------------------------------------------------------------------------------------------

    def on_read(self, scanner: str, label: Label, now: dt.datetime, now_mono: float, event_id: str) -> Decision:
        """The decision for one usable read; ``event_id`` is the id the scan will be stored under."""
        door = self.door(scanner)
        if label.kind == "command":
            return self._command(scanner, door, label.fields["command"], label.fields.get("arg", ""), now,
                                 now_mono)
        if label.kind not in CONTAINER_KINDS:
            what = NOT_A_PLACARD.get(label.kind, f"{label.kind} barcode")
            return Decision("attention", "NOT A PLACARD", f"{what}, not a container placard: stored; scan the "
                            "placard too", disposition="unverified", scan_fields=self._scan_fields(door))
        decision = self._container(scanner, door, label.normalized, now, event_id)
        if decision.scan_fields.get("role") == "container" and decision.disposition != "unverified":
            decision.records[:0] = self._changes(door, label.normalized, decision.disposition, decision.reason)
        return decision

    def _scan_fields(self, door: Door, **extra: Any) -> dict[str, Any]:
        return {"appointment": door.appointment, "ticket": door.ticket, "load_id": door.load_id,
                "operator": door.operator, "form": door.form, "role": "container", **extra}

    def _container(self, scanner: str, door: Door, imcb: str, now: dt.datetime, event_id: str) -> Decision:
        at = _iso(now)
        mode = self.mode(now)
        if door.placard_mode:
            return self._placard(door, imcb, now)
        if door.reject_reason:
            reason = door.reject_reason
            return Decision("good", "REJECTED", reason, disposition="reject",
                            scan_fields=self._scan_fields(door), door=replace(door, reject_reason=None,
                                                                               last_scan=event_id),
                            container=self._track(door, event_id, imcb, at, "reject"))
        contingency = mode in ("national_outage", "post_outage") or (
            door.ticket is not None and door.ticket not in self.resolved_tickets)
        if contingency:
            why = {"national_outage": "national outage", "post_outage": "post-outage contingency"}.get(
                mode, f"local outage, ticket {door.ticket}")
            if door.form:
                c = self._track(door, event_id, imcb, at, "accept", form=door.form, released_at=at)
                return Decision("good", f"ACCEPT: 8125 {door.form}", f"{why}: reconciled to PS 8125 {door.form}",
                                disposition="accept", scan_fields=self._scan_fields(door),
                                records=[("release", {"ref_event_id": event_id, "imcb": imcb, "why": "reconciled",
                                                      "form": door.form, "load_id": door.load_id})],
                                door=replace(door, last_scan=event_id), container=c)
            c = self._track(door, event_id, imcb, at, "accept", needs_placard=True)
            return Decision("attention", "COLLECT PLACARD", f"{why}: accepted; pull one placard, then scan "
                            "DOCK:PLACARD and the pulled placard", disposition="accept",
                            scan_fields=self._scan_fields(door), door=replace(door, last_scan=event_id), container=c)
        if door.form:
            c = self._track(door, event_id, imcb, at, "accept", form=door.form, released_at=at)
            return Decision("good", f"ACCEPT: 8125 {door.form}", f"resolved against PS 8125 {door.form}",
                            disposition="accept", scan_fields=self._scan_fields(door),
                            records=[("release", {"ref_event_id": event_id, "imcb": imcb, "why": "reconciled",
                                                  "form": door.form, "load_id": door.load_id})],
                            door=replace(door, last_scan=event_id), container=c)
        v = judge_container(imcb, self.site, now, door.appointment, self.slice, now, self.slice_max_age)
        c = self._track(door, event_id, imcb, at, v.disposition)
        if v.disposition == "accept":
            return Decision("good", "ACCEPT", v.reason, disposition="accept", scan_fields=self._scan_fields(door),
                            door=replace(door, last_scan=event_id), container=c)
        if v.disposition == "unverified":
            return Decision("good", "UNVERIFIED", v.reason, disposition="unverified",
                            scan_fields=self._scan_fields(door), door=replace(door, last_scan=event_id), container=c)
        return Decision("attention", f"RESOLVE: {v.reason.split(':')[0]}", v.reason + "; resolve against a PS "
                        "8125/8017 (DOCK:FORM8125:<id>, rescan) or reject (DOCK:REJECT:<reason>, rescan)",
                        disposition="pending", scan_fields=self._scan_fields(door),
                        door=replace(door, last_scan=event_id), container=c)

    def _track(self, door: Door, event_id: str, imcb: str, at: str, disposition: str, **kw: Any
               ) -> ContainerState | None:
        if door.load_id is None:
            return None
        earlier = self.containers.get(door.load_id, {}).get(imcb)
        if earlier is not None and not earlier.voided:
            # A rescan of the same container in this load: it keeps its first scan's identity and placard state.
            kw.setdefault("needs_placard", earlier.needs_placard and earlier.placard_at is None)
            return replace(earlier, disposition=disposition, form=kw.get("form", earlier.form),
                           needs_placard=kw["needs_placard"], released_at=kw.get("released_at", earlier.released_at))
        return ContainerState(event_id, door.load_id, imcb, at, disposition, **kw)

    def _changes(self, door: Door, imcb: str, disposition: str, reason: str) -> list[tuple[str, dict[str, Any]]]:
        """A rescan that changes an earlier scan's disposition is its own event referring to that scan."""
        earlier = self.containers.get(door.load_id or "", {}).get(imcb)
        if earlier is None or earlier.voided or earlier.disposition == disposition:
            return []
        return [("disposition", {"ref_event_id": earlier.event_id, "disposition": disposition, "reason": reason,
                                 "form": door.form})]

    def _placard(self, door: Door, imcb: str, now: dt.datetime) -> Decision:
        at = _iso(now)
        door2 = replace(door, placard_mode=False)
        c0 = self.containers.get(door.load_id or "", {}).get(imcb)
        waiting = [c0] if c0 is not None and c0.needs_placard and c0.placard_at is None and not c0.voided else []
        if not waiting:
            return Decision("attention", "NO SUCH CONTAINER", f"no container of this load is waiting for placard "
                            f"{imcb}", disposition="unverified", door=door2,
                            scan_fields=self._scan_fields(door, role="placard"))
        c = replace(waiting[0], placard_at=at, released_at=at)
        return Decision("good", "PLACARD COLLECTED", f"placard of {imcb} collected; container released",
                        disposition="accept", door=door2, container=c,
                        scan_fields=self._scan_fields(door, role="placard"),
                        records=[("placard", {"ref_event_id": c.event_id, "imcb": imcb, "load_id": c.load_id}),
                                 ("release", {"ref_event_id": c.event_id, "imcb": imcb, "why": "placard collected",
                                              "load_id": c.load_id})])

    # -- commands -----------------------------------------------------------------------------------------

    def _command(self, scanner: str, door: Door, name: str, arg: str, now: dt.datetime, now_mono: float
                 ) -> Decision:
        at = _iso(now)
        if name == "OPERATOR":
            return Decision("good", f"OPERATOR {arg}", f"operator {arg} at {scanner}", door=replace(door, operator=arg),
                            records=[("operator", {"scanner": scanner, "operator": arg})])
        if name == "LOAD":
            if door.load_id:
                return Decision("bad", "LOAD ALREADY OPEN", f"load {door.appointment} is open: scan DOCK:CLOSE first")
            return Decision("good", f"LOAD {arg}", f"load of appointment {arg} opened",
                            door=replace(door, load_id=f"{scanner}:{arg}:{at}", appointment=arg, ticket=None,
                                         form=None, placard_mode=False, reject_reason=None),
                            records=[("load_open", {"load_id": f"{scanner}:{arg}:{at}", "scanner": scanner,
                                                    "appointment": arg, "operator": door.operator})])
        if name == "CLOSE":
            if not door.load_id:
                return Decision("bad", "NO OPEN LOAD", "there is no open load to close")
            summary = self.load_summary(door.load_id)
            return Decision("attention" if summary["missing"] else "good", "LOAD CLOSED",
                            summary["text"], door=Door(operator=door.operator),
                            records=[("load_close", {"load_id": door.load_id, "appointment": door.appointment,
                                                     "summary": {k: v for k, v in summary.items() if k != "text"}})])
        if name == "FORM8125":
            return Decision("good", f"8125 {arg}", f"PS 8125 {arg} open: scan its containers",
                            door=replace(door, form=arg),
                            records=[("form_open", {"form": arg, "load_id": door.load_id})])
        if name == "ENDFORM":
            if not door.form:
                return Decision("bad", "NO OPEN FORM", "no PS 8125 is open")
            return Decision("good", "8125 CLOSED", f"PS 8125 {door.form} closed", door=replace(door, form=None),
                            records=[("form_close", {"form": door.form, "load_id": door.load_id})])
        if name == "PLACARD":
            return Decision("good", "SCAN PULLED PLACARD", "placard mode: scan the placard you pulled",
                            door=replace(door, placard_mode=True))
        if name == "REJECT":
            return Decision("good", "REJECT NEXT", f"the next container is rejected: {arg}",
                            door=replace(door, reject_reason=arg))
        if name == "TICKET":
            if not door.load_id:
                return Decision("bad", "NO OPEN LOAD", "open the mailer's load before attaching a ticket")
            return Decision("good", f"TICKET {arg}", f"load under Help Desk ticket {arg}: contingency process",
                            door=replace(door, ticket=arg),
                            records=[("ticket", {"ticket": arg, "load_id": door.load_id})])
        if name == "VOID":
            if not door.last_scan:
                return Decision("bad", "NOTHING TO VOID", "no scan to void on this scanner")
            c = self._find(door.last_scan)
            return Decision("good", "VOIDED", "last scan voided (kept, marked void)", door=replace(door, last_scan=None),
                            container=replace(c, voided=True) if c else None,
                            records=[("void", {"ref_event_id": door.last_scan, "scanner": scanner})])
        if name == "LEAD":
            if not self.lead_pin or arg != self.lead_pin:
                return Decision("bad", "WRONG PIN", "that lead PIN is not valid here", store_scan=True)
            return Decision("good", "LEAD OK", "dock lead authorised for outage commands",
                            door=replace(door, lead_until_mono=now_mono + LEAD_WINDOW_S))
        if name in ("OUTAGE", "ALLCLEAR"):
            if now_mono > door.lead_until_mono:
                return Decision("bad", "LEAD PIN NEEDED", "scan the dock lead's PIN badge (DOCK:LEAD:...) first")
            return self.declare("outage" if name == "OUTAGE" else "allclear", now, f"lead at {scanner}", "local",
                                door=replace(door, lead_until_mono=0.0))
        return Decision("bad", "UNKNOWN COMMAND", f"DOCK:{name} is not handled")

    def declare(self, kind: str, now: dt.datetime, by: str, source: str, *, door: Door | None = None,
                outage_id: str = "") -> Decision:
        """A national-outage declaration or all-clear (local, or from headquarters); the latest wins."""
        decl = Declaration(kind, now, by, source, outage_id)
        if self.declaration is not None and self.declaration.at > now:
            return Decision("bad", "OLDER DECLARATION", "a newer declaration is already in force", store_scan=False)
        words = "NATIONAL OUTAGE" if kind == "outage" else "ALL CLEAR"
        return Decision("good", words, f"{words.lower()} declared by {by}" + (
            "; contingency acceptance continues 48 hours" if kind == "allclear" else ""), door=door,
            declaration=decl, records=[("mode", {"declaration": kind, "at": _iso(now), "by": by, "source": source,
                                                 "outage_id": outage_id})])

    def _find(self, event_id: str) -> ContainerState | None:
        for cs in self.containers.values():
            for c in cs.values():
                if c.event_id == event_id:
                    return c
        return None

    def load_summary(self, load_id: str) -> dict[str, Any]:
        cs = [c for c in self.containers.get(load_id, {}).values() if not c.voided]
        forms: dict[str, int] = {}
        for c in cs:
            if c.form:
                forms[c.form] = forms.get(c.form, 0) + 1
        need = sum(1 for c in cs if c.needs_placard and c.placard_at is None)
        pending = sum(1 for c in cs if c.disposition == "pending")
        out = {"containers": len(cs), "accepted": sum(1 for c in cs if c.disposition == "accept"),
               "rejected": sum(1 for c in cs if c.disposition == "reject"), "pending": pending,
               "reconciled": forms, "placards_collected": sum(1 for c in cs if c.placard_at),
               "placards_missing": need, "missing": need + pending}
        parts = [f"{out['containers']} containers scanned, {out['accepted']} accepted"]
        parts += [f"{n} reconciled to 8125 {f}" for f, n in sorted(forms.items())]
        parts.append(f"{out['placards_collected']} placards collected")
        if need:
            parts.append(f"{need} container{'s' if need > 1 else ''} still need{'s' if need == 1 else ''} a placard")
        if pending:
            parts.append(f"{pending} container{'s' if pending > 1 else ''} still to resolve")
        out["text"] = "; ".join(parts)
        return out


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

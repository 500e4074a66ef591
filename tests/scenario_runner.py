"""Table B-3 scorecard scenarios: one TOML file per scenario under tests/scenarios/, run against any backend.

A scenario holds reference data (CSV text, or eDoc rows as tables merged over defaults), scans, disposition
changes, outages, tickets, and one or more scorecard queries with the numbers the rules require. The expected
numbers are written from the rules (issue text and seed 004, Table B-3), never copied from the code's output.

Two ways to run one:

- ``run_scenario(path, db_factory)``: in-process through the Python API (``scorer.reference.read_text``,
  ``ScorerDB.import_reference``, the real ``Ingestor``, ``scorer.scorecard.compute``). ``db_factory`` returns a
  fresh ``scorer.db.ScorerDB`` (SQLite today; a PostgreSQL backend later).
- ``run_scenario_cli(path, db, workdir)``: the same steps through ``dock-scorer import / ingest / outage /
  ticket / scorecard / errors``, ``db`` being whatever ``--db`` accepts.

File format (all keys optional unless said otherwise)::

    base = "_base.toml"              # merged under this file: reference CSVs, edoc_defaults
    description = "..."
    cli = true                       # also run through the CLI by default (DOCK_SCORER_SCENARIOS_CLI=all: every one)
    [reference]                      # CSV text per kind, imported in the order mailers, facilities, mdf,
    mailers = '''crid,...'''         # zones, edoc; the eDoc CSV is the raw `edoc` text (if any) followed by
                                     # the rows of `edoc` below rendered over `edoc_defaults`
    [edoc_defaults]                  # any eDoc column
    edoc = [ {imcb = "99M...", statement_status = "UPD", postage = "40.00"}, ... ]
    bulk = [ {count = 198, first = 1000, imcb = "99M123456{n:012d}", at = "2026-11-10T12:00:00Z",
              step_seconds = 60, site = "NDC-X", edoc = {postage = "10.00"}} ]   # edoc = false: no eDoc row
    imports = [ {kind = "edoc", name = "edoc-2.csv", csv = '''...''', replace = false,
                 expect_error = ["edoc-2.csv:3:"]} ]                      # after the reference imports
    scans = [ {id = "a", at = "2026-11-10T15:00:00Z", imcb = "99M...", site = "NDC-X", appointment = "A1",
               ticket = "T-1", mode = "normal", role = "placard", disposition = "reject", device = "d1"} ]
    dispositions = [ {ref = "a", at = "...", disposition = "reject"} ]
    outages = [ {start = "...", end = "..."} ]                             # end may be omitted (still open)
    tickets = [ {ticket = "T-1", resolved_at = "..."} ]

    [[checks]]                       # one scorecard query and what it must say
    crid = "1000001"                 # required
    from = "2026-11-01"              # or month = "2026-11"
    to = "2026-11-30"
    as_of = "2026-12-15T00:00:00Z"   # required: pending rules are time-dependent
    owner = "2000009"
    grace_days = 10
    continuation_hours = 48
    containers = 4                   # required
    pending = 0                      # required
    undocumented = {errors = 2, assessed = 2, assessment_usd = "300.00", flags = ["unpriced"],
                    has_flags = true}
    total_usd = "300.00"
    errors = [ {rule = "payment", imcb = "99M...", assessed = true, assessment_usd = "10.00"} ]

Every rule a check does not name must show 0 errors, 0 assessed, $0.00. For every rule: ``rate`` must equal
errors / containers exactly (the unrounded fraction, as a float) unless ``rate`` is given, ``threshold`` must be
the Table B-3 threshold as a fraction, ``assessment_usd`` must be exactly the given cents. ``errors`` (the list)
is compared as a multiset against ``dock-scorer errors``' records (rule, imcb, assessed, assessment_usd).
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
REFERENCE_ORDER = ("mailers", "facilities", "mdf", "zones", "edoc")
RULES = ("undocumented", "payment", "duplicate", "misshipped", "entry_point_discount", "zone")
# Table B-3 (seed 004), as fractions: 0.00 %, 0.00 %, 0.17 %, 1.05 %, 0.5 %, 0.01 %.
SPEC_THRESHOLDS = {"undocumented": "0", "payment": "0", "duplicate": "0.0017", "misshipped": "0.0105",
                   "entry_point_discount": "0.005", "zone": "0.0001"}
EDOC_COLUMNS = ("imcb", "submitter_crid", "owner_crid", "statement_id", "statement_status", "finalized_at",
                "uploaded_at", "mailing_date", "einduction", "destination_zip", "entry_facility_type",
                "entry_discount", "mail_class", "zone_claimed", "postage", "postage_if_none", "postage_by_level",
                "postage_by_zone")
DEFAULT_FINALIZED = "2026-11-01T12:00:00Z"


def scenario_files() -> list[Path]:
    return sorted(p for p in SCENARIOS.glob("*.toml") if not p.name.startswith("_"))


# -- loading ---------------------------------------------------------------------------------------------


def load(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    sc = tomllib.loads(path.read_text())
    if "base" in sc:
        base = tomllib.loads((path.parent / sc["base"]).read_text())
        merged = copy.deepcopy(base)
        for key, value in sc.items():
            if key in ("reference", "edoc_defaults") and isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
        sc = merged
    sc["name"] = path.stem
    return sc


def _render_edoc(defaults: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        row = {**defaults, **r}
        unknown = set(row) - set(EDOC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown eDoc columns {sorted(unknown)} in {r}")
        if "finalized_at" not in r and "finalized_at" not in defaults:
            row["finalized_at"] = DEFAULT_FINALIZED if str(row["statement_status"]).upper() in ("FIN", "FPP") else ""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow([str(row.get(c, "")) for c in EDOC_COLUMNS])
        out.append(buf.getvalue())
    return out


def _bulk(sc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Bulk containers: (eDoc rows, scans)."""
    rows: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    for b in sc.get("bulk", []):
        start = _t(b["at"])
        step = dt.timedelta(seconds=b.get("step_seconds", 60))
        for i in range(b["count"]):
            n = b.get("first", 0) + i
            imcb = b["imcb"].format(n=n)
            scans.append({"at": _iso(start + i * step), "imcb": imcb, "site": b.get("site", "NDC-X")})
            if b.get("edoc", {}) is not False:
                rows.append({"imcb": imcb, **b.get("edoc", {})})
    return rows, scans


def reference_csv(sc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, file name, CSV text) for the reference imports, in import order."""
    ref = sc.get("reference", {})
    out = []
    for kind in REFERENCE_ORDER:
        if kind == "edoc":
            bulk_rows, _ = _bulk(sc)
            rows = list(sc.get("edoc", [])) + bulk_rows
            text = ref.get("edoc", "").strip()
            if rows:
                lines = _render_edoc(sc.get("edoc_defaults", {}), rows)
                text = "\n".join([text or ",".join(EDOC_COLUMNS), *lines])
            if text:
                out.append((kind, "edoc.csv", text + "\n"))
        elif ref.get(kind):
            out.append((kind, f"{kind}.csv", ref[kind].strip() + "\n"))
    return out


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def events(sc: dict[str, Any]) -> list[dict[str, Any]]:
    """dock-scan/1 and dock-disposition/1 events, valid against the sync schema. Event ids follow the order in
    the file (not the scan time, so nothing can lean on id order); each dock's seq follows time."""
    _, bulk_scans = _bulk(sc)
    scans = list(sc.get("scans", [])) + bulk_scans
    items: list[tuple[dt.datetime, int, str, dict[str, Any]]] = []
    for i, s in enumerate(scans):
        items.append((_t(s["at"]), i, "scan", s))
    for i, d in enumerate(sc.get("dispositions", [])):
        items.append((_t(d["at"]), len(scans) + i, "disposition", d))
    items.sort(key=lambda x: (x[0], x[1]))
    ids: dict[str, str] = {}
    site_of: dict[str, tuple[str, str]] = {}
    seqs: Counter[str] = Counter()
    out = []
    for at, listed, typ, s in items:
        event_id = f"019aa7a2-1c3e-7b5e-9f4c-{listed + 1:012x}"
        if typ == "scan":
            site = s.get("site", "NDC-X")
            device = s.get("device", f"dock-{site}")
            if "id" in s:
                ids[s["id"]] = event_id
            site_of[event_id] = (site, device)
        else:
            site, device = site_of[ids[s["ref"]]]
        seqs[device] += 1
        ev: dict[str, Any] = {"schema": f"dock-{typ}/1", "type": typ, "event_id": event_id, "device_id": device,
                              "site": site, "seq": seqs[device], "boot": 1, "scanned_at": _iso(at),
                              "clock_synced": True, "scanner": "door-1", "mode": s.get("mode", "normal")}
        if typ == "scan":
            imcb = s["imcb"]
            mid = imcb[3:12] if imcb[3] == "9" else imcb[3:9]
            ev.update({"barcode": imcb, "kind": "imcb", "symbology": None, "fields": {"mid": mid},
                       "ticket": s.get("ticket"), "appointment": s.get("appointment"),
                       "disposition": s.get("disposition", "unverified"), "reason": "scenario"})
            if "role" in s:
                ev["role"] = s["role"]
        else:
            ev.update({"ref_event_id": ids[s["ref"]], "disposition": s["disposition"], "reason": "scenario",
                       "form": None})
        out.append(ev)
    return out


# -- checking --------------------------------------------------------------------------------------------


def _usd(value: str | float) -> float:
    return float(Decimal(str(value)))


def compare(check: dict[str, Any], card: dict[str, Any], errors: list[dict[str, Any]] | None) -> list[str]:
    """Every difference between what the rules require and what the scorecard says."""
    bad: list[str] = []

    def want(label: str, got: Any, expected: Any) -> None:
        if got != expected:
            bad.append(f"{label}: expected {expected!r}, got {got!r}")

    want("crid", card.get("crid"), check["crid"])
    if "from" in check:
        want("from", card.get("from"), check["from"])
        want("to", card.get("to"), check["to"])
    want("containers", card.get("containers"), check["containers"])
    want("pending", card.get("pending"), check["pending"])
    n = check["containers"]
    for rule in RULES:
        exp = check.get(rule, {})
        got = card.get(rule)
        if not isinstance(got, dict):
            bad.append(f"{rule}: missing from the scorecard")
            continue
        e = exp.get("errors", 0)
        want(f"{rule}.errors", got.get("errors"), e)
        want(f"{rule}.assessed", got.get("assessed"), exp.get("assessed", 0))
        want(f"{rule}.assessment_usd", got.get("assessment_usd"), _usd(exp.get("assessment_usd", "0.00")))
        want(f"{rule}.threshold", got.get("threshold"), float(Fraction(exp.get("threshold",
                                                                             SPEC_THRESHOLDS[rule]))))
        if "rate" in exp:
            want(f"{rule}.rate", got.get("rate"), float(Fraction(exp["rate"])))
        elif n:
            want(f"{rule}.rate", got.get("rate"), float(Fraction(e, n)))
        flags = got.get("flags", [])
        for f in exp.get("flags", []):
            if not any(f in g for g in flags):
                bad.append(f"{rule}.flags: expected one containing {f!r}, got {flags!r}")
        if "has_flags" in exp and bool(flags) != exp["has_flags"]:
            bad.append(f"{rule}.flags: expected {'some' if exp['has_flags'] else 'none'}, got {flags!r}")
    if "total_usd" in check:
        want("assessment_usd (total)", card.get("assessment_usd"), _usd(check["total_usd"]))
    if "errors" in check and errors is not None:
        got_e = Counter((e["rule"], e["imcb"], bool(e["assessed"]), float(e["assessment_usd"])) for e in errors)
        exp_e = Counter((e["rule"], e["imcb"], bool(e.get("assessed", True)), _usd(e.get("assessment_usd", "0")))
                        for e in check["errors"])
        if got_e != exp_e:
            bad.append(f"errors list: missing {sorted((exp_e - got_e).elements())}, "
                       f"unexpected {sorted((got_e - exp_e).elements())}")
    return bad


def _period(check: dict[str, Any]) -> tuple[dt.date, dt.date]:
    from scorer.scorecard import month_bounds

    if "month" in check:
        return month_bounds(check["month"])
    return dt.date.fromisoformat(check["from"]), dt.date.fromisoformat(check["to"])


def _import_expectation(step: dict[str, Any], problems: list[str] | None) -> list[str]:
    expected = step.get("expect_error")
    if expected is None:
        return [] if problems is None else [f"import {step['name']}: unexpected problems {problems}"]
    if problems is None:
        return [f"import {step['name']}: expected it to be refused ({expected}), it was imported"]
    text = "\n".join(problems)
    return [f"import {step['name']}: no problem mentions {x!r}: {problems}" for x in expected if x not in text]


# -- in-process ------------------------------------------------------------------------------------------


def run_scenario(path: Path | str, db_factory: Callable[[], Any]) -> None:
    """Run one scenario through the Python API on ``db_factory()`` and assert every expectation."""
    from scorer import scorecard
    from scorer.ingest import Ingestor
    from scorer.reference import ImportError_, read_text

    sc = load(path)
    db = db_factory()
    bad: list[str] = []
    try:
        for kind, name, text in reference_csv(sc):
            db.import_reference(kind, read_text(kind, text, name).rows)
        for step in sc.get("imports", []):
            try:
                parsed = read_text(step["kind"], step["csv"].strip() + "\n", step["name"])
            except ImportError_ as e:
                bad += _import_expectation(step, e.problems)
                continue
            bad += _import_expectation(step, None)
            db.import_reference(step["kind"], parsed.rows, replace=step.get("replace", False))
        lines = [json.dumps(ev).encode() for ev in events(sc)]
        ingestor = Ingestor(db, time.time_ns)
        _, rejected = ingestor.ingest_lines(lines, sc["name"])
        assert rejected == 0, f"{rejected} scenario events rejected: {dict(ingestor.stats.rejected)}"
        for i, o in enumerate(sc.get("outages", [])):
            db.outage_start(f"national-{i}", _iso(_t(o["start"])), "test")
            if "end" in o:
                db.outage_end(_iso(_t(o["end"])), "test")
        for t in sc.get("tickets", []):
            db.resolve_ticket(t["ticket"], _iso(_t(t["resolved_at"])), "test")
        for i, check in enumerate(sc.get("checks", [])):
            start, end = _period(check)
            settings = scorecard.Settings(grace=dt.timedelta(days=check.get("grace_days", 10)),
                                          continuation=dt.timedelta(hours=check.get("continuation_hours", 48)))
            card, errors = scorecard.compute(db, check["crid"], start, end, as_of=_t(check["as_of"]),
                                             owner=check.get("owner"), settings=settings)
            card = json.loads(json.dumps(card))  # what --json would print
            bad += [f"check {i + 1} ({_label(check)}): {b}" for b in compare(check, card, errors)]
    finally:
        db.close()
    assert not bad, f"{sc['name']}: " + "\n  ".join(["", *bad])


def _label(check: dict[str, Any]) -> str:
    period = check.get("month") or f"{check.get('from')}..{check.get('to')}"
    return f"crid {check['crid']} {period} as of {check['as_of']}" + (f" owner {check['owner']}"
                                                                      if "owner" in check else "")


# -- through the command line ----------------------------------------------------------------------------


def dock_scorer(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "dock-scorer"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scorer.cli"]
    return subprocess.run([*cmd, *args], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "USER": "scenario"})


def run_scenario_cli(path: Path | str, db: str, workdir: Path) -> None:
    """Run one scenario through ``dock-scorer`` on ``--db db`` and assert every expectation."""
    sc = load(path)
    workdir.mkdir(parents=True, exist_ok=True)
    bad: list[str] = []

    def ok(res: subprocess.CompletedProcess[str], what: str) -> None:
        assert res.returncode == 0, f"{what}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"

    for kind, name, text in reference_csv(sc):
        f = workdir / name
        f.write_text(text)
        ok(dock_scorer("import", "--db", db, kind, str(f)), f"import {kind}")
    for step in sc.get("imports", []):
        f = workdir / step["name"]
        f.write_text(step["csv"].strip() + "\n")
        res = dock_scorer("import", "--db", db, *(["--replace"] if step.get("replace") else []), step["kind"],
                          str(f))
        if res.returncode == 0:
            bad += _import_expectation(step, None)
        else:
            assert res.returncode == 1, res.stderr
            assert "nothing imported" in res.stderr, res.stderr
            bad += _import_expectation(step, res.stderr.splitlines())
    evs = events(sc)
    if evs:
        f = workdir / "events.jsonl"
        f.write_text("".join(json.dumps(ev) + "\n" for ev in evs))
        res = dock_scorer("ingest", "--db", db, str(f))
        ok(res, "ingest")
        assert f"{len(evs)} new events" in res.stdout, res.stdout
    for o in sc.get("outages", []):
        ok(dock_scorer("outage", "start", "--db", db, "--at", o["start"]), "outage start")
        if "end" in o:
            ok(dock_scorer("outage", "end", "--db", db, "--at", o["end"]), "outage end")
    for t in sc.get("tickets", []):
        ok(dock_scorer("ticket", "resolve", t["ticket"], "--db", db, "--at", t["resolved_at"]), "ticket resolve")
    for i, check in enumerate(sc.get("checks", [])):
        args = ["--db", db, "--crid", check["crid"], "--as-of", check["as_of"], "--json"]
        args += ["--month", check["month"]] if "month" in check else ["--from", check["from"], "--to", check["to"]]
        if "owner" in check:
            args += ["--owner", check["owner"]]
        if "grace_days" in check:
            args += ["--grace-days", str(check["grace_days"])]
        if "continuation_hours" in check:
            args += ["--continuation-hours", str(check["continuation_hours"])]
        res = dock_scorer("scorecard", *args)
        ok(res, "scorecard")
        card = json.loads(res.stdout)
        errors = None
        if "errors" in check:
            res = dock_scorer("errors", *args)
            ok(res, "errors")
            errors = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
        bad += [f"check {i + 1} ({_label(check)}): {b}" for b in compare(check, card, errors)]
    assert not bad, f"{sc['name']} (CLI): " + "\n  ".join(["", *bad])

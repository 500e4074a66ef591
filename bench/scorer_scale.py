#!/usr/bin/env python3
"""The scorer at scale, on SQLite and on PostgreSQL: import --edoc eDoc rows, ingest --containers scanned
containers, compute the scorecard over all of them.

DATA (generated once per run, deterministic from --seed, untimed; the same files for both backends):
- reference CSVs: 40 facilities (4 time zones), 500 mailers (some seamless, some with continuous MIDs,
  some with a second 9-digit MID), a Mail Direction File for 300 destination ZIP3s x DNDC/DSCF, zones for every
  facility x destination ZIP3, and ``edoc.csv`` with --edoc rows (realistic columns: CRIDs skewed towards big
  mailers, ~2,000 containers per statement, 95 % FIN, 2 % FPP, 2 % UPD, 1 % EST, mail classes MKT/PER/BPM/FC,
  claimed entry levels and zones, postage by level and by zone);
- ``events.jsonl``: --containers dock-scan/1 events (one per container) in dock-batch/1 lines of 500 events
  per dock (200 docks, 5 per facility), as the docks send them: ~98 % scans of eDoc'd IMcbs at the facility of
  their Mail Direction File (1 % at another one), ~1.5 % undocumented IMcbs, ~0.5 % re-scans of an IMcb at
  another facility (duplicates). November 2026.

TIMED, per backend, on a fresh database:
- ``import``: ``ScorerDB.import_reference`` of the checked eDoc rows (one transaction, what ``dock-scorer
  import`` does after checking the file). The check itself (``scorer.reference.read_csv``) does not depend on
  the backend and is timed once, as ``import check``.
- ``ingest``: ``scorer.ingest.Ingestor.ingest_lines`` on events.jsonl, exactly ``dock-scorer ingest``'s path:
  bounded JSON, schema validation, idempotent insert, commits of >= 5,000 events.
- ``scorecard``: ``scorer.scorecard.compute`` for the CRID with the most containers, month 2026-11: it loads
  all reference data and every scan of the period and judges every container (so all --containers), then
  assesses that CRID. Its phases (load_reference, load_scans, evaluate, assess) are also timed separately by
  calling the same functions in the same order; the phase run's scorecard must equal compute's.

SQLite runs as the scorer opens it (WAL, synchronous=FULL). PostgreSQL is a fresh server of the installed
version (initdb into the work directory, Unix socket only; tests/pg_server.py), durable (fsync and
synchronous_commit on, the defaults) with the memory settings a scorer host would be given:
shared_buffers=512MB, max_wal_size=4GB, checkpoint_timeout=15min; they are printed. Each backend gets the same
data; the scorecards of both must be identical (checked).

Reports seconds and rows/s per step and backend, the ratio PostgreSQL / SQLite, and our SQLite scorecard
time against the target (<= 20 s for 1,000,000 containers on this 2-core machine; reported, never
asserted). With --profile, the SQLite scorecard is run once more under py-spy (if installed; else cProfile)
and the functions taking the time are listed, then once with Python's cyclic GC off (gc.disable()) to show its
share. Options: --edoc, --containers, --backends, --repeats, --dir,
--seed, --profile.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _benchlib import choose_base_dir, describe_fs, install_signal_cleanup, work_dir

TARGET_S = 20.0
TARGET_CONTAINERS = 1_000_000
MONTH = "2026-11"
AS_OF = "2026-12-20T00:00:00Z"
PG_SETTINGS = {"shared_buffers": "512MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min"}
EDOC_COLUMNS = ("imcb", "submitter_crid", "owner_crid", "statement_id", "statement_status", "finalized_at",
                "uploaded_at", "mailing_date", "einduction", "destination_zip", "entry_facility_type",
                "entry_discount", "mail_class", "zone_claimed", "postage", "postage_if_none", "postage_by_level",
                "postage_by_zone")
TZS = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")


# -- data ------------------------------------------------------------------------------------------------------


class Data:
    """Generates the reference CSVs and the events file into ``d``."""

    def __init__(self, d: Path, n_edoc: int, n_containers: int, seed: int) -> None:
        self.d = d
        self.rng = random.Random(seed)
        self.n_edoc = n_edoc
        self.n_containers = n_containers
        self.facilities = [(f"NDC-{i:02d}" if i < 10 else f"SCF-{i - 10:02d}", f"{100 + i * 21:03d}", TZS[i % 4])
                           for i in range(40)]
        self.ndcs = [f for f in self.facilities if f[0].startswith("NDC")]
        self.scfs = [f for f in self.facilities if f[0].startswith("SCF")]
        self.zip_of = {f[0]: f[1] for f in self.facilities}
        self.dest3 = sorted({f"{self.rng.randrange(10, 1000):03d}" for _ in range(400)})[:300]
        self.mdf = {}
        for j, z in enumerate(self.dest3):
            self.mdf[(z, "DNDC")] = self.ndcs[j % len(self.ndcs)][0]
            self.mdf[(z, "DSCF")] = self.scfs[j % len(self.scfs)][0]
        self.mailers = []
        for i in range(500):
            mids = [f"{100000 + i * 7:06d}"] + ([f"9{10000000 + i:08d}"] if i % 10 == 3 else [])
            self.mailers.append((f"{1000000 + i}", mids, i % 20 == 7, mids[:1] if i % 25 == 11 else []))

    def zone(self, fac_zip3: str, dest_zip3: str) -> int:
        return min(8, 1 + abs(int(fac_zip3) - int(dest_zip3)) // 110)

    def write_reference(self) -> dict[str, Path]:
        out = {}

        def write(kind: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
            path = self.d / f"{kind}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(header)
                w.writerows(rows)
            out[kind] = path

        write("facilities", ("facility", "zip3", "tz", "entry_levels"),
              [(name, z, tz, "DNDC;DSCF" if name.startswith("NDC") else "DSCF;DDU") for name, z, tz in self.facilities])
        write("mailers", ("crid", "mids", "seamless", "continuous_mids"),
              [(crid, ";".join(mids), "Y" if seamless else "N", ";".join(cont))
               for crid, mids, seamless, cont in self.mailers])
        write("mdf", ("destination_zip", "entry_facility_type", "facility"),
              [(z, eft, fac) for (z, eft), fac in sorted(self.mdf.items())])
        write("zones", ("origin_zip3", "destination_zip3", "zone"),
              [(fz, dz, self.zone(fz, dz)) for _, fz, _ in self.facilities for dz in self.dest3])
        return out

    def write_edoc_and_events(self) -> tuple[Path, Path, str]:
        """edoc.csv and events.jsonl; returns them and the CRID with the most containers."""
        rng = self.rng
        d0 = dt.date(2026, 11, 1)
        plans: list[tuple[str, str, dt.date] | None] = []  # per eDoc row: (imcb, planned facility, mailing date)
        per_crid: Counter[str] = Counter()
        edoc_path = self.d / "edoc.csv"
        with open(edoc_path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(EDOC_COLUMNS)
            for n in range(self.n_edoc):
                i = int(len(self.mailers) * rng.random() ** 2)  # a few big mailers, many small ones
                crid, mids, _seamless, _cont = self.mailers[i]
                mid = mids[-1] if len(mids) > 1 and rng.random() < 0.3 else mids[0]
                imcb = f"99M{mid}{n:012d}" if len(mid) == 6 else f"99M{mid}{n:09d}"
                r = rng.random()
                status = "FIN" if r < 0.95 else "FPP" if r < 0.97 else "UPD" if r < 0.99 else "EST"
                mailing = d0 + dt.timedelta(days=n % 28)
                prev = (mailing - dt.timedelta(days=1)).isoformat()
                dest3 = self.dest3[rng.randrange(len(self.dest3))]
                eft = "DSCF" if rng.random() < 0.6 else "DNDC"
                facility = self.mdf[(dest3, eft)]
                discount = eft if rng.random() > 0.01 else "DDU"
                cls = rng.choices(("MKT", "PER", "BPM", "FC"), (70, 20, 5, 5))[0]
                zone = ""
                if cls in ("PER", "BPM"):
                    zone = str(max(1, self.zone(self.zip_of[facility], dest3) - (1 if rng.random() < 0.01 else 0)))
                postage = Decimal(rng.randrange(5000, 200000)) / 100
                if_none = (postage * Decimal("1.2")).quantize(Decimal("0.01"))
                by_level = f"DNDC={(postage * Decimal('1.05')).quantize(Decimal('0.01'))};DSCF={postage};NONE={if_none}"
                by_zone = ";".join(f"{z}={postage + z}" for z in range(1, 9)) if zone else ""
                w.writerow((imcb, crid, crid if rng.random() < 0.9 else self.mailers[rng.randrange(500)][0],
                            f"S{crid}-{n // 2000}", status, f"{prev}T12:00:00Z" if status in ("FIN", "FPP") else "",
                            f"{prev}T10:00:00Z", mailing.isoformat(), "Y" if rng.random() < 0.98 else "N",
                            f"{dest3}{rng.randrange(100):02d}", eft, discount, cls, zone, postage, if_none, by_level,
                            by_zone))
                plans.append((imcb, facility, mailing))
                per_crid[crid] += 1
        # Containers: eDoc'd ones at their facility (1 % elsewhere), undocumented ones, re-scans elsewhere.
        n_dup = self.n_containers // 200
        n_undoc = self.n_containers * 3 // 200
        n_doc = min(self.n_containers - n_dup - n_undoc, len(plans))
        n_undoc = self.n_containers - n_dup - n_doc
        scans: list[tuple[dt.datetime, str, str]] = []  # (time, imcb, facility)
        names = [f[0] for f in self.facilities]
        tz_hours = {name: 5 + i % 4 for i, (name, _, _) in enumerate(self.facilities)}  # rough UTC offsets
        for k in range(n_doc):
            imcb, facility, mailing = plans[k]  # type: ignore[misc]
            if rng.random() < 0.01:
                facility = names[rng.randrange(len(names))]
            at = dt.datetime.combine(mailing, dt.time(), dt.UTC) + dt.timedelta(
                hours=tz_hours[facility] + 6 + rng.random() * 12)
            scans.append((at, imcb, facility))
        for k in range(n_undoc):
            crid, mids, _, _ = self.mailers[rng.randrange(len(self.mailers))]
            imcb = f"99M{mids[0]}{self.n_edoc + k:012d}"
            facility = names[rng.randrange(len(names))]
            at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + dt.timedelta(hours=8 + rng.random() * 27 * 24)
            scans.append((at, imcb, facility))
        for k in range(n_dup):
            at, imcb, facility = scans[rng.randrange(n_doc)]
            other = names[(names.index(facility) + 1 + rng.randrange(len(names) - 1)) % len(names)]
            scans.append((at + dt.timedelta(hours=6 + rng.random() * 48), imcb, other))
        scans.sort()
        events_path = self.d / "events.jsonl"
        batches: dict[str, list[dict[str, Any]]] = {}
        seq: Counter[str] = Counter()
        with open(events_path, "w") as f:
            for n, (at, imcb, facility) in enumerate(scans):
                device = f"dock-{facility.lower()}-{n % 5}"
                seq[device] += 1
                mid = imcb[3:12] if imcb[3] == "9" else imcb[3:9]
                ev = {"schema": "dock-scan/1", "type": "scan", "event_id": f"019aa7a2-1c3e-7b5e-9f4c-{n:012x}",
                      "device_id": device, "site": facility, "seq": seq[device], "boot": 1,
                      "scanned_at": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "clock_synced": True,
                      "scanner": "door-1", "mode": "normal", "barcode": imcb, "kind": "imcb", "symbology": None,
                      "fields": {"mid": mid}, "ticket": None, "appointment": f"APT-{n // 40}",
                      "disposition": "unverified", "reason": "bench"}
                b = batches.setdefault(device, [])
                b.append(ev)
                if len(b) == 500:
                    f.write(_batch_line(device, facility, b))
                    batches[device] = []
            for device, b in batches.items():
                if b:
                    f.write(_batch_line(device, b[0]["site"], b))
        return edoc_path, events_path, per_crid.most_common(1)[0][0]


def _batch_line(device: str, site: str, events: list[dict[str, Any]]) -> str:
    return json.dumps({"schema": "dock-batch/1", "device_id": device, "site": site, "boot": 1,
                       "sent_at": events[-1]["scanned_at"], "historical": True, "events": events},
                      separators=(",", ":")) + "\n"


# -- the steps -------------------------------------------------------------------------------------------------


CPU: dict[str, float] = {}  # CPU seconds of the last timed() call: this process, and the PostgreSQL server
SERVER_PID: list[int] = []


def server_cpu_s() -> float:
    """CPU seconds used so far by the PostgreSQL server: the postmaster, its reaped children, its live children."""
    if not SERVER_PID:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    pm = SERVER_PID[0]
    total = 0
    with contextlib.suppress(OSError):
        fields = stat(pm)
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = stat(int(entry))
                if int(fields[1]) == pm:
                    total += int(fields[11]) + int(fields[12])
    return total / tick


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Wall seconds and the result; CPU seconds (this process, the database server) are left in CPU."""
    c, sc = time.process_time(), server_cpu_s()
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    wall = time.perf_counter() - t
    CPU["client"], CPU["server"] = time.process_time() - c, server_cpu_s() - sc
    return wall, result


def scorecard_phases(db: Any, crid: str) -> tuple[dict[str, float], Any]:
    """compute()'s phases, timed one by one (same functions, same order as scorer.scorecard.compute)."""
    from scorer import rules, scorecard

    start, end = scorecard.month_bounds(MONTH)
    as_of = scorecard._t(AS_OF)
    t: dict[str, float] = {}
    t["load_reference"], ref = timed(scorecard.load_reference, db)
    t["load_reference_cpu"] = CPU["client"]
    since = dt.datetime.combine(start, dt.time(), dt.UTC) - rules.DUPLICATE_WINDOW - dt.timedelta(days=2)
    until = dt.datetime.combine(end, dt.time(), dt.UTC) + dt.timedelta(days=2)
    t["load_scans"], (scans, changes) = timed(scorecard.load_scans, db, since, until)
    t["load_scans_cpu"] = CPU["client"]
    c0 = time.perf_counter()
    outages = [(scorecard._t(s), scorecard._t(e) if e else None) for _id, s, e in db.outages()]
    tickets = {k: scorecard._t(at) for k, at in db.resolved_tickets().items()}
    t["load_reference"] += time.perf_counter() - c0
    t["evaluate"], judged = timed(scorecard.evaluate, ref, scans, changes, as_of, outages, tickets)
    t["evaluate_cpu"] = CPU["client"]
    t["assess"], result = timed(scorecard.assess, ref, judged, crid, start, end)
    t["assess_cpu"] = CPU["client"]
    t["containers"] = len(judged)
    t["scans"] = len(scans)
    return t, result


def run_backend(name: str, url: str, reference: dict[str, Any], edoc_rows: list[dict[str, Any]],
                events_path: Path, crid: str) -> dict[str, Any]:
    from scorer import scorecard
    from scorer.db import ScorerDB
    from scorer.ingest import Ingestor

    out: dict[str, Any] = {}
    db = ScorerDB.open(url)
    try:
        for kind, rows in reference.items():
            db.import_reference(kind, rows)
        out["import"], n = timed(db.import_reference, "edoc", edoc_rows)
        out["cpu_import"] = dict(CPU)
        assert n == len(edoc_rows)
        ingestor = Ingestor(db, time.time_ns)
        with open(events_path, "rb") as f:
            out["ingest"], (_lines, bad) = timed(ingestor.ingest_lines, f, str(events_path))
        out["cpu_ingest"] = dict(CPU)
        assert bad == 0, dict(ingestor.stats.rejected)
        out["events"] = ingestor.stats.events_new
        assert db.count("events") == out["events"]
        start, end = scorecard.month_bounds(MONTH)
        out["scorecard"], (card, errors) = timed(scorecard.compute, db, crid, start, end,
                                                 as_of=scorecard._t(AS_OF))
        out["cpu_scorecard"] = dict(CPU)
        out["phases"], (card2, errors2) = scorecard_phases(db, crid)
        assert json.dumps([card, errors], sort_keys=True) == json.dumps([card2, errors2], sort_keys=True)
        out["card"] = json.dumps([card, errors], sort_keys=True)
        out["summary"] = {"crid": crid, "containers": card["containers"],
                          "errors": {r: card[r]["errors"] for r in scorecard.rules.RULES},
                          "assessment_usd": card["assessment_usd"]}
    finally:
        db.close()
    return out


# -- profile ---------------------------------------------------------------------------------------------------


def profile_scorecard(url: str, crid: str, workdir: Path) -> None:
    """Run compute() once more under py-spy (sampling this process) or cProfile, and print where the time goes."""
    from scorer import scorecard
    from scorer.db import ScorerDB

    start, end = scorecard.month_bounds(MONTH)
    db = ScorerDB.open(url)
    spy = shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy")
                                     if (Path(sys.executable).parent / "py-spy").exists() else None)
    try:
        if spy:
            raw = workdir / "scorecard.pyspy"
            proc = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--rate", "200", "--format", "raw",
                                     "--output", str(raw), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # attached
            elapsed, _ = timed(scorecard.compute, db, crid, start, end, as_of=scorecard._t(AS_OF))
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            if not raw.exists():
                print(f"py-spy produced nothing: {err.decode(errors='replace')[-500:]}")
                return
            print(f"\n=== profile: scorecard on SQLite under py-spy ({elapsed:.1f} s, 200 samples/s, this process)")
            _print_collapsed(raw)
            shutil.copy(raw, Path(tempfile.gettempdir()) / "scorer_scale_scorecard.pyspy")
            print(f"(collapsed stacks kept in {Path(tempfile.gettempdir()) / 'scorer_scale_scorecard.pyspy'})")
        else:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            scorecard.compute(db, crid, start, end, as_of=scorecard._t(AS_OF))
            prof.disable()
            print("\n=== profile: scorecard on SQLite under cProfile (py-spy not installed)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        # The cyclic garbage collector walks every live object again and again while compute() allocates
        # millions of them: how long compute() takes with it off (gc.disable / gc.freeze would give this).
        import gc

        gc.collect()
        gc.disable()
        try:
            elapsed, _ = timed(scorecard.compute, db, crid, start, end, as_of=scorecard._t(AS_OF))
        finally:
            gc.enable()
        print(f"scorecard on SQLite with the cyclic GC off during compute(): {elapsed:.1f} s "
              f"(CPU {CPU['client']:.1f} s)")
    finally:
        db.close()


def _print_collapsed(path: Path) -> None:
    """Self and inclusive time per function from py-spy's collapsed stacks (only the stacks under compute)."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("compute (scorer/scorecard.py" in f or "compute (/" in f and "scorecard.py" in f for f in frames):
            continue
        n = int(count)
        total += n
        short = [_short(f) for f in frames]
        self_t[short[-1]] += n
        for f in set(short):
            incl[f] += n
    if not total:
        print("no samples under scorecard.compute")
        return
    print(f"{total} samples under scorecard.compute")
    print("  inclusive (the function and what it calls):")
    for f, n in incl.most_common(22):
        print(f"    {100 * n / total:5.1f} %  {f}")
    print("  self (time spent in the function's own lines):")
    for f, n in self_t.most_common(22):
        print(f"    {100 * n / total:5.1f} %  {f}")


def _short(frame: str) -> str:
    """'fn (path/to/file.py:123)' -> 'fn (file.py)' so one function's lines add up."""
    fn, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    return f"{fn} ({'/'.join(parts[-2:])})"


# -- main ------------------------------------------------------------------------------------------------------


def fmt_rate(n: int, s: float) -> str:
    return f"{n / s:>10,.0f}/s" if s > 0 else "         -"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edoc", type=int, default=1_000_000, help="eDoc rows (default 1,000,000)")
    p.add_argument("--containers", type=int, default=1_000_000, help="scanned containers (default 1,000,000)")
    p.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--repeats", type=int, default=1, help="fresh databases per backend; medians reported")
    p.add_argument("--dir", help="work directory parent (default: /var/tmp or another disk-backed place)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--profile", action="store_true", help="profile the SQLite scorecard (py-spy or cProfile)")
    args = p.parse_args()
    install_signal_cleanup()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgresql"):
            raise SystemExit(f"unknown backend {b!r}")
    base = choose_base_dir(args.dir)
    print(f"scorer_scale: {args.edoc:,} eDoc rows, {args.containers:,} containers, backends {backends}, "
          f"repeats {args.repeats}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    print(f"work directory: {describe_fs(base)}")
    from scorer.reference import read_csv

    with work_dir(base, "scorer-scale") as d:
        data = Data(d, args.edoc, args.containers, args.seed)
        t, ref_paths = timed(data.write_reference)
        t2, (edoc_path, events_path, crid) = timed(data.write_edoc_and_events)
        print(f"generated in {t + t2:.1f} s: edoc.csv {edoc_path.stat().st_size / 1e6:.0f} MB, events.jsonl "
              f"{events_path.stat().st_size / 1e6:.0f} MB; scorecard CRID {crid}")
        reference = {kind: read_csv(kind, path).rows for kind, path in ref_paths.items()}
        reference = {k: reference[k] for k in ("mailers", "facilities", "mdf", "zones")}
        check_s, parsed = timed(read_csv, "edoc", edoc_path)
        check_cpu = CPU["client"]
        edoc_rows = parsed.rows
        print(f"import check (read_csv, backend-independent): {check_s:.1f} s (CPU {check_cpu:.1f} s), "
              f"{fmt_rate(len(edoc_rows), check_s)}")
        server = None
        results: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
        try:
            if "postgresql" in backends:
                from tests.pg_server import PostgresServer

                server = PostgresServer(settings=PG_SETTINGS, parent=str(base))  # d is 0700: postgres could not enter
                assert server.proc is not None
                SERVER_PID.append(server.proc.pid)
                print(f"PostgreSQL {server.bindir.parent.name} at {server.root} (Unix socket), settings {PG_SETTINGS}, "
                      "fsync and synchronous_commit on")
            for r in range(args.repeats):
                for b in (backends if r % 2 == 0 else backends[::-1]):
                    if b == "sqlite":
                        url = str(d / f"scorer-{r}.db")
                    else:
                        assert server is not None
                        url = server.create_database(f"scorer_{r}")
                    res = run_backend(b, url, reference, edoc_rows, events_path, crid)
                    results[b].append(res)
                    ph = res["phases"]
                    cpu = " / ".join(f"{k} {res['cpu_' + k]['client']:.1f}+{res['cpu_' + k]['server']:.1f}"
                                     for k in ("import", "ingest", "scorecard"))
                    print(f"[{b} #{r + 1}] import {res['import']:.1f} s, ingest {res['ingest']:.1f} s "
                          f"({res['events']:,} events), scorecard {res['scorecard']:.1f} s (load_reference "
                          f"{ph['load_reference']:.1f}, load_scans {ph['load_scans']:.1f}, evaluate "
                          f"{ph['evaluate']:.1f}, assess {ph['assess']:.1f}; {ph['containers']:,} containers "
                          f"judged from {ph['scans']:,} scans); CPU s (ours+server): {cpu}")
                    if b == "sqlite":
                        with contextlib.suppress(OSError):
                            size = sum(p.stat().st_size for p in d.glob(f"scorer-{r}.db*"))
                            print(f"          SQLite file {size / 1e6:.0f} MB")
                    elif server is not None and r + 1 < args.repeats:
                        server.drop_database(f"scorer_{r}")
            cards = {b: {res["card"] for res in rs} for b, rs in results.items()}
            if len(backends) == 2:
                same = cards["sqlite"] == cards["postgresql"] and len(cards["sqlite"]) == 1
                print(f"scorecards identical on both backends: {'yes' if same else 'NO'}")
            first = next(iter(results.values()))[0]
            print(f"scorecard of {first['summary']['crid']}: {json.dumps(first['summary'])}")
            if args.profile and "sqlite" in backends:
                profile_scorecard(str(d / "scorer-0.db"), crid, d)
        finally:
            if server is not None:
                server.stop()
    print("\n=== results (median over repeats)")
    print("(seconds: wall clock; CPU: seconds of CPU used by this process + by the PostgreSQL server)")
    print(f"{'step':34} {'backend':11} {'seconds':>9} {'rows/s':>12} {'CPU ours':>9} {'CPU server':>10}")
    med: dict[str, dict[str, float]] = {}
    for b, rs in results.items():
        med[b] = {k: statistics.median(r[k] for r in rs) for k in ("import", "ingest", "scorecard")}
        for k in ("import", "ingest", "scorecard"):
            med[b][f"cpu_{k}"] = statistics.median(r[f"cpu_{k}"]["client"] for r in rs)
            med[b][f"cpus_{k}"] = statistics.median(r[f"cpu_{k}"]["server"] for r in rs)
        med[b].update({f"phase_{k}": statistics.median(r["phases"][k] for r in rs)
                       for k in ("load_reference", "load_scans", "evaluate", "assess")})
        med[b].update({f"phase_{k}_cpu": statistics.median(r["phases"][f"{k}_cpu"] for r in rs)
                       for k in ("load_reference", "load_scans", "evaluate", "assess")})
        containers = rs[0]["phases"]["containers"]

        def line(b: str, label: str, key: str, n: int, extra: float = 0.0, extra_cpu: float = 0.0) -> None:
            s = med[b][key] + extra
            print(f"{label:34} {b:11} {s:9.1f} {fmt_rate(n, s)} {med[b]['cpu_' + key] + extra_cpu:9.1f} "
                  f"{med[b]['cpus_' + key]:10.1f}")

        line(b, "import eDoc (store)", "import", len(edoc_rows))
        line(b, "import eDoc (check + store)", "import", len(edoc_rows), check_s, check_cpu)
        line(b, "ingest events (validate + store)", "ingest", rs[0]["events"])
        line(b, "scorecard (containers judged)", "scorecard", containers)
        for k in ("load_reference", "load_scans", "evaluate", "assess"):
            print(f"{'  ' + k:34} {b:11} {med[b]['phase_' + k]:9.1f} {'':12} {med[b]['phase_' + k + '_cpu']:9.1f}")
    if len(med) == 2:
        print("PostgreSQL / SQLite: " + ", ".join(f"{k} {med['postgresql'][k] / med['sqlite'][k]:.2f}x"
                                                  for k in ("import", "ingest", "scorecard")))
    if "sqlite" in med:
        containers = results["sqlite"][0]["phases"]["containers"]
        scaled = med["sqlite"]["scorecard"] * TARGET_CONTAINERS / max(containers, 1)
        note = "" if containers == TARGET_CONTAINERS else f" (scaled to {TARGET_CONTAINERS:,}: {scaled:.1f} s)"
        verdict = "meets" if scaled <= TARGET_S else "MISSES"
        print(f"scorer_scale: SQLite scorecard {med['sqlite']['scorecard']:.1f} s "
              f"(CPU {med['sqlite']['cpu_scorecard']:.1f} s) for {containers:,} containers{note} — {verdict} the "
              f"target <= {TARGET_S:.0f} s for {TARGET_CONTAINERS:,}"
              + (f"; PostgreSQL {med['postgresql']['scorecard']:.1f} s" if "postgresql" in med else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

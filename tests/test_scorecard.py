"""Acceptance tests of the Table B-3 scorecard (seed 004 and the scorecard issue's rules), table-driven.

Every scenario in tests/scenarios/*.toml (see tests/scenario_runner.py for the format) runs in-process against a
fresh SQLite database; those marked ``cli = true`` (every one with DOCK_SCORER_SCENARIOS_CLI=all) also run through
``dock-scorer`` (import, ingest, outage, ticket, scorecard --json, errors --json). The expected numbers in the scenario files were written from the rules,
not from the code's output.

To run the same scenarios against another backend, call ``run_scenario(path, db_factory)`` (or
``run_scenario_cli(path, db_url, workdir)``) with a factory returning a fresh ``scorer.db.ScorerDB`` on it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from scorer.db import ScorerDB
from tests.scenario_runner import dock_scorer, load, run_scenario, run_scenario_cli, scenario_files

SCENARIOS = scenario_files()
CLI_SCENARIOS = [p for p in SCENARIOS if load(p).get("cli") or os.environ.get("DOCK_SCORER_SCENARIOS_CLI") == "all"]


def sqlite_factory(directory: Path):  # type: ignore[no-untyped-def]
    counter = itertools.count()
    return lambda: ScorerDB.open(str(directory / f"scorer-{next(counter)}.db"))


def test_there_are_scenarios() -> None:
    assert len(SCENARIOS) >= 20 and CLI_SCENARIOS


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path, tmp_path: Path) -> None:
    run_scenario(path, sqlite_factory(tmp_path))


@pytest.mark.parametrize("path", CLI_SCENARIOS, ids=[p.stem for p in CLI_SCENARIOS])
def test_scenario_cli(path: Path, tmp_path: Path) -> None:
    run_scenario_cli(path, str(tmp_path / "scorer.db"), tmp_path / "files")


def test_bad_import_names_file_and_line_and_stores_nothing(tmp_path: Path) -> None:
    """An import with one bad row imports nothing and names file:line (through the CLI, stderr)."""
    db = str(tmp_path / "s.db")
    header = ("imcb,submitter_crid,owner_crid,statement_id,statement_status,finalized_at,uploaded_at,mailing_date,"
              "einduction,destination_zip,entry_facility_type,entry_discount,mail_class,zone_claimed,postage,"
              "postage_if_none,postage_by_level,postage_by_zone")
    good = ("99M123456000000000001,1000001,1000001,S-1,FIN,2026-11-01T12:00:00Z,2026-11-01T11:00:00Z,2026-11-02,Y,"
            "19103,DNDC,DNDC,MKT,,100.00,120.00,,")
    bad = good.replace("000000000001", "000000000002").replace(",FIN,2026-11-01T12:00:00Z,", ",FIN,,")
    f = tmp_path / "edoc-bad.csv"
    f.write_text("\n".join([header, good, bad, good.replace("000000000001", "000000000003")]) + "\n")
    res = dock_scorer("import", "--db", db, "edoc", str(f))
    assert res.returncode == 1
    assert f"{f}:3: finalized_at is required" in res.stderr
    assert f"{f}:2:" not in res.stderr and f"{f}:4:" not in res.stderr
    conn = ScorerDB.open(db)
    try:
        assert conn.backend.query("SELECT count(*) FROM edoc")[0][0] == 0
    finally:
        conn.close()
    f.write_text(f"{header}\n{good}\n")
    assert dock_scorer("import", "--db", db, "edoc", str(f)).returncode == 0

"""The scan store on real SQLite files: sequence numbers, boot counter, migrations, pruning, the rejections
ring, and recovery from a corrupt database.

No root needed: every test works in its own tmp_path with the real sqlite3 module. Free-space limits are set
to 0 (no floor, no warning) and the ballast to 0 so the results do not depend on the build machine's disk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from agent import migrations
from agent.clock import FakeClock
from agent.errors import StorageError
from agent.settings import StoreSection
from agent.store import DB_NAME, ScanInput, Store, StoredScan

DAY_S = 86400.0


def limits(**overrides: object) -> StoreSection:
    base: dict[str, object] = {"floor_free_mb": 0, "warn_free_mb": 0, "ballast_mb": 0}
    base.update(overrides)
    return StoreSection(**base)


def open_store(state: Path, clock: FakeClock, **overrides: object) -> Store:
    store = Store(state, "dock-test-01", limits(**overrides), clock)
    store.open()
    return store


def barcode(n: int) -> str:
    return f"99M123456{n:012d}"


def scan_input(clock: FakeClock, n: int) -> ScanInput:
    clock.advance(0.01)
    code = barcode(n)
    return ScanInput(
        scanner="door1", raw=code.encode(), barcode=code, kind="imcb", symbology=None,
        fields={"mid": "123456", "serial": f"{n:012d}"}, verdict="unverified", reason="test",
        wall_ns=clock.wall_ns(), mono_ns=clock.monotonic_ns(), clock_synced=True,
    )


def record(store: Store, clock: FakeClock, numbers: range | list[int]) -> list[StoredScan]:
    return [store.record_scan(scan_input(clock, n)) for n in numbers]


def db_rows(db: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def integrity(db: Path) -> str:
    return str(db_rows(db, "PRAGMA integrity_check")[0][0])


def counters_file(state: Path) -> dict[str, int]:
    return json.loads((state / "counters.json").read_text())


def seq_high_water(state: Path) -> int:
    """The sequence high-water mark kept in counters.json (whatever its key is called)."""
    marks = [v for k, v in counters_file(state).items() if k != "boot" and isinstance(v, int)]
    assert len(marks) == 1, counters_file(state)
    return marks[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- sequence numbers and the boot counter -----------------------------------------------------------------


def test_seq_strictly_increases_across_reopen_and_boot_counts_opens(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    stored: list[StoredScan] = []
    for boot in range(1, 6):
        store = open_store(state, clock)
        try:
            assert store.boot == boot
            assert counters_file(state)["boot"] == boot
            batch = record(store, clock, range(boot * 100, boot * 100 + 7))
            assert {s.boot for s in batch} == {boot}
            stored += batch
        finally:
            store.close()
    seqs = [s.seq for s in stored]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs
    rows = db_rows(state / DB_NAME, "SELECT seq, boot, event_id FROM scans ORDER BY seq")
    assert [(s.seq, s.boot, s.event_id) for s in stored] == rows
    # The high-water mark on disk is at or above every seq handed out (blocks are reserved before use).
    assert seq_high_water(state) >= max(seqs)


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_lost_counters_file_seq_continues_above_db_max(tmp_path: Path, damage: str) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock)
    try:
        before = record(store, clock, range(50))
    finally:
        store.close()
    if damage == "deleted":
        (state / "counters.json").unlink()
    else:
        (state / "counters.json").write_bytes(b"\x00{not json")
    store = open_store(state, clock)
    try:
        after = record(store, clock, range(50, 60))
    finally:
        store.close()
    assert after[0].seq == max(s.seq for s in before) + 1
    seqs = [s.seq for s in before + after]
    assert all(a < b for a, b in itertools.pairwise(seqs))
    assert db_rows(state / DB_NAME, "SELECT count(DISTINCT seq), count(*) FROM scans") == [(60, 60)]
    assert seq_high_water(state) >= max(seqs)


def test_lost_database_with_counters_kept_never_repeats_seq(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock)
    try:
        before = record(store, clock, range(30))
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        (state / (DB_NAME + suffix)).unlink(missing_ok=True)
    store = open_store(state, clock)
    try:
        assert store.boot == 2
        after = record(store, clock, range(30, 40))
    finally:
        store.close()
    assert min(s.seq for s in after) > max(s.seq for s in before)
    assert not {s.seq for s in after} & {s.seq for s in before}
    assert not {s.event_id for s in after} & {s.event_id for s in before}
    rows = db_rows(state / DB_NAME, "SELECT seq FROM scans ORDER BY seq")
    assert [r[0] for r in rows] == [s.seq for s in after]


# -- migrations --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["no file", "empty file", "empty database"])
def test_migrations_bring_an_empty_database_to_the_latest_version(tmp_path: Path, start: str) -> None:
    state, clock = tmp_path / "state", FakeClock()
    state.mkdir()
    db = state / DB_NAME
    if start == "empty file":
        db.write_bytes(b"")
    elif start == "empty database":
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA user_version = 0")
        conn.execute("VACUUM")
        conn.close()
    for opening in range(2):  # the second open finds the latest version and changes nothing
        store = open_store(state, clock)
        try:
            assert store.recovery.quarantined_to is None and store.recovery.integrity == "ok"
            assert store.get_meta("mode") == "normal"
            record(store, clock, [opening])
        finally:
            store.close()
        assert db_rows(db, "PRAGMA user_version") == [(migrations.LATEST,)]
        tables = {r[0] for r in db_rows(db, "SELECT name FROM sqlite_schema WHERE type = 'table'")}
        assert {"scans", "rejections", "meta"} <= tables
        assert db_rows(db, "SELECT count(*) FROM meta") == [(1,)]
        assert db_rows(db, "SELECT count(*) FROM scans") == [(opening + 1,)]
    assert not (state / "corrupt").exists()
    # migrate() reports the version it started from.
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrations.migrate(conn) == 0
    assert migrations.migrate(conn) == migrations.LATEST
    conn.close()


def test_database_from_newer_software_is_refused_and_left_untouched(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock)
    try:
        record(store, clock, range(5))
    finally:
        store.close()
    db = state / DB_NAME
    newer = migrations.LATEST + 1
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    counters_before = (state / "counters.json").read_bytes()
    store = Store(state, "dock-test-01", limits(), clock)
    try:
        with pytest.raises(StorageError) as caught:
            store.open()
    finally:
        store.close()
    message = str(caught.value)
    assert caught.value.code == "open"
    assert f"schema version {newer} is newer than this software ({migrations.LATEST})" in message
    assert "upgrade dock-agent" in message and str(db) in message
    # Not mistaken for corruption: nothing moved aside, nothing rewritten, the boot not counted.
    assert store.recovery.quarantined_to is None and store.recovery.integrity == "ok"
    assert not (state / "corrupt").exists()
    assert db_rows(db, "PRAGMA user_version") == [(newer,)]
    assert db_rows(db, "SELECT count(*) FROM scans") == [(5,)]
    assert (state / "counters.json").read_bytes() == counters_before


# -- pruning -----------------------------------------------------------------------------------------------


def test_prune_drops_only_the_oldest_delivered_rows_beyond_the_row_cap(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock, max_delivered_rows=1000, max_delivered_age_days=3650)
    try:
        stored = record(store, clock, range(1300))
        # Every 10th scan stays undelivered, spread among the delivered ones (also among the oldest).
        undelivered = [s for i, s in enumerate(stored) if i % 10 == 0]
        delivered = [s for i, s in enumerate(stored) if i % 10 != 0]
        assert len(delivered) == 1170
        assert store.mark_delivered([s.event_id for s in delivered], clock.wall_ns()) == 1170
        assert store.prune() == 170
        assert store.prune() == 0  # nothing more to do
        store.maintain()  # the loop's periodic upkeep prunes with the same rules
    finally:
        store.close()
    kept = {r[0]: r[1] for r in db_rows(state / DB_NAME, "SELECT event_id, delivered_at FROM scans")}
    assert all(s.event_id in kept and kept[s.event_id] is None for s in undelivered)
    kept_delivered = [s for s in delivered if s.event_id in kept]
    assert kept_delivered == delivered[170:]  # the newest 1000 delivered rows, oldest pruned first


def test_prune_by_age_uses_delivery_time_and_never_touches_undelivered(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock, max_delivered_age_days=2)
    try:
        old_scans = record(store, clock, range(40))
        store.mark_delivered([s.event_id for s in old_scans[:20]], clock.wall_ns())  # delivered on day 0
        clock.advance(1.5 * DAY_S)
        store.mark_delivered([s.event_id for s in old_scans[20:30]], clock.wall_ns())  # delivered on day 1.5
        late_scans = record(store, clock, range(40, 50))
        store.mark_delivered([s.event_id for s in late_scans[:5]], clock.wall_ns())
        assert store.prune() == 0  # nothing is two days past delivery yet
        clock.advance(1.0 * DAY_S)  # day 2.5
        assert store.prune() == 20
        clock.advance(365 * DAY_S)  # a year on: every delivered row goes, every undelivered one stays
        store.maintain()
    finally:
        store.close()
    left = db_rows(state / DB_NAME, "SELECT event_id, delivered_at FROM scans ORDER BY seq")
    never_delivered = old_scans[30:] + late_scans[5:]
    assert left == [(s.event_id, None) for s in never_delivered]


# -- rejections ring ---------------------------------------------------------------------------------------


def reject(store: Store, clock: FakeClock, n: int) -> None:
    clock.advance(0.01)
    assert store.record_rejection("door1", b"garbage-%d" % n, "not a known barcode", None, clock.wall_ns())


def rejection_ids(state: Path) -> list[int]:
    return [int(r[0]) for r in db_rows(state / DB_NAME, "SELECT id FROM rejections ORDER BY id")]


def test_rejections_ring_stays_bounded_in_one_run(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock, max_rejections=100)
    trim_every = 100  # the store trims in batches, so the ring may run up to one batch over
    try:
        for n in range(1050):
            reject(store, clock, n)
            if n % 25 == 0:
                assert len(rejection_ids(state)) <= 100 + trim_every - 1
    finally:
        store.close()
    ids = rejection_ids(state)
    assert len(ids) <= 100 + trim_every - 1
    assert ids[-1] == 1050 and ids == list(range(ids[0], 1051))  # the newest are kept, oldest dropped


def test_rejections_ring_stays_bounded_across_restarts(tmp_path: Path) -> None:
    """A box restarted daily, with fewer unusable reads per run than a trim batch, still stays bounded."""
    state, clock = tmp_path / "state", FakeClock()
    for run in range(12):
        store = open_store(state, clock, max_rejections=100)
        try:
            store.maintain()  # what Agent.run does first (tick(force=True))
            for n in range(60):
                reject(store, clock, run * 100 + n)
        finally:
            store.close()
        assert len(rejection_ids(state)) <= 199, f"run {run}: the ring grew past its bound"
    assert rejection_ids(state)[-1] == 12 * 60


# -- corrupt databases -------------------------------------------------------------------------------------


def build_history(state: Path, clock: FakeClock, n: int = 3000) -> tuple[list[StoredScan], set[str]]:
    """``n`` scans, every third one delivered; returns them and the delivered event ids."""
    store = open_store(state, clock)
    try:
        stored = record(store, clock, range(n))
        delivered = {s.event_id for s in stored if s.seq % 3 == 0}
        store.mark_delivered(sorted(delivered), clock.wall_ns())
    finally:
        store.close()
    assert not (state / (DB_NAME + "-wal")).exists()  # checkpointed on close: the main file is the data
    return stored, delivered


def quarantined(state: Path) -> list[Path]:
    return sorted((state / "corrupt").glob(f"*/{DB_NAME}"))


def check_fresh_database(state: Path, clock: FakeClock, old_max_seq: int) -> None:
    """The replacement database is sound, usable, and continues the sequence above the old one."""
    assert integrity(state / DB_NAME) == "ok"
    store = open_store(state, clock)
    try:
        assert store.recovery.quarantined_to is None  # the fresh database is not quarantined again
        new = store.record_scan(scan_input(clock, 999_999))
    finally:
        store.close()
    assert new.seq > old_max_seq
    assert integrity(state / DB_NAME) == "ok"


def test_corrupt_pages_are_moved_aside_and_undelivered_rows_salvaged(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    stored, delivered = build_history(state, clock)
    db = state / DB_NAME
    page = 4096
    pages = db.stat().st_size // page
    assert pages > 150
    first = pages * 2 // 5  # eight pages of garbage in the middle of the file (tables and indexes interleave)
    with open(db, "r+b") as f:
        f.seek(first * page)
        f.write(random.Random(20261122).randbytes(8 * page))
    damaged_hash = sha256(db)

    store = Store(state, "dock-test-01", limits(), clock)
    try:
        recovery = store.open()
        assert store.boot == 2
        salvaged = store.conn.execute(  # type: ignore[union-attr]
            "SELECT event_id, seq, boot, barcode, raw, delivered_at FROM scans"
        ).fetchall()
    finally:
        store.close()

    # Moved aside, not deleted, not rewritten.
    assert recovery.integrity != "ok"
    assert [Path(recovery.quarantined_to or "")] == quarantined(state)
    aside = quarantined(state)[0]
    assert aside.parent.parent == state / "corrupt"
    assert sha256(aside) == damaged_hash
    assert any("moved aside" in m and str(aside.parent) in m for m in recovery.messages)
    # Readable undelivered rows carried over, unchanged; no delivered row carried.
    by_id = {s.event_id: s for s in stored}
    undelivered = {s.event_id for s in stored} - delivered
    got = {r[0] for r in salvaged}
    assert recovery.salvaged_rows == len(salvaged)
    assert any(f"carried {len(salvaged)} undelivered scans" in m for m in recovery.messages)
    assert got <= undelivered and not got & delivered
    assert len(got) >= 0.8 * len(undelivered), f"only {len(got)} of {len(undelivered)} salvaged"
    for event_id, seq, boot, code, raw, delivered_at in salvaged:
        original = by_id[event_id]
        assert (seq, boot, delivered_at) == (original.seq, 1, None)
        assert raw == code.encode() and code == barcode(int(code[9:]))
    check_fresh_database(state, clock, max(s.seq for s in stored))


@pytest.mark.parametrize("content", ["text", "random"])
def test_file_that_is_not_a_database_is_moved_aside(tmp_path: Path, content: str) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock)
    try:
        old = record(store, clock, range(20))
    finally:
        store.close()
    db = state / DB_NAME
    garbage = b"this is not a database\n" * 2000 if content == "text" else random.Random(7).randbytes(1 << 20)
    db.write_bytes(garbage)
    original_hash = sha256(db)

    started = time.monotonic()
    store = Store(state, "dock-test-01", limits(), clock)
    try:
        recovery = store.open()
        rows = store.conn.execute("SELECT count(*) FROM scans").fetchone()[0]  # type: ignore[union-attr]
    finally:
        store.close()
    took = time.monotonic() - started

    assert "not a database" in recovery.integrity
    assert [Path(recovery.quarantined_to or "")] == quarantined(state)
    assert sha256(quarantined(state)[0]) == original_hash
    assert recovery.salvaged_rows == 0 and rows == 0
    assert any("moved aside" in m for m in recovery.messages)
    assert any("nothing salvaged" in m or "carried 0" in m for m in recovery.messages)
    assert took < 15, f"opening took {took:.1f} s: boot must not stall on an unreadable file"
    check_fresh_database(state, clock, max(s.seq for s in old))


def test_every_quarantined_copy_is_kept_even_with_the_same_timestamp(tmp_path: Path) -> None:
    """Two corruptions within one second (or on a box whose clock is stuck) must not overwrite each other."""
    state, clock = tmp_path / "state", FakeClock()
    hashes = []
    for round_ in range(2):
        store = open_store(state, clock)
        try:
            record(store, clock, range(round_ * 10, round_ * 10 + 10))
        finally:
            store.close()
        (state / DB_NAME).write_bytes(b"garbage %d\n" % round_ * 500)
        hashes.append(sha256(state / DB_NAME))
        store = Store(state, "dock-test-01", limits(), clock)
        try:
            store.open()
        finally:
            store.close()
    assert sorted(sha256(p) for p in quarantined(state)) == sorted(hashes)


def test_clean_open_reports_nothing_to_recover(tmp_path: Path) -> None:
    state, clock = tmp_path / "state", FakeClock()
    store = open_store(state, clock)
    try:
        record(store, clock, range(3))
        assert store.recovery.integrity == "ok"
    finally:
        store.close()
    store = open_store(state, clock)
    try:
        r = store.recovery
        assert (r.integrity, r.quarantined_to, r.salvaged_rows, r.messages) == ("ok", None, 0, [])
    finally:
        store.close()
    assert not (state / "corrupt").exists()

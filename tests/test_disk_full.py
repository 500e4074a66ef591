"""R7, disk full: a small tmpfs (and a loop-mounted ext4) under the state directory is filled up.

Acceptance: no crash, no acknowledged scan lost, bad-read feedback plus a named error and degraded status for
scans that could not be stored, automatic recovery once space returns.

Two ways the disk runs out are covered:

* the floor: free space falls to ``floor_free_mb`` and the store refuses new scans itself (StorageFull);
* SQLITE_FULL itself: with no floor, a filler file takes every last block while scans stream in. SQLite
  reports SQLITE_FULL, the store releases its ballast file, checkpoints, prunes, and refuses the scan with
  StorageFull; the ballast comes back once there is room again.

Each runs in process against the Store (and the loop's Agent.handle for the feedback and the status
problems), and end to end: a real ``dock-agent run`` reading a pty scanner (ACK 0x06 when stored, NAK 0x15
when refused) with ``dock-agent status --json`` checked while full and after recovery.

Needs root for the mounts (conftest.require_root: CI runs as root). Every mount is unmounted in teardown.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.errors import StorageFull
from agent.loop import Agent, Outcome
from agent.settings import StoreSection, load_settings
from agent.status import problems
from agent.store import DB_NAME, ScanInput, Store
from drivers.base import Health, RawScan, Signal
from tests.conftest import (
    BAD,
    EXAMPLE_CONFIG,
    GOOD,
    AgentProcess,
    PtyScanner,
    require_root,
    run_cli,
    which_or_fail,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MB = 1024 * 1024


# -- small file systems ------------------------------------------------------------------------------------


def _unmount(target: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(target):
            return
        if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)  # a process we started may still be closing its files
    subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB tmpfs mounted under tmp_path."""
    require_root()
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        _unmount(mnt)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB ext4 image, loop-mounted under tmp_path (the loop device goes with the unmount)."""
    require_root()
    mkfs = which_or_fail("mkfs.ext4")
    img, mnt = tmp_path / "disk.img", tmp_path / "ext4"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
    subprocess.run([mkfs, "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        _unmount(mnt)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Filler:
    """A file that eats free space: all of it, or all but a given amount, and can keep eating."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def grow(self, nbytes: int, chunk: int = 64 * 1024) -> int:
        """Write up to ``nbytes``; returns how many were written (fewer when the disk is full)."""
        written = 0
        block = b"\xa5" * chunk
        while written < nbytes:
            try:
                n = os.write(self.fd, block[: min(chunk, nbytes - written)])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
            if n <= 0:
                break
            written += n
        return written

    def fill(self) -> None:
        """Take every free block (down to 1 KiB writes, ext4's smallest block)."""
        for chunk in (MB, 64 * 1024, 4096, 1024):
            self.grow(1 << 40, chunk)
        assert free_bytes(self.path.parent) < 64 * 1024

    def fill_leaving(self, leave: int) -> None:
        self.grow(free_bytes(self.path.parent) - leave)
        assert abs(free_bytes(self.path.parent) - leave) < 256 * 1024

    def remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


MakeFiller = Callable[[Path], Filler]


@pytest.fixture
def make_filler() -> Iterator[MakeFiller]:
    made: list[Filler] = []

    def make(path: Path) -> Filler:
        made.append(Filler(path))
        return made[-1]

    yield make
    for f in made:
        f.remove()


# -- in-process helpers ------------------------------------------------------------------------------------


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


def raw_scan(clock: FakeClock, data: bytes) -> RawScan:
    clock.advance(0.01)
    return RawScan("door1", data, clock.monotonic_ns(), clock.wall_ns())


class FakeRunner:
    """Stands in for a ScannerRunner: records the feedback the loop gives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.out: object = None
        self.health = Health(name=name, kind="serial", state="ok")
        self.signals: list[Signal] = []

    def signal(self, kind: Signal) -> None:
        self.signals.append(kind)


def make_agent(store: Store, clock: FakeClock) -> tuple[Agent, FakeRunner]:
    runner = FakeRunner("door1")
    return Agent(store, [runner], clock), runner  # type: ignore[list-item]


def disk_problems(agent: Agent) -> list[str]:
    return [p for p in problems(agent.snapshot()) if p.startswith(("disk", "storage"))]


def stored_rows(db: Path) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return conn.execute("SELECT event_id, seq, barcode FROM scans ORDER BY seq").fetchall()
    finally:
        conn.close()


# -- (a) the floor, in process -----------------------------------------------------------------------------


def test_floor_refuses_scans_with_a_named_error_and_recovers(tmpfs: Path, make_filler: MakeFiller) -> None:
    clock = FakeClock()
    state = tmpfs / "state"
    store = Store(state, "dock-test-01", StoreSection(floor_free_mb=2, warn_free_mb=3, ballast_mb=1), clock)
    store.open()
    acked: list[Outcome] = []
    try:
        assert store.disk.ballast_present and store.disk.level == "ok"
        agent, runner = make_agent(store, clock)
        first = agent.handle(raw_scan(clock, barcode(1).encode()))
        assert (first.signal, first.verdict) == ("good", "unverified") and first.seq is not None
        acked.append(first)
        assert disk_problems(agent) == []

        filler = make_filler(tmpfs / "filler")
        filler.fill_leaving(1 * MB)  # below the 2 MB floor, but the disk itself still has room

        with pytest.raises(StorageFull, match="storage full") as caught:
            store.record_scan(scan_input(clock, 2))
        assert caught.value.code == "storage_full" and "floor is 2" in str(caught.value)
        for n in range(3, 6):
            out = agent.handle(raw_scan(clock, barcode(n).encode()))
            assert (out.verdict, out.signal, out.seq) == ("not_stored", "bad", None)
            assert "storage full" in out.reason
        assert runner.signals == ["good", "bad", "bad", "bad"]
        snap = agent.snapshot()
        storage = snap["storage"]
        assert isinstance(storage, dict)
        assert storage["level"] == "floor" and storage["refused"] == 4
        assert str(storage["last_error"]).startswith("storage_full: storage full")
        assert any(p.startswith("disk full") for p in problems(snap))
        assert agent.status_sentence().startswith("degraded: disk full")
        # An unusable read at the floor is still answered (bad), it just is not kept for diagnosis.
        assert agent.handle(raw_scan(clock, b"not a barcode")).signal == "bad"
        store.maintain()  # periodic upkeep at the floor must not fail either

        filler.remove()
        after = agent.handle(raw_scan(clock, barcode(6).encode()))
        assert after.signal == "good" and after.seq is not None and after.seq > (first.seq or 0)
        acked.append(after)
        assert store.disk.level == "ok" and disk_problems(agent) == []
        assert agent.status_sentence().startswith("ok")
    finally:
        store.close()
    rows = stored_rows(state / DB_NAME)
    assert [(r[0], r[1]) for r in rows] == [(o.event_id, o.seq) for o in acked]


# -- (b) SQLITE_FULL, in process, on tmpfs and on ext4 ----------------------------------------------------


def test_sqlite_full_releases_ballast_loses_no_acked_scan_and_recovers(
    small_fs: Path, make_filler: MakeFiller
) -> None:
    clock = FakeClock()
    state = small_fs / "state"
    limits = StoreSection(floor_free_mb=0, warn_free_mb=0, ballast_mb=1)
    store = Store(state, "dock-test-01", limits, clock)
    store.open()
    acked: list[tuple[str, int, str]] = []
    refusals: list[str] = []
    n = 0
    try:
        assert store.disk.ballast_present and (state / "ballast").stat().st_size >= MB
        filler = make_filler(small_fs / "filler")
        # Scans stream in while the filler takes whatever space there is, including the released ballast.
        # Anything but StorageFull escaping record_scan fails the test.
        for n in range(20_000):
            room = filler.grow(64 * 1024) > 0
            try:
                s = store.record_scan(scan_input(clock, n))
            except StorageFull as e:
                refusals.append(str(e))
            else:
                acked.append((s.event_id, s.seq, barcode(n)))
            if not room and len(refusals) >= 25:
                break
        assert acked and len(refusals) >= 25, (len(acked), len(refusals))
        assert all(r.startswith("storage full") for r in refusals), set(refusals)
        assert any("SQLite could not write" in r and "full" in r for r in refusals), set(refusals)
        assert not (state / "ballast").exists() and not store.disk.ballast_present
        assert store.disk.refused == len(refusals)
        assert store.disk.last_error.startswith("storage full")

        # The loop on the full disk: bad feedback, a named error, degraded status; upkeep does not fail.
        agent, runner = make_agent(store, clock)
        out = agent.handle(raw_scan(clock, barcode(n + 1).encode()))
        assert (out.verdict, out.signal, runner.signals) == ("not_stored", "bad", ["bad"])
        assert "storage full" in out.reason
        assert any(p.startswith("disk full") for p in problems(agent.snapshot()))
        store.maintain()
        assert not (state / "ballast").exists()  # no room for it yet

        # Space returns: the very next scan is stored, and upkeep puts the ballast back.
        filler.remove()
        out = agent.handle(raw_scan(clock, barcode(n + 2).encode()))
        assert out.signal == "good" and out.seq is not None and out.event_id is not None
        acked.append((out.event_id, out.seq, barcode(n + 2)))
        assert disk_problems(agent) == []
        store.maintain()
        assert store.disk.ballast_present and (state / "ballast").stat().st_size >= MB
        for m in range(n + 3, n + 23):
            s = store.record_scan(scan_input(clock, m))
            acked.append((s.event_id, s.seq, barcode(m)))
    finally:
        store.close()

    # Every scan that was acknowledged is there, nothing refused is, the database is sound.
    rows = stored_rows(state / DB_NAME)
    assert rows == acked
    assert all(a[1] < b[1] for a, b in itertools.pairwise(rows))
    store = Store(state, "dock-test-01", limits, clock)
    try:
        recovery = store.open()
        assert recovery.integrity == "ok" and recovery.quarantined_to is None
        assert store.record_scan(scan_input(clock, 99_999)).seq > acked[-1][1]
    finally:
        store.close()


# -- end to end: a real agent on a pty ---------------------------------------------------------------------


def write_config(tmp_path: Path, *, floor_mb: float, warn_mb: float, ballast_mb: float) -> Path:
    """The example site configuration without its scanners, with small [store] limits."""
    text = EXAMPLE_CONFIG.read_text().split("\n[[scanners]]", 1)[0]
    for key, value in (("floor_free_mb", floor_mb), ("warn_free_mb", warn_mb), ("ballast_mb", ballast_mb),
                       ("max_delivered_rows", 1000)):
        text, count = re.subn(rf"(?m)^{key}\s*=\s*[^#\n]*", f"{key} = {value} ", text)
        assert count == 1, key
    path = tmp_path / "site.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.scanners == [] and settings.store.floor_free_mb == floor_mb
    assert not getattr(getattr(settings, "sync", None), "enabled", False)
    return path


def scanner_uri(p: PtyScanner) -> str:
    return f"serial://{p.path}?baud=115200&good=06&bad=15&name=door1"


def status(state: Path) -> dict[str, object]:
    res = run_cli("status", "--json", "--state-dir", str(state))
    body = json.loads(res.stdout)
    assert res.returncode == {"ok": 0, "degraded": 1}[str(body["state"])], res
    return body


def wait_status(
    state: Path, pred: Callable[[dict[str, object]], bool], timeout_s: float = 10.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = status(state)
        if pred(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def disk_full_shown(body: dict[str, object]) -> bool:
    found = body["problems"]
    assert isinstance(found, list)
    return body["state"] == "degraded" and any(str(p).startswith("disk full") for p in found)


def refused(body: dict[str, object]) -> object:
    storage = body.get("storage")
    return storage.get("refused") if isinstance(storage, dict) else None


def healthy(body: dict[str, object]) -> bool:
    return body["state"] == "ok" and body["problems"] == []


def send(p: PtyScanner, code: str) -> bytes:
    p.write(code.encode() + b"\r")
    return p.read_feedback(5.0)


def agent_log(tmp_path: Path) -> str:
    try:
        return (tmp_path / "agent.log").read_text()[-3000:]
    except OSError:
        return ""


def test_agent_over_pty_at_the_floor_naks_shows_degraded_and_recovers(
    tmp_path: Path, tmpfs: Path, pty_scanner: PtyScanner, make_filler: MakeFiller
) -> None:
    state = tmpfs / "state"
    config = write_config(tmp_path, floor_mb=2, warn_mb=3, ballast_mb=1)
    agent = AgentProcess(tmp_path, state, ["--scanner", scanner_uri(pty_scanner)], config=config)
    acked: list[str] = []
    try:
        agent.wait_ready()
        assert send(pty_scanner, barcode(1)) == GOOD
        acked.append(barcode(1))
        assert healthy(wait_status(state, healthy)), agent_log(tmp_path)

        filler = make_filler(tmpfs / "filler")
        filler.fill_leaving(1 * MB)
        for n in range(2, 5):
            assert send(pty_scanner, barcode(n)) == BAD, agent_log(tmp_path)
            assert agent.proc.poll() is None
        # The snapshot is written at most once a second: wait for the one taken after the third refusal.
        body = wait_status(state, lambda b: disk_full_shown(b) and refused(b) == 3)
        assert disk_full_shown(body), body
        storage = body["storage"]
        assert isinstance(storage, dict) and storage["level"] == "floor" and storage["refused"] == 3
        assert "storage full" in str(storage["last_error"])
        assert body["running"] is True

        filler.remove()
        assert send(pty_scanner, barcode(5)) == GOOD, agent_log(tmp_path)
        acked.append(barcode(5))
        body = wait_status(state, healthy)
        assert healthy(body), body
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent_log(tmp_path)
    assert [r[2] for r in stored_rows(state / DB_NAME)] == acked


def test_agent_over_pty_on_sqlite_full_naks_releases_ballast_and_recovers(
    tmp_path: Path, tmpfs: Path, pty_scanner: PtyScanner, make_filler: MakeFiller
) -> None:
    state = tmpfs / "state"
    config = write_config(tmp_path, floor_mb=0, warn_mb=0, ballast_mb=1)
    args = ["--scanner", scanner_uri(pty_scanner)]
    agent = AgentProcess(tmp_path, state, args, config=config)
    acked: list[str] = []
    try:
        agent.wait_ready()
        assert (state / "ballast").exists()
        assert send(pty_scanner, barcode(1)) == GOOD
        acked.append(barcode(1))

        filler = make_filler(tmpfs / "filler")
        filler.fill()
        assert send(pty_scanner, barcode(2)) == BAD, agent_log(tmp_path)
        assert agent.proc.poll() is None
        assert not (state / "ballast").exists()  # released so that the store (and status) can breathe
        body = wait_status(state, disk_full_shown)
        assert disk_full_shown(body), body
        storage = body["storage"]
        assert isinstance(storage, dict) and storage["ballast_present"] is False
        assert "SQLite could not write" in str(storage["last_error"])

        filler.remove()
        assert send(pty_scanner, barcode(3)) == GOOD, agent_log(tmp_path)
        acked.append(barcode(3))
        body = wait_status(state, healthy)
        assert healthy(body), body
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent_log(tmp_path)
    assert [r[2] for r in stored_rows(state / DB_NAME)] == acked

    # The next start finds room again and puts the ballast back.
    agent = AgentProcess(tmp_path, state, args, config=config)
    try:
        agent.wait_ready()
        assert (state / "ballast").stat().st_size >= MB
        assert send(pty_scanner, barcode(4)) == GOOD
        acked.append(barcode(4))
    finally:
        assert agent.stop() == 0, agent_log(tmp_path)
    assert [r[2] for r in stored_rows(state / DB_NAME)] == acked

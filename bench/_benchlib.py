"""Shared pieces of the benchmark scripts: work directories on a real disk, percentiles, a pty scanner,
the real agent as a process with an sd_notify socket, and a bare SQLite writer used as a baseline.

Not a test helper: nothing here asserts a target. It deliberately does not import tests/conftest.py (that
needs pytest). The pty and agent handling follow PtyScanner / AgentProcess / NotifySocket there, with two
differences a benchmark needs: the notify socket is drained continuously (as systemd does), and after
READY=1 the harness also waits until the agent has the serial port open.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import math
import os
import pty
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
EXAMPLE_CONFIG = ROOT / "config" / "site.example.toml"
GOOD, BAD = b"\x06", b"\x15"
SCANNER_NAME = "door1"
MEMORY_FS = {"tmpfs", "ramfs"}


def barcode(n: int) -> str:
    """A valid IMcb (container placard) barcode, unique per ``n``."""
    return f"99M123456{n:012d}"


def agent_exe() -> Path:
    """The console script next to the running interpreter (the venv's ``dock-agent``)."""
    exe = Path(sys.executable).parent / "dock-agent"
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "dock-agent"
    if not exe.exists():
        raise SystemExit(f"dock-agent console script not found next to {sys.executable}; "
                         "run with .venv/bin/python")
    return exe


def script_interpreter(script: Path) -> str:
    """The interpreter named in a console script's shebang (falls back to this one)."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except OSError:
        return sys.executable
    if first.startswith("#!"):
        parts = first[2:].strip().split()
        if parts and Path(parts[0]).exists() and "env" not in Path(parts[0]).name:
            return parts[0]
    return sys.executable


def install_signal_cleanup() -> None:
    """SIGTERM/SIGHUP unwind the stack like Ctrl-C, so every ``finally`` cleans up processes and temp dirs."""

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


# -- file systems and work directories ----------------------------------------------------------------------


def filesystem_of(path: Path) -> dict[str, str]:
    """Mount point, type and source of the file system holding ``path`` (from /proc/self/mountinfo),
    plus what ``stat -f -c %T`` says (it reports ext4 as 'ext2/ext3')."""
    real = os.path.realpath(path)
    best = {"mount": "/", "fstype": "?", "source": "?"}
    best_len = -1
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount = left.split()[4].replace("\\040", " ")
                fstype, source = (right.split() + ["?", "?"])[:2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= best_len:
                    best, best_len = {"mount": mount, "fstype": fstype, "source": source}, len(mount)
    except OSError:
        pass
    try:
        best["stat_f"] = subprocess.run(
            ["stat", "-f", "-c", "%T", real], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        best["stat_f"] = "?"
    return best


def is_memory_fs(fs: dict[str, str]) -> bool:
    return fs["fstype"] in MEMORY_FS or fs.get("stat_f") in MEMORY_FS


def describe_fs(path: Path) -> str:
    fs = filesystem_of(path)
    kind = "disk"
    if is_memory_fs(fs):
        kind = "MEMORY-BACKED (fsync costs nothing: figures are not representative)"
    return (f"{path} on {fs['fstype']} ({kind}), device {fs['source']}, mounted at {fs['mount']}; "
            f"stat -f says {fs['stat_f']}")


def choose_base_dir(explicit: str | None) -> Path:
    """Where temp work directories go: ``explicit`` if given, else /var/tmp, else the repo's bench/, else
    /tmp, skipping any memory-backed file system (tmpfs would make fsync free and the figures meaningless)."""
    if explicit:
        base = Path(explicit).resolve()
        if not base.is_dir():
            raise SystemExit(f"--dir {base}: no such directory")
        if is_memory_fs(filesystem_of(base)):
            print(f"WARNING: --dir {base} is on a memory-backed file system; commit costs will be "
                  "unrealistic", file=sys.stderr)
        return base
    for cand in (Path("/var/tmp"), BENCH, Path(tempfile.gettempdir())):
        if cand.is_dir() and os.access(cand, os.W_OK) and not is_memory_fs(filesystem_of(cand)):
            return cand
    raise SystemExit("no disk-backed writable directory found; pass --dir DIR")


@contextlib.contextmanager
def work_dir(base: Path, prefix: str) -> Iterator[Path]:
    """A fresh temp directory under ``base``, removed afterwards whatever happens."""
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def warm_until_wal_steady(write_one: Callable[[], object], wal: Path, minimum: int, settle: int = 50,
                          cap: int = 20_000) -> int:
    """Write until the WAL file has stopped growing for ``settle`` writes in a row (at least ``minimum``);
    returns the number of writes.

    A fresh WAL grows with every commit until the first auto-checkpoint (1000 pages); after that commits
    overwrite the existing file, and fdatasync no longer has to commit a size change (on ext4 roughly 1.5x
    cheaper). A long-running agent lives in that steady state, so both sides are timed only once there;
    otherwise a baseline writing fewer pages per commit would still be growing its WAL and look slower.
    """
    n, last, same = 0, -1, 0
    while n < cap:
        write_one()
        n += 1
        size = wal.stat().st_size if wal.exists() else 0
        same = same + 1 if size == last else 0
        last = size
        if n >= minimum and same >= settle:
            break
    return n


# -- statistics -------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already-sorted values (p in 0..100)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


PCTS = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("max", 100.0))


def summarize_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    s = sorted(v / 1e6 for v in samples_ns)
    return {name: percentile(s, p) for name, p in PCTS}


def median_of(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def blocks(total: int, size: int) -> list[int]:
    """Split ``total`` into blocks of ``size`` (0 = one block) for interleaving ours and the baseline."""
    size = total if size <= 0 else size
    return [min(size, total - i) for i in range(0, total, size)]


def ratio(ours: float, base: float) -> float:
    return ours / base if base > 0 else math.inf


# -- processes --------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if this benchmark dies without cleaning up (Linux only)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit; only ever the process we started (by its Popen handle)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def vm_status(pid: int) -> dict[str, int]:
    """Vm* lines of /proc/PID/status in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm") or line.startswith("Rss"):
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0])
    return out


# -- pty scanner ------------------------------------------------------------------------------------------


class PtyPort:
    """A raw pseudo-terminal: ``master`` is the scanner's end, ``path`` (a symlink to the slave) the agent's
    end."""

    def __init__(self, directory: Path, name: str = "ttyScanner") -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.path = directory / name
        self.path.symlink_to(os.ttyname(self.slave))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def read_some(self, fd: int, timeout_s: float) -> bytes:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return os.read(fd, 4096) if ready else b""

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket, drained by a thread as systemd would.

    Draining matters: the kernel queues at most net.unix.max_dgram_qlen datagrams (often 10) on an unread
    socket, after which the agent's blocking sd_notify send (WATCHDOG=1 every 0.5 s) stalls its main loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="notify-drain", daemon=True)

    def start(self) -> None:
        """Start draining (call after spawning the agent: no extra thread exists while it forks)."""
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(msg)
                del self.messages[:-1000]
                self._cond.notify_all()

    def seen(self, field: str) -> bool:
        with self._cond:
            return any(field in m.split("\n") for m in self.messages)

    def wait_for(self, field: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not any(field in m.split("\n") for m in self.messages):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"agent exited with status {proc.returncode} before {field}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {field} within {timeout_s} s")
                self._cond.wait(min(0.2, left))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Agent:
    """``dock-agent run`` with one serial scanner on a pty, as a real process; ``start`` waits for READY=1
    and then for the scanner port to be open."""

    def __init__(self, work: Path, extra_env: dict[str, str] | None = None) -> None:
        """Everything (state dir, pty symlink, notify socket, log) lives in ``work``."""
        self.work = work
        self.state = work / "state"
        self.port = PtyPort(work)
        self.notify = NotifySocket(work / "notify.sock")
        self.log_path = work / "agent.log"
        uri = f"serial://{self.port.path}?baud=115200&good=06&bad=15&name={SCANNER_NAME}"
        # The status screen off unless a bench asks for it (a later --http wins): figures must not depend on
        # whether port 8090 happens to be free.
        self.argv = [str(agent_exe()), "run", "--config", str(EXAMPLE_CONFIG), "--state-dir", str(self.state),
                     "--http", "off", "--scanner", uri]
        self.env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="2000000",
                        **(extra_env or {}))
        self.env.pop("RUNTIME_DIRECTORY", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = math.nan
        self.open_s = math.nan

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=self.env, cwd=ROOT, preexec_fn=die_with_parent)
        self.notify.start()
        try:
            self.notify.wait_for("READY=1", timeout_s, self.proc)
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}\n--- agent log tail ---\n{self.log_tail()}") from None
        self.ready_s = time.perf_counter() - t0
        self.open_s = self._wait_scanner_open(t0, timeout_s)

    def _wait_scanner_open(self, t0: float, timeout_s: float) -> float:
        """Wait until the agent has the port open; returns seconds since spawn.

        READY=1 can come before the scanner thread has opened the port, and pyserial flushes the input queue
        when it opens one, so a frame written in that window would be lost. The scanner is open once the
        status snapshot (state dir, as RUNTIME_DIRECTORY is unset) shows it "ok" or the log says it opened.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with status {self.proc.returncode}\n{self.log_tail()}")
            try:
                snap = json.loads((self.state / "status.json").read_text())
                scanners = snap.get("scanners", [])
                if any(s.get("name") == SCANNER_NAME and s.get("state") == "ok" for s in scanners):
                    return time.perf_counter() - t0
            except (OSError, ValueError, AttributeError):
                pass
            try:
                if f"scanner '{SCANNER_NAME}': open" in self.log_path.read_text(errors="replace"):
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"scanner {SCANNER_NAME!r} not open within {timeout_s} s\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def diagnose(self) -> str:
        """Why feedback may be missing: is the agent alive, are bytes still queued for it, where do its
        threads wait."""
        if self.proc is None or self.proc.poll() is not None:
            return f"agent not running (exit status {None if self.proc is None else self.proc.returncode})"
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.port.slave, termios.FIONREAD, b"\0" * 4))[0]
        except OSError:
            queued = -1
        waits = []
        for task in sorted(Path(f"/proc/{self.pid}/task").iterdir()):
            with contextlib.suppress(OSError):
                waits.append(f"{task.name}:{(task / 'wchan').read_text() or 'running'}")
        return f"agent alive; {queued} bytes unread on its port; threads waiting in {', '.join(waits)}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            if self.proc is not None:
                stop_process(self.proc)
        finally:
            self.notify.close()
            self.port.close()


# -- bare SQLite baseline ----------------------------------------------------------------------------------

# The same columns as agent.store.SCAN_COLUMNS (write_path.py checks they still match), without the UNIQUE
# constraints and indexes, i.e. the least a durable row of this shape costs.
BARE_COLUMNS = (
    "event_id", "device_id", "seq", "boot", "scanner", "raw", "barcode", "kind", "symbology", "fields",
    "verdict", "reason", "mode", "scanned_at", "wall_ns", "mono_ns", "clock_synced",
)
BARE_SCHEMA = f"""CREATE TABLE scans (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, device_id TEXT NOT NULL,
    seq INTEGER NOT NULL, boot INTEGER NOT NULL, scanner TEXT NOT NULL, raw BLOB NOT NULL,
    barcode TEXT NOT NULL, kind TEXT NOT NULL, symbology TEXT, fields TEXT NOT NULL DEFAULT '{{}}',
    verdict TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL DEFAULT 'normal',
    scanned_at TEXT NOT NULL, wall_ns INTEGER NOT NULL, mono_ns INTEGER NOT NULL,
    clock_synced INTEGER NOT NULL, delivered_at TEXT)"""
BARE_INSERT = f"INSERT INTO scans ({', '.join(BARE_COLUMNS)}) VALUES ({', '.join('?' * len(BARE_COLUMNS))})"
_REASON = "no reference slice loaded; stored for headquarters to check"


def bare_row(n: int) -> tuple[object, ...]:
    """A row comparable to what the agent stores for ``barcode(n)`` (same columns, similar sizes)."""
    code = barcode(n)
    wall = time.time_ns()
    return (
        str(uuid.uuid4()), "dock-example-01", n, 1, "door1", code.encode(), code, "imcb", None,
        f'{{"mid":"123456","serial":"{n:012d}","mid_length":"6"}}', "unverified", _REASON, "normal",
        time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(wall / 1e9)), wall, time.monotonic_ns(), 0,
    )


def bare_connect(db: Path) -> sqlite3.Connection:
    """The agent's durability settings: autocommit, WAL, synchronous=FULL."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute(BARE_SCHEMA)
    return conn


def bare_commit(conn: sqlite3.Connection, row: tuple[object, ...]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(BARE_INSERT, row)
    conn.execute("COMMIT")

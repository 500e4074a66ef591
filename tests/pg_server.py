"""A throw-away PostgreSQL server for the tests and benchmarks (no pytest here; tests/pg_fixtures.py wraps it).

``initdb`` into a fresh directory under /tmp, then ``postgres`` in the foreground on a Unix socket in that
directory (``listen_addresses=''``: no TCP port to collide with). It never touches a cluster the ``postgresql``
package may have created (``/var/lib/postgresql/*/main``, port 5432) and does not need it running.

As root, PostgreSQL refuses to run: the directory is given to the ``postgres`` user (created by the Debian
package), ``initdb`` runs through ``runuser -u postgres``, and the server is started with that user's ids by
``subprocess`` itself, so the process we hold is the postmaster and we stop it by its own pid. As any other
user, both run as that user.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

# Fast settings for throw-away test data: nothing the tests check depends on fsync.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and postgres ($DOCK_PG_BINDIR overrides)."""
    env = os.environ.get("DOCK_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "postgres").exists() else None
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        m = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/bin$", d)
        if m and os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "postgres", os.X_OK):
            found.append(((int(m.group(1)), int(m.group(2) or 0)), Path(d)))
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name, use_errno=True) if _libc_name else None


def _die_with_parent() -> None:
    """preexec_fn (runs after the uid switch, so it sticks): a fast shutdown if our process dies uncleanly."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


class PostgresServer:
    """One PostgreSQL server in a temp directory; ``url(db)`` for psycopg / ``dock-scorer --db``."""

    def __init__(self, *, settings: dict[str, str] | None = None, parent: str = "/tmp") -> None:
        bindir = find_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                                    "(Debian package 'postgresql'; scripts/setup installs it)")
        self.bindir = bindir
        self.settings = dict(settings if settings is not None else FAST)
        self.root = Path(tempfile.mkdtemp(prefix="dock-pg-", dir=parent))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        try:
            if self.as_root:
                pw = pwd.getpwnam("postgres")  # KeyError: the package did not create its user
                self.uid, self.gid = pw.pw_uid, pw.pw_gid
                os.chown(self.root, self.uid, self.gid)
            self._initdb()
            self.start()
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        cmd = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
               "--no-locale", "--no-sync", "--no-instructions"]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> None:
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.root), "-p", str(self.port),
               "-c", "listen_addresses=", "-c", "max_connections=100"]
        for k, v in self.settings.items():
            cmd += ["-c", f"{k}={v}"]
        ids: dict[str, Any] = {"user": self.uid, "group": self.gid, "extra_groups": []} if self.as_root else {}
        with open(self.log_path, "ab") as log:
            # preexec_fn only calls prctl: nothing that could deadlock in a forked multi-threaded process.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
                start_new_session=True, preexec_fn=_die_with_parent, **ids)  # noqa: PLW1509
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postgres not ready after {timeout_s} s: {self.log_tail()}") from None
                time.sleep(0.05)

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.root}&port={self.port}&user=postgres"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, checkpoint), SIGQUIT if it hangs; then remove everything."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

"""Database fixtures for the scorer tests: a real PostgreSQL server (one per session, a fresh database per use)
and factories handing out a fresh, empty scorer database on either backend.

- ``pg_server``: the session's PostgresServer (tests/pg_server.py).
- ``pg_url_factory`` / ``sqlite_url_factory``: ``make() -> str``, a new database each call, as ``ScorerDB.open``
  and ``dock-scorer --db`` take it (``postgresql:///...`` / a file path). PostgreSQL ones are dropped afterwards.
- ``pg_db_factory`` / ``sqlite_db_factory``: ``make() -> ScorerDB`` opened on a new database (the callers close
  it), the ``db_factory`` of ``tests.scenario_runner.run_scenario``.
- ``db_url_factory``: parametrized over both backends (test ids ``[sqlite]`` and ``[postgresql]``): a test that
  takes it runs once per backend.

Without PostgreSQL the PostgreSQL variants are skipped on a developer machine; under CI=true they fail.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scorer.db import ScorerDB
from tests.pg_server import PostgresServer, find_bindir

BACKENDS = ("sqlite", "postgresql")
_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        msg = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres); "
               "scripts/setup installs the Debian package 'postgresql'")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        msg = "psycopg is not installed; scripts/setup installs the test extra"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def pg_url_factory(pg_server: PostgresServer) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"scorer_{os.getpid()}_{next(_names)}"
        url = pg_server.create_database(name)
        made.append(name)
        return url

    yield make
    for name in made:
        pg_server.drop_database(name)  # WITH (FORCE): also ends connections a test left open


@pytest.fixture
def sqlite_url_factory(tmp_path: Path) -> Callable[[], str]:
    def make() -> str:
        return str(tmp_path / f"scorer-{next(_names)}.db")

    return make


@pytest.fixture
def pg_db_factory(pg_url_factory: Callable[[], str]) -> Callable[[], ScorerDB]:
    return lambda: ScorerDB.open(pg_url_factory())


@pytest.fixture
def sqlite_db_factory(sqlite_url_factory: Callable[[], str]) -> Callable[[], ScorerDB]:
    return lambda: ScorerDB.open(sqlite_url_factory())


@pytest.fixture(params=BACKENDS)
def db_url_factory(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A fresh scorer database (path or URL) on the parametrized backend."""
    name = "pg_url_factory" if request.param == "postgresql" else "sqlite_url_factory"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]

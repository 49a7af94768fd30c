"""Fixtures shared by the suite: one conformance suite, parametrised over every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import kvqueue
from tests.postgres import Cluster, running_cluster
from tests.remote import running_server

#: Every backend the conformance tests run against. A backend cannot opt out of a test.
BACKENDS = ["sqlite", "memory", "postgres", "remote"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL server for the whole run, started from Debian's binaries."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_database(pg_cluster: Cluster) -> str:
    """One database on it; each test gets a schema of its own inside."""
    return pg_cluster.new_database()


@pytest.fixture
def pg_url(pg_cluster: Cluster, pg_database: str) -> str:
    """A fresh, empty PostgreSQL schema for one test."""
    return pg_cluster.new_schema(pg_database)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database several processes open at once: a SQLite file or a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "shared.db")
    pg: str = request.getfixturevalue("pg_url")
    return pg


@pytest.fixture(params=BACKENDS)
def url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Where a test database lives, one per backend. For ``remote``, a server in
    this process (on the test's FakeClock, if it has one), its token in
    ``KVQUEUE_TOKEN``."""
    if request.param == "sqlite":
        yield str(tmp_path / "test.db")
    elif request.param == "postgres":
        yield request.getfixturevalue("pg_url")
    elif request.param == "remote":
        clock = request.getfixturevalue("clock") if "clock" in request.fixturenames else None
        with running_server(tmp_path / "served.db", clock) as server:
            monkeypatch.setenv("KVQUEUE_TOKEN", server.token())
            yield server.url
    else:
        yield ":memory:"


@pytest.fixture
async def adb(url: str) -> AsyncIterator[kvqueue.AsyncDatabase]:
    """An open AsyncDatabase on each backend."""
    database = await kvqueue.open_async(url)
    yield database
    await database.close()


@pytest.fixture
def clock() -> kvqueue.FakeClock:
    """A clock that moves only when the test says so."""
    return kvqueue.FakeClock()


@pytest.fixture
async def fake_adb(url: str, clock: kvqueue.FakeClock) -> AsyncIterator[kvqueue.AsyncDatabase]:
    """An open AsyncDatabase on each backend, running on a FakeClock."""
    database = await kvqueue.open_async(url, clock=clock)
    yield database
    await database.close()


@pytest.fixture
def db(url: str) -> Iterator[kvqueue.Database]:
    """An open sync Database on each backend."""
    database = kvqueue.open(url)
    yield database
    database.close()

"""Fixtures shared by the suite: one conformance suite, parametrised over every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import kvqueue

#: Every backend the conformance tests run against. A backend cannot opt out of a test.
BACKENDS = ["sqlite", "memory"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test database lives, one per backend."""
    if request.param == "sqlite":
        return str(tmp_path / "test.db")
    return ":memory:"


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

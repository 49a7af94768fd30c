"""What the SQLite file itself holds: expired keys are swept out, not only hidden; and
which reads wait for a reader thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import kvqueue
from kvqueue.storage.sqlite import _READER_THREADS, SqliteStorage
from tests.helpers import wait_until


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])


async def test_expired_keys_are_swept_from_the_file(tmp_path: Path) -> None:
    """Once a key's expiry passes, the background sweeper deletes its row from disk."""
    path = tmp_path / "sweep.db"
    clock = kvqueue.FakeClock()
    db = await kvqueue.open_async(str(path), clock=clock)
    await db.set(("temp",), "x", expire_in=5_000)
    await db.set(("kept",), "y")
    assert _rows(path) == 2
    await wait_until(lambda: clock.now_ms() + 5_001 in clock.deadlines())
    clock.advance(5_001)
    await wait_until(lambda: _rows(path) == 1)
    assert (await db.get(("kept",))).value == "y"
    await db.close()


@asynccontextmanager
async def _reader_threads_busy(storage: SqliteStorage) -> AsyncIterator[None]:
    """Every reader thread held by a job that waits until the block ends."""
    release = threading.Event()
    started = [threading.Event() for _ in range(_READER_THREADS)]
    jobs = [storage._pool.submit(lambda e=e: (e.set(), release.wait())) for e in started]
    try:
        await wait_until(lambda: all(e.is_set() for e in started))
        yield
    finally:
        release.set()
        await asyncio.gather(*(asyncio.wrap_future(j) for j in jobs))


async def test_point_reads_do_not_wait_for_a_reader_thread(tmp_path: Path) -> None:
    """A queue's record and metrics, a key or a few, and a send's metrics are read on
    the event loop's thread: with every reader thread busy (say, with a long browse)
    they still answer; a page of messages waits its turn on a reader thread."""
    db = await kvqueue.open_async(str(tmp_path / "reads.db"))
    try:
        await db.queues.create("orders")
        await db.set(("a",), 1)
        storage = db.storage
        assert isinstance(storage, SqliteStorage)

        async def point_reads() -> None:
            sent = await db.queue("orders").send({"n": 1})
            assert sent.metrics.backlog_count == 1
            assert (await db.queues.metrics("orders")).backlog_count == 1
            assert (await db.queues.get("orders")).name == "orders"
            assert (await db.get(("a",))).value == 1
            assert [e.value for e in await db.get_many([("a",), ("b",)])] == [1, None]

        async with _reader_threads_busy(storage):
            # The bound only keeps a regression from hanging the suite.
            await asyncio.wait_for(point_reads(), 10)
            page = asyncio.create_task(db.queues.peek("orders", 100))
            done, _ = await asyncio.wait({page}, timeout=0.2)
            assert not done, "a page of 100 messages was read without a reader thread"
        assert [m.body for m in await page] == [{"n": 1}]
    finally:
        await db.close()


async def test_a_write_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    """While another process holds the file's write lock, a write waits for it (it
    does not fail as "database is locked") and lands once the lock is let go."""
    path = tmp_path / "locked.db"
    db = await kvqueue.open_async(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(db.set(("k",), "v"))
        done, _ = await asyncio.wait({write}, timeout=0.3)
        assert not done, "the write went ahead while another connection held the lock"
        other.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        assert (await db.get(("k",))).value == "v"
    finally:
        other.close()
        await db.close()


def _commit_modes(trace: list[str]) -> list[tuple[str, str]]:
    """Each commit in a trace of the writer's statements: the synchronous setting it
    ran under, and the statements of its transaction."""
    mode, statements, commits = "FULL", [], []
    for statement in trace:
        if statement.startswith("PRAGMA synchronous = "):
            mode = statement.rsplit(" ", 1)[1]
        elif statement == "COMMIT":
            commits.append((mode, " ".join(statements)))
            statements = []
        else:
            statements.append(statement)
    return commits


async def _writer_trace(db: kvqueue.AsyncDatabase) -> list[str]:
    """The SQLite writer's statements from now on, traced once the expiry sweeper
    (woken by the first write) has looked and sleeps: no write of its own shares a
    transaction with the test's."""
    await wait_until(lambda: not db._sweeper_idle)
    storage = db.storage
    assert isinstance(storage, SqliteStorage)
    assert storage._writer is not None
    trace: list[str] = []
    storage._writer._conn.set_trace_callback(trace.append)
    return trace


async def test_only_a_lease_commits_without_the_sync(tmp_path: Path) -> None:
    """A lease's transaction commits with synchronous=NORMAL (no fsync; lost to a power
    cut it means a delivery again), and the writer is back at FULL for what comes
    next: a send and an ack commit synced."""
    clock = kvqueue.FakeClock()
    db = await kvqueue.open_async(str(tmp_path / "sync.db"), clock=clock)
    try:
        await db.queues.create("orders")
        queue = db.queue("orders")
        await queue.send({"n": 1})
        trace = await _writer_trace(db)

        pulled = await queue.pull(batch_size=10, visibility_timeout_ms=30_000)
        await queue.ack([m.lease_id for m in pulled.messages])
        await queue.send({"n": 2})

        assert len(pulled.messages) == 1
        commits = _commit_modes(trace)
        assert [mode for mode, _ in commits] == ["NORMAL", "FULL", "FULL"], commits
        lease, ack, send = (statements for _, statements in commits)
        assert "SET attempts = attempts + 1" in lease
        assert "DELETE FROM messages" in ack
        assert "INSERT INTO messages" in send
    finally:
        await db.close()


async def test_concurrent_sends_read_their_metrics_in_their_own_transaction(
    tmp_path: Path,
) -> None:
    """Sends committed together get their queue's metrics from one read inside their
    transaction, before its COMMIT: no read of their own after it."""
    db = await kvqueue.open_async(str(tmp_path / "metrics.db"))
    try:
        await db.queues.create("orders")
        queue = db.queue("orders")
        await queue.send("warm-up")
        trace = await _writer_trace(db)
        storage = db.storage
        assert isinstance(storage, SqliteStorage)
        readers = list(storage._readers)

        results = await asyncio.gather(*(queue.send(i) for i in range(40)))

        assert max(r.metrics.backlog_count for r in results) == 41
        commits = [statements for _, statements in _commit_modes(trace)]
        sends = [c for c in commits if "INSERT INTO messages" in c]
        assert sends
        for statements in sends:
            assert statements.count("SELECT retried, dead_lettered FROM queues") == 1, statements
            assert statements.index("INSERT INTO messages") < statements.index("SELECT retried")
        assert storage._readers == readers
    finally:
        await db.close()

"""The PostgreSQL backend: one database that many processes on many machines share.

How it stays correct with many writers:

* Every committing transaction first bumps the one ``kvqueue_meta`` row. Its
  row lock orders all commits of every process, so versionstamps rise in
  commit order, and the writes in between never deadlock with each other.
* Each process has one writer task. Callers' commits queue up for it; it takes
  everything waiting, applies each in its own savepoint (so one failed write
  cannot spoil another) and commits them together: one WAL flush and one trip
  through the version lock for many callers (group commit).
* Leasing runs beside the writer on pooled connections with
  ``FOR UPDATE SKIP LOCKED``, so consumers in different processes never take
  one message twice and never wait for each other. A consumer bounded by
  ``max_leases`` takes a per-queue advisory lock, so the bound holds across
  every process.
* A commit that changed something sends ``NOTIFY``; every process LISTENs on
  a connection of its own and wakes its waiters within a millisecond.
* Times come from the database server's clock (:class:`ServerClock`), so
  machines whose clocks disagree still agree on lease deadlines and delays.
* A lost connection is replaced. Work that had not reached COMMIT is retried
  once on a fresh connection; a COMMIT whose answer was lost is reported as a
  StorageError, since only the database knows whether it landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from kvqueue import errors, model, values
from kvqueue.clock import Clock, SystemClock
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.storage.common import (
    QUEUE_COLUMNS,
    CheckFailed,
    Signal,
    check_schema_version,
    migration_scripts,
    queue_record,
    settings_row,
    version_of,
    versionstamp,
    wait_for_queue,
)

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]

logger = logging.getLogger("kvqueue.postgres")

# Most callers' writes folded into one transaction.
_MAX_GROUP = 512
_POOL_SIZE = 8
# How long a caller waits for a connection (PostgreSQL restarting, say).
_CONNECT_TIMEOUT_S = 30.0
# Re-measure the offset to the server's clock this often.
_CLOCK_SYNC_S = 60.0
# Back-off between attempts to get the LISTEN connection back.
_LISTEN_RETRY_S = (0.05, 0.2, 1.0)

# --- SQL ----------------------------------------------------------------------
SQL_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS kvqueue_schema (version integer NOT NULL);
"""
SQL_MIGRATION_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('kvqueue-migrate:' || current_schema(), 0))"
)
SQL_SERVER_NOW = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
SQL_META_BUMP = "UPDATE kvqueue_meta SET version = version + %s WHERE id = 0 RETURNING version"
SQL_KV_LIVE_VERSIONS = """
SELECT key, version FROM kvqueue_kv
WHERE key = ANY(%s) AND (expires_at IS NULL OR expires_at > %s)
"""
SQL_KV_LIVE_VALUE = """
SELECT value, encoding FROM kvqueue_kv
WHERE key = %s AND (expires_at IS NULL OR expires_at > %s)
"""
SQL_KV_SET = """
INSERT INTO kvqueue_kv (key, value, encoding, version, expires_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, encoding = excluded.encoding,
  version = excluded.version, expires_at = excluded.expires_at
"""
SQL_KV_DELETE = "DELETE FROM kvqueue_kv WHERE key = %s"
SQL_KV_RANGE = """
SELECT key, value, encoding, version FROM kvqueue_kv
WHERE key >= %s AND key < %s AND (expires_at IS NULL OR expires_at > %s)
ORDER BY key LIMIT %s
"""
SQL_KV_RANGE_REVERSE = """
SELECT key, value, encoding, version FROM kvqueue_kv
WHERE key >= %s AND key < %s AND (expires_at IS NULL OR expires_at > %s)
ORDER BY key DESC LIMIT %s
"""
SQL_KV_PURGE_EXPIRED = "DELETE FROM kvqueue_kv WHERE expires_at IS NOT NULL AND expires_at <= %s"
SQL_KV_NEXT_EXPIRY = "SELECT min(expires_at) FROM kvqueue_kv WHERE expires_at IS NOT NULL"
SQL_MESSAGES_INSERT = """
INSERT INTO kvqueue_messages (queue, id, body, content_type, enqueued_at, visible_at, attributes)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::bigint[],
                     %s::bigint[], %s::bytea[])
"""
SQL_QUEUES_LIMITS = """
SELECT name, delivery_delay, max_backlog, max_backlog_bytes FROM kvqueue_queues
WHERE name = ANY(%s)
"""
SQL_QUEUES_BACKLOG = "SELECT queue, count, bytes FROM kvqueue_backlog WHERE queue = ANY(%s)"
SQL_LEASE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
SQL_LEASES_HELD = """
SELECT count(DISTINCT lease) FROM kvqueue_messages
WHERE queue = %s AND lease IS NOT NULL AND lease <> %s AND visible_at > %s
"""
SQL_MESSAGE_LEASE = """
UPDATE kvqueue_messages AS m SET attempts = m.attempts + 1, lease = %s, visible_at = %s
FROM (
  SELECT seq FROM kvqueue_messages WHERE queue = %s AND visible_at <= %s
  ORDER BY visible_at, seq LIMIT %s FOR UPDATE SKIP LOCKED
) AS taken
WHERE m.seq = taken.seq
RETURNING m.seq, m.id, m.body, m.content_type, m.enqueued_at, m.attempts, m.attributes
"""
SQL_MESSAGES_EXTEND = """
UPDATE kvqueue_messages AS m SET visible_at = %s
FROM unnest(%s::text[], %s::text[]) AS held(id, lease)
WHERE m.id = held.id AND m.lease = held.lease
RETURNING m.id
"""
# FOR SHARE: a lease checked here cannot be taken by another consumer before we commit.
SQL_LEASES_CHECK = """
SELECT count(*) FROM (
  SELECT 1 FROM kvqueue_messages AS m
  JOIN unnest(%s::text[], %s::text[]) AS held(id, lease)
    ON m.id = held.id AND m.lease = held.lease
  FOR SHARE OF m
) AS found
"""
SQL_MESSAGES_ACK = "DELETE FROM kvqueue_messages WHERE queue = %s AND id = ANY(%s) RETURNING id"
SQL_MESSAGE_RETRY = """
UPDATE kvqueue_messages SET visible_at = %s, lease = NULL
WHERE id = %s AND lease = %s AND queue = %s
"""
SQL_MESSAGE_MOVE = """
UPDATE kvqueue_messages SET queue = %s, attempts = 0, lease = NULL, visible_at = %s,
  attributes = NULL
WHERE id = %s AND lease = %s AND queue = %s
"""
SQL_MESSAGE_DROP = "DELETE FROM kvqueue_messages WHERE id = %s AND lease = %s AND queue = %s"
SQL_MESSAGE_NEXT_VISIBLE = """
SELECT min(visible_at) FROM kvqueue_messages WHERE queue = %s AND visible_at > %s
"""
SQL_MESSAGE_PEEK = """
SELECT id, body, content_type, enqueued_at, attempts, attributes FROM kvqueue_messages
WHERE queue = %s ORDER BY visible_at, seq LIMIT %s
"""
SQL_MESSAGE_OLDEST = "SELECT min(enqueued_at) FROM kvqueue_messages WHERE queue = %s"
SQL_MESSAGE_IN_FLIGHT = """
SELECT count(*) FROM kvqueue_messages
WHERE queue = %s AND lease IS NOT NULL AND visible_at > %s
"""
SQL_MESSAGES_EXPIRED = "DELETE FROM kvqueue_messages WHERE queue = %s AND enqueued_at <= %s"
SQL_QUEUE_GET = f"SELECT {QUEUE_COLUMNS} FROM kvqueue_queues WHERE name = ANY(%s) ORDER BY name"
SQL_QUEUE_ALL = f"SELECT {QUEUE_COLUMNS} FROM kvqueue_queues ORDER BY name"
SQL_QUEUE_EXISTS = "SELECT 1 FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_RETAINED = "SELECT name, retention FROM kvqueue_queues WHERE retention IS NOT NULL"
SQL_QUEUE_INSERT = """
INSERT INTO kvqueue_queues (name, id, created_at, modified_at, delivery_delay, retention,
  paused, max_backlog, max_backlog_bytes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING
"""
SQL_QUEUE_UPDATE = """
UPDATE kvqueue_queues SET modified_at = %s, delivery_delay = %s, retention = %s, paused = %s,
  max_backlog = %s, max_backlog_bytes = %s
WHERE name = %s
"""
SQL_QUEUE_SETTINGS = """
SELECT delivery_delay, retention, paused, max_backlog, max_backlog_bytes FROM kvqueue_queues
WHERE name = %s FOR UPDATE
"""
SQL_QUEUE_CONSUMER = "SELECT consumer FROM kvqueue_queues WHERE name = %s FOR UPDATE"
SQL_QUEUE_SET_CONSUMER = """
UPDATE kvqueue_queues SET consumer = %s, modified_at = %s WHERE name = %s
"""
SQL_QUEUE_DELETE = "DELETE FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_PURGE = "DELETE FROM kvqueue_messages WHERE queue = %s"
SQL_BACKLOG_DELETE = "DELETE FROM kvqueue_backlog WHERE queue = %s"
SQL_QUEUE_RETRIED = "UPDATE kvqueue_queues SET retried = retried + 1 WHERE name = %s"
SQL_QUEUE_DEAD_LETTERED = """
UPDATE kvqueue_queues SET dead_lettered = dead_lettered + 1 WHERE name = %s
"""
SQL_QUEUE_COUNTERS = "SELECT retried, dead_lettered FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_BACKLOG = "SELECT count, bytes FROM kvqueue_backlog WHERE queue = %s"


class ServerClock:
    """The database server's clock, read without a round trip.

    The local clock plus an offset measured against the server (the sample
    with the shortest round trip wins), so every machine sharing the database
    agrees on lease deadlines and delays to within a millisecond or so, however
    far their own clocks drift.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self._base = base or SystemClock()
        self.offset_ms = 0

    def now_ms(self) -> int:
        """The server's time in milliseconds since the epoch, as far as we know it."""
        return self._base.now_ms() + self.offset_ms

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await self._base.sleep(seconds)

    async def sync(self, conn: Connection, samples: int = 5) -> None:
        """Measure the offset to the server's clock on ``conn``."""
        best: tuple[float, int] | None = None
        for _ in range(samples):
            started = time.perf_counter()
            before = self._base.now_ms()
            row = await (await conn.execute(SQL_SERVER_NOW)).fetchone()
            after = self._base.now_ms()
            rtt = time.perf_counter() - started
            assert row is not None
            offset = int(row[0]) - (before + after) // 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        assert best is not None
        self.offset_ms = best[1]


async def migrate(conn: Connection) -> tuple[int, int]:
    """Bring the schema that ``conn``'s search_path points at up to date.

    Safe when many processes start at once: an advisory lock makes one of them
    migrate while the others wait, then see its work. Each script runs in the
    same transaction as the version bump, so a failed migration leaves nothing.
    Returns the schema version before and after.
    """
    scripts = migration_scripts("kvqueue.storage.sql.postgres")
    async with conn.transaction():
        await conn.execute(SQL_MIGRATION_LOCK)
        await conn.execute(SQL_SCHEMA_TABLE)
        row = await (await conn.execute("SELECT max(version) FROM kvqueue_schema")).fetchone()
        current = 0 if row is None or row[0] is None else int(row[0])
        check_schema_version(current, len(scripts), "this PostgreSQL schema")
        for number, script in enumerate(scripts, start=1):
            if number > current:
                await conn.execute(script.encode())
        if len(scripts) > current:
            await conn.execute("DELETE FROM kvqueue_schema")
            await conn.execute("INSERT INTO kvqueue_schema (version) VALUES (%s)", (len(scripts),))
    return current, max(current, len(scripts))


@dataclass(slots=True)
class _Txn:
    conn: Connection
    now: int
    version: int
    changed: bool = False


_Op = Callable[[_Txn], Awaitable[Any]]
_Pending = tuple[_Op, "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _storage_error(message: str, exc: BaseException) -> errors.StorageError:
    error = errors.StorageError(f"{message}: {exc}")
    error.__cause__ = exc
    return error


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, errors.KvQueueError):
        return exc
    if isinstance(exc, psycopg.Error):
        return _storage_error("PostgreSQL refused the write", exc)
    return exc


class PostgresStorage:
    """A database in one PostgreSQL schema (see the module docstring for how it writes)."""

    clock: Clock

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        """Prefer :meth:`open`, which connects and creates the schema."""
        self.url = url
        self.clock = clock if clock is not None else ServerClock()
        #: The schema version before and after :meth:`open` migrated it.
        self.schema_versions = (0, 0)
        self._closed = False
        self._signal = Signal()
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=_POOL_SIZE,
            kwargs={"autocommit": True},
            timeout=_CONNECT_TIMEOUT_S,
            open=False,
            name="kvqueue",
        )
        self._channel = "kvqueue"
        # Sent with our NOTIFYs so the listener can skip them: the writer has
        # already woken this process's waiters.
        self._origin = secrets.token_hex(8)
        self._pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, url: str, *, clock: Clock | None = None) -> PostgresStorage:
        """Connect to ``url``, migrating its schema if needed."""
        storage = cls(url, clock=clock)
        try:
            await storage._start()
        except BaseException:
            await storage.close()
            raise
        return storage

    async def _start(self) -> None:
        # One plain connection first: a wrong address fails at once instead of
        # after the pool's patient retries.
        try:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                self.schema_versions = await migrate(conn)
                row = await (await conn.execute("SELECT current_schema()")).fetchone()
                if isinstance(self.clock, ServerClock):
                    await self.clock.sync(conn)
            await self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S)
        except (psycopg.Error, PoolTimeout) as exc:
            raise _storage_error(f"cannot open {_shown(self.url)}", exc) from exc
        schema = str(row[0]) if row else "public"
        # A channel per schema: databases in other schemas do not wake us.
        self._channel = "kvqueue:" + hashlib.sha1(schema.encode()).hexdigest()[:16]
        listening = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="kvqueue-writer"),
            asyncio.create_task(self._listen_loop(listening), name="kvqueue-listener"),
        ]
        # Wake-ups must work once open returns: wait for the first LISTEN.
        await listening

    # --- plumbing -----------------------------------------------------------------

    async def _run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; once more on a fresh one if it broke."""
        if self._closed:
            raise errors.DatabaseClosed()
        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn:
                    try:
                        return await fn(conn)
                    except psycopg.Error:
                        if not conn.broken or attempt == 2:
                            raise
            except PoolTimeout as exc:
                raise _storage_error("no connection to PostgreSQL", exc) from exc
            except psycopg.Error as exc:
                raise _storage_error("PostgreSQL failed", exc) from exc
            # After a server restart every idle connection is dead: drop them all.
            await self._pool.check()
        raise AssertionError("unreachable")

    def _write(self, op: _Op) -> asyncio.Future[Any]:
        if self._closed:
            raise errors.DatabaseClosed()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((op, future))
        return future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._pending.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_GROUP and not self._pending.empty():
                item = self._pending.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            outcomes, changed = await self._commit_group(batch)
            for future, result, error in outcomes:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            if changed:
                self._signal.fire()

    async def _commit_group(self, batch: list[_Pending]) -> tuple[list[_Outcome], bool]:
        """Commit a group; returns each caller's outcome and whether anything changed."""

        def failed(error: BaseException) -> tuple[list[_Outcome], bool]:
            return [(future, None, error) for _, future in batch], False

        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn:
                    try:
                        return await self._apply(conn, batch)
                    except psycopg.Error:
                        if not conn.broken or attempt == 2:
                            raise
            except _Committing as exc:
                return failed(
                    _storage_error(
                        "the connection was lost during COMMIT, so the write may or may "
                        "not have landed",
                        exc.cause,
                    )
                )
            except PoolTimeout as exc:
                return failed(_storage_error("no connection to PostgreSQL", exc))
            except psycopg.Error as exc:
                return failed(_storage_error("the write failed and was rolled back", exc))
            # The connection broke before COMMIT, so nothing landed: try a fresh one.
            await self._pool.check()
        raise AssertionError("unreachable")

    async def _apply(self, conn: Connection, batch: list[_Pending]) -> tuple[list[_Outcome], bool]:
        outcomes: list[_Outcome] = []
        await conn.execute("BEGIN")
        try:
            row = await (await conn.execute(SQL_META_BUMP, (len(batch),))).fetchone()
            assert row is not None
            txn = _Txn(conn, self.clock.now_ms(), int(row[0]) - len(batch))
            alone = len(batch) == 1
            for op, future in batch:
                if not alone:
                    await conn.execute("SAVEPOINT op")
                try:
                    result = await op(txn)
                except Exception as exc:
                    if conn.broken:
                        raise
                    error = None if isinstance(exc, CheckFailed) else _translate(exc)
                    if alone:
                        await conn.execute("ROLLBACK")
                        return [(future, None, error)], False
                    await conn.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append((future, None, error))
                else:
                    if not alone:
                        await conn.execute("RELEASE SAVEPOINT op")
                    outcomes.append((future, result, None))
            if txn.changed:
                await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, self._origin))
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise
        try:
            await conn.execute("COMMIT")
        except psycopg.Error as exc:
            if conn.broken:
                raise _Committing(exc) from exc
            raise
        return outcomes, txn.changed

    async def _listen_loop(self, listening: asyncio.Future[None]) -> None:
        failures = 0
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                try:
                    listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                    await conn.execute(listen)
                    if not listening.done():
                        listening.set_result(None)
                    # Anything committed while we were not listening: look again.
                    self._signal.fire()
                    failures = 0
                    while True:
                        async for notice in conn.notifies(timeout=_CLOCK_SYNC_S):
                            if notice.payload != self._origin:
                                self._signal.fire()
                        if isinstance(self.clock, ServerClock):
                            await self.clock.sync(conn)
                finally:
                    await conn.close()
            except psycopg.Error as exc:
                if not listening.done():
                    listening.set_exception(_storage_error("cannot LISTEN", exc))
                    return
                logger.warning("lost the PostgreSQL LISTEN connection (%s); reconnecting", exc)
                await asyncio.sleep(_LISTEN_RETRY_S[min(failures, len(_LISTEN_RETRY_S) - 1)])
                failures += 1

    # --- Storage ------------------------------------------------------------------

    async def read(self, ranges: Sequence[model.ReadRange]) -> list[list[model.StoredEntry]]:
        """See :meth:`kvqueue.storage.base.Storage.read`."""
        now = self.clock.now_ms()

        async def run(conn: Connection) -> list[list[model.StoredEntry]]:
            out: list[list[model.StoredEntry]] = []
            snapshot = len(ranges) > 1
            if snapshot:
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                for r in ranges:
                    sql = SQL_KV_RANGE_REVERSE if r.reverse else SQL_KV_RANGE
                    cursor = await conn.execute(sql, (r.start, r.end, now, r.limit))
                    out.append(
                        [
                            model.StoredEntry(k, v, ValueEncoding(e), versionstamp(ver))
                            for k, v, e, ver in await cursor.fetchall()
                        ]
                    )
            finally:
                if snapshot and not conn.broken:
                    await conn.execute("COMMIT")
            return out

        return await self._run(run)

    async def commit(self, write: model.AtomicWrite) -> model.Committed | None:
        """See :meth:`kvqueue.storage.base.Storage.commit`."""
        result: model.Committed | None = await self._write(lambda txn: _apply_write(txn, write))
        return result

    async def lease(
        self,
        queue: str,
        *,
        lease: str,
        limit: int,
        lease_ms: int,
        max_leases: int | None = None,
    ) -> list[model.LeasedMessage]:
        """See :meth:`kvqueue.storage.base.Storage.lease`."""

        async def take(conn: Connection) -> list[Any]:
            now = self.clock.now_ms()
            cursor = await conn.execute(
                SQL_MESSAGE_LEASE, (lease, now + lease_ms, queue, now, limit)
            )
            return await cursor.fetchall()

        async def run(conn: Connection) -> list[Any]:
            if max_leases is None:
                return await take(conn)
            async with conn.transaction():
                # Counting leases and taking one must not interleave with
                # another process doing the same, or both would see room.
                await conn.execute(SQL_LEASE_LOCK, (f"{self._channel}:{queue}",))
                now = self.clock.now_ms()
                cursor = await conn.execute(SQL_LEASES_HELD, (queue, lease, now))
                row = await cursor.fetchone()
                if row is not None and row[0] >= max_leases:
                    return []
                return await take(conn)

        rows = await self._run(run)
        rows.sort(key=lambda row: row[0])
        return [
            model.LeasedMessage(queue, mid, body, ctype, enq, attempts, lease, attrs)
            for _, mid, body, ctype, enq, attempts, attrs in rows
        ]

    async def extend(self, leases: Sequence[model.LeaseCheck], *, lease_ms: int) -> set[str]:
        """See :meth:`kvqueue.storage.base.Storage.extend`."""

        async def op(txn: _Txn) -> set[str]:
            ids = [lease.message_id for lease in leases]
            names = [lease.lease for lease in leases]
            cursor = await txn.conn.execute(SQL_MESSAGES_EXTEND, (txn.now + lease_ms, ids, names))
            return {row[0] for row in await cursor.fetchall()}

        extended: set[str] = await self._write(op)
        return extended

    async def queues(self, names: Sequence[str] | None = None) -> list[model.QueueRecord]:
        """See :meth:`kvqueue.storage.base.Storage.queues`."""

        async def run(conn: Connection) -> list[model.QueueRecord]:
            if names is None:
                cursor = await conn.execute(SQL_QUEUE_ALL)
            else:
                cursor = await conn.execute(SQL_QUEUE_GET, (list(names),))
            found = {row[0]: queue_record(row) for row in await cursor.fetchall()}
            if names is None:
                return list(found.values())
            return [found[name] for name in names if name in found]

        return await self._run(run)

    async def stats(self, queue: str) -> model.QueueStats:
        """See :meth:`kvqueue.storage.base.Storage.stats`."""
        now = self.clock.now_ms()

        async def run(conn: Connection) -> model.QueueStats:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                counters = await (await conn.execute(SQL_QUEUE_COUNTERS, (queue,))).fetchone()
                if counters is None:
                    raise errors.QueueNotFound(queue)
                backlog = await (await conn.execute(SQL_QUEUE_BACKLOG, (queue,))).fetchone()
                oldest = await (await conn.execute(SQL_MESSAGE_OLDEST, (queue,))).fetchone()
                in_flight = await (
                    await conn.execute(SQL_MESSAGE_IN_FLIGHT, (queue, now))
                ).fetchone()
            finally:
                if not conn.broken:
                    await conn.execute("COMMIT")
            count, size = backlog or (0, 0)
            assert oldest is not None
            assert in_flight is not None
            return model.QueueStats(count, size, oldest[0], in_flight[0], *counters)

        return await self._run(run)

    async def peek(self, queue: str, *, limit: int) -> list[model.StoredMessage]:
        """See :meth:`kvqueue.storage.base.Storage.peek`."""

        async def run(conn: Connection) -> list[model.StoredMessage]:
            cursor = await conn.execute(SQL_MESSAGE_PEEK, (queue, limit))
            return [model.StoredMessage(queue, *row) for row in await cursor.fetchall()]

        return await self._run(run)

    @property
    def changes(self) -> int:
        """See :attr:`kvqueue.storage.base.Storage.changes`."""
        return self._signal.fired

    async def wait(
        self,
        queue: str | None,
        *,
        timeout_ms: int,
        after_ms: int | None = None,
        since: int | None = None,
    ) -> None:
        """See :meth:`kvqueue.storage.base.Storage.wait`."""
        next_visible = None
        if queue is not None:

            async def next_visible(since: int) -> int | None:
                async def run(conn: Connection) -> int | None:
                    cursor = await conn.execute(SQL_MESSAGE_NEXT_VISIBLE, (queue, since))
                    row = await cursor.fetchone()
                    return None if row is None else row[0]

                return await self._run(run)

        await wait_for_queue(
            self._signal,
            self.clock,
            next_visible,
            timeout_ms=timeout_ms,
            after_ms=after_ms,
            since=since,
        )

    async def purge_expired(self) -> int | None:
        """See :meth:`kvqueue.storage.base.Storage.purge_expired`."""

        async def op(txn: _Txn) -> int | None:
            conn, now = txn.conn, txn.now
            if (await conn.execute(SQL_KV_PURGE_EXPIRED, (now,))).rowcount:
                txn.changed = True
            due = [await _scalar(conn, SQL_KV_NEXT_EXPIRY)]
            for name, retention in await (await conn.execute(SQL_QUEUE_RETAINED)).fetchall():
                if (await conn.execute(SQL_MESSAGES_EXPIRED, (name, now - retention))).rowcount:
                    txn.changed = True
                oldest = await _scalar(conn, SQL_MESSAGE_OLDEST, (name,))
                due.append(None if oldest is None else oldest + retention)
            known = [d for d in due if d is not None]
            return max(0, min(known) - now) if known else None

        remaining: int | None = await self._write(op)
        return remaining

    async def close(self) -> None:
        """See :meth:`kvqueue.storage.base.Storage.close`."""
        if self._closed:
            return
        self._closed = True
        writer = self._tasks[0] if self._tasks else None
        if writer is not None:
            self._pending.put_nowait(None)
            await writer
        for task in self._tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._pool.close()
        self._signal.fire()


class _Committing(Exception):
    """COMMIT failed: whether the transaction landed is unknown."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _shown(url: str) -> str:
    """A URL fit for an error message: no password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL database"
    return f"PostgreSQL database {info.get('dbname', '?')!r} on {info.get('host', 'localhost')}"


async def _scalar(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    row = await (await conn.execute(sql, params)).fetchone()
    return None if row is None else row[0]


async def _apply_write(txn: _Txn, write: model.AtomicWrite) -> model.Committed:
    conn, now = txn.conn, txn.now
    if write.checks:
        cursor = await conn.execute(SQL_KV_LIVE_VERSIONS, ([c.key for c in write.checks], now))
        live = {bytes(key): version for key, version in await cursor.fetchall()}
        for check in write.checks:
            if check.versionstamp is None:
                passed = check.key not in live
            else:
                passed = live.get(check.key) == version_of(check.versionstamp)
            if not passed:
                raise CheckFailed
    if write.lease_checks:
        ids = [lease.message_id for lease in write.lease_checks]
        names = [lease.lease for lease in write.lease_checks]
        if await _scalar(conn, SQL_LEASES_CHECK, (ids, names)) != len(ids):
            raise CheckFailed
    txn.version += 1
    txn.changed = True
    version = txn.version
    for change in write.queue_changes:
        await _apply_queue_change(txn, change)
    for m in write.mutations:
        if m.kind is MutationKind.SET:
            expires = None if m.expire_in_ms is None else now + m.expire_in_ms
            await conn.execute(SQL_KV_SET, (m.key, m.value, int(m.encoding), version, expires))
        elif m.kind is MutationKind.DELETE:
            await conn.execute(SQL_KV_DELETE, (m.key,))
        else:
            row = await (await conn.execute(SQL_KV_LIVE_VALUE, (m.key, now))).fetchone()
            current = None if row is None else (bytes(row[0]), row[1])
            combined = values.combine_u64(m.kind, current, m.value)
            # Like Deno, arithmetic clears an expiry set earlier.
            await conn.execute(
                SQL_KV_SET, (m.key, combined, int(ValueEncoding.LE64), version, None)
            )
    if write.enqueues:
        await _apply_enqueues(txn, write.enqueues)
    settled = await _apply_settlements(txn, write.settlements)
    return model.Committed(versionstamp(version), settled)


async def _apply_enqueues(txn: _Txn, enqueues: Sequence[model.Enqueue]) -> None:
    conn, now = txn.conn, txn.now
    names = list(dict.fromkeys(e.queue for e in enqueues))
    cursor = await conn.execute(SQL_QUEUES_LIMITS, (names,))
    limits = {row[0]: row[1:] for row in await cursor.fetchall()}
    for name in names:
        if name not in limits:
            raise errors.QueueNotFound(name)
    visible = [now + (limits[e.queue][0] if e.delay_ms is None else e.delay_ms) for e in enqueues]
    await conn.execute(
        SQL_MESSAGES_INSERT,
        (
            [e.queue for e in enqueues],
            [e.message_id for e in enqueues],
            [e.body for e in enqueues],
            [e.content_type for e in enqueues],
            [now] * len(enqueues),
            visible,
            [e.attributes for e in enqueues],
        ),
    )
    # Checked once per queue after all inserts: the totals are what must fit.
    bounds: dict[str, tuple[int | None, int | None]] = {}
    for name in names:
        _, max_backlog, max_bytes = limits[name]
        explicit = [e.max_backlog for e in enqueues if e.queue == name and e.max_backlog]
        if explicit:
            max_backlog = explicit[0]
        if max_backlog is not None or max_bytes is not None:
            bounds[name] = (max_backlog, max_bytes)
    if not bounds:
        return
    cursor = await conn.execute(SQL_QUEUES_BACKLOG, (list(bounds),))
    for name, count, size in await cursor.fetchall():
        max_backlog, max_bytes = bounds[name]
        if max_backlog is not None and count > max_backlog:
            raise errors.QueueFull(name, max_backlog)
        if max_bytes is not None and size > max_bytes:
            raise errors.QueueFull(name, max_bytes, unit="bytes of undelivered messages")


async def _apply_settlements(
    txn: _Txn, settlements: Sequence[model.Settlement]
) -> tuple[bool, ...]:
    """Apply settlements in order; runs of acks on one queue take one statement."""
    found: list[bool] = []
    acks: list[model.Ack] = []

    async def flush() -> None:
        if not acks:
            return
        cursor = await txn.conn.execute(
            SQL_MESSAGES_ACK, (acks[0].queue, [a.message_id for a in acks])
        )
        gone = {row[0] for row in await cursor.fetchall()}
        found.extend(a.message_id in gone for a in acks)
        acks.clear()

    for s in settlements:
        if isinstance(s, model.Ack):
            if (acks and acks[0].queue != s.queue) or s.message_id in {a.message_id for a in acks}:
                await flush()
            acks.append(s)
            continue
        await flush()
        found.append(await _apply_settlement(txn, s))
    await flush()
    return tuple(found)


async def _apply_settlement(txn: _Txn, s: model.Retry | model.DeadLetter) -> bool:
    conn, now = txn.conn, txn.now
    if isinstance(s, model.Retry):
        cursor = await conn.execute(
            SQL_MESSAGE_RETRY, (now + s.delay_ms, s.message_id, s.lease, s.queue)
        )
        if cursor.rowcount:
            await conn.execute(SQL_QUEUE_RETRIED, (s.queue,))
        return cursor.rowcount > 0
    if s.to_queue is None:
        cursor = await conn.execute(SQL_MESSAGE_DROP, (s.message_id, s.lease, s.queue))
    else:
        if await _scalar(conn, SQL_QUEUE_EXISTS, (s.to_queue,)) is None:
            raise errors.QueueNotFound(s.to_queue)
        moved = (s.to_queue, now, s.message_id, s.lease, s.queue)
        cursor = await conn.execute(SQL_MESSAGE_MOVE, moved)
    if cursor.rowcount:
        await conn.execute(SQL_QUEUE_DEAD_LETTERED, (s.queue,))
    return cursor.rowcount > 0


async def _apply_queue_change(txn: _Txn, change: model.QueueChange) -> None:
    conn, now = txn.conn, txn.now
    if isinstance(change, model.CreateQueue):
        row = (change.name, change.queue_id, now, now, *settings_row(change.settings))
        if (await conn.execute(SQL_QUEUE_INSERT, row)).rowcount == 0 and not change.if_absent:
            raise errors.QueueExists(change.name)
        return
    if isinstance(change, model.UpdateQueue):
        current = await (await conn.execute(SQL_QUEUE_SETTINGS, (change.name,))).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        if tuple(current) != settings_row(change.expect):
            raise CheckFailed
        await conn.execute(SQL_QUEUE_UPDATE, (now, *settings_row(change.settings), change.name))
        return
    if isinstance(change, model.SetConsumer):
        current = await (await conn.execute(SQL_QUEUE_CONSUMER, (change.name,))).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        stored = None if current[0] is None else bytes(current[0])
        if stored != change.expect:
            raise CheckFailed
        await conn.execute(SQL_QUEUE_SET_CONSUMER, (change.consumer, now, change.name))
        return
    if await _scalar(conn, SQL_QUEUE_EXISTS, (change.name,)) is None:
        raise errors.QueueNotFound(change.name)
    await conn.execute(SQL_QUEUE_PURGE, (change.name,))
    if isinstance(change, model.DeleteQueue):
        await conn.execute(SQL_QUEUE_DELETE, (change.name,))
        await conn.execute(SQL_BACKLOG_DELETE, (change.name,))

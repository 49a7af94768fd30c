"""The PostgreSQL backend: one database that many processes on many machines share.

How it stays correct with many writers:

* Every committing transaction first bumps the one ``kvqueue_meta`` row. Its
  row lock orders all commits of every process, so versionstamps rise in
  commit order, and the writes in between never deadlock with each other.
* Each process has one writer task. Callers' commits queue up for it; it takes
  everything waiting, applies each in its own savepoint (so one failed write
  cannot spoil another) and commits them together: one WAL flush and one trip
  through the version lock for many callers (group commit). Concurrent
  enqueue-only writes (sends) share one INSERT and are still refused one by one.
* A group of nothing but sends and acks (the busy path) is pipelined instead:
  BEGIN, the version lock, the acks, the INSERT (which checks its queues'
  limits itself), NOTIFY, the stats the sends asked for (``stats_of``) and
  COMMIT in one round trip. A group of acks alone
  is a single statement (``kvqueue_ack``), a transaction of its own. Such
  writes cannot fail one another, so they need no savepoints; should a send be
  refused (its queue missing or full) or PostgreSQL refuse a statement, the
  group is rolled back and applied again the careful way, op by op.
* Leasing runs beside the writer on pooled connections with
  ``FOR UPDATE SKIP LOCKED``, so consumers in different processes never take
  one message twice and never wait for each other. A consumer bounded by
  ``max_leases`` takes a per-queue advisory lock, so the bound holds across
  every process. A lease is one statement (``kvqueue_lease``), so one round
  trip, bound or not.
* A commit that changed something sends ``NOTIFY``; every process LISTENs on
  a connection of its own and wakes its waiters within a millisecond. The
  notice says what the commit cannot have done: changed a queue's record
  (``plain``, with the queues it sent to), or that and made a message
  deliverable either (``acks``: nothing but acks), so an idle consumer without
  a concurrency bound sleeps on through other consumers' acks. A lease that
  takes a queue's last ready messages says so too, and a process that has seen
  another take a queue's messages holds a send's wake-up back for that notice
  (:mod:`kvqueue.storage.notices`).
* Times come from the database server's clock (:class:`ServerClock`), so
  machines whose clocks disagree still agree on lease deadlines and delays.
* A lost connection is replaced. Work that had not reached COMMIT is retried
  once on a fresh connection; a COMMIT whose answer was lost (for a pipelined
  group: anything lost once its COMMIT was sent; for acks alone, anything) is
  reported as a StorageError, since only the database knows whether it landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from kvqueue import errors, model
from kvqueue.clock import Clock, SystemClock
from kvqueue.model import ValueEncoding
from kvqueue.storage import notices
from kvqueue.storage.common import (
    QUEUE_COLUMNS,
    CheckFailed,
    SharedRead,
    Signal,
    Waits,
    check_schema_version,
    is_plain_ack,
    is_plain_send,
    migration_scripts,
    queue_record,
    versionstamp,
)
from kvqueue.storage.postgres_writes import (
    SQL_MESSAGES_SEND,
    Txn,
    ack_runs,
    acked,
    apply_sends,
    apply_write,
    delete_acked,
    scalar,
    send_columns,
)

T = TypeVar("T")
K = TypeVar("K")
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
# BEGIN and the version-row lock in one round trip (a literal count: no parameters
# are allowed with two statements).
SQL_BEGIN_BUMP = """
BEGIN; UPDATE kvqueue_meta SET version = version + {} WHERE id = 0 RETURNING version
"""
# The same for a pipeline, where statements go one by one but parameters are allowed.
SQL_BUMP = "UPDATE kvqueue_meta SET version = version + %s WHERE id = 0 RETURNING version"
# A group of nothing but acks, whole (see 0002_counts_and_acks.sql).
SQL_ACK = """
SELECT last_version, gone_queues, gone_ids
FROM kvqueue_ack(%s, %b::text[], %b::text[], %s, %s)
"""
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
# A lease, whole: settings, the concurrency bound and the UPDATE (see 0005_lease.sql
# for why each is there). A lease that takes nothing answers with one row of its own
# instead (seq NULL): the queue's next visible time in its enqueued_at column, for the
# wait that follows (an idle consumer woken for nothing then makes one round trip, not
# two).
SQL_MESSAGE_LEASE = """
WITH taken AS MATERIALIZED (
  SELECT * FROM kvqueue_lease_told(
    %(queue)s, %(lease)s, %(until)s, %(now)s, %(limit)s, %(max_leases)s, %(lock)s,
    %(channel)s, %(notice)s
  )
)
SELECT seq, id, body, content_type, enqueued_at, attempts, attributes FROM taken
UNION ALL
SELECT NULL, NULL, NULL, NULL, kvqueue_next_visible(%(queue)s, %(now)s), NULL, NULL
WHERE NOT EXISTS (SELECT FROM taken)
"""
SQL_MESSAGES_EXTEND = """
UPDATE kvqueue_messages AS m SET visible_at = %(until)s
FROM unnest(%(ids)s::text[], %(leases)s::text[]) AS held(id, lease)
WHERE m.id = ANY(%(ids)s::text[]) AND m.id = held.id AND m.lease = held.lease
RETURNING m.id
"""
SQL_MESSAGE_NEXT_VISIBLE = "SELECT kvqueue_next_visible(%s, %s)"
SQL_MESSAGE_PEEK = "SELECT * FROM kvqueue_peek(%s, %s)"
SQL_MESSAGE_BROWSE = "SELECT * FROM kvqueue_browse(%s, %s, %s, %s)"
SQL_MESSAGE_OLDEST = "SELECT kvqueue_oldest(%s)"
# One statement, so one snapshot and one round trip.
SQL_QUEUE_STATS = """
SELECT q.retried, q.dead_lettered, coalesce(b.count, 0), coalesce(b.bytes, 0),
  kvqueue_oldest(q.name), kvqueue_in_flight(q.name, %s)
FROM kvqueue_queues AS q LEFT JOIN kvqueue_backlog AS b ON b.queue = q.name
WHERE q.name = %s
"""
SQL_MESSAGES_EXPIRED = "DELETE FROM kvqueue_messages WHERE queue = %s AND enqueued_at <= %s"
SQL_QUEUE_GET = f"SELECT {QUEUE_COLUMNS} FROM kvqueue_queues WHERE name = ANY(%s) ORDER BY name"
# One queue (a worker's check before each batch): a plan PostgreSQL keeps.
SQL_QUEUE_GET_ONE = f"SELECT {QUEUE_COLUMNS} FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_ALL = f"SELECT {QUEUE_COLUMNS} FROM kvqueue_queues ORDER BY name"
SQL_QUEUE_RETAINED = "SELECT name, retention FROM kvqueue_queues WHERE retention IS NOT NULL"


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

    async def sleep_until(self, ms: int) -> None:
        """Sleep until the server's clock reads ``ms``."""
        await self._base.sleep_until(ms - self.offset_ms)

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


_Op = Callable[[Txn], Awaitable[Any]]
# An operation, its caller's future, and the atomic write it applies (if it is one).
_Pending = tuple[_Op, "asyncio.Future[Any]", model.AtomicWrite | None]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
# Per caller of a pipelined group, in order: its acks, each run with the cursor that
# will say what it found.
_Deletes = list[list[tuple[list[model.Ack], Any]]]


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


class PostgresStorage(Waits):
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
        # already woken this process's waiters. A commit that cannot have changed
        # a queue's record says so (a Worker then needs no fresh look at its queue);
        # a notice without the mark, an older kvqueue's too, may have. So does
        # one of nothing but acks (an idle consumer without a bound sleeps on).
        self._origin = secrets.token_hex(8)
        self._origin_plain = notices.sent(self._origin, ())
        self._origin_acks = notices.acked(self._origin)
        self._wakes = notices.Wakes(self._signal, self._origin)
        self._pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._stats = SharedRead(self._read_stats)
        # Per queue, from its last empty lease: the arrivals count then, and the
        # queue's next visible time.
        self._upcoming: dict[str, tuple[int, int | None]] = {}

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

    def _write(self, op: _Op, write: model.AtomicWrite | None = None) -> asyncio.Future[Any]:
        if self._closed:
            raise errors.DatabaseClosed()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((op, future, write))
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
            queues = _changes_queues(batch)
            acks_only = _only_acks(batch)
            try:
                outcomes, changed = await self._commit_group(
                    batch, queues=queues, acks_only=acks_only
                )
            except Exception as exc:
                # A bug must fail these callers, not stop every later write.
                logger.exception("the PostgreSQL writer failed on a group of %d", len(batch))
                failure = _storage_error("the write failed and was rolled back", exc)
                outcomes, changed = [(future, None, failure) for _, future, _ in batch], False
            for future, result, error in outcomes:
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            if changed:
                self._signal.fire(queues=queues, arrivals=not acks_only)

    async def _commit_group(
        self, batch: list[_Pending], *, queues: bool, acks_only: bool
    ) -> tuple[list[_Outcome], bool]:
        """Commit a group (``queues``: it may change a queue's record; ``acks_only``:
        it is nothing but plain acks); returns each caller's outcome and whether
        anything changed."""

        def failed(error: BaseException) -> tuple[list[_Outcome], bool]:
            return [(future, None, error) for _, future, _ in batch], False

        for attempt in (1, 2):
            try:
                async with self._pool.connection() as conn:
                    try:
                        return await self._apply(conn, batch, queues=queues, acks_only=acks_only)
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

    async def _apply(
        self, conn: Connection, batch: list[_Pending], *, queues: bool, acks_only: bool
    ) -> tuple[list[_Outcome], bool]:
        applied = None
        if acks_only:
            applied = await self._apply_acks(conn, batch)
        elif _PIPELINES and all(w is not None and _pipelinable(w) for _, _, w in batch):
            applied = await self._apply_pipelined(conn, batch)
        if applied is not None:
            return applied
        alone = len(batch) == 1
        outcomes: list[_Outcome] = []
        cursor = await conn.execute(sql.SQL(SQL_BEGIN_BUMP).format(sql.Literal(len(batch))))
        try:
            cursor.nextset()
            row = await cursor.fetchone()
            assert row is not None
            txn = Txn(conn, self.clock.now_ms(), int(row[0]) - len(batch))
            start = 0
            while start < len(batch):
                end = start
                while end < len(batch) and (write := batch[end][2]) and is_plain_send(write):
                    end += 1
                if end - start > 1 or (alone and end > start):
                    outcomes += await self._apply_sends(txn, batch[start:end], alone=alone)
                    start = end
                    continue
                op, future, _ = batch[start]
                start += 1
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
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise
        # The NOTIFY is delivered at COMMIT; both in one round trip.
        end_sql = (
            sql.SQL("SELECT pg_notify({}, {}); COMMIT").format(
                sql.Literal(self._channel),
                sql.Literal(self._origin if queues else self._origin_plain),
            )
            if txn.changed
            else sql.SQL("COMMIT")
        )
        try:
            await conn.execute(end_sql)
        except psycopg.Error as exc:
            if conn.broken:
                raise _Committing(exc) from exc
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
            raise
        return outcomes, txn.changed

    async def _apply_acks(
        self, conn: Connection, batch: list[_Pending]
    ) -> tuple[list[_Outcome], bool] | None:
        """Apply a group of nothing but acks as one statement, a transaction of its own.

        Returns None when PostgreSQL refused it (nothing landed): the caller
        then applies the group op by op.
        """
        acks = [s for _, _, w in batch if w is not None for s in w.settlements]
        params = (
            len(batch),
            [a.queue for a in acks],
            [a.message_id for a in acks],
            self._channel,
            self._origin_acks,
        )
        try:
            row = await (await conn.execute(SQL_ACK, params)).fetchone()
        except psycopg.Error as exc:
            if conn.broken:
                # The statement is the COMMIT: it may have landed.
                raise _Committing(exc) from exc
            return None
        assert row is not None
        last, queues, ids = row
        # Each message is found by the first ack that names it, as if applied in order.
        gone = set(zip(queues or (), ids or (), strict=True))
        first = int(last) - len(batch)
        outcomes: list[_Outcome] = []
        for number, (_, future, write) in enumerate(batch, start=1):
            assert write is not None
            settled: list[bool] = []
            for s in write.settlements:
                settled.append((s.queue, s.message_id) in gone)
                gone.discard((s.queue, s.message_id))
            committed = model.Committed(versionstamp(first + number), tuple(settled))
            outcomes.append((future, committed, None))
        return outcomes, True

    async def _apply_pipelined(
        self, conn: Connection, batch: list[_Pending]
    ) -> tuple[list[_Outcome], bool] | None:
        """Apply a group of sends and acks in one pipeline (see the module docstring).

        Statements run in the group's order, so a send sees the backlog that the
        acks before it left. Returns None when PostgreSQL refused a statement (a send
        over its queue's limits, a duplicate id): the transaction is then rolled
        back, and the caller applies the group op by op, refusing each on its own.
        """
        committing = False
        try:
            # A statement PostgreSQL refuses inside the block is kept until the pipeline
            # has ended: raised through it, psycopg would log the pipeline's own
            # error as well ("error ignored terminating").
            failure: psycopg.Error | None = None
            async with conn.pipeline():
                try:
                    await conn.execute("BEGIN")
                    bumped = await conn.execute(SQL_BUMP, (len(batch),))
                    deletes, reads = await self._queue_group(conn, batch)
                    committing = True
                    await conn.execute("COMMIT")
                except psycopg.Error as exc:
                    failure = exc
            if failure is not None:
                raise failure
            return await _pipelined_outcomes(batch, bumped, deletes, reads), True
        except psycopg.Error as exc:
            if conn.broken:
                if committing:
                    raise _Committing(exc) from exc
                raise
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
            return None

    async def _queue_group(
        self, conn: Connection, batch: list[_Pending]
    ) -> tuple[_Deletes, list[tuple[str, Any]]]:
        """Queue a pipelined group's statements, in order, after its BEGIN. The group
        holds a send (one of nothing but acks goes to :meth:`_apply_acks`), whose
        INSERT sends the NOTIFY.

        Returns per caller (its version is its place in the group) its acks with the
        cursors that will say what they found, and the cursors of the queue stats
        the senders asked for.
        """
        now = self.clock.now_ms()
        deletes: _Deletes = []
        start = 0
        while start < len(batch):
            write = batch[start][2]
            assert write is not None
            if is_plain_ack(write):
                acks = [s for s in write.settlements if isinstance(s, model.Ack)]
                deletes.append([(run, await delete_acked(conn, run)) for run in ack_runs(acks)])
                start += 1
                continue
            end = start + 1
            while end < len(batch) and (write := batch[end][2]) and is_plain_send(write):
                end += 1
            writes = [w for _, _, w in batch[start:end] if w is not None]
            # It checks its queues' limits itself: a refusal aborts the group.
            told = notices.sent(self._origin, (e.queue for w in writes for e in w.enqueues))
            sends = (*send_columns(writes, now), self._channel, told)
            await conn.execute(SQL_MESSAGES_SEND, sends)
            deletes += [[] for _ in writes]
            start = end
        # The stats senders want, as of this commit: no read of their own.
        asked = {w.stats_of for _, _, w in batch if w is not None and w.stats_of}
        reads = [(name, await conn.execute(SQL_QUEUE_STATS, (now, name))) for name in asked]
        return deletes, reads

    async def _apply_sends(self, txn: Txn, run: list[_Pending], *, alone: bool) -> list[_Outcome]:
        """Enqueue-only writes of many callers: one INSERT, each still refused on its own.

        If the INSERT itself fails (a duplicate message id, say), each write is
        applied on its own so only the offending one fails.
        """
        writes = [write for _, _, write in run if write is not None]
        if not alone:
            await txn.conn.execute("SAVEPOINT sends")
        try:
            results = await apply_sends(txn, writes)
        except psycopg.Error:
            if txn.conn.broken or alone:
                raise
            await txn.conn.execute("ROLLBACK TO SAVEPOINT sends")
            outcomes: list[_Outcome] = []
            for op, future, _ in run:
                await txn.conn.execute("SAVEPOINT op")
                try:
                    result = await op(txn)
                except Exception as failed:
                    if txn.conn.broken:
                        raise
                    await txn.conn.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append((future, None, _translate(failed)))
                else:
                    await txn.conn.execute("RELEASE SAVEPOINT op")
                    outcomes.append((future, result, None))
            return outcomes
        if not alone:
            await txn.conn.execute("RELEASE SAVEPOINT sends")
        return [
            (future, None, result) if isinstance(result, Exception) else (future, result, None)
            for (_, future, _), result in zip(run, results, strict=True)
        ]

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
                            self._wakes.notice(notice.payload)
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
        result: model.Committed | None = await self._write(
            lambda txn: apply_write(txn, write), write
        )
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
        announce = self._wakes.announces(queue)
        sends = self._wakes.sends(queue)

        async def run(conn: Connection) -> list[Any]:
            now = self.clock.now_ms()
            params: dict[str, Any] = {
                "lease": lease,
                "until": now + lease_ms,
                "queue": queue,
                "now": now,
                "limit": limit,
                "max_leases": max_leases,
                "lock": f"{self._channel}:{queue}",
                "channel": self._channel,
                "notice": notices.taken(self._origin, queue) if announce else None,
            }
            # Autocommit: the one statement is the lease's whole transaction.
            cursor = await conn.execute(SQL_MESSAGE_LEASE, params, binary=True)
            return await cursor.fetchall()

        rows = await self._run(run)
        took = not (len(rows) == 1 and rows[0][0] is None)
        self._wakes.leased(queue, took=took, sends=sends)
        if not took:
            # Good until a change may have made a message deliverable sooner.
            self._upcoming[queue] = (self._signal.arrivals, rows[0][4])
            return []
        rows.sort(key=lambda row: row[0])
        return [
            model.LeasedMessage(queue, mid, body, ctype, enq, attempts, lease, attrs)
            for _, mid, body, ctype, enq, attempts, attrs in rows
        ]

    async def extend(self, leases: Sequence[model.LeaseCheck], *, lease_ms: int) -> set[str]:
        """See :meth:`kvqueue.storage.base.Storage.extend`."""

        async def op(txn: Txn) -> set[str]:
            ids = [lease.message_id for lease in leases]
            names = [lease.lease for lease in leases]
            held = {"until": txn.now + lease_ms, "ids": ids, "leases": names}
            cursor = await txn.conn.execute(SQL_MESSAGES_EXTEND, held)
            return {row[0] for row in await cursor.fetchall()}

        extended: set[str] = await self._write(op)
        return extended

    async def queues(self, names: Sequence[str] | None = None) -> list[model.QueueRecord]:
        """See :meth:`kvqueue.storage.base.Storage.queues`."""

        async def run(conn: Connection) -> list[model.QueueRecord]:
            if names is None:
                cursor = await conn.execute(SQL_QUEUE_ALL)
            elif len(names) == 1:
                cursor = await conn.execute(SQL_QUEUE_GET_ONE, (names[0],))
            else:
                cursor = await conn.execute(SQL_QUEUE_GET, (list(names),))
            found = {row[0]: queue_record(row) for row in await cursor.fetchall()}
            if names is None:
                return list(found.values())
            return [found[name] for name in names if name in found]

        return await self._run(run)

    async def stats(self, queue: str) -> model.QueueStats:
        """See :meth:`kvqueue.storage.base.Storage.stats`.

        Concurrent callers share queries (see
        :class:`~kvqueue.storage.common.SharedRead`): many consumers pulling at once
        each want their queue's metrics after their pull.
        """
        return await self._stats(queue)

    async def _read_stats(self, queue: str) -> model.QueueStats:
        now = self.clock.now_ms()

        async def run(conn: Connection) -> model.QueueStats:
            stats = _stats(await (await conn.execute(SQL_QUEUE_STATS, (now, queue))).fetchone())
            if stats is None:
                raise errors.QueueNotFound(queue)
            return stats

        return await self._run(run)

    async def peek(self, queue: str, *, limit: int) -> list[model.StoredMessage]:
        """See :meth:`kvqueue.storage.base.Storage.peek`."""

        async def run(conn: Connection) -> list[model.StoredMessage]:
            cursor = await conn.execute(SQL_MESSAGE_PEEK, (queue, limit))
            return [model.StoredMessage(queue, *row) for row in await cursor.fetchall()]

        return await self._run(run)

    async def browse(
        self, queue: str, *, limit: int, after: tuple[int, int] | None = None
    ) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
        """See :meth:`kvqueue.storage.base.Storage.browse`."""
        ms, seq = after if after is not None else (-(2**63), -(2**63))

        async def run(conn: Connection) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
            cursor = await conn.execute(SQL_MESSAGE_BROWSE, (queue, ms, seq, limit))
            rows = await cursor.fetchall()
            return [(model.StoredMessage(queue, *row[:-1]), (row[3], row[-1])) for row in rows]

        return await self._run(run)

    async def _next_visible(self, queue: str, since: int) -> int | None:
        known = self._upcoming.pop(queue, None)
        if known is not None and known[0] == self._signal.arrivals:
            # From the empty lease just made (later than ``since``: what was visible
            # then and not taken, another consumer was taking).
            return known[1]

        async def run(conn: Connection) -> int | None:
            found: int | None = await scalar(conn, SQL_MESSAGE_NEXT_VISIBLE, (queue, since))
            return found

        return await self._run(run)

    async def purge_expired(self) -> int | None:
        """See :meth:`kvqueue.storage.base.Storage.purge_expired`."""

        async def op(txn: Txn) -> int | None:
            conn, now = txn.conn, txn.now
            if (await conn.execute(SQL_KV_PURGE_EXPIRED, (now,))).rowcount:
                txn.changed = True
            due = [await scalar(conn, SQL_KV_NEXT_EXPIRY)]
            for name, retention in await (await conn.execute(SQL_QUEUE_RETAINED)).fetchall():
                if (await conn.execute(SQL_MESSAGES_EXPIRED, (name, now - retention))).rowcount:
                    txn.changed = True
                oldest = await scalar(conn, SQL_MESSAGE_OLDEST, (name,))
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
        await asyncio.gather(*self._stats.tasks, return_exceptions=True)
        await self._pool.close()
        self._wakes.close()
        self._signal.fire()


# Pipeline mode needs libpq 14 or later (psycopg's binary package bundles one).
_PIPELINES = psycopg.AsyncPipeline.is_supported()


async def _pipelined_outcomes(
    batch: list[_Pending],
    bumped: Any,
    deletes: _Deletes,
    reads: list[tuple[str, Any]],
) -> list[_Outcome]:
    """Each caller's Committed, from the cursors of a pipelined group that committed."""
    row = await bumped.fetchone()
    assert row is not None
    first = int(row[0]) - len(batch)
    stats = {name: _stats(await cursor.fetchone()) for name, cursor in reads}
    outcomes: list[_Outcome] = []
    for number, ((_, future, write), own) in enumerate(zip(batch, deletes, strict=True), 1):
        assert write is not None
        settled = [found for run, cursor in own for found in await acked(cursor, run)]
        committed = model.Committed(
            versionstamp(first + number),
            tuple(settled),
            None if write.stats_of is None else stats[write.stats_of],
        )
        outcomes.append((future, committed, None))
    return outcomes


def _stats(row: Sequence[Any] | None) -> model.QueueStats | None:
    """A row of SQL_QUEUE_STATS as QueueStats (None: no such queue)."""
    if row is None:
        return None
    retried, dead_lettered, count, size, oldest, in_flight = row
    return model.QueueStats(count, size, oldest, in_flight, retried, dead_lettered)


def _changes_queues(batch: Sequence[_Pending]) -> bool:
    """Whether a group may change a queue's record (its NOTIFY then lacks "plain")."""
    return any(w is not None and w.queue_changes for _, _, w in batch)


def _only_acks(batch: Sequence[_Pending]) -> bool:
    """Whether a group is nothing but acks (its NOTIFY is then marked "acks")."""
    return all(w is not None and is_plain_ack(w) for _, _, w in batch)


def _pipelinable(write: model.AtomicWrite) -> bool:
    """Whether a write can join a pipelined group: a plain send or plain acks."""
    return is_plain_send(write) or is_plain_ack(write)


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

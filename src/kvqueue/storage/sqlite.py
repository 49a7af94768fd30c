"""The SQLite backend: the embedded default.

Durability and concurrency, in short:

* WAL with ``synchronous=FULL``: a commit that returned is on disk. A
  transaction of leases alone commits without the sync (see ``_Writer._sync``): a
  lease lost to a power cut means a delivery again, never a lost message.
* One writer thread per open database. Callers' writes queue up for it; it
  takes everything waiting, applies each in its own savepoint (so one failed
  write cannot spoil another; a write alone needs none) and commits them
  together: one fsync for many callers (group commit). Each caller still gets
  its own versionstamp. Sends that ask for their queue's metrics get them read
  once for the group, before its COMMIT: a read of their own each after it cost
  the event loop more than the send.
* Python's sqlite3 lets go of the GIL on every step of a statement, and taking
  it back from a busy event loop can cost more than the step: so a batch of
  messages is written with a few statements, not one per message or row.
* Reads run on a small pool of reader threads, each with its own connection,
  in parallel with the writer (WAL snapshots). Reads of a few rows found by
  index (a queue's record, its metrics, a few keys) run on the event loop's
  thread instead: handing one to a reader thread and back (two thread wake-ups,
  the GIL passed each way) costs more than the read.
* Several processes may open one file: ``BEGIN IMMEDIATE`` serialises their
  writers (each waiting for another's lock in fine steps of its own, see
  ``_begin``), and a watch on the ``-wal`` file wakes listeners in every process
  when any of them commits, and again once ``PRAGMA data_version`` shows the
  commit, so that what they read then includes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue as queue_module
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kvqueue import errors, model, values
from kvqueue.clock import Clock, SystemClock
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.storage.common import (
    QUEUE_COLUMNS,
    CheckFailed,
    SharedRead,
    Signal,
    Waits,
    backlog_bounds,
    backlog_refusal,
    check_schema_version,
    is_plain_send,
    migration_scripts,
    plan_enqueues,
    queue_record,
    settings_row,
    version_of,
    versionstamp,
)
from kvqueue.storage.filewatch import FileWatch

T = TypeVar("T")

# Most callers' writes folded into one transaction.
_MAX_GROUP = 512
_BUSY_TIMEOUT_MS = 60_000
_BUSY_FIRST_PAUSE_S = 0.0001
_BUSY_MAX_PAUSE_S = 0.005
_READER_THREADS = 2
# Reads of at most this many rows run on the event loop's thread (module docstring).
_SMALL_READ_ROWS = 10
# After each write to the WAL, data_version is looked at this often, this many
# times: 200 ms in all, more than the sync before a commit is visible takes, even
# on a busy machine.
_VISIBLE_RETRY_S = 0.002
_VISIBLE_TRIES = 100

# --- SQL ----------------------------------------------------------------------
SQL_KV_LIVE_VERSION = """
SELECT version FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)
"""
SQL_KV_LIVE_VALUE = """
SELECT value, encoding FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)
"""
SQL_KV_SET = """
INSERT INTO kv (key, value, encoding, version, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, encoding = excluded.encoding,
  version = excluded.version, expires_at = excluded.expires_at
"""
SQL_KV_DELETE = "DELETE FROM kv WHERE key = ?"
SQL_KV_RANGE = """
SELECT key, value, encoding, version FROM kv
WHERE key >= ? AND key < ? AND (expires_at IS NULL OR expires_at > ?)
ORDER BY key LIMIT ?
"""
SQL_KV_RANGE_REVERSE = """
SELECT key, value, encoding, version FROM kv
WHERE key >= ? AND key < ? AND (expires_at IS NULL OR expires_at > ?)
ORDER BY key DESC LIMIT ?
"""
SQL_KV_PURGE_EXPIRED = "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?"
SQL_KV_NEXT_EXPIRY = "SELECT min(expires_at) FROM kv WHERE expires_at IS NOT NULL"
SQL_META_VERSION = "SELECT version FROM meta WHERE id = 0"
SQL_META_SET_VERSION = "UPDATE meta SET version = ? WHERE id = 0"
SQL_MESSAGE_INSERT = """
INSERT INTO messages (queue, id, body, content_type, enqueued_at, visible_at, attributes)
VALUES
"""
# Messages are inserted by a multi-row VALUES of one of these sizes: a few fixed
# statements (they stay in the statement cache) cover any number of messages, and
# a full send_batch (100) is one statement.
_INSERT_CHUNKS = (128, 100, 64, 32, 16, 8, 4, 2, 1)
SQL_QUEUE_BACKLOG = "SELECT count, bytes FROM queue_backlog WHERE queue = ?"
SQL_QUEUES_LIMITS = """
SELECT q.name, q.delivery_delay, q.max_backlog, q.max_backlog_bytes, b.count, b.bytes
FROM queues AS q LEFT JOIN queue_backlog AS b ON b.queue = q.name
WHERE q.name IN (SELECT value FROM json_each(?))
"""
SQL_LEASES_HELD = """
SELECT count(DISTINCT lease) FROM messages
WHERE queue = ? AND lease IS NOT NULL AND lease <> ? AND visible_at > ?
"""
SQL_MESSAGE_LEASE = """
UPDATE messages SET attempts = attempts + 1, lease = ?, visible_at = ?
WHERE seq IN (
  SELECT seq FROM messages WHERE queue = ? AND visible_at <= ?
  ORDER BY visible_at, seq LIMIT ?
)
RETURNING seq, id, body, content_type, enqueued_at, attempts, attributes
"""
SQL_MESSAGE_EXTEND = "UPDATE messages SET visible_at = ? WHERE id = ? AND lease = ?"
SQL_MESSAGE_LEASE_HELD = "SELECT 1 FROM messages WHERE id = ? AND lease = ?"
# Settlements go in two statements per queue (and lease), the ids as a JSON array:
# which of them are there (one row back), then the change. Fixed statement texts
# for any number of ids, so they stay cached; and no RETURNING, whose row-by-row
# stepping hands Python's GIL to and fro once a row. The unary + keeps the planner
# on the id index: without it, it may walk the whole queue through an index on
# queue and test each row against the list.
SQL_MESSAGE_ACK_FOUND = """
SELECT json_group_array(id) FROM messages
WHERE +queue = ? AND id IN (SELECT value FROM json_each(?))
"""
SQL_MESSAGE_ACK_MANY = """
DELETE FROM messages WHERE +queue = ? AND id IN (SELECT value FROM json_each(?))
"""
SQL_MESSAGE_RETRY_FOUND = """
SELECT json_group_array(id) FROM messages
WHERE +queue = ? AND lease = ? AND id IN (SELECT value FROM json_each(?))
"""
SQL_MESSAGE_RETRY_MANY = """
UPDATE messages SET visible_at = ?, lease = NULL
WHERE +queue = ? AND lease = ? AND id IN (SELECT value FROM json_each(?))
"""
SQL_MESSAGE_MOVE = """
UPDATE messages SET queue = ?, attempts = 0, lease = NULL, visible_at = ?, attributes = NULL
WHERE id = ? AND lease = ? AND queue = ?
"""
SQL_MESSAGE_DROP = "DELETE FROM messages WHERE id = ? AND lease = ? AND queue = ?"
SQL_MESSAGE_NEXT_VISIBLE = """
SELECT min(visible_at) FROM messages WHERE queue = ? AND visible_at > ?
"""
SQL_MESSAGE_PEEK = """
SELECT id, body, content_type, enqueued_at, attempts, attributes FROM messages
WHERE queue = ? ORDER BY visible_at, seq LIMIT ?
"""
SQL_MESSAGE_BROWSE = """
SELECT id, body, content_type, enqueued_at, attempts, attributes, seq FROM messages
WHERE queue = ? AND enqueued_at >= ? AND (enqueued_at > ? OR seq > ?)
ORDER BY enqueued_at, seq LIMIT ?
"""
SQL_MESSAGE_OLDEST = "SELECT min(enqueued_at) FROM messages WHERE queue = ?"
SQL_MESSAGE_IN_FLIGHT = """
SELECT count(*) FROM messages WHERE queue = ? AND lease IS NOT NULL AND visible_at > ?
"""
SQL_MESSAGES_EXPIRED = """
DELETE FROM messages WHERE queue = ? AND enqueued_at <= ?
"""
SQL_QUEUE_GET = f"SELECT {QUEUE_COLUMNS} FROM queues WHERE name = ?"
SQL_QUEUE_ALL = f"SELECT {QUEUE_COLUMNS} FROM queues ORDER BY name"
SQL_QUEUE_LIMITS = """
SELECT delivery_delay, max_backlog, max_backlog_bytes FROM queues WHERE name = ?
"""
SQL_QUEUE_RETAINED = "SELECT name, retention FROM queues WHERE retention IS NOT NULL"
SQL_QUEUE_INSERT = """
INSERT INTO queues (name, id, created_at, modified_at, delivery_delay, retention, paused,
  max_backlog, max_backlog_bytes)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO NOTHING
"""
SQL_QUEUE_UPDATE = """
UPDATE queues SET modified_at = ?, delivery_delay = ?, retention = ?, paused = ?,
  max_backlog = ?, max_backlog_bytes = ?
WHERE name = ?
"""
SQL_QUEUE_SETTINGS = """
SELECT delivery_delay, retention, paused, max_backlog, max_backlog_bytes FROM queues
WHERE name = ?
"""
SQL_QUEUE_CONSUMER = "SELECT consumer FROM queues WHERE name = ?"
SQL_QUEUE_SET_CONSUMER = "UPDATE queues SET consumer = ?, modified_at = ? WHERE name = ?"
SQL_QUEUE_DELETE = "DELETE FROM queues WHERE name = ?"
SQL_QUEUE_PURGE = "DELETE FROM messages WHERE queue = ?"
SQL_BACKLOG_DELETE = "DELETE FROM queue_backlog WHERE queue = ?"
SQL_QUEUE_RETRIED = "UPDATE queues SET retried = retried + ? WHERE name = ?"
SQL_QUEUE_DEAD_LETTERED = "UPDATE queues SET dead_lettered = dead_lettered + 1 WHERE name = ?"
SQL_QUEUE_COUNTERS = "SELECT retried, dead_lettered FROM queues WHERE name = ?"


def _connect(
    path: str, *, durable: bool, busy_timeout_ms: int = _BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=256
    )
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'OFF'}")
    return conn


def _migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the file's schema up to date; returns its versions before and after."""
    scripts = migration_scripts("kvqueue.storage.sql.sqlite")
    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    check_schema_version(current, len(scripts), "this SQLite file")
    if current >= len(scripts):
        return current, current
    # Several processes may open a new file at once: the write lock makes one
    # of them migrate, and the others see its user_version when they get it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(scripts, start=1):
            if number > current:
                for statement in _split_statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current, len(scripts)


def _split_statements(script: str) -> list[str]:
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


@dataclass(slots=True)
class _Txn:
    conn: sqlite3.Connection
    now: int
    version: int


_Op = Callable[[_Txn], Any]
# A caller's op, its future, its write when that is a plain send (which can share
# an INSERT with the plain sends beside it), and whether its commit may skip the
# sync (see _Writer._sync).
_Request = tuple[_Op, asyncio.Future[Any], model.AtomicWrite | None, bool]
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class _Writer:
    """The one thread that writes; it commits whatever is waiting together."""

    def __init__(self, path: str, durable: bool, clock: Clock, on_commit: Callable[[], None]):
        # The writer waits for another process's write lock itself (_begin).
        self._conn = _connect(path, durable=durable, busy_timeout_ms=0)
        self._durable = durable
        self._synced = durable
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._on_commit = on_commit
        self._requests: queue_module.SimpleQueue[_Request | None] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kvqueue-writer", daemon=True)
        self._thread.start()

    def submit(
        self, op: _Op, send: model.AtomicWrite | None = None, *, unsynced: bool = False
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests.put((op, future, send, unsynced))
        return future

    async def close(self) -> None:
        self._requests.put(None)
        await asyncio.to_thread(self._thread.join)
        self._conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._requests.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_GROUP:
                try:
                    item = self._requests.get_nowait()
                except queue_module.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            before = self._conn.total_changes
            outcomes = self._apply(batch)
            # Only a transaction that changed rows wakes waiters: an empty lease
            # waking the other consumers, whose empty leases wake it, would spin.
            changed = self._conn.total_changes != before
            self._loop.call_soon_threadsafe(self._settle, outcomes, changed)

    def _apply(self, batch: list[_Request]) -> list[_Outcome]:
        conn = self._conn
        outcomes: list[_Outcome] = []
        try:
            # Only a transaction of nothing but leases may skip the sync.
            self._sync(not all(request[3] for request in batch))
            _begin(conn)
        except sqlite3.Error as exc:
            error = errors.StorageError(f"could not start a write: {exc}")
            error.__cause__ = exc
            return [(future, None, error) for _, future, _, _ in batch]
        try:
            start = conn.execute(SQL_META_VERSION).fetchone()[0]
            txn = _Txn(conn, self._clock.now_ms(), start)
            if len(batch) == 1:
                op, future, _, _ = batch[0]
                return self._apply_alone(txn, start, op, future)
            at = 0
            while at < len(batch):
                end = at
                while end < len(batch) and batch[end][2] is not None:
                    end += 1
                if end - at > 1:
                    outcomes += _apply_sends(txn, batch[at:end])
                    at = end
                else:
                    op, future, _, _ = batch[at]
                    outcomes.append(_apply_one(txn, op, future))
                    at += 1
            if txn.version != start:
                conn.execute(SQL_META_SET_VERSION, (txn.version,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = errors.StorageError(f"the write failed and was rolled back: {exc}")
            error.__cause__ = exc
            return [(future, None, error) for _, future, _, _ in batch]
        return outcomes

    def _apply_alone(
        self, txn: _Txn, start: int, op: _Op, future: asyncio.Future[Any]
    ) -> list[_Outcome]:
        # One write in the transaction: its failure can undo the transaction, so it
        # needs no savepoint (two statements fewer, each a hand-over of the GIL).
        conn = txn.conn
        try:
            result = op(txn)
        except CheckFailed:
            conn.execute("ROLLBACK")
            return [(future, None, None)]
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(future, None, _translate(exc))]
        if txn.version != start:
            conn.execute(SQL_META_SET_VERSION, (txn.version,))
        conn.execute("COMMIT")
        return [(future, result, None)]

    def _sync(self, synced: bool) -> None:
        """Have the next commit wait for the disk (FULL) or not (NORMAL); SQLite takes
        the setting only outside a transaction.

        A transaction of leases alone commits without the sync: a lease lost to a
        power cut only means its messages are delivered again, as the expiry of a
        crashed consumer's lease would; and the next synced commit's sync takes the
        lease's WAL frames to disk with its own (the WAL is appended to in order).
        """
        if not self._durable or synced == self._synced:
            return
        self._conn.execute(f"PRAGMA synchronous = {'FULL' if synced else 'NORMAL'}")
        self._synced = synced

    def _settle(self, outcomes: list[_Outcome], changed: bool) -> None:
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
        if changed:
            self._on_commit()


def _begin(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another process's write lock in steps that start
    at a tenth of a millisecond: SQLite's own wait sleeps 1, then 2, then 5 ms, and
    another process's commit (one fsync) is usually done well before the first."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    pause = _BUSY_FIRST_PAUSE_S
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            # The low byte is the primary code: SQLITE_BUSY_RECOVERY and kin are waits too.
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _BUSY_MAX_PAUSE_S)


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, errors.KvQueueError):
        return exc
    if isinstance(exc, sqlite3.Error):
        error = errors.StorageError(str(exc))
        error.__cause__ = exc
        return error
    return exc


class SqliteStorage(Waits):
    """A database in one SQLite file (see the module docstring for how it writes)."""

    clock: Clock

    def __init__(self, path: str, *, clock: Clock | None = None) -> None:
        """Prefer :meth:`open`, which also creates the schema."""
        self.clock = clock or SystemClock()
        self._temp_dir: str | None = None
        durable = True
        if path == ":memory:":
            # A throwaway file, not SQLite's per-connection memory database, so
            # the reader threads see the writer's data: the same code path as a
            # real file, just without fsync and deleted on close.
            self._temp_dir = tempfile.mkdtemp(prefix="kvqueue-")
            path = os.path.join(self._temp_dir, "memory.db")
            durable = False
        self.path = path
        self._durable = durable
        self._closed = False
        self._signal = Signal()
        self._stats = SharedRead(self._read_stats)
        self._readers: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._reader_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(_READER_THREADS, thread_name_prefix="kvqueue-reader")
        self._writer: _Writer | None = None
        self._watch: FileWatch | None = None
        #: A connection that only reads PRAGMA data_version (see _wal_written).
        self._versions: sqlite3.Connection | None = None
        self._seen_version = 0
        self._settling: asyncio.TimerHandle | None = None
        #: The schema version before and after :meth:`open` migrated the file.
        self.schema_versions = (0, 0)

    @classmethod
    async def open(cls, path: str, *, clock: Clock | None = None) -> SqliteStorage:
        """Open (creating if needed) the database file at ``path`` or ``:memory:``."""
        storage = cls(path, clock=clock)
        try:
            storage.schema_versions = await asyncio.to_thread(storage._prepare)
            storage._versions = sqlite3.connect(storage.path, isolation_level=None)
            storage._seen_version = storage._data_version()
        except BaseException as exc:
            storage._pool.shutdown()
            if storage._versions is not None:
                storage._versions.close()
            if isinstance(exc, sqlite3.Error):
                raise errors.StorageError(f"cannot open {path!r}: {exc}") from exc
            raise
        storage._writer = _Writer(storage.path, storage._durable, storage.clock, storage._committed)
        storage._watch = FileWatch(storage.path + "-wal", storage._wal_written)
        return storage

    def _data_version(self) -> int:
        assert self._versions is not None
        version: int = self._versions.execute("PRAGMA data_version").fetchone()[0]
        return version

    def _committed(self) -> None:
        """Our writer committed: wake the waiters, and take the commit's data_version
        as seen, so that watching it does not wake them once more (anything another
        process committed meanwhile is readable by then: this wake-up covers it)."""
        with contextlib.suppress(sqlite3.Error):
            self._seen_version = self._data_version()
        self._signal.fire()

    def _wal_written(self) -> None:
        """Someone wrote to the WAL: wake the waiters now, and again once the commit
        can be read.

        The write comes before the commit is visible (SQLite syncs the file first).
        A lease waits for the writer's lock, so it sees the commit anyway; a read
        (a queue's record, say) may not, and a waiter acting on it would then sleep
        until its next recheck. So ``data_version``, which moves with every commit
        of another connection, is also watched for a while after each write.
        """
        self._signal.fire()
        self._watch_version(_VISIBLE_TRIES)

    def _watch_version(self, tries: int) -> None:
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        if self._closed:
            return
        try:
            version = self._data_version()
        except sqlite3.Error:
            return
        if version != self._seen_version:
            self._seen_version = version
            self._signal.fire()
        if tries > 1:
            loop = asyncio.get_running_loop()
            self._settling = loop.call_later(_VISIBLE_RETRY_S, self._watch_version, tries - 1)

    def _prepare(self) -> tuple[int, int]:
        conn = _connect(self.path, durable=self._durable)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return _migrate(conn)
        finally:
            conn.close()

    # --- plumbing ---------------------------------------------------------------

    def _write(
        self, op: _Op, send: model.AtomicWrite | None = None, *, unsynced: bool = False
    ) -> asyncio.Future[Any]:
        if self._closed or self._writer is None:
            raise errors.DatabaseClosed()
        return self._writer.submit(op, send, unsynced=unsynced)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, durable=self._durable)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._reader_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection, int], T], *, small: bool = False) -> T:
        """Run ``fn`` in a read transaction: on a reader thread, or, if ``small`` (a
        few rows found by index), on the loop's own thread."""
        if self._closed:
            raise errors.DatabaseClosed()
        now = self.clock.now_ms()

        def run() -> T:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                return fn(conn, now)
            except sqlite3.Error as exc:
                raise errors.StorageError(f"read failed: {exc}") from exc
            finally:
                conn.execute("COMMIT")

        if small:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    # --- Storage ------------------------------------------------------------------

    async def read(self, ranges: Sequence[model.ReadRange]) -> list[list[model.StoredEntry]]:
        """See :meth:`kvqueue.storage.base.Storage.read`."""

        def run(conn: sqlite3.Connection, now: int) -> list[list[model.StoredEntry]]:
            out: list[list[model.StoredEntry]] = []
            for r in ranges:
                sql = SQL_KV_RANGE_REVERSE if r.reverse else SQL_KV_RANGE
                rows = conn.execute(sql, (r.start, r.end, now, r.limit)).fetchall()
                out.append(
                    [
                        model.StoredEntry(k, v, ValueEncoding(e), versionstamp(ver))
                        for k, v, e, ver in rows
                    ]
                )
            return out

        return await self._read(run, small=sum(r.limit for r in ranges) <= _SMALL_READ_ROWS)

    async def commit(self, write: model.AtomicWrite) -> model.Committed | None:
        """See :meth:`kvqueue.storage.base.Storage.commit`."""
        send = write if is_plain_send(write) else None
        result: model.Committed | None = await self._write(
            lambda txn: _apply_write(txn, write), send
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

        def op(txn: _Txn) -> list[model.LeasedMessage]:
            if max_leases is not None:
                held = txn.conn.execute(SQL_LEASES_HELD, (queue, lease, txn.now)).fetchone()[0]
                if held >= max_leases:
                    return []
            rows = txn.conn.execute(
                SQL_MESSAGE_LEASE, (lease, txn.now + lease_ms, queue, txn.now, limit)
            ).fetchall()
            rows.sort(key=lambda row: row[0])
            return [
                model.LeasedMessage(queue, mid, body, ctype, enq, attempts, lease, attrs)
                for _, mid, body, ctype, enq, attempts, attrs in rows
            ]

        leased: list[model.LeasedMessage] = await self._write(op, unsynced=True)
        return leased

    async def extend(self, leases: Sequence[model.LeaseCheck], *, lease_ms: int) -> set[str]:
        """See :meth:`kvqueue.storage.base.Storage.extend`."""

        def op(txn: _Txn) -> set[str]:
            held: set[str] = set()
            for lease in leases:
                cursor = txn.conn.execute(
                    SQL_MESSAGE_EXTEND, (txn.now + lease_ms, lease.message_id, lease.lease)
                )
                if cursor.rowcount:
                    held.add(lease.message_id)
            return held

        extended: set[str] = await self._write(op)
        return extended

    async def queues(self, names: Sequence[str] | None = None) -> list[model.QueueRecord]:
        """See :meth:`kvqueue.storage.base.Storage.queues`."""

        def run(conn: sqlite3.Connection, now: int) -> list[model.QueueRecord]:
            if names is None:
                return [queue_record(row) for row in conn.execute(SQL_QUEUE_ALL)]
            rows = (conn.execute(SQL_QUEUE_GET, (name,)).fetchone() for name in names)
            return [queue_record(row) for row in rows if row is not None]

        return await self._read(run, small=names is not None and len(names) <= _SMALL_READ_ROWS)

    async def stats(self, queue: str) -> model.QueueStats:
        """See :meth:`kvqueue.storage.base.Storage.stats`.

        Concurrent callers share reads (see :class:`~kvqueue.storage.common.SharedRead`):
        many consumers pulling at once each want their queue's metrics after their pull.
        """
        return await self._stats(queue)

    async def _read_stats(self, queue: str) -> model.QueueStats:
        def run(conn: sqlite3.Connection, now: int) -> model.QueueStats:
            stats = _queue_stats(conn, queue, now)
            if stats is None:
                raise errors.QueueNotFound(queue)
            return stats

        return await self._read(run, small=True)

    async def peek(self, queue: str, *, limit: int) -> list[model.StoredMessage]:
        """See :meth:`kvqueue.storage.base.Storage.peek`."""

        def run(conn: sqlite3.Connection, now: int) -> list[model.StoredMessage]:
            rows = conn.execute(SQL_MESSAGE_PEEK, (queue, limit)).fetchall()
            return [model.StoredMessage(queue, *row) for row in rows]

        return await self._read(run)

    async def browse(
        self, queue: str, *, limit: int, after: tuple[int, int] | None = None
    ) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
        """See :meth:`kvqueue.storage.base.Storage.browse`."""
        ms, seq = after if after is not None else (-(2**63), -(2**63))

        def run(
            conn: sqlite3.Connection, now: int
        ) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
            rows = conn.execute(SQL_MESSAGE_BROWSE, (queue, ms, ms, seq, limit)).fetchall()
            return [(model.StoredMessage(queue, *row[:-1]), (row[3], row[-1])) for row in rows]

        return await self._read(run)

    async def _next_visible(self, queue: str, since: int) -> int | None:
        found: int | None = await self._read(
            lambda conn, now: conn.execute(SQL_MESSAGE_NEXT_VISIBLE, (queue, since)).fetchone()[0],
            small=True,
        )
        return found

    async def purge_expired(self) -> int | None:
        """See :meth:`kvqueue.storage.base.Storage.purge_expired`."""

        def op(txn: _Txn) -> int | None:
            conn, now = txn.conn, txn.now
            conn.execute(SQL_KV_PURGE_EXPIRED, (now,))
            due = [conn.execute(SQL_KV_NEXT_EXPIRY).fetchone()[0]]
            for name, retention in conn.execute(SQL_QUEUE_RETAINED).fetchall():
                conn.execute(SQL_MESSAGES_EXPIRED, (name, now - retention))
                oldest = conn.execute(SQL_MESSAGE_OLDEST, (name,)).fetchone()[0]
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
        await asyncio.gather(*self._stats.tasks, return_exceptions=True)
        if self._watch is not None:
            self._watch.close()
        if self._settling is not None:
            self._settling.cancel()
        if self._versions is not None:
            self._versions.close()
        if self._writer is not None:
            await self._writer.close()
        self._pool.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._signal.fire()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)


def _queue_stats(conn: sqlite3.Connection, queue: str, now: int) -> model.QueueStats | None:
    """A queue's stats as ``conn`` sees them (None: no such queue)."""
    counters = conn.execute(SQL_QUEUE_COUNTERS, (queue,)).fetchone()
    if counters is None:
        return None
    backlog = conn.execute(SQL_QUEUE_BACKLOG, (queue,)).fetchone() or (0, 0)
    oldest = conn.execute(SQL_MESSAGE_OLDEST, (queue,)).fetchone()[0]
    in_flight = conn.execute(SQL_MESSAGE_IN_FLIGHT, (queue, now)).fetchone()[0]
    return model.QueueStats(backlog[0], backlog[1], oldest, in_flight, *counters)


def _apply_one(txn: _Txn, op: _Op, future: asyncio.Future[Any]) -> _Outcome:
    """One caller's write inside a group, in a savepoint of its own: its failure
    leaves the others' writes in place."""
    conn = txn.conn
    conn.execute("SAVEPOINT op")
    try:
        result = op(txn)
    except CheckFailed:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return future, None, None
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return future, None, _translate(exc)
    conn.execute("RELEASE op")
    return future, result, None


def _apply_sends(txn: _Txn, run: list[_Request]) -> list[_Outcome]:
    """Plain sends of many callers: one read of the queues' limits and one INSERT
    for all, each write still refused on its own (QueueNotFound, QueueFull) as if
    applied one after another. Should the INSERT fail, each is applied alone."""
    conn, now = txn.conn, txn.now
    writes = [write for _, _, write, _ in run if write is not None]
    names = json.dumps(list(dict.fromkeys(e.queue for w in writes for e in w.enqueues)))
    conn.execute("SAVEPOINT sends")
    try:
        found = conn.execute(SQL_QUEUES_LIMITS, (names,)).fetchall()
        refusals, rows = plan_enqueues(writes, found, now)
        _insert_messages(conn, [(q, i, b, c, now, v, a) for q, i, b, c, v, a in rows])
    except sqlite3.Error:
        conn.execute("ROLLBACK TO sends")
        conn.execute("RELEASE sends")
        return [_apply_one(txn, op, future) for op, future, _, _ in run]
    conn.execute("RELEASE sends")
    # The stats senders want, read once per queue for the whole run.
    asked = {w.stats_of for w in writes if w.stats_of}
    stats = {name: _queue_stats(conn, name, now) for name in asked}
    outcomes: list[_Outcome] = []
    for (_, future, write, _), refusal in zip(run, refusals, strict=True):
        if refusal is not None:
            outcomes.append((future, None, refusal))
            continue
        txn.version += 1
        own = None if write is None or write.stats_of is None else stats[write.stats_of]
        outcomes.append((future, model.Committed(versionstamp(txn.version), (), own), None))
    return outcomes


def _apply_write(txn: _Txn, write: model.AtomicWrite) -> model.Committed:
    conn, now = txn.conn, txn.now
    for check in write.checks:
        row = conn.execute(SQL_KV_LIVE_VERSION, (check.key, now)).fetchone()
        if check.versionstamp is None:
            passed = row is None
        else:
            passed = row is not None and row[0] == version_of(check.versionstamp)
        if not passed:
            raise CheckFailed
    for lease in write.lease_checks:
        if conn.execute(SQL_MESSAGE_LEASE_HELD, (lease.message_id, lease.lease)).fetchone() is None:
            raise CheckFailed
    txn.version += 1
    version = txn.version
    for change in write.queue_changes:
        _apply_queue_change(txn, change)
    for m in write.mutations:
        if m.kind is MutationKind.SET:
            expires = None if m.expire_in_ms is None else now + m.expire_in_ms
            conn.execute(SQL_KV_SET, (m.key, m.value, int(m.encoding), version, expires))
        elif m.kind is MutationKind.DELETE:
            conn.execute(SQL_KV_DELETE, (m.key,))
        else:
            current = conn.execute(SQL_KV_LIVE_VALUE, (m.key, now)).fetchone()
            combined = values.combine_u64(m.kind, current, m.value)
            # Like Deno, arithmetic clears an expiry set earlier.
            conn.execute(SQL_KV_SET, (m.key, combined, int(ValueEncoding.LE64), version, None))
    if write.enqueues:
        _apply_enqueues(txn, write.enqueues)
    settled = _apply_settlements(txn, write.settlements) if write.settlements else ()
    stats = None if write.stats_of is None else _queue_stats(conn, write.stats_of, now)
    return model.Committed(versionstamp(version), settled, stats)


def _apply_enqueues(txn: _Txn, enqueues: Sequence[model.Enqueue]) -> None:
    conn, now = txn.conn, txn.now
    limits: dict[str, tuple[int, int | None, int | None]] = {}
    rows: list[tuple[str, str, bytes, str, int, int, bytes | None]] = []
    for e in enqueues:
        queue = limits.get(e.queue)
        if queue is None:
            row = conn.execute(SQL_QUEUE_LIMITS, (e.queue,)).fetchone()
            if row is None:
                raise errors.QueueNotFound(e.queue)
            queue = limits[e.queue] = row
        delay = queue[0] if e.delay_ms is None else e.delay_ms
        rows.append((e.queue, e.message_id, e.body, e.content_type, now, now + delay, e.attributes))
    _insert_messages(conn, rows)
    # Checked once per queue after all inserts: the totals are what must fit.
    for name, (_, max_backlog, max_bytes) in limits.items():
        bounds = backlog_bounds(name, enqueues, max_backlog, max_bytes)
        if bounds == (None, None):
            continue
        count, size = conn.execute(SQL_QUEUE_BACKLOG, (name,)).fetchone()
        refusal = backlog_refusal(name, count, size, bounds)
        if refusal is not None:
            raise refusal


def _insert_messages(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert message rows in order (seq follows it), a few statements for all.

    One statement per row (or executemany) steps SQLite once a row, and each step
    lets go of Python's GIL and takes it back: with the event loop busy in another
    thread, that handover, not SQLite, is what the writer waits for.
    """
    start = 0
    for size in _INSERT_CHUNKS:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            sql = SQL_MESSAGE_INSERT + ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * size)
            conn.execute(sql, [value for row in chunk for value in row])
            start += size


def _apply_settlements(txn: _Txn, settlements: Sequence[model.Settlement]) -> tuple[bool, ...]:
    """Apply settlements in their order; for each, whether it found its message.

    Consecutive acks (and consecutive retries) are applied together, a statement
    per queue, which gives the same outcome as one by one: an ack only deletes, and
    a repeated id counts as found only the first time, as it would in order.
    Dead letters, rare, go one at a time.
    """
    settled: list[bool] = []
    for _, group in itertools.groupby(settlements, type):
        run = list(group)
        acks = [s for s in run if isinstance(s, model.Ack)]
        retries = [s for s in run if isinstance(s, model.Retry)]
        if acks:
            settled += _apply_acks(txn, acks)
        elif retries:
            settled += _apply_retries(txn, retries)
        else:
            settled += [_apply_dead_letter(txn, s) for s in run if isinstance(s, model.DeadLetter)]
    return tuple(settled)


def _apply_acks(txn: _Txn, acks: Sequence[model.Ack]) -> list[bool]:
    by_queue: dict[str, list[str]] = {}
    for a in acks:
        by_queue.setdefault(a.queue, []).append(a.message_id)
    deleted: set[tuple[str, str]] = set()
    for queue, ids in by_queue.items():
        listed = (queue, json.dumps(ids))
        found = json.loads(txn.conn.execute(SQL_MESSAGE_ACK_FOUND, listed).fetchone()[0])
        if found:
            txn.conn.execute(SQL_MESSAGE_ACK_MANY, listed)
            deleted.update((queue, mid) for mid in found)
    return [_take(deleted, (a.queue, a.message_id)) for a in acks]


def _apply_retries(txn: _Txn, retries: Sequence[model.Retry]) -> list[bool]:
    conn, now = txn.conn, txn.now
    if len({r.message_id for r in retries}) < len(retries):
        # The same message twice: the first retry decides (and its delay wins),
        # which only applying them in order gets right.
        return [settled for r in retries for settled in _apply_retries(txn, (r,))]
    groups: dict[tuple[str, str, int], list[str]] = {}
    for r in retries:
        groups.setdefault((r.queue, r.lease, r.delay_ms), []).append(r.message_id)
    released: set[tuple[str, str]] = set()
    counts: dict[str, int] = {}
    for (queue, lease, delay), ids in groups.items():
        listed = (queue, lease, json.dumps(ids))
        found = json.loads(conn.execute(SQL_MESSAGE_RETRY_FOUND, listed).fetchone()[0])
        if found:
            conn.execute(SQL_MESSAGE_RETRY_MANY, (now + delay, *listed))
            released.update((queue, mid) for mid in found)
            counts[queue] = counts.get(queue, 0) + len(found)
    for queue, count in counts.items():
        conn.execute(SQL_QUEUE_RETRIED, (count, queue))
    return [(r.queue, r.message_id) in released for r in retries]


def _take(found: set[tuple[str, str]], key: tuple[str, str]) -> bool:
    if key in found:
        found.discard(key)
        return True
    return False


def _apply_dead_letter(txn: _Txn, s: model.DeadLetter) -> bool:
    conn, now = txn.conn, txn.now
    if s.to_queue is None:
        done = conn.execute(SQL_MESSAGE_DROP, (s.message_id, s.lease, s.queue)).rowcount
    else:
        if conn.execute(SQL_QUEUE_LIMITS, (s.to_queue,)).fetchone() is None:
            raise errors.QueueNotFound(s.to_queue)
        moved = (s.to_queue, now, s.message_id, s.lease, s.queue)
        done = conn.execute(SQL_MESSAGE_MOVE, moved).rowcount
    if done:
        conn.execute(SQL_QUEUE_DEAD_LETTERED, (s.queue,))
    return done > 0


def _apply_queue_change(txn: _Txn, change: model.QueueChange) -> None:
    conn, now = txn.conn, txn.now
    if isinstance(change, model.CreateQueue):
        row = (change.name, change.queue_id, now, now, *settings_row(change.settings))
        if conn.execute(SQL_QUEUE_INSERT, row).rowcount == 0 and not change.if_absent:
            raise errors.QueueExists(change.name)
        return
    if isinstance(change, model.UpdateQueue):
        current = conn.execute(SQL_QUEUE_SETTINGS, (change.name,)).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        if tuple(current) != settings_row(change.expect):
            raise CheckFailed
        conn.execute(SQL_QUEUE_UPDATE, (now, *settings_row(change.settings), change.name))
        return
    if isinstance(change, model.SetConsumer):
        current = conn.execute(SQL_QUEUE_CONSUMER, (change.name,)).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        if current[0] != change.expect:
            raise CheckFailed
        conn.execute(SQL_QUEUE_SET_CONSUMER, (change.consumer, now, change.name))
        return
    if conn.execute(SQL_QUEUE_LIMITS, (change.name,)).fetchone() is None:
        raise errors.QueueNotFound(change.name)
    conn.execute(SQL_QUEUE_PURGE, (change.name,))
    if isinstance(change, model.DeleteQueue):
        conn.execute(SQL_QUEUE_DELETE, (change.name,))
        conn.execute(SQL_BACKLOG_DELETE, (change.name,))

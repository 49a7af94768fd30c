"""AsyncDatabase: the one core every face of kvqueue runs on.

The sync ``Database`` (kvqueue.sync) drives this same object from its own event
loop thread; nothing here is written twice.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

from kvqueue import errors, limits, model, values
from kvqueue.atomic import KV_QUEUE, AsyncAtomicOperation, kv_enqueue
from kvqueue.clock import Clock
from kvqueue.delivery import in_handler
from kvqueue.keys import Key, encode_read_key, successor
from kvqueue.kv_queue import Listener
from kvqueue.listing import AsyncListIterator, Pager
from kvqueue.queues import AsyncQueue, AsyncQueues
from kvqueue.remote.http import Server, is_url
from kvqueue.storage import Storage, open_storage
from kvqueue.tokens import AsyncTokens
from kvqueue.waiting import first_of

logger = logging.getLogger("kvqueue")

# Longest pause of the expiry sweeper while something will expire, and its
# pause when nothing will (a write here that adds something wakes it; one in
# another process does not). Reads skip expired keys, so for keys sweeping
# only reclaims space; messages past their queue's retention are deleted
# within _SWEEP_MAX_MS.
_SWEEP_MAX_MS = 60_000
_SWEEP_IDLE_MS = 3_600_000


class AsyncDatabase:
    """A KV keyspace and its queues, for asyncio code. Open it with ``kvqueue.open_async``."""

    def __init__(
        self,
        storage: Storage,
        *,
        kv_queue_backlog: int = limits.DEFAULT_KV_QUEUE_BACKLOG,
        lease_ms: int = limits.DEFAULT_LEASE_MS,
        queues: AsyncQueues | None = None,
        tokens: AsyncTokens | None = None,
        server: Server | None = None,
    ) -> None:
        if kv_queue_backlog < 1:
            raise errors.InvalidOption(f"kv_queue_backlog is at least 1, got {kv_queue_backlog}")
        if lease_ms < 30:
            raise errors.InvalidOption(f"lease_ms is at least 30, got {lease_ms}")
        self._storage = storage
        self._kv_queue_backlog = kv_queue_backlog
        self._lease_ms = lease_ms
        self._listener: Listener | None = None
        self._listener_done = asyncio.Event()
        self._listener_done.set()
        self._closing = False
        self._finishing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._close_callbacks: list[Callable[[], None]] = []
        self._expiry_added = asyncio.Event()
        self._sweeper_idle = False
        # A database on a server reaches its named queues through the server's
        # Cloudflare API (kvqueue.remote.queues), not through the storage.
        self._server = server
        self._queues = queues if queues is not None else AsyncQueues(self)
        self._tokens = tokens if tokens is not None else AsyncTokens(self)
        self._sweeper = asyncio.create_task(self._sweep_expired())

    @property
    def clock(self) -> Clock:
        """The clock of the underlying storage."""
        return self._storage.clock

    @property
    def storage(self) -> Storage:
        """The storage this database runs on (the boundary of :mod:`kvqueue.storage.base`)."""
        return self._storage

    @property
    def server(self) -> Server | None:
        """The kvqueue server this database is on (``kvqueue.open("http://…")``), or None."""
        return self._server

    @property
    def lease_ms(self) -> int:
        """How long a consumer holds a message before it may be redelivered."""
        return self._lease_ms

    @property
    def queues(self) -> AsyncQueues:
        """Named-queue management: create, list, get, update, delete, pause, ..."""
        self._ensure_open()
        return self._queues

    def queue(self, name: str) -> AsyncQueue:
        """The named queue ``name``, to send to and pull from (it must be created first)."""
        self._ensure_open()
        return self._queues.queue(name)

    @property
    def tokens(self) -> AsyncTokens:
        """The server's bearer tokens: create, list, revoke."""
        self._ensure_open()
        return self._tokens

    def queues_of(self, account: str) -> AsyncQueues:
        """The named queues of one account (:mod:`kvqueue.accounts`); ``db.queues``
        is the default account's."""
        self._ensure_open()
        if account == self._queues.account:
            return self._queues
        if self._server is not None:
            raise errors.Forbidden(
                f"this database is the server's account {self._queues.account!r}; "
                f"a token of {account!r} reaches that one"
            )
        return AsyncQueues(self, account)

    def _ensure_open(self) -> None:
        if self._closing:
            raise errors.DatabaseClosed()

    # --- KV -----------------------------------------------------------------

    async def get(self, key: Key) -> model.Entry:
        """The entry at ``key``: its value and versionstamp, or None for both."""
        (entry,) = await self.get_many([key])
        return entry

    async def get_many(self, keys: Iterable[Key]) -> list[model.Entry]:
        """The entries at several keys, read from one consistent snapshot."""
        self._ensure_open()
        wanted = [tuple(k) if isinstance(k, list) else k for k in keys]
        if len(wanted) > limits.MAX_GET_MANY_KEYS:
            raise errors.LimitExceeded("MAX_GET_MANY_KEYS", limits.MAX_GET_MANY_KEYS, len(wanted))
        encoded = [encode_read_key(k) for k in wanted]
        pages = await self._storage.read([model.ReadRange(e, successor(e), 1) for e in encoded])
        return [
            values.entry_from_stored(k, page[0] if page else None)
            for k, page in zip(wanted, pages, strict=True)
        ]

    async def set(
        self, key: Key, value: Any, *, expire_in: float | None = None
    ) -> model.CommitResult:
        """Set ``key`` to ``value``; ``expire_in`` milliseconds later it is gone."""
        return await self.atomic().set(key, value, expire_in=expire_in).commit()

    async def delete(self, key: Key) -> None:
        """Delete ``key`` (nothing happens if it is absent)."""
        await self.atomic().delete(key).commit()

    def list(
        self,
        prefix: Key | None = None,
        start: Key | None = None,
        end: Key | None = None,
        *,
        limit: int | None = None,
        reverse: bool = False,
        cursor: str | None = None,
        batch_size: int | None = None,
    ) -> AsyncListIterator:
        """Entries in key order (``async for``); resumable from the iterator's ``.cursor``."""
        self._ensure_open()
        return AsyncListIterator(
            Pager(
                self._storage,
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                reverse=reverse,
                cursor=cursor,
                batch_size=batch_size,
            )
        )

    async def watch(self, keys: Iterable[Key]) -> AsyncGenerator[builtins.list[model.Entry], None]:
        """Yield the entries of ``keys`` now, then again whenever one of them changes."""
        self._ensure_open()
        wanted = [tuple(k) if isinstance(k, list) else k for k in keys]
        if len(wanted) > limits.MAX_WATCHED_KEYS:
            raise errors.TooManyWatchedKeys(
                "MAX_WATCHED_KEYS", limits.MAX_WATCHED_KEYS, len(wanted)
            )
        stream = self._storage.watch([encode_read_key(k) for k in wanted])
        try:
            while not self._closing:
                following = asyncio.ensure_future(anext(stream))
                await first_of(asyncio.shield(following), self._closed.wait())
                if not following.done():
                    following.cancel()
                    return
                try:
                    stored = following.result()
                except (StopAsyncIteration, errors.DatabaseClosed):
                    return
                yield [values.entry_from_stored(k, e) for k, e in zip(wanted, stored, strict=True)]
        finally:
            await stream.aclose()

    def atomic(self) -> AsyncAtomicOperation:
        """Start an atomic operation: ``.check()``, ``.set()``, ..., then ``.commit()``."""
        self._ensure_open()
        return AsyncAtomicOperation(self.commit_write, max_backlog=self._kv_queue_backlog)

    @property
    def kv_queue_backlog(self) -> int:
        """Most undelivered KV-queue messages before enqueue raises QueueFull."""
        return self._kv_queue_backlog

    async def commit_write(self, write: model.AtomicWrite) -> model.CommitResult:
        """Commit a prepared, validated AtomicWrite (what ``atomic().commit()`` does)."""
        committed = await self.commit_stored(write)
        if committed is None:
            return model.CommitResult(ok=False)
        return model.CommitResult(
            ok=True, versionstamp=values.versionstamp_hex(committed.versionstamp)
        )

    async def commit_stored(self, write: model.AtomicWrite) -> model.Committed | None:
        """:meth:`commit_write` answered as the storage answers (None: a check failed)."""
        self._ensure_open()
        committed = await self._storage.commit(write)
        if committed is not None and (
            any(m.expire_in_ms is not None for m in write.mutations)
            or (self._sweeper_idle and any(e.queue != KV_QUEUE for e in write.enqueues))
        ):
            self._expiry_added.set()
        return committed

    # --- The KV queue --------------------------------------------------------

    async def enqueue(
        self,
        value: Any,
        *,
        delay: float | None = None,
        keys_if_undelivered: Iterable[Key] | None = None,
        backoff_schedule: Iterable[float] | None = None,
    ) -> model.CommitResult:
        """Put ``value`` on the KV queue (Deno's ``kv.enqueue``); times in milliseconds.

        Raises:
            QueueFull: the KV queue already holds its backlog limit of messages.
        """
        self._ensure_open()
        message = kv_enqueue(
            value,
            delay=delay,
            keys_if_undelivered=keys_if_undelivered,
            backoff_schedule=backoff_schedule,
            max_backlog=self._kv_queue_backlog,
        )
        return await self.commit_write(model.AtomicWrite(enqueues=(message,)))

    async def listen_queue(
        self, handler: Callable[[Any], Any], *, concurrency: int | None = None
    ) -> None:
        """Run ``handler`` on every KV-queue message until the database is closed.

        ``handler`` may be a plain function or a coroutine function. Returning
        acknowledges the message; raising retries it per its backoff schedule.
        Up to ``concurrency`` handlers run at once. Coroutine handlers run on the
        event loop in a few tasks the listener keeps, one per handler running at
        once, not a task per message: a context variable a handler sets and does not
        reset is seen by the next handler that task runs.

        Raises:
            ListenerAlreadyRunning: another listen_queue is running on this database.
            DatabaseClosed: the database is closed.
        """
        self._ensure_open()
        if self._listener is not None:
            raise errors.ListenerAlreadyRunning()
        self._listener = Listener(
            self._storage,
            handler,
            concurrency=concurrency or limits.DEFAULT_LISTEN_CONCURRENCY,
            lease_ms=self._lease_ms,
        )
        self._listener_done.clear()
        try:
            await self._listener.run()
        finally:
            self._listener = None
            self._listener_done.set()

    # --- Lifecycle --------------------------------------------------------------

    async def _sweep_expired(self) -> None:
        while True:
            try:
                remaining = await self._storage.purge_expired()
            except errors.DatabaseClosed:
                return
            except errors.KvQueueError:
                logger.exception("could not purge expired keys and messages")
                remaining = None
            self._sweeper_idle = remaining is None
            pause = _SWEEP_IDLE_MS if remaining is None else min(remaining + 1, _SWEEP_MAX_MS)
            self._expiry_added.clear()
            await first_of(self._storage.clock.sleep(pause / 1000), self._expiry_added.wait())

    async def close(self) -> None:
        """Stop listening, let running handlers settle, and close the storage.

        Called from inside a handler, it only starts the shutdown: the handler
        cannot wait for itself to finish.
        """
        await self.shutdown(wait=not in_handler.get())

    async def shutdown(self, *, wait: bool) -> None:
        """Start closing; with ``wait``, return only once everything is closed."""
        if not self._closing:
            self._closing = True
            if self._listener is not None:
                self._listener.stop()
            self._finishing = asyncio.get_running_loop().create_task(self._finish_close())
        if wait:
            await self._closed.wait()

    async def _finish_close(self) -> None:
        try:
            await self._listener_done.wait()
            self._sweeper.cancel()
            await asyncio.wait({self._sweeper})
            await self._storage.close()
        finally:
            self._closed.set()
            for callback in self._close_callbacks:
                callback()

    def on_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) once the database is closed."""
        self._close_callbacks.append(callback)

    async def wait_closed(self) -> None:
        """Return once the database has been closed completely."""
        await self._closed.wait()

    async def __aenter__(self) -> AsyncDatabase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_async(
    path: str = ":memory:",
    *,
    token: str | None = None,
    clock: Clock | None = None,
    kv_queue_backlog: int = limits.DEFAULT_KV_QUEUE_BACKLOG,
    lease_ms: int = limits.DEFAULT_LEASE_MS,
) -> AsyncDatabase:
    """Open a database for asyncio code.

    Args:
        path: a SQLite file (``app.db``, ``sqlite:///app.db``), ``:memory:``, a
            PostgreSQL URL (``postgresql://…``) or a kvqueue server (``http://…``).
        token: the bearer token of a kvqueue server (default: env ``KVQUEUE_TOKEN``).
        clock: where time comes from; tests pass a ``FakeClock``.
        kv_queue_backlog: most undelivered KV-queue messages before ``QueueFull``.
        lease_ms: how long a handler holds a message before it may be redelivered
            (renewed while the handler runs).
    """
    if is_url(path):
        from kvqueue.remote.database import connect

        return await connect(
            path, token=token, clock=clock, kv_queue_backlog=kv_queue_backlog, lease_ms=lease_ms
        )
    storage = await open_storage(path, clock=clock)
    try:
        return AsyncDatabase(storage, kv_queue_backlog=kv_queue_backlog, lease_ms=lease_ms)
    except BaseException:
        await storage.close()
        raise

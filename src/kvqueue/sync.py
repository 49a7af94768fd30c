"""Database: the synchronous face of AsyncDatabase.

A Database owns an event loop on a thread of its own and runs the async core
there; each method here is generated from its async twin by one helper
(:func:`_blocking`), so the two can never drift apart.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from kvqueue import errors, limits, model
from kvqueue.atomic import AtomicOperation
from kvqueue.clock import Clock
from kvqueue.database import AsyncDatabase, open_async
from kvqueue.delivery import in_handler
from kvqueue.keys import Key
from kvqueue.listing import ListIterator
from kvqueue.queues import AsyncQueue, AsyncQueues
from kvqueue.tokens import AsyncTokens

P = ParamSpec("P")
T = TypeVar("T")


async def _invoke(fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
    return await fn(*args, **kwargs)


class _Portal:
    """An event loop on its own thread, and a way for other threads to run coroutines on it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopped = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._thread = threading.Thread(target=self._serve, name="kvqueue-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with self._lock:
                self._stopped = True
            # Hand over results that finished just before the stop, then fail the rest.
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            with self._lock:
                pending, self._pending = self._pending, set()
            for future in pending:
                if not future.done():
                    future.set_exception(errors.DatabaseClosed())
            self._loop.close()

    def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync kvqueue call cannot be made from its own event loop")
        with self._lock:
            if self._stopped:
                raise errors.DatabaseClosed()
            future = asyncio.run_coroutine_threadsafe(_invoke(fn, args, kwargs), self._loop)
            self._pending.add(future)
        try:
            return future.result()
        finally:
            with self._lock:
                self._pending.discard(future)

    def stop(self) -> None:
        """Stop the loop after the callbacks now due (from any thread)."""
        self._loop.call_soon_threadsafe(self._loop.stop)

    def join(self) -> None:
        """Wait for the loop thread to end."""
        if threading.current_thread() is not self._thread:
            self._thread.join()


A = TypeVar("A")


class _Facade:
    """A sync object that runs the methods of its async twin ``_async`` on ``_portal``."""

    _portal: _Portal
    _async: Any


def _blocking(
    method: Callable[Concatenate[A, P], Awaitable[T]],
) -> Callable[Concatenate[Any, P], T]:
    name = method.__name__

    def call(self: _Facade, *args: P.args, **kwargs: P.kwargs) -> T:
        # Looked up on the object, not taken from the class: a remote database's
        # queues are another class with the same methods.
        bound: Callable[P, Awaitable[T]] = getattr(self._async, name)
        return self._portal.run(bound, *args, **kwargs)

    return cast("Callable[Concatenate[Any, P], T]", functools.wraps(method)(call))


class Queues(_Facade):
    """Named-queue management: ``db.queues`` (the methods of :class:`AsyncQueues`)."""

    def __init__(self, portal: _Portal, queues: AsyncQueues) -> None:
        self._portal = portal
        self._async = queues
        self.account = queues.account

    def queue(self, name: str) -> Queue:
        """The queue ``name`` of this account, to send to and pull from."""
        return Queue(self._portal, self._async.queue(name))

    create = _blocking(AsyncQueues.create)
    list = _blocking(AsyncQueues.list)
    get = _blocking(AsyncQueues.get)
    update = _blocking(AsyncQueues.update)
    delete = _blocking(AsyncQueues.delete)
    pause = _blocking(AsyncQueues.pause)
    resume = _blocking(AsyncQueues.resume)
    purge = _blocking(AsyncQueues.purge)
    last_purge = _blocking(AsyncQueues.last_purge)
    metrics = _blocking(AsyncQueues.metrics)
    peek = _blocking(AsyncQueues.peek)
    browse_page = _blocking(AsyncQueues.browse_page)
    get_consumer = _blocking(AsyncQueues.get_consumer)
    add_consumer = _blocking(AsyncQueues.add_consumer)
    update_consumer = _blocking(AsyncQueues.update_consumer)
    remove_consumer = _blocking(AsyncQueues.remove_consumer)


class Queue(_Facade):
    """One named queue: ``db.queue(name)`` (the methods of :class:`AsyncQueue`)."""

    def __init__(self, portal: _Portal, queue: AsyncQueue) -> None:
        self._portal = portal
        self._async = queue
        self.name = queue.name

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    send = _blocking(AsyncQueue.send)
    send_batch = _blocking(AsyncQueue.send_batch)
    metrics = _blocking(AsyncQueue.metrics)
    pull = _blocking(AsyncQueue.pull)
    ack = _blocking(AsyncQueue.ack)
    extend = _blocking(AsyncQueue.extend)
    purge_messages = _blocking(AsyncQueue.purge_messages)


class Tokens(_Facade):
    """The server's bearer tokens: ``db.tokens`` (the methods of :class:`AsyncTokens`)."""

    def __init__(self, portal: _Portal, tokens: AsyncTokens) -> None:
        self._portal = portal
        self._async = tokens

    create = _blocking(AsyncTokens.create)
    list = _blocking(AsyncTokens.list)
    revoke = _blocking(AsyncTokens.revoke)
    authenticate = _blocking(AsyncTokens.authenticate)


class Database(_Facade):
    """A KV keyspace and its queues. Open it with ``kvqueue.open``; close it or use ``with``."""

    def __init__(self, portal: _Portal, database: AsyncDatabase) -> None:
        self._portal = portal
        self._async: AsyncDatabase = database
        self._queues = Queues(portal, database.queues)
        self._tokens = Tokens(portal, database.tokens)
        database.on_closed(portal.stop)

    @property
    def queues(self) -> Queues:
        """Named-queue management: create, list, get, update, delete, pause, ..."""
        self._async._ensure_open()
        return self._queues

    def queue(self, name: str) -> Queue:
        """The named queue ``name``, to send to and pull from (it must be created first)."""
        return Queue(self._portal, self._async.queue(name))

    @property
    def tokens(self) -> Tokens:
        """The server's bearer tokens: create, list, revoke."""
        self._async._ensure_open()
        return self._tokens

    def queues_of(self, account: str) -> Queues:
        """The named queues of one account; ``db.queues`` is the default account's."""
        return Queues(self._portal, self._async.queues_of(account))

    get = _blocking(AsyncDatabase.get)
    get_many = _blocking(AsyncDatabase.get_many)
    set = _blocking(AsyncDatabase.set)
    delete = _blocking(AsyncDatabase.delete)
    enqueue = _blocking(AsyncDatabase.enqueue)

    def listen_queue(
        self, handler: Callable[[Any], Any], *, concurrency: int | None = None
    ) -> None:
        """Run ``handler`` on every KV-queue message; blocks until the database is closed.

        ``handler`` may be a plain function (run on a thread pool) or a coroutine
        function. Returning acknowledges the message; raising retries it per its
        backoff schedule. Up to ``concurrency`` handlers run at once.
        """
        self._portal.run(self._async.listen_queue, handler, concurrency=concurrency)
        # It returned because the database is closing: leave once it is closed.
        self._portal.join()

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
    ) -> ListIterator:
        """Entries in key order; resumable from the iterator's ``.cursor``."""
        pages = self._async.list(
            prefix, start, end, limit=limit, reverse=reverse, cursor=cursor, batch_size=batch_size
        )
        return ListIterator(pages.pager, self._portal.run)

    def watch(self, keys: Iterable[Key]) -> Iterator[builtins.list[model.Entry]]:
        """Yield the entries of ``keys`` now, then again whenever one of them changes."""
        stream = self._async.watch(builtins.list(keys))
        try:
            while True:
                try:
                    yield self._portal.run(stream.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(errors.DatabaseClosed):
                self._portal.run(stream.aclose)

    def atomic(self) -> AtomicOperation:
        """Start an atomic operation: ``.check()``, ``.set()``, ..., then ``.commit()``."""
        return AtomicOperation(
            lambda write: self._portal.run(self._async.commit_write, write),
            max_backlog=self._async.kv_queue_backlog,
        )

    def close(self) -> None:
        """Stop listening, let running handlers settle, close the storage.

        Called from inside a handler, it starts the shutdown and returns; the
        ``listen_queue`` call returns once everything is closed.
        """
        from_handler = in_handler.get()
        with contextlib.suppress(errors.DatabaseClosed):
            self._portal.run(self._async.shutdown, wait=not from_handler)
        if not from_handler:
            self._portal.join()

    @property
    def clock(self) -> Clock:
        """The clock of the underlying storage."""
        return self._async.clock

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(
    path: str = ":memory:",
    *,
    token: str | None = None,
    clock: Clock | None = None,
    kv_queue_backlog: int = limits.DEFAULT_KV_QUEUE_BACKLOG,
    lease_ms: int = limits.DEFAULT_LEASE_MS,
) -> Database:
    """Open a database; the arguments are those of :func:`kvqueue.open_async`."""
    portal = _Portal()
    try:
        database = portal.run(
            open_async,
            path,
            token=token,
            clock=clock,
            kv_queue_backlog=kv_queue_backlog,
            lease_ms=lease_ms,
        )
    except BaseException:
        portal.stop()
        portal.join()
        raise
    return Database(portal, database)

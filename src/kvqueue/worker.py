"""Push consumers: ``kvqueue.Worker`` runs handlers on batches of named queues.

::

    worker = kvqueue.Worker("app.db")

    @worker.consumer("emails", max_batch_size=10, max_batch_timeout=5)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        for msg in batch.messages:
            ...

    worker.run()   # or: kvqueue worker myapp:worker

Starting, a worker registers itself as the consumer of each of its queues (or
takes over the settings if the same worker is registered already; any other
consumer there is an error). Many processes may run the same worker on one
database: ``max_concurrency`` bounds their batches together. Each queue is
consumed by one :class:`kvqueue.delivery.Engine`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kvqueue import errors, limits, model
from kvqueue.accounts import DEFAULT_ACCOUNT, stored_name
from kvqueue.batch import MessageBatch
from kvqueue.consumers import Consumer, RetryPolicy, load_consumer, make_consumer
from kvqueue.database import AsyncDatabase
from kvqueue.delivery import Decision, Engine, HandlerRunner, Source, StorageSource
from kvqueue.messages import check_name
from kvqueue.remote import Server, is_url
from kvqueue.remote.worker import RemoteQueues

if TYPE_CHECKING:
    from kvqueue.sync import Database

logger = logging.getLogger("kvqueue")

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(slots=True)
class _Registration:
    queue: str
    consumer: Consumer
    handler: Callable[[MessageBatch], Any]


def _default_name(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", None) or "handler"
    if module == "__main__":
        # The same code run as a script or imported by `kvqueue worker` is one worker.
        main = sys.modules["__main__"]
        module = Path(getattr(main, "__file__", None) or "main").stem
    return f"{module}.{getattr(handler, '__qualname__', type(handler).__name__)}"


class _LocalQueues:
    """A Worker's view of its queues in a database it opened (``remote.RemoteQueues``
    is the same over a server)."""

    def __init__(self, db: AsyncDatabase, account: str) -> None:
        self._db = db
        self._account = account
        self.lease_ms = db.lease_ms
        #: Per queue, the storage's queue_changes when its record last let us
        #: consume: until that moves, the record still does (no read per batch).
        self._open_at: dict[str, int] = {}

    async def claim(self, queue: str, consumer: Consumer) -> Consumer:
        return await self._db.queues_of(self._account).claim_worker(queue, consumer)

    def source(self, queue: str, consumer: Consumer) -> Source:
        return StorageSource(
            self._db.storage,
            stored_name(self._account, queue),
            RetryPolicy(consumer),
            lease_ms=self._db.lease_ms,
            max_leases=consumer.max_concurrency,
        )

    async def refusal(self, queue: str, consumer: Consumer) -> str | None:
        seen = self._db.storage.queue_changes
        if seen is not None and self._open_at.get(queue) == seen:
            return None
        self._open_at.pop(queue, None)
        records = await self._db.storage.queues([stored_name(self._account, queue)])
        if not records:
            return "it was deleted"
        current = load_consumer(records[0].consumer)
        if current is None or current.consumer_id != consumer.consumer_id:
            return "its consumer was removed or replaced"
        if records[0].settings.paused:
            return "delivery is paused"
        if seen is not None:
            self._open_at[queue] = seen
        return None

    async def close(self) -> None:
        pass


class Worker:
    """Runs push-consumer handlers over named queues.

    Args:
        database: a ``Database``, an ``AsyncDatabase``, a path to open, or the URL
            of a kvqueue server (``http://host:8787``) to consume through.
        name: the worker's name, stored as its consumers' ``script_name``.
            Default: the handler's module and name (``myapp.handle``).
        account: whose queues to consume (default: the database's default
            account; through a server, the token's account).
        token: a server's bearer token (default: env ``KVQUEUE_TOKEN``).
    """

    def __init__(
        self,
        database: Database | AsyncDatabase | str = ":memory:",
        *,
        name: str | None = None,
        account: str | None = None,
        token: str | None = None,
    ) -> None:
        self._database = database
        self.name = name
        self.account = account
        self._token = token
        self._registrations: list[_Registration] = []
        self._engines: list[Engine] = []
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def consumer(
        self,
        queue: str | Iterable[str],
        *,
        max_batch_size: int = limits.DEFAULT_BATCH_SIZE,
        max_batch_timeout: float = limits.DEFAULT_BATCH_TIMEOUT_SECONDS,
        max_retries: int = limits.DEFAULT_MAX_RETRIES,
        retry_delay: float = 0,
        dead_letter_queue: str | None = None,
        max_concurrency: int | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function as the consumer of ``queue`` (one or several).

        The handler takes a :class:`MessageBatch` and may be a plain function
        (run on a thread) or a coroutine function. Coroutine handlers run in a
        few tasks the Worker keeps, one per batch being handled at once, so a context
        variable a handler sets and does not reset is seen by the next batch that
        task runs. The settings are checked here; see :class:`kvqueue.Consumer`
        for their ranges.
        """
        queues = [queue] if isinstance(queue, str) else list(queue)
        for name in queues:
            check_name(name)

        def register(handler: H) -> H:
            consumer = make_consumer(
                "worker",
                script_name=self.name or _default_name(handler),
                dead_letter_queue=dead_letter_queue,
                batch_size=max_batch_size,
                max_batch_timeout=max_batch_timeout,
                max_retries=max_retries,
                retry_delay=retry_delay,
                max_concurrency=max_concurrency,
            )
            for name in queues:
                if any(r.queue == name for r in self._registrations):
                    raise errors.ConsumerExists(name, "another handler of this worker")
                self._registrations.append(_Registration(name, consumer, handler))
            return handler

        return register

    def use_database(
        self, database: Database | AsyncDatabase | str, *, token: str | None = None
    ) -> None:
        """Consume ``database`` (or a server URL, with ``token``) instead of the one
        given at construction (before running)."""
        self._database = database
        if token is not None:
            self._token = token

    @property
    def queues(self) -> list[str]:
        """The queues this worker consumes."""
        return [r.queue for r in self._registrations]

    # --- running ------------------------------------------------------------------

    async def serve(self, database: AsyncDatabase | None = None) -> None:
        """Consume every registered queue until :meth:`stop`; then let the batches in
        flight finish and settle, and return."""
        if database is None and is_url(self._database):
            server = Server(str(self._database), self._token, account=self.account)
            lease_ms = limits.DEFAULT_LEASE_MS
            queues: _LocalQueues | RemoteQueues = RemoteQueues(server, lease_ms=lease_ms)
        else:
            db = database or self._async_database()
            if db.server is not None:
                # A database on a server: consume through the server, as for a URL.
                queues = RemoteQueues(db.server, lease_ms=db.lease_ms, clock=db.clock, owned=False)
            else:
                queues = _LocalQueues(db, self.account or DEFAULT_ACCOUNT)
        try:
            await self._serve(queues)
        finally:
            await queues.close()

    async def _serve(self, queues: _LocalQueues | RemoteQueues) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stopping:
            return
        if not self._registrations:
            raise errors.InvalidOption("this worker has no consumers: decorate a handler first")
        runners: list[HandlerRunner] = []
        try:
            for registration in self._registrations:
                consumer = await queues.claim(registration.queue, registration.consumer)
                runner = HandlerRunner(
                    registration.handler,
                    threads=consumer.max_concurrency or limits.MAX_CONCURRENCY,
                )
                runners.append(runner)
                self._engines.append(self._engine(queues, registration.queue, consumer, runner))
        except BaseException:
            self._engines.clear()
            raise
        logger.info("worker consuming %s", ", ".join(self.queues))
        tasks = [asyncio.create_task(engine.run()) for engine in self._engines]
        try:
            await self._stop_event.wait()
        finally:
            for engine in self._engines:
                engine.stop()
            await asyncio.gather(*tasks)
            for runner in runners:
                runner.close()
            self._engines.clear()

    def _engine(
        self,
        queues: _LocalQueues | RemoteQueues,
        queue: str,
        consumer: Consumer,
        runner: HandlerRunner,
    ) -> Engine:
        warned: set[str] = set()

        async def gate() -> bool:
            reason = await queues.refusal(queue, consumer)
            if reason is None:
                warned.clear()
                return True
            if reason not in warned:
                warned.add(reason)
                logger.warning("not consuming queue %r: %s", queue, reason)
            return False

        async def deliver(
            leased: list[model.LeasedMessage], decide: Callable[[Decision], None]
        ) -> None:
            batch = MessageBatch(queue, leased, decide)
            try:
                await runner(batch)
            except Exception:
                logger.exception("handler of queue %r failed on a batch of %d", queue, len(leased))
                batch.finish(failed=True)
            else:
                batch.finish(failed=False)

        return Engine(
            queues.source(queue, consumer),
            queue,
            deliver,
            batch_size=consumer.batch_size,
            batch_timeout_ms=round(consumer.max_batch_timeout * 1000),
            concurrency=consumer.max_concurrency or limits.MAX_CONCURRENCY,
            lease_ms=queues.lease_ms,
            bounded=consumer.max_concurrency is not None,
            gate=gate,
        )

    def stop(self) -> None:
        """Stop taking batches (from any thread or a signal handler); running ones finish."""
        self._stopping = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def run(self) -> None:
        """Consume until SIGTERM or SIGINT (or :meth:`stop`), finish the batches in
        flight, and return. Opens the database first if given a path."""
        from kvqueue.sync import open

        database = self._database
        if is_url(database):
            previous = self._install_signals()
            try:
                asyncio.run(self.serve())
            finally:
                self._restore_signals(previous)
            return
        owned = isinstance(database, str)
        if isinstance(database, AsyncDatabase):
            raise errors.InvalidOption(
                "Worker.run() needs a Database or a path; with an AsyncDatabase, await serve()"
            )
        assert not isinstance(database, AsyncDatabase)
        db: Database = open(database) if isinstance(database, str) else database
        previous = self._install_signals()
        try:
            db._portal.run(self.serve, db._async)
        finally:
            self._restore_signals(previous)
            if owned:
                db.close()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for number in (signal.SIGTERM, signal.SIGINT):
            previous[number] = signal.signal(number, lambda *_: self.stop())
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def _async_database(self) -> AsyncDatabase:
        if isinstance(self._database, AsyncDatabase):
            return self._database
        raise errors.InvalidOption("serve() without a database needs Worker(AsyncDatabase)")

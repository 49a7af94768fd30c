"""What every backend shares: versionstamps, the wake-up signal, waiting for a
queue, migration scripts and the row shapes of queue records.

Only mechanics live here; policy stays above the storage boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Generic, TypeVar

from kvqueue import errors, model
from kvqueue.clock import Clock
from kvqueue.keys import successor
from kvqueue.waiting import first_of

T = TypeVar("T")
K = TypeVar("K")

# How long a watch waits for a wake-up before reading its keys again anyway.
_WATCH_RECHECK_MS = 5_000


class CheckFailed(Exception):
    """A check or compare-and-set inside a write did not hold: the write is undone."""


def versionstamp(version: int) -> bytes:
    """The 10-byte versionstamp of commit counter ``version``."""
    return version.to_bytes(8, "big") + b"\x00\x00"


def version_of(stamp: bytes) -> int | None:
    """The commit counter behind a versionstamp, or None if this database never made it."""
    # A versionstamp this database did not hand out can never match a key.
    if len(stamp) != 10 or stamp[8:] != b"\x00\x00":
        return None
    return int.from_bytes(stamp[:8], "big")


class Signal:
    """A broadcast: everyone waiting on the current event wakes when it fires."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._arrival = asyncio.Event()
        #: How many times it has fired: a caller that read this before looking
        #: at the store knows whether anything changed since.
        self.fired = 0
        #: How many of those firings may have changed a queue's record.
        self.queue_changes = 0
        #: How many of those firings may have made a message deliverable: all but
        #: commits of nothing but acks.
        self.arrivals = 0

    def current(self, *, acks: bool = True) -> asyncio.Event:
        """The event the next :meth:`fire` sets (``acks`` False: the next that may
        make a message deliverable); take it before looking at the store."""
        return self._event if acks else self._arrival

    def fire(self, *, queues: bool = True, arrivals: bool = True) -> None:
        """Wake every waiter. ``queues``: the change may have created, changed or
        deleted a queue, or set its consumer (when in doubt, it may have).
        ``arrivals``: it may have made a message deliverable (False only for a
        commit of nothing but acks)."""
        self.fired += 1
        self.queue_changes += queues
        self._event.set()
        self._event = asyncio.Event()
        if arrivals:
            self.arrivals += 1
            self._arrival.set()
            self._arrival = asyncio.Event()


class Waits:
    """``changes``, ``wait`` and ``watch`` of :class:`Storage`, for a backend that has a
    :class:`Signal` it fires on every change and can read a queue's next
    visible time."""

    clock: Clock
    _signal: Signal

    async def read(self, ranges: Sequence[model.ReadRange]) -> list[list[model.StoredEntry]]:
        raise NotImplementedError

    async def _next_visible(self, queue: str, since: int) -> int | None:
        """The earliest ``visible_at`` of ``queue`` later than ``since``."""
        raise NotImplementedError

    @property
    def changes(self) -> int:
        """See :attr:`kvqueue.storage.base.Storage.changes`."""
        return self._signal.fired

    @property
    def queue_changes(self) -> int | None:
        """See :attr:`kvqueue.storage.base.Storage.queue_changes`."""
        return self._signal.queue_changes

    @property
    def arrivals(self) -> int:
        """See :attr:`kvqueue.storage.base.Storage.arrivals`."""
        return self._signal.arrivals

    async def wait(
        self,
        queue: str | None,
        *,
        timeout_ms: int,
        after_ms: int | None = None,
        since: int | None = None,
        acks: bool = True,
    ) -> None:
        """See :meth:`kvqueue.storage.base.Storage.wait`."""
        # Take the event before looking, so a commit landing after the look wakes us.
        event = self._signal.current(acks=acks)
        seen = self._signal.fired if acks else self._signal.arrivals
        if since is not None and seen != since:
            return  # something changed after the caller looked: look again
        upcoming: int | None = None
        if queue is not None:
            upcoming = await self._next_visible(queue, -1 if after_ms is None else after_ms)
            if upcoming is not None and upcoming <= self.clock.now_ms():
                return
        waits: list[Awaitable[Any]] = [event.wait(), asyncio.sleep(timeout_ms / 1000)]
        if upcoming is not None:
            waits.append(self.clock.sleep_until(upcoming))
        await first_of(*waits)

    async def watch(
        self, keys: Sequence[bytes]
    ) -> AsyncGenerator[list[model.StoredEntry | None], None]:
        """See :meth:`kvqueue.storage.base.Storage.watch`."""
        ranges = [model.ReadRange(k, successor(k), 1) for k in keys]
        last: list[bytes | None] | None = None
        while True:
            # Start waiting before reading, so a commit landing after the read wakes us.
            changed = asyncio.ensure_future(self.wait(None, timeout_ms=_WATCH_RECHECK_MS))
            await asyncio.sleep(0)
            try:
                entries = [page[0] if page else None for page in await self.read(ranges)]
                stamps = [None if e is None else e.versionstamp for e in entries]
                if stamps != last:
                    last = stamps
                    yield entries
                await changed
            finally:
                changed.cancel()


async def lease_within(
    storage: Any, queue: str, wait_ms: int, take: Callable[[], Awaitable[list[T]]]
) -> list[T]:
    """``take()`` until it gives something or ``wait_ms`` of real time has passed (a
    long poll, whatever clock the storage runs on), waiting on ``queue`` between tries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_ms / 1000
    while True:
        looked_at = storage.clock.now_ms()
        seen = storage.changes
        taken = await take()
        remaining = round((deadline - loop.time()) * 1000)
        if taken or remaining <= 0:
            return taken
        await storage.wait(queue, timeout_ms=remaining, after_ms=looked_at, since=seen)


def backlog_bounds(
    queue: str,
    enqueues: Sequence[model.Enqueue],
    max_backlog: int | None,
    max_bytes: int | None,
) -> tuple[int | None, int | None]:
    """The count and byte limits a write's enqueues to ``queue`` must fit in.

    An enqueue's own ``max_backlog`` (the KV queue's configurable bound) beats
    the queue's setting.
    """
    explicit = [e.max_backlog for e in enqueues if e.queue == queue and e.max_backlog]
    return (explicit[0] if explicit else max_backlog), max_bytes


def backlog_refusal(
    queue: str, count: int, size: int, bounds: tuple[int | None, int | None]
) -> errors.QueueFull | None:
    """The QueueFull a backlog of ``count`` messages and ``size`` bytes earns, if any."""
    max_backlog, max_bytes = bounds
    if max_backlog is not None and count > max_backlog:
        return errors.QueueFull(queue, max_backlog)
    if max_bytes is not None and size > max_bytes:
        return errors.QueueFull(queue, max_bytes, unit="bytes of undelivered messages")
    return None


def is_plain_send(write: model.AtomicWrite) -> bool:
    """Only enqueues: a run of such writes can share one INSERT."""
    return bool(write.enqueues) and not (
        write.checks
        or write.lease_checks
        or write.queue_changes
        or write.mutations
        or write.settlements
    )


def is_plain_ack(write: model.AtomicWrite) -> bool:
    """Only acks: such a write needs nothing read before it applies, and it can
    make no message deliverable."""
    return bool(write.settlements) and not (
        write.checks
        or write.lease_checks
        or write.queue_changes
        or write.mutations
        or write.enqueues
        or any(not isinstance(s, model.Ack) for s in write.settlements)
    )


def plan_enqueues(
    writes: Sequence[model.AtomicWrite], found: Sequence[tuple[Any, ...]], now: int
) -> tuple[list[Exception | None], list[tuple[Any, ...]]]:
    """Which of many enqueue-only writes are refused, and the message rows
    ``(queue, id, body, content_type, visible_at, attributes)`` of the others.

    ``found`` holds a row ``(name, delivery_delay, max_backlog, max_backlog_bytes,
    backlog count, backlog bytes)`` per queue the writes enqueue to that exists.
    Backlog limits are checked against running totals, so each write sees the
    backlog the writes before it left, exactly as if committed one by one.
    """
    limits = {row[0]: row[1:4] for row in found}
    every = [e for w in writes for e in w.enqueues]
    # Only queues with a limit keep totals: _refusal checks no other.
    totals: dict[str, list[int]] = {
        row[0]: [row[4] or 0, row[5] or 0]
        for row in found
        if backlog_bounds(row[0], every, *row[2:4]) != (None, None)
    }
    refusals: list[Exception | None] = []
    rows: list[tuple[Any, ...]] = []
    for write in writes:
        refusal = _refusal(write, limits, totals)
        refusals.append(refusal)
        if refusal is not None:
            continue
        for e in write.enqueues:
            if e.queue in totals:
                totals[e.queue][0] += 1
                totals[e.queue][1] += len(e.body)
            delay = limits[e.queue][0] if e.delay_ms is None else e.delay_ms
            rows.append((e.queue, e.message_id, e.body, e.content_type, now + delay, e.attributes))
    return refusals, rows


def _refusal(
    write: model.AtomicWrite,
    limits: dict[str, tuple[Any, ...]],
    totals: dict[str, list[int]],
) -> Exception | None:
    for e in write.enqueues:
        if e.queue not in limits:
            return errors.QueueNotFound(e.queue)
    added: dict[str, list[int]] = {}
    for e in write.enqueues:
        count_size = added.setdefault(e.queue, [0, 0])
        count_size[0] += 1
        count_size[1] += len(e.body)
    for name, (count, size) in added.items():
        if name not in totals:
            continue
        bounds = backlog_bounds(name, write.enqueues, *limits[name][1:])
        refusal = backlog_refusal(name, totals[name][0] + count, totals[name][1] + size, bounds)
        if refusal is not None:
            return refusal
    return None


def migration_scripts(package: str) -> list[str]:
    """The schema scripts of a backend, oldest first; script N makes schema version N."""
    return [
        item.read_text("utf-8")
        for item in sorted(resources.files(package).iterdir(), key=lambda item: item.name)
        if item.name.endswith(".sql")
    ]


def check_schema_version(current: int, known: int, where: str) -> None:
    """Refuse a database whose schema is newer than this version of kvqueue knows."""
    if current > known:
        raise errors.StorageError(
            f"{where} has schema version {current}, newer than this kvqueue knows "
            f"({known}); upgrade kvqueue"
        )


def settings_row(
    settings: model.QueueSettings,
) -> tuple[int, int | None, bool, int | None, int | None]:
    """A queue's settings as stored: delay, retention, paused, backlog limits."""
    return (
        settings.delivery_delay_ms,
        settings.retention_ms,
        settings.paused,
        settings.max_backlog,
        settings.max_backlog_bytes,
    )


#: The columns :func:`queue_record` reads, in its order.
QUEUE_COLUMNS = """
name, id, created_at, modified_at, delivery_delay, retention, paused, max_backlog,
max_backlog_bytes, consumer
"""


def queue_record(row: Sequence[Any]) -> model.QueueRecord:
    """A queue as stored (``QUEUE_COLUMNS``) as the model's record."""
    name, queue_id, created, modified, delay, retention, paused, backlog, backlog_bytes = row[:9]
    return model.QueueRecord(
        name,
        queue_id,
        created,
        modified,
        model.QueueSettings(delay, retention, bool(paused), backlog, backlog_bytes),
        None if row[9] is None else bytes(row[9]),
    )


class SharedRead(Generic[K, T]):
    """A read that concurrent callers share, each still seeing everything committed
    before it asked.

    A caller never joins a query already running (it may have started before
    the caller's own commit): it joins the next one, which starts once the
    running one is done, and which everyone arriving meanwhile joins too.
    """

    def __init__(self, read: Callable[[K], Awaitable[T]]) -> None:
        self._read = read
        self._next: dict[K, asyncio.Future[T]] = {}
        self._running: dict[K, asyncio.Task[None]] = {}
        #: The queries under way, so that closing can wait for them.
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K) -> T:
        joined = self._next.get(key)
        if joined is None:
            joined = asyncio.get_running_loop().create_future()
            # Every caller may have gone (cancelled) by the time it fails.
            joined.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._next[key] = joined
            task = asyncio.create_task(self._query(key, joined))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        # One caller giving up must not cancel the query for the others.
        return await asyncio.shield(joined)

    async def _query(self, key: K, joined: asyncio.Future[T]) -> None:
        try:
            running = self._running.get(key)
            if running is not None:
                await asyncio.wait([running])
            # From now on, newcomers wait for the next query.
            del self._next[key]
            task = asyncio.current_task()
            assert task is not None
            self._running[key] = task
            try:
                joined.set_result(await self._read(key))
            except Exception as exc:
                joined.set_exception(exc)
            finally:
                if self._running.get(key) is task:
                    del self._running[key]
        finally:
            if not joined.done():
                joined.cancel()
            if self._next.get(key) is joined:
                del self._next[key]

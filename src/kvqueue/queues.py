"""Named queues (the Cloudflare face): management, producers and pull consumers.

``db.queues`` manages queues and their consumer; ``db.queue(name)`` sends to
one and pulls from it. Push consumers live in :mod:`kvqueue.worker`.
"""

from __future__ import annotations

import builtins
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from kvqueue import errors, limits, model
from kvqueue.accounts import DEFAULT_ACCOUNT, check_account, split_name, stored_name
from kvqueue.atomic import KV_QUEUE
from kvqueue.consumers import (
    DEFAULT_PULL_CONSUMER,
    Consumer,
    RetryPolicy,
    default_settings,
    dump_consumer,
    load_consumer,
    make_consumer,
    whole_number,
)
from kvqueue.keys import reserved_key
from kvqueue.messages import (
    ContentType,
    MessageSendRequest,
    build_batch,
    build_send,
    check_name,
    decode_body,
    delay_ms,
)
from kvqueue.storage.common import lease_within

if TYPE_CHECKING:
    from kvqueue.database import AsyncDatabase

#: A lease a pull consumer names itself: 16 lowercase hex characters.
LEASE_PATTERN = re.compile(r"[0-9a-f]{16}")

# Concurrent changes to one queue's settings or consumer are retried this often.
_CAS_ATTEMPTS = 50


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this setting as it is" in ``update``.
UNSET: Any = _Unset()


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue: its identity, settings (seconds, as Cloudflare has them) and consumer."""

    name: str
    queue_id: str
    created_at: datetime
    modified_at: datetime
    delivery_delay: int
    message_retention_period: int
    delivery_paused: bool
    max_backlog: int | None
    max_backlog_bytes: int | None
    consumer: Consumer | None


def queue_info(record: model.QueueRecord) -> QueueInfo:
    """The public view of a stored queue record."""
    s = record.settings
    return QueueInfo(
        name=split_name(record.name)[1],
        queue_id=record.queue_id,
        created_at=_datetime(record.created_at_ms),
        modified_at=_datetime(record.modified_at_ms),
        delivery_delay=s.delivery_delay_ms // 1000,
        message_retention_period=(s.retention_ms or 0) // 1000,
        delivery_paused=s.paused,
        max_backlog=s.max_backlog,
        max_backlog_bytes=s.max_backlog_bytes,
        consumer=load_consumer(record.consumer),
    )


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """What a queue holds now, and what happened to it so far.

    Attributes:
        backlog_count: messages not yet acked (visible, delayed or in flight).
        backlog_bytes: their bodies' bytes.
        oldest_message_timestamp_ms: when the oldest of them was sent; 0 if none.
        in_flight: messages leased to a consumer right now.
        retried: retries so far.
        dead_lettered: messages that used up their retries so far.
    """

    backlog_count: int
    backlog_bytes: int
    oldest_message_timestamp_ms: int
    in_flight: int = 0
    retried: int = 0
    dead_lettered: int = 0

    @property
    def oldest_message_timestamp(self) -> datetime | None:
        """When the oldest message was sent, or None for an empty queue."""
        ms = self.oldest_message_timestamp_ms
        return _datetime(ms) if ms else None


def _metrics(stats: model.QueueStats) -> QueueMetrics:
    return QueueMetrics(
        backlog_count=stats.backlog_count,
        backlog_bytes=stats.backlog_bytes,
        oldest_message_timestamp_ms=stats.oldest_enqueued_at_ms or 0,
        in_flight=stats.in_flight,
        retried=stats.retried,
        dead_lettered=stats.dead_lettered,
    )


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send returns: the new messages' ids and the queue's metrics after it."""

    message_ids: tuple[str, ...]
    metrics: QueueMetrics


class _DecodedOnRead:
    """``body`` decoded from ``raw`` when read, so one undecodable message cannot
    break a pull or a peek."""

    __slots__ = ()
    raw: bytes
    content_type: str

    @property
    def body(self) -> Any:
        """The body decoded by content type; raises CorruptValue if it cannot be."""
        return decode_body(self.raw, self.content_type)


@dataclass(frozen=True, slots=True)
class PeekedMessage(_DecodedOnRead):
    """A message as it waits in its queue; peeking leases nothing."""

    id: str
    raw: bytes = field(repr=False)
    content_type: str
    timestamp_ms: int
    attempts: int

    @property
    def ref(self) -> str:
        """What :meth:`AsyncQueue.purge_messages` takes to delete this message."""
        return self.id

    @property
    def metadata(self) -> dict[str, str]:
        """Cloudflare's message metadata."""
        return {"CF-Content-Type": self.content_type}


def _peeked(message: model.StoredMessage) -> PeekedMessage:
    return PeekedMessage(
        message.message_id,
        message.body,
        message.content_type,
        message.enqueued_at_ms,
        message.attempts,
    )


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of :meth:`AsyncQueues.browse_page`: its messages, and the cursor of the
    next page (None: this is the last)."""

    messages: list[PeekedMessage]
    cursor: str | None


def _browse_cursor(position: tuple[int, int]) -> str:
    # The storage's position of the page's last message: send time, arrival number.
    return "{}.{}".format(*position)


def _browse_position(cursor: Any) -> tuple[int, int] | None:
    if cursor is None:
        return None
    parts = cursor.split(".") if isinstance(cursor, str) else []
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise errors.InvalidInput(f"{cursor!r} is not a cursor of browse_page")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True, slots=True)
class PulledMessage(_DecodedOnRead):
    """A message leased to a pull consumer until ack, retry or its visibility timeout.

    ``raw`` is the stored bytes; ``body`` decodes them by content type when read.
    """

    id: str
    raw: bytes = field(repr=False)
    content_type: str
    timestamp_ms: int
    attempts: int
    lease_id: str

    @property
    def metadata(self) -> dict[str, str]:
        """Cloudflare's message metadata."""
        return {"CF-Content-Type": self.content_type}


@dataclass(frozen=True, slots=True)
class PullResult:
    """The messages of one pull and the queue's metrics after it."""

    messages: list[PulledMessage]
    metrics: QueueMetrics

    @property
    def backlog_count(self) -> int:
        """Messages the queue holds that are not acked yet."""
        return self.metrics.backlog_count


@dataclass(frozen=True, slots=True)
class AckResult:
    """How many acks and retries took effect; ``warnings`` maps lease ids that did not.

    ``dead_lettered`` lists the retried lease ids whose messages had used up the
    consumer's ``max_retries``: they went to its dead-letter queue (or, without
    one, were deleted) instead of coming back. They count in ``retry_count``.
    """

    ack_count: int
    retry_count: int
    warnings: dict[str, str]
    dead_lettered: list[str] = field(default_factory=list)


def _lease_id(message: model.LeasedMessage) -> str:
    # Opaque to clients; carries what a retry needs without another read.
    return f"{message.message_id}.{message.attempts}.{message.lease}"


def parse_lease_id(queue: str, lease_id: Any) -> model.LeasedMessage | None:
    """The message a lease id names (enough of it to settle), or None if it is not one."""
    if not isinstance(lease_id, str):
        return None
    parts = lease_id.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    message_id, attempts, lease = parts
    return model.LeasedMessage(queue, message_id, b"", "", 0, int(attempts), lease)


class AsyncQueues:
    """Queue management for one account of an AsyncDatabase: ``db.queues`` (the
    default account) or ``db.queues_of(account)``."""

    def __init__(self, database: AsyncDatabase, account: str = DEFAULT_ACCOUNT) -> None:
        self._db = database
        self.account = check_account(account)

    def _stored(self, name: str) -> str:
        return stored_name(self.account, check_name(name))

    def queue(self, name: str) -> AsyncQueue:
        """The queue ``name`` of this account, to send to and pull from."""
        return AsyncQueue(self._db, name, self.account)

    @property
    def _storage(self) -> Any:
        return self._db.storage

    async def _record(self, name: str) -> model.QueueRecord:
        records = await self._storage.queues([self._stored(name)])
        if not records:
            raise errors.QueueNotFound(name)
        record: model.QueueRecord = records[0]
        return record

    async def _commit(self, *changes: model.QueueChange) -> bool:
        committed = await self._db.commit_write(model.AtomicWrite(queue_changes=changes))
        return committed.ok

    async def create(
        self,
        name: str,
        *,
        delivery_delay: int = 0,
        message_retention_period: int = limits.DEFAULT_RETENTION_SECONDS,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = limits.DEFAULT_QUEUE_BACKLOG_BYTES,
    ) -> QueueInfo:
        """Create a queue.

        Args:
            delivery_delay: seconds every message waits before it is delivered,
                unless its send names its own delay (0 .. 86,400).
            message_retention_period: seconds an unconsumed message is kept
                (60 .. 1,209,600; default 4 days). Older ones are deleted, paused or not.
            max_backlog: most unconsumed messages; beyond it sends raise QueueFull.
            max_backlog_bytes: most bytes of unconsumed bodies (default 25 GB).

        Raises:
            InvalidQueueName, InvalidOption, QueueExists.
        """
        check_name(name)
        settings = checked_settings(
            default_settings(),
            delivery_delay=delivery_delay,
            message_retention_period=message_retention_period,
            max_backlog=max_backlog,
            max_backlog_bytes=max_backlog_bytes,
        )
        await self._commit(model.CreateQueue(self._stored(name), secrets.token_hex(16), settings))
        return await self.get(name)

    async def list(self) -> list[QueueInfo]:
        """Every named queue of this account, by name."""
        records = await self._storage.queues(None)
        infos = [queue_info(r) for r in records if split_name(r.name)[0] == self.account]
        return [i for i in infos if not i.name.startswith("~")]

    async def get(self, name: str) -> QueueInfo:
        """One queue; raises QueueNotFound."""
        return queue_info(await self._record(name))

    async def update(
        self,
        name: str,
        *,
        delivery_delay: int = UNSET,
        message_retention_period: int = UNSET,
        delivery_paused: bool = UNSET,
        max_backlog: int | None = UNSET,
        max_backlog_bytes: int | None = UNSET,
    ) -> QueueInfo:
        """Change the given settings of a queue and leave the others as they are."""
        check_name(name)
        for _ in range(_CAS_ATTEMPTS):
            current = (await self._record(name)).settings
            wanted = checked_settings(
                current,
                delivery_delay=delivery_delay,
                message_retention_period=message_retention_period,
                delivery_paused=delivery_paused,
                max_backlog=max_backlog,
                max_backlog_bytes=max_backlog_bytes,
            )
            if await self._commit(model.UpdateQueue(self._stored(name), wanted, current)):
                return await self.get(name)
        raise errors.StorageError(f"queue {name!r} kept changing; its update was not applied")

    async def pause(self, name: str) -> QueueInfo:
        """Stop delivery: consumers get nothing (pulls raise QueuePaused); sends still work."""
        return await self.update(name, delivery_paused=True)

    async def resume(self, name: str) -> QueueInfo:
        """Start delivery again after ``pause``."""
        return await self.update(name, delivery_paused=False)

    async def delete(self, name: str) -> None:
        """Delete a queue, its consumer and every message in it, in flight or not.

        Workers consuming it stop taking batches from it; acks of batches in
        flight find nothing and are ignored. A consumer whose dead-letter queue
        it was creates it again when it next dead-letters a message.
        """
        await self._commit(model.DeleteQueue(self._stored(name)))

    async def purge(self, name: str) -> None:
        """Delete every message of a queue, delayed and in-flight ones too, and note
        when (see :meth:`last_purge`)."""
        record = await self._record(name)
        mark = model.Mutation(
            model.MutationKind.SET,
            reserved_key("purge", record.queue_id),
            orjson.dumps(self._db.clock.now_ms()),
        )
        write = model.AtomicWrite(queue_changes=(model.PurgeQueue(record.name),), mutations=(mark,))
        await self._db.commit_write(write)

    async def last_purge(self, name: str) -> datetime | None:
        """When the queue was last purged (a purge is one transaction: it is complete
        once anyone can see it), or None if never."""
        key = reserved_key("purge", (await self._record(name)).queue_id)
        (found,) = await self._storage.read([model.ReadRange(key, key + b"\x00", 1)])
        return _datetime(orjson.loads(found[0].value)) if found else None

    async def metrics(self, name: str) -> QueueMetrics:
        """Backlog count and bytes, oldest message, in-flight, retried and dead-lettered.

        Also answers for the KV queue, ``kvqueue.KV_QUEUE``.
        """
        stored = stored_name(self.account, KV_QUEUE) if name == KV_QUEUE else self._stored(name)
        return _metrics(await self._storage.stats(stored))

    async def peek(self, name: str, n: int = 5) -> builtins.list[PeekedMessage]:
        """Up to ``n`` messages in delivery order, without leasing them."""
        n = whole_number("n", n, 1, limits.MAX_PULL_BATCH_SIZE)
        await self._record(name)
        stored = await self._storage.peek(self._stored(name), limit=n)
        return [_peeked(m) for m in stored]

    async def browse_page(
        self, name: str, n: int = 100, *, cursor: str | None = None
    ) -> MessagePage:
        """Up to ``n`` (1 .. 100) messages of the queue in the order they were sent,
        leasing nothing: delayed, visible and in-flight ones alike. ``cursor`` is the
        previous page's (None: start at the first message); the last page's is None.

        Paging visits each message that stays in the queue exactly once, however the
        queue is consumed or sent to meanwhile; messages sent after the page that
        would hold them was read are not seen.

        Raises:
            QueueNotFound, InvalidOption (``n``), InvalidInput (not a cursor of this
            method).
        """
        n = whole_number("n", n, 1, limits.MAX_PULL_BATCH_SIZE)
        await self._record(name)
        after = _browse_position(cursor)
        # One more than asked tells whether there is a next page.
        found = await self._storage.browse(self._stored(name), limit=n + 1, after=after)
        page = found[:n]
        following = _browse_cursor(page[-1][1]) if len(found) > n else None
        return MessagePage([_peeked(m) for m, _ in page], following)

    # --- consumers ------------------------------------------------------------

    async def get_consumer(self, name: str) -> Consumer | None:
        """The queue's consumer, or None."""
        return load_consumer((await self._record(name)).consumer)

    async def add_consumer(self, name: str, /, type: str = "worker", **settings: Any) -> Consumer:
        """Give a queue its consumer (settings as in :class:`kvqueue.Consumer`).

        Raises:
            ConsumerExists: the queue already has one (a queue has one consumer).
        """
        consumer = make_consumer(type, **settings)
        no_self_dead_letter(name, consumer)

        def decide(existing: Consumer | None) -> Consumer:
            if existing is not None:
                raise errors.ConsumerExists(name, existing.describe())
            return self._successor(consumer, None)

        added = await self._change_consumer(name, decide, "added")
        assert added is not None
        return added

    async def update_consumer(
        self, name: str, /, type: str = "worker", **settings: Any
    ) -> Consumer:
        """Replace the queue's consumer settings (adding the consumer if it has none)."""
        consumer = make_consumer(type, **settings)
        no_self_dead_letter(name, consumer)
        updated = await self._change_consumer(
            name, lambda existing: self._successor(consumer, existing), "updated"
        )
        assert updated is not None
        return updated

    async def remove_consumer(self, name: str) -> None:
        """Remove the queue's consumer; workers consuming it stop taking its batches.

        Raises:
            ConsumerNotFound: the queue has no consumer.
        """

        def decide(existing: Consumer | None) -> None:
            if existing is None:
                raise errors.ConsumerNotFound(name)

        await self._change_consumer(name, decide, "removed")

    async def claim_worker(self, name: str, consumer: Consumer) -> Consumer:
        """Register ``consumer`` (a worker) on the queue, or take over its settings if
        the same worker is registered already; another consumer raises ConsumerExists."""
        no_self_dead_letter(name, consumer)

        def decide(existing: Consumer | None) -> Consumer:
            if existing is not None and (
                existing.type != "worker" or existing.script_name != consumer.script_name
            ):
                raise errors.ConsumerExists(name, existing.describe())
            return self._successor(consumer, existing)

        claimed = await self._change_consumer(name, decide, "set")
        assert claimed is not None
        return claimed

    def _successor(self, consumer: Consumer, existing: Consumer | None) -> Consumer:
        """``consumer`` taking the place of ``existing``: it keeps its id and creation time."""
        if existing is None:
            return replace(consumer, created_at_ms=self._db.clock.now_ms())
        return replace(
            consumer, consumer_id=existing.consumer_id, created_at_ms=existing.created_at_ms
        )

    async def _change_consumer(
        self,
        name: str,
        decide: Callable[[Consumer | None], Consumer | None],
        what: str,
    ) -> Consumer | None:
        """Set the queue's consumer to ``decide(current)``, retrying when another
        process changed it in between (compare-and-set on the stored consumer)."""
        for _ in range(_CAS_ATTEMPTS):
            record = await self._record(name)
            existing = load_consumer(record.consumer)
            wanted = decide(existing)
            if wanted == existing:
                return existing
            stored = None if wanted is None else dump_consumer(wanted)
            if await self._commit(model.SetConsumer(record.name, stored, record.consumer)):
                return wanted
        raise errors.StorageError(f"queue {name!r} kept changing; its consumer was not {what}")


def no_self_dead_letter(name: str, consumer: Consumer) -> None:
    """Refuse a consumer of ``name`` whose dead-letter queue is ``name`` itself."""
    if consumer.dead_letter_queue == name:
        raise errors.InvalidOption(f"queue {name!r} cannot be its own dead-letter queue")


def checked_settings(current: model.QueueSettings, **given: Any) -> model.QueueSettings:
    """``current`` with the given (not UNSET) settings checked and applied."""
    changes: dict[str, Any] = {}
    if given.get("delivery_delay", UNSET) is not UNSET:
        seconds = whole_number(
            "delivery_delay", given["delivery_delay"], 0, limits.MAX_DELAY_SECONDS
        )
        changes["delivery_delay_ms"] = seconds * 1000
    if given.get("message_retention_period", UNSET) is not UNSET:
        seconds = whole_number(
            "message_retention_period",
            given["message_retention_period"],
            limits.MIN_RETENTION_SECONDS,
            limits.MAX_RETENTION_SECONDS,
        )
        changes["retention_ms"] = seconds * 1000
    if given.get("delivery_paused", UNSET) is not UNSET:
        paused = given["delivery_paused"]
        if not isinstance(paused, bool):
            raise errors.InvalidOption(f"delivery_paused is True or False, got {paused!r}")
        changes["paused"] = paused
    for key in ("max_backlog", "max_backlog_bytes"):
        value = given.get(key, UNSET)
        if value is not UNSET:
            changes[key] = None if value is None else whole_number(key, value, 1, 2**62)
    return replace(current, **changes)


class AsyncQueue:
    """One named queue of an AsyncDatabase: ``db.queue(name)``."""

    def __init__(self, database: AsyncDatabase, name: str, account: str = DEFAULT_ACCOUNT) -> None:
        self._db = database
        self.name = check_name(name)
        self.account = check_account(account)
        #: The name this queue is stored under (see :mod:`kvqueue.accounts`).
        self.stored_name = stored_name(self.account, name)

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r}>"

    async def _sent(self, enqueues: Sequence[model.Enqueue]) -> SendResult:
        write = model.AtomicWrite(enqueues=tuple(enqueues), stats_of=self.stored_name)
        committed = await self._db.commit_stored(write)
        stats = None if committed is None else committed.stats
        if stats is None:
            stats = await self._db.storage.stats(self.stored_name)
        metrics = _metrics(stats)
        return SendResult(tuple(e.message_id for e in enqueues), metrics)

    async def send(
        self,
        body: Any,
        *,
        content_type: ContentType | str = "json",
        delay_seconds: float | None = None,
    ) -> SendResult:
        """Send one message; it is on disk when this returns.

        ``delay_seconds`` None takes the queue's ``delivery_delay``; 0 means none.

        Raises:
            InvalidMessage, MessageTooLarge, InvalidDelay, QueueNotFound, QueueFull.
        """
        return await self._sent([build_send(self.stored_name, body, content_type, delay_seconds)])

    async def send_batch(
        self,
        messages: Iterable[MessageSendRequest | Any],
        *,
        delay_seconds: float | None = None,
    ) -> SendResult:
        """Send up to 100 messages (256,000 bytes) at once, all or none.

        A message's own delay beats ``delay_seconds``, which beats the queue's.
        Items that are not MessageSendRequest are sent as JSON bodies.

        Raises:
            EmptyBatch, TooManyMessages, BatchTooLarge, InvalidBatchDelay, and
            the errors of :meth:`send`.
        """
        return await self._sent(build_batch(self.stored_name, messages, delay_seconds))

    async def metrics(self) -> QueueMetrics:
        """This queue's metrics (see :meth:`AsyncQueues.metrics`)."""
        return _metrics(await self._db.storage.stats(self.stored_name))

    async def _pull_consumer(self, consumer_id: str | None) -> Consumer:
        records = await self._db.storage.queues([self.stored_name])
        if not records:
            raise errors.QueueNotFound(self.name)
        record = records[0]
        if record.settings.paused:
            raise errors.QueuePaused(self.name)
        consumer = load_consumer(record.consumer)
        if consumer_id is not None:
            # A worker reaching the queue through a server pulls as its consumer.
            if consumer is None or consumer.consumer_id != consumer_id:
                raise errors.ConsumerNotFound(self.name)
            return consumer
        if consumer is None:
            return DEFAULT_PULL_CONSUMER
        if consumer.type != "http_pull":
            raise errors.ConsumerExists(self.name, consumer.describe())
        return consumer

    async def pull(
        self,
        batch_size: int | None = None,
        visibility_timeout_ms: int | None = None,
        *,
        wait_ms: int = 0,
        consumer_id: str | None = None,
        lease: str | None = None,
    ) -> PullResult:
        """Lease up to ``batch_size`` messages for ``visibility_timeout_ms``.

        Defaults come from the queue's http_pull consumer (5 messages, 30 s).
        An empty queue answers at once with no messages, unless ``wait_ms``
        says how long to wait for one (at most 20 s).

        ``consumer_id`` pulls as the queue's consumer of that id, whatever its
        type (how a Worker consumes through a server); its ``max_concurrency``
        then bounds the leases held at once. ``lease`` names the lease (16 hex
        characters) so that several pulls can fill one batch.

        Raises:
            QueuePaused: delivery is paused.
            ConsumerExists: the queue has a worker consumer (and no ``consumer_id``).
            ConsumerNotFound: ``consumer_id`` is not the queue's consumer.
        """
        consumer = await self._pull_consumer(consumer_id)
        size = whole_number(
            "batch_size",
            consumer.batch_size if batch_size is None else batch_size,
            1,
            limits.MAX_PULL_BATCH_SIZE,
        )
        timeout = whole_number(
            "visibility_timeout_ms",
            consumer.visibility_timeout_ms
            if visibility_timeout_ms is None
            else visibility_timeout_ms,
            1,
            limits.MAX_VISIBILITY_TIMEOUT_MS,
        )
        wait = whole_number("wait_ms", wait_ms, 0, limits.MAX_PULL_WAIT_MS)
        if lease is None:
            lease = secrets.token_hex(8)
        elif not (isinstance(lease, str) and LEASE_PATTERN.fullmatch(lease)):
            raise errors.InvalidOption(f"a lease is 16 hex characters, got {lease!r}")
        storage = self._db.storage
        policy = RetryPolicy(consumer)
        max_leases = consumer.max_concurrency if consumer.type == "worker" else None

        async def take() -> list[PulledMessage]:
            leased = await storage.lease(
                self.stored_name, lease=lease, limit=size, lease_ms=timeout, max_leases=max_leases
            )
            pulled: list[PulledMessage] = []
            for message in leased:
                write = policy.exhausted(message)
                if write is not None:
                    await self._db.commit_write(write)
                    continue
                pulled.append(
                    PulledMessage(
                        message.message_id,
                        message.body,
                        message.content_type,
                        message.enqueued_at_ms,
                        message.attempts,
                        _lease_id(message),
                    )
                )
            return pulled

        pulled = await lease_within(storage, self.stored_name, wait, take)
        return PullResult(pulled, _metrics(await storage.stats(self.stored_name)))

    async def extend(self, lease_ids: Iterable[str], visibility_timeout_ms: int) -> list[str]:
        """Keep pulled messages leased for ``visibility_timeout_ms`` more; returns the
        lease ids still held (the others were settled, or ran out and were taken)."""
        timeout = whole_number(
            "visibility_timeout_ms", visibility_timeout_ms, 1, limits.MAX_VISIBILITY_TIMEOUT_MS
        )
        held: dict[str, model.LeaseCheck] = {}
        for lease_id in lease_ids:
            message = parse_lease_id(self.stored_name, lease_id)
            if message is not None:
                held[lease_id] = model.LeaseCheck(message.message_id, message.lease)
        checks = list(held.values())
        kept = await self._db.storage.extend(checks, lease_ms=timeout) if checks else set()
        return [lease_id for lease_id, check in held.items() if check.message_id in kept]

    async def ack(
        self,
        acks: Iterable[str] = (),
        retries: Iterable[str | tuple[str, float | None]] = (),
    ) -> AckResult:
        """Settle pulled messages by lease id: ack them, or retry them (optionally
        after a delay in seconds: ``(lease_id, delay_seconds)``).

        An ack after the visibility timeout is still accepted. A lease id that
        matches nothing (malformed, already acked, or retried under a newer
        lease) is reported in ``warnings`` and changes nothing.
        """
        records = await self._db.storage.queues([self.stored_name])
        # A deleted queue still answers: its messages are gone, so every id warns.
        consumer = (load_consumer(records[0].consumer) if records else None) or (
            DEFAULT_PULL_CONSUMER
        )
        policy = RetryPolicy(consumer)
        warnings: dict[str, str] = {}
        kinds: list[tuple[str, str]] = []
        writes: list[model.AtomicWrite] = []
        for lease_id in acks:
            held = parse_lease_id(self.stored_name, lease_id)
            if held is None:
                warnings[str(lease_id)] = "unknown lease id"
                continue
            kinds.append(("ack", lease_id))
            writes.append(
                model.AtomicWrite(settlements=(model.Ack(self.stored_name, held.message_id),))
            )
        for item in retries:
            lease_id, delay = item if isinstance(item, tuple) else (item, None)
            held = parse_lease_id(self.stored_name, lease_id)
            if held is None:
                warnings[str(lease_id)] = "unknown lease id"
                continue
            write, outcome = policy.retry(held, delay_ms(delay))
            kinds.append(("retry" if outcome == "retried" else "dead-letter", lease_id))
            writes.append(write)
        counts = {"ack": 0, "retry": 0}
        dead_lettered: list[str] = []
        if writes:
            committed = await self._db.storage.commit(model.merge(writes))
            settled = committed.settled if committed is not None else ()
            for (kind, lease_id), applied in zip(kinds, settled, strict=True):
                if applied:
                    counts["ack" if kind == "ack" else "retry"] += 1
                    if kind == "dead-letter":
                        dead_lettered.append(lease_id)
                elif kind == "ack":
                    warnings[lease_id] = "no such message: it was already acked or deleted"
                else:
                    warnings[lease_id] = (
                        "the message is not held by this lease: it was acked, retried,"
                        " or leased again"
                    )
        return AckResult(counts["ack"], counts["retry"], warnings, dead_lettered)

    async def purge_messages(self, refs: Iterable[str]) -> dict[str, str]:
        """Delete exactly the messages whose ``ref`` (from a peek) is given, leased
        or not. Returns a warning for each ref that matched no message."""
        wanted = list(dict.fromkeys(refs))
        for ref in wanted:
            if not isinstance(ref, str) or not ref:
                raise errors.InvalidInput(f"a message ref is a non-empty string, got {ref!r}")
        if not wanted:
            return {}
        acks = tuple(model.Ack(self.stored_name, ref) for ref in wanted)
        committed = await self._db.storage.commit(model.AtomicWrite(settlements=acks))
        settled = committed.settled if committed is not None else (False,) * len(acks)
        return {
            ref: "no such message: it was already acked, purged or deleted"
            for ref, found in zip(wanted, settled, strict=True)
            if not found
        }

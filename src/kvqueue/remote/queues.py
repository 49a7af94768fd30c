"""Named queues on a kvqueue server: ``db.queues`` and ``db.queue(name)`` of a
database opened with ``kvqueue.open("http://…")``.

:class:`AsyncRemoteQueues` and :class:`AsyncRemoteQueue` are the embedded
:class:`~kvqueue.queues.AsyncQueues` and :class:`~kvqueue.queues.AsyncQueue`
(so code typed against those takes them), with every public method replaced by
a thin adapter: encode the arguments, make one or a few calls of the server's
Cloudflare REST API (plus kvqueue's extensions, ``docs/http-api.md``), decode
the answer into the same result types. The wire shapes live in
:mod:`kvqueue.server.cloudflare`, which the server uses too.

The server decides what depends on its state (missing queues, pausing,
consumers, backlog limits, retries, dead-lettering). The arguments are checked
here, with the functions the embedded API checks them with, because JSON cannot
carry them faithfully (``True`` is not 1 here, bytes are not JSON); where the
embedded API looks at the queue before the arguments, so does the adapter. An
error the server raises comes back as the very class it raised: its
``x-kvqueue-error`` header names it (a REST error code is shared by several).

Queues are reached by id; the id of each name is looked up with the ``?name=``
filter of ``GET /queues`` and cached. A queue may be deleted and created again
under a new id, so a cached id that is not found is looked up once more.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from kvqueue import errors, limits
from kvqueue.accounts import check_account, stored_name
from kvqueue.atomic import KV_QUEUE
from kvqueue.consumers import Consumer, default_settings, make_consumer, whole_number
from kvqueue.messages import (
    ContentType,
    MessageSendRequest,
    build_batch,
    build_send,
    check_name,
    delay_ms,
)

# The embedded API's own checks, so that bad arguments fail as they do there.
from kvqueue.queues import (
    LEASE_PATTERN,
    UNSET,
    AckResult,
    AsyncQueue,
    AsyncQueues,
    MessagePage,
    PeekedMessage,
    PullResult,
    QueueInfo,
    QueueMetrics,
    SendResult,
    checked_settings,
    no_self_dead_letter,
    parse_lease_id,
)
from kvqueue.remote.http import Server
from kvqueue.server import cloudflare

# How often a consumer change is tried again when another client changed the
# consumer between the adapter's read and its write (the embedded API retries
# its compare-and-set the same way).
_CONSUMER_ATTEMPTS = 10
# GET /queues pages at most this many queues.
_PER_PAGE = 1000

# What the embedded API answers for lease ids and refs of a queue that no longer
# exists (its messages went with it); the server answers 404 for such a queue.
_UNKNOWN_LEASE = "unknown lease id"
_ACK_GONE = "no such message: it was already acked or deleted"
_RETRY_GONE = "the message is not held by this lease: it was acked, retried, or leased again"
_PURGE_GONE = "no such message: it was already acked, purged or deleted"


class AsyncRemoteQueues(AsyncQueues):
    """The named queues of one account on a kvqueue server (``db.queues``).

    Args:
        server: the server's REST API, with the account's token.
        account: that account (``await server.account()``).
    """

    # Deliberately no super().__init__(): nothing of the embedded implementation
    # (its database, storage and commits) exists here.
    def __init__(self, server: Server, account: str) -> None:
        self._server = server
        self.account = check_account(account)
        self._queues_path = f"/accounts/{self.account}/queues"
        self._ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<AsyncRemoteQueues of {self.account!r} on {self._server.url}>"

    def queue(self, name: str) -> AsyncQueue:
        """The queue ``name`` of this account, to send to and pull from."""
        return AsyncRemoteQueue(self, name)

    # --- reaching a queue by name -------------------------------------------------

    async def _find(self, name: str) -> dict[str, Any]:
        """The Queue object of ``name`` (``GET /queues?name=``), its id cached."""
        found = await self._server.call("GET", f"{self._queues_path}?name={name}")
        for shape in found or []:
            if shape.get("queue_name") == name:
                self._ids[name] = str(shape["queue_id"])
                return dict(shape)
        self._ids.pop(name, None)
        raise errors.QueueNotFound(name)

    async def _call(
        self, name: str, method: str, rest: str = "", body: dict[str, Any] | None = None
    ) -> Any:
        """One call on queue ``name``'s path (``/queues/{id}`` + ``rest``)."""
        cached = self._ids.get(name)
        queue_id = cached if cached is not None else (await self._find(name))["queue_id"]
        try:
            return await self._named(name, method, f"{queue_id}{rest}", body)
        except errors.QueueNotFound:
            if cached is None:
                raise
        # The queue was deleted since its id was cached, and may exist again under another.
        queue_id = (await self._find(name))["queue_id"]
        return await self._named(name, method, f"{queue_id}{rest}", body)

    async def _named(self, name: str, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One call, with the errors that name a queue rebuilt as the embedded API
        raises them: with its name (the server's may name its id) and attributes."""
        try:
            return await self._server.call(method, f"{self._queues_path}/{path}", body)
        except errors.QueueNotFound:
            self._ids.pop(name, None)
            raise errors.QueueNotFound(name) from None
        except errors.QueuePaused:
            raise errors.QueuePaused(name) from None
        except errors.ConsumerNotFound:
            raise errors.ConsumerNotFound(name) from None

    # --- management -------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        delivery_delay: int = 0,
        message_retention_period: int = limits.DEFAULT_RETENTION_SECONDS,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = limits.DEFAULT_QUEUE_BACKLOG_BYTES,
    ) -> QueueInfo:
        """Create a queue (``POST /queues``); see :meth:`AsyncQueues.create`."""
        check_name(name)
        given = {
            "delivery_delay": delivery_delay,
            "message_retention_period": message_retention_period,
            "max_backlog": max_backlog,
            "max_backlog_bytes": max_backlog_bytes,
        }
        checked_settings(default_settings(), **given)
        try:
            shape = await self._server.call(
                "POST", self._queues_path, cloudflare.queue_request(given, name)
            )
        except errors.QueueExists:
            raise errors.QueueExists(name) from None
        info = cloudflare.queue_from_json(shape)
        self._ids[name] = info.queue_id
        return info

    async def list(self) -> builtins.list[QueueInfo]:
        """Every named queue of this account, by name (``GET /queues``, page by page)."""
        infos: builtins.list[QueueInfo] = []
        page = 1
        while True:
            shapes = await self._server.call(
                "GET", f"{self._queues_path}?page={page}&per_page={_PER_PAGE}"
            )
            infos += [cloudflare.queue_from_json(shape) for shape in shapes or []]
            if len(shapes or []) < _PER_PAGE:
                break
            page += 1
        self._ids.update((info.name, info.queue_id) for info in infos)
        return infos

    async def get(self, name: str) -> QueueInfo:
        """One queue (``GET /queues?name=``); raises QueueNotFound."""
        return cloudflare.queue_from_json(await self._find(check_name(name)))

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
        """Change the given settings of a queue and leave the others as they are
        (``PATCH /queues/{id}``)."""
        check_name(name)
        given = {
            "delivery_delay": delivery_delay,
            "message_retention_period": message_retention_period,
            "delivery_paused": delivery_paused,
            "max_backlog": max_backlog,
            "max_backlog_bytes": max_backlog_bytes,
        }
        given = {key: value for key, value in given.items() if value is not UNSET}
        try:
            checked_settings(default_settings(), **given)
        except errors.InvalidInput:
            await self._find(name)  # a missing queue is reported first, as locally
            raise
        shape = await self._call(name, "PATCH", "", cloudflare.queue_request(given))
        return cloudflare.queue_from_json(shape)

    async def pause(self, name: str) -> QueueInfo:
        """Stop delivery (``PATCH`` ``delivery_paused: true``); sends still work."""
        return await self.update(name, delivery_paused=True)

    async def resume(self, name: str) -> QueueInfo:
        """Start delivery again after ``pause`` (``PATCH`` ``delivery_paused: false``)."""
        return await self.update(name, delivery_paused=False)

    async def delete(self, name: str) -> None:
        """Delete a queue, its consumer and every message in it (``DELETE /queues/{id}``)."""
        await self._call(check_name(name), "DELETE")
        self._ids.pop(name, None)

    async def purge(self, name: str) -> None:
        """Delete every message of a queue (``POST /queues/{id}/purge``)."""
        body = {"delete_messages_permanently": True}
        await self._call(check_name(name), "POST", "/purge", body)

    async def last_purge(self, name: str) -> datetime | None:
        """When the queue was last purged, or None if never (``GET /queues/{id}/purge``)."""
        result = await self._call(check_name(name), "GET", "/purge")
        return cloudflare.purge_status_from_json(result)

    async def metrics(self, name: str) -> QueueMetrics:
        """Backlog count and bytes, oldest message, in-flight, retried and dead-lettered
        (``GET /queues/{id}/metrics``; the KV queue's: ``GET /kv-queue/metrics``)."""
        if name == KV_QUEUE:
            path = f"/accounts/{self.account}/kv-queue/metrics"
            return cloudflare.metrics_from_json(await self._server.call("GET", path))
        return cloudflare.metrics_from_json(await self._call(check_name(name), "GET", "/metrics"))

    async def peek(self, name: str, n: int = 5) -> builtins.list[PeekedMessage]:
        """Up to ``n`` messages in delivery order, without leasing them
        (``POST /queues/{id}/messages/peek``)."""
        n = whole_number("n", n, 1, limits.MAX_PULL_BATCH_SIZE)
        request = cloudflare.peek_request(n)
        result = await self._call(check_name(name), "POST", "/messages/peek", request)
        return [cloudflare.peeked_from_json(m, "raw") for m in result["messages"]]

    async def browse_page(
        self, name: str, n: int = 100, *, cursor: str | None = None
    ) -> MessagePage:
        """A page of the queue's messages in the order they were sent, leasing nothing
        (``POST /queues/{id}/messages/browse``); see :meth:`AsyncQueues.browse_page`."""
        n = whole_number("n", n, 1, limits.MAX_PULL_BATCH_SIZE)
        if cursor is not None and not isinstance(cursor, str):
            raise errors.InvalidInput(f"{cursor!r} is not a cursor of browse_page")
        request = {**cloudflare.peek_request(n), "cursor": cursor}
        result = await self._call(check_name(name), "POST", "/messages/browse", request)
        messages = [cloudflare.peeked_from_json(m, "raw") for m in result["messages"]]
        return MessagePage(messages, result.get("cursor"))

    # --- consumers ------------------------------------------------------------------

    async def get_consumer(self, name: str) -> Consumer | None:
        """The queue's consumer, or None (``GET /queues?name=``)."""
        return (await self.get(name)).consumer

    async def add_consumer(self, name: str, /, type: str = "worker", **settings: Any) -> Consumer:
        """Give a queue its consumer (``POST /queues/{id}/consumers``); raises
        ConsumerExists if it has one."""
        consumer = make_consumer(type, **settings)
        no_self_dead_letter(name, consumer)

        def decide(existing: Consumer | None) -> Consumer:
            if existing is not None:
                raise errors.ConsumerExists(name, existing.describe())
            return consumer

        added = await self._set_consumer(name, decide)
        assert added is not None
        return added

    async def update_consumer(
        self, name: str, /, type: str = "worker", **settings: Any
    ) -> Consumer:
        """Replace the queue's consumer settings, adding the consumer if it has none
        (``PUT /queues/{id}/consumers/{consumer_id}``)."""
        consumer = make_consumer(type, **settings)
        no_self_dead_letter(name, consumer)
        updated = await self._set_consumer(name, lambda existing: consumer)
        assert updated is not None
        return updated

    async def remove_consumer(self, name: str) -> None:
        """Remove the queue's consumer (``DELETE /queues/{id}/consumers/{consumer_id}``);
        raises ConsumerNotFound if it has none."""

        def decide(existing: Consumer | None) -> None:
            if existing is None:
                raise errors.ConsumerNotFound(name)

        await self._set_consumer(name, decide)

    async def claim_worker(self, name: str, consumer: Consumer) -> Consumer:
        """Register ``consumer`` (a worker) on the queue, or take over its settings if
        the same worker is registered already (``POST``, or ``PUT``, on the consumers);
        another consumer raises ConsumerExists."""
        no_self_dead_letter(name, consumer)

        def decide(existing: Consumer | None) -> Consumer:
            if existing is not None and (
                existing.type != "worker" or existing.script_name != consumer.script_name
            ):
                raise errors.ConsumerExists(name, existing.describe())
            return consumer

        claimed = await self._set_consumer(name, decide)
        assert claimed is not None
        return claimed

    async def _set_consumer(
        self, name: str, decide: Callable[[Consumer | None], Consumer | None]
    ) -> Consumer | None:
        """Set the queue's consumer to ``decide(current)`` (None: remove it). The
        server keeps a replaced consumer's id; when another client changed the
        consumer in between (the server then refuses), read it and decide again."""
        check_name(name)
        for _ in range(_CONSUMER_ATTEMPTS):
            existing = cloudflare.queue_from_json(await self._find(name)).consumer
            wanted = decide(existing)
            try:
                if existing is None:
                    assert wanted is not None  # decide refuses to remove no consumer
                    body = cloudflare.consumer_request(wanted)
                    shape = await self._call(name, "POST", "/consumers", body)
                    return cloudflare.consumer_from_json(shape)
                path = f"/consumers/{existing.consumer_id}"
                if wanted is None:
                    await self._call(name, "DELETE", path)
                    return None
                shape = await self._call(name, "PUT", path, cloudflare.consumer_request(wanted))
                return cloudflare.consumer_from_json(shape)
            except (errors.ConsumerExists, errors.ConsumerNotFound):
                continue  # changed by another client since it was read
        raise errors.StorageError(f"queue {name!r} kept changing; its consumer was not changed")


class AsyncRemoteQueue(AsyncQueue):
    """One named queue on a kvqueue server: ``db.queue(name)``."""

    # Deliberately no super().__init__(), as for AsyncRemoteQueues.
    def __init__(self, queues: AsyncRemoteQueues, name: str) -> None:
        self._queues = queues
        self.name = check_name(name)
        self.account = queues.account
        #: The name this queue is stored under on the server (see :mod:`kvqueue.accounts`).
        self.stored_name = stored_name(self.account, name)

    def __repr__(self) -> str:
        return f"<AsyncQueue {self.name!r} on {self._queues._server.url}>"

    def _call(self, method: str, rest: str, body: dict[str, Any] | None = None) -> Awaitable[Any]:
        return self._queues._call(self.name, method, rest, body)

    async def send(
        self,
        body: Any,
        *,
        content_type: ContentType | str = "json",
        delay_seconds: float | None = None,
    ) -> SendResult:
        """Send one message (``POST /queues/{id}/messages``, its bytes in base64);
        see :meth:`AsyncQueue.send`."""
        message = build_send(self.name, body, content_type, delay_seconds)
        result = await self._call("POST", "/messages", cloudflare.push_request(message))
        return cloudflare.sent_from_json(result)

    async def send_batch(
        self,
        messages: Iterable[MessageSendRequest | Any],
        *,
        delay_seconds: float | None = None,
    ) -> SendResult:
        """Send up to 100 messages at once, all or none (``POST /queues/{id}/messages/batch``);
        see :meth:`AsyncQueue.send_batch`."""
        # The batch's delay is already in each message that has none of its own.
        built = build_batch(self.name, messages, delay_seconds)
        request = {"messages": [cloudflare.push_request(m) for m in built]}
        return cloudflare.sent_from_json(await self._call("POST", "/messages/batch", request))

    async def metrics(self) -> QueueMetrics:
        """This queue's metrics (``GET /queues/{id}/metrics``)."""
        return await self._queues.metrics(self.name)

    async def pull(
        self,
        batch_size: int | None = None,
        visibility_timeout_ms: int | None = None,
        *,
        wait_ms: int = 0,
        consumer_id: str | None = None,
        lease: str | None = None,
    ) -> PullResult:
        """Lease up to ``batch_size`` messages for ``visibility_timeout_ms``
        (``POST /queues/{id}/messages/pull``); see :meth:`AsyncQueue.pull`."""
        refused = _pull_refusal(batch_size, visibility_timeout_ms, wait_ms, lease)
        if refused is not None:
            # Locally the queue is looked at before the arguments: ask the server with
            # a batch size it refuses, so that a missing or paused queue (or another
            # consumer) is what is raised, as there; else the arguments' error is.
            probe = cloudflare.pull_request(0, None, 0, consumer_id, None)
            with contextlib.suppress(errors.InvalidInput):
                await self._call("POST", "/messages/pull", probe)
            raise refused
        request = cloudflare.pull_request(
            batch_size, visibility_timeout_ms, wait_ms, consumer_id, lease
        )
        result = await self._call("POST", "/messages/pull", request)
        return cloudflare.pull_from_json(result, "raw")

    async def extend(self, lease_ids: Iterable[str], visibility_timeout_ms: int) -> list[str]:
        """Keep pulled messages leased for ``visibility_timeout_ms`` more
        (``POST /queues/{id}/messages/extend``); returns the lease ids still held."""
        timeout = whole_number(
            "visibility_timeout_ms", visibility_timeout_ms, 1, limits.MAX_VISIBILITY_TIMEOUT_MS
        )
        # What is not a lease id is not held; the server refuses non-strings.
        held = [lease_id for lease_id in lease_ids if isinstance(lease_id, str) and lease_id]
        if not held:
            return []
        try:
            result = await self._call(
                "POST", "/messages/extend", cloudflare.extend_request(held, timeout)
            )
        except errors.QueueNotFound:
            return []  # the queue's messages went with it
        return [str(lease_id) for lease_id in result["extended"]]

    async def ack(
        self,
        acks: Iterable[str] = (),
        retries: Iterable[str | tuple[str, float | None]] = (),
    ) -> AckResult:
        """Settle pulled messages by lease id: ack them, or retry them, optionally
        after a delay in seconds (``POST /queues/{id}/messages/ack``); see
        :meth:`AsyncQueue.ack`."""
        # Lease ids that are not strings cannot travel as lease ids; they match
        # nothing, so they warn here as they do locally.
        warnings: dict[str, str] = {}
        ack_ids: list[str] = []
        for lease_id in acks:
            if isinstance(lease_id, str):
                ack_ids.append(lease_id)
            else:
                warnings[str(lease_id)] = _UNKNOWN_LEASE
        retried: list[tuple[str, float | None]] = []
        for item in retries:
            lease_id, delay = item if isinstance(item, tuple) else (item, None)
            if not isinstance(lease_id, str):
                warnings[str(lease_id)] = _UNKNOWN_LEASE
            elif parse_lease_id(self.stored_name, lease_id) is None:
                retried.append((lease_id, None))  # warned about, its delay never looked at
            else:
                delay_ms(delay)  # raises InvalidDelay as locally, before anything is settled
                retried.append((lease_id, delay))
        if not ack_ids and not retried:
            return AckResult(0, 0, warnings)
        try:
            result = await self._call(
                "POST", "/messages/ack", cloudflare.ack_request(ack_ids, retried)
            )
        except errors.QueueNotFound:
            # Locally a deleted queue still answers: its messages are gone, so every id warns.
            settled = [(i, _ACK_GONE) for i in ack_ids] + [(i, _RETRY_GONE) for i, _ in retried]
            for lease_id, gone in settled:
                known = parse_lease_id(self.stored_name, lease_id) is not None
                warnings[lease_id] = gone if known else _UNKNOWN_LEASE
            return AckResult(0, 0, warnings)
        acked = cloudflare.ack_from_json(result)
        warnings.update(acked.warnings)
        return AckResult(acked.ack_count, acked.retry_count, warnings, acked.dead_lettered)

    async def purge_messages(self, refs: Iterable[str]) -> dict[str, str]:
        """Delete exactly the messages whose ``ref`` (from a peek) is given
        (``POST /queues/{id}/messages/purge``); returns a warning for each ref that
        matched no message."""
        wanted = list(dict.fromkeys(refs))
        for ref in wanted:
            if not isinstance(ref, str) or not ref:
                raise errors.InvalidInput(f"a message ref is a non-empty string, got {ref!r}")
        if not wanted:
            return {}
        request = cloudflare.purge_messages_request(wanted)
        try:
            result = await self._call("POST", "/messages/purge", request)
        except errors.QueueNotFound:
            return dict.fromkeys(wanted, _PURGE_GONE)  # the queue's messages went with it
        return {str(ref): str(warning) for ref, warning in result["warnings"].items()}


def _pull_refusal(
    batch_size: int | None, visibility_timeout_ms: int | None, wait_ms: int, lease: str | None
) -> errors.InvalidInput | None:
    """What the embedded ``pull`` raises for these arguments, or None (the defaults,
    None, come from the queue's consumer and are always valid)."""
    try:
        if batch_size is not None:
            whole_number("batch_size", batch_size, 1, limits.MAX_PULL_BATCH_SIZE)
        if visibility_timeout_ms is not None:
            whole_number(
                "visibility_timeout_ms", visibility_timeout_ms, 1, limits.MAX_VISIBILITY_TIMEOUT_MS
            )
        whole_number("wait_ms", wait_ms, 0, limits.MAX_PULL_WAIT_MS)
    except errors.InvalidInput as refused:
        return refused
    if lease is not None and not (isinstance(lease, str) and LEASE_PATTERN.fullmatch(lease)):
        return errors.InvalidOption(f"a lease is 16 hex characters, got {lease!r}")
    return None

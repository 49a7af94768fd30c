"""Consuming through a kvqueue server: what a Worker needs when its database is a URL.

A worker on another machine reaches its queues through the server's Cloudflare
REST API plus kvqueue's documented extensions (``docs/http-api.md``): it
registers its consumer with the consumers API (so its settings live with the
queue, shared with every other worker), leases batches with ``pull`` (as that
consumer, with a lease it names and a short long-poll), renews them with
``messages/extend`` and settles them with ``messages/ack``. Retries, backoff
and dead-lettering are decided by the server from the stored consumer, exactly
as for a local worker. Needs the ``remote`` extra (httpx).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from kvqueue import errors, limits, model
from kvqueue.clock import Clock, SystemClock
from kvqueue.consumers import Consumer
from kvqueue.delivery import Decision
from kvqueue.remote.http import Server
from kvqueue.server import cloudflare

logger = logging.getLogger("kvqueue")

# How long one lease request may wait on the server for a message to arrive:
# short, so a stopping worker is never held up for long.
_LONG_POLL_MS = 1_000
# How often a worker whose queue is paused (or not its own) looks again.
_GATE_POLL_SECONDS = 1.0


class RemoteQueues:
    """A Worker's view of its queues on a server (the local twin lives in ``worker``)."""

    def __init__(
        self, server: Server, *, lease_ms: int, clock: Clock | None = None, owned: bool = True
    ) -> None:
        self.server = server
        self.lease_ms = lease_ms
        #: Times batch timeouts and lease renewals (a database's clock, when it has one).
        self.clock: Clock = clock or SystemClock()
        # A server borrowed from an open database is closed with that database.
        self._owned = owned

    async def claim(self, queue: str, consumer: Consumer) -> Consumer:
        """Register ``consumer`` on ``queue``, or take over its settings if the same
        worker is registered; another consumer raises ConsumerExists."""
        path = await self.server.queue_path(queue)
        body = cloudflare.consumer_request(consumer)
        for attempt in range(2):
            existing = await self.server.call("GET", f"{path}/consumers")
            if existing:
                current = cloudflare.consumer_from_json(existing[0])
                if current.type != "worker" or current.script_name != consumer.script_name:
                    raise errors.ConsumerExists(queue, current.describe())
                url = f"{path}/consumers/{current.consumer_id}"
                return cloudflare.consumer_from_json(await self.server.call("PUT", url, body))
            try:
                stored = await self.server.call("POST", f"{path}/consumers", body)
            except errors.ConsumerExists:
                if attempt:
                    raise
                continue  # another worker registered first: take its settings over
            return cloudflare.consumer_from_json(stored)
        raise AssertionError("unreachable")

    def source(self, queue: str, consumer: Consumer) -> RemoteSource:
        """Where an engine takes ``queue``'s batches from."""
        return RemoteSource(self.server, queue, consumer, lease_ms=self.lease_ms, clock=self.clock)

    async def refusal(self, queue: str, consumer: Consumer) -> str | None:
        """Why ``queue`` may not be consumed now, or None."""
        try:
            found = await self.server.queue(queue)
        except errors.QueueNotFound:
            return "it was deleted"
        consumers = found.get("consumers") or []
        if not consumers or consumers[0].get("consumer_id") != consumer.consumer_id:
            return "its consumer was removed or replaced"
        if (found.get("settings") or {}).get("delivery_paused"):
            return "delivery is paused"
        return None

    async def close(self) -> None:
        """Close the connections (unless the server belongs to an open database)."""
        if self._owned:
            await self.server.close()


class RemoteSource:
    """A queue on a server, as a :class:`kvqueue.delivery.Source`.

    Waiting is the server's long poll, so a wait leases: after an idle wait, the
    next lease long-polls; a wait that tops a batch up pulls ahead under the
    batch's lease (the engine can then end that wait at the batch's deadline on
    its own clock), and the lease call that follows returns what that pull got.
    Each settlement is logged as the server reports it (acked, retried,
    dead-lettered, or why not), as a local worker logs its own.
    """

    def __init__(
        self,
        server: Server,
        queue: str,
        consumer: Consumer,
        *,
        lease_ms: int,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._server = server
        self._queue = queue
        self._consumer = consumer
        self._lease_ms = lease_ms
        self._path: str | None = None
        self._wait_ms = 0
        # A fill's pull, started by wait() and always handed to the next lease()
        # call (never cancelled with the wait), so nothing it leases is lost.
        self._ahead: asyncio.Task[list[model.LeasedMessage]] | None = None

    async def _messages_path(self) -> str:
        if self._path is None:
            self._path = await self._server.queue_path(self._queue)
        return f"{self._path}/messages"

    async def lease(self, lease: str, limit: int) -> list[model.LeasedMessage]:
        """See :meth:`kvqueue.delivery.Source.lease`."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            return await ahead
        wait_ms, self._wait_ms = self._wait_ms, 0
        # A pull takes at most 100; the engine asks again for the batches still free.
        return await self._pull(lease, min(limit, limits.MAX_PULL_BATCH_SIZE), wait_ms)

    async def _pull(self, lease: str, limit: int, wait_ms: int) -> list[model.LeasedMessage]:
        # As the consumer, under ``lease``, every body exact (text that is not UTF-8 too).
        body = cloudflare.pull_request(
            limit, self._lease_ms, wait_ms, self._consumer.consumer_id, lease
        )
        try:
            result = await self._server.call("POST", f"{await self._messages_path()}/pull", body)
        except (errors.QueuePaused, errors.QueueNotFound, errors.ConsumerNotFound):
            # The gate notices on its next look; nothing to deliver meanwhile.
            return []
        return [_leased(self._queue, m) for m in result.get("messages") or []]

    async def extend(self, held: Sequence[model.LeasedMessage]) -> set[str]:
        """See :meth:`kvqueue.delivery.Source.extend`."""
        leases = [{"lease_id": m.lease} for m in held]
        body = {"leases": leases, "visibility_timeout_ms": self._lease_ms}
        result = await self._server.call("POST", f"{await self._messages_path()}/extend", body)
        kept = set(result.get("extended") or [])
        return {m.message_id for m in held if m.lease in kept}

    async def settle(self, decisions: Sequence[Decision]) -> None:
        """See :meth:`kvqueue.delivery.Source.settle`: one ack call for them all."""
        acks = [d.message.lease for d in decisions if not d.retry]
        retries = [
            (d.message.lease, None if d.delay_ms is None else d.delay_ms / 1000)
            for d in decisions
            if d.retry
        ]
        try:
            path = f"{await self._messages_path()}/ack"
            result = await self._server.call("POST", path, cloudflare.ack_request(acks, retries))
        except errors.KvQueueError:
            logger.exception("could not settle %d messages of %r", len(decisions), self._queue)
            return
        acked = cloudflare.ack_from_json(result)
        dead_lettered = set(acked.dead_lettered)
        for decision in decisions:
            lease_id = decision.message.lease
            message_id = decision.message.message_id
            if not decision.retry:
                outcome = "acked"
            elif lease_id in dead_lettered:
                outcome = "dead-lettered"
            else:
                outcome = "retried"
            refused = acked.warnings.get(lease_id)
            if refused is None:
                logger.debug("message %s %s", message_id, outcome)
            else:
                logger.warning("message %s was not %s: %s", message_id, outcome, refused)

    def changes(self) -> int:
        """See :meth:`kvqueue.delivery.Source.changes`: the server tracks changes."""
        return 0

    async def wait(
        self,
        *,
        timeout_ms: int,
        after_ms: int | None,
        since: int | None,
        fill: tuple[str, int] | None = None,
    ) -> None:
        """See :meth:`kvqueue.delivery.Source.wait`: a long poll on the server, by the
        next lease (idle) or by a pull ahead for the batch being filled."""
        wait_ms = max(0, min(timeout_ms, _LONG_POLL_MS))
        if fill is None:
            self._wait_ms = wait_ms
            return
        if self._ahead is None:
            lease, limit = fill
            self._ahead = asyncio.create_task(self._pull(lease, limit, wait_ms))
        # asyncio.wait, unlike awaiting the task, leaves it running if this is cancelled.
        await asyncio.wait({self._ahead})

    async def wait_for_change(self, *, timeout_ms: int, since: int | None = None) -> None:
        """See :meth:`kvqueue.delivery.Source.wait_for_change`: look again shortly.

        In real time, as a local worker's gate waits: the server's state does not
        move with this worker's clock."""
        await asyncio.sleep(min(timeout_ms / 1000, _GATE_POLL_SECONDS))


def _leased(queue: str, message: dict[str, Any]) -> model.LeasedMessage:
    pulled = cloudflare.pulled_from_json(message, "raw")
    return model.LeasedMessage(
        queue,
        pulled.id,
        pulled.raw,
        pulled.content_type,
        pulled.timestamp_ms,
        pulled.attempts,
        pulled.lease_id,
    )

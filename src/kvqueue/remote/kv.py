"""The KV side of a database on a kvqueue server: KV Connect, as a Storage.

Reads are ``snapshot_read``, writes ``atomic_write``, watches ``watch``, like
any KV Connect client. The KV queue's consumer side uses kvqueue's extension
(``queue/lease``, ``queue/extend``, settlements in ``atomic_write``), so
``listen_queue`` runs here with the same engine and retry policy as on a local
database. Named queues are not reached through this storage but through the
Cloudflare API (:mod:`kvqueue.remote.queues`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from kvqueue import errors, model
from kvqueue.atomic import KV_QUEUE, decode_attributes, encode_attributes
from kvqueue.clock import Clock, SystemClock
from kvqueue.model import MutationKind
from kvqueue.remote.http import Server
from kvqueue.server import kvconnect

logger = logging.getLogger("kvqueue")

_MUTATION_TYPES = {
    MutationKind.SET: kvconnect.M_SET,
    MutationKind.DELETE: kvconnect.M_DELETE,
    MutationKind.SUM: kvconnect.M_SUM,
    MutationKind.MIN: kvconnect.M_MIN,
    MutationKind.MAX: kvconnect.M_MAX,
}
# How long one lease request may wait on the server: short, so stopping is quick.
_LONG_POLL_MS = 1_000
# After a watch stream breaks, wait this long before opening another.
_WATCH_RETRY_S = (0.05, 0.2, 1.0, 2.0)


class KvConnectStorage:
    """The :class:`kvqueue.storage.base.Storage` of a database on a server: the KV
    keyspace and KV queue of ``server``'s token's account."""

    schema_versions = (0, 0)

    def __init__(self, server: Server, clock: Clock | None = None) -> None:
        # The KV Connect session is opened on first use, not here: a token limited
        # to some queues may not use KV at all, yet its database's queues work.
        self.clock = clock or SystemClock()
        self._server = server
        self._session: tuple[str, dict[str, str]] | None = None
        self._opening = asyncio.Lock()
        self._wait_ms = 0

    async def _opened(self) -> tuple[str, dict[str, str]]:
        """The data-path endpoint and headers, after the metadata exchange.

        Raises:
            Unauthenticated, Forbidden: the server refused the token for KV.
            StorageError: the server cannot be reached or does not speak KV Connect 3.
        """
        async with self._opening:
            if self._session is None:
                self._session = await self._exchange()
        return self._session

    async def _exchange(self) -> tuple[str, dict[str, str]]:
        server = self._server
        response = await server.send("POST", server.url + "/", json={"supportedVersions": [3]})
        _raise_for(response)
        meta = response.json()
        if meta.get("version") != 3:
            raise errors.StorageError(f"{server.url} does not speak KV Connect version 3")
        strong = [e["url"] for e in meta["endpoints"] if e.get("consistency") == "strong"]
        endpoint = strong[0]
        if endpoint.startswith("/"):
            endpoint = server.url + endpoint
        headers = {
            "authorization": f"Bearer {meta['token']}",
            "content-type": kvconnect.PROTOBUF,
            "x-denokv-version": "3",
            "x-denokv-database-id": meta["databaseId"],
        }
        return endpoint, headers

    async def _call(self, path: str, message: Any, answer: Any) -> Any:
        endpoint, headers = await self._opened()
        response = await self._server.send(
            "POST",
            f"{endpoint}/{path}",
            content=message.SerializeToString(),
            headers=headers,
        )
        _raise_for(response)
        return kvconnect.parse(answer, response.content)

    # --- KV -------------------------------------------------------------------------

    async def read(self, ranges: Sequence[model.ReadRange]) -> list[list[model.StoredEntry]]:
        """See :meth:`kvqueue.storage.base.Storage.read`: one ``snapshot_read``."""
        request = kvconnect.SnapshotRead()
        for r in ranges:
            request.ranges.add(start=r.start, end=r.end, limit=r.limit, reverse=r.reverse)
        answer = await self._call("snapshot_read", request, kvconnect.SnapshotReadOutput)
        return [[_stored(e) for e in page.values] for page in answer.ranges]

    async def commit(self, write: model.AtomicWrite) -> model.Committed | None:
        """See :meth:`kvqueue.storage.base.Storage.commit`: one ``atomic_write``."""
        if write.queue_changes:
            raise errors.InvalidInput("on a server, queues are managed through db.queues")
        request = kvconnect.AtomicWrite()
        for check in write.checks:
            request.checks.add(key=check.key, versionstamp=check.versionstamp or b"")
        for m in write.mutations:
            item = request.mutations.add(key=m.key, mutation_type=_MUTATION_TYPES[m.kind])
            item.value.data = m.value
            item.value.encoding = int(m.encoding)
            if m.expire_in_ms is not None:
                # A relative expiry (kvqueue's field): immune to the two clocks' skew.
                item.expire_in_ms = max(1, m.expire_in_ms)
        for e in write.enqueues:
            _add_enqueue(request, e)
        for c in write.lease_checks:
            request.lease_checks.add(message_id=c.message_id, lease=c.lease)
        for s in write.settlements:
            _add_settlement(request, s)
        answer = await self._call("atomic_write", request, kvconnect.AtomicWriteOutput)
        if answer.status == kvconnect.AW_CHECK_FAILURE:
            return None
        if answer.status != kvconnect.AW_SUCCESS:
            raise errors.StorageError(f"the server refused the write (status {answer.status})")
        return model.Committed(bytes(answer.versionstamp))

    async def watch(
        self, keys: Sequence[bytes]
    ) -> AsyncGenerator[list[model.StoredEntry | None], None]:
        """See :meth:`kvqueue.storage.base.Storage.watch`: a ``watch`` stream,
        opened again (and read again from the start) if it breaks."""
        request = kvconnect.Watch()
        for key in keys:
            request.keys.add(key=key)
        current: list[model.StoredEntry | None] = [None] * len(keys)
        last: list[bytes | None] | None = None
        failures = 0
        while True:
            try:
                async for output in self._watch_stream(request):
                    failures = 0
                    for index, item in enumerate(output.keys):
                        if item.changed:
                            has = item.HasField("entry_if_changed")
                            current[index] = _stored(item.entry_if_changed) if has else None
                    stamps = [None if e is None else e.versionstamp for e in current]
                    if stamps != last:
                        last = stamps
                        yield list(current)
            except errors.StorageError:
                logger.warning("watch stream broke; opening it again", exc_info=True)
            await asyncio.sleep(_WATCH_RETRY_S[min(failures, len(_WATCH_RETRY_S) - 1)])
            failures += 1

    async def _watch_stream(self, request: Any) -> AsyncGenerator[Any, None]:
        endpoint, headers = await self._opened()
        async with self._server.stream(
            "POST",
            f"{endpoint}/watch",
            content=request.SerializeToString(),
            headers=headers,
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            buffer = b""
            async for chunk in response.aiter_bytes():
                buffer += chunk
                while len(buffer) >= 4:
                    size = int.from_bytes(buffer[:4], "little")
                    if len(buffer) < 4 + size:
                        break
                    data, buffer = buffer[4 : 4 + size], buffer[4 + size :]
                    if data:  # an empty frame only keeps the stream alive
                        yield kvconnect.parse(kvconnect.WatchOutput, data)

    # --- The KV queue -------------------------------------------------------------------

    async def lease(
        self,
        queue: str,
        *,
        lease: str,
        limit: int,
        lease_ms: int,
        max_leases: int | None = None,
    ) -> list[model.LeasedMessage]:
        """See :meth:`kvqueue.storage.base.Storage.lease`: ``queue/lease``, which also
        waits on the server for as long as the last :meth:`wait` asked."""
        _only_kv_queue(queue)
        wait_ms, self._wait_ms = self._wait_ms, 0
        request = kvconnect.QueueLease(limit=limit, lease_ms=lease_ms, lease=lease, wait_ms=wait_ms)
        answer = await self._call("queue/lease", request, kvconnect.QueueLeaseOutput)
        return [
            model.LeasedMessage(
                KV_QUEUE,
                m.message_id,
                bytes(m.payload),
                "v8",
                m.enqueued_at_ms,
                m.attempts,
                m.lease,
                encode_attributes(
                    list(m.backoff_schedule), [bytes(k) for k in m.keys_if_undelivered]
                ),
            )
            for m in answer.messages
        ]

    async def extend(self, leases: Sequence[model.LeaseCheck], *, lease_ms: int) -> set[str]:
        """See :meth:`kvqueue.storage.base.Storage.extend`: ``queue/extend``."""
        request = kvconnect.QueueExtend(lease_ms=lease_ms)
        for c in leases:
            request.leases.add(message_id=c.message_id, lease=c.lease)
        answer = await self._call("queue/extend", request, kvconnect.QueueExtendOutput)
        return set(answer.message_ids)

    @property
    def changes(self) -> int:
        """See :attr:`kvqueue.storage.base.Storage.changes`: the server tracks changes."""
        return 0

    @property
    def queue_changes(self) -> int | None:
        """See :attr:`kvqueue.storage.base.Storage.queue_changes`: not tracked here."""
        return None

    @property
    def arrivals(self) -> int:
        """See :attr:`kvqueue.storage.base.Storage.arrivals`: the server tracks changes."""
        return 0

    async def wait(
        self,
        queue: str | None,
        *,
        timeout_ms: int,
        after_ms: int | None = None,
        since: int | None = None,
        acks: bool = True,
    ) -> None:
        """See :meth:`kvqueue.storage.base.Storage.wait`: the next lease waits on the
        server instead (a long poll)."""
        if queue is None:
            await self.clock.sleep(min(timeout_ms, _LONG_POLL_MS) / 1000)
            return
        self._wait_ms = max(0, min(timeout_ms, _LONG_POLL_MS))

    async def queues(self, names: Sequence[str] | None = None) -> list[model.QueueRecord]:
        """Not over KV Connect: named queues go through ``db.queues``."""
        raise errors.InvalidInput("on a server, queues are reached through db.queues")

    async def stats(self, queue: str) -> model.QueueStats:
        """Not over KV Connect: see :meth:`queues`."""
        raise errors.InvalidInput("on a server, queue metrics come from db.queues.metrics")

    async def peek(self, queue: str, *, limit: int) -> list[model.StoredMessage]:
        """Not over KV Connect: see :meth:`queues`."""
        raise errors.InvalidInput("on a server, messages are peeked through db.queues.peek")

    async def browse(
        self, queue: str, *, limit: int, after: tuple[int, int] | None = None
    ) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
        """Not over KV Connect: see :meth:`queues`."""
        raise errors.InvalidInput("on a server, messages are browsed through db.queues.browse_page")

    async def purge_expired(self) -> int | None:
        """The server sweeps its own expired keys and messages."""
        return None

    async def close(self) -> None:
        """Close the connections to the server."""
        await self._server.close()


def _raise_for(response: Any) -> None:
    if response.status_code < 400:
        return
    message = response.text.strip() or f"HTTP {response.status_code}"
    raise errors.by_name(response.headers.get("x-kvqueue-error"), response.status_code, message)


def _stored(entry: Any) -> model.StoredEntry:
    return model.StoredEntry(
        bytes(entry.key),
        bytes(entry.value),
        model.ValueEncoding(entry.encoding),
        bytes(entry.versionstamp),
    )


def _only_kv_queue(queue: str) -> None:
    if queue != KV_QUEUE:
        raise errors.InvalidInput("on a server, named queues are pulled through db.queue(name)")


def _add_enqueue(request: Any, e: model.Enqueue) -> None:
    item = request.enqueues.add(payload=e.body)
    if e.queue == KV_QUEUE:
        backoff, undelivered = decode_attributes(e.attributes)
        item.delay_ms = e.delay_ms or 0
        item.backoff_schedule.extend(backoff)
        item.exact_backoff = True
        item.keys_if_undelivered.extend(undelivered)
        item.max_backlog = e.max_backlog or 0
        return
    item.queue = e.queue
    item.content_type = e.content_type
    if e.delay_ms is None:
        item.queue_delay = True
    else:
        item.delay_ms = e.delay_ms


def _add_settlement(request: Any, s: model.Settlement) -> None:
    _only_kv_queue(s.queue)
    if isinstance(s, model.Ack):
        request.settlements.add(message_id=s.message_id, kind=kvconnect.SETTLE_ACK)
    elif isinstance(s, model.Retry):
        request.settlements.add(
            message_id=s.message_id, lease=s.lease, kind=kvconnect.SETTLE_RETRY, delay_ms=s.delay_ms
        )
    else:
        request.settlements.add(
            message_id=s.message_id, lease=s.lease, kind=kvconnect.SETTLE_DEAD_LETTER
        )

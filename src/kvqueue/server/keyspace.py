"""One account's KV keyspace and KV queue, as KV Connect reaches them.

Translates KV Connect messages into the storage's model and back, adding the
account's key prefix on the way in and taking it off on the way out, and checks
every key, value and limit with the same functions the embedded API uses. A
key that is not a valid encoded key is refused, so no request can reach the
reserved keys (tokens) or another account's keys.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from kvqueue import errors, limits, model
from kvqueue.accounts import kv_prefix, stored_name
from kvqueue.atomic import (
    KV_QUEUE,
    check_expire_in,
    check_totals,
    decode_attributes,
    kv_message,
)
from kvqueue.database import AsyncDatabase
from kvqueue.keys import decode_key, encode_write_key
from kvqueue.messages import raw_send
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.server import kvconnect
from kvqueue.storage.common import lease_within

#: The highest key byte a range may reach: keys from 0xFF on are kvqueue's own.
_RESERVED = b"\xff"
# The denokv server allows 10 retry delays, and PyPI denokv sends 10 by default.
MAX_REMOTE_BACKOFF_ENTRIES = 10
_KINDS = {
    kvconnect.M_SET: MutationKind.SET,
    kvconnect.M_DELETE: MutationKind.DELETE,
    kvconnect.M_SUM: MutationKind.SUM,
    kvconnect.M_MIN: MutationKind.MIN,
    kvconnect.M_MAX: MutationKind.MAX,
}
_SETTLEMENTS = (kvconnect.SETTLE_ACK, kvconnect.SETTLE_RETRY, kvconnect.SETTLE_DEAD_LETTER)


def wire_key(data: bytes) -> bytes:
    """``data`` if it is a key as the embedded API would encode it.

    Raises:
        InvalidKey, KeyTooLarge: it is not, or it is too long.
    """
    if encode_write_key(decode_key(data)) != data:
        raise errors.InvalidKey("the key is not in the canonical key encoding")
    return data


def _encoding(value: int) -> ValueEncoding:
    try:
        return ValueEncoding(value)
    except ValueError:
        raise errors.InvalidValue(f"unknown value encoding {value}") from None


class Keyspace:
    """What KV Connect does to one account's keys and KV queue."""

    def __init__(self, database: AsyncDatabase, account: str) -> None:
        self._database = database
        self._storage = database.storage
        self.prefix = kv_prefix(account)
        self.kv_queue = stored_name(account, KV_QUEUE)
        self._account = account
        # The default account's KV queue comes with the schema; others are made on use.
        self._queue_ready = self.kv_queue == KV_QUEUE

    # --- reads ------------------------------------------------------------------

    def _bound(self, key: bytes) -> bytes:
        return self.prefix + min(key, _RESERVED)

    def _entry(self, stored: model.StoredEntry) -> Any:
        return kvconnect.KvEntry(
            key=stored.key[len(self.prefix) :],
            value=stored.value,
            encoding=int(stored.encoding),
            versionstamp=stored.versionstamp,
        )

    async def read(self, ranges: Sequence[Any]) -> list[list[Any]]:
        """The entries of each ``ReadRange``, as ``KvEntry`` messages."""
        if len(ranges) > limits.MAX_GET_MANY_KEYS:
            raise errors.LimitExceeded("MAX_GET_MANY_KEYS", limits.MAX_GET_MANY_KEYS, len(ranges))
        wanted = []
        for r in ranges:
            if not 0 < r.limit <= limits.MAX_LIST_BATCH:
                raise errors.InvalidInput(f"a range limit is 1 .. {limits.MAX_LIST_BATCH}")
            wanted.append(
                model.ReadRange(self._bound(r.start), self._bound(r.end), r.limit, r.reverse)
            )
        pages = await self._storage.read(wanted)
        return [[self._entry(e) for e in page] for page in pages]

    def watch(self, keys: Sequence[bytes]) -> AsyncGenerator[Any, None]:
        """``WatchOutput`` messages: every key first, then the ones that changed.

        The keys are checked now, before any of the stream is answered.
        """
        if len(keys) > limits.MAX_WATCHED_KEYS:
            raise errors.TooManyWatchedKeys("MAX_WATCHED_KEYS", limits.MAX_WATCHED_KEYS, len(keys))
        return self._changes([self.prefix + wire_key(k) for k in keys])

    async def _changes(self, stored: list[bytes]) -> AsyncGenerator[Any, None]:
        last: list[bytes | None] | None = None
        async for entries in self._storage.watch(stored):
            stamps = [None if e is None else e.versionstamp for e in entries]
            output = kvconnect.WatchOutput(status=kvconnect.SR_SUCCESS)
            for index, entry in enumerate(entries):
                item = output.keys.add()
                if last is None or last[index] != stamps[index]:
                    item.changed = True
                    if entry is not None:
                        item.entry_if_changed.CopyFrom(self._entry(entry))
            last = stamps
            yield output

    # --- writes -----------------------------------------------------------------

    def write(self, message: Any) -> tuple[model.AtomicWrite, list[str]]:
        """The storage write of an ``AtomicWrite`` message, checked, and the named
        queues it sends to."""
        checks = tuple(
            model.Check(self.prefix + wire_key(c.key), self._stamp(c.versionstamp))
            for c in message.checks
        )
        mutations = tuple(self._mutation(m) for m in message.mutations)
        enqueues = tuple(self._enqueue(e) for e in message.enqueues)
        settlements = tuple(self._settlement(s) for s in message.settlements)
        lease_checks = tuple(model.LeaseCheck(c.message_id, c.lease) for c in message.lease_checks)
        write = check_totals(
            model.AtomicWrite(
                checks=checks,
                lease_checks=lease_checks,
                mutations=mutations,
                enqueues=enqueues,
                settlements=settlements,
            )
        )
        named = [e.queue for e in message.enqueues if e.queue]
        return write, named

    @staticmethod
    def _stamp(data: bytes) -> bytes | None:
        if not data:
            return None
        if len(data) != 10:
            raise errors.InvalidInput(f"a versionstamp is 10 bytes, got {len(data)}")
        return bytes(data)

    def _mutation(self, m: Any) -> model.Mutation:
        kind = _KINDS.get(m.mutation_type)
        if kind is None:
            raise errors.InvalidInput(
                f"mutation type {m.mutation_type} is not supported here"
                " (set, delete, sum, min and max are)"
            )
        key = self.prefix + wire_key(m.key)
        if kind is MutationKind.DELETE:
            return model.Mutation(kind, key)  # Deno sends a dummy value with a delete
        if not m.HasField("value"):
            raise errors.InvalidValue(f"a {kind.value} mutation needs a value")
        encoding = _encoding(m.value.encoding)
        data = bytes(m.value.data)
        if len(data) > limits.MAX_VALUE_BYTES:
            raise errors.ValueTooLarge("MAX_VALUE_BYTES", limits.MAX_VALUE_BYTES, len(data))
        if kind is not MutationKind.SET:
            if encoding is not ValueEncoding.LE64 or len(data) != 8:
                raise errors.InvalidValue(f"{kind.value} takes a KvU64 (8 little-endian bytes)")
            return model.Mutation(kind, key, data, encoding)
        if encoding is ValueEncoding.LE64 and len(data) != 8:
            raise errors.InvalidValue("a KvU64 value is 8 bytes")
        expire_in: int | None = None
        if m.expire_in_ms > 0:
            expire_in = check_expire_in(m.expire_in_ms)
        elif m.expire_at_ms > 0:
            # An absolute time past the longest expiry is "never, in practice": keep it.
            remaining = m.expire_at_ms - self._storage.clock.now_ms()
            expire_in = min(max(0, remaining), limits.MAX_EXPIRE_IN_MS)
        return model.Mutation(kind, key, data, encoding, expire_in)

    def _delay(self, deadline_ms: int, delay_ms: int) -> int:
        if delay_ms:
            return int(delay_ms)
        # Deno sends an absolute deadline; 0 (PyPI denokv's "now") or a past one is now.
        return max(0, deadline_ms - self._storage.clock.now_ms()) if deadline_ms > 0 else 0

    def _enqueue(self, e: Any) -> model.Enqueue:
        delay = self._delay(e.deadline_ms, e.delay_ms)
        if e.queue:
            message = raw_send(
                e.queue,
                bytes(e.payload),
                e.content_type or "json",
                None if e.queue_delay else delay,
            )
            return dataclasses.replace(message, queue=stored_name(self._account, message.queue))
        if e.max_backlog < 0:
            raise errors.InvalidOption(f"max_backlog is at least 1, got {e.max_backlog}")
        schedule = list(e.backoff_schedule)
        message = kv_message(
            bytes(e.payload),
            delay_ms=delay,
            keys_if_undelivered=[self.prefix + wire_key(k) for k in e.keys_if_undelivered],
            # As the denokv server does: no schedule means the default one.
            backoff_schedule=schedule if schedule or e.exact_backoff else None,
            max_backlog=min(
                self._database.kv_queue_backlog, e.max_backlog or self._database.kv_queue_backlog
            ),
            max_backoff_entries=MAX_REMOTE_BACKOFF_ENTRIES,
        )
        return dataclasses.replace(message, queue=self.kv_queue)

    def _settlement(self, s: Any) -> model.Settlement:
        if s.kind not in _SETTLEMENTS or not s.message_id:
            raise errors.InvalidInput(
                "a settlement names a message and is ack, retry or dead-letter"
            )
        if s.kind == kvconnect.SETTLE_ACK:
            return model.Ack(self.kv_queue, s.message_id)
        if s.kind == kvconnect.SETTLE_RETRY:
            if not 0 <= s.delay_ms <= limits.MAX_KV_DELAY_MS:
                raise errors.InvalidDelay("MAX_KV_DELAY_MS", limits.MAX_KV_DELAY_MS, s.delay_ms)
            return model.Retry(self.kv_queue, s.message_id, s.lease, s.delay_ms)
        return model.DeadLetter(self.kv_queue, s.message_id, s.lease)

    async def commit(self, write: model.AtomicWrite) -> model.Committed | None:
        """Commit ``write``; None when a check failed."""
        if write.enqueues or write.settlements:
            await self._ensure_queue()
        result = await self._database.commit_write(write)
        if not result.ok or result.versionstamp is None:
            return None
        return model.Committed(bytes.fromhex(result.versionstamp))

    async def _ensure_queue(self) -> None:
        if self._queue_ready:
            return
        # Like the default account's, this KV queue keeps its messages until delivered.
        create = model.CreateQueue(
            self.kv_queue,
            secrets.token_hex(16),
            model.QueueSettings(retention_ms=None),
            if_absent=True,
        )
        await self._database.commit_write(model.AtomicWrite(queue_changes=(create,)))
        self._queue_ready = True

    # --- the KV queue's consumer side (kvqueue's extension) ------------------------

    async def lease(self, asked: Any) -> list[Any]:
        """Lease up to ``asked.limit`` messages, waiting up to ``asked.wait_ms`` for one."""
        if not 0 < asked.limit <= limits.MAX_PULL_BATCH_SIZE:
            raise errors.InvalidOption(f"limit is 1 .. {limits.MAX_PULL_BATCH_SIZE}")
        if not 30 <= asked.lease_ms <= limits.MAX_VISIBILITY_TIMEOUT_MS:
            raise errors.InvalidOption(
                f"lease_ms is 30 .. {limits.MAX_VISIBILITY_TIMEOUT_MS:,}, got {asked.lease_ms}"
            )
        if not 0 < len(asked.lease) <= 64:
            raise errors.InvalidOption("a lease is named by 1 .. 64 characters")
        wait_ms = min(max(0, asked.wait_ms), limits.MAX_PULL_WAIT_MS)
        await self._ensure_queue()

        async def take() -> list[model.LeasedMessage]:
            return await self._storage.lease(
                self.kv_queue, lease=asked.lease, limit=asked.limit, lease_ms=asked.lease_ms
            )

        leased = await lease_within(self._storage, self.kv_queue, wait_ms, take)
        return [self._message(m) for m in leased]

    def _message(self, leased: model.LeasedMessage) -> Any:
        backoff, undelivered = decode_attributes(leased.attributes)
        return kvconnect.QueueMessage(
            message_id=leased.message_id,
            payload=leased.body,
            enqueued_at_ms=leased.enqueued_at_ms,
            attempts=leased.attempts,
            lease=leased.lease,
            backoff_schedule=backoff,
            keys_if_undelivered=[k[len(self.prefix) :] for k in undelivered],
        )

    async def extend(self, asked: Any) -> set[str]:
        """Renew the leases still held; the ids of their messages."""
        if not 30 <= asked.lease_ms <= limits.MAX_VISIBILITY_TIMEOUT_MS:
            raise errors.InvalidOption(
                f"lease_ms is 30 .. {limits.MAX_VISIBILITY_TIMEOUT_MS:,}, got {asked.lease_ms}"
            )
        checks = [model.LeaseCheck(r.message_id, r.lease) for r in asked.leases]
        return await self._storage.extend(checks, lease_ms=asked.lease_ms)

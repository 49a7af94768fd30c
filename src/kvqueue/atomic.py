"""Atomic operations: checks, mutations and enqueues that commit together.

The builder validates every part as it is added (key and value sizes, enqueue
options) and the totals when it commits (counts and bytes), so a broken limit
raises before the storage sees anything and nothing is written.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

import orjson

from kvqueue import errors, keys, limits, model, v8, values
from kvqueue.keys import Key
from kvqueue.messages import build_send, check_name, new_message_id
from kvqueue.model import KvU64, MutationKind

R = TypeVar("R")

#: The internal name of the KV queue. Named queues cannot contain "~", so it
#: can never clash with one.
KV_QUEUE = "~kv"
#: Content type of KV-queue messages: V8-serialized values, as Deno enqueues them.
KV_CONTENT_TYPE = "v8"


@dataclass(frozen=True, slots=True)
class AtomicCheck:
    """A check for ``atomic().check()``: ``key`` must have ``versionstamp`` (None: absent)."""

    key: Key
    versionstamp: str | None


def check_from(item: Any) -> model.Check:
    """A storage check from an Entry, an AtomicCheck or anything with key/versionstamp."""
    try:
        key, stamp = item.key, item.versionstamp
    except AttributeError:
        raise errors.InvalidInput(
            f"check takes an Entry or AtomicCheck(key, versionstamp), got {type(item).__name__}"
        ) from None
    encoded = keys.encode_write_key(key)
    return model.Check(encoded, None if stamp is None else values.versionstamp_bytes(stamp))


def _u64(n: KvU64 | int) -> bytes:
    if not isinstance(n, KvU64):
        n = KvU64(n)
    return n.value.to_bytes(8, "little")


def _milliseconds(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.InvalidOption(f"{name} is a number of milliseconds, got {value!r}")
    if value != value:  # NaN
        raise errors.InvalidOption(f"{name} must be a number, got NaN")
    return int(value)


def check_expire_in(expire_ms: int) -> int:
    """``expire_ms`` if it is a usable ``expire_in``: 0 .. ``MAX_EXPIRE_IN_MS``."""
    if not 0 <= expire_ms <= limits.MAX_EXPIRE_IN_MS:
        raise errors.InvalidOption(
            f"expire_in is 0 .. {limits.MAX_EXPIRE_IN_MS:,} ms (MAX_EXPIRE_IN_MS), got {expire_ms}"
        )
    return expire_ms


def encode_attributes(backoff: Sequence[int], undelivered: Sequence[bytes]) -> bytes:
    """The KV queue's per-message policy, as stored in a message's attributes."""
    return _encode_attributes(tuple(backoff), tuple(undelivered))


# Nearly every message carries the same policy (the default schedule, no keys):
# encoding and decoding it once, not once per message, is a third of an enqueue.
@functools.lru_cache(maxsize=256)
def _encode_attributes(backoff: tuple[int, ...], undelivered: tuple[bytes, ...]) -> bytes:
    return orjson.dumps({"backoff": list(backoff), "undelivered": [k.hex() for k in undelivered]})


@functools.lru_cache(maxsize=256)
def decode_attributes(data: bytes | None) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    """Read back :func:`encode_attributes`; no attributes means the default policy."""
    if not data:
        return limits.DEFAULT_BACKOFF_SCHEDULE, ()
    raw = orjson.loads(data)
    return tuple(raw["backoff"]), tuple(bytes.fromhex(k) for k in raw["undelivered"])


def kv_enqueue(
    value: Any,
    *,
    delay: float | None,
    keys_if_undelivered: Iterable[Key] | None,
    backoff_schedule: Iterable[float] | None,
    max_backlog: int | None,
) -> model.Enqueue:
    """Validate a KV-queue enqueue and build it (Deno's ``kv.enqueue`` options).

    Raises:
        PayloadTooLarge, InvalidDelay, InvalidBackoffSchedule, TooManyUndeliveredKeys,
        InvalidKey, KeyTooLarge, InvalidValue: the message or an option breaks a rule.
    """
    payload = v8.dumps(value)
    delay_ms = 0 if delay is None else _milliseconds("delay", delay)
    schedule = None
    if backoff_schedule is not None:
        schedule = tuple(_milliseconds("backoff_schedule entry", x) for x in backoff_schedule)
    undelivered = tuple(keys.encode_write_key(k) for k in (keys_if_undelivered or ()))
    return kv_message(
        payload,
        delay_ms=delay_ms,
        keys_if_undelivered=undelivered,
        backoff_schedule=schedule,
        max_backlog=max_backlog,
    )


def kv_message(
    payload: bytes,
    *,
    delay_ms: int,
    keys_if_undelivered: Sequence[bytes],
    backoff_schedule: Sequence[int] | None,
    max_backlog: int | None,
    max_backoff_entries: int = limits.MAX_BACKOFF_ENTRIES,
) -> model.Enqueue:
    """A KV-queue message from an already-serialized payload and encoded keys, with
    every limit checked: what ``kv_enqueue`` and a KV Connect enqueue share.

    ``backoff_schedule`` None means the default schedule.
    """
    if len(payload) > limits.MAX_KV_PAYLOAD_BYTES:
        raise errors.PayloadTooLarge(
            "MAX_KV_PAYLOAD_BYTES", limits.MAX_KV_PAYLOAD_BYTES, len(payload)
        )
    if delay_ms < 0:
        raise errors.InvalidDelay("MIN_DELAY (0)", 0, delay_ms, detail="a delay cannot be negative")
    if delay_ms > limits.MAX_KV_DELAY_MS:
        raise errors.InvalidDelay("MAX_KV_DELAY_MS", limits.MAX_KV_DELAY_MS, delay_ms)
    schedule = limits.DEFAULT_BACKOFF_SCHEDULE if backoff_schedule is None else backoff_schedule
    if len(schedule) > max_backoff_entries:
        raise errors.InvalidBackoffSchedule(
            "MAX_BACKOFF_ENTRIES", max_backoff_entries, len(schedule), detail="entries"
        )
    for index, interval in enumerate(schedule):
        if not 0 <= interval <= limits.MAX_BACKOFF_MS:
            raise errors.InvalidBackoffSchedule(
                "MAX_BACKOFF_MS",
                limits.MAX_BACKOFF_MS,
                interval,
                detail=f"entry {index} is {interval} ms; each is 0 .. 3,600,000 ms",
            )
    if len(keys_if_undelivered) > limits.MAX_UNDELIVERED_KEYS:
        raise errors.TooManyUndeliveredKeys(
            "MAX_UNDELIVERED_KEYS", limits.MAX_UNDELIVERED_KEYS, len(keys_if_undelivered)
        )
    return model.Enqueue(
        queue=KV_QUEUE,
        message_id=new_message_id(),
        body=payload,
        content_type=KV_CONTENT_TYPE,
        delay_ms=delay_ms,
        attributes=encode_attributes(schedule, keys_if_undelivered),
        max_backlog=max_backlog,
    )


def enqueue_bytes(message: model.Enqueue) -> int:
    """What an enqueue counts toward ``MAX_ATOMIC_BYTES``."""
    if message.queue != KV_QUEUE:
        return len(message.body)
    backoff, undelivered = decode_attributes(message.attributes)
    return len(message.body) + 4 * len(backoff) + sum(map(len, undelivered))


def check_totals(write: model.AtomicWrite) -> model.AtomicWrite:
    """``write`` if its counts and bytes are within the atomic limits.

    Raises:
        TooManyChecks, TooManyMutations, AtomicTooLarge.
    """
    if len(write.checks) > limits.MAX_CHECKS:
        raise errors.TooManyChecks("MAX_CHECKS", limits.MAX_CHECKS, len(write.checks))
    count = len(write.mutations) + len(write.enqueues)
    if count > limits.MAX_MUTATIONS:
        raise errors.TooManyMutations("MAX_MUTATIONS", limits.MAX_MUTATIONS, count)
    size = sum(len(c.key) for c in write.checks)
    size += sum(len(m.key) + len(m.value) for m in write.mutations)
    size += sum(enqueue_bytes(e) for e in write.enqueues)
    if size > limits.MAX_ATOMIC_BYTES:
        raise errors.AtomicTooLarge("MAX_ATOMIC_BYTES", limits.MAX_ATOMIC_BYTES, size)
    return write


class _Builder(Generic[R]):
    """What AtomicOperation and AsyncAtomicOperation share: everything but commit."""

    def __init__(
        self, commit: Callable[[model.AtomicWrite], R], *, max_backlog: int | None
    ) -> None:
        self._commit = commit
        self._max_backlog = max_backlog
        self._checks: list[model.Check] = []
        self._mutations: list[model.Mutation] = []
        self._enqueues: list[model.Enqueue] = []

    def check(self, *checks: Any) -> Self:
        """Require each key to still have the given versionstamp (None: be absent)."""
        self._checks.extend(check_from(c) for c in checks)
        return self

    def set(self, key: Key, value: Any, *, expire_in: float | None = None) -> Self:
        """Set ``key`` to ``value``; with ``expire_in`` (ms) it is gone after that long."""
        encoded = keys.encode_write_key(key)
        encoding, data = values.encode_value(value)
        expire_ms = None
        if expire_in is not None:
            expire_ms = _milliseconds("expire_in", expire_in)
            check_expire_in(expire_ms)
        self._mutations.append(model.Mutation(MutationKind.SET, encoded, data, encoding, expire_ms))
        return self

    def delete(self, key: Key) -> Self:
        """Delete ``key``."""
        self._mutations.append(model.Mutation(MutationKind.DELETE, keys.encode_write_key(key)))
        return self

    def sum(self, key: Key, n: KvU64 | int) -> Self:
        """Add ``n`` to the KvU64 at ``key`` (wrapping at 2**64); absent keys become ``n``."""
        return self._arithmetic(MutationKind.SUM, key, n)

    def min(self, key: Key, n: KvU64 | int) -> Self:
        """Set the KvU64 at ``key`` to the smaller of it and ``n``."""
        return self._arithmetic(MutationKind.MIN, key, n)

    def max(self, key: Key, n: KvU64 | int) -> Self:
        """Set the KvU64 at ``key`` to the larger of it and ``n``."""
        return self._arithmetic(MutationKind.MAX, key, n)

    def _arithmetic(self, kind: MutationKind, key: Key, n: KvU64 | int) -> Self:
        self._mutations.append(
            model.Mutation(kind, keys.encode_write_key(key), _u64(n), model.ValueEncoding.LE64)
        )
        return self

    def enqueue(
        self,
        value: Any,
        *,
        delay: float | None = None,
        keys_if_undelivered: Iterable[Key] | None = None,
        backoff_schedule: Iterable[float] | None = None,
    ) -> Self:
        """Put ``value`` on the KV queue if, and when, this operation commits.

        ``delay`` and ``backoff_schedule`` are in milliseconds, as in Deno.
        """
        message = kv_enqueue(
            value,
            delay=delay,
            keys_if_undelivered=keys_if_undelivered,
            backoff_schedule=backoff_schedule,
            max_backlog=self._max_backlog,
        )
        self._enqueues.append(message)
        return self

    def send(
        self,
        queue: str,
        body: Any,
        *,
        content_type: str = "json",
        delay_seconds: float | None = None,
    ) -> Self:
        """Send ``body`` to the named queue ``queue`` if, and when, this operation commits.

        The message is checked as ``db.queue(queue).send()`` checks it; the queue
        must exist when the operation commits.
        """
        self._enqueues.append(build_send(check_name(queue), body, content_type, delay_seconds))
        return self

    def build(self) -> model.AtomicWrite:
        """Check the totals against the limits and freeze the operation."""
        return check_totals(
            model.AtomicWrite(
                checks=tuple(self._checks),
                mutations=tuple(self._mutations),
                enqueues=tuple(self._enqueues),
            )
        )


class AsyncAtomicOperation(_Builder[Awaitable[model.CommitResult]]):
    """An atomic operation of an AsyncDatabase; ``await op.commit()``."""

    def commit(self) -> Awaitable[model.CommitResult]:
        """Commit everything or nothing; ``ok`` is False if a check failed."""
        return self._commit(self.build())


class AtomicOperation(_Builder[model.CommitResult]):
    """An atomic operation of a Database; ``op.commit()``."""

    def commit(self) -> model.CommitResult:
        """Commit everything or nothing; ``ok`` is False if a check failed."""
        return self._commit(self.build())

"""Atomic operations: checks, mutations and enqueues that commit together.

The builder validates every part as it is added (key and value sizes, enqueue
options) and the totals when it commits (counts and bytes), so a broken limit
raises before the storage sees anything and nothing is written.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from kvqueue import errors, keys, limits, model, v8, values
from kvqueue.keys import Key
from kvqueue.messages import build_send, check_name
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


def encode_attributes(backoff: Sequence[int], undelivered: Sequence[bytes]) -> bytes:
    """The KV queue's per-message policy, as stored in a message's attributes."""
    import orjson

    return orjson.dumps({"backoff": list(backoff), "undelivered": [k.hex() for k in undelivered]})


def decode_attributes(data: bytes | None) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    """Read back :func:`encode_attributes`; no attributes means the default policy."""
    import orjson

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
    if len(payload) > limits.MAX_KV_PAYLOAD_BYTES:
        raise errors.PayloadTooLarge(
            "MAX_KV_PAYLOAD_BYTES", limits.MAX_KV_PAYLOAD_BYTES, len(payload)
        )
    delay_ms = 0 if delay is None else _milliseconds("delay", delay)
    if delay_ms < 0:
        raise errors.InvalidDelay("MIN_DELAY (0)", 0, delay_ms, detail="a delay cannot be negative")
    if delay_ms > limits.MAX_KV_DELAY_MS:
        raise errors.InvalidDelay("MAX_KV_DELAY_MS", limits.MAX_KV_DELAY_MS, delay_ms)
    if backoff_schedule is None:
        schedule = limits.DEFAULT_BACKOFF_SCHEDULE
    else:
        schedule = tuple(_milliseconds("backoff_schedule entry", x) for x in backoff_schedule)
        if len(schedule) > limits.MAX_BACKOFF_ENTRIES:
            raise errors.InvalidBackoffSchedule(
                "MAX_BACKOFF_ENTRIES", limits.MAX_BACKOFF_ENTRIES, len(schedule), detail="entries"
            )
        for index, interval in enumerate(schedule):
            if not 0 <= interval <= limits.MAX_BACKOFF_MS:
                raise errors.InvalidBackoffSchedule(
                    "MAX_BACKOFF_MS",
                    limits.MAX_BACKOFF_MS,
                    interval,
                    detail=f"entry {index} is {interval} ms; each is 0 .. 3,600,000 ms",
                )
    undelivered = tuple(keys.encode_write_key(k) for k in (keys_if_undelivered or ()))
    if len(undelivered) > limits.MAX_UNDELIVERED_KEYS:
        raise errors.TooManyUndeliveredKeys(
            "MAX_UNDELIVERED_KEYS", limits.MAX_UNDELIVERED_KEYS, len(undelivered)
        )
    return model.Enqueue(
        queue=KV_QUEUE,
        message_id=secrets.token_hex(16),
        body=payload,
        content_type=KV_CONTENT_TYPE,
        delay_ms=delay_ms,
        attributes=encode_attributes(schedule, undelivered),
        max_backlog=max_backlog,
    )


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
        self._enqueue_bytes = 0

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
            if expire_ms < 0:
                raise errors.InvalidOption(f"expire_in cannot be negative, got {expire_in}")
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
        backoff, undelivered = decode_attributes(message.attributes)
        self._enqueue_bytes += len(message.body) + 4 * len(backoff) + sum(map(len, undelivered))
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
        message = build_send(check_name(queue), body, content_type, delay_seconds)
        self._enqueue_bytes += len(message.body)
        self._enqueues.append(message)
        return self

    def build(self) -> model.AtomicWrite:
        """Check the totals against the limits and freeze the operation."""
        if len(self._checks) > limits.MAX_CHECKS:
            raise errors.TooManyChecks("MAX_CHECKS", limits.MAX_CHECKS, len(self._checks))
        count = len(self._mutations) + len(self._enqueues)
        if count > limits.MAX_MUTATIONS:
            raise errors.TooManyMutations("MAX_MUTATIONS", limits.MAX_MUTATIONS, count)
        size = sum(len(c.key) for c in self._checks)
        size += sum(len(m.key) + len(m.value) for m in self._mutations)
        size += self._enqueue_bytes
        if size > limits.MAX_ATOMIC_BYTES:
            raise errors.AtomicTooLarge("MAX_ATOMIC_BYTES", limits.MAX_ATOMIC_BYTES, size)
        return model.AtomicWrite(
            checks=tuple(self._checks),
            mutations=tuple(self._mutations),
            enqueues=tuple(self._enqueues),
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

"""The value types of kvqueue: what the public API returns and what crosses the
storage boundary. All are immutable."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvqueue import errors

_U64_MAX = (1 << 64) - 1


class KvU64:
    """An unsigned 64-bit integer value, the operand of ``sum``, ``min`` and ``max``.

    ``sum`` wraps around at 2**64, as Deno's ``Deno.KvU64`` does.
    """

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.InvalidValue(f"KvU64 takes an int, got {type(value).__name__}")
        if not 0 <= value <= _U64_MAX:
            raise errors.InvalidValue(f"KvU64 must be in 0 .. 2**64-1, got {value}")
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KvU64) and other.value == self.value

    def __hash__(self) -> int:
        return hash((KvU64, self.value))

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"KvU64({self.value})"


class ValueEncoding(enum.IntEnum):
    """How a stored value's bytes are to be read (Deno KV's numbering)."""

    V8 = 1
    LE64 = 2
    BYTES = 3


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as read: its value and versionstamp, or ``None`` for both if absent."""

    key: tuple[Any, ...]
    value: Any
    versionstamp: str | None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The outcome of a write: ``ok`` is False when a check failed and nothing was written."""

    ok: bool
    versionstamp: str | None = None

    def __bool__(self) -> bool:
        return self.ok


# --- Across the storage boundary ---------------------------------------------
# Keys are encoded bytes and values encoded (encoding, bytes) pairs here; the
# storage never sees Python tuples or user objects.


@dataclass(frozen=True, slots=True)
class ReadRange:
    """Keys in ``[start, end)``, at most ``limit`` of them, optionally from the end."""

    start: bytes
    end: bytes
    limit: int
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A key as stored: encoded key, encoded value and 10-byte versionstamp."""

    key: bytes
    value: bytes
    encoding: ValueEncoding
    versionstamp: bytes


@dataclass(frozen=True, slots=True)
class Check:
    """The key's live versionstamp must equal ``versionstamp`` (None: the key must be absent)."""

    key: bytes
    versionstamp: bytes | None


@dataclass(frozen=True, slots=True)
class LeaseCheck:
    """The message must still be leased under ``lease`` (not expired, not re-leased)."""

    message_id: str
    lease: str


class MutationKind(enum.Enum):
    """What a mutation does to its key."""

    SET = "set"
    DELETE = "delete"
    SUM = "sum"
    MIN = "min"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Mutation:
    """One change to one key. ``expire_in_ms`` only applies to SET."""

    kind: MutationKind
    key: bytes
    value: bytes = b""
    encoding: ValueEncoding = ValueEncoding.BYTES
    expire_in_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """A new message for ``queue``, visible after ``delay_ms``.

    ``delay_ms`` None means the queue's own ``delivery_delay``. The queue must
    exist (QueueNotFound otherwise).

    ``attributes`` is opaque to the storage: the semantics layer keeps its
    per-message policy there (the KV queue's backoff schedule and undelivered keys).
    ``max_backlog``, when set, overrides the queue's own backlog limit: the
    commit raises QueueFull instead of letting the queue hold more undelivered
    messages than that.
    """

    queue: str
    message_id: str
    body: bytes
    content_type: str
    delay_ms: int | None = 0
    attributes: bytes | None = None
    max_backlog: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Delete a message of ``queue``: it was handled. Accepted even after its lease ran out."""

    queue: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Release a leased message of ``queue`` to be delivered again after ``delay_ms``.

    Applies only while ``lease`` still holds the message; otherwise the lease
    already ran out and the message is visible again anyway.
    """

    queue: str
    message_id: str
    lease: str
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Take a message out of ``queue`` for good: move it to ``to_queue``, or delete it.

    A moved message keeps its id, body and timestamp, and starts again at
    attempt 0, visible at once. Applies only while ``lease`` holds the message.
    ``to_queue`` must exist when the settlement applies (create it in the same
    write with ``CreateQueue(if_absent=True)``).
    """

    queue: str
    message_id: str
    lease: str
    to_queue: str | None = None


Settlement = Ack | Retry | DeadLetter


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """A queue's settings as stored. Times in milliseconds; None means no limit."""

    delivery_delay_ms: int = 0
    retention_ms: int | None = 345_600_000
    paused: bool = False
    max_backlog: int | None = None
    max_backlog_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class CreateQueue:
    """Create a queue; with ``if_absent`` an existing one is left as it is.

    Raises QueueExists when the name is taken and ``if_absent`` is False.
    """

    name: str
    queue_id: str
    settings: QueueSettings
    if_absent: bool = False


@dataclass(frozen=True, slots=True)
class UpdateQueue:
    """Replace a queue's settings, if they are still ``expect`` (else the write fails).

    Raises QueueNotFound when there is no such queue.
    """

    name: str
    settings: QueueSettings
    expect: QueueSettings


@dataclass(frozen=True, slots=True)
class SetConsumer:
    """Set (or with None remove) a queue's consumer, if it is still ``expect``.

    The consumer is opaque to the storage. A different current consumer makes
    the whole write fail, as a failed check does. Raises QueueNotFound.
    """

    name: str
    consumer: bytes | None
    expect: bytes | None


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    """Delete a queue with its consumer and every message, in flight or not."""

    name: str


@dataclass(frozen=True, slots=True)
class PurgeQueue:
    """Delete every message of a queue (delayed and in-flight ones too)."""

    name: str


QueueChange = CreateQueue | UpdateQueue | SetConsumer | DeleteQueue | PurgeQueue


@dataclass(frozen=True, slots=True)
class AtomicWrite:
    """Checks and changes that commit all together or not at all.

    They apply in this order: checks, queue changes, mutations, enqueues,
    settlements.

    ``stats_of`` names a queue whose stats the caller wants after the write. A
    backend may read them in the same transaction and return them in
    :attr:`Committed.stats` (saving the caller a read of its own); one that
    does not leaves that None.
    """

    checks: tuple[Check, ...] = ()
    lease_checks: tuple[LeaseCheck, ...] = ()
    queue_changes: tuple[QueueChange, ...] = ()
    mutations: tuple[Mutation, ...] = ()
    enqueues: tuple[Enqueue, ...] = ()
    settlements: tuple[Settlement, ...] = ()
    stats_of: str | None = None


def merge(writes: Sequence[AtomicWrite]) -> AtomicWrite:
    """One write doing everything the given writes do, in their order."""
    return AtomicWrite(
        checks=tuple(c for w in writes for c in w.checks),
        lease_checks=tuple(c for w in writes for c in w.lease_checks),
        queue_changes=tuple(c for w in writes for c in w.queue_changes),
        mutations=tuple(m for w in writes for m in w.mutations),
        enqueues=tuple(e for w in writes for e in w.enqueues),
        settlements=tuple(s for w in writes for s in w.settlements),
    )


@dataclass(frozen=True, slots=True)
class Committed:
    """A write that committed: its versionstamp, for each settlement whether it
    found its message (False: already gone, or no longer held by that lease),
    and the stats of the write's ``stats_of`` queue if the backend read them."""

    versionstamp: bytes
    settled: tuple[bool, ...] = ()
    stats: QueueStats | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as it sits in its queue (what peek shows; nothing is leased)."""

    queue: str
    message_id: str
    body: bytes
    content_type: str
    enqueued_at_ms: int
    attempts: int
    attributes: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class LeasedMessage:
    """A message handed to one consumer until ``lease`` runs out or is settled."""

    queue: str
    message_id: str
    body: bytes
    content_type: str
    enqueued_at_ms: int
    attempts: int
    lease: str
    attributes: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class QueueRecord:
    """A queue as stored: identity, settings and its consumer (opaque bytes)."""

    name: str
    queue_id: str
    created_at_ms: int
    modified_at_ms: int
    settings: QueueSettings
    consumer: bytes | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a queue holds now, and what happened to it so far."""

    backlog_count: int
    backlog_bytes: int
    oldest_enqueued_at_ms: int | None
    in_flight: int
    retried: int
    dead_lettered: int

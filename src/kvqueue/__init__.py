"""kvqueue: durable message queues and a transactional key-value store.

Deno KV's API (keys, atomic operations, ``enqueue``/``listen_queue``) on SQLite,
embedded, with zero set-up::

    import kvqueue

    with kvqueue.open("app.db") as db:
        db.set(("users", "alovelace"), {"name": "Ada"})
        db.enqueue({"forUser": "alovelace", "body": "You've got mail!"})
"""

from __future__ import annotations

from kvqueue.atomic import AsyncAtomicOperation, AtomicCheck, AtomicOperation
from kvqueue.clock import Clock, FakeClock, SystemClock
from kvqueue.database import AsyncDatabase, open_async
from kvqueue.errors import (
    AtomicTooLarge,
    CorruptValue,
    DatabaseClosed,
    InvalidBackoffSchedule,
    InvalidDelay,
    InvalidInput,
    InvalidKey,
    InvalidOption,
    InvalidValue,
    KeyTooLarge,
    KvQueueError,
    LimitExceeded,
    ListenerAlreadyRunning,
    MissingDependency,
    PayloadTooLarge,
    QueueFull,
    StorageError,
    TooManyChecks,
    TooManyMutations,
    TooManyUndeliveredKeys,
    TooManyWatchedKeys,
    TypeMismatch,
    ValueTooLarge,
)
from kvqueue.listing import AsyncListIterator, ListIterator
from kvqueue.model import CommitResult, Entry, KvU64
from kvqueue.sync import Database, open

__version__ = "0.1.0"

__all__ = [
    # opening
    "open",
    "open_async",
    "Database",
    "AsyncDatabase",
    # KV
    "Entry",
    "CommitResult",
    "KvU64",
    "AtomicOperation",
    "AsyncAtomicOperation",
    "AtomicCheck",
    "ListIterator",
    "AsyncListIterator",
    # time
    "Clock",
    "SystemClock",
    "FakeClock",
    # errors
    "KvQueueError",
    "InvalidInput",
    "InvalidKey",
    "InvalidValue",
    "InvalidOption",
    "LimitExceeded",
    "KeyTooLarge",
    "ValueTooLarge",
    "PayloadTooLarge",
    "TooManyChecks",
    "TooManyMutations",
    "AtomicTooLarge",
    "TooManyWatchedKeys",
    "TooManyUndeliveredKeys",
    "InvalidDelay",
    "InvalidBackoffSchedule",
    "TypeMismatch",
    "QueueFull",
    "ListenerAlreadyRunning",
    "DatabaseClosed",
    "CorruptValue",
    "StorageError",
    "MissingDependency",
    "__version__",
]

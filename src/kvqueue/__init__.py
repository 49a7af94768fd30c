"""kvqueue: durable message queues and a transactional key-value store.

Deno KV's API (keys, atomic operations, ``enqueue``/``listen_queue``) and
Cloudflare Queues' model (named queues, batching push consumers, pull
consumers, retries, dead-letter queues) on SQLite, embedded, with zero set-up::

    import kvqueue

    with kvqueue.open("app.db") as db:
        db.set(("users", "alovelace"), {"name": "Ada"})
        db.enqueue({"forUser": "alovelace", "body": "You've got mail!"})
        db.queues.create("emails")
        db.queue("emails").send({"to": "ada@example.com"})
"""

from __future__ import annotations

from kvqueue.accounts import DEFAULT_ACCOUNT
from kvqueue.atomic import KV_QUEUE, AsyncAtomicOperation, AtomicCheck, AtomicOperation
from kvqueue.batch import Message, MessageBatch
from kvqueue.clock import Clock, FakeClock, SystemClock
from kvqueue.consumers import Consumer
from kvqueue.database import AsyncDatabase, open_async
from kvqueue.errors import (
    AtomicTooLarge,
    BatchTooLarge,
    ConsumerExists,
    ConsumerNotFound,
    CorruptValue,
    DatabaseClosed,
    EmptyBatch,
    Forbidden,
    InvalidAccount,
    InvalidBackoffSchedule,
    InvalidBatchDelay,
    InvalidConfig,
    InvalidDelay,
    InvalidInput,
    InvalidKey,
    InvalidMessage,
    InvalidOption,
    InvalidQueueName,
    InvalidValue,
    KeyTooLarge,
    KvQueueError,
    LimitExceeded,
    ListenerAlreadyRunning,
    MalformedRequest,
    MessageTooLarge,
    MethodNotAllowed,
    MissingDependency,
    PayloadTooLarge,
    QueueExists,
    QueueFull,
    QueueNotFound,
    QueuePaused,
    RequestTooLarge,
    RouteNotFound,
    StorageError,
    TokenNotFound,
    TooManyChecks,
    TooManyMessages,
    TooManyMutations,
    TooManyUndeliveredKeys,
    TooManyWatchedKeys,
    TypeMismatch,
    Unauthenticated,
    ValueTooLarge,
)
from kvqueue.listing import AsyncListIterator, ListIterator
from kvqueue.messages import CONTENT_TYPES, MessageSendRequest
from kvqueue.model import CommitResult, Entry, KvU64
from kvqueue.queues import (
    AckResult,
    AsyncQueue,
    AsyncQueues,
    MessagePage,
    PeekedMessage,
    PulledMessage,
    PullResult,
    QueueInfo,
    QueueMetrics,
    SendResult,
)
from kvqueue.sync import Database, Queue, Queues, Tokens, open
from kvqueue.tokens import AsyncTokens, Token
from kvqueue.worker import Worker

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
    # named queues
    "KV_QUEUE",
    "CONTENT_TYPES",
    "Queues",
    "Queue",
    "AsyncQueues",
    "AsyncQueue",
    "QueueInfo",
    "QueueMetrics",
    "Consumer",
    "MessageSendRequest",
    "SendResult",
    "PeekedMessage",
    "MessagePage",
    "PulledMessage",
    "PullResult",
    "AckResult",
    "Worker",
    "MessageBatch",
    "Message",
    # server accounts and tokens
    "DEFAULT_ACCOUNT",
    "Tokens",
    "AsyncTokens",
    "Token",
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
    "InvalidConfig",
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
    "InvalidQueueName",
    "InvalidMessage",
    "EmptyBatch",
    "InvalidBatchDelay",
    "MessageTooLarge",
    "BatchTooLarge",
    "TooManyMessages",
    "QueueNotFound",
    "QueueExists",
    "ConsumerExists",
    "ConsumerNotFound",
    "QueuePaused",
    "QueueFull",
    "ListenerAlreadyRunning",
    "DatabaseClosed",
    "CorruptValue",
    "StorageError",
    "MissingDependency",
    "InvalidAccount",
    "MalformedRequest",
    "RequestTooLarge",
    "Unauthenticated",
    "Forbidden",
    "TokenNotFound",
    "RouteNotFound",
    "MethodNotAllowed",
    "__version__",
]

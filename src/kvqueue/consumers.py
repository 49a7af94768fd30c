"""A named queue's one consumer: its settings, and what retrying means for it.

A queue has at most one consumer, of one type: ``worker`` (push: a Worker runs
a handler on batches) or ``http_pull`` (clients pull batches and ack them).
The consumer is stored with its queue, so every process sees the same one.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from kvqueue import errors, limits, model
from kvqueue.accounts import sibling
from kvqueue.messages import check_name

ConsumerType = Literal["worker", "http_pull"]
#: How a server writes pulled json bodies: ``base64`` (Cloudflare's way) or
#: ``plain`` (the JSON value itself). Text is plain and bytes base64 either way.
BodyEncoding = Literal["base64", "plain"]
BODY_ENCODINGS: tuple[BodyEncoding, ...] = ("base64", "plain")


@dataclass(frozen=True, slots=True)
class Consumer:
    """A queue's consumer and its settings (Cloudflare's names; times as noted).

    Attributes:
        type: ``"worker"`` (push) or ``"http_pull"`` (pull).
        script_name: which worker consumes (push only): the Worker's name.
        dead_letter_queue: where messages go when their retries are used up;
            None deletes them.
        batch_size: messages per batch (push default 10, pull default 5; 1 .. 100).
        max_batch_timeout: seconds a push batch waits to fill up (0 .. 60).
        max_retries: retries before dead-lettering (0 .. 100; 3 means 4 deliveries).
        retry_delay: seconds before a retried message is visible again (0 .. 86,400).
        max_concurrency: push batches at once across all workers (1 .. 250);
            None scales with the backlog.
        visibility_timeout_ms: how long a pulled message stays leased (pull only).
        body_encoding: how the server writes json bodies of pulled messages:
            ``"base64"`` (Cloudflare's) or ``"plain"`` (pull only).
        consumer_id: 32 hex characters, fixed when the consumer is added.
        created_at_ms: when it was added (unix ms).
    """

    type: ConsumerType = "worker"
    script_name: str | None = None
    dead_letter_queue: str | None = None
    batch_size: int = limits.DEFAULT_BATCH_SIZE
    max_batch_timeout: float = limits.DEFAULT_BATCH_TIMEOUT_SECONDS
    max_retries: int = limits.DEFAULT_MAX_RETRIES
    retry_delay: float = 0
    max_concurrency: int | None = None
    visibility_timeout_ms: int = limits.DEFAULT_VISIBILITY_TIMEOUT_MS
    body_encoding: BodyEncoding = "base64"
    consumer_id: str = ""
    created_at_ms: int = 0

    def describe(self) -> str:
        """A few words naming this consumer, for errors and logs."""
        if self.type == "worker":
            return f"worker {self.script_name!r}"
        return "http_pull"


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidOption(
            f"{name} is a whole number in {low:,} .. {high:,}, got {value!r}"
        )
    return value


def _seconds(name: str, value: Any, high: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise errors.InvalidOption(f"{name} is a number of seconds in 0 .. {high:,}, got {value!r}")
    return value


def make_consumer(
    type: str = "worker",
    *,
    script_name: str | None = None,
    dead_letter_queue: str | None = None,
    batch_size: int | None = None,
    max_batch_timeout: float = limits.DEFAULT_BATCH_TIMEOUT_SECONDS,
    max_retries: int = limits.DEFAULT_MAX_RETRIES,
    retry_delay: float = 0,
    max_concurrency: int | None = None,
    visibility_timeout_ms: int = limits.DEFAULT_VISIBILITY_TIMEOUT_MS,
    body_encoding: str = "base64",
) -> Consumer:
    """A checked Consumer; raises InvalidOption naming the setting out of range."""
    if type not in ("worker", "http_pull"):
        raise errors.InvalidOption(f'a consumer type is "worker" or "http_pull", got {type!r}')
    if dead_letter_queue is not None:
        check_name(dead_letter_queue)
    if body_encoding not in BODY_ENCODINGS:
        raise errors.InvalidOption(f'body_encoding is "base64" or "plain", got {body_encoding!r}')
    default_size = limits.DEFAULT_BATCH_SIZE if type == "worker" else limits.DEFAULT_PULL_BATCH_SIZE
    size = default_size if batch_size is None else batch_size
    return Consumer(
        type=type,  # type: ignore[arg-type]
        script_name=script_name if type == "worker" else None,
        dead_letter_queue=dead_letter_queue,
        batch_size=whole_number("batch_size", size, 1, limits.MAX_BATCH_SIZE),
        max_batch_timeout=_seconds(
            "max_batch_timeout", max_batch_timeout, limits.MAX_BATCH_TIMEOUT_SECONDS
        ),
        max_retries=whole_number("max_retries", max_retries, 0, limits.MAX_RETRIES),
        retry_delay=_seconds("retry_delay", retry_delay, limits.MAX_DELAY_SECONDS),
        max_concurrency=None
        if max_concurrency is None
        else whole_number("max_concurrency", max_concurrency, 1, limits.MAX_CONCURRENCY),
        visibility_timeout_ms=whole_number(
            "visibility_timeout_ms", visibility_timeout_ms, 1, limits.MAX_VISIBILITY_TIMEOUT_MS
        ),
        body_encoding=body_encoding,
        consumer_id=secrets.token_hex(16),
    )


def dump_consumer(consumer: Consumer) -> bytes:
    """The stored form of a consumer."""
    return orjson.dumps(dataclasses.asdict(consumer))


def load_consumer(data: bytes | None) -> Consumer | None:
    """Read back :func:`dump_consumer`."""
    if data is None:
        return None
    return Consumer(**orjson.loads(data))


#: A pull from a queue without a consumer retries by these settings.
DEFAULT_PULL_CONSUMER = Consumer(type="http_pull", batch_size=limits.DEFAULT_PULL_BATCH_SIZE)


class RetryPolicy:
    """Retries as a named queue's consumer says: ``max_retries`` times after
    ``retry_delay``, then the dead-letter queue (created if missing) or deletion."""

    def __init__(self, consumer: Consumer) -> None:
        self._max_retries = consumer.max_retries
        self._retry_delay_ms = round(consumer.retry_delay * 1000)
        self._dead_letter_queue = consumer.dead_letter_queue

    def retry(
        self, message: model.LeasedMessage, delay_ms: int | None
    ) -> tuple[model.AtomicWrite, str]:
        """See :meth:`kvqueue.delivery.Policy.retry`."""
        if message.attempts <= self._max_retries:
            delay = self._retry_delay_ms if delay_ms is None else delay_ms
            retry = model.Retry(message.queue, message.message_id, message.lease, delay)
            return model.AtomicWrite(settlements=(retry,)), "retried"
        return self.dead_letter(message), "dead-lettered"

    def exhausted(self, message: model.LeasedMessage) -> model.AtomicWrite | None:
        """See :meth:`kvqueue.delivery.Policy.exhausted`."""
        if message.attempts > self._max_retries + 1:
            return self.dead_letter(message)
        return None

    def dead_letter(self, message: model.LeasedMessage) -> model.AtomicWrite:
        """Move ``message`` to the dead-letter queue, creating it if missing; or drop it."""
        target = self._dead_letter_queue
        if target is not None:
            target = sibling(message.queue, target)
        settle = model.DeadLetter(message.queue, message.message_id, message.lease, target)
        if target is None:
            return model.AtomicWrite(settlements=(settle,))
        create = model.CreateQueue(target, secrets.token_hex(16), default_settings(), True)
        return model.AtomicWrite(queue_changes=(create,), settlements=(settle,))


def default_settings() -> model.QueueSettings:
    """The settings of a queue created without any."""
    return model.QueueSettings(
        delivery_delay_ms=0,
        retention_ms=limits.DEFAULT_RETENTION_SECONDS * 1000,
        paused=False,
        max_backlog=None,
        max_backlog_bytes=limits.DEFAULT_QUEUE_BACKLOG_BYTES,
    )

"""What a push consumer's handler receives: a MessageBatch of Messages.

Acks and retries follow Cloudflare's precedence (reference/cloudflare-queues.md
§1.3): per message the first call wins; a per-message ``ack()``/``retry()``
beats ``ack_all()``/``retry_all()``; after ``ack_all()`` a message's ``ack()``
is silently ignored and its ``retry()`` ignored with a warning; after
``retry_all()`` a message's ``ack()`` is ignored with a warning while its
``retry()`` still sets that message's delay; between ``ack_all()`` and
``retry_all()`` the first wins.

A per-message decision and ``ack_all()`` are committed at once (so an explicit
ack survives a crash later in the handler); ``retry_all()`` applies when the
handler ends, so per-message retries after it can still set their own delay.
When the handler returns, every undecided message is acked (retried after
``retry_all()``); when it raises, every undecided message is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from kvqueue import model
from kvqueue.delivery import Decision
from kvqueue.messages import decode_body, delay_ms

logger = logging.getLogger("kvqueue")

_Choice = Literal["ack", "retry"]


class Message:
    """One message of a batch.

    Attributes:
        id: the message id (32 hex characters), kept across retries and dead-lettering.
        timestamp: when it was sent (UTC).
        attempts: deliveries so far, this one included (starts at 1).
        content_type: ``json``, ``text``, ``bytes`` or ``v8``.
        raw: the stored bytes of the body.
    """

    __slots__ = ("_batch", "_choice", "_leased", "_value")

    def __init__(self, leased: model.LeasedMessage, batch: MessageBatch) -> None:
        self._leased = leased
        self._batch = batch
        self._choice: _Choice | None = None
        self._value: Any = _MISSING

    @property
    def id(self) -> str:
        return self._leased.message_id

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self._leased.enqueued_at_ms / 1000, UTC)

    @property
    def timestamp_ms(self) -> int:
        return self._leased.enqueued_at_ms

    @property
    def attempts(self) -> int:
        return self._leased.attempts

    @property
    def content_type(self) -> str:
        return self._leased.content_type

    @property
    def raw(self) -> bytes:
        return self._leased.body

    @property
    def body(self) -> Any:
        """The body, decoded by content type (JSON value, str, bytes, or the V8 value).

        Raises:
            CorruptValue: the stored bytes cannot be decoded.
        """
        if self._value is _MISSING:
            self._value = decode_body(self._leased.body, self._leased.content_type)
        return self._value

    def ack(self) -> None:
        """Mark this message handled: it is deleted now, whatever the handler does next."""
        batch = self._batch
        if batch._choice == "ack":
            return
        if batch._choice == "retry":
            logger.warning("ack() on message %s after retry_all() is ignored", self.id)
            return
        if self._choice is not None:
            if self._choice == "retry":
                logger.warning("ack() on message %s after retry() is ignored", self.id)
            return
        self._choice = "ack"
        batch._decide(Decision(self._leased))

    def retry(self, *, delay_seconds: float | None = None) -> None:
        """Deliver this message again, after ``delay_seconds`` (default: the consumer's
        ``retry_delay``); past ``max_retries`` it goes to the dead-letter queue."""
        delay = delay_ms(delay_seconds)
        batch = self._batch
        if batch._choice == "ack":
            logger.warning("retry() on message %s after ack_all() is ignored", self.id)
            return
        if self._choice is not None:
            if self._choice == "ack":
                logger.warning("retry() on message %s after ack() is ignored", self.id)
            return
        self._choice = "retry"
        batch._decide(Decision(self._leased, retry=True, delay_ms=delay))

    def __repr__(self) -> str:
        return f"<Message {self.id} attempts={self.attempts} {self.content_type}>"


_MISSING: Any = object()


class MessageBatch:
    """A batch of messages from one queue, handed to a push consumer's handler.

    Attributes:
        queue: the name of the queue the messages come from.
        messages: the messages, oldest first.
    """

    def __init__(
        self,
        queue: str,
        leased: list[model.LeasedMessage],
        decide: Callable[[Decision], None],
    ) -> None:
        self.queue = queue
        self._decide = decide
        self._choice: _Choice | None = None
        self._retry_delay: int | None = None
        self.messages = [Message(m, self) for m in leased]

    def ack_all(self) -> None:
        """Mark every message handled, except those already retried."""
        if self._choice == "retry":
            logger.warning("ack_all() after retry_all() is ignored (queue %r)", self.queue)
            return
        if self._choice == "ack":
            return
        self._choice = "ack"
        for message in self.messages:
            if message._choice is None:
                self._decide(Decision(message._leased))

    def retry_all(self, *, delay_seconds: float | None = None) -> None:
        """Deliver every message again (after ``delay_seconds``), except those already
        acked; applies when the handler ends."""
        delay = delay_ms(delay_seconds)
        if self._choice == "ack":
            logger.warning("retry_all() after ack_all() is ignored (queue %r)", self.queue)
            return
        if self._choice == "retry":
            return
        self._choice = "retry"
        self._retry_delay = delay

    def finish(self, *, failed: bool) -> None:
        """Settle what the handler left undecided: ack if it returned, retry if it raised."""
        for message in self.messages:
            if message._choice is not None or self._choice == "ack":
                continue
            if self._choice == "retry":
                self._decide(Decision(message._leased, retry=True, delay_ms=self._retry_delay))
            else:
                self._decide(Decision(message._leased, retry=failed))

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"<MessageBatch {self.queue!r} of {len(self.messages)}>"

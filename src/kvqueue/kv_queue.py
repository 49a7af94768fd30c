"""The KV queue's consumer: ``listen_queue`` (Deno semantics, without Deno's bugs).

A thin adapter over the delivery engine (:mod:`kvqueue.delivery`): batches of
one message, a fixed number of handlers at once, and the KV queue's own retry
policy, kept per message in its attributes:

* the handler returned: ack (the message is deleted);
* it raised and the backoff schedule has a next delay: retry after that delay;
* it raised on the last attempt: write the payload to every
  ``keys_if_undelivered`` key and delete the message, in one commit.

While a handler runs, its lease is renewed, so a slow handler is never given
its message a second time (Deno redelivers after ~60 s). A crashed process's
leases simply run out and the messages are delivered again, counting an
attempt; a message whose attempts ran out that way is dead-lettered when it is
next leased.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kvqueue import model, v8
from kvqueue.atomic import KV_QUEUE, decode_attributes
from kvqueue.delivery import Decision, Engine, HandlerRunner, StorageSource
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.storage.base import Storage

logger = logging.getLogger("kvqueue")


def dead_letter(message: model.LeasedMessage, undelivered: tuple[bytes, ...]) -> model.AtomicWrite:
    """Write the payload to every undelivered key and drop the message, if still ours."""
    return model.AtomicWrite(
        lease_checks=(model.LeaseCheck(message.message_id, message.lease),),
        mutations=tuple(
            model.Mutation(MutationKind.SET, key, message.body, ValueEncoding.V8)
            for key in undelivered
        ),
        settlements=(model.DeadLetter(message.queue, message.message_id, message.lease),),
    )


class KvPolicy:
    """Retries by the message's backoff schedule, then its ``keys_if_undelivered``."""

    def retry(
        self, message: model.LeasedMessage, delay_ms: int | None
    ) -> tuple[model.AtomicWrite, str]:
        """See :meth:`kvqueue.delivery.Policy.retry`; the schedule decides the delay."""
        backoff, undelivered = decode_attributes(message.attributes)
        if message.attempts <= len(backoff):
            retry = model.Retry(
                message.queue, message.message_id, message.lease, backoff[message.attempts - 1]
            )
            return model.AtomicWrite(settlements=(retry,)), "retried"
        return dead_letter(message, undelivered), "dead-lettered"

    def exhausted(self, message: model.LeasedMessage) -> model.AtomicWrite | None:
        """See :meth:`kvqueue.delivery.Policy.exhausted`."""
        if message.attempts == 1:
            return None  # a first delivery has every try left
        backoff, undelivered = decode_attributes(message.attributes)
        if message.attempts > len(backoff) + 1:
            return dead_letter(message, undelivered)
        return None


class Listener:
    """Runs one handler over the KV queue until stopped."""

    def __init__(
        self,
        storage: Storage,
        handler: Callable[[Any], Any],
        *,
        concurrency: int,
        lease_ms: int,
    ) -> None:
        self._runner = HandlerRunner(handler, threads=max(1, concurrency))
        self._engine = Engine(
            StorageSource(storage, KV_QUEUE, KvPolicy(), lease_ms=lease_ms),
            KV_QUEUE,
            self._deliver,
            batch_size=1,
            batch_timeout_ms=0,
            concurrency=concurrency,
            lease_ms=lease_ms,
            autoscale=False,
        )

    def stop(self) -> None:
        """Take no more messages; run() returns once the in-flight ones are settled."""
        self._engine.stop()

    async def run(self) -> None:
        """Lease, dispatch and settle until stopped."""
        try:
            await self._engine.run()
        finally:
            self._runner.close()

    async def _deliver(
        self, batch: list[model.LeasedMessage], decide: Callable[[Decision], None]
    ) -> None:
        for message in batch:
            try:
                await self._runner(v8.loads(message.body))
            except Exception:
                logger.exception(
                    "KV queue handler failed on message %s (attempt %d)",
                    message.message_id,
                    message.attempts,
                )
                decide(Decision(message, retry=True))
            else:
                decide(Decision(message))

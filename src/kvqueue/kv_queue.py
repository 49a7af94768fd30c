"""The KV queue's consumer: ``listen_queue`` (Deno semantics, without Deno's bugs).

A listener leases as many messages as it has free handler slots, runs the
handler on each (async handlers on the loop, plain functions on a thread pool),
and settles each message in its own commit:

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

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kvqueue import errors, model, v8
from kvqueue.atomic import KV_QUEUE, decode_attributes
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.storage.base import Storage
from kvqueue.waiting import first_of

logger = logging.getLogger("kvqueue")

#: Set while a handler runs, so close() called from a handler does not wait for itself.
in_handler: contextvars.ContextVar[bool] = contextvars.ContextVar("in_handler", default=False)

# How long an idle listener waits before looking again without a wake-up.
_IDLE_RECHECK_MS = 5_000


def settlement_for_failure(message: model.LeasedMessage) -> tuple[model.AtomicWrite, str]:
    """What to commit after the handler failed on ``message``, and what that is called."""
    backoff, undelivered = decode_attributes(message.attributes)
    if message.attempts <= len(backoff):
        retry = model.Retry(message.message_id, message.lease, backoff[message.attempts - 1])
        return model.AtomicWrite(settlements=(retry,)), "retried"
    return dead_letter(message, undelivered), "dead-lettered"


def dead_letter(message: model.LeasedMessage, undelivered: tuple[bytes, ...]) -> model.AtomicWrite:
    """Write the payload to every undelivered key and drop the message, if still ours."""
    return model.AtomicWrite(
        lease_checks=(model.LeaseCheck(message.message_id, message.lease),),
        mutations=tuple(
            model.Mutation(MutationKind.SET, key, message.body, ValueEncoding.V8)
            for key in undelivered
        ),
        settlements=(model.Ack(message.message_id),),
    )


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
        if concurrency < 1:
            raise errors.InvalidOption(f"concurrency is at least 1, got {concurrency}")
        self._storage = storage
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._concurrency = concurrency
        self._lease_ms = lease_ms
        self._inflight: dict[str, tuple[model.LeasedMessage, asyncio.Task[None]]] = {}
        self._slot_free = asyncio.Event()
        self._busy = asyncio.Event()
        self._stop = asyncio.Event()
        self._threads: ThreadPoolExecutor | None = None

    def stop(self) -> None:
        """Take no more messages; run() returns once the in-flight ones are settled."""
        self._stop.set()

    async def run(self) -> None:
        """Lease, dispatch and settle until stopped."""
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stop.is_set():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    self._slot_free.clear()
                    await first_of(self._slot_free.wait(), self._stop.wait())
                    continue
                leased = await self._storage.lease(KV_QUEUE, limit=free, lease_ms=self._lease_ms)
                if not leased:
                    await first_of(
                        self._storage.wait(KV_QUEUE, timeout_ms=_IDLE_RECHECK_MS),
                        self._stop.wait(),
                    )
                    continue
                for message in leased:
                    task = asyncio.create_task(self._deliver(message))
                    self._inflight[message.message_id] = (message, task)
                self._busy.set()
            if self._inflight:
                await asyncio.gather(*(t for _, t in self._inflight.values()))
        finally:
            renewer.cancel()
            if self._threads is not None:
                self._threads.shutdown(wait=False)

    async def _deliver(self, message: model.LeasedMessage) -> None:
        try:
            backoff, undelivered = decode_attributes(message.attributes)
            if message.attempts > len(backoff) + 1:
                # Its leases ran out (crashed consumers) as often as it may be tried.
                await self._settle(message, dead_letter(message, undelivered), "dead-lettered")
                return
            try:
                await self._call(v8.loads(message.body))
            except Exception:
                logger.exception(
                    "KV queue handler failed on message %s (attempt %d)",
                    message.message_id,
                    message.attempts,
                )
                await self._settle(message, *settlement_for_failure(message))
            else:
                await self._settle(
                    message,
                    model.AtomicWrite(settlements=(model.Ack(message.message_id),)),
                    "acked",
                )
        finally:
            self._inflight.pop(message.message_id, None)
            self._slot_free.set()

    async def _call(self, value: Any) -> None:
        token = in_handler.set(True)
        try:
            if self._is_async:
                await self._handler(value)
                return
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    self._concurrency, thread_name_prefix="kvqueue-handler"
                )
            context = contextvars.copy_context()
            result = await asyncio.get_running_loop().run_in_executor(
                self._threads, context.run, self._handler, value
            )
            if inspect.isawaitable(result):
                await result
        finally:
            in_handler.reset(token)

    async def _settle(
        self, message: model.LeasedMessage, write: model.AtomicWrite, outcome: str
    ) -> None:
        try:
            result = await self._storage.commit(write)
        except errors.KvQueueError:
            # The lease will run out and the message will be delivered again.
            logger.exception("could not settle message %s", message.message_id)
            return
        if result is None:
            logger.warning(
                "message %s was not %s: its lease ran out and it was taken again",
                message.message_id,
                outcome,
            )
            return
        logger.debug("message %s %s", message.message_id, outcome)

    async def _renew_leases(self) -> None:
        interval = self._lease_ms / 3 / 1000
        while True:
            if not self._inflight:
                self._busy.clear()
                await self._busy.wait()
            await self._storage.clock.sleep(interval)
            held = [model.LeaseCheck(m.message_id, m.lease) for m, _ in self._inflight.values()]
            if not held:
                continue
            try:
                kept = await self._storage.extend(held, lease_ms=self._lease_ms)
            except errors.KvQueueError:
                logger.exception("could not renew leases")
                continue
            for lease in held:
                if lease.message_id not in kept and lease.message_id in self._inflight:
                    logger.warning(
                        "lost the lease on message %s while its handler runs",
                        lease.message_id,
                    )

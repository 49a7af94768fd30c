"""The delivery engine: the one loop behind every push consumer.

The KV queue's ``listen_queue`` and the named queues' ``Worker`` are two thin
adapters over this engine. It:

* leases batches: a batch goes out when it holds ``batch_size`` messages or
  ``batch_timeout_ms`` after its first message was taken, whichever is first,
  and never empty;
* keeps as many batches in flight as the backlog calls for, up to its cap
  (starting at one, doubling while leases come back full, halving when they
  do not), and with ``max_leases`` never more than that across every process
  sharing the store;
* renews the leases of every message it holds while handlers run, so a slow
  handler never sees its batch delivered a second time;
* runs the batches' deliveries on a few tasks it keeps (a runner per delivery
  under way), not a task per batch: a KV queue's batch is one message;
* settles decisions as they come (``ack`` or ``retry``), merging those that
  arrive together into one commit, and asks the queue's :class:`Policy` what a
  retry means (retry later, or dead-letter);
* dead-letters, without delivering it, a message whose leases ran out (crashed
  consumers) as many times as its policy allows deliveries;
* on stop, takes no new batch, lets the running ones finish and settle, and
  returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from kvqueue import errors, model
from kvqueue.clock import Clock
from kvqueue.storage.base import Storage
from kvqueue.waiting import first_of

logger = logging.getLogger("kvqueue")

#: Set while a handler runs, so close() called from a handler does not wait for itself.
in_handler: contextvars.ContextVar[bool] = contextvars.ContextVar("in_handler", default=False)

# How long an idle consumer waits before looking again without a wake-up.
_IDLE_RECHECK_MS = 5_000
# Real-time pauses after the store failed (a database restarting, a server out
# of reach): short at first, then no more than one try a second.
_FAILURE_PAUSES_S = (0.05, 0.1, 0.25, 0.5, 1.0)
# Messages taken by one lease at most (whole batches). Free slots past this wait
# for the next lease: a lease of thousands of messages holds the store's writer
# that long, and a consumer scaled up on a deep backlog would hold them all in memory.
_MAX_LEASE_MESSAGES = 800


class Policy(Protocol):
    """What retrying means for the messages of one queue."""

    def retry(
        self, message: model.LeasedMessage, delay_ms: int | None
    ) -> tuple[model.AtomicWrite, str]:
        """The write that retries ``message`` (or dead-letters it when its tries
        are used up), and what that is called ("retried", "dead-lettered").
        ``delay_ms`` None means the policy's own delay."""
        ...

    def exhausted(self, message: model.LeasedMessage) -> model.AtomicWrite | None:
        """The dead-letter write for a message leased more often than it may be
        delivered (its earlier leases ran out), or None if it may be delivered."""
        ...


class Decision(NamedTuple):
    """What a consumer decided for one message: ack, or retry after ``delay_ms``
    (None: the policy's delay). A named tuple: one is made per message delivered,
    and a tuple is made three times faster than a frozen dataclass."""

    message: model.LeasedMessage
    retry: bool = False
    delay_ms: int | None = None


class Source(Protocol):
    """Where an engine takes one queue's messages from and settles them: the
    storage itself (:class:`StorageSource`), or a server (:mod:`kvqueue.remote`)."""

    #: Times the batch timeout; lease deadlines are the source's own business.
    clock: Clock

    async def lease(self, lease: str, limit: int) -> list[model.LeasedMessage]:
        """Up to ``limit`` deliverable messages under ``lease`` (the same lease may be
        asked for more); messages out of tries are dead-lettered, not returned."""
        ...

    async def extend(self, held: Sequence[model.LeasedMessage]) -> set[str]:
        """Renew the leases of ``held``; the ids of the messages still held."""
        ...

    async def settle(self, decisions: Sequence[Decision]) -> None:
        """Apply the decisions (retry as the queue's policy says); never raises: a
        decision that could not be applied is logged, and its lease runs out."""
        ...

    def changes(self) -> int:
        """A change count to pass to :meth:`wait` as ``since`` (see ``Storage.changes``)."""
        ...

    async def wait(
        self,
        *,
        timeout_ms: int,
        after_ms: int | None,
        since: int | None,
        fill: tuple[str, int] | None = None,
    ) -> None:
        """Return when a message may be deliverable (see ``Storage.wait``).

        ``fill`` is the lease and the number of messages the engine asks :meth:`lease`
        for right after this wait, whether the wait ends or is cancelled (while it
        tops a batch up). A source that can only wait by leasing (a server's long
        poll) may lease those ahead, for that call to return.
        """
        ...

    async def wait_for_change(self, *, timeout_ms: int, since: int | None = None) -> None:
        """Return when anything may have changed (the gate may open); at once if
        :meth:`changes` has moved past ``since`` (read before the gate looked)."""
        ...


#: Runs one batch; calls ``decide`` once per message, at any time before it returns.
Deliver = Callable[[list[model.LeasedMessage], Callable[[Decision], None]], Awaitable[None]]
#: Says whether the queue may be consumed now (False: it is paused or gone).
Gate = Callable[[], Awaitable[bool]]


class StorageSource:
    """A queue of a storage, retried by ``policy``: the source of every local consumer.

    With ``max_leases``, no lease is granted while that many other leases hold
    messages of the queue, across every process sharing the storage; only then
    does another consumer's ack wake it (it may free a lease).
    """

    def __init__(
        self,
        storage: Storage,
        queue: str,
        policy: Policy,
        *,
        lease_ms: int,
        max_leases: int | None = None,
    ) -> None:
        self.clock = storage.clock
        self._storage = storage
        self._queue = queue
        self._policy = policy
        self._lease_ms = lease_ms
        self._max_leases = max_leases

    @property
    def _acks(self) -> bool:
        # Only a bounded consumer waits for acks: one may free a lease.
        return self._max_leases is not None

    async def lease(self, lease: str, limit: int) -> list[model.LeasedMessage]:
        """See :meth:`Source.lease`."""
        leased = await self._storage.lease(
            self._queue,
            lease=lease,
            limit=limit,
            lease_ms=self._lease_ms,
            max_leases=self._max_leases,
        )
        usable: list[model.LeasedMessage] = []
        for message in leased:
            write = self._policy.exhausted(message)
            if write is None:
                usable.append(message)
            else:
                await self._commit_alone(message, write, "dead-lettered")
        return usable

    async def extend(self, held: Sequence[model.LeasedMessage]) -> set[str]:
        """See :meth:`Source.extend`."""
        checks = [model.LeaseCheck(m.message_id, m.lease) for m in held]
        return await self._storage.extend(checks, lease_ms=self._lease_ms)

    def changes(self) -> int:
        """See :meth:`Source.changes`."""
        return self._storage.changes if self._acks else self._storage.arrivals

    async def wait(
        self,
        *,
        timeout_ms: int,
        after_ms: int | None,
        since: int | None,
        fill: tuple[str, int] | None = None,
    ) -> None:
        """See :meth:`Source.wait`."""
        await self._storage.wait(
            self._queue,
            timeout_ms=timeout_ms,
            after_ms=after_ms,
            since=since,
            acks=self._acks,
        )

    async def wait_for_change(self, *, timeout_ms: int, since: int | None = None) -> None:
        """See :meth:`Source.wait_for_change`: acks change no queue's record."""
        await self._storage.wait(None, timeout_ms=timeout_ms, since=since, acks=self._acks)

    async def settle(self, decisions: Sequence[Decision]) -> None:
        """See :meth:`Source.settle`: writes that need no lease check share one commit."""
        together: list[tuple[Decision, str]] = []
        acks: list[model.Settlement] = []
        retries: list[model.AtomicWrite] = []
        for decision in decisions:
            message = decision.message
            if not decision.retry:
                acks.append(model.Ack(message.queue, message.message_id))
                together.append((decision, "acked"))
                continue
            write, outcome = self._policy.retry(message, decision.delay_ms)
            if write.lease_checks or write.checks:
                await self._commit_alone(message, write, outcome)
            else:
                retries.append(write)
                together.append((decision, outcome))
        if not together:
            return
        # Settlements of different messages do not depend on their order.
        write = model.AtomicWrite(settlements=tuple(acks))
        try:
            await self._storage.commit(model.merge([write, *retries]) if retries else write)
        except errors.KvQueueError:
            # The leases will run out and the messages will be delivered again.
            logger.exception("could not settle %d messages of %r", len(together), self._queue)
            return
        if logger.isEnabledFor(logging.DEBUG):
            for decision, outcome in together:
                logger.debug("message %s %s", decision.message.message_id, outcome)

    async def _commit_alone(
        self, message: model.LeasedMessage, write: model.AtomicWrite, outcome: str
    ) -> None:
        try:
            committed = await self._storage.commit(write)
        except errors.KvQueueError:
            logger.exception("could not settle message %s", message.message_id)
            return
        if committed is None:
            logger.warning(
                "message %s was not %s: its lease ran out and it was taken again",
                message.message_id,
                outcome,
            )
            return
        logger.debug("message %s %s", message.message_id, outcome)


class Engine:
    """Consumes one queue with one ``deliver`` callable until stopped.

    ``bounded`` says the source bounds leases across processes (``max_leases``):
    then each batch is leased on its own.
    """

    def __init__(
        self,
        source: Source,
        queue: str,
        deliver: Deliver,
        *,
        batch_size: int,
        batch_timeout_ms: int,
        concurrency: int,
        lease_ms: int,
        autoscale: bool = True,
        bounded: bool = False,
        gate: Gate | None = None,
    ) -> None:
        if concurrency < 1:
            raise errors.InvalidOption(f"concurrency is at least 1, got {concurrency}")
        self._source = source
        self._queue = queue
        self._deliver = deliver
        self._batch_size = batch_size
        self._batch_timeout_ms = batch_timeout_ms
        self._cap = concurrency
        self._target = 1 if autoscale else concurrency
        self._autoscale = autoscale
        self._bounded = bounded
        self._gate = gate
        self._lease_ms = lease_ms
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # Keyed by message and lease: a message may be leased again (after a
        # retry) before the settlement of its previous lease has come back.
        self._held: dict[_Key, model.LeasedMessage] = {}
        # Each message not yet settled, to the batch it belongs to.
        self._unsettled: dict[_Key, _Outstanding] = {}
        # Batches dispatched whose delivery has not returned or whose messages are
        # not all decided: each holds a slot of the concurrency until both.
        self._in_flight = 0
        # Batches dispatched and not yet taken by a runner (see _run_batches).
        self._ready: collections.deque[tuple[list[model.LeasedMessage], _Outstanding]] = (
            collections.deque()
        )
        self._runners: set[asyncio.Task[None]] = set()
        self._idle_runners: collections.deque[asyncio.Future[None]] = collections.deque()
        # A runner was woken (or started) and has not yet looked at _ready.
        self._waking = False
        self._closing = False
        self._pending: list[Decision] = []
        # Messages decided and not yet settled: a later decision for one is ignored.
        self._pending_ids: set[_Key] = set()
        self._flushing: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        self._busy = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Batches dispatched and not yet both delivered and decided."""
        return self._in_flight

    def stop(self) -> None:
        """Take no more batches; run() returns once the running ones are settled."""
        self._stop.set()

    async def run(self) -> None:
        """Lease, deliver and settle until stopped."""
        renewer = asyncio.create_task(self._renew_leases())
        try:
            failures = 0
            while not self._stop.is_set():
                if self._in_flight >= min(self._target, self._cap):
                    self._slot_free.clear()
                    await first_of(self._slot_free.wait(), self._stop.wait())
                    continue
                try:
                    # Read before the gate looks: a change landing while it looks wakes us.
                    seen = self._source.changes()
                    if self._gate is not None and not await self._gate():
                        # Paused, gone, or no longer ours: any commit may change that.
                        await first_of(
                            self._source.wait_for_change(timeout_ms=_IDLE_RECHECK_MS, since=seen),
                            self._stop.wait(),
                        )
                        continue
                    await self._take_batches()
                    failures = 0
                except errors.StorageError as exc:
                    # The store is restarting or out of reach: carry on once it is back.
                    pause = _FAILURE_PAUSES_S[min(failures, len(_FAILURE_PAUSES_S) - 1)]
                    failures += 1
                    logger.warning("queue %r: %s; trying again in %.2f s", self._queue, exc, pause)
                    await first_of(asyncio.sleep(pause), self._stop.wait())
            # Settled, not only decided: the last decisions' commit is waited for too.
            while self._in_flight or self._flushing is not None:
                self._slot_free.clear()
                await self._slot_free.wait()
        finally:
            renewer.cancel()
            # Runners in a delivery finish it (and what is dispatched) and then end.
            self._closing = True
            while self._idle_runners:
                self._idle_runners.popleft().cancel()

    # --- leasing ------------------------------------------------------------

    async def _idle(self, after_ms: int, since: int) -> None:
        await first_of(
            self._source.wait(timeout_ms=_IDLE_RECHECK_MS, after_ms=after_ms, since=since),
            self._stop.wait(),
        )

    async def _lease(self, token: str, limit: int) -> list[model.LeasedMessage]:
        usable = await self._source.lease(token, limit)
        for message in usable:
            self._held[_key(message)] = message
        if usable:
            self._busy.set()
        return usable

    async def _take_batches(self) -> None:
        size = self._batch_size
        free = min(self._target, self._cap) - self._in_flight
        # A cross-process bound counts leases, so each batch needs a lease of its own.
        want = size if self._bounded else size * min(free, max(1, _MAX_LEASE_MESSAGES // size))
        token = secrets.token_hex(8)
        leased_at = self._source.clock.now_ms()
        seen = self._source.changes()
        leased = await self._lease(token, want)
        if not leased:
            # Whatever was visible then was refused (the concurrency bound): wait for news.
            self._scale(full=False)
            await self._idle(leased_at, seen)
            return
        whole = len(leased) // size * size
        for start in range(0, whole, size):
            self._dispatch(leased[start : start + size])
        self._scale(full=len(leased) == want)
        if whole < len(leased):
            self._dispatch(await self._fill(token, leased[whole:]))
        # The handlers just dispatched start before the next lease is sent, not after
        # it: on PostgreSQL that lease is a round trip of the event loop's time.
        await asyncio.sleep(0)

    async def _fill(
        self, token: str, batch: list[model.LeasedMessage]
    ) -> list[model.LeasedMessage]:
        """Top ``batch`` up to a full batch until its timeout runs out."""
        clock = self._source.clock
        looked_at = clock.now_ms()
        seen = self._source.changes()
        deadline = looked_at + self._batch_timeout_ms
        while len(batch) < self._batch_size and not self._stop.is_set():
            remaining = deadline - clock.now_ms()
            if remaining <= 0:
                break
            wanted = self._batch_size - len(batch)
            await first_of(
                self._source.wait(
                    timeout_ms=remaining, after_ms=looked_at, since=seen, fill=(token, wanted)
                ),
                clock.sleep_until(deadline),
                self._stop.wait(),
            )
            looked_at = clock.now_ms()
            seen = self._source.changes()
            try:
                batch += await self._lease(token, wanted)
            except errors.StorageError as exc:
                # The messages already taken are leased to us: deliver them now
                # rather than keep renewing leases nobody is handling.
                logger.warning(
                    "queue %r: %s; delivering the %d messages taken so far",
                    self._queue,
                    exc,
                    len(batch),
                )
                break
        return batch

    def _scale(self, *, full: bool) -> None:
        if not self._autoscale:
            return
        if full:
            self._target = min(self._cap, self._target * 2)
        else:
            self._target = max(1, self._target // 2)

    # --- delivering -----------------------------------------------------------

    def _dispatch(self, batch: list[model.LeasedMessage]) -> None:
        outstanding = _Outstanding(len(batch))
        for message in batch:
            self._unsettled[_key(message)] = outstanding
        self._in_flight += 1
        self._ready.append((batch, outstanding))
        self._wake_runner()

    def _wake_runner(self) -> None:
        """Have one more runner look at the dispatched batches, unless one is on its way."""
        if self._waking:
            return
        self._waking = True
        if self._idle_runners:
            self._idle_runners.popleft().set_result(None)
            return
        runner = asyncio.create_task(self._run_batches())
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _run_batches(self) -> None:
        """Deliver dispatched batches one after another until none is left, then wait.

        A task per batch would cost more than a short handler (a KV queue's batch is
        one message): a runner goes on to the next batch while its handlers finish
        without waiting, and when one waits, the runner woken before it started
        takes the next. So there is a runner per batch being delivered at once (the
        concurrency bounds them), and one more on its way while batches are left.
        """
        while True:
            self._waking = False
            while self._ready:
                batch, outstanding = self._ready.popleft()
                if self._ready:
                    self._wake_runner()
                try:
                    await self._run_batch(batch, outstanding)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    # A handler raised it without being cancelled: its batch ended
                    # as a cancelled task's would, and the runner goes on.
            if self._closing:
                return
            idle = self._loop.create_future()
            self._idle_runners.append(idle)
            await idle

    async def _run_batch(self, batch: list[model.LeasedMessage], outstanding: _Outstanding) -> None:
        # This ends with the delivery; the batch's slot is freed by whichever comes
        # last, this or the decision on its last message (see _enqueue_decision).
        completed = False
        try:
            try:
                await self._deliver(batch, self.decide)
            except Exception:
                logger.exception("consumer of queue %r failed on a batch", self._queue)
            # A message the consumer left undecided is retried.
            for message in batch:
                key = _key(message)
                if key in self._unsettled and key not in self._pending_ids:
                    self._enqueue_decision(Decision(message, retry=True))
            completed = True
        finally:
            if not completed:
                # Cancelled mid-delivery: what was not decided is left to its lease's
                # expiry, and the batch gives its slot back now.
                for message in batch:
                    key = _key(message)
                    if self._unsettled.get(key) is outstanding and key not in self._pending_ids:
                        del self._unsettled[key]
                        self._held.pop(key, None)
                        outstanding.count -= 1
            outstanding.delivered = True
            if outstanding.count == 0:
                self._free_slot()

    def _free_slot(self) -> None:
        self._in_flight -= 1
        self._slot_free.set()

    def _is_pending(self, message: model.LeasedMessage) -> bool:
        return _key(message) in self._pending_ids

    def decide(self, decision: Decision) -> None:
        """Settle one message (from any thread); the first decision per message counts."""
        if threading.get_ident() == self._loop_thread:
            self._enqueue_decision(decision)
        else:
            self._loop.call_soon_threadsafe(self._enqueue_decision, decision)

    def _enqueue_decision(self, decision: Decision) -> None:
        key = _key(decision.message)
        if key not in self._unsettled or key in self._pending_ids:
            return
        self._pending.append(decision)
        self._pending_ids.add(key)
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        # The slot is free once the batch is decided, not once the decisions have
        # committed: the next lease is then sent beside the settling commit instead of
        # after it, and a SQLite writer takes both in one transaction (one fsync, and
        # the pages the acks and the lease touch written once).
        outstanding = self._unsettled[key]
        outstanding.count -= 1
        if outstanding.count == 0 and outstanding.delivered:
            self._free_slot()

    async def _flush(self) -> None:
        # Decisions made in the same turn of the loop share one commit.
        await asyncio.sleep(0)
        try:
            while self._pending:
                decisions, self._pending = self._pending, []
                try:
                    await self._source.settle(decisions)
                except Exception:
                    logger.exception(
                        "could not settle %d messages of %r", len(decisions), self._queue
                    )
                finally:
                    # Settled or not, they are no longer ours to renew: a message whose
                    # settlement failed is delivered again once its lease runs out.
                    for decision in decisions:
                        self._resolve(decision.message)
        finally:
            self._flushing = None
            self._slot_free.set()

    def _resolve(self, message: model.LeasedMessage) -> None:
        key = _key(message)
        self._held.pop(key, None)
        self._pending_ids.discard(key)
        self._unsettled.pop(key, None)

    # --- leases -----------------------------------------------------------------

    async def _renew_leases(self) -> None:
        interval = self._lease_ms / 3 / 1000
        while True:
            if not self._held:
                self._busy.clear()
                await self._busy.wait()
            await self._source.clock.sleep(interval)
            held = list(self._held.values())
            if not held:
                continue
            try:
                kept = await self._source.extend(held)
            except errors.KvQueueError:
                logger.exception("could not renew leases")
                continue
            for lease in held:
                if lease.message_id not in kept and _key(lease) in self._held:
                    logger.warning(
                        "lost the lease on message %s while its handler runs", lease.message_id
                    )


_Key = tuple[str, str]


@dataclass(slots=True)
class _Outstanding:
    """A batch dispatched: how many of its messages are not yet decided, and whether
    its delivery has returned (it holds its slot until both)."""

    count: int
    delivered: bool = False


def _key(message: model.LeasedMessage) -> _Key:
    return message.message_id, message.lease


class HandlerRunner:
    """Calls user handlers: coroutine functions on the loop, plain ones on threads."""

    def __init__(self, handler: Callable[[Any], Any], *, threads: int) -> None:
        self.handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    async def __call__(self, argument: Any) -> None:
        token = in_handler.set(True)
        try:
            if self._is_async:
                await self.handler(argument)
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="kvqueue-handler")
            context = contextvars.copy_context()
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool, context.run, self.handler, argument
            )
            if inspect.isawaitable(result):
                await result
        finally:
            in_handler.reset(token)

    def close(self) -> None:
        """Let the handler threads go (running calls finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

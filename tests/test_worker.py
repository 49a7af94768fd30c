"""Push consumers (SPEC §5, cloudflare-queues.md §1.3, §2.1, §2.5, §8.5): runs against every backend."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

import kvqueue
from tests.helpers import asleep_until, wait_until, wait_until_async
from tests.remote import served

#: Most store round trips an idle worker may make in MEASURE_WINDOW_S of real time.
#: Waiting for a wake-up it makes one or two; a busy loop makes hundreds.
IDLE_POLL_BUDGET = 20
#: Most requests an idle worker on a server may make per queue and second: a long
#: poll and a look at the queue; a busy loop makes one per round trip (dozens).
REMOTE_POLLS_PER_SECOND = 2
MEASURE_WINDOW_S = 0.3


# --- helpers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One handler invocation: where the batch came from, what it held, and when."""

    queue: str
    ids: list[str]
    attempts: list[int]
    bodies: list[Any]
    at_ms: int


class Batches:
    """Records every batch a handler receives."""

    def __init__(self, clock: kvqueue.Clock | None = None) -> None:
        self.seen: list[Seen] = []
        self._clock = clock

    def record(self, batch: kvqueue.MessageBatch) -> Seen:
        seen = Seen(
            batch.queue,
            [m.id for m in batch.messages],
            [m.attempts for m in batch.messages],
            [m.body for m in batch.messages],
            self._clock.now_ms() if self._clock else 0,
        )
        self.seen.append(seen)
        return seen

    @property
    def sizes(self) -> list[int]:
        return [len(s.ids) for s in self.seen]

    def deliveries(self) -> list[tuple[str, int]]:
        """(message id, attempts) of every message delivered, in delivery order."""
        return [(i, a) for s in self.seen for i, a in zip(s.ids, s.attempts, strict=True)]

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` batches have been received."""
        await wait_until(lambda: len(self.seen) >= count)


@asynccontextmanager
async def serving(worker: kvqueue.Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``worker.serve()`` as a task; stop it and wait for it on the way out."""
    task = asyncio.create_task(worker.serve())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def make_queue(adb: kvqueue.AsyncDatabase, name: str, n: int = 0) -> list[str]:
    """Create queue ``name`` holding ``n`` JSON messages (bodies 0 .. n-1); their ids."""
    await adb.queues.create(name)
    if n == 0:
        return []
    return list((await adb.queue(name).send_batch(list(range(n)))).message_ids)


async def settled(adb: kvqueue.AsyncDatabase, name: str) -> kvqueue.QueueMetrics:
    """Wait until queue ``name`` holds nothing (every message acked or dead-lettered)."""
    return await wait_until_async(adb.queue(name).metrics, lambda m: m.backlog_count == 0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING messages kvqueue logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "kvqueue" and r.levelno == logging.WARNING
    ]


def debug_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The DEBUG messages kvqueue logged."""
    return [
        r.getMessage() for r in caplog.records if r.name == "kvqueue" and r.levelno == logging.DEBUG
    ]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog capturing everything kvqueue logs, DEBUG and up."""
    caplog.set_level(logging.DEBUG, logger="kvqueue")
    return caplog


class PollCounter:
    """Counts the round trips idle workers make to what holds their queues, and how
    many of their leases came back empty; :func:`poll_counter` makes the one that
    fits a backend."""

    #: How long the last :meth:`round_trips_in_window` took (its pokes may stretch it).
    window_s = 0.0

    @property
    def empty_leases(self) -> int:
        raise NotImplementedError

    def lease_sizes(self) -> list[int]:
        """How many messages each lease (or pull) so far gave."""
        raise NotImplementedError

    @property
    def round_trips(self) -> int:
        raise NotImplementedError

    def budget(self, *, queues: int = 1, commits: int = 0) -> int:
        """Most round trips idle workers on ``queues`` queues may make in the last window
        while ``commits`` unrelated commits were made."""
        raise NotImplementedError

    async def round_trips_in_window(
        self, poke: Callable[[], Awaitable[object]] | None = None, pokes: int = 0
    ) -> int:
        """Round trips made in MEASURE_WINDOW_S of real time (a window to count in, not a
        wait for a condition), split in ``pokes`` parts each started by ``poke()``."""
        before = self.round_trips
        started = time.monotonic()
        for _ in range(max(pokes, 1)):
            if poke is not None:
                await poke()
            await asyncio.sleep(MEASURE_WINDOW_S / max(pokes, 1))
        self.window_s = time.monotonic() - started
        return self.round_trips - before


class StoreSpy(PollCounter):
    """Counts what the databases' storages are asked: leases (and how many they gave) and
    queue-record reads (the worker's gate)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *databases: kvqueue.AsyncDatabase):
        self.leased: list[int] = []
        self.record_reads = 0
        for database in {id(d): d for d in databases}.values():
            storage = database.storage
            lease, queues = storage.lease, storage.queues

            async def spy_lease(*args: Any, _lease: Any = lease, **kwargs: Any) -> Any:
                result = await _lease(*args, **kwargs)
                self.leased.append(len(result))
                return result

            async def spy_queues(*args: Any, _queues: Any = queues, **kwargs: Any) -> Any:
                self.record_reads += 1
                return await _queues(*args, **kwargs)

            monkeypatch.setattr(storage, "lease", spy_lease)
            monkeypatch.setattr(storage, "queues", spy_queues)

    @property
    def empty_leases(self) -> int:
        return sum(1 for n in self.leased if n == 0)

    def lease_sizes(self) -> list[int]:
        return list(self.leased)

    @property
    def round_trips(self) -> int:
        return len(self.leased) + self.record_reads

    def budget(self, *, queues: int = 1, commits: int = 0) -> int:
        # Each unrelated commit may wake each queue's consumer to look (a lease and a
        # read) twice: once for the writer's signal and once for the wake-up from
        # outside (SQLite's file watch sees our own commits too).
        return IDLE_POLL_BUDGET + 4 * queues * commits


class RequestSpy(PollCounter):
    """Counts the REST requests a server answers (the ``remote`` backend): a remote
    worker's pulls (and how many messages each gave) and its gate's looks."""

    def __init__(self, database: kvqueue.AsyncDatabase) -> None:
        assert database.server is not None
        self._requests = served(database.server.url).requests

    @property
    def empty_leases(self) -> int:
        return sum(1 for n in self._requests.pulled if n == 0)

    def lease_sizes(self) -> list[int]:
        return list(self._requests.pulled)

    @property
    def round_trips(self) -> int:
        return len(self._requests.made)

    def budget(self, *, queues: int = 1, commits: int = 0) -> int:
        # An idle remote worker's pull waits a second on the server (commits elsewhere
        # do not end it) before its gate looks again: per queue, each second begun in
        # the window holds at most one look and the pull after it.
        return queues * REMOTE_POLLS_PER_SECOND * math.ceil(self.window_s) + 1


def poll_counter(
    monkeypatch: pytest.MonkeyPatch, database: kvqueue.AsyncDatabase, *others: kvqueue.AsyncDatabase
) -> PollCounter:
    """What counts idle workers' round trips on ``database``'s backend: its storage's calls,
    or for a database on a server, the requests that server answers (``others`` are
    more databases on the same store)."""
    if database.server is not None:
        return RequestSpy(database)
    return StoreSpy(monkeypatch, database, *others)


# --- 1. batching -------------------------------------------------------------------------


async def test_batches_fill_to_size_and_a_partial_batch_waits_for_the_timeout(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """25 messages sent at once arrive as 10, 10 and then 5 only once 5 s have passed since the partial batch was taken."""
    start = clock.now_ms()
    ids = await make_queue(fake_adb, "q", 25)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_size=10, max_batch_timeout=5)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await batches.wait_for(2)
        await asleep_until(clock, start + 5000)
        assert batches.sizes == [10, 10]
        clock.advance(4999)
        await asleep_until(clock, start + 5000)
        assert batches.sizes == [10, 10]
        clock.advance(1)
        await batches.wait_for(3)
        await settled(fake_adb, "q")
    assert batches.sizes == [10, 10, 5]
    assert [s.at_ms for s in batches.seen] == [start, start, start + 5000]
    assert sorted(i for s in batches.seen for i in s.ids) == sorted(ids)


async def test_a_store_failure_while_a_batch_fills_delivers_what_was_taken(
    fake_adb: kvqueue.AsyncDatabase,
    clock: kvqueue.FakeClock,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the store fails while a partial batch waits to fill, the messages already
    taken are delivered at once, not held (their leases renewed) until the worker stops."""
    ids = await make_queue(fake_adb, "q", 3)
    storage = served(url).storage if fake_adb.server is not None else fake_adb.storage
    lease = storage.lease
    leases = 0
    answered = 0

    async def fails_once_after_the_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal leases, answered
        leases += 1
        if leases == 2:
            raise kvqueue.errors.StorageError("injected: the store is out of reach")
        taken = await lease(*args, **kwargs)
        answered += 1
        return taken

    monkeypatch.setattr(storage, "lease", fails_once_after_the_first)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_size=10, max_batch_timeout=5)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        # The first lease has taken its three (a lease merely started could still
        # take the late message too).
        await wait_until(lambda: answered >= 1)
        # Wakes the filling batch, whose next lease fails.
        (late,) = (await fake_adb.queue("q").send("late")).message_ids
        await batches.wait_for(1)
        assert [s.ids for s in batches.seen] == [ids]
        assert clock.now_ms() == batches.seen[0].at_ms
        # The late message starts a batch of its own, which waits out its timeout.
        await asleep_until(clock, clock.now_ms() + 5000)
        clock.advance(5000)
        await batches.wait_for(2)
        await settled(fake_adb, "q")
    assert [s.ids for s in batches.seen] == [ids, [late]]


async def test_an_empty_queue_never_invokes_the_handler(
    fake_adb: kvqueue.AsyncDatabase,
    clock: kvqueue.FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker on an empty queue leases nothing and never calls its handler, however much time passes; the first message sent is then delivered alone."""
    await make_queue(fake_adb, "q")
    spy = poll_counter(monkeypatch, fake_adb)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_size=10, max_batch_timeout=5)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await wait_until(lambda: spy.empty_leases >= 1)
        for _ in range(3):
            clock.advance(60_000)
        assert batches.seen == []
        sent = clock.now_ms()
        (message_id,) = (await fake_adb.queue("q").send("only")).message_ids
        await asleep_until(clock, sent + 5000)
        assert batches.seen == []
        clock.advance(5000)
        await batches.wait_for(1)
        await settled(fake_adb, "q")
    assert [s.ids for s in batches.seen] == [[message_id]]
    assert batches.seen[0].bodies == ["only"]


async def test_a_worker_idle_on_two_empty_queues_does_not_busy_poll_the_store(
    adb: kvqueue.AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker consuming two empty queues waits for news (a commit made elsewhere, or through a server the end of its long poll) instead of leasing again and again."""
    await make_queue(adb, "a")
    await make_queue(adb, "b")
    spy = poll_counter(monkeypatch, adb)
    worker = kvqueue.Worker(adb, name="w")

    batches = Batches()

    @worker.consumer(["a", "b"], max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await wait_until(lambda: spy.empty_leases >= 2)
        commits = 30
        polls = await spy.round_trips_in_window(lambda: adb.set(("other",), 1), pokes=commits)
    assert polls <= spy.budget(queues=2, commits=commits), (
        f"{polls} round trips in {spy.window_s:.2f} s with {commits} commits"
    )
    assert batches.seen == []


async def test_a_zero_batch_timeout_delivers_a_partial_batch_at_once(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """With max_batch_timeout=0, 3 messages are delivered as one batch of 3 without the clock moving."""
    start = clock.now_ms()
    ids = await make_queue(fake_adb, "q", 3)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_size=10, max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await batches.wait_for(1)
        await settled(fake_adb, "q")
    assert [s.ids for s in batches.seen] == [ids]
    assert batches.seen[0].at_ms == start
    assert batches.seen[0].bodies == [0, 1, 2]


async def test_batch_queue_names_the_source_queue(adb: kvqueue.AsyncDatabase) -> None:
    """batch.queue is the name of the queue the batch came from."""
    await make_queue(adb, "emails", 2)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("emails", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await batches.wait_for(1)
        await settled(adb, "emails")
    assert {s.queue for s in batches.seen} == {"emails"}


async def test_one_handler_consumes_two_queues_and_sees_which_one(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """One handler registered for queues a and b receives batches from both, each with the right batch.queue."""
    ids_a = await make_queue(adb, "a", 2)
    ids_b = await make_queue(adb, "b", 3)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer(["a", "b"], max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    assert worker.queues == ["a", "b"]
    async with serving(worker):
        await wait_until(lambda: len(batches.deliveries()) >= 5)
        await settled(adb, "a")
        await settled(adb, "b")
    by_queue: dict[str, list[str]] = {}
    for seen in batches.seen:
        by_queue.setdefault(seen.queue, []).extend(seen.ids)
    assert {q: sorted(i) for q, i in by_queue.items()} == {"a": sorted(ids_a), "b": sorted(ids_b)}


# --- 2. implicit ack / retry ---------------------------------------------------------------


async def test_a_handler_that_returns_acks_its_batch(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """When the handler returns, every message is acked: not redelivered, backlog 0, nothing retried."""
    ids = await make_queue(adb, "q", 3)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await batches.wait_for(1)
        metrics = await settled(adb, "q")
    assert batches.deliveries() == [(i, 1) for i in ids]
    assert metrics.retried == 0
    assert metrics.dead_lettered == 0
    for message_id in ids:
        assert f"message {message_id} acked" in debug_of(logs)


async def test_a_handler_that_raises_gets_every_message_back_with_attempts_2(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """When the handler raises, every message of the batch is retried and comes back with attempts == 2."""
    ids = await make_queue(adb, "q", 3)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if 1 in seen.attempts:
            raise RuntimeError("failing on purpose")

    async with serving(worker):
        await wait_until(lambda: len(batches.deliveries()) >= 6)
        metrics = await settled(adb, "q")
    assert batches.deliveries()[:3] == [(i, 1) for i in ids]
    assert sorted(batches.deliveries()[3:]) == sorted((i, 2) for i in ids)
    assert metrics.retried == 3
    for message_id in ids:
        assert f"message {message_id} retried" in debug_of(logs)


# --- 3. explicit ack survives a throw -------------------------------------------------------


async def test_an_explicit_ack_survives_a_throw(adb: kvqueue.AsyncDatabase) -> None:
    """Acking m1 and then raising redelivers only the other messages."""
    ids = await make_queue(adb, "q", 4)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if 1 in seen.attempts:
            batch.messages[0].ack()
            raise RuntimeError("failing after one ack")

    async with serving(worker):
        await wait_until(lambda: len(batches.deliveries()) >= 4)
        metrics = await settled(adb, "q")
    assert batches.seen[0].ids == ids
    redelivered = batches.deliveries()[4:]
    assert sorted(redelivered) == sorted((i, 2) for i in ids[1:])
    assert metrics.retried == 3


# --- 4. ack / retry precedence ------------------------------------------------------------------


def _ack_then_retry(b: kvqueue.MessageBatch) -> None:
    b.messages[0].ack()
    b.messages[0].retry()


def _retry_then_ack(b: kvqueue.MessageBatch) -> None:
    b.messages[0].retry()
    b.messages[0].ack()


def _ack_all_then_ack(b: kvqueue.MessageBatch) -> None:
    b.ack_all()
    b.messages[0].ack()


def _ack_all_then_retry(b: kvqueue.MessageBatch) -> None:
    b.ack_all()
    b.messages[0].retry()


def _retry_all_then_ack(b: kvqueue.MessageBatch) -> None:
    b.retry_all()
    b.messages[0].ack()


def _retry_all_then_ack_all(b: kvqueue.MessageBatch) -> None:
    b.retry_all()
    b.ack_all()


def _ack_all_then_retry_all(b: kvqueue.MessageBatch) -> None:
    b.ack_all()
    b.retry_all()


def _ack_then_retry_all(b: kvqueue.MessageBatch) -> None:
    b.messages[0].ack()
    b.retry_all()


def _retry_then_ack_all(b: kvqueue.MessageBatch) -> None:
    b.messages[0].retry()
    b.ack_all()


# (calls on the first delivery, indexes of the messages retried, words of the warning or None)
PRECEDENCE: dict[str, tuple[Callable[[kvqueue.MessageBatch], None], set[int], list[str] | None]] = {
    "m.ack-then-m.retry": (_ack_then_retry, set(), ["retry()", "{id}", "ack()"]),
    "m.retry-then-m.ack": (_retry_then_ack, {0}, ["ack()", "{id}", "retry()"]),
    "ack_all-then-m.ack": (_ack_all_then_ack, set(), None),
    "ack_all-then-m.retry": (_ack_all_then_retry, set(), ["retry()", "{id}", "ack_all()"]),
    "retry_all-then-m.ack": (_retry_all_then_ack, {0, 1, 2}, ["ack()", "{id}", "retry_all()"]),
    "retry_all-then-ack_all": (_retry_all_then_ack_all, {0, 1, 2}, ["ack_all()", "retry_all()"]),
    "ack_all-then-retry_all": (_ack_all_then_retry_all, set(), ["retry_all()", "ack_all()"]),
    "m.ack-then-retry_all": (_ack_then_retry_all, {1, 2}, None),
    "m.retry-then-ack_all": (_retry_then_ack_all, {0}, None),
}


@pytest.mark.parametrize("case", list(PRECEDENCE))
async def test_ack_retry_precedence(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture, case: str
) -> None:
    """Each row of Cloudflare's ack/retry precedence table settles the batch as documented: the messages retried come back (attempts 2), the others do not, and ignored calls warn."""
    act, retried, warning = PRECEDENCE[case]
    ids = await make_queue(adb, "q", 3)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if 1 in seen.attempts:
            act(batch)

    async with serving(worker):
        await batches.wait_for(1)
        metrics = await settled(adb, "q")
    assert batches.seen[0].ids == ids
    redelivered = batches.deliveries()[3:]
    assert sorted(redelivered) == sorted((ids[i], 2) for i in retried)
    assert metrics.retried == len(retried)
    assert metrics.dead_lettered == 0
    logged = warnings_of(logs)
    if warning is None:
        assert logged == []
    else:
        words = [w.format(id=ids[0]) for w in warning]
        assert any(all(w in message for w in words) for message in logged), logged


async def test_retry_all_then_a_message_retry_keeps_its_own_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    """After retry_all(delay_seconds=3), m.retry(delay_seconds=7) is recorded: the others come back after 3 s and m only after 7 s."""
    start = clock.now_ms()
    ids = await make_queue(fake_adb, "q", 3)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if 1 in seen.attempts:
            batch.retry_all(delay_seconds=3)
            batch.messages[0].retry(delay_seconds=7)

    async with serving(worker):
        await batches.wait_for(1)
        await asleep_until(clock, start + 3000)
        clock.advance(3000)
        await wait_until(lambda: len(batches.deliveries()) >= 5)
        await asleep_until(clock, start + 7000)
        assert sorted(batches.deliveries()[3:]) == sorted((i, 2) for i in ids[1:])
        clock.advance(3999)
        await asleep_until(clock, start + 7000)
        assert len(batches.deliveries()) == 5
        clock.advance(1)
        await wait_until(lambda: len(batches.deliveries()) >= 6)
        metrics = await settled(fake_adb, "q")
    assert [s.at_ms for s in batches.seen if ids[0] in s.ids] == [start, start + 7000]
    assert {s.at_ms for s in batches.seen if ids[1] in s.ids or ids[2] in s.ids} == {
        start,
        start + 3000,
    }
    assert metrics.retried == 3
    assert warnings_of(logs) == []


# --- 5. delays --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "delay_ms"),
    [("retry", 2000), ("retry_all", 3000)],
)
async def test_a_retry_delay_holds_the_message_back_exactly_that_long(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock, call: str, delay_ms: int
) -> None:
    """m.retry(delay_seconds=2) and retry_all(delay_seconds=3) bring the message back only once that many seconds have passed."""
    start = clock.now_ms()
    (message_id,) = await make_queue(fake_adb, "q", 1)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if seen.attempts == [1]:
            if call == "retry":
                batch.messages[0].retry(delay_seconds=delay_ms / 1000)
            else:
                batch.retry_all(delay_seconds=delay_ms / 1000)

    async with serving(worker):
        await batches.wait_for(1)
        await asleep_until(clock, start + delay_ms)
        clock.advance(delay_ms - 1)
        await asleep_until(clock, start + delay_ms)
        assert len(batches.seen) == 1
        clock.advance(1)
        await batches.wait_for(2)
        await settled(fake_adb, "q")
    assert batches.deliveries() == [(message_id, 1), (message_id, 2)]
    assert [s.at_ms for s in batches.seen] == [start, start + delay_ms]


@pytest.mark.parametrize("how", ["m.retry()", "retry_all()", "raise"])
async def test_the_consumer_retry_delay_applies_to_retries_without_a_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock, how: str
) -> None:
    """With retry_delay=4, a retry naming no delay and a handler exception both bring the message back after 4 s, not before."""
    start = clock.now_ms()
    (message_id,) = await make_queue(fake_adb, "q", 1)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_timeout=0, retry_delay=4)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if seen.attempts == [1]:
            if how == "m.retry()":
                batch.messages[0].retry()
            elif how == "retry_all()":
                batch.retry_all()
            else:
                raise RuntimeError("failing on purpose")

    async with serving(worker):
        await batches.wait_for(1)
        await asleep_until(clock, start + 4000)
        clock.advance(3999)
        await asleep_until(clock, start + 4000)
        assert len(batches.seen) == 1
        clock.advance(1)
        await batches.wait_for(2)
        await settled(fake_adb, "q")
    assert batches.deliveries() == [(message_id, 1), (message_id, 2)]
    assert [s.at_ms for s in batches.seen] == [start, start + 4000]


async def test_a_retry_with_delay_0_overrides_the_consumer_retry_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """With retry_delay=4, m.retry(delay_seconds=0) brings the message back at once."""
    start = clock.now_ms()
    (message_id,) = await make_queue(fake_adb, "q", 1)
    batches = Batches(clock)
    worker = kvqueue.Worker(fake_adb, name="w")

    @worker.consumer("q", max_batch_timeout=0, retry_delay=4)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if seen.attempts == [1]:
            batch.messages[0].retry(delay_seconds=0)

    async with serving(worker):
        await batches.wait_for(2)
        await settled(fake_adb, "q")
    assert batches.deliveries() == [(message_id, 1), (message_id, 2)]
    assert [s.at_ms for s in batches.seen] == [start, start]


# --- 6. max_retries and dead-lettering -----------------------------------------------------------


async def test_max_retries_3_delivers_4_times_then_moves_the_message_to_the_dlq(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """With max_retries=3 a failing message is delivered exactly 4 times (attempts 1..4), then moves to the dead-letter queue, created on the way, with its id, timestamp and body, as attempt 1."""
    await adb.queues.create("q")
    sent = await adb.queue("q").send({"to": "ada@example.com"})
    (message_id,) = sent.message_ids
    (original,) = await adb.queues.peek("q")
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0, max_retries=3, dead_letter_queue="q-dlq")
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)
        raise RuntimeError("always failing")

    async with serving(worker):
        metrics = await wait_until_async(adb.queue("q").metrics, lambda m: m.dead_lettered == 1)
    assert batches.deliveries() == [(message_id, n) for n in (1, 2, 3, 4)]
    assert metrics.backlog_count == 0
    assert metrics.retried == 3
    assert [q.name for q in await adb.queues.list()] == ["q", "q-dlq"]
    pulled = await adb.queue("q-dlq").pull()
    assert [(m.id, m.body, m.attempts) for m in pulled.messages] == [
        (message_id, {"to": "ada@example.com"}, 1)
    ]
    assert pulled.messages[0].timestamp_ms == original.timestamp_ms
    assert f"message {message_id} dead-lettered" in debug_of(logs)


async def test_without_a_dlq_a_message_past_its_retries_is_deleted(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Without a dead-letter queue, a message that used up max_retries=3 is deleted after 4 deliveries (backlog 0, dead_lettered 1)."""
    (message_id,) = await make_queue(adb, "q", 1)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0, max_retries=3)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)
        raise RuntimeError("always failing")

    async with serving(worker):
        metrics = await wait_until_async(adb.queue("q").metrics, lambda m: m.dead_lettered == 1)
    assert batches.deliveries() == [(message_id, n) for n in (1, 2, 3, 4)]
    assert metrics.backlog_count == 0
    assert [q.name for q in await adb.queues.list()] == ["q"]


async def test_max_retries_0_delivers_once(adb: kvqueue.AsyncDatabase) -> None:
    """With max_retries=0 a failing message is delivered once and then dead-lettered."""
    (message_id,) = await make_queue(adb, "q", 1)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0, max_retries=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)
        raise RuntimeError("always failing")

    async with serving(worker):
        metrics = await wait_until_async(adb.queue("q").metrics, lambda m: m.dead_lettered == 1)
    assert batches.deliveries() == [(message_id, 1)]
    assert metrics.backlog_count == 0
    assert metrics.retried == 0


# --- 7. sync and async handlers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_sync_and_async_handlers_both_consume(adb: kvqueue.AsyncDatabase, kind: str) -> None:
    """A plain def handler and an async def handler both receive the batch and ack it by returning."""
    ids = await make_queue(adb, "q", 2)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    def sync_handler(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async def async_handler(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    worker.consumer("q", max_batch_timeout=0)(sync_handler if kind == "sync" else async_handler)
    async with serving(worker):
        await batches.wait_for(1)
        metrics = await settled(adb, "q")
    assert batches.deliveries() == [(i, 1) for i in ids]
    assert batches.seen[0].bodies == [0, 1]
    assert metrics.retried == 0


async def test_a_sync_handler_runs_off_the_event_loop_thread(adb: kvqueue.AsyncDatabase) -> None:
    """A plain def handler runs on a thread other than the event loop's."""
    await make_queue(adb, "q", 1)
    threads: list[int] = []
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    def handle(batch: kvqueue.MessageBatch) -> None:
        threads.append(threading.get_ident())

    async with serving(worker):
        await wait_until(lambda: len(threads) == 1)
        await settled(adb, "q")
    assert threads[0] != threading.get_ident()


async def test_a_sync_handler_exception_retries_like_an_async_one(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """A plain def handler that raises gets its messages back with attempts == 2; one it acked first stays acked."""
    ids = await make_queue(adb, "q", 2)
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    def handle(batch: kvqueue.MessageBatch) -> None:
        seen = batches.record(batch)
        if 1 in seen.attempts:
            batch.messages[0].ack()
            raise RuntimeError("failing on purpose")

    async with serving(worker):
        await wait_until(lambda: len(batches.deliveries()) >= 3)
        metrics = await settled(adb, "q")
    assert batches.deliveries() == [(ids[0], 1), (ids[1], 1), (ids[1], 2)]
    assert metrics.retried == 1


def test_worker_run_consumes_a_sync_database_until_stopped(db: kvqueue.Database) -> None:
    """Worker(db).run() on a sync Database delivers batches to a plain handler, and returns after stop() once the batch is settled."""
    db.queues.create("q")
    db.queue("q").send("hello there", content_type="text")
    got: list[Any] = []
    delivered = threading.Event()
    worker = kvqueue.Worker(db, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    def handle(batch: kvqueue.MessageBatch) -> None:
        got.extend((m.body, m.content_type, m.attempts) for m in batch.messages)
        delivered.set()

    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert delivered.wait(10)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert got == [("hello there", "text", 1)]
    assert db.queue("q").metrics().backlog_count == 0


# --- 8. concurrency ----------------------------------------------------------------------------


@asynccontextmanager
async def second_database(
    url: str, adb: kvqueue.AsyncDatabase
) -> AsyncIterator[kvqueue.AsyncDatabase]:
    """Another AsyncDatabase on the same store when the backend is a file (a second process
    would do the same); the same one for ``:memory:``, which cannot be opened twice."""
    if url == ":memory:":
        yield adb
        return
    other = await kvqueue.open_async(url)
    try:
        yield other
    finally:
        await other.close()


async def test_max_concurrency_1_never_runs_two_batches_at_once_across_workers(
    adb: kvqueue.AsyncDatabase, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With max_concurrency=1, two Workers of one name on one database never run two handler invocations at once while a backlog exists."""
    ids = await make_queue(adb, "q", 3)
    rounds = 3
    active = 0
    most = 0
    gates: list[asyncio.Event] = []
    delivered: list[str] = []

    async def handle(batch: kvqueue.MessageBatch) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        delivered.extend(m.id for m in batch.messages)
        gate = asyncio.Event()
        gates.append(gate)
        if len(gates) > rounds:
            gate.set()
        try:
            await gate.wait()
        finally:
            active -= 1

    async with second_database(url, adb) as other:
        spy = poll_counter(monkeypatch, adb, other)
        workers = [kvqueue.Worker(adb, name="w"), kvqueue.Worker(other, name="w")]
        for worker in workers:
            worker.consumer("q", max_batch_size=1, max_batch_timeout=0, max_concurrency=1)(handle)
        async with serving(workers[0]), serving(workers[1]):
            try:
                for n in range(1, rounds + 1):
                    await wait_until(lambda n=n: len(gates) == n)
                    # A new message wakes the idle worker, which must be refused a batch.
                    refused = spy.empty_leases
                    sent = await adb.queue("q").send(f"extra {n}")
                    ids.extend(sent.message_ids)
                    await wait_until(lambda refused=refused: spy.empty_leases > refused)
                    assert active == 1
                    gates[-1].set()
                await settled(adb, "q")
            finally:
                for gate in gates:
                    gate.set()
    assert most == 1
    assert sorted(delivered) == sorted(ids)


async def test_unset_max_concurrency_runs_several_batches_at_once_while_a_backlog_exists(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Without max_concurrency, a backlog of 20 single-message batches is handled with more than one batch in flight at once."""
    ids = await make_queue(adb, "q", 20)
    active = 0
    most = 0
    two_in_flight = asyncio.Event()
    delivered: list[str] = []
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_size=1, max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        delivered.extend(m.id for m in batch.messages)
        if active >= 2:
            two_in_flight.set()
        try:
            await two_in_flight.wait()
        finally:
            active -= 1

    async with serving(worker):
        await wait_until(lambda: len(delivered) >= 20)
        metrics = await settled(adb, "q")
    assert most >= 2
    assert sorted(delivered) == sorted(ids)
    assert metrics.retried == 0


async def test_a_deep_backlog_is_leased_a_few_batches_at_a_time(
    adb: kvqueue.AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scaled up on a backlog of 3,000 messages, a worker taking batches of 100 takes at most
    8 batches (800 messages) per lease, and through a server at most 100 per pull (the most
    a pull may ask for): a lease of thousands would hold the store's writer, and memory, for
    all of them."""
    ids = await make_queue(adb, "q")
    for start in range(0, 3_000, 100):
        sent = await adb.queue("q").send_batch(list(range(start, start + 100)))
        ids += sent.message_ids
    spy = poll_counter(monkeypatch, adb)
    delivered: list[str] = []
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_size=100, max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        delivered.extend(m.id for m in batch.messages)

    async with serving(worker):
        await wait_until(lambda: len(delivered) >= 3_000)
        await settled(adb, "q")
    assert sorted(delivered) == sorted(ids)
    most = 100 if adb.server is not None else 800
    assert max(spy.lease_sizes()) <= most, spy.lease_sizes()


async def test_a_worker_waiting_for_a_concurrency_slot_does_not_busy_poll_the_store(
    adb: kvqueue.AsyncDatabase, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another worker holds the only max_concurrency slot, the waiting worker waits for a change instead of leasing again and again."""
    await make_queue(adb, "q", 3)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def handle(batch: kvqueue.MessageBatch) -> None:
        entered.set()
        await release.wait()

    async with second_database(url, adb) as other:
        spy = poll_counter(monkeypatch, adb, other)
        workers = [kvqueue.Worker(adb, name="w"), kvqueue.Worker(other, name="w")]
        for worker in workers:
            worker.consumer("q", max_batch_size=1, max_batch_timeout=0, max_concurrency=1)(handle)
        async with serving(workers[0]), serving(workers[1]):
            try:
                await entered.wait()
                await wait_until(lambda: spy.empty_leases >= 1)
                polls = await spy.round_trips_in_window()
            finally:
                release.set()
            await settled(adb, "q")
    assert polls <= spy.budget(), f"{polls} round trips in {spy.window_s:.2f} s"


# --- 9. lease renewal --------------------------------------------------------------------------


async def test_a_slow_handler_keeps_its_batch_past_the_lease(
    url: str, logs: pytest.LogCaptureFixture
) -> None:
    """A handler running about 1 s, over three times the 300 ms lease, is not given its batch a second time meanwhile: it is delivered once, with attempts 1."""
    adb = await kvqueue.open_async(url, lease_ms=300)
    try:
        ids = await make_queue(adb, "q", 2)
        batches = Batches()
        release = asyncio.Event()
        entered = asyncio.Event()
        worker = kvqueue.Worker(adb, name="w")

        @worker.consumer("q", max_batch_timeout=0)
        async def handle(batch: kvqueue.MessageBatch) -> None:
            batches.record(batch)
            entered.set()
            await release.wait()

        async with serving(worker):
            await entered.wait()
            asyncio.get_running_loop().call_later(1.0, release.set)
            await release.wait()
            metrics = await settled(adb, "q")
        assert batches.deliveries() == [(i, 1) for i in ids]
        assert metrics.retried == 0
        assert not any("lost the lease" in m for m in warnings_of(logs))
    finally:
        await adb.close()


# --- 10. one consumer per queue -------------------------------------------------------------------


async def test_a_worker_cannot_consume_a_queue_with_a_pull_consumer(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Starting a Worker on a queue whose consumer is http_pull raises ConsumerExists."""
    await make_queue(adb, "q")
    await adb.queues.add_consumer("q", "http_pull")
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q")
    async def handle(batch: kvqueue.MessageBatch) -> None:
        raise AssertionError("never called")

    with pytest.raises(kvqueue.ConsumerExists):
        await worker.serve()
    consumer = await adb.queues.get_consumer("q")
    assert consumer is not None
    assert consumer.type == "http_pull"


async def test_a_second_worker_of_another_name_cannot_consume_the_same_queue(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """While worker "one" consumes a queue, starting worker "two" on it raises ConsumerExists and "one" keeps consuming."""
    await make_queue(adb, "q")
    batches = Batches()
    first = kvqueue.Worker(adb, name="one")
    second = kvqueue.Worker(adb, name="two")

    @first.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    @second.consumer("q", max_batch_timeout=0)
    async def handle_too(batch: kvqueue.MessageBatch) -> None:
        raise AssertionError("never called")

    async with serving(first):
        await wait_until_async(lambda: adb.queues.get_consumer("q"), lambda c: c is not None)
        with pytest.raises(kvqueue.ConsumerExists):
            await second.serve()
        (message_id,) = (await adb.queue("q").send("still mine")).message_ids
        await batches.wait_for(1)
        await settled(adb, "q")
    assert batches.deliveries() == [(message_id, 1)]
    consumer = await adb.queues.get_consumer("q")
    assert consumer is not None
    assert consumer.script_name == "one"


async def test_removing_the_consumer_stops_a_running_worker_and_lets_pulls_in(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """After remove_consumer, a running worker logs "not consuming", takes no more batches from the queue, and pulls get its messages."""
    await make_queue(adb, "q")
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        (first,) = (await adb.queue("q").send("before")).message_ids
        await batches.wait_for(1)
        await settled(adb, "q")
        await adb.queues.remove_consumer("q")
        # Any commit wakes an idle worker to look again; the KV write stands for any traffic.
        await wait_until_async(
            lambda: adb.set(("poke",), 1),
            lambda _: any("not consuming" in m for m in warnings_of(logs)),
        )
        (second,) = (await adb.queue("q").send("after")).message_ids
        pulled = await adb.queue("q").pull()
        assert [(m.id, m.body) for m in pulled.messages] == [(second, "after")]
        await adb.queue("q").ack(acks=[m.lease_id for m in pulled.messages])
        await settled(adb, "q")
    assert batches.deliveries() == [(first, 1)]


async def test_a_paused_queue_delivers_nothing_until_resumed(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """A worker on a paused queue delivers nothing (and logs "not consuming") until the queue is resumed; then the backlog is delivered."""
    ids = await make_queue(adb, "q", 2)
    await adb.queues.pause("q")
    batches = Batches()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)

    async with serving(worker):
        await wait_until(lambda: any("paused" in m for m in warnings_of(logs)))
        assert batches.seen == []
        assert (await adb.queue("q").metrics()).in_flight == 0
        await adb.queues.resume("q")
        await wait_until(lambda: len(batches.deliveries()) >= 2)
        await settled(adb, "q")
    assert sorted(batches.deliveries()) == sorted((i, 1) for i in ids)


# Well under the worker's idle recheck (5 s): a change that only the recheck finds fails.
PROMPT_S = 2.0


async def test_a_pause_from_another_process_stops_a_running_worker(
    shared_url: str, logs: pytest.LogCaptureFixture
) -> None:
    """A worker that is consuming does not re-read its queue's record before every
    batch; a pause committed by another process (another handle on the same store)
    still reaches it: it takes nothing more until the queue is resumed. So does
    removing its consumer. Each reaches it at once, not at its idle recheck (5 s)."""
    batches = Batches()
    async with await kvqueue.open_async(shared_url) as adb:
        (first,) = await make_queue(adb, "q", 1)
        worker = kvqueue.Worker(adb, name="w")

        @worker.consumer("q", max_batch_timeout=0)
        async def handle(batch: kvqueue.MessageBatch) -> None:
            batches.record(batch)

        async with serving(worker):
            await wait_until(lambda: len(batches.seen) == 1)
            async with await kvqueue.open_async(shared_url) as other:
                await other.queues.pause("q")
                await wait_until(lambda: any("paused" in m for m in warnings_of(logs)), PROMPT_S)
                (second,) = (await other.queue("q").send("during")).message_ids
                await other.queues.resume("q")
                await wait_until(lambda: len(batches.seen) == 2, PROMPT_S)
                await settled(adb, "q")
                await other.queues.remove_consumer("q")
                await wait_until(
                    lambda: any("consumer was removed" in m for m in warnings_of(logs)), PROMPT_S
                )
                await other.queue("q").send("after")
                pulled = await other.queue("q").pull()
                assert [m.body for m in pulled.messages] == ["after"]
    assert batches.deliveries() == [(first, 1), (second, 1)]


async def test_a_paused_queue_with_a_backlog_does_not_make_the_worker_busy_poll_the_store(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker on a paused queue that holds messages waits for a change instead of re-reading the queue again and again."""
    await make_queue(adb, "q", 2)
    await adb.queues.pause("q")
    spy = poll_counter(monkeypatch, adb)
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        pass

    async with serving(worker):
        await wait_until(lambda: any("paused" in m for m in warnings_of(logs)))
        polls = await spy.round_trips_in_window()
    assert polls <= spy.budget(), f"{polls} round trips in {spy.window_s:.2f} s"


async def test_a_worker_for_a_missing_queue_raises_queue_not_found(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Starting a Worker on a queue that does not exist raises QueueNotFound."""
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("nope")
    async def handle(batch: kvqueue.MessageBatch) -> None:
        raise AssertionError("never called")

    with pytest.raises(kvqueue.QueueNotFound):
        await worker.serve()


# --- 11. graceful stop ----------------------------------------------------------------------------


async def test_stop_lets_the_running_batch_finish_and_settle(
    adb: kvqueue.AsyncDatabase, logs: pytest.LogCaptureFixture
) -> None:
    """stop() during a running batch takes no new batch, lets the running one finish and be acked, and then serve() returns."""
    ids = await make_queue(adb, "q", 2)
    batches = Batches()
    entered = asyncio.Event()
    release = asyncio.Event()
    worker = kvqueue.Worker(adb, name="w")

    @worker.consumer("q", max_batch_size=1, max_batch_timeout=0, max_concurrency=1)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        batches.record(batch)
        entered.set()
        await release.wait()

    task = asyncio.create_task(worker.serve())
    try:
        await entered.wait()
        worker.stop()
        assert not task.done()
    finally:
        release.set()
    await asyncio.wait_for(task, 10)
    assert batches.deliveries() == [(ids[0], 1)]
    assert f"message {ids[0]} acked" in debug_of(logs)
    metrics = await adb.queue("q").metrics()
    assert (metrics.backlog_count, metrics.in_flight, metrics.retried) == (1, 0, 0)
    assert [(m.id, m.attempts) for m in await adb.queues.peek("q")] == [(ids[1], 0)]

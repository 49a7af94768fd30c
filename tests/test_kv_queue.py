"""KV queue conformance (SPEC §4, deno-kv.md §8 Q1-Q20): runs against every backend."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import kvqueue
from tests.helpers import Recorder, asleep_until, wait_until, wait_until_async


async def _listening(
    adb: kvqueue.AsyncDatabase, handler: Callable[[Any], Any], **options: Any
) -> asyncio.Task[None]:
    task = asyncio.create_task(adb.listen_queue(handler, **options))
    await asyncio.sleep(0)
    return task


@pytest.fixture
async def listen(
    adb: kvqueue.AsyncDatabase,
) -> AsyncIterator[Callable[..., Awaitable[asyncio.Task[None]]]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(handler: Callable[[Any], Any], **options: Any) -> asyncio.Task[None]:
        task = await _listening(adb, handler, **options)
        tasks.append(task)
        return task

    yield start
    await adb.close()
    for task in tasks:
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_q1_enqueued_value_is_delivered_once(
    adb: kvqueue.AsyncDatabase, listen: Any, kind: str
) -> None:
    """A message is delivered exactly once with its payload intact, to sync and async handlers."""
    got: list[Any] = []

    def sync_handler(value: Any) -> None:
        got.append(value)

    async def async_handler(value: Any) -> None:
        got.append(value)

    result = await adb.enqueue({"forUser": "alovelace", "body": "You've got mail!", "n": [1, 2.5]})
    assert result.ok
    assert result.versionstamp
    assert len(result.versionstamp) == 20
    await listen(sync_handler if kind == "sync" else async_handler)
    await wait_until(lambda: len(got) == 1)
    assert got == [{"forUser": "alovelace", "body": "You've got mail!", "n": [1, 2.5]}]
    await adb.enqueue("second")
    await wait_until(lambda: len(got) == 2)
    assert got[1] == "second"


async def test_q3_enqueue_commits_with_the_atomic_writes(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """An enqueue inside a passing atomic happens together with its set (Q3)."""
    recorder = Recorder()
    result = (
        await adb.atomic()
        .check(kvqueue.AtomicCheck(("k",), None))
        .set(("k",), 1)
        .enqueue("m")
        .commit()
    )
    assert result.ok
    assert (await adb.get(("k",))).versionstamp == result.versionstamp
    await listen(recorder)
    await recorder.wait_for(1)
    assert recorder.values == ["m"]


async def test_q4_delay_holds_a_message_until_due(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A delayed message is not delivered a millisecond early, and is delivered when due (Q4)."""
    recorder = Recorder(clock)
    start = clock.now_ms()
    await fake_adb.enqueue("later", delay=1000)
    task = await _listening(fake_adb, recorder)
    await asleep_until(clock, start + 1000)
    clock.advance(999)
    await asleep_until(clock, start + 1000)
    assert recorder.calls == []
    clock.advance(1)
    await recorder.wait_for(1)
    assert recorder.calls == [("later", start + 1000)]
    await fake_adb.close()
    await task


async def _run_failing(
    adb: kvqueue.AsyncDatabase,
    clock: kvqueue.FakeClock,
    schedule: list[int] | None,
    expected_gaps: list[int],
) -> Recorder:
    recorder = Recorder(clock, fail=lambda value, attempt: True)
    dead = ("failed", "m")
    await adb.enqueue(
        "m", keys_if_undelivered=[dead, ("failed", "copy")], backoff_schedule=schedule
    )
    # One handler at a time: with more, the listener also sleeps until the
    # in-flight lease runs out (30 s by default), a deadline the 30 s gap shares,
    # and the clock could move before the retry is even committed.
    task = await _listening(adb, recorder, concurrency=1)
    await recorder.wait_for(1)
    for gap in expected_gaps:
        last = recorder.calls[-1][1]
        await asleep_until(clock, last + gap)
        clock.advance(gap)
        await recorder.wait_for(len(recorder.calls) + 1)
    entry = await _wait_for_key(adb, dead)
    assert entry.value == "m"
    assert (await adb.get(("failed", "copy"))).value == "m"
    times = [t for _, t in recorder.calls]
    assert [b - a for a, b in itertools.pairwise(times)] == expected_gaps
    await adb.close()
    await task
    return recorder


async def _wait_for_key(adb: kvqueue.AsyncDatabase, key: tuple[Any, ...]) -> kvqueue.Entry:
    for _ in range(10_000):
        entry = await adb.get(key)
        if entry.value is not None:
            return entry
        await asyncio.sleep(0.001)
    raise AssertionError(f"{key} was never written")


async def test_q6_default_backoff_gives_six_attempts_then_dead_letter(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """Always failing with no schedule: 6 attempts at 100/1000/5000/30000/60000 ms gaps, then the keys (Q6)."""
    recorder = await _run_failing(fake_adb, clock, None, [100, 1000, 5000, 30000, 60000])
    assert len(recorder.calls) == 6


async def test_q7_custom_backoff(fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock) -> None:
    """backoff_schedule [50, 100, 200]: 4 attempts, then every undelivered key holds the payload (Q7)."""
    recorder = await _run_failing(fake_adb, clock, [50, 100, 200], [50, 100, 200])
    assert len(recorder.calls) == 4


async def test_q8_empty_schedule_means_one_attempt(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """backoff_schedule [] gives exactly one attempt and the dead letter at once (Q8)."""
    recorder = await _run_failing(fake_adb, clock, [], [])
    assert len(recorder.calls) == 1


async def test_q9_q20_retry_then_success_writes_no_dead_letter(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """An async handler that raises is retried; once it succeeds no undelivered key is written (Q9, Q20)."""
    calls: list[int] = []

    async def flaky(value: Any) -> None:
        calls.append(clock.now_ms())
        if len(calls) < 3:
            raise ValueError("not yet")

    start = clock.now_ms()
    await fake_adb.enqueue("m", keys_if_undelivered=[("dl",)], backoff_schedule=[10, 20])
    task = await _listening(fake_adb, flaky)
    await wait_until(lambda: len(calls) == 1)
    await asleep_until(clock, start + 10)
    clock.advance(10)
    await wait_until(lambda: len(calls) == 2)
    await asleep_until(clock, start + 30)
    clock.advance(20)
    await wait_until(lambda: len(calls) == 3)
    await fake_adb.close()
    await task
    assert calls == [start, start + 10, start + 30]


async def test_q9_success_leaves_no_undelivered_key(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """A handled message never writes its keys_if_undelivered."""
    recorder = Recorder()
    await adb.enqueue("ok", keys_if_undelivered=[("dl",)])
    await adb.enqueue("marker")
    await listen(recorder, concurrency=1)
    await recorder.wait_for(2)
    assert (await adb.get(("dl",))).value is None


async def test_q15_one_listener_per_database(adb: kvqueue.AsyncDatabase, listen: Any) -> None:
    """A second listen_queue on the same database is refused instead of silently splitting messages."""
    await listen(Recorder())
    with pytest.raises(kvqueue.ListenerAlreadyRunning):
        await adb.listen_queue(Recorder())


async def test_q16_close_ends_listen_and_later_listen_fails(url: str) -> None:
    """close() makes a pending listen_queue return; listen_queue after close raises DatabaseClosed (Q16)."""
    database = await kvqueue.open_async(url)
    task = await _listening(database, Recorder())
    await database.close()
    await asyncio.wait_for(task, 5)
    with pytest.raises(kvqueue.DatabaseClosed):
        await database.listen_queue(Recorder())


async def test_q17_q19_backlog_drains_completely_without_duplicates(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """500 messages from one atomic plus 50 single enqueues, all made before listening, arrive once each."""
    op = adb.atomic()
    for i in range(500):
        op.enqueue(i)
    await op.commit()
    for i in range(500, 550):
        await adb.enqueue(i)
    recorder = Recorder()
    await listen(recorder, concurrency=20)
    await recorder.wait_for(550)
    assert sorted(recorder.values) == list(range(550))


async def test_concurrency_is_bounded_and_reached(adb: kvqueue.AsyncDatabase, listen: Any) -> None:
    """At most `concurrency` sync handlers run at once, and that many do run in parallel."""
    running = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def slow(value: Any) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(10)
        with lock:
            running -= 1

    for i in range(10):
        await adb.enqueue(i)
    await listen(slow, concurrency=3)
    await wait_until(lambda: peak == 3)
    release.set()
    assert peak == 3


async def test_async_handlers_that_wait_run_at_once_up_to_concurrency(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """Coroutine handlers that wait let the next ones start, up to `concurrency` at once
    and never more; each message is handled once."""
    running: set[int] = set()
    peak = 0
    done: list[int] = []
    release = asyncio.Event()

    async def waiting(value: int) -> None:
        nonlocal peak
        running.add(value)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(value)
        done.append(value)

    op = adb.atomic()
    for i in range(10):
        op.enqueue(i)
    await op.commit()
    await listen(waiting, concurrency=4)
    try:
        await wait_until(lambda: len(running) == 4)
    finally:
        release.set()
    await wait_until(lambda: len(done) == 10)
    assert peak == 4
    assert sorted(done) == list(range(10))


async def test_a_timeout_inside_a_handler_ends_that_handler_only(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """`asyncio.timeout` in a handler times out the handler's own wait: the handler sees
    TimeoutError, the listener goes on delivering, and handlers beside it are untouched."""
    never = asyncio.Event()
    release = asyncio.Event()
    outcomes: list[str] = []

    async def handler(value: str) -> None:
        if value == "times out":
            try:
                async with asyncio.timeout(0.01):
                    await never.wait()
            except TimeoutError:
                outcomes.append("timed out")
            return
        await release.wait()
        outcomes.append(value)

    await listen(handler, concurrency=4)
    await adb.enqueue("waits")
    await adb.enqueue("times out")
    try:
        await wait_until(lambda: outcomes == ["timed out"])
    finally:
        release.set()
    await wait_until(lambda: len(outcomes) == 2)
    await adb.enqueue("after")
    await wait_until(lambda: len(outcomes) == 3)
    assert outcomes == ["timed out", "waits", "after"]


async def test_a_handler_raising_cancelled_error_does_not_stop_the_listener(
    adb: kvqueue.AsyncDatabase, listen: Any
) -> None:
    """A handler that raises CancelledError of its own accord ends only its own delivery."""
    got: list[str] = []

    async def handler(value: str) -> None:
        if value == "cancel":
            raise asyncio.CancelledError
        got.append(value)

    task = await listen(handler, concurrency=2)
    await adb.enqueue("cancel")
    await adb.enqueue("next")
    await wait_until(lambda: got == ["next"])
    assert not task.done()


async def test_handler_starts_before_the_next_lease_is_asked_for(
    adb: kvqueue.AsyncDatabase, listen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivered message's handler runs before the listener asks the store for more:
    on a remote or PostgreSQL store that next lease is a round trip the handler would
    otherwise wait behind."""
    events: list[str] = []
    lease = adb.storage.lease

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        events.append("lease")
        taken = await lease(*args, **kwargs)
        if taken:
            events.append("taken")
        return taken

    monkeypatch.setattr(adb.storage, "lease", recorded)
    got = asyncio.Event()

    async def handler(value: Any) -> None:
        events.append("handler")
        got.set()

    await listen(handler, concurrency=4)
    await adb.enqueue("hello")
    await asyncio.wait_for(got.wait(), 10)
    taken = events.index("taken")
    assert events[taken + 1] == "handler", events


async def test_the_next_lease_goes_out_before_the_last_ack_has_committed(
    adb: kvqueue.AsyncDatabase, listen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one handler at a time, the next message is asked for once the first is handled,
    while its ack is still committing (a SQLite writer then commits both together); both
    acks land and each message is handled once."""
    lease, commit = adb.storage.lease, adb.storage.commit
    asked_again = asyncio.Event()
    settling = asyncio.Event()

    async def recorded_lease(*args: Any, **kwargs: Any) -> Any:
        if settling.is_set():
            asked_again.set()
        return await lease(*args, **kwargs)

    held: list[bool] = []

    async def held_commit(write: Any) -> Any:
        if write.settlements and not settling.is_set():
            settling.set()
            # Held until the next lease is asked for: at most 2 s, after which the
            # test fails rather than hangs.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asked_again.wait(), 2)
            held.append(asked_again.is_set())
        return await commit(write)

    monkeypatch.setattr(adb.storage, "lease", recorded_lease)
    monkeypatch.setattr(adb.storage, "commit", held_commit)
    await adb.enqueue("first")
    await adb.enqueue("second")
    recorder = Recorder()
    await listen(recorder, concurrency=1)
    await recorder.wait_for(2)
    assert held == [True]
    assert sorted(recorder.values) == ["first", "second"]
    await wait_until_async(
        lambda: adb.queues.metrics(kvqueue.KV_QUEUE), lambda m: m.backlog_count == 0
    )


async def test_a_listener_ends_only_after_its_last_ack_has_committed(url: str) -> None:
    """Closed while its last ack is still committing, the listener waits for that commit:
    the message is gone when the database is opened again."""
    database = await kvqueue.open_async(url)
    commit = database.storage.commit
    settling = asyncio.Event()
    release = asyncio.Event()

    async def held_commit(write: Any) -> Any:
        if write.settlements:
            settling.set()
            await release.wait()
        return await commit(write)

    database.storage.commit = held_commit  # type: ignore[method-assign]
    await database.enqueue("last")
    listener = await _listening(database, Recorder())
    await asyncio.wait_for(settling.wait(), 10)
    closing = asyncio.create_task(database.close())
    done, _ = await asyncio.wait({listener}, timeout=0.5)
    assert not done
    release.set()
    await asyncio.wait_for(asyncio.gather(listener, closing), 10)
    async with await kvqueue.open_async(url) as again:
        assert (await again.queues.metrics(kvqueue.KV_QUEUE)).backlog_count == 0


async def test_a_settlement_that_fails_unexpectedly_leaves_the_message_to_its_lease(
    url: str,
) -> None:
    """An ack whose commit fails with an error the storage did not translate is not
    renewed for ever: its lease runs out and the message is delivered again; the
    listener goes on."""
    database = await kvqueue.open_async(url, lease_ms=300)
    commit = database.storage.commit
    failed: list[Any] = []

    async def failing_once(write: Any) -> Any:
        if write.settlements and not failed:
            failed.append(write)
            raise RuntimeError("the settling commit broke")
        return await commit(write)

    database.storage.commit = failing_once  # type: ignore[method-assign]
    recorder = Recorder()
    listener = await _listening(database, recorder)
    try:
        await database.enqueue("again")
        await recorder.wait_for(2)
        assert recorder.values == ["again", "again"]
        assert len(failed) == 1
        await wait_until_async(
            lambda: database.queues.metrics(kvqueue.KV_QUEUE), lambda m: m.backlog_count == 0
        )
    finally:
        await database.close()
        await asyncio.wait_for(listener, 10)


async def test_slow_handler_keeps_its_lease(tmp_path: Path) -> None:
    """A handler running far longer than the lease is not given its message again meanwhile (unlike Deno)."""
    path = str(tmp_path / "lease.db")
    first = await kvqueue.open_async(path, lease_ms=300)
    second = await kvqueue.open_async(path, lease_ms=300)
    seen: list[str] = []

    async def slow(value: Any) -> None:
        seen.append(f"first:{value}")
        await asyncio.sleep(1.5)

    def other(value: Any) -> None:
        seen.append(f"second:{value}")

    await first.enqueue("long job")
    t1 = await _listening(first, slow)
    await wait_until(lambda: len(seen) == 1)
    t2 = await _listening(second, other)
    await first.close()
    await t1
    await second.enqueue("probe")
    await wait_until(lambda: "second:probe" in seen)
    await second.close()
    await t2
    assert seen == ["first:long job", "second:probe"]


async def test_queue_full_rejects_enqueue_and_its_atomic(url: str) -> None:
    """Past the backlog limit enqueue raises QueueFull, alone or with its whole atomic undone."""
    database = await kvqueue.open_async(url, kv_queue_backlog=5)
    try:
        for i in range(5):
            await database.enqueue(i)
        with pytest.raises(kvqueue.QueueFull):
            await database.enqueue(5)
        with pytest.raises(kvqueue.QueueFull) as info:
            await database.atomic().set(("side",), 1).enqueue(5).commit()
        assert "5" in str(info.value)
        assert (await database.get(("side",))).value is None
        recorder = Recorder()
        task = await _listening(database, recorder)
        await recorder.wait_for(5)
        # Handled is not yet acked: room comes back once the acks commit.
        await wait_until_async(
            lambda: database.queues.metrics(kvqueue.KV_QUEUE), lambda m: m.backlog_count == 0
        )
        await database.enqueue("fits again")
        await recorder.wait_for(6)
        assert sorted(map(str, recorder.values)) == sorted([*map(str, range(5)), "fits again"])
    finally:
        await database.close()
    await task


def test_sync_listen_queue_closed_from_its_handler(url: str) -> None:
    """The sync API: listen_queue blocks, a sync handler can close the database, and listen returns."""
    database = kvqueue.open(url)
    got: list[Any] = []

    def handler(value: Any) -> None:
        got.append(value)
        if len(got) == 3:
            database.close()

    for value in ("a", "b", "c"):
        database.enqueue(value)
    database.listen_queue(handler, concurrency=1)
    assert sorted(got) == ["a", "b", "c"]
    with pytest.raises(kvqueue.DatabaseClosed):
        database.get(("x",))


def test_sync_listen_closed_from_another_thread(url: str) -> None:
    """close() from another thread ends a blocking listen_queue after in-flight handlers settle."""
    database = kvqueue.open(url)
    started = threading.Event()
    finished: list[Any] = []

    def handler(value: Any) -> None:
        started.set()
        threading.Event().wait(0.2)
        finished.append(value)

    database.enqueue("slow")
    closer = threading.Thread(target=lambda: (started.wait(5), database.close()))
    closer.start()
    database.listen_queue(handler)
    closer.join(5)
    assert finished == ["slow"]

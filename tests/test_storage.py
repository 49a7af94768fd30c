"""The storage boundary itself, on every backend: writes that commit together
(group commit) still succeed or fail one by one.

The writes go through the public API (``db.atomic()``), which every backend takes
the same way: a local storage gets them straight, a server through KV Connect
and commits them together just the same.
"""

from __future__ import annotations

import asyncio

import pytest

import kvqueue
from kvqueue import errors, model


async def test_concurrent_sends_past_a_backlog_limit_are_refused_one_by_one(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Twelve atomic sends at once into a queue that holds 5, plus one to a missing queue: exactly
    5 commit, each with its own versionstamp, 7 get QueueFull, the stray one QueueNotFound; the
    queue then holds those 5."""
    await adb.queues.create("small", max_backlog=5)
    sends = [adb.atomic().send("small", i) for i in range(12)]
    sends.append(adb.atomic().send("nowhere", "stray"))
    results = await asyncio.gather(*(op.commit() for op in sends), return_exceptions=True)
    landed = [r for r in results if isinstance(r, kvqueue.CommitResult)]
    assert len(landed) == 5
    assert all(r.ok for r in landed)
    assert len({r.versionstamp for r in landed}) == 5
    assert sum(isinstance(r, kvqueue.QueueFull) for r in results) == 7
    assert isinstance(results[-1], kvqueue.QueueNotFound)
    assert (await adb.queues.metrics("small")).backlog_count == 5
    bodies = [m.body for m in await adb.queues.peek("small", 100)]
    assert sorted(bodies) == [
        i for i, r in enumerate(results) if isinstance(r, kvqueue.CommitResult)
    ]


async def test_concurrent_sends_past_a_byte_limit_are_refused_one_by_one(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Six sends of 102-byte bodies at once into a queue that holds 350 bytes: three land,
    three get QueueFull naming the byte limit, and the queue then holds 306 bytes."""
    await adb.queues.create("sized", max_backlog_bytes=350)
    sends = [adb.atomic().send("sized", str(i) * 100) for i in range(6)]
    results = await asyncio.gather(*(op.commit() for op in sends), return_exceptions=True)
    landed = [r for r in results if isinstance(r, kvqueue.CommitResult)]
    refused = [r for r in results if isinstance(r, kvqueue.QueueFull)]
    assert len(landed) == 3
    assert len(refused) == 3
    assert all("350 bytes of undelivered messages" in str(r) for r in refused)
    metrics = await adb.queues.metrics("sized")
    assert (metrics.backlog_count, metrics.backlog_bytes) == (3, 306)


async def test_sends_committed_together_keep_their_own_delays(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """Among sends committed at once to a queue delaying delivery by a minute, one asking for
    no delay is deliverable now; the others, with none of their own, only after the minute."""
    await fake_adb.queues.create("later", delivery_delay=60)
    sends = [fake_adb.atomic().send("later", f"queued {i}") for i in range(3)]
    sends.insert(1, fake_adb.atomic().send("later", "now", delay_seconds=0))
    await asyncio.gather(*(op.commit() for op in sends))
    queue = fake_adb.queue("later")
    first = await queue.pull(batch_size=10)
    assert [m.body for m in first.messages] == ["now"]
    await queue.ack(acks=[m.lease_id for m in first.messages])
    clock.advance(60_000)
    later = await queue.pull(batch_size=10)
    assert sorted(m.body for m in later.messages) == ["queued 0", "queued 1", "queued 2"]


async def test_concurrent_sends_each_see_their_own_message_in_their_metrics(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Thirty sends at once, beside three messages in flight: each send's metrics count its
    own message and every send that returned before it was asked, the last ones all 33, and
    show the three in flight and the oldest message's time."""
    await adb.queues.create("busy")
    queue = adb.queue("busy")
    await queue.send_batch(["a", "b", "c"])
    leased = await queue.pull(batch_size=3, visibility_timeout_ms=60_000)
    assert len(leased.messages) == 3
    first = await queue.send("first")
    assert (first.metrics.backlog_count, first.metrics.in_flight) == (4, 3)
    results = await asyncio.gather(*(queue.send(i) for i in range(30)))
    counts = [r.metrics.backlog_count for r in results]
    assert all(5 <= count <= 34 for count in counts), counts
    assert max(counts) == 34
    assert all(r.metrics.in_flight == 3 for r in results)
    oldest = {r.metrics.oldest_message_timestamp_ms for r in results}
    assert oldest == {first.metrics.oldest_message_timestamp_ms}
    assert oldest != {0}
    after = await queue.send("after")
    assert after.metrics.backlog_count == 35


async def test_a_write_failing_part_way_fails_only_itself(adb: kvqueue.AsyncDatabase) -> None:
    """Among concurrent writes, the one whose sum meets a stored string fails with
    TypeMismatch after its set and send were applied: both are undone, and only it fails;
    the sends around it land."""
    await adb.queues.create("jobs")
    await adb.set(("text",), "not a number")
    writes = [
        adb.atomic().send("jobs", "a"),
        adb.atomic().set(("half",), 1).send("jobs", "bad").sum(("text",), 1),
        adb.atomic().send("jobs", "b"),
    ]
    results = await asyncio.gather(*(op.commit() for op in writes), return_exceptions=True)
    assert isinstance(results[0], kvqueue.CommitResult)
    assert results[0].ok
    assert isinstance(results[1], kvqueue.TypeMismatch)
    assert isinstance(results[2], kvqueue.CommitResult)
    assert results[2].ok
    assert (await adb.get(("half",))).versionstamp is None
    assert (await adb.get(("text",))).value == "not a number"
    assert sorted(m.body for m in await adb.queues.peek("jobs", 10)) == ["a", "b"]


@pytest.mark.parametrize("count", [1, 40])
async def test_versionstamps_rise_in_commit_order(adb: kvqueue.AsyncDatabase, count: int) -> None:
    """Sets committed at once each get their own versionstamp, and a later commit's is higher."""
    stamps = await asyncio.gather(*(adb.set(("k", i), i) for i in range(count)))
    later = await adb.set(("later",), 0)
    assert len({s.versionstamp for s in stamps}) == count
    assert all(later.versionstamp > s.versionstamp for s in stamps)


async def test_a_duplicate_message_id_among_batched_sends_fails_only_its_own_write(
    shared_url: str,
) -> None:
    """Concurrent sends share one INSERT; when the store refuses it (one reuses a stored
    message id, which no public call can choose), each is applied on its own: only that one
    fails, with StorageError, and the others land."""
    db = await kvqueue.open_async(shared_url)
    try:
        await db.queues.create("jobs")

        def send(message_id: str) -> model.AtomicWrite:
            enqueue = model.Enqueue("jobs", message_id, b"{}", "json", delay_ms=0)
            return model.AtomicWrite(enqueues=(enqueue,))

        await db.storage.commit(send("taken"))
        results = await asyncio.gather(
            *(db.storage.commit(send(i)) for i in ("a", "taken", "b")), return_exceptions=True
        )
        assert isinstance(results[0], model.Committed)
        assert isinstance(results[1], errors.StorageError)
        assert isinstance(results[2], model.Committed)
        stored = {m.message_id for m in await db.storage.peek("jobs", limit=10)}
        assert stored == {"taken", "a", "b"}
    finally:
        await db.close()

"""The storage boundary itself, on every backend: writes that commit together
(group commit) still succeed or fail one by one."""

from __future__ import annotations

import asyncio

import pytest

import kvqueue
from kvqueue import errors, model


def _send(queue: str, message_id: str) -> model.AtomicWrite:
    return model.AtomicWrite(
        enqueues=(model.Enqueue(queue, message_id, b"{}", "json", delay_ms=0),)
    )


async def _queue(adb: kvqueue.AsyncDatabase, name: str, max_backlog: int | None) -> None:
    settings = model.QueueSettings(max_backlog=max_backlog)
    await adb.storage.commit(
        model.AtomicWrite(queue_changes=(model.CreateQueue(name, f"id-{name}", settings),))
    )


@pytest.mark.remote_pending(
    "writes raw storage queue changes, which a server only takes through db.queues"
)
async def test_concurrent_sends_past_a_backlog_limit_are_refused_one_by_one(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Twelve sends at once into a queue that holds 5, plus one to a missing queue: exactly
    5 land, 7 get QueueFull, the stray one QueueNotFound, and the versionstamps all differ."""
    await _queue(adb, "small", 5)
    writes = [_send("small", f"m{i:02}") for i in range(12)] + [_send("nowhere", "stray")]
    results = await asyncio.gather(*(adb.storage.commit(w) for w in writes), return_exceptions=True)
    landed = [r for r in results if isinstance(r, model.Committed)]
    assert len(landed) == 5
    assert len({r.versionstamp for r in landed}) == 5
    assert sum(isinstance(r, errors.QueueFull) for r in results) == 7
    assert isinstance(results[-1], errors.QueueNotFound)
    stats = await adb.storage.stats("small")
    assert stats.backlog_count == 5
    assert len(await adb.storage.peek("small", limit=100)) == 5


@pytest.mark.remote_pending("a server gives every message sent over the wire a new id")
async def test_a_duplicate_message_id_fails_only_its_own_write(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Among concurrent sends, the one reusing a stored message id fails with StorageError;
    the others land."""
    await _queue(adb, "jobs", None)
    await adb.storage.commit(_send("jobs", "taken"))
    writes = [_send("jobs", "a"), _send("jobs", "taken"), _send("jobs", "b")]
    results = await asyncio.gather(*(adb.storage.commit(w) for w in writes), return_exceptions=True)
    assert isinstance(results[0], model.Committed)
    assert isinstance(results[1], errors.StorageError)
    assert isinstance(results[2], model.Committed)
    stored = {m.message_id for m in await adb.storage.peek("jobs", limit=10)}
    assert stored == {"taken", "a", "b"}


@pytest.mark.parametrize("count", [1, 40])
async def test_versionstamps_rise_in_commit_order(adb: kvqueue.AsyncDatabase, count: int) -> None:
    """Sets committed at once each get their own versionstamp, and a later commit's is higher."""
    stamps = await asyncio.gather(*(adb.set(("k", i), i) for i in range(count)))
    later = await adb.set(("later",), 0)
    assert len({s.versionstamp for s in stamps}) == count
    assert all(later.versionstamp > s.versionstamp for s in stamps)

"""kvqueue workloads that several scenarios (and child processes) run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kvqueue
from bench.core import PAYLOAD

BATCH = 100


async def pipeline(
    db: kvqueue.AsyncDatabase,
    name: str,
    n: int,
    *,
    create: bool = True,
    single: bool = False,
    seconds: float | None = None,
) -> float:
    """S1: ``send_batch(100)`` (or with ``single``, one awaited ``send`` per message) from
    one producer while a Worker in the same process takes batches of up to 100 and acks
    them; msgs/s until all n are acked. With ``seconds``, the producer stops early when
    that time is up (a cap for slow cases) and the rate counts what it sent."""
    if create:
        await db.queues.create(name)
    worker = kvqueue.Worker(db, name=f"bench-{name}")
    count = 0
    goal = n

    @worker.consumer(name, max_batch_size=BATCH, max_batch_timeout=0.05)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        nonlocal count
        count += len(batch.messages)
        if count >= goal:
            worker.stop()

    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else float("inf")
    serving = asyncio.create_task(worker.serve())
    queue = db.queue(name)
    sent = 0
    while sent < n and time.perf_counter() < deadline:
        if single:
            await queue.send(PAYLOAD)
            sent += 1
        else:
            await queue.send_batch([PAYLOAD] * BATCH)
            sent += BATCH
    goal = sent
    if count >= goal:
        worker.stop()
    await serving
    return sent / (time.perf_counter() - started)


FILL_BATCH = 500


async def fill(
    db: kvqueue.AsyncDatabase,
    name: str | None,
    n: int,
    *,
    delay: float = 0,
    seconds: float = float("inf"),
) -> tuple[int, float]:
    """Put up to n messages on a named queue (or the KV queue, for None), 500 per atomic
    commit, delayed by ``delay`` seconds; stops early after ``seconds``. Returns how many
    it put and at what rate (msgs/s). An atomic commit returns no queue metrics, so a
    large fill does not pay send_batch's metrics read on every call."""
    started = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - started < seconds:
        op = db.atomic()
        for _ in range(FILL_BATCH):
            if name is None:
                op.enqueue(PAYLOAD, delay=delay * 1000)
            else:
                op.send(name, PAYLOAD, delay_seconds=delay)
        await op.commit()
        done += FILL_BATCH
    return done, done / (time.perf_counter() - started)


async def kv_end_to_end(db: kvqueue.AsyncDatabase, n: int) -> float:
    """S3: 100 ``enqueue``s per atomic commit while ``listen_queue`` runs; msgs/s."""
    done = asyncio.Event()
    count = 0

    async def handler(value: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    listener = asyncio.create_task(db.listen_queue(handler))
    started = time.perf_counter()
    for _ in range(n // BATCH):
        op = db.atomic()
        for _ in range(BATCH):
            op.enqueue(PAYLOAD)
        await op.commit()
    await done.wait()
    elapsed = time.perf_counter() - started
    await db.close()
    await listener
    return n / elapsed


async def kv_latency(db: kvqueue.AsyncDatabase, samples: int) -> list[float]:
    """S4: one ``enqueue`` at a time on an idle KV queue, to ``listen_queue``'s handler (ms)."""
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def handler(value: Any) -> None:
        latencies.append((time.perf_counter_ns() - value) / 1e6)
        arrived.set()

    listener = asyncio.create_task(db.listen_queue(handler))
    for _ in range(samples):
        arrived.clear()
        await db.enqueue(time.perf_counter_ns())
        await arrived.wait()
        await asyncio.sleep(0.002)  # the queue is idle again before the next one
    await db.close()
    await listener
    return latencies


async def named_latency(db: kvqueue.AsyncDatabase, name: str, samples: int) -> list[float]:
    """S4: one ``send`` at a time on an idle named queue, to a Worker's handler (batches of
    one, since a fuller batch would wait for its timeout by design) (ms)."""
    await db.queues.create(name)
    worker = kvqueue.Worker(db, name=f"bench-{name}")
    latencies: list[float] = []
    arrived = asyncio.Event()

    @worker.consumer(name, max_batch_size=1, max_batch_timeout=0)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        for message in batch.messages:
            latencies.append((time.perf_counter_ns() - message.body) / 1e6)
        arrived.set()

    serving = asyncio.create_task(worker.serve())
    queue = db.queue(name)
    for _ in range(samples):
        arrived.clear()
        await queue.send(time.perf_counter_ns())
        await arrived.wait()
        await asyncio.sleep(0.002)
    worker.stop()
    await serving
    return latencies

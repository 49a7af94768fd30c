"""S2/S3 (embedded): enqueue and end-to-end rates on a durable SQLite file.

Compares, in the same run: one producer awaiting each enqueue, 64 concurrent
producers (group commit), enqueue + listen_queue end to end, and the raw
limit of the disk: plain sqlite3 INSERT+COMMIT one row per transaction with
synchronous=FULL. Not part of the test suite.

    .venv/bin/python bench/throughput.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import kvqueue

PAYLOAD = {"forUser": "alovelace", "body": "x" * 160}


def raw_sqlite_single_commits(path: str, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB)")
    body = b"x" * 200
    started = time.perf_counter()
    for _ in range(n):
        conn.execute("INSERT INTO m (body) VALUES (?)", (body,))
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


async def single_awaited(path: str, n: int) -> float:
    db = await kvqueue.open_async(path)
    started = time.perf_counter()
    for _ in range(n):
        await db.enqueue(PAYLOAD)
    elapsed = time.perf_counter() - started
    await db.close()
    return n / elapsed


async def concurrent_producers(path: str, n: int, producers: int = 64) -> float:
    db = await kvqueue.open_async(path)
    per = n // producers

    async def produce() -> None:
        for _ in range(per):
            await db.enqueue(PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    elapsed = time.perf_counter() - started
    await db.close()
    return per * producers / elapsed


async def end_to_end(path: str, n: int, batch: int = 100) -> float:
    db = await kvqueue.open_async(path)
    done = asyncio.Event()
    count = 0

    async def handler(value: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    listener = asyncio.create_task(db.listen_queue(handler))
    started = time.perf_counter()
    for _ in range(n // batch):
        op = db.atomic()
        for _ in range(batch):
            op.enqueue(PAYLOAD)
        await op.commit()
    await done.wait()
    elapsed = time.perf_counter() - started
    await db.close()
    await listener
    return n / elapsed


async def named_single_send(path: str, n: int) -> float:
    db = await kvqueue.open_async(path)
    await db.queues.create("bench")
    queue = db.queue("bench")
    started = time.perf_counter()
    for _ in range(n):
        await queue.send(PAYLOAD)
    elapsed = time.perf_counter() - started
    await db.close()
    return n / elapsed


async def named_end_to_end(path: str, n: int, batch: int = 100) -> float:
    """send_batch x100 into a named queue, a Worker acking batches of 100."""
    db = await kvqueue.open_async(path)
    await db.queues.create("bench")
    worker = kvqueue.Worker(db, name="bench")
    count = 0

    @worker.consumer("bench", max_batch_size=100, max_batch_timeout=0.05)
    async def handle(messages: kvqueue.MessageBatch) -> None:
        nonlocal count
        count += len(messages.messages)
        if count >= n:
            worker.stop()

    serving = asyncio.create_task(worker.serve())
    started = time.perf_counter()
    queue = db.queue("bench")
    for _ in range(n // batch):
        await queue.send_batch([PAYLOAD] * batch)
    await serving
    elapsed = time.perf_counter() - started
    await db.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    n = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda name: str(Path(tmp) / name)  # noqa: E731
        raw = raw_sqlite_single_commits(p("raw.db"), n)
        single = asyncio.run(single_awaited(p("single.db"), n))
        concurrent = asyncio.run(concurrent_producers(p("concurrent.db"), n * 4))
        e2e = asyncio.run(end_to_end(p("e2e.db"), n * 4))
        named_single = asyncio.run(named_single_send(p("named.db"), n))
        named_e2e = asyncio.run(named_end_to_end(p("named_e2e.db"), n * 4))
    results = {
        "raw_sqlite_insert_commit_per_s": round(raw),
        "enqueue_single_awaited_per_s": round(single),
        "enqueue_64_concurrent_per_s": round(concurrent),
        "ratio_concurrent_vs_single": round(concurrent / single, 1),
        "ratio_concurrent_vs_raw_single_commit": round(concurrent / raw, 1),
        "enqueue_batched_100_plus_listen_e2e_per_s": round(e2e),
        "named_send_single_awaited_per_s": round(named_single),
        "named_send_batch_100_plus_worker_e2e_per_s": round(named_e2e),
        "ratio_named_single_send_vs_raw_single_commit": round(named_single / raw, 2),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""S6 (first cut): kvqueue on PostgreSQL against a plain SKIP LOCKED loop, same run.

Starts a private PostgreSQL (Debian's binaries, durable settings: fsync and
synchronous_commit on) and measures, on ~200-byte messages:

* raw limit: psycopg alone, insert 100 per transaction (unnest), claim 100 with
  UPDATE ... SKIP LOCKED RETURNING, delete 100: a full produce -> claim -> ack cycle;
* kvqueue: send_batch(100) into a named queue, one Worker acking batches of 100;
* single awaited sends and 64 concurrent senders (group commit);
* churn: the kvqueue cycle again in rounds, to see whether the rate holds as
  messages pass through (dead rows, vacuum).

Not part of the test suite.

    .venv/bin/python bench/postgres.py [--messages 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import psycopg

import kvqueue

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = {"forUser": "alovelace", "body": "x" * 160}


def raw_skip_locked(url: str, n: int, batch: int = 100) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw_q (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " body bytea NOT NULL, visible_at bigint NOT NULL, lease text)"
        )
        conn.execute("CREATE INDEX ON raw_q (visible_at, seq)")
        body = b"x" * 200
        started = time.perf_counter()
        for _ in range(n // batch):
            with conn.transaction():
                conn.execute(
                    "INSERT INTO raw_q (body, visible_at) SELECT * FROM unnest(%s::bytea[],"
                    " %s::bigint[])",
                    ([body] * batch, [0] * batch),
                )
        done = 0
        while done < n:
            with conn.transaction():
                rows = conn.execute(
                    "UPDATE raw_q SET lease = 'x', visible_at = 1 WHERE seq IN (SELECT seq"
                    " FROM raw_q WHERE visible_at <= 0 ORDER BY visible_at, seq LIMIT %s"
                    " FOR UPDATE SKIP LOCKED) RETURNING seq",
                    (batch,),
                ).fetchall()
            with conn.transaction():
                conn.execute("DELETE FROM raw_q WHERE seq = ANY(%s)", ([r[0] for r in rows],))
            done += len(rows)
        return n / (time.perf_counter() - started)


async def kvqueue_cycle(db: kvqueue.AsyncDatabase, name: str, n: int, batch: int = 100) -> float:
    await db.queues.create(name)
    worker = kvqueue.Worker(db, name=name)
    count = 0

    @worker.consumer(name, max_batch_size=100, max_batch_timeout=0.05)
    async def handle(messages: kvqueue.MessageBatch) -> None:
        nonlocal count
        count += len(messages.messages)
        if count >= n:
            worker.stop()

    started = time.perf_counter()
    serving = asyncio.create_task(worker.serve())
    queue = db.queue(name)
    for _ in range(n // batch):
        await queue.send_batch([PAYLOAD] * batch)
    await serving
    return n / (time.perf_counter() - started)


async def sends(url: str, n: int) -> tuple[float, float]:
    db = await kvqueue.open_async(url)
    await db.queues.create("single")
    queue = db.queue("single")
    started = time.perf_counter()
    for _ in range(n):
        await queue.send(PAYLOAD)
    single = n / (time.perf_counter() - started)
    await db.queues.create("concurrent")
    queue = db.queue("concurrent")
    per = n * 4 // 64

    async def produce() -> None:
        for _ in range(per):
            await queue.send(PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(64)))
    concurrent = per * 64 / (time.perf_counter() - started)
    await db.close()
    return single, concurrent


async def churn(url: str, n: int, rounds: int) -> list[float]:
    db = await kvqueue.open_async(url)
    rates = [await kvqueue_cycle(db, f"churn{i}", n) for i in range(rounds)]
    await db.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.postgres import running_cluster

    n = args.messages
    with running_cluster() as cluster:
        raw = raw_skip_locked(cluster.new_database(), n)

        async def cycle() -> float:
            async with await kvqueue.open_async(cluster.new_database()) as db:
                return await kvqueue_cycle(db, "bench", n)

        e2e = asyncio.run(cycle())
        single, concurrent = asyncio.run(sends(cluster.new_database(), n // 10))
        rounds = asyncio.run(churn(cluster.new_database(), n, args.rounds))
    print(
        json.dumps(
            {
                "raw_skip_locked_cycle_per_s": round(raw),
                "kvqueue_send_batch_100_worker_e2e_per_s": round(e2e),
                "ratio_kvqueue_vs_raw": round(e2e / raw, 2),
                "send_single_awaited_per_s": round(single),
                "send_64_concurrent_per_s": round(concurrent),
                "ratio_concurrent_vs_single": round(concurrent / single, 1),
                "churn_rounds_per_s": [round(r) for r in rounds],
                "churn_last_vs_first": round(rounds[-1] / rounds[0], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""S6's consumers, one process each: take batches of 100 from PostgreSQL and ack them,
printing "n <count>" after every batch.

    python -m bench.procs.pg_consumer raw|pgmq|kvqueue URL

raw: claim with UPDATE … FOR UPDATE SKIP LOCKED … RETURNING, then DELETE (two
transactions per batch); pgmq: pgmq.read(100) then pgmq.delete(ids); kvqueue: a Worker
(batches of 100) on queue "bench". Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import psycopg

import kvqueue

CLAIM = (
    "UPDATE raw_q SET visible_at = %s WHERE seq IN (SELECT seq FROM raw_q WHERE visible_at <= %s"
    " ORDER BY visible_at, seq LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING seq, body"
)


def sql_loop(mode: str, url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        print("ready", flush=True)
        while True:
            if mode == "raw":
                now = time.time_ns() // 1_000_000
                rows = conn.execute(CLAIM, (now + 30_000, now)).fetchall()
            else:
                rows = conn.execute(
                    "SELECT msg_id, message FROM pgmq.read('bench', 30, 100)"
                ).fetchall()
            if not rows:
                time.sleep(0.001)  # an empty queue: poll again shortly
                continue
            ids = [row[0] for row in rows]
            if mode == "raw":
                conn.execute("DELETE FROM raw_q WHERE seq = ANY(%s)", (ids,))
            else:
                conn.execute("SELECT pgmq.delete('bench', %s::bigint[])", (ids,))
            print(f"n {len(ids)}", flush=True)


async def worker(url: str) -> None:
    db = await kvqueue.open_async(url)
    worker = kvqueue.Worker(db, name="bench-pg")

    @worker.consumer("bench", max_batch_size=100, max_batch_timeout=0.05)
    async def handle(batch: kvqueue.MessageBatch) -> None:
        print(f"n {len(batch.messages)}", flush=True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    serving = asyncio.create_task(worker.serve())
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    await serving
    await db.close()


if __name__ == "__main__":
    if sys.argv[1] == "kvqueue":
        asyncio.run(worker(sys.argv[2]))
    else:
        sql_loop(sys.argv[1], sys.argv[2])

"""S1, the embedded pipeline: ``send_batch(100)`` → a Worker's batches of 100 → ack,
against the raw limit of the same work in plain sqlite3 in the same run."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import kvqueue
from bench import workloads
from bench.core import BODY, Context, Row, at_least, ratio

BATCH = 100


def raw_cycle(path: str, n: int) -> float:
    """The storage limit: a plain sqlite3 lease queue (WAL, synchronous=FULL) inserting
    100 per transaction, claiming 100 (UPDATE … RETURNING on the ready index) and
    deleting 100, one transaction each; msgs/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE m (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, body BLOB NOT NULL,"
        " visible_at INTEGER NOT NULL, lease TEXT)"
    )
    conn.execute("CREATE INDEX m_ready ON m (queue, visible_at, id)")
    rows = [("q", BODY, 0)] * BATCH
    done = 0
    started = time.perf_counter()
    for _ in range(n // BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO m (queue, body, visible_at) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
        now = time.time_ns() // 1_000_000
        conn.execute("BEGIN IMMEDIATE")
        claimed = conn.execute(
            "UPDATE m SET lease = 'l', visible_at = ? WHERE id IN (SELECT id FROM m"
            " WHERE queue = 'q' AND visible_at <= ? ORDER BY visible_at, id LIMIT ?)"
            " RETURNING id, body",
            (now + 30_000, now, BATCH),
        ).fetchall()
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        ids = [row[0] for row in claimed]
        conn.execute(f"DELETE FROM m WHERE id IN ({','.join('?' * len(ids))})", ids)
        conn.execute("COMMIT")
        done += len(ids)
    elapsed = time.perf_counter() - started
    conn.close()
    assert done == n, (done, n)
    return n / elapsed


async def _pipeline(path: str, n: int) -> float:
    async with await kvqueue.open_async(path) as db:
        return await workloads.pipeline(db, "s1", n)


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(100_000, 10_000)
    raw = raw_cycle(ctx.path("s1-raw.db"), n)
    kvq = asyncio.run(_pipeline(ctx.path("s1.db"), n))
    raw_row = Row("S1", "raw limit: sqlite3 insert 100/txn, claim 100, delete 100", raw, "msgs/s")
    raw_row.extra = {"messages": n}
    kvq_row = ratio(
        Row("S1", "kvqueue send_batch(100) → Worker batches of 100 → ack", kvq, "msgs/s"),
        raw,
        "raw",
    )
    kvq_row.extra = {"messages": n}
    return [raw_row, at_least(kvq_row, 0.6, "raw")]

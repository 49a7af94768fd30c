"""S2, producers: one producer awaiting each ``send`` against 64 concurrent producers
(whose commits the storage groups), with the disk's one-row-per-commit limit beside."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kvqueue
from bench.core import BODY, PAYLOAD, Context, Row, at_least, ratio

PRODUCERS = 64


def raw_single_commits(path: str, n: int) -> float:
    """sqlite3 INSERT + COMMIT, one row per transaction, WAL, synchronous=FULL; rows/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB)")
    started = time.perf_counter()
    for _ in range(n):
        conn.execute("INSERT INTO m (body) VALUES (?)", (BODY,))
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


async def _rate(path: str, n: int, producers: int, kv: bool) -> float:
    async with await kvqueue.open_async(path) as db:
        send: Callable[[Any], Awaitable[Any]]
        if kv:
            send = db.enqueue
        else:
            await db.queues.create("s2")
            send = db.queue("s2").send
        per = n // producers

        async def produce() -> None:
            for _ in range(per):
                await send(PAYLOAD)

        started = time.perf_counter()
        await asyncio.gather(*(produce() for _ in range(producers)))
        return per * producers / (time.perf_counter() - started)


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(3_000, 500)
    # Each run lasts a second or two, and the disk's pace (which sets the single
    # producer's rate) swings by a fifth over that long: so one producer and many
    # take turns, and each figure is the median of its rounds.
    rounds = ctx.sizes.pick(3, 1)
    raw = raw_single_commits(ctx.path("s2-raw.db"), n)
    rows = [Row("S2", "raw: sqlite3 INSERT+COMMIT, 1 row per txn (FULL)", raw, "rows/s")]
    for kv, label in ((False, "named queue send"), (True, "KV enqueue")):
        singles, manys = [], []
        for _ in range(rounds):
            singles.append(asyncio.run(_rate(ctx.path("s2.db"), n, 1, kv)))
            manys.append(asyncio.run(_rate(ctx.path("s2.db"), n * 8, PRODUCERS, kv)))
        single, many = statistics.median(singles), statistics.median(manys)
        of = f" (median of {rounds})" if rounds > 1 else ""
        rows.append(
            ratio(Row("S2", f"{label}, 1 producer awaiting each{of}", single, "/s"), raw, "raw")
        )
        row = ratio(
            Row("S2", f"{label}, {PRODUCERS} concurrent producers{of}", many, "/s"),
            single,
            "1 producer",
        )
        rows.append(at_least(row, 10, "1 producer") if not kv else row)
    return rows

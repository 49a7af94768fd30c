"""S7, the SQLite peers: huey (SqliteHuey), persist-queue (SQLiteAckQueue) and litequeue,
each taking the same messages (~200 bytes) one per call with the durability it allows,
then consuming and acking them one by one; against S1's pipeline and kvqueue's own
one-message-per-send path, in the same run."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import kvqueue
from bench import workloads
from bench.core import PAYLOAD, Context, Row, at_least, ratio


def _phases(n: int, put: Callable[[], None], take: Callable[[], bool]) -> dict[str, Any]:
    """Put n, then take until empty (each take consumes and acks one); checks the count."""
    started = time.perf_counter()
    for _ in range(n):
        put()
    enqueued = time.perf_counter()
    taken = 0
    while take():
        taken += 1
    finished = time.perf_counter()
    assert taken == n, f"took {taken} of {n}"
    return {
        "enqueue_per_s": n / (enqueued - started),
        "consume_per_s": n / (finished - enqueued),
        "e2e": n / (finished - started),
    }


def huey(path: str, n: int) -> dict[str, Any]:
    from huey import SqliteHuey  # type: ignore[import-untyped]

    app = SqliteHuey("bench", filename=path, fsync=True, results=False)

    @app.task()  # type: ignore[untyped-decorator]
    def job(payload: dict[str, Any]) -> None:
        return None

    def take() -> bool:
        task = app.dequeue()
        if task is None:
            return False
        app.execute(task)
        return True

    def put() -> None:
        job(PAYLOAD)

    result = _phases(n, put, take)
    result["durability"] = f"WAL, synchronous={_sync(app.storage.conn)} (fsync=True)"
    return result


def persist_queue(path: str, n: int) -> dict[str, Any]:
    from persistqueue import Empty, SQLiteAckQueue

    queue = SQLiteAckQueue(path, multithreading=False)
    # It never sets synchronous; SQLite's default in WAL mode is FULL. Read it back.
    assert queue._putter is not None
    setting = _sync(queue._putter)

    def take() -> bool:
        try:
            item = queue.get(block=False)
        except Empty:
            return False
        queue.ack(item)
        return True

    def put() -> None:
        queue.put(PAYLOAD)

    result = _phases(n, put, take)
    result["durability"] = f"WAL, synchronous={setting} (library default)"
    queue.close()
    return result


def litequeue(path: str, n: int) -> dict[str, Any]:
    from litequeue import LiteQueue  # type: ignore[import-untyped]

    queue = LiteQueue(path)
    # Its default is synchronous=NORMAL (not power-loss durable); same durability as the rest.
    queue.conn.execute("PRAGMA synchronous = FULL")
    data = json.dumps(PAYLOAD)

    def take() -> bool:
        message = queue.pop()
        if message is None:
            return False
        queue.done(message.message_id)
        return True

    def put() -> None:
        queue.put(data)

    result = _phases(n, put, take)
    result["durability"] = f"WAL, synchronous={_sync(queue.conn)} (set; its default is NORMAL)"
    queue.conn.close()
    return result


def _sync(conn: sqlite3.Connection) -> str:
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))


async def _kvqueue(path: str, n: int, single: bool) -> float:
    async with await kvqueue.open_async(path) as db:
        return await workloads.pipeline(db, "s7", n, single=single)


PEERS = {
    "huey SqliteHuey (no ack: deleted at dequeue)": huey,
    "persist-queue SQLiteAckQueue": persist_queue,
    "litequeue 0.9": litequeue,
}


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(20_000, 2_000)
    rows: list[Row] = []
    peers: dict[str, float] = {}
    for name, measure in PEERS.items():
        target = ctx.path("s7-peer") if "persist" in name else ctx.path("s7-peer.db")
        result = measure(target, n)
        peers[name] = result["e2e"]
        rows.append(Row("S7", f"{name}: put x1, get+ack x1", result["e2e"], "msgs/s", extra=result))
    single = asyncio.run(_kvqueue(ctx.path("s7-single.db"), n, True))
    rows.append(Row("S7", "kvqueue: send x1 (awaited) → Worker → ack", single, "msgs/s"))
    s1 = ctx.earlier("S1", "kvqueue")
    note = "S1 of this run"
    if s1 is None:
        s1 = asyncio.run(_kvqueue(ctx.path("s7-batch.db"), n, False))
        note = f"S1's pipeline measured here on {n} messages"
    for name, rate in peers.items():
        short = name.split(" (")[0]
        row = ratio(
            Row("S7", f"  S1 pipeline vs {short}", s1, "msgs/s", note=note), rate, short.split()[0]
        )
        rows.append(at_least(row, 10, short.split()[0]))
    for row in rows:
        row.extra["messages"] = n
    return rows

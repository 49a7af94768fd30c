"""S4, latency: one message at a time on an idle queue, from ``enqueue``/``send`` to the
handler, in the same process and across processes; p50/p99 over ≥ 1000 samples, on
SQLite and on the private PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import kvqueue
from bench import workloads
from bench.core import Child, Context, Row, at_most, children, percentiles

IN_PROCESS = (2.0, 10.0)  # p50, p99 targets in ms
ACROSS = 20.0  # p99 target in ms


async def _in_process(path: str, mode: str, samples: int) -> list[float]:
    db = await kvqueue.open_async(path)
    if mode == "kv":
        return await workloads.kv_latency(db, samples)
    try:
        return await workloads.named_latency(db, "lat", samples)
    finally:
        await db.close()


def across_processes(path: str, mode: str, samples: int) -> list[float]:
    """Send from this process; a child process consumes and reports when it got each."""
    with kvqueue.open(path) as db:
        if mode == "named":
            db.queues.create("lat")
        with children(Child("bench.procs.listener", path, mode, "lat")) as (child,):
            child.expect("ready")
            latencies: list[float] = []
            for _ in range(samples):
                message = {"sent_ns": time.time_ns()}
                if mode == "kv":
                    db.enqueue(message)
                else:
                    db.queue("lat").send(message)
                _, sent, received = child.expect("got", timeout=30).split()
                latencies.append((int(received) - int(sent)) / 1e6)
                time.sleep(0.002)
    return latencies


def _rows(backend: str, mode: str, where: str, samples: list[float]) -> list[Row]:
    stats = percentiles(samples)
    label = f"{backend} {'KV enqueue → listen_queue' if mode == 'kv' else 'send → Worker'}, {where}"
    p50 = Row("S4", f"{label}: p50", stats["p50_ms"], "ms", extra=stats)
    p99 = Row("S4", f"{label}: p99", stats["p99_ms"], "ms", extra=stats)
    if where == "same process":
        return [at_most(p50, IN_PROCESS[0]), at_most(p99, IN_PROCESS[1])]
    return [p50, at_most(p99, ACROSS)]


def run(ctx: Context) -> list[Row]:
    samples = ctx.sizes.pick(1_000, 200)
    rows: list[Row] = []
    for mode in ("kv", "named"):
        lat = asyncio.run(_in_process(ctx.path("s4.db"), mode, samples))
        rows += _rows("SQLite", mode, "same process", lat)
        rows += _rows(
            "SQLite", mode, "across processes", across_processes(ctx.path("s4x.db"), mode, samples)
        )
    pg = ctx.postgres()
    lat = asyncio.run(_in_process(pg.new_database(), "kv", samples))
    rows += _rows("PostgreSQL", "kv", "same process", lat)
    rows += _rows(
        "PostgreSQL", "kv", "across processes", across_processes(pg.new_database(), "kv", samples)
    )
    return rows

"""S6, PostgreSQL: S1's cycle (one producer sending 100 per transaction, consumers taking
and acking batches of 100) with 1 and 4 consumer processes, for kvqueue, a plain
SKIP LOCKED table (the limit), and pgmq's SQL API; and procrastinate; same cluster,
same run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

import psycopg
from psycopg.types.json import Jsonb

import kvqueue
from bench.core import BODY, PAYLOAD, Child, Context, Counter, Row, at_least, children, ratio

BATCH = 100


def _raw_setup(url: str, stack: ExitStack) -> Callable[[], None]:
    conn = stack.enter_context(psycopg.connect(url, autocommit=True))
    conn.execute(
        "CREATE TABLE raw_q (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " body bytea NOT NULL, visible_at bigint NOT NULL)"
    )
    conn.execute("CREATE INDEX ON raw_q (visible_at, seq)")
    bodies = [BODY] * BATCH

    def produce() -> None:
        conn.execute(
            "INSERT INTO raw_q (body, visible_at) SELECT b, 0 FROM unnest(%s::bytea[]) AS b",
            (bodies,),
        )

    return produce


def _pgmq_setup(url: str, stack: ExitStack) -> Callable[[], None]:
    from pgmq.install import install_pgmq_from_sql

    with psycopg.connect(url) as setup:
        install_pgmq_from_sql(conn=setup)
        setup.execute("SELECT pgmq.create('bench')")
    conn = stack.enter_context(psycopg.connect(url, autocommit=True))
    messages = [Jsonb(PAYLOAD)] * BATCH

    def produce() -> None:
        conn.execute("SELECT pgmq.send_batch('bench', %s::jsonb[])", (messages,))

    return produce


def _kvqueue_setup(url: str, stack: ExitStack) -> Callable[[], None]:
    db = stack.enter_context(kvqueue.open(url))
    db.queues.create("bench")
    queue = db.queue("bench")

    def produce() -> None:
        queue.send_batch([PAYLOAD] * BATCH)

    return produce


SETUPS = {"raw": _raw_setup, "pgmq": _pgmq_setup, "kvqueue": _kvqueue_setup}


def cycle(url: str, mode: str, n: int, consumers: int) -> float:
    """One producer here, ``consumers`` processes; msgs/s until all n are acked."""
    counter = Counter(n)
    with ExitStack() as stack:
        produce = SETUPS[mode](url, stack)
        made = [
            Child("bench.procs.pg_consumer", mode, url, on_line=counter.line)
            for _ in range(consumers)
        ]
        stack.enter_context(children(*made))
        for child in made:
            child.expect("ready", timeout=60)
        started = time.perf_counter()
        for _ in range(n // BATCH):
            produce()
        if not counter.done.wait(300):
            raise RuntimeError(f"{mode}: only {counter.total} of {n} consumed in 300 s")
        assert counter.reached_at is not None
        return n / (counter.reached_at - started)


async def procrastinate_cycle(url: str, n: int, concurrency: int) -> float:
    """procrastinate: ``batch_defer_async`` 100 jobs at a time, then an in-process worker
    (``wait=False``: it returns once the queue is empty) deleting jobs that succeed."""
    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(queue="bench", name="bench_job")
    async def job(forUser: str, body: str) -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        for _ in range(n // BATCH):
            await job.batch_defer_async(*([PAYLOAD] * BATCH))
        await app.run_worker_async(
            queues=["bench"],
            wait=False,
            concurrency=concurrency,
            delete_jobs="successful",
            install_signal_handlers=False,
        )
        return n / (time.perf_counter() - started)


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(50_000, 5_000)
    few = ctx.sizes.pick(3_000, 300)
    pg = ctx.postgres()
    rate = {
        (mode, k): cycle(pg.new_database(), mode, n, k)
        for k in (1, 4)
        for mode in ("raw", "pgmq", "kvqueue")
    }
    rows: list[Row] = []
    for k in (1, 4):
        raw = rate["raw", k]
        label = f"{k} consumer{'s' if k > 1 else ''}"
        rows.append(Row("S6", f"raw limit: SKIP LOCKED claim 100 + delete, {label}", raw, "msgs/s"))
        rows.append(
            ratio(
                Row(
                    "S6",
                    f"pgmq SQL API: send_batch / read(100) / delete, {label}",
                    rate["pgmq", k],
                    "msgs/s",
                ),
                raw,
                "raw",
            )
        )
        kvq = ratio(
            Row("S6", f"kvqueue send_batch(100) → Worker, {label}", rate["kvqueue", k], "msgs/s"),
            raw,
            "raw",
        )
        rows.append(at_least(kvq, 0.6, "raw"))
        vs_pgmq = ratio(
            Row("S6", f"  kvqueue vs pgmq, {label}", rate["kvqueue", k], "msgs/s"),
            rate["pgmq", k],
            "pgmq",
        )
        rows.append(at_least(vs_pgmq, 1, "pgmq"))
    for concurrency in (1, 4):
        proc = asyncio.run(procrastinate_cycle(pg.new_database(), few, concurrency))
        row = Row(
            "S6",
            f"procrastinate batch_defer x100 + worker, concurrency {concurrency}",
            proc,
            "msgs/s",
        )
        row.extra = {"messages": few}
        rows.append(ratio(row, rate["raw", 1], "raw (1 consumer)"))
    for row in rows:
        row.extra.setdefault("messages", n)
    return rows

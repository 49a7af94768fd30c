"""S8's run, in a process of its own so that its memory is its own: S1's pipeline and
S4's in-process KV latency on a small database, then beside a large backlog, then
beside as many delayed messages. Every fill and every pipeline has a time cap; the
JSON line it prints says how many messages there really were. Each pipeline figure is
the median of ROUNDS runs: one run of 50k messages lasts about two seconds, and the
disk's pace swings by more than the bound over that long.

    python -m bench.procs.scale DB BACKLOG MESSAGES SAMPLES FILL_SECONDS PHASE_SECONDS ROUNDS
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from typing import Any

import kvqueue
from bench import workloads
from bench.core import current_rss_mb, peak_rss_mb, percentiles, reset_peak_rss

HOUR = 3600


async def _open(path: str, backlog: int) -> kvqueue.AsyncDatabase:
    return await kvqueue.open_async(path, kv_queue_backlog=backlog + 100_000)


async def phase(
    path: str, backlog: int, queue: str, messages: int, samples: int, seconds: float, rounds: int
) -> dict[str, Any]:
    """S1 on ``queue`` (which may hold a backlog) ``rounds`` times, then S4 on the KV
    queue; the peak memory is this phase's own, not the fill's before it."""
    reset_peak_rss()
    rates = []
    async with await _open(path, backlog) as db:
        for _ in range(rounds):
            create = queue not in {q.name for q in await db.queues.list()}
            rates.append(
                await workloads.pipeline(db, queue, messages, create=create, seconds=seconds)
            )
    latency = percentiles(await workloads.kv_latency(await _open(path, backlog), samples))
    return {
        "pipeline_per_s": statistics.median(rates),
        "pipeline_rounds_per_s": rates,
        "latency": latency,
        "rss_mb": current_rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


async def fill(
    path: str, backlog: int, queue: str | None, delay: float, seconds: float
) -> dict[str, float]:
    async with await _open(path, backlog) as db:
        if queue is not None:
            await db.queues.create(queue)
        count, rate = await workloads.fill(db, queue, backlog, delay=delay, seconds=seconds)
    return {"count": count, "per_s": rate}


async def main(argv: list[str]) -> dict[str, Any]:
    path = argv[0]
    backlog, messages, samples = map(int, argv[1:4])
    fill_s, phase_s = map(float, argv[4:6])
    rounds = int(argv[6])
    result: dict[str, Any] = {"backlog": backlog, "messages": messages, "rounds": rounds}
    result["small"] = await phase(path, backlog, "small", messages, samples, phase_s, rounds)
    result["fill"] = await fill(path, backlog, "backlog", 0, fill_s)
    # S1 on the queue that holds the backlog; S4 on the KV queue beside it.
    result["backlog_phase"] = await phase(
        path, backlog, "backlog", messages, samples, phase_s, rounds
    )
    result["fill_delayed"] = await fill(path, backlog, "delayed", HOUR, fill_s)
    result["fill_kv_delayed"] = await fill(path, backlog, None, HOUR, fill_s)
    # S1 on a queue holding the delayed messages; S4 on a KV queue holding as many.
    result["delayed_phase"] = await phase(
        path, backlog, "delayed", messages, samples, phase_s, rounds
    )
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))), flush=True)

"""S8's run, in a process of its own so that its memory is its own: S1's pipeline and
S4's in-process KV latency on a small database, then beside a large backlog, then
beside as many delayed messages. Every fill and every pipeline has a time cap; the
JSON line it prints says how many messages there really were.

The VM's pace (its disk above all) drifts by more than S8's 20 % bound over the
minutes between the phases, so a large phase is not compared with the small figures
measured minutes before it: each large phase takes turns with a small database of
its own (a second file, opened in turn with the large one), round by round and block
by block of latency samples, and is compared with that. Each pipeline figure is the
median of ROUNDS runs.

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
# A large phase's latency samples and its small database's alternate in this many blocks.
LATENCY_BLOCKS = 6


async def _open(path: str, backlog: int) -> kvqueue.AsyncDatabase:
    return await kvqueue.open_async(path, kv_queue_backlog=backlog + 100_000)


class Side:
    """One database of a phase, and the figures taken on it."""

    def __init__(self, path: str, queue: str) -> None:
        self.path = path
        self.queue = queue
        self.rates: list[float] = []
        self.latencies: list[float] = []

    async def pipeline(self, backlog: int, messages: int, seconds: float) -> None:
        async with await _open(self.path, backlog) as db:
            create = self.queue not in {q.name for q in await db.queues.list()}
            self.rates.append(
                await workloads.pipeline(db, self.queue, messages, create=create, seconds=seconds)
            )

    async def latency(self, backlog: int, samples: int) -> None:
        self.latencies += await workloads.kv_latency(await _open(self.path, backlog), samples)

    def figures(self) -> dict[str, Any]:
        return {
            "pipeline_per_s": statistics.median(self.rates),
            "pipeline_rounds_per_s": self.rates,
            "latency": percentiles(self.latencies),
        }


async def phase(
    sides: list[Side], backlog: int, messages: int, samples: int, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """S1 on each side's queue (which may hold a backlog) ``rounds`` times, then S4 on
    its KV queue, the sides taking turns; the peak memory is the phase's own, not the
    fill's before it."""
    reset_peak_rss()
    for _ in range(rounds):
        for side in sides:
            await side.pipeline(backlog, messages, seconds)
    blocks = LATENCY_BLOCKS if len(sides) > 1 else 1
    for block in range(blocks):
        size = samples // blocks + (block < samples % blocks)
        for side in sides:
            await side.latency(backlog, size)
    rss = {"rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb()}
    return [side.figures() | rss for side in sides]


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
    small = path + ".small"
    backlog, messages, samples = map(int, argv[1:4])
    fill_s, phase_s = map(float, argv[4:6])
    rounds = int(argv[6])
    result: dict[str, Any] = {"backlog": backlog, "messages": messages, "rounds": rounds}
    run = (backlog, messages, samples, phase_s, rounds)
    # The small database alone first: the memory every later phase is held against.
    [result["small"]] = await phase([Side(small, "small")], *run)
    result["fill"] = await fill(path, backlog, "backlog", 0, fill_s)
    # S1 on the queue that holds the backlog; S4 on the KV queue beside it.
    result["backlog_phase"], result["backlog_small"] = await phase(
        [Side(path, "backlog"), Side(small, "small")], *run
    )
    result["fill_delayed"] = await fill(path, backlog, "delayed", HOUR, fill_s)
    result["fill_kv_delayed"] = await fill(path, backlog, None, HOUR, fill_s)
    # S1 on a queue holding the delayed messages; S4 on a KV queue holding as many.
    result["delayed_phase"], result["delayed_small"] = await phase(
        [Side(path, "delayed"), Side(small, "small")], *run
    )
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))), flush=True)

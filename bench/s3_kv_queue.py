"""S3, the KV queue: 100 ``enqueue``s per atomic commit with ``listen_queue`` running,
end to end, against Deno (the ``deno`` binary from PyPI, ``--unstable-kv``, a file
database) doing the same in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess

import kvqueue
from bench import workloads
from bench.core import ROOT, Context, Row, at_least, ratio

SCRIPT = ROOT / "bench" / "procs" / "deno_kv_queue.ts"


def deno_binary() -> str:
    from deno import find_deno_bin  # type: ignore[import-untyped]

    return str(find_deno_bin())


def deno_end_to_end(ctx: Context, n: int) -> dict[str, float]:
    env = dict(os.environ, DENO_NO_UPDATE_CHECK="1", DENO_DIR=str(ctx.tmp / "deno-dir"))
    command = [deno_binary(), "run", "--no-prompt", "--no-config", "--unstable-kv", "-A"]
    command += [str(SCRIPT), ctx.path("s3-deno.sqlite"), str(n), str(workloads.BATCH)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"deno failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def _kvqueue(path: str, n: int) -> float:
    db = await kvqueue.open_async(path)
    return await workloads.kv_end_to_end(db, n)


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(10_000, 1_000)
    # One kvqueue run of 10k messages lasts well under a second, and runs on this VM
    # swing by a fifth (Deno's, fsync-bound, by a quarter): so Deno and kvqueue take
    # turns, and each figure is the median of its rounds.
    rounds = ctx.sizes.pick(5, 1)
    denos, kvqs = [], []
    for _ in range(rounds):
        denos.append(deno_end_to_end(ctx, n))
        kvqs.append(asyncio.run(_kvqueue(ctx.path("s3.db"), n)))
    deno = sorted(denos, key=lambda d: d["seconds"])[len(denos) // 2]
    deno_rate = n / deno["seconds"]
    kvq = statistics.median(kvqs)
    of = f" (median of {rounds})" if rounds > 1 else ""
    deno_row = Row(
        "S3", f"Deno KV (file): atomic x100 enqueue + listenQueue{of}", deno_rate, "msgs/s"
    )
    deno_row.extra = {
        "messages": n,
        "enqueue_per_s": n / deno["enqueue_seconds"],
        "rounds_per_s": [n / d["seconds"] for d in denos],
    }
    kvq_row = ratio(
        Row("S3", f"kvqueue: atomic x100 enqueue + listen_queue{of}", kvq, "msgs/s"),
        deno_rate,
        "Deno",
    )
    kvq_row.extra = {"messages": n, "rounds_per_s": kvqs}
    return [deno_row, at_least(kvq_row, 20, "Deno")]

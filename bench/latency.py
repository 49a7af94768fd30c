"""S4: send-to-handler latency of one message on an idle KV queue.

Measures p50/p99 over N samples, in-process and across processes, on a SQLite
file and on PostgreSQL (a private server started for the run, durable
settings), side by side. Not part of the test suite.

    .venv/bin/python bench/latency.py [--samples 1000] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kvqueue

ROOT = Path(__file__).resolve().parent.parent


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "max_ms": round(ordered[-1], 3),
    }


async def in_process(path: str, samples: int) -> dict[str, float]:
    db = await kvqueue.open_async(path)
    latencies: list[float] = []
    arrived = asyncio.Event()

    async def handler(value: Any) -> None:
        latencies.append((time.perf_counter_ns() - value) / 1e6)
        arrived.set()

    listener = asyncio.create_task(db.listen_queue(handler))
    for _ in range(samples):
        arrived.clear()
        await db.enqueue(time.perf_counter_ns())
        await arrived.wait()
        await asyncio.sleep(0.002)  # keep the queue idle between samples
    await db.close()
    await listener
    return _percentiles(latencies)


def cross_process(path: str, samples: int) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "procs" / "echo_listener.py"), path],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    lines: list[str] = []
    got = threading.Condition()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with got:
                lines.append(line)
                got.notify_all()

    threading.Thread(target=read, daemon=True).start()
    with got:
        got.wait_for(lambda: any(line.startswith("ready") for line in lines), 10)
    latencies: list[float] = []
    with kvqueue.open(path) as db:
        for i in range(samples):
            db.enqueue({"id": i, "sent_ns": time.time_ns()})
            with got:
                assert got.wait_for(lambda i=i: len(lines) >= i + 2, 10)
            _, _, sent, received = lines[-1].split()
            latencies.append((int(received) - int(sent)) / 1e6)
            time.sleep(0.002)
    child.kill()
    child.wait()
    return _percentiles(latencies)


def _sqlite(samples: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "in_process": asyncio.run(in_process(str(Path(tmp) / "a.db"), samples)),
            "cross_process": cross_process(str(Path(tmp) / "b.db"), samples),
        }


def _postgres(samples: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(ROOT))
    from tests.postgres import running_cluster

    with running_cluster() as cluster:
        return {
            "in_process": asyncio.run(in_process(cluster.new_database(), samples)),
            "cross_process": cross_process(cluster.new_database(), samples),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], action="append")
    args = parser.parse_args()
    runs = {"sqlite": _sqlite, "postgres": _postgres}
    results = {name: runs[name](args.samples) for name in args.backend or list(runs)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

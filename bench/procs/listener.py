"""S4's other process: consumes a KV queue (``kv``) or a named queue (``named QUEUE``)
and prints, for every message, the wall-clock time it was sent and received.

    python -m bench.procs.listener DB kv|named [QUEUE]

Prints "ready" once consuming, then "got <sent_ns> <received_ns>" per message.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import kvqueue


async def main(path: str, mode: str, name: str) -> None:
    db = await kvqueue.open_async(path)
    if mode == "kv":

        def handler(value: Any) -> None:
            print(f"got {value['sent_ns']} {time.time_ns()}", flush=True)

        task = asyncio.create_task(db.listen_queue(handler))
    else:
        worker = kvqueue.Worker(db, name="bench-latency")

        @worker.consumer(name, max_batch_size=1, max_batch_timeout=0)
        def handle(batch: kvqueue.MessageBatch) -> None:
            received = time.time_ns()
            for message in batch.messages:
                print(f"got {message.body['sent_ns']} {received}", flush=True)

        task = asyncio.create_task(worker.serve())
    await asyncio.sleep(0.2)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""))

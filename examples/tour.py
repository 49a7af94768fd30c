"""A short tour of kvqueue's embedded database; `scripts/run` runs it.

python examples/tour.py [DB]   (default: kvqueue-tour.db in the current directory)
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import kvqueue


def main(path: str = "kvqueue-tour.db") -> None:
    """Write some keys, enqueue messages, and handle them."""
    with kvqueue.open(path) as db:
        db.set(("users", "alovelace"), {"name": "Ada Lovelace", "joined": 1843})
        print("get:", db.get(("users", "alovelace")))
        db.atomic().sum(("visits",), 1).commit()
        print("visits:", db.get(("visits",)).value)
        started = time.perf_counter()
        for i in range(1000):
            db.enqueue({"forUser": "alovelace", "n": i})
        print(f"enqueued 1000 messages in {time.perf_counter() - started:.2f}s")
        handled: list[Any] = []

        def handler(message: Any) -> None:
            handled.append(message)
            if len(handled) == 1000:
                db.close()

        started = time.perf_counter()
        db.listen_queue(handler)
        print(f"handled {len(handled)} messages in {time.perf_counter() - started:.2f}s")
    named_queue(path)


def named_queue(path: str) -> None:
    """A named queue with a batching push consumer, a retry and a dead-letter queue."""
    with kvqueue.open(path) as db:
        if "webhooks" not in [q.name for q in db.queues.list()]:
            db.queues.create("webhooks")
        db.queue("webhooks").send_batch(
            [{"event": "push", "n": i} for i in range(25)] + [{"event": "broken"}]
        )
        worker = kvqueue.Worker(db, name="tour")
        seen: list[int] = []

        @worker.consumer(
            "webhooks",
            max_batch_size=10,
            max_batch_timeout=0.1,
            max_retries=1,
            dead_letter_queue="webhooks-dlq",
        )
        def handle(batch: kvqueue.MessageBatch) -> None:
            for msg in batch.messages:
                if msg.body["event"] == "broken":
                    msg.retry()  # the others in the batch are still acked
                else:
                    seen.append(msg.body["n"])

        def stop_when_done() -> None:
            while len(seen) < 25 or db.queues.metrics("webhooks").backlog_count:
                time.sleep(0.01)
            worker.stop()

        watcher = threading.Thread(target=stop_when_done)
        watcher.start()
        worker.run()
        watcher.join()
        dead = db.queue("webhooks-dlq").pull(batch_size=10)
        print(
            f"webhooks: handled {len(seen)} in batches; dead-lettered:",
            [m.body for m in dead.messages],
        )
        db.queue("webhooks-dlq").ack(acks=[m.lease_id for m in dead.messages])


if __name__ == "__main__":
    main(*sys.argv[1:])

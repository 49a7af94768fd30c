"""A child process running a named-queue Worker (for crash and signal tests).

Usage: queue_worker.py DB LEASE_MS ROLE
Prints "handling <id> <body>" for each message of a batch, "handled <id>" once
the handler is done with it, and kvqueue's debug log ("message <id> acked")
after each settlement commits. Every handler acks the first message of its
batch explicitly. ROLE "victim" then hangs inside its first batch forever (its
other batches go on), so the test can kill it mid-batch; ROLE "normal"
finishes every batch.
"""

from __future__ import annotations

import logging
import sys
import threading

import kvqueue


def say(line: str) -> None:
    # One write per line: handler threads would interleave print()'s pieces.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    path, lease_ms, role = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(message)s")
    db = kvqueue.open(path, lease_ms=lease_ms)
    worker = kvqueue.Worker(db, name="crash-test")

    hung = threading.Lock()

    @worker.consumer("jobs", max_batch_size=10, max_batch_timeout=0.05)
    def handle(batch: kvqueue.MessageBatch) -> None:
        for message in batch.messages:
            say(f"handling {message.id} {message.body}")
        batch.messages[0].ack()
        if role == "victim" and hung.acquire(blocking=False):
            # The whole batch on one line: other batches' lines may come in between.
            say("hanging " + " ".join(message.id for message in batch.messages))
            threading.Event().wait()
        for message in batch.messages:
            say(f"handled {message.id}")

    say("started")
    worker.run()
    db.close()
    say("stopped")


if __name__ == "__main__":
    main()

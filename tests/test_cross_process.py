"""A message enqueued by one process reaches a listener in another promptly (SPEC §4)."""

from __future__ import annotations

import time

import kvqueue
from tests.test_durability import Child


def test_enqueue_in_one_process_reaches_listener_in_another(shared_url: str) -> None:
    """Each of 30 messages sent one at a time arrives in the other process, without a poll interval."""
    path = shared_url
    kvqueue.open(path).close()
    child = Child("echo_listener.py", path)
    try:
        child.wait_for(lambda lines: "ready" in lines)
        with kvqueue.open(path) as db:
            for i in range(30):
                db.enqueue({"id": i, "sent_ns": time.time_ns()})
                # Deno's cross-process wake-up is a 60 s poll; a few seconds is a generous bound.
                child.wait_for(
                    lambda lines, i=i: any(line.startswith(f"got {i} ") for line in lines), within=5
                )
    finally:
        child.kill()
    got = [line for line in child.lines if line.startswith("got ")]
    assert sorted(int(line.split()[1]) for line in got) == list(range(30))

"""Nothing lost: processes killed with SIGKILL mid-work (SPEC §1, §9)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kvqueue
from tests.helpers import Spawned
from tests.stores import message_bodies, stored_messages

PROCS = Path(__file__).parent / "procs"


class Child(Spawned):
    """A Python child process whose stdout lines are collected on a thread."""

    def __init__(self, script: str, *args: str) -> None:
        super().__init__([sys.executable, str(PROCS / script), *args])

    def wait_for(self, predicate: Any, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not predicate(self.lines):
            if self.proc.poll() is not None and not predicate(self.lines):
                raise AssertionError(f"child exited early: {self.lines[-20:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"child never got there: {self.lines[-20:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _drain(path: str, until: Any, lease_ms: int = 30_000) -> list[Any]:
    """Listen in this process until ``until(delivered)`` holds and the queue is empty."""
    db = kvqueue.open(path, lease_ms=lease_ms)
    delivered: list[Any] = []
    lock = threading.Lock()

    def handler(value: Any) -> None:
        with lock:
            delivered.append(value)

    listener = threading.Thread(target=db.listen_queue, args=(handler,), daemon=True)
    listener.start()
    deadline = time.monotonic() + 30
    while not (until(delivered) and stored_messages(path) == 0):
        assert time.monotonic() < deadline, f"drain stalled with {len(delivered)} delivered"
        time.sleep(0.005)
    db.close()
    listener.join(10)
    return delivered


def test_killed_handler_gets_its_message_again_and_acked_ones_never_return(shared_url: str) -> None:
    """kill -9 mid-handler: that message is redelivered after restart; messages whose ack committed are not."""
    path = shared_url
    with kvqueue.open(path) as db:
        for i in range(40):
            db.enqueue(f"m{i}")
        db.enqueue("hang")
    bodies = message_bodies(path)
    everything = set(bodies.values())

    child = Child("listener.py", path, "500")
    child.wait_for(lambda lines: "handling hang" in lines)
    child.wait_for(lambda lines: sum(" acked" in line for line in lines) >= 5)
    child.kill()
    acked = {
        bodies[line.split()[1]]
        for line in child.lines
        if line.startswith("message ") and line.endswith(" acked")
    }
    assert "hang" not in acked
    assert len(acked) >= 5

    handled_before = {
        line.removeprefix("handled ") for line in child.lines if line.startswith("handled ")
    }

    # The queue empties once every unacked message is handled; an ack that
    # committed just before the kill may not have been logged yet, so only the
    # logged ones are known never to come back.
    delivered = _drain(path, lambda got: "hang" in got)
    assert "hang" in delivered, "the message whose handler was killed must come back"
    assert not acked & set(delivered), "a message whose ack committed was delivered again"
    assert everything <= handled_before | set(delivered), "a message was never handled"


def test_every_commit_that_returned_survives_kill_during_a_burst(shared_url: str) -> None:
    """kill -9 during 16 concurrent committers: every commit that returned is there, set and message alike."""
    path = shared_url
    kvqueue.open(path).close()
    child = Child("producer.py", path)
    child.wait_for(lambda lines: sum(line.startswith("committed") for line in lines) >= 2000)
    child.kill()
    returned = {int(line.split()[1]) for line in child.lines if line.startswith("committed")}

    with kvqueue.open(path) as db:
        stored = {e.key[1] for e in db.list(("burst",))}
    assert returned <= stored, f"{len(returned - stored)} returned commits are missing"

    delivered = _drain(path, lambda got: len(got) >= len(stored))
    assert sorted(v["i"] for v in delivered) == sorted(stored), (
        "a commit's set and its enqueue must agree"
    )

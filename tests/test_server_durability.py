"""`kvqueue serve` loses no acknowledged push: not when SIGKILL ends it under load, and not
when SIGTERM stops it with requests in flight (which it finishes before exiting 0)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import kvqueue
from tests.served import Served, start_server

#: Concurrent pushers, each with its own HTTP client (and so its own connection).
PUSHERS = 4
#: Most pushes one pusher makes, and the longest it pushes, whatever happens.
MAX_PUSHES = 5_000
LOAD_SECONDS = 30.0
#: Pushes answered 200 before the server is stopped: far fewer than the load would make.
ACKED_BEFORE_STOP = 300
#: How long the load may take to reach ACKED_BEFORE_STOP, or to end after the stop.
WITHIN = 30.0


class Load:
    """Pushers sending unique text bodies to one queue from threads until the server goes
    away; records which pushes were answered 200, which otherwise, and which broke."""

    def __init__(self, served: Served, account: str, token: str, queue_id: str) -> None:
        self.url = f"{served.api}/accounts/{account}/queues/{queue_id}/messages"
        self.token = token
        self.sent: set[str] = set()
        self.acked: list[str] = []
        self.refused: list[tuple[int, str]] = []
        self.broken: list[str] = []
        self.finished = 0
        self.changed = threading.Condition()
        self.threads = [
            threading.Thread(target=self._push, args=(n,), name=f"pusher-{n}", daemon=True)
            for n in range(PUSHERS)
        ]
        for thread in self.threads:
            thread.start()

    def _push(self, pusher: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with httpx.Client(headers=headers, timeout=WITHIN) as client:
                for n in range(MAX_PUSHES):
                    if time.monotonic() > deadline:
                        return
                    body = f"pusher {pusher} push {n} {uuid.uuid4().hex}"
                    with self.changed:
                        self.sent.add(body)
                    try:
                        response = client.post(
                            self.url, json={"body": body, "content_type": "text"}
                        )
                    except httpx.TransportError as exc:
                        with self.changed:
                            self.broken.append(f"{type(exc).__name__}: {exc}")
                        return
                    with self.changed:
                        if response.status_code == 200:
                            self.acked.append(body)
                        else:
                            self.refused.append((response.status_code, response.text))
                        self.changed.notify_all()
        finally:
            with self.changed:
                self.finished += 1
                self.changed.notify_all()

    def wait_for_acks(self, count: int) -> None:
        """Block until ``count`` pushes were answered 200 (fail if the load ends first)."""
        with self.changed:
            self.changed.wait_for(
                lambda: len(self.acked) >= count or self.finished == PUSHERS, timeout=WITHIN
            )
            assert len(self.acked) >= count, (len(self.acked), self.refused, self.broken)
            assert self.finished == 0, "a pusher stopped before the server did"

    def join(self) -> None:
        """Wait for every pusher to stop (each stops at its first connection error)."""
        deadline = time.monotonic() + WITHIN
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), f"{thread.name} is still pushing"


def create_queue(served: Served, name: str) -> tuple[str, str, str]:
    """A new account, its admin token, and the id of its new queue ``name``."""
    account, token = served.token()
    response = httpx.post(
        f"{served.api}/accounts/{account}/queues",
        json={"queue_name": name},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    return account, token, response.json()["result"]["queue_id"]


def pull_all_over_http(served: Served, account: str, token: str, queue_id: str) -> list[str]:
    """Every message body of the queue, pulled and acked 100 at a time over HTTP."""
    base = f"{served.api}/accounts/{account}/queues/{queue_id}"
    bodies: list[str] = []
    deadline = time.monotonic() + WITHIN
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=WITHIN) as client:
        for _ in range(PUSHERS * MAX_PUSHES // 100 + 2):
            assert time.monotonic() < deadline, f"still pulling after {WITHIN} s"
            pulled = client.post(
                f"{base}/messages/pull", json={"batch_size": 100, "visibility_timeout_ms": 600_000}
            )
            assert pulled.status_code == 200, pulled.text
            messages = pulled.json()["result"]["messages"]
            if not messages:
                break
            bodies += [m["body"] for m in messages]
            acks = [{"lease_id": m["lease_id"]} for m in messages]
            acked = client.post(f"{base}/messages/ack", json={"acks": acks})
            assert acked.status_code == 200, acked.text
            assert acked.json()["result"]["ackCount"] == len(messages)
        else:
            pytest.fail("the queue never ran empty")
        metrics = client.get(f"{base}/metrics")
    assert metrics.json()["result"]["backlog_count"] == 0
    return bodies


def pull_all_from_file(path: Path, account: str, name: str) -> list[str]:
    """Every message body of ``account``'s queue ``name``, read from the database file."""
    bodies: list[str] = []
    with kvqueue.open(str(path)) as db:
        queue = db.queues_of(account).queue(name)
        for _ in range(PUSHERS * MAX_PUSHES // 100 + 2):
            pulled = queue.pull(100, 600_000)
            if not pulled.messages:
                break
            bodies += [m.body for m in pulled.messages]
            queue.ack([m.lease_id for m in pulled.messages])
        else:
            pytest.fail("the queue never ran empty")
    return bodies


def assert_nothing_lost(load: Load, stored: list[str]) -> None:
    """Every push answered 200 is stored, once; nothing stored was never sent."""
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(load.acked) - set(stored)
    assert not missing, f"{len(missing)} of {len(load.acked)} acknowledged pushes were lost"
    assert set(stored) <= load.sent


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path / "db.sqlite")
    yield server
    if server.process.poll() is None:  # the test failed before stopping it
        server.kill()


def test_sigkill_under_push_load_loses_no_acknowledged_push(served: Served) -> None:
    """A server killed with SIGKILL while pushers are busy comes back on the same file holding
    every message whose push was answered 200."""
    account, token, queue_id = create_queue(served, "load")
    load = Load(served, account, token, queue_id)
    load.wait_for_acks(ACKED_BEFORE_STOP)

    served.kill()
    load.join()
    assert len(load.broken) == PUSHERS, "every pusher should have lost its server"
    assert load.refused == []

    restarted = start_server(served.db_path)
    try:
        stored = pull_all_over_http(restarted, account, token, queue_id)
    finally:
        assert restarted.stop() == 0
    assert_nothing_lost(load, stored)


def test_sigterm_finishes_requests_in_flight_and_exits_0(served: Served) -> None:
    """SIGTERM during a push load still answers the pushes in flight, exits 0, answers no push
    with a 5xx (or any error), and keeps every message whose push was answered 200."""
    account, token, queue_id = create_queue(served, "load")
    load = Load(served, account, token, queue_id)
    load.wait_for_acks(ACKED_BEFORE_STOP)
    with load.changed:
        answered_before_signal = len(load.acked)

    assert served.stop() == 0, "\n".join(served.output)
    load.join()
    assert len(load.acked) > answered_before_signal, "no push was in flight at the signal"
    assert len(load.broken) == PUSHERS, "every pusher should have lost its server"
    assert load.refused == []
    assert not any("Traceback" in line for line in served.output), "\n".join(served.output)

    assert_nothing_lost(load, pull_all_from_file(served.db_path, account, "load"))

"""Nothing lost: a `kill -9` of the server during a push load, and SIGTERM while requests run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

import kvqueue
from tests.served import Served, start_server

PUSHERS = 4
MOST_PUSHES = 2_000  # per pusher: the load stops by itself
SECONDS = 30


class Load:
    """Pushers that record each body whose push got a 200, until stopped or refused."""

    def __init__(self, served: Served, account: str, token: str, queue_id: str) -> None:
        self.url = f"{served.api}/accounts/{account}/queues/{queue_id}/messages"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.acknowledged: list[str] = []
        self.statuses: set[int] = set()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._push, args=(n,)) for n in range(PUSHERS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(SECONDS)

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _push(self, pusher: int) -> None:
        deadline = time.monotonic() + SECONDS
        with httpx.Client(headers=self.headers, timeout=10) as http:
            for i in range(MOST_PUSHES):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                body = f"p{pusher}-{i}"
                try:
                    response = http.post(self.url, json={"body": body, "content_type": "text"})
                except httpx.HTTPError:
                    return  # the server is gone
                with self._lock:
                    self.statuses.add(response.status_code)
                    if response.status_code == 200:
                        self.acknowledged.append(body)


def wait_for(condition: Callable[[], bool], within: float = SECONDS) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def stored_bodies(path: Path, account: str) -> list[str]:
    with kvqueue.open(str(path)) as db:
        queue = db.queues_of(account).queue("load")
        bodies: list[str] = []
        while True:
            pulled = queue.pull(batch_size=100, visibility_timeout_ms=600_000)
            if not pulled.messages:
                return bodies
            bodies += [m.body for m in pulled.messages]


def start_load(served: Served) -> tuple[str, Load]:
    account, token = served.token()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http:
        created = http.post(f"{served.api}/accounts/{account}/queues", json={"queue_name": "load"})
    load = Load(served, account, token, created.json()["result"]["queue_id"])
    load.start()
    return account, load


def test_every_acknowledged_push_survives_kill_9(tmp_path: Path) -> None:
    """Pushes that got a 200 before the server was SIGKILLed are all there after a restart."""
    path = tmp_path / "db.sqlite"
    served = start_server(path)
    account, load = start_load(served)
    try:
        wait_for(lambda: load.count() >= 200)
        served.kill()
    finally:
        load.join()
    acknowledged = list(load.acknowledged)
    restarted = start_server(path)
    try:
        stored = stored_bodies(path, account)
    finally:
        assert restarted.stop() == 0
    assert len(acknowledged) >= 200
    assert set(acknowledged) <= set(stored)
    # A push cut off by the kill may or may not have landed; nothing else appears.
    assert len(stored) <= len(acknowledged) + PUSHERS
    assert load.statuses == {200}


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path: Path) -> None:
    """SIGTERM during a push load: exit 0, no 5xx, every 200 stored."""
    path = tmp_path / "db.sqlite"
    served = start_server(path)
    account, load = start_load(served)
    try:
        wait_for(lambda: load.count() >= 100)
        assert served.stop() == 0
    finally:
        load.join()
    assert all(status < 500 for status in load.statuses)
    assert set(load.acknowledged) <= set(stored_bodies(path, account))

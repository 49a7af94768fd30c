"""Push consumers of a served database: Workers through the server URL and Workers on
the same file, sharing the consumer settings stored with the queue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvqueue
from tests.helpers import wait_until
from tests.served import Served, start_server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_server(tmp_path / "db.sqlite")
    yield server
    assert server.stop() == 0


def make_jobs(served: Served, account: str) -> None:
    with kvqueue.open(str(served.db_path)) as db:
        db.queues_of(account).create("jobs")


def send(served: Served, account: str, bodies: list[Any]) -> None:
    with kvqueue.open(str(served.db_path)) as db:
        db.queues_of(account).queue("jobs").send_batch(bodies)


def dead_letters(queues: kvqueue.Queues) -> int:
    """Messages on the DLQ (0 until a dead-letter creates it)."""
    try:
        return queues.metrics("dlq").backlog_count
    except kvqueue.QueueNotFound:
        return 0


class Tally:
    """What handlers saw, across workers: bodies per worker, and the most batches at once."""

    def __init__(self) -> None:
        self.handled: dict[str, list[Any]] = {}
        self.active = 0
        self.most_active = 0
        self.failures: list[Any] = []

    def handler(self, label: str) -> Any:
        async def handle(batch: kvqueue.MessageBatch) -> None:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            try:
                await asyncio.sleep(0.02)  # a batch takes a moment, so batches can overlap
                for message in batch.messages:
                    if message.body == "bad":
                        self.failures.append(message.attempts)
                        message.retry()
                    else:
                        self.handled.setdefault(label, []).append(message.body)
            finally:
                self.active -= 1

        return handle

    def bodies(self) -> list[Any]:
        return sorted(b for seen in self.handled.values() for b in seen)


def worker(database: Any, tally: Tally, label: str, **options: Any) -> kvqueue.Worker:
    made = kvqueue.Worker(database, name="shared-worker", **options)
    made.consumer(
        "jobs",
        max_batch_size=4,
        max_batch_timeout=0.05,
        max_retries=1,
        dead_letter_queue="dlq",
        max_concurrency=1,
    )(tally.handler(label))
    return made


async def test_a_worker_consumes_through_the_server_url(served: Served) -> None:
    """A Worker given the server's URL and a token registers its consumer, gets every
    message in batches, and its failures are retried and dead-lettered by the server."""
    account, token = served.token()
    make_jobs(served, account)
    tally = Tally()
    remote = worker(served.url, tally, "remote", token=token)
    task = asyncio.create_task(remote.serve())
    send(served, account, [*range(30), "bad"])
    await wait_until(lambda: len(tally.bodies()) == 30 and len(tally.failures) == 2, within=30)
    with kvqueue.open(str(served.db_path)) as db:
        queues = db.queues_of(account)
        await wait_until(lambda: dead_letters(queues) == 1, within=10)
        consumer = queues.get_consumer("jobs")
        metrics = queues.metrics("jobs")
    remote.stop()
    await task
    assert tally.bodies() == list(range(30))
    assert tally.failures == [1, 2]
    assert tally.most_active == 1
    assert consumer is not None
    assert (consumer.type, consumer.script_name, consumer.batch_size) == (
        "worker",
        "shared-worker",
        4,
    )
    assert (consumer.max_retries, consumer.dead_letter_queue, consumer.max_concurrency) == (
        1,
        "dlq",
        1,
    )
    assert (metrics.backlog_count, metrics.dead_lettered) == (0, 1)


async def test_local_and_remote_workers_share_the_stored_consumer(served: Served) -> None:
    """A Worker on the database file and one through the URL are one consumer: the same
    consumer id, max_concurrency 1 holding across both, every message handled once."""
    account, token = served.token()
    make_jobs(served, account)
    tally = Tally()
    db = await kvqueue.open_async(str(served.db_path))
    try:
        local = worker(db, tally, "local", account=account)
        remote = worker(served.url, tally, "remote", token=token)
        tasks = [asyncio.create_task(w.serve()) for w in (local, remote)]
        send(served, account, list(range(40)))
        await wait_until(lambda: len(tally.bodies()) == 40, within=30)
        consumer = await db.queues_of(account).get_consumer("jobs")
        for w in (local, remote):
            w.stop()
        await asyncio.gather(*tasks)
    finally:
        await db.close()
    assert tally.bodies() == list(range(40))
    assert tally.most_active == 1
    assert consumer is not None
    assert consumer.script_name == "shared-worker"


async def test_a_worker_through_the_url_respects_pause(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Pausing the queue on the server holds a remote worker's deliveries; resuming restarts them."""
    account, token = served.token()
    make_jobs(served, account)
    tally = Tally()
    remote = worker(served.url, tally, "remote", token=token)
    task = asyncio.create_task(remote.serve())
    with kvqueue.open(str(served.db_path)) as db:
        queues = db.queues_of(account)
        queues.pause("jobs")
        queues.queue("jobs").send(1)
        await wait_until(lambda: "delivery is paused" in caplog.text, within=20)
        assert tally.bodies() == []
        assert queues.metrics("jobs").in_flight == 0
        queues.resume("jobs")
    await wait_until(lambda: tally.bodies() == [1], within=20)
    remote.stop()
    await task


def test_kvqueue_worker_command_consumes_through_the_url(served: Served, tmp_path: Path) -> None:
    """`kvqueue worker MODULE:WORKER --db URL` with KVQUEUE_TOKEN handles the queue's
    messages and exits 0 on SIGTERM."""
    account, token = served.token()
    make_jobs(served, account)
    (tmp_path / "remoteapp.py").write_text(
        textwrap.dedent(
            """
            import sys
            import kvqueue

            worker = kvqueue.Worker()

            @worker.consumer("jobs", max_batch_size=10, max_batch_timeout=0.05)
            def handle(batch):
                for message in batch.messages:
                    sys.stdout.write(f"handled {message.body}\\n")
                sys.stdout.flush()
            """
        )
    )
    send(served, account, list(range(5)))
    command = Path(sys.executable).parent / "kvqueue"
    proc = subprocess.Popen(
        [str(command), "worker", "remoteapp:worker", "--db", served.url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "KVQUEUE_TOKEN": token},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert sorted(lines) == sorted(f"handled {i}\n" for i in range(5))
    assert rest == ""  # each message was handled once
    with kvqueue.open(str(served.db_path)) as db:
        assert db.queues_of(account).metrics("jobs").backlog_count == 0

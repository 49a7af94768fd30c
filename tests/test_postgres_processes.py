"""Many processes on one PostgreSQL database, faults included: three `kvqueue serve`
and three `kvqueue worker` processes; one of each is killed with SIGKILL mid-load."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

import kvqueue
from tests.helpers import Spawned
from tests.served import Served, start_server

KVQUEUE = str(Path(sys.executable).parent / "kvqueue")
MAX_CONCURRENCY = 2
PUSHES = 150  # requests of 10 messages each, spread over the servers
LEASE_MS = 2_000

APP = """
import os, sys, time, kvqueue

worker = kvqueue.Worker(kvqueue.open(os.environ["APP_DB"], lease_ms={lease_ms}))

def say(line):
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

@worker.consumer("jobs", max_batch_size=5, max_batch_timeout=0.01,
                 max_concurrency={max_concurrency})
def handle(batch):
    say(f"start {{time.time_ns()}} {{batch.messages[0].id}}")
    time.sleep(0.02)
    for m in batch.messages:
        say(f"handled {{m.body}}")
    say(f"end {{time.time_ns()}} {{batch.messages[0].id}}")
"""


class WorkerProcess(Spawned):
    """`kvqueue worker app:worker`, its stdout collected line by line."""

    def __init__(self, cwd: Path, url: str) -> None:
        super().__init__(
            [KVQUEUE, "worker", "app:worker", "--log-level", "WARNING"],
            cwd=cwd,
            env={"APP_DB": url},
            stderr=subprocess.PIPE,
        )
        self.killed_at: int | None = None

    def handled(self) -> set[int]:
        return {int(line.split()[1]) for line in list(self.lines) if line.startswith("handled ")}

    def kill(self) -> None:
        self.killed_at = time.time_ns()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def finish(self) -> tuple[int, str]:
        """SIGTERM if still running; the exit status and what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(60)
        self._reader.join(10)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        return code, err

    def intervals(self) -> list[tuple[int, int]]:
        """When each batch's handler ran; a batch cut short by the kill ends at the kill."""
        starts: dict[str, int] = {}
        spans: list[tuple[int, int]] = []
        for line in list(self.lines):
            kind, ns, batch = line.split() if line.startswith(("start ", "end ")) else ("", "", "")
            if kind == "start":
                starts[batch] = int(ns)
            elif kind == "end":
                spans.append((starts.pop(batch), int(ns)))
        if self.killed_at is not None:
            spans += [(start, self.killed_at) for start in starts.values()]
        return spans


def _most_at_once(spans: list[tuple[int, int]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_three_servers_and_three_workers_lose_nothing_when_one_of_each_is_killed(
    pg_url: str, tmp_path: Path
) -> None:
    """Pushes spread over 3 servers, consumed by 3 workers with max_concurrency=2; one server
    and one worker get SIGKILL mid-load. Every push answered 200 is handled at least once, and
    no more than 2 batches ever run at once across the processes."""
    (tmp_path / "app.py").write_text(APP.format(lease_ms=LEASE_MS, max_concurrency=MAX_CONCURRENCY))
    with kvqueue.open(pg_url) as db:
        queue_id = db.queues.create("jobs").queue_id
    servers = [start_server(pg_url) for _ in range(3)]
    _, token = servers[0].token("default", "produce")
    workers = [WorkerProcess(tmp_path, pg_url) for _ in range(3)]
    accepted: set[int] = set()
    refused = 0
    lock = threading.Lock()
    numbers = itertools.count()
    done = threading.Event()

    def push(first: Served) -> None:
        nonlocal refused
        order = [first, *(s for s in servers if s is not first)]
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            while not done.is_set():
                with lock:
                    batch = [next(numbers) for _ in range(10)]
                    # However fast the pushes, the load lasts until the killed server
                    # has turned one away (the last worker can take a second to start).
                    if batch[0] >= PUSHES * 10 and refused:
                        return
                for server in order:
                    try:
                        answer = client.post(
                            f"{server.api}/accounts/default/queues/{queue_id}/messages/batch",
                            json={"messages": [{"body": n} for n in batch]},
                        )
                    except httpx.TransportError:
                        with lock:
                            refused += 1
                        continue
                    if answer.status_code == 200:
                        with lock:
                            accepted.update(batch)
                        break

    pushers = [threading.Thread(target=push, args=(s,)) for s in servers]
    try:
        for thread in pushers:
            thread.start()
        deadline = time.monotonic() + 60
        while len(accepted) < PUSHES * 10 // 3 or not workers[0].handled():
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.01)
        servers[0].kill()
        workers[0].kill()
        for thread in pushers:
            thread.join(120)
        deadline = time.monotonic() + 90
        while not accepted <= set().union(*(w.handled() for w in workers)):
            assert time.monotonic() < deadline, "some accepted messages were never handled"
            for worker in workers[1:]:
                assert worker.proc.poll() is None, worker.proc.stderr
            time.sleep(0.05)
    finally:
        done.set()
        for thread in pushers:
            thread.join(30)
        finished = [worker.finish() for worker in workers]
        server_codes = [server.stop() for server in servers[1:]]
    assert [code for code, _ in finished[1:]] == [0, 0], finished
    assert server_codes == [0, 0]
    assert len(accepted) >= PUSHES * 10 * 9 // 10, "most pushes should have been answered"
    assert refused > 0, "the killed server was never tried"
    assert workers[0].handled(), "the killed worker never took part"
    spans = [span for worker in workers for span in worker.intervals()]
    assert _most_at_once(spans) <= MAX_CONCURRENCY
    assert _most_at_once(spans) == MAX_CONCURRENCY, "the bound was never reached: no pressure"

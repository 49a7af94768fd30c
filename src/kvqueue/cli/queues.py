"""``kvqueue queues ...``: wrangler's queue management, on any kvqueue database.

Verbs and flags are wrangler's (``create --delivery-delay-secs``, ``consumer add
--batch-size --message-retries --dead-letter-queue``, ``purge --force``); each
handler calls ``db.queues`` and prints what came back.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import sys
from typing import Any

import orjson

from kvqueue import errors
from kvqueue.cli.common import (
    add_db,
    add_json,
    command,
    count_lines,
    open_database,
    read_lines,
    send_all,
)
from kvqueue.cli.output import Output
from kvqueue.messages import MessageSendRequest, content_type_of, encode_body
from kvqueue.queues import PeekedMessage, QueueInfo


def _info(queue: QueueInfo) -> dict[str, Any]:
    return {
        "name": queue.name,
        "queue_id": queue.queue_id,
        "created_at": queue.created_at,
        "modified_at": queue.modified_at,
        "delivery_delay": queue.delivery_delay,
        "message_retention_period": queue.message_retention_period,
        "delivery_paused": queue.delivery_paused,
        "consumer": None if queue.consumer is None else dataclasses.asdict(queue.consumer),
    }


def _list(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        rows = []
        for queue in db.queues.list():
            metrics = db.queues.metrics(queue.name)
            consumer = queue.consumer.describe() if queue.consumer else ""
            paused = "paused" if queue.delivery_paused else ""
            rows.append([queue.name, queue.queue_id, metrics.backlog_count, consumer, paused])
    out.table(["name", "id", "backlog", "consumer", "delivery"], rows)
    return 0


def _show(out: Output, db: Any, name: str) -> None:
    queue = db.queues.get(name)
    metrics = db.queues.metrics(name)
    fields = _info(queue)
    if not out.as_json:
        fields["consumer"] = queue.consumer.describe() if queue.consumer else "none"
    fields.update(
        backlog_count=metrics.backlog_count,
        backlog_bytes=metrics.backlog_bytes,
        in_flight=metrics.in_flight,
        oldest_message=metrics.oldest_message_timestamp,
        retried=metrics.retried,
        dead_lettered=metrics.dead_lettered,
    )
    out.record(fields)


def _info_command(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        _show(out, db, args.name)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.delivery_delay_secs is not None:
        settings["delivery_delay"] = args.delivery_delay_secs
    if args.message_retention_period_secs is not None:
        settings["message_retention_period"] = args.message_retention_period_secs
    return settings


def _create(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        queue = db.queues.create(args.name, **_settings(args))
    if out.as_json:
        out.json(_info(queue))
    else:
        out.done(f"created queue {queue.name} ({queue.queue_id})")
    return 0


def _update(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        queue = db.queues.update(args.name, **_settings(args))
    if out.as_json:
        out.json(_info(queue))
    else:
        out.done(f"updated queue {queue.name}")
    return 0


def _delete(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.queues.delete(args.name)
    out.done(f"deleted queue {args.name}")
    return 0


def _pause(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.queues.pause(args.name)
    out.done(f"paused delivery of queue {args.name}")
    return 0


def _resume(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.queues.resume(args.name)
    out.done(f"resumed delivery of queue {args.name}")
    return 0


def _export_record(message: PeekedMessage) -> bytes:
    """One exported message, a JSON line: readable bodies as they are, the rest base64."""
    record: dict[str, Any] = {"id": message.id, "content_type": message.content_type}
    raw = message.raw
    if message.content_type == "json" and b"\n" not in raw and _is_json(raw):
        # The stored JSON text itself, so that it comes back byte for byte.
        record["body"] = orjson.Fragment(raw)
    elif message.content_type == "text" and _is_utf8(raw):
        record["body"] = raw.decode("utf-8")
    else:
        record["body_base64"] = base64.b64encode(raw).decode("ascii")
    record["timestamp_ms"] = message.timestamp_ms
    record["attempts"] = message.attempts
    return orjson.dumps(record) + b"\n"


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _export(args: argparse.Namespace, out: Output) -> int:
    to_stdout = args.file == "-"
    if to_stdout and out.as_json:
        raise errors.InvalidOption("--json needs --file PATH: stdout carries the messages")
    count = 0
    with open_database(args) as db:
        total = db.queues.metrics(args.name).backlog_count
        # Opened only once the queue is known to exist: a typo leaves no empty file.
        stream = sys.stdout.buffer if to_stdout else open(args.file, "wb")  # noqa: SIM115
        try:
            with out.progress(f"exporting {args.name}", total) as advance:
                page = db.queues.browse_page(args.name)
                while True:
                    stream.write(b"".join(_export_record(m) for m in page.messages))
                    count += len(page.messages)
                    advance(len(page.messages))
                    if page.cursor is None:
                        break
                    page = db.queues.browse_page(args.name, cursor=page.cursor)
        finally:
            if to_stdout:
                stream.flush()
            else:
                stream.close()
    if out.as_json:
        out.json({"queue": args.name, "file": args.file, "count": count})
    else:
        where = "stdout" if to_stdout else args.file
        out.done(f"exported {count:,} message{'s' if count != 1 else ''} of {args.name} to {where}")
    return 0


def _imported(line: str, number: int) -> MessageSendRequest:
    """The message one exported line describes; InvalidMessage names the line otherwise."""
    try:
        record = orjson.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        content_type = content_type_of(record.get("content_type", "json"))
        if "body_base64" in record:
            raw = base64.b64decode(record["body_base64"], validate=True)
            if content_type == "json":
                body: Any = orjson.loads(raw)
            elif content_type == "text":
                body = raw.decode("utf-8", "surrogatepass")
            else:
                body = raw
        elif "body" in record:
            body = record["body"]
        else:
            raise ValueError("it has neither body nor body_base64")
        encode_body(body, content_type)  # a body that does not fit its type names its line
    except (ValueError, TypeError, errors.InvalidMessage) as exc:
        raise errors.InvalidMessage(f"line {number} is not an exported message: {exc}") from None
    return MessageSendRequest(body, content_type)


def _import(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.queues.get(args.name)  # a missing queue fails before any line is read
        numbered = enumerate(read_lines(args.file), start=1)
        ids = send_all(
            db.queue(args.name),
            (_imported(line, number) for number, line in numbered),
            total=count_lines(args.file),
            label=f"importing into {args.name}",
            out=out,
            delay_seconds=args.delay_secs,
        )
    if out.as_json:
        out.json({"queue": args.name, "count": len(ids), "message_ids": ids})
    else:
        out.done(f"imported {len(ids):,} message{'s' if len(ids) != 1 else ''} into {args.name}")
    return 0


def _purge(args: argparse.Namespace, out: Output) -> int:
    if not args.force:
        if not sys.stdin.isatty():
            raise errors.InvalidOption(
                f"purging deletes every message of {args.name!r}: pass --force to confirm"
            )
        answer = input(f"Delete every message of queue {args.name!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.done("nothing purged")
            return 1
    with open_database(args) as db:
        count = db.queues.metrics(args.name).backlog_count
        # One transaction: there is no count to advance, only time to show.
        with out.working(f"purging {args.name} ({count:,} messages)"):
            db.queues.purge(args.name)
    out.done(f"purged queue {args.name} ({count:,} messages)")
    return 0


# wrangler's consumer flags (as argparse names them) and the Consumer settings they set.
_CONSUMER_FLAGS = {
    "batch_size": "batch_size",
    "batch_timeout": "max_batch_timeout",
    "message_retries": "max_retries",
    "dead_letter_queue": "dead_letter_queue",
    "max_concurrency": "max_concurrency",
    "retry_delay_secs": "retry_delay",
}


def _consumer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags given name (flags a command lacks are skipped)."""
    settings = {
        setting: getattr(args, flag)
        for flag, setting in _CONSUMER_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "visibility_timeout_secs", None) is not None:
        settings["visibility_timeout_ms"] = int(args.visibility_timeout_secs * 1000)
    return settings


def _consumer_add(args: argparse.Namespace, out: Output) -> int:
    settings = {"script_name": args.script_name, **_consumer_settings(args)}
    with open_database(args) as db:
        consumer = db.queues.add_consumer(args.queue, "worker", **settings)
    if out.as_json:
        out.json(dataclasses.asdict(consumer))
    else:
        out.done(f"added consumer {consumer.describe()} to queue {args.queue}")
    return 0


def _consumer_remove(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        consumer = db.queues.get_consumer(args.queue)
        if consumer is None or consumer.type != "worker":
            raise errors.ConsumerNotFound(args.queue)
        if consumer.script_name != args.script_name:
            raise errors.InvalidOption(
                f"queue {args.queue!r} is consumed by {consumer.describe()},"
                f" not worker {args.script_name!r}"
            )
        db.queues.remove_consumer(args.queue)
    out.done(f"removed consumer {args.script_name!r} from queue {args.queue}")
    return 0


def _consumer_list(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        consumer = db.queues.get_consumer(args.queue)
    rows = []
    if consumer is not None:
        rows.append(
            [
                consumer.type,
                consumer.script_name or "",
                consumer.batch_size,
                consumer.max_retries,
                consumer.dead_letter_queue or "",
                consumer.max_concurrency or "",
            ]
        )
    out.table(
        ["type", "script", "batch_size", "max_retries", "dead_letter_queue", "max_concurrency"],
        rows,
    )
    return 0


def _http_add(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        consumer = db.queues.add_consumer(args.queue, "http_pull", **_consumer_settings(args))
    if out.as_json:
        out.json(dataclasses.asdict(consumer))
    else:
        out.done(f"added an HTTP pull consumer to queue {args.queue}")
    return 0


def _http_remove(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        consumer = db.queues.get_consumer(args.queue)
        if consumer is None or consumer.type != "http_pull":
            raise errors.ConsumerNotFound(args.queue)
        db.queues.remove_consumer(args.queue)
    out.done(f"removed the HTTP pull consumer of queue {args.queue}")
    return 0


def _queue_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--delivery-delay-secs", type=int, help="delay every message by this many seconds"
    )
    parser.add_argument(
        "--message-retention-period-secs",
        type=int,
        help="keep unconsumed messages this long (60 .. 1209600)",
    )


def _common(parser: argparse.ArgumentParser, *, json: bool = True) -> None:
    add_db(parser)
    if json:
        add_json(parser)


def add(commands: Any) -> None:
    """Register ``kvqueue queues``."""
    queues = commands.add_parser("queues", help="create, inspect and manage named queues")
    verbs = queues.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = command(verbs, "list", "list the queues", "kvqueue queues list --json")
    _common(p)
    p.set_defaults(run=_list)

    p = command(verbs, "info", "show a queue, its consumer and metrics", "kvqueue queues info jobs")
    p.add_argument("name")
    _common(p)
    p.set_defaults(run=_info_command)

    p = command(
        verbs, "create", "create a queue", "kvqueue queues create jobs --delivery-delay-secs 5"
    )
    p.add_argument("name")
    _queue_settings(p)
    _common(p)
    p.set_defaults(run=_create)

    p = command(
        verbs,
        "update",
        "change a queue's settings",
        "kvqueue queues update jobs --message-retention-period-secs 86400",
    )
    p.add_argument("name")
    _queue_settings(p)
    _common(p)
    p.set_defaults(run=_update)

    for name, summary, run in (
        ("delete", "delete a queue and its messages", _delete),
        ("pause-delivery", "stop delivering a queue's messages (sends still land)", _pause),
        ("resume-delivery", "deliver a paused queue's messages again", _resume),
    ):
        p = command(verbs, name, summary, f"kvqueue queues {name} jobs")
        p.add_argument("name")
        _common(p, json=False)
        p.set_defaults(run=run)

    p = command(
        verbs,
        "export",
        "write every message of a queue as JSON lines, leasing nothing",
        "kvqueue queues export jobs --file jobs.jsonl",
    )
    p.add_argument("name")
    p.add_argument("--file", default="-", help="where to write ('-', the default: stdout)")
    _common(p)
    p.set_defaults(run=_export)

    p = command(
        verbs,
        "import",
        "send the messages of an export to a queue (new ids, attempts from 0)",
        "kvqueue queues import jobs --file jobs.jsonl",
    )
    p.add_argument("name")
    p.add_argument("--file", required=True, help="an export ('-' for stdin)")
    p.add_argument("--delay-secs", type=float, help="deliver after this many seconds")
    _common(p)
    p.set_defaults(run=_import)

    p = command(
        verbs, "purge", "delete every message of a queue", "kvqueue queues purge jobs --force"
    )
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="do not ask (needed when not a terminal)")
    _common(p, json=False)
    p.set_defaults(run=_purge)

    consumer = verbs.add_parser("consumer", help="the queue's consumer (push, or http pull)")
    kinds = consumer.add_subparsers(dest="consumer_verb", required=True, metavar="VERB")
    p = command(
        kinds,
        "add",
        "add a push consumer: the Worker named SCRIPT_NAME handles batches",
        "kvqueue queues consumer add jobs my-worker --batch-size 50 --message-retries 5"
        " --dead-letter-queue jobs-dlq",
    )
    p.add_argument("queue")
    p.add_argument("script_name", metavar="SCRIPT_NAME", help="the kvqueue.Worker's name")
    p.add_argument("--batch-size", type=int, help="messages per batch (1 .. 100, default 10)")
    p.add_argument("--batch-timeout", type=float, help="seconds a batch waits to fill (0 .. 60)")
    p.add_argument("--message-retries", type=int, help="retries before dead-lettering (0 .. 100)")
    p.add_argument("--dead-letter-queue", help="where messages go when retries run out")
    p.add_argument("--max-concurrency", type=int, help="batches at once (1 .. 250)")
    p.add_argument("--retry-delay-secs", type=float, help="seconds before a retry")
    _common(p)
    p.set_defaults(run=_consumer_add)

    p = command(
        kinds, "remove", "remove a push consumer", "kvqueue queues consumer remove jobs my-worker"
    )
    p.add_argument("queue")
    p.add_argument("script_name", metavar="SCRIPT_NAME")
    _common(p, json=False)
    p.set_defaults(run=_consumer_remove)

    p = command(kinds, "list", "show a queue's consumer", "kvqueue queues consumer list jobs")
    p.add_argument("queue")
    _common(p)
    p.set_defaults(run=_consumer_list)

    http = kinds.add_parser("http", help="HTTP pull consumers")
    http_verbs = http.add_subparsers(dest="http_verb", required=True, metavar="VERB")
    p = command(
        http_verbs,
        "add",
        "let clients pull the queue's messages",
        "kvqueue queues consumer http add jobs --visibility-timeout-secs 60",
    )
    p.add_argument("queue")
    p.add_argument("--batch-size", type=int, help="messages per pull (1 .. 100, default 5)")
    p.add_argument("--message-retries", type=int, help="retries before dead-lettering (0 .. 100)")
    p.add_argument("--dead-letter-queue", help="where messages go when retries run out")
    p.add_argument("--visibility-timeout-secs", type=float, help="lease of a pulled message")
    p.add_argument("--retry-delay-secs", type=float, help="seconds before a retry")
    _common(p)
    p.set_defaults(run=_http_add)

    p = command(
        http_verbs,
        "remove",
        "remove the HTTP pull consumer",
        "kvqueue queues consumer http remove jobs",
    )
    p.add_argument("queue")
    _common(p, json=False)
    p.set_defaults(run=_http_remove)

"""``kvqueue send`` and ``kvqueue pull``: put messages on a queue, take them off."""

from __future__ import annotations

import argparse
from typing import Any

from kvqueue import errors
from kvqueue.cli.common import (
    add_db,
    add_json,
    command,
    count_lines,
    open_database,
    parse_value,
    read_lines,
    send_all,
)
from kvqueue.cli.output import Output
from kvqueue.messages import MessageSendRequest


def _message(text: str, content_type: str | None) -> MessageSendRequest:
    if content_type == "text":
        return MessageSendRequest(text, "text")
    if content_type == "json":
        return MessageSendRequest(parse_value(text), "json")
    # Neither named: what parses as JSON is JSON, the rest is text.
    value = parse_value(text)
    if isinstance(value, str) and value == text:
        return MessageSendRequest(text, "text")
    return MessageSendRequest(value, "json")


def _send(args: argparse.Namespace, out: Output) -> int:
    if (args.body is None) == (args.file is None):
        raise errors.InvalidOption("give either a BODY or --file PATH (one message per line)")
    with open_database(args) as db:
        queue = db.queue(args.queue)
        if args.body is not None:
            message = _message(args.body, args.content_type)
            result = queue.send(
                message.body, content_type=message.content_type, delay_seconds=args.delay_secs
            )
            ids: list[str] = list(result.message_ids)
        else:
            ids = send_all(
                queue,
                (_message(line, args.content_type) for line in read_lines(args.file)),
                total=count_lines(args.file),
                label=f"sending to {args.queue}",
                out=out,
                delay_seconds=args.delay_secs,
            )
    if out.as_json:
        out.json({"queue": args.queue, "message_ids": ids})
    else:
        out.done(f"sent {len(ids):,} message{'s' if len(ids) != 1 else ''} to {args.queue}")
    return 0


def _pull(args: argparse.Namespace, out: Output) -> int:
    visibility_ms = (
        None if args.visibility_timeout_secs is None else int(args.visibility_timeout_secs * 1000)
    )
    with open_database(args) as db:
        queue = db.queue(args.queue)
        pulled = queue.pull(args.batch_size, visibility_ms)
        if args.ack and pulled.messages:
            queue.ack(acks=[m.lease_id for m in pulled.messages])
    rows: list[list[Any]] = [
        [m.id, m.attempts, m.content_type, m.body, m.lease_id] for m in pulled.messages
    ]
    out.table(["id", "attempts", "content_type", "body", "lease_id"], rows)
    if not out.as_json:
        what = "acked" if args.ack else "leased; ack them with their lease ids"
        out.done(f"pulled {len(rows)} message{'s' if len(rows) != 1 else ''} ({what})")
    return 0


def add(commands: Any) -> None:
    """Register ``kvqueue send`` and ``kvqueue pull``."""
    p = command(
        commands,
        "send",
        "send a message to a queue, or one per line of a file",
        'kvqueue send jobs \'{"to": "ada"}\'\n  kvqueue send jobs --file messages.jsonl',
    )
    p.add_argument("queue")
    p.add_argument("body", nargs="?", help="JSON, or text (anything that is not JSON)")
    p.add_argument("--file", help="send each non-empty line of this file ('-' for stdin)")
    p.add_argument(
        "--content-type",
        choices=["json", "text"],
        help="how to read bodies (default: JSON if it parses, else text)",
    )
    p.add_argument("--delay-secs", type=float, help="deliver after this many seconds")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_send)

    p = command(
        commands,
        "pull",
        "lease messages from a queue and print them",
        "kvqueue pull jobs --batch-size 10 --ack",
    )
    p.add_argument("queue")
    p.add_argument("--batch-size", type=int, help="messages to pull (1 .. 100, default 5)")
    p.add_argument("--visibility-timeout-secs", type=float, help="how long they stay leased")
    p.add_argument("--ack", action="store_true", help="acknowledge them once printed")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_pull)

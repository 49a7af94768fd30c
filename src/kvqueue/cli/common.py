"""Pieces every command shares: which database, how to open it, help layout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvqueue import limits
from kvqueue.messages import MessageSendRequest, content_type_of, encode_body
from kvqueue.sync import Database, Queue

if TYPE_CHECKING:
    from kvqueue.cli.output import Output

DEFAULT_DB = "kvqueue.sqlite"


def database_url(args: argparse.Namespace) -> str:
    """``--db``, else ``KVQUEUE_DB``, else ``./kvqueue.sqlite``."""
    return str(getattr(args, "db", None) or os.environ.get("KVQUEUE_DB") or DEFAULT_DB)


def open_database(args: argparse.Namespace) -> Database:
    """The database the command works on (a server URL takes ``KVQUEUE_TOKEN``)."""
    from kvqueue.sync import open

    return open(database_url(args), token=os.environ.get("KVQUEUE_TOKEN"))


def add_db(parser: argparse.ArgumentParser) -> None:
    """The ``--db`` option every command that touches a database takes."""
    parser.add_argument(
        "--db",
        help=f"SQLite file, postgresql:// URL or server URL (env KVQUEUE_DB; default {DEFAULT_DB})",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def command(
    group: Any, name: str, summary: str, example: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand whose help ends with an example."""
    return group.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses as JSON, else the text itself.

    ``42`` is a number, ``true`` a boolean, ``{"a": 1}`` an object, ``hello``
    the string ``hello``; ``'"42"'`` is the string ``42``.
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def batches(messages: Iterator[MessageSendRequest]) -> Iterator[list[MessageSendRequest]]:
    """Messages grouped as send_batch takes them: ≤ 100 and ≤ 256,000 body bytes each."""
    batch: list[MessageSendRequest] = []
    size = 0
    for message in messages:
        body = encode_body(message.body, content_type_of(message.content_type))
        if batch and (
            len(batch) == limits.MAX_BATCH_MESSAGES or size + len(body) > limits.MAX_BATCH_BYTES
        ):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += len(body)
    if batch:
        yield batch


def send_all(
    queue: Queue,
    messages: Iterator[MessageSendRequest],
    *,
    total: int | None,
    label: str,
    out: Output,
    delay_seconds: float | None,
) -> list[str]:
    """Send ``messages`` in :func:`batches`, advancing a progress bar; their ids."""
    ids: list[str] = []
    with out.progress(label, total) as advance:
        for batch in batches(messages):
            ids += queue.send_batch(batch, delay_seconds=delay_seconds).message_ids
            advance(len(batch))
    return ids


def read_lines(path: str) -> Iterator[str]:
    """The non-empty lines of a file (``-``: stdin), without their line ends."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for line in stream:
            line = line.rstrip("\n")
            if line.strip():
                yield line
    finally:
        if stream is not sys.stdin:
            stream.close()


def count_lines(path: str) -> int | None:
    """How many lines :func:`read_lines` will yield (None for stdin, which is read once)."""
    if path == "-":
        return None
    with open(path, encoding="utf-8") as stream:
        return sum(1 for line in stream if line.strip())

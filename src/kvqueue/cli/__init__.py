"""The ``kvqueue`` command: queues, messages, KV, tokens, workers and the server.

A thin adapter: it parses arguments, calls the public API and prints the
result (a table, or JSON with ``--json``); an error is one clear line on
stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from kvqueue import errors
from kvqueue.cli import deploy, kv, messages, processes, queues, tokens
from kvqueue.cli.output import Output


def parser() -> argparse.ArgumentParser:
    """The whole command line, every subcommand registered."""
    top = argparse.ArgumentParser(
        prog="kvqueue",
        description="Durable queues and a KV store on SQLite, PostgreSQL or a kvqueue server.",
        epilog="Every command takes --db (a file, a postgresql:// URL or a server URL) or reads"
        " KVQUEUE_DB; `kvqueue COMMAND --help` shows its options and an example.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    queues.add(commands)
    messages.add(commands)
    kv.add(commands)
    tokens.add(commands)
    processes.add(commands)
    deploy.add(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvqueue`` command; returns its exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    out = Output(as_json=getattr(args, "json", False))
    try:
        code: int = args.run(args, out)
    except errors.KvQueueError as exc:
        print(f"kvqueue: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kvqueue: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())

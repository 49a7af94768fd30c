"""The long-running commands and their helper: ``serve``, ``worker``, ``migrate``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from typing import Any

from kvqueue import limits
from kvqueue.cli.common import add_db, command, database_url
from kvqueue.cli.output import Output
from kvqueue.storage import shown
from kvqueue.worker import Worker


def _load_worker(spec: str) -> Worker:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"kvqueue worker: expected MODULE:WORKER, got {spec!r}")
    # Like `python -m`, look in the current directory first.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"kvqueue worker: cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(
                f"kvqueue worker: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(target, Worker):
        raise SystemExit(
            f"kvqueue worker: {spec} is a {type(target).__name__}, not a kvqueue.Worker"
        )
    return target


def _worker(args: argparse.Namespace, out: Output) -> int:
    worker = _load_worker(args.worker)
    if args.db:
        worker.use_database(args.db)
    worker.run()
    return 0


def _serve(args: argparse.Namespace, out: Output) -> int:
    from kvqueue.server import serve
    from kvqueue.sync import open

    path = database_url(args)
    with open(path) as db:
        first_run = not db.tokens.list()
    if first_run:
        out.done(
            "no tokens yet; create one with"
            f" `kvqueue tokens create --account ACCOUNT --db {shown(path)}`"
        )

    def ready(url: str) -> None:
        print(f"kvqueue serving {url} (database {shown(path)})", flush=True)

    serve(path, host=args.host, port=args.port, log_level=args.log_level, on_ready=ready)
    return 0


def _migrate(args: argparse.Namespace, out: Output) -> int:
    from kvqueue.storage import migrate

    path = database_url(args)
    before, after = asyncio.run(migrate(path))
    if before == after:
        print(f"kvqueue: {shown(path)} is up to date (schema version {after})")
    else:
        print(f"kvqueue: migrated {shown(path)} from schema version {before} to {after}")
    return 0


def add(commands: Any) -> None:
    """Register ``kvqueue worker``, ``serve`` and ``migrate``."""
    p = command(
        commands,
        "worker",
        "run a Worker's push consumers until SIGTERM or SIGINT, then finish the batches"
        " in flight and exit 0",
        "kvqueue worker myapp:worker --db postgresql://app@db.internal/app",
    )
    p.add_argument("worker", metavar="MODULE:WORKER", help="e.g. myapp:worker")
    p.add_argument(
        "--db",
        default=os.environ.get("KVQUEUE_DB"),
        help="database to consume (path or URL; env KVQUEUE_DB); default: the Worker's own",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(run=_worker)

    p = command(
        commands,
        "serve",
        "serve a database over HTTP (the Cloudflare Queues REST API) until SIGTERM or"
        " SIGINT, then finish the requests in flight and exit 0",
        "kvqueue serve --db app.sqlite --port 8787",
    )
    add_db(p)
    p.add_argument(
        "--host",
        default=limits.DEFAULT_HOST,
        help=f"address to bind (default {limits.DEFAULT_HOST})",
    )
    p.add_argument(
        "--port", type=int, default=limits.DEFAULT_PORT, help=f"default {limits.DEFAULT_PORT}"
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(run=_serve)

    p = command(
        commands,
        "migrate",
        "create or upgrade the database schema and exit (opening a database migrates it"
        " too; several processes migrating at once is safe)",
        "kvqueue migrate --db postgresql://app@db.internal/app",
    )
    add_db(p)
    p.set_defaults(run=_migrate)

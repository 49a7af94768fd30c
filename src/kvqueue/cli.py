"""The ``kvqueue`` command: ``serve``, ``worker``, ``tokens`` and ``migrate``.

A thin adapter: it parses arguments, calls the public API and turns errors into
one clear line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from kvqueue import errors, limits
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


def _worker(args: argparse.Namespace) -> int:
    worker = _load_worker(args.worker)
    if args.db:
        worker.use_database(args.db)
    worker.run()
    return 0


_DEFAULT_DB = "kvqueue.sqlite"


def _database(args: argparse.Namespace) -> str:
    return str(args.db or os.environ.get("KVQUEUE_DB") or _DEFAULT_DB)


def _serve(args: argparse.Namespace) -> int:
    from kvqueue.server import serve
    from kvqueue.storage import shown
    from kvqueue.sync import open

    path = _database(args)
    with open(path) as db:
        first_run = not db.tokens.list()
    if first_run:
        print(
            "kvqueue: no tokens yet; create one with"
            f" `kvqueue tokens create --account ACCOUNT --db {shown(path)}`",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        print(f"kvqueue serving {url} (database {shown(path)})", flush=True)

    serve(path, host=args.host, port=args.port, log_level=args.log_level, on_ready=ready)
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from kvqueue.sync import open

    with open(_database(args)) as db:
        if args.action == "create":
            token, secret = db.tokens.create(
                args.account, args.scope, queues=args.queue or None, name=args.name
            )
            print(secret)
            where = ", ".join(token.queues) if token.queues else "every queue"
            print(
                f"kvqueue: token {token.id} ({token.scope}) for account {token.account!r},"
                f" {where}; it is shown only now",
                file=sys.stderr,
            )
        elif args.action == "list":
            for token in db.tokens.list(args.account):
                queues = ",".join(token.queues) if token.queues else "*"
                print(f"{token.id}  {token.account}  {token.scope}  {queues}  {token.name}")
        else:
            db.tokens.revoke(args.token_id)
            print(f"kvqueue: token {args.token_id} revoked", file=sys.stderr)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    import asyncio

    from kvqueue.storage import migrate, shown

    path = _database(args)
    before, after = asyncio.run(migrate(path))
    if before == after:
        print(f"kvqueue: {shown(path)} is up to date (schema version {after})")
    else:
        print(f"kvqueue: migrated {shown(path)} from schema version {before} to {after}")
    return 0


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        help=f"SQLite file or postgresql:// URL (env KVQUEUE_DB; default {_DEFAULT_DB})",
    )


def _add_tokens(commands: Any) -> None:
    tokens = commands.add_parser("tokens", help="create, list and revoke the server's tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="create a token and print it (only its hash is kept)",
        description="Create a bearer token for one account and print it once.",
        epilog="example: kvqueue tokens create --account my-account --scope produce --queue jobs",
    )
    create.add_argument("--account", required=True, help="the account the token works for")
    create.add_argument(
        "--scope", default="admin", choices=["admin", "produce", "consume"], help="default admin"
    )
    create.add_argument(
        "--queue", action="append", help="limit the token to this queue (repeatable)"
    )
    create.add_argument("--name", default="", help="a note for people")
    _add_db(create)
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--account", help="only this account's tokens")
    _add_db(listing)
    revoke = actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the 16-hex id that `tokens list` shows")
    _add_db(revoke)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvqueue`` command; returns its exit status."""
    parser = argparse.ArgumentParser(prog="kvqueue", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser(
        "worker",
        help="run a Worker's push consumers until SIGTERM or SIGINT",
        description="Run the push consumers of a kvqueue.Worker until SIGTERM or SIGINT,"
        " then finish the batches in flight and exit 0.",
    )
    worker.add_argument("worker", metavar="MODULE:WORKER", help="e.g. myapp:worker")
    worker.add_argument(
        "--db",
        default=os.environ.get("KVQUEUE_DB"),
        help="database to consume (path or URL; env KVQUEUE_DB); default: the Worker's own",
    )
    worker.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    serve = commands.add_parser(
        "serve",
        help="serve the Cloudflare Queues REST API over a database",
        description="Serve a database over HTTP (the Cloudflare Queues REST API) until"
        " SIGTERM or SIGINT, then finish the requests in flight and exit 0.",
        epilog="example: kvqueue serve --db app.sqlite --port 8787",
    )
    _add_db(serve)
    serve.add_argument(
        "--host",
        default=limits.DEFAULT_HOST,
        help=f"address to bind (default {limits.DEFAULT_HOST})",
    )
    serve.add_argument(
        "--port", type=int, default=limits.DEFAULT_PORT, help=f"default {limits.DEFAULT_PORT}"
    )
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    _add_tokens(commands)
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the database schema, then exit",
        description="Create or upgrade the schema of a database and exit. Opening a"
        " database migrates it too; several processes migrating at once is safe.",
        epilog="example: kvqueue migrate --db postgresql://app@db.internal/app",
    )
    _add_db(migrate)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = {"worker": _worker, "serve": _serve, "tokens": _tokens, "migrate": _migrate}[args.command]
    try:
        return run(args)
    except errors.KvQueueError as exc:
        print(f"kvqueue: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

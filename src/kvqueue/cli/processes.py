"""The long-running commands and their helper: ``serve``, ``worker``, ``migrate``.

``worker`` and ``serve`` read a kvqueue.toml (``--config``, else ``./kvqueue.toml``
if there is one) and deploy it before they start, as ``kvqueue deploy`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from kvqueue import config, errors, limits
from kvqueue.cli.common import DEFAULT_DB, add_db, command, database_url
from kvqueue.cli.deploy import add_config, announce, named_database, open_named, read_config
from kvqueue.cli.output import Output
from kvqueue.storage import shown
from kvqueue.sync import Database
from kvqueue.worker import Worker


def _load_worker(spec: str) -> Worker:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"kvqueue worker: expected MODULE:WORKER, got {spec!r}")
    try:
        target = config.import_object(spec, [os.getcwd()])
    except LookupError as exc:
        raise SystemExit(f"kvqueue worker: {exc}") from exc.__cause__
    if not isinstance(target, Worker):
        raise SystemExit(
            f"kvqueue worker: {spec} is a {type(target).__name__}, not a kvqueue.Worker"
        )
    return target


def _apply(out: Output, declared: config.Config, database: object) -> None:
    """Deploy the file to the database a worker consumes (a path or URL, or an open
    Database) and say what changed."""
    if isinstance(database, str):
        with open_named(database) as db:
            announce(out, declared, config.deploy(db, declared))
    elif isinstance(database, Database):
        announce(out, declared, config.deploy(database, declared))
    else:
        raise errors.InvalidOption(
            f"{declared.path} cannot be applied to a Worker on an AsyncDatabase:"
            " give --db, KVQUEUE_DB or db = in the file"
        )


def _worker(args: argparse.Namespace, out: Output) -> int:
    declared = read_config(args)
    url = named_database(args, declared)
    if args.worker is None:
        if declared is None:
            raise SystemExit(
                "kvqueue worker: give MODULE:WORKER, or a kvqueue.toml that declares"
                f" worker consumers (none at ./{config.DEFAULT_CONFIG}; --config PATH)"
            )
        url = url or DEFAULT_DB
        # Handlers are imported before anything is deployed: a bad one changes nothing.
        worker = config.build_worker(declared, url)
        _apply(out, declared, url)
    else:
        worker = _load_worker(args.worker)
        if declared is not None:
            declared_queues = {c.queue for c in declared.consumers}
            for queue in worker.queues:
                if queue in declared_queues:
                    raise errors.InvalidConfig(
                        str(declared.path),
                        "[[queues.consumers]]",
                        "queue",
                        f"queue {queue!r} has a consumer here and in {args.worker} too;"
                        " declare it in one place",
                    )
        if url:
            worker.use_database(url)
        if declared is not None:
            # Without a database named anywhere, the Worker's own is the one it consumes.
            _apply(out, declared, url or worker._database)
    worker.run()
    return 0


def _serve(args: argparse.Namespace, out: Output) -> int:
    from kvqueue.server import serve
    from kvqueue.sync import open

    declared = read_config(args)
    path = named_database(args, declared) or DEFAULT_DB
    with open(path) as db:
        first_run = not db.tokens.list()
        if declared is not None:
            announce(out, declared, config.deploy(db, declared))
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
        "run a Worker's push consumers (a module's, or the worker consumers of a"
        " kvqueue.toml) until SIGTERM or SIGINT, then finish the batches in flight and exit 0",
        "kvqueue worker myapp:worker --db postgresql://app@db.internal/app\n"
        "  kvqueue worker --config kvqueue.toml      # its [[queues.consumers]] handlers",
    )
    p.add_argument(
        "worker",
        metavar="MODULE:WORKER",
        nargs="?",
        help="e.g. myapp:worker; without it, the Worker the config file declares",
    )
    add_config(p)
    p.add_argument(
        "--db",
        default=os.environ.get("KVQUEUE_DB"),
        help="database to consume (path or URL; env KVQUEUE_DB); default: the config file's"
        f" db, else the Worker's own (a kvqueue.toml's Worker: {DEFAULT_DB})",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(run=_worker)

    p = command(
        commands,
        "serve",
        "serve a database over HTTP (the Cloudflare Queues REST API) until SIGTERM or"
        " SIGINT, then finish the requests in flight and exit 0; the queues and consumers a"
        " kvqueue.toml declares are deployed first",
        "kvqueue serve --db app.sqlite --port 8787",
    )
    add_db(p)
    add_config(p)
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

"""The ``kvqueue`` command. For now: ``kvqueue worker MODULE:WORKER``.

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

from kvqueue import errors
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(_worker(args))
    except errors.KvQueueError as exc:
        print(f"kvqueue: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

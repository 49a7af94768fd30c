"""Pieces every command shares: which database, how to open it, help layout."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from kvqueue.sync import Database

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

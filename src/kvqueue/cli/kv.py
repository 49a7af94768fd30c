"""``kvqueue kv get|set|list|delete``: the KV store from the shell.

A key is given as its parts, one argument each; a part that reads as JSON is
that value (``42`` an int, ``true`` a bool), anything else is a string, and a
JSON string (``'"42"'``) forces a string.
"""

from __future__ import annotations

import argparse
from typing import Any

from kvqueue import errors
from kvqueue.cli.common import add_db, add_json, command, open_database, parse_value
from kvqueue.cli.output import Output


def _key(parts: list[str]) -> tuple[Any, ...]:
    key = tuple(parse_value(part) for part in parts)
    for part in key:
        if isinstance(part, list | dict) or part is None:
            raise errors.InvalidKey(f"a key part is a string, number or boolean, got {part!r}")
    return key


def _get(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        entry = db.get(_key(args.key))
    if entry.versionstamp is None:
        if out.as_json:
            out.json({"key": entry.key, "value": None, "versionstamp": None})
        else:
            out.done(f"no value at {list(entry.key)}")
        return 1
    if out.as_json:
        out.json({"key": entry.key, "value": entry.value, "versionstamp": entry.versionstamp})
    else:
        out.value(entry.value)
    return 0


def _set(args: argparse.Namespace, out: Output) -> int:
    expire_in = None if args.expire_in_secs is None else int(args.expire_in_secs * 1000)
    with open_database(args) as db:
        result = db.set(_key(args.key), parse_value(args.value), expire_in=expire_in)
    if out.as_json:
        out.json({"ok": result.ok, "versionstamp": result.versionstamp})
    else:
        out.done(f"set {list(_key(args.key))} (versionstamp {result.versionstamp})")
    return 0


def _list(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        # No parts is the empty prefix: every key, as Deno's `list({ prefix: [] })`.
        prefix = _key(args.prefix)
        entries = list(db.list(prefix, limit=args.limit, reverse=args.reverse))
    out.table(
        ["key", "value", "versionstamp"],
        [[list(e.key), e.value, e.versionstamp] for e in entries],
    )
    return 0


def _delete(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.delete(_key(args.key))
    out.done(f"deleted {list(_key(args.key))}")
    return 0


def add(commands: Any) -> None:
    """Register ``kvqueue kv``."""
    kv = commands.add_parser("kv", help="read and write the KV store")
    verbs = kv.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = command(verbs, "get", "print the value at a key", "kvqueue kv get users alovelace")
    p.add_argument("key", nargs="+", metavar="PART")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_get)

    p = command(
        verbs,
        "set",
        "write a value at a key",
        'kvqueue kv set users alovelace --value \'{"name": "Ada"}\'',
    )
    p.add_argument("key", nargs="+", metavar="PART")
    p.add_argument("--value", required=True, help="JSON, or text (anything that is not JSON)")
    p.add_argument("--expire-in-secs", type=float, help="delete it after this many seconds")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_set)

    p = command(
        verbs,
        "list",
        "list the keys under a prefix (every key without one)",
        "kvqueue kv list users --limit 10",
    )
    p.add_argument("prefix", nargs="*", metavar="PART")
    p.add_argument("--limit", type=int, help="at most this many entries")
    p.add_argument("--reverse", action="store_true", help="last key first")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_list)

    p = command(verbs, "delete", "delete a key", "kvqueue kv delete users alovelace")
    p.add_argument("key", nargs="+", metavar="PART")
    add_db(p)
    p.set_defaults(run=_delete)

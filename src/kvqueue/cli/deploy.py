"""``kvqueue deploy``: make a database hold what ``kvqueue.toml`` declares.

wrangler's verb: it creates the queues the file names, changes the queue
settings it sets and adds or updates its consumers, and never deletes what the
file does not mention. ``--dry-run`` prints the plan and changes nothing. The
helpers here (which file, which database, applying it) serve ``kvqueue worker``
and ``kvqueue serve`` too.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from kvqueue import config, errors
from kvqueue.cli.common import DEFAULT_DB, add_json, command, open_database
from kvqueue.cli.output import Output

if TYPE_CHECKING:
    from kvqueue.sync import Database


def add_config(parser: argparse.ArgumentParser) -> None:
    """The ``--config`` option of the commands that read a kvqueue.toml."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"queues and consumers to declare (default: ./{config.DEFAULT_CONFIG} if it exists)",
    )


def read_config(args: argparse.Namespace) -> config.Config | None:
    """The file ``--config`` names, else ``./kvqueue.toml`` if there is one, else None."""
    path = config.find(getattr(args, "config", None))
    return None if path is None else config.load(path)


def named_database(args: argparse.Namespace, declared: config.Config | None) -> str | None:
    """``--db``, else ``KVQUEUE_DB``, else the file's ``db``; None if none names one."""
    given = getattr(args, "db", None) or os.environ.get("KVQUEUE_DB")
    if given:
        return str(given)
    return declared.db if declared is not None else None


def open_named(url: str) -> Database:
    """Open ``url`` as every command opens its ``--db`` (a server URL takes ``KVQUEUE_TOKEN``)."""
    return open_database(argparse.Namespace(db=url))


def report(out: Output, changes: list[config.Change], *, dry_run: bool = False) -> None:
    """The plan as a table (or JSON), and a summary on stderr."""
    if out.as_json:
        out.json([_record(change) for change in changes])
    else:
        out.table(
            ["queue", "what", "action", "settings"],
            [[c.queue, c.kind, c.action, c.describe()] for c in changes],
        )
    counts = {action: 0 for action in ("create", "add", "update", "unchanged")}
    for change in changes:
        counts[change.action] += 1
    summary = ", ".join(f"{n} {action}" for action, n in counts.items() if n) or "nothing declared"
    out.done(f"dry run, nothing changed: {summary}" if dry_run else summary)


def _record(change: config.Change) -> dict[str, Any]:
    return {
        "queue": change.queue,
        "kind": change.kind,
        "action": change.action,
        "settings": change.settings,
        "previous": change.previous,
    }


def announce(out: Output, declared: config.Config, changes: list[config.Change]) -> None:
    """What applying the file at start changed, a line each on stderr."""
    done = {"create": "created", "add": "added", "update": "updated"}
    for change in changes:
        if change.changed:
            what = f"queue {change.queue}"
            if change.kind == "consumer":
                what = f"the consumer of {change.queue}"
            detail = change.describe()
            out.done(
                f"{declared.path}: {done[change.action]} {what}"
                + (f" ({detail})" if detail else "")
            )


def _deploy(args: argparse.Namespace, out: Output) -> int:
    declared = read_config(args)
    if declared is None:
        raise errors.InvalidConfig(
            config.DEFAULT_CONFIG, "", None, "no such file here; name one with --config PATH"
        )
    with open_named(named_database(args, declared) or DEFAULT_DB) as db:
        changes = config.deploy(db, declared, dry_run=args.dry_run)
    report(out, changes, dry_run=args.dry_run)
    return 0


def add(commands: Any) -> None:
    """Register ``kvqueue deploy``."""
    p = command(
        commands,
        "deploy",
        "create or update the queues and consumers a kvqueue.toml declares; it never"
        " deletes what the file does not mention, and running it again changes nothing",
        "kvqueue deploy --config kvqueue.toml --db postgresql://app@db.internal/app --dry-run",
    )
    add_config(p)
    p.add_argument(
        "--db",
        help="SQLite file, postgresql:// URL or server URL (env KVQUEUE_DB; else the file's"
        f" db; else {DEFAULT_DB})",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    add_json(p)
    p.set_defaults(run=_deploy)

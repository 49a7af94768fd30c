"""``kvqueue tokens create|list|revoke``: the server's bearer tokens.

On a database file they manage every account's tokens; on a server URL, those of
``KVQUEUE_TOKEN``'s account (which must be an admin token of the whole account).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from kvqueue import errors
from kvqueue.cli.common import add_db, add_json, command, database_url, open_database
from kvqueue.cli.output import Output
from kvqueue.remote.http import is_url
from kvqueue.sync import Database
from kvqueue.tokens import Token


def _account(args: argparse.Namespace, db: Database) -> str:
    """``--account``; on a server, the account of ``KVQUEUE_TOKEN`` if it is not given."""
    if args.account:
        return str(args.account)
    if not is_url(database_url(args)):
        raise errors.InvalidOption(
            "--account is required (only on a server does it default to the token's own)"
        )
    return db.queues.account


def _create(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        token, secret = db.tokens.create(
            _account(args, db), args.scope, queues=args.queue or None, name=args.name
        )
    if out.as_json:
        out.json({"id": token.id, "token": secret, "account": token.account, "scope": token.scope})
        return 0
    print(secret)
    where = ", ".join(token.queues) if token.queues else "every queue"
    out.done(
        f"token {token.id} ({token.scope}) for account {token.account!r}, {where};"
        " it is shown only now"
    )
    return 0


def _list(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        found = db.tokens.list(args.account)
    out.table(
        ["id", "account", "scope", "queues", "name", "created_at"],
        [
            [t.id, t.account, t.scope, ",".join(t.queues or ()) or "*", t.name, _created(t)]
            for t in found
        ],
    )
    return 0


def _created(token: Token) -> datetime:
    return datetime.fromtimestamp(token.created_at_ms / 1000, UTC)


def _revoke(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        db.tokens.revoke(args.token_id)
    out.done(f"token {args.token_id} revoked")
    return 0


def add(commands: Any) -> None:
    """Register ``kvqueue tokens``."""
    tokens = commands.add_parser("tokens", help="create, list and revoke the server's tokens")
    verbs = tokens.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = command(
        verbs,
        "create",
        "create a bearer token for one account and print it once (only its hash is kept)",
        "kvqueue tokens create --account my-account --scope produce --queue jobs",
    )
    p.add_argument(
        "--account",
        help="the account the token works for (on a server: default, KVQUEUE_TOKEN's own)",
    )
    p.add_argument(
        "--scope", default="admin", choices=["admin", "produce", "consume"], help="default admin"
    )
    p.add_argument("--queue", action="append", help="limit the token to this queue (repeatable)")
    p.add_argument("--name", default="", help="a note for people")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_create)

    p = command(verbs, "list", "list tokens (never their secrets)", "kvqueue tokens list --json")
    p.add_argument(
        "--account", help="only this account's tokens (on a server, only KVQUEUE_TOKEN's own)"
    )
    add_db(p)
    add_json(p)
    p.set_defaults(run=_list)

    p = command(
        verbs, "revoke", "revoke a token by its id", "kvqueue tokens revoke 3f2a9c0d1e4b5a67"
    )
    p.add_argument("token_id", help="the 16-hex id that `tokens list` shows")
    add_db(p)
    p.set_defaults(run=_revoke)

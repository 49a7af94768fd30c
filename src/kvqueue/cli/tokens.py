"""``kvqueue tokens create|list|revoke``: the server's bearer tokens."""

from __future__ import annotations

import argparse
from typing import Any

from kvqueue.cli.common import add_db, add_json, command, open_database
from kvqueue.cli.output import Output


def _create(args: argparse.Namespace, out: Output) -> int:
    with open_database(args) as db:
        token, secret = db.tokens.create(
            args.account, args.scope, queues=args.queue or None, name=args.name
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
        ["id", "account", "scope", "queues", "name"],
        [[t.id, t.account, t.scope, ",".join(t.queues or ()) or "*", t.name] for t in found],
    )
    return 0


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
    p.add_argument("--account", required=True, help="the account the token works for")
    p.add_argument(
        "--scope", default="admin", choices=["admin", "produce", "consume"], help="default admin"
    )
    p.add_argument("--queue", action="append", help="limit the token to this queue (repeatable)")
    p.add_argument("--name", default="", help="a note for people")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_create)

    p = command(verbs, "list", "list tokens (never their secrets)", "kvqueue tokens list --json")
    p.add_argument("--account", help="only this account's tokens")
    add_db(p)
    add_json(p)
    p.set_defaults(run=_list)

    p = command(
        verbs, "revoke", "revoke a token by its id", "kvqueue tokens revoke 3f2a9c0d1e4b5a67"
    )
    p.add_argument("token_id", help="the 16-hex id that `tokens list` shows")
    add_db(p)
    p.set_defaults(run=_revoke)

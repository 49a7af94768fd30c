"""kvqueue's token extension of the REST API: an account's tokens, managed over HTTP.

Under ``/client/v4/accounts/{account_id}/kvqueue/tokens`` (``docs/http-api.md``):

* ``GET``: the account's tokens, oldest first (never their secrets);
* ``POST {scope?, queues?, name?}``: a new token of the account; the answer carries
  its secret, ``token``, which is never shown again;
* ``GET /{token_id}``: one token of the account;
* ``DELETE /{token_id}``: revoke it.

Managing tokens takes an ``admin`` token of the account that is not limited to some
queues; any token may read its own record (what the remote client's
``db.tokens.authenticate`` asks). A token id of another account is not found, so
ids tell nothing across accounts.

The wire shapes live here too, for the server and for the remote client
(:mod:`kvqueue.remote.tokens`); importing this module needs no server dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvqueue import errors
from kvqueue.server.cloudflare import field
from kvqueue.tokens import Token, check_request

if TYPE_CHECKING:
    from kvqueue.server.app import Call, Endpoint

#: The path of an account's tokens, under ``/client/v4/accounts/{account_id}``.
PATH = "/kvqueue/tokens"


def token_json(token: Token) -> dict[str, Any]:
    """A token as the API shows it (never its secret)."""
    return {
        "id": token.id,
        "account": token.account,
        "scope": token.scope,
        "queues": None if token.queues is None else list(token.queues),
        "name": token.name,
        "created_at_ms": token.created_at_ms,
    }


def token_from_json(shape: dict[str, Any]) -> Token:
    """A token read back (what :func:`token_json` wrote)."""
    queues = shape.get("queues")
    return Token(
        str(shape["id"]),
        str(shape["account"]),
        shape["scope"],
        None if queues is None else tuple(str(q) for q in queues),
        str(shape.get("name", "")),
        int(shape["created_at_ms"]),
    )


def create_request(scope: str, queues: tuple[str, ...] | None, name: str) -> dict[str, Any]:
    """The body of a token creation."""
    return {"scope": scope, "queues": None if queues is None else list(queues), "name": name}


async def _account_token(call: Call) -> Token:
    """The path's token, if it is of the path's account; TokenNotFound otherwise."""
    token_id = call.param("token_id")
    for token in await call.database.tokens.list(call.account):
        if token.id == token_id:
            return token
    raise errors.TokenNotFound(token_id)


async def list_tokens(call: Call) -> Any:
    call.require("admin")
    return [token_json(t) for t in await call.database.tokens.list(call.account)]


async def create_token(call: Call) -> Any:
    call.require("admin")
    scope = field(call.body, "scope", str, "admin")
    queues = field(call.body, "queues", list)
    if queues is not None and not all(isinstance(q, str) for q in queues):
        raise errors.InvalidInput("queues must be an array of queue names")
    name = field(call.body, "name", str, "")
    check_request(call.account, scope, queues, name)
    token, secret = await call.database.tokens.create(call.account, scope, queues=queues, name=name)
    return {**token_json(token), "token": secret}


async def get_token(call: Call) -> Any:
    if call.param("token_id") != call.token.id:
        call.require("admin")
    return token_json(await _account_token(call))


async def revoke_token(call: Call) -> Any:
    call.require("admin")
    await call.database.tokens.revoke((await _account_token(call)).id)
    return None


def endpoints() -> tuple[Endpoint, ...]:
    """The routes of the extension, for the server's route table."""
    from kvqueue.server.app import Endpoint

    return (
        Endpoint("GET", PATH, list_tokens),
        Endpoint("POST", PATH, create_token),
        Endpoint("GET", PATH + "/{token_id}", get_token),
        Endpoint("DELETE", PATH + "/{token_id}", revoke_token),
    )

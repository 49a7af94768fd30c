"""Bearer tokens for the server: each bound to one account, with a scope.

A token reads ``kvq_<id>_<secret>``. Only the secret's SHA-256 is stored, next
to the id; a presented token is looked up by id and its hash compared in
constant time. Secrets are 256 random bits, so a fast hash is enough: there is
nothing to brute-force that a slow one would protect.

Tokens live in the database itself (so every server sharing one database
accepts the same tokens), under keys that begin with the byte 0xFF. No key of
the public KV API encodes to such bytes, so no KV call can read or forge them.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from kvqueue import errors, model
from kvqueue.accounts import check_account
from kvqueue.keys import reserved_key
from kvqueue.messages import check_name

if TYPE_CHECKING:
    from kvqueue.database import AsyncDatabase

Scope = Literal["admin", "produce", "consume"]
#: What each scope may do: ``admin`` everything in its account; ``produce`` send;
#: ``consume`` pull, ack, peek. Every scope may read queue settings and metrics.
SCOPES: tuple[Scope, ...] = ("admin", "produce", "consume")

_PREFIX = reserved_key("token")
_TOKEN_ID_HEX = 16


@dataclass(frozen=True, slots=True)
class Token:
    """A token as stored, without its secret.

    Attributes:
        id: 16 hex characters; part of the token, and what ``revoke`` takes.
        account: the one account the token works for.
        scope: ``admin``, ``produce`` or ``consume``.
        queues: the queues it is limited to, or None for every queue of the account.
        name: a note for people.
        created_at_ms: when it was created (unix ms).
    """

    id: str
    account: str
    scope: Scope
    queues: tuple[str, ...] | None
    name: str
    created_at_ms: int

    def allows(self, scope: Scope | None, queue: str | None = None) -> bool:
        """Whether this token may act with ``scope`` (None: only read) on ``queue``
        (None: on the account as a whole, such as creating or listing queues)."""
        if self.queues is not None and (queue is None and scope is not None):
            return False
        if self.queues is not None and queue is not None and queue not in self.queues:
            return False
        return scope is None or self.scope in ("admin", scope)


def check_request(
    account: str, scope: str, queues: Iterable[str] | None, name: str
) -> tuple[str, ...] | None:
    """Check what a new token asks for (as ``create`` takes it); returns its queues as a
    tuple, or None for every queue.

    Raises:
        InvalidAccount, InvalidOption (unknown scope, no queues, a name that is not a
        string), InvalidQueueName.
    """
    check_account(account)
    if scope not in SCOPES:
        raise errors.InvalidOption(f"a token scope is one of {', '.join(SCOPES)}, got {scope!r}")
    limited = None if queues is None else tuple(check_name(q) for q in queues)
    if limited is not None and not limited:
        raise errors.InvalidOption("a token limited to queues needs at least one queue")
    if not isinstance(name, str):
        raise errors.InvalidOption(f"a token name is a string, got {name!r}")
    return limited


def check_id(token_id: object) -> str:
    """``token_id`` if it has the form of a token id; TokenNotFound otherwise (no token
    has such an id)."""
    if not isinstance(token_id, str) or len(token_id) != _TOKEN_ID_HEX:
        raise errors.TokenNotFound(str(token_id))
    return token_id


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(token_id: str) -> bytes:
    return reserved_key("token", token_id)


def _load(data: bytes) -> tuple[Token, str]:
    raw = orjson.loads(data)
    queues = raw["queues"]
    token = Token(
        raw["id"],
        raw["account"],
        raw["scope"],
        None if queues is None else tuple(queues),
        raw["name"],
        raw["created_at_ms"],
    )
    return token, raw["hash"]


class AsyncTokens:
    """Create, list, revoke and check the server's tokens: ``db.tokens``."""

    def __init__(self, database: AsyncDatabase) -> None:
        self._db = database

    async def create(
        self,
        account: str,
        scope: Scope = "admin",
        *,
        queues: Iterable[str] | None = None,
        name: str = "",
    ) -> tuple[Token, str]:
        """A new token for ``account``; returns it and its secret text, which is
        shown only now (only its hash is stored).

        Raises:
            InvalidAccount, InvalidOption (unknown scope), InvalidQueueName.
        """
        limited = check_request(account, scope, queues, name)
        token = Token(
            secrets.token_hex(_TOKEN_ID_HEX // 2),
            account,
            scope,
            limited,
            name,
            self._db.clock.now_ms(),
        )
        secret = secrets.token_urlsafe(32)
        record = orjson.dumps(
            {
                "id": token.id,
                "account": account,
                "scope": scope,
                "queues": limited,
                "name": name,
                "created_at_ms": token.created_at_ms,
                "hash": _hash(secret),
            }
        )
        mutation = model.Mutation(model.MutationKind.SET, _key(token.id), record)
        await self._db.commit_write(model.AtomicWrite(mutations=(mutation,)))
        return token, f"kvq_{token.id}_{secret}"

    async def list(self, account: str | None = None) -> builtins.list[Token]:
        """Every token (of ``account``, if given), oldest first."""
        (entries,) = await self._db.storage.read(
            [model.ReadRange(_PREFIX, _PREFIX + b"\xff", 100_000)]
        )
        tokens = [_load(entry.value)[0] for entry in entries]
        if account is not None:
            tokens = [t for t in tokens if t.account == account]
        return sorted(tokens, key=lambda t: (t.created_at_ms, t.id))

    async def revoke(self, token_id: str) -> None:
        """Delete a token; requests bearing it fail from now on. Raises TokenNotFound."""
        check_id(token_id)
        (entries,) = await self._db.storage.read([_exact(token_id)])
        if not entries:
            raise errors.TokenNotFound(token_id)
        mutation = model.Mutation(model.MutationKind.DELETE, _key(token_id))
        await self._db.commit_write(model.AtomicWrite(mutations=(mutation,)))

    async def authenticate(self, bearer: str) -> Token:
        """The token whose text is ``bearer``; raises Unauthenticated otherwise."""
        prefix, _, rest = bearer.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != "kvq" or len(token_id) != _TOKEN_ID_HEX or not secret:
            raise errors.Unauthenticated("the bearer token is not a kvqueue token")
        try:
            bytes.fromhex(token_id)
        except ValueError:
            raise errors.Unauthenticated("the bearer token is not a kvqueue token") from None
        (entries,) = await self._db.storage.read([_exact(token_id)])
        # Hash and compare even for an unknown id, so timing tells nothing about ids.
        token, stored = _load(entries[0].value) if entries else (None, _hash(""))
        if not hmac.compare_digest(stored, _hash(secret)) or token is None:
            raise errors.Unauthenticated("the bearer token is not valid (unknown or revoked)")
        return token


def _exact(token_id: str) -> model.ReadRange:
    key = _key(token_id)
    return model.ReadRange(key, key + b"\x00", 1)

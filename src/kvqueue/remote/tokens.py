"""Tokens on a kvqueue server: ``db.tokens`` of a database opened with
``kvqueue.open("http://…")``.

:class:`AsyncRemoteTokens` is the embedded :class:`~kvqueue.tokens.AsyncTokens`
with every method replaced by a call of kvqueue's token extension of the REST API
(:mod:`kvqueue.server.tokens`, ``docs/http-api.md``). The server decides: managing
tokens takes an admin token of the account, and an account sees only its own
tokens. Arguments are checked here first with the embedded API's checks, so that
bad arguments raise what they raise there.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from kvqueue import errors
from kvqueue.accounts import check_account
from kvqueue.remote.http import Server
from kvqueue.server import tokens as wire
from kvqueue.tokens import AsyncTokens, Scope, Token, check_id, check_request


class AsyncRemoteTokens(AsyncTokens):
    """The tokens of one account on a kvqueue server (``db.tokens``).

    Args:
        server: the server's REST API, with the account's token.
        account: that account (``await server.account()``).
    """

    # Deliberately no super().__init__(): there is no local database behind it.
    def __init__(self, server: Server, account: str) -> None:
        self._server = server
        self.account = check_account(account)

    def __repr__(self) -> str:
        return f"<AsyncRemoteTokens of {self.account!r} on {self._server.url}>"

    def _path(self, account: str | None = None) -> str:
        return f"/accounts/{account or self.account}{wire.PATH}"

    async def create(
        self,
        account: str,
        scope: Scope = "admin",
        *,
        queues: Iterable[str] | None = None,
        name: str = "",
    ) -> tuple[Token, str]:
        """A new token for ``account`` (``POST …/kvqueue/tokens``) and its secret text,
        shown only now. Another account than the client's own is refused.

        Raises:
            InvalidAccount, InvalidOption, InvalidQueueName, Forbidden (another account,
            or a token that is not an admin of the whole account).
        """
        limited = check_request(account, scope, queues, name)
        request = wire.create_request(scope, limited, name)
        result = await self._server.call("POST", self._path(account), request)
        return wire.token_from_json(result), str(result["token"])

    async def list(self, account: str | None = None) -> builtins.list[Token]:
        """The tokens of ``account`` (default: the client's own), oldest first
        (``GET …/kvqueue/tokens``). Another account is refused (Forbidden)."""
        if account is not None:
            check_account(account)
        found = await self._server.call("GET", self._path(account))
        return [wire.token_from_json(shape) for shape in found or []]

    async def revoke(self, token_id: str) -> None:
        """Revoke a token of the client's account (``DELETE …/kvqueue/tokens/{id}``);
        requests bearing it fail from now on. Raises TokenNotFound (also for a
        token of another account)."""
        check_id(token_id)
        try:
            await self._server.call("DELETE", f"{self._path()}/{token_id}")
        except errors.TokenNotFound:
            raise errors.TokenNotFound(token_id) from None

    async def authenticate(self, bearer: str) -> Token:
        """The token whose text is ``bearer``, as the server knows it; raises
        Unauthenticated otherwise."""
        if not isinstance(bearer, str) or not bearer.strip():
            raise errors.Unauthenticated("the bearer token is empty")
        # Asked with the bearer itself: any token may read its own record.
        other = Server(self._server.url, bearer.strip())
        try:
            verified = await other.call("GET", "/user/tokens/verify")
            account = str(verified["account"])
            path = f"/accounts/{account}{wire.PATH}/{verified['id']}"
            return wire.token_from_json(await other.call("GET", path))
        finally:
            await other.close()

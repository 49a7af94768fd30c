"""Reaching a kvqueue server over HTTP: its Cloudflare REST API with one bearer token.

Needs the ``remote`` extra (httpx).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kvqueue import errors
from kvqueue.server.cloudflare import error_from_response

_TIMEOUT_SECONDS = 60.0


def is_url(database: object) -> bool:
    """Whether ``database`` names a server rather than a file."""
    return isinstance(database, str) and database.startswith(("http://", "https://"))


class Server:
    """A kvqueue server's REST API, reached with one bearer token.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8787``.
        token: its bearer token (default: env ``KVQUEUE_TOKEN``).
        account: the account to use (default: the token's own).
    """

    def __init__(self, url: str, token: str | None = None, *, account: str | None = None) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise errors.MissingDependency(
                "reaching a kvqueue server needs the remote extra: pip install 'kvqueue[remote]'"
            ) from exc
        token = token or os.environ.get("KVQUEUE_TOKEN")
        if not token:
            raise errors.Unauthenticated(f"{url} needs a token: pass token= or set KVQUEUE_TOKEN")
        self.url = url.rstrip("/")
        self._account = account
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/client/v4",
            headers={"Authorization": f"Bearer {token}"},
            timeout=_TIMEOUT_SECONDS,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def send(self, method: str, url: str, **options: Any) -> Any:
        """One raw request (an ``httpx.Response``); ``url`` may be absolute.

        Raises:
            StorageError: the server cannot be reached.
        """
        import httpx

        try:
            return await self._http.request(method, url, **options)
        except httpx.HTTPError as exc:
            raise errors.StorageError(f"cannot reach {self.url}: {exc}") from exc

    @asynccontextmanager
    async def stream(self, method: str, url: str, **options: Any) -> AsyncIterator[Any]:
        """A streamed response, read inside the ``async with``; transport failures
        while reading become StorageError."""
        import httpx

        try:
            async with self._http.stream(method, url, **options) as response:
                yield response
        except httpx.HTTPError as exc:
            raise errors.StorageError(f"lost the stream from {self.url}: {exc}") from exc

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; returns ``result``, or raises the error the server raised (the
        class its ``x-kvqueue-error`` header names, else the one its code stands for)."""
        import httpx

        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise errors.StorageError(f"cannot reach {self.url}: {exc}") from exc
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            raise errors.StorageError(
                f"{self.url} answered {response.status_code} without a JSON envelope"
            )
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.headers, envelope)
        return envelope.get("result")

    async def account(self) -> str:
        """The account this client works in (asked of the server once if not given)."""
        if self._account is None:
            verified = await self.call("GET", "/user/tokens/verify")
            self._account = str(verified["account"])
        return self._account

    async def queue(self, name: str) -> dict[str, Any]:
        """The Queue object of ``name``; raises QueueNotFound."""
        account = await self.account()
        found = await self.call("GET", f"/accounts/{account}/queues?name={name}")
        for queue in found or []:
            if queue.get("queue_name") == name:
                return dict(queue)
        raise errors.QueueNotFound(name)

    async def queue_path(self, name: str) -> str:
        """The API path of queue ``name``."""
        queue = await self.queue(name)
        return f"/accounts/{await self.account()}/queues/{queue['queue_id']}"

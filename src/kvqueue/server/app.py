"""The ASGI application of ``kvqueue serve``: routing, authentication, errors.

Every route is an :class:`Endpoint`: a method, a path under
``/client/v4/accounts/{account_id}``, the scope it needs and a handler that
takes a :class:`Call` and returns the ``result`` of Cloudflare's envelope.
Authentication, the account check, body parsing and error translation happen
here, once, for every route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kvqueue import errors, limits, model
from kvqueue.accounts import split_name
from kvqueue.database import AsyncDatabase
from kvqueue.queues import AsyncQueues
from kvqueue.server import cloudflare
from kvqueue.tokens import Scope, Token

logger = logging.getLogger("kvqueue.server")

API_ROOT = "/client/v4/accounts/{account_id}"

#: Retrying these statuses cannot help; the Cloudflare SDK would retry 409s otherwise.
_FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 413})


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response (orjson, so raw JSON fragments pass through)."""
    headers = dict(headers or {})
    if status in _FINAL_STATUSES:
        headers["x-should-retry"] = "false"
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def error_response(exc: errors.KvQueueError, status: int | None = None) -> Response:
    """Cloudflare's error envelope with the error's status (or ``status``) and code, and
    the header naming the error's class (kvqueue's extension)."""
    return json_response(
        cloudflare.error_envelope(exc), status or exc.status, cloudflare.error_headers(exc)
    )


class QueueIds:
    """Finds a queue by its 32-hex id. Ids never change and never come back, so the
    id-to-name map is cached; a cached name is confirmed against the stored id on
    every use, and a miss reads the queue list again."""

    def __init__(self, database: AsyncDatabase) -> None:
        self._db = database
        self._names: dict[str, str] = {}

    async def record(self, account: str, queue_id: str) -> model.QueueRecord:
        """The record of ``account``'s queue ``queue_id``; QueueNotFound otherwise
        (also for another account's queue, so ids tell nothing across accounts)."""
        storage = self._db.storage
        stored = self._names.get(queue_id)
        if stored is not None:
            records = await storage.queues([stored])
            if records and records[0].queue_id == queue_id:
                return self._mine(account, queue_id, records[0])
        records = await storage.queues(None)
        self._names = {r.queue_id: r.name for r in records}
        for record in records:
            if record.queue_id == queue_id:
                return self._mine(account, queue_id, record)
        raise errors.QueueNotFound(queue_id)

    @staticmethod
    def _mine(account: str, queue_id: str, record: model.QueueRecord) -> model.QueueRecord:
        owner, name = split_name(record.name)
        if owner != account or name.startswith("~"):
            raise errors.QueueNotFound(queue_id)
        return record


@dataclass(slots=True)
class Call:
    """One authenticated request, as a handler sees it."""

    request: Request
    token: Token
    account: str
    queues: AsyncQueues
    body: dict[str, Any]
    database: AsyncDatabase
    ids: QueueIds

    def param(self, name: str) -> str:
        """A path parameter."""
        value: str = self.request.path_params[name]
        return value

    async def queue(self, scope: Scope | None) -> model.QueueRecord:
        """The queue named by the path's ``queue_id``, if the token may act on it with
        ``scope`` (None: read). A queue the token may not see at all is not found."""
        record = await self.ids.record(self.account, self.param("queue_id"))
        name = split_name(record.name)[1]
        if not self.token.allows(None, name):
            raise errors.QueueNotFound(self.param("queue_id"))
        if not self.token.allows(scope, name):
            raise errors.Forbidden(f"this token's scope ({self.token.scope}) does not allow this")
        return record

    async def queue_name(self, scope: Scope | None) -> str:
        """The name of the path's queue, checked as :meth:`queue` does."""
        return split_name((await self.queue(scope)).name)[1]

    def require(self, scope: Scope) -> None:
        """Raise Forbidden unless the token may act on the whole account with ``scope``."""
        if not self.token.allows(scope):
            raise errors.Forbidden(
                f"this token ({self.token.scope}"
                f"{', limited to some queues' if self.token.queues else ''}) does not allow this"
            )


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route of the API."""

    method: str
    path: str
    handler: Handler


def bearer(request: Request) -> str:
    """The request's bearer token; Unauthenticated if it has none."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise errors.Unauthenticated()
    return value.strip()


async def read_body(request: Request) -> bytes:
    """The request body, refused past ``limits.MAX_REQUEST_BYTES``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.MAX_REQUEST_BYTES:
        raise errors.RequestTooLarge("MAX_REQUEST_BYTES", limits.MAX_REQUEST_BYTES, int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.MAX_REQUEST_BYTES:
            raise errors.RequestTooLarge("MAX_REQUEST_BYTES", limits.MAX_REQUEST_BYTES, size)
        chunks.append(chunk)
    return b"".join(chunks)


def _route(endpoint: Endpoint) -> Route:
    async def run(request: Request) -> Response:
        database: AsyncDatabase = request.app.state.database
        try:
            token = await database.tokens.authenticate(bearer(request))
            account = request.path_params.get("account_id", token.account)
            if token.account != account:
                raise errors.Forbidden("this token is for another account")
            raw = await read_body(request) if request.method in ("POST", "PUT", "PATCH") else b""
            call = Call(
                request,
                token,
                account,
                database.queues_of(account),
                cloudflare.parse_body(raw),
                database,
                request.app.state.queue_ids,
            )
            result = await endpoint.handler(call)
        except errors.KvQueueError as exc:
            return error_response(exc)
        except Exception:
            logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(errors.KvQueueError("internal error; see the server log"))
        if isinstance(result, Response):
            return result
        return json_response(cloudflare.envelope(result))

    return Route(_full_path(endpoint.path), run, methods=[endpoint.method])


def _full_path(path: str) -> str:
    # Paths are under an account, but for the few outside one (token verification).
    return path if path.startswith("/client/") else API_ROOT + path


def _routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    # Starlette answers 405 only when one Route has the path, so group by path.
    by_path: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_path.setdefault(endpoint.path, []).append(endpoint)
    routes = []
    for path, group in by_path.items():
        handlers = {e.method: _route(e) for e in group}

        async def dispatch(request: Request, handlers: dict[str, Route] = handlers) -> Response:
            # Starlette lets HEAD through wherever GET is allowed; answer it as GET.
            route = handlers["GET" if request.method == "HEAD" else request.method]
            response: Response = await route.endpoint(request)
            return response

        routes.append(Route(_full_path(path), dispatch, methods=list(handlers)))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(errors.MethodNotAllowed(f"{request.method} is not allowed here"))
    if exc.status_code == 404:
        return error_response(errors.RouteNotFound(f"no route for {request.url.path}"))
    return error_response(errors.InvalidInput(exc.detail or "bad request"), exc.status_code)


def create_app(
    database: AsyncDatabase | Callable[[], Awaitable[AsyncDatabase]],
    endpoints: Sequence[Endpoint] | None = None,
) -> Starlette:
    """The server's ASGI app over ``database`` (or a function opening it at startup,
    which the app then closes at shutdown)."""
    from kvqueue.server.kv import Keyspaces, routes

    if endpoints is None:
        from kvqueue.server import tokens
        from kvqueue.server.routes import ENDPOINTS

        endpoints = (*ENDPOINTS, *tokens.endpoints())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = not isinstance(database, AsyncDatabase)
        db = database if isinstance(database, AsyncDatabase) else await database()
        app.state.database = db
        app.state.queue_ids = QueueIds(db)
        app.state.keyspaces = Keyspaces(db)
        try:
            yield
        finally:
            if owned:
                await db.close()

    app = Starlette(
        routes=[*_routes(endpoints), *routes()],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    # Set when the server starts shutting down: long-lived streams (watch) end then.
    app.state.stopping = asyncio.Event()
    return app

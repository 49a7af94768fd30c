"""KV Connect on ``kvqueue serve``: Deno's remote KV protocol, per account.

``POST /`` is the metadata exchange (JSON); the data path lives under ``/kv``:
``snapshot_read``, ``atomic_write`` and ``watch`` (protobuf, :mod:`.kvconnect`),
plus kvqueue's extension for consuming the KV queue, ``queue/lease`` and
``queue/extend`` (settlements ride in ``atomic_write``). A token's account has
its own keyspace and KV queue (:func:`kvqueue.accounts.kv_prefix`), so no key
of one account is reachable from another's token.

Errors are plain text with a 4xx status, as Deno's clients expect; the header
``x-kvqueue-error`` names kvqueue's error class so the Python client raises the
same exception a local database would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from kvqueue import errors
from kvqueue.database import AsyncDatabase
from kvqueue.server import kvconnect
from kvqueue.server.app import bearer, read_body
from kvqueue.server.keyspace import Keyspace
from kvqueue.tokens import Scope, Token

#: Where the data path lives; the metadata answer points clients here.
DATA_PATH = "/kv"
# Deno's denokv server pings an idle watch stream every 5 s.
_KEEPALIVE_S = 5.0
_METADATA_LIFETIME = timedelta(days=1)
_NAMESPACE = uuid.UUID("5f0c1f52-6d7a-4c55-9a1e-6b7651756575")


def database_id(account: str) -> str:
    """The KV Connect database id of ``account``: the same on every server sharing
    the database, so a client may reconnect to any of them."""
    return str(uuid.uuid5(_NAMESPACE, account))


def _failure(exc: errors.KvQueueError) -> Response:
    headers = {"x-kvqueue-error": type(exc).__name__}
    return Response(str(exc), status_code=exc.status, media_type="text/plain", headers=headers)


async def _token(request: Request) -> Token:
    database: AsyncDatabase = request.app.state.database
    token = await database.tokens.authenticate(bearer(request))
    if token.queues is not None:
        raise errors.Forbidden("KV Connect needs a token for the whole account, not some queues")
    return token


async def metadata(request: Request) -> Response:
    """The metadata exchange: the newest protocol version both sides speak, the
    account's database id, and where the data path is."""
    try:
        token = await _token(request)
        try:
            offered = orjson.loads(await read_body(request) or b"null")["supportedVersions"]
            versions = {v for v in offered if isinstance(v, int) and not isinstance(v, bool)}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise errors.InvalidInput(
                'the body must be JSON: {"supportedVersions": [1, 2, 3]}'
            ) from exc
        common = versions.intersection(kvconnect.VERSIONS)
        if not common:
            raise errors.InvalidInput(
                f"no protocol version in common: this server speaks {list(kvconnect.VERSIONS)}"
            )
    except errors.KvQueueError as exc:
        return _failure(exc)
    version = max(common)
    # Version 1 clients need an absolute endpoint; later ones resolve it against this URL.
    endpoint = DATA_PATH if version > 1 else str(request.base_url).rstrip("/") + DATA_PATH
    expires = datetime.now(UTC) + _METADATA_LIFETIME
    body = {
        "version": version,
        "databaseId": database_id(token.account),
        "endpoints": [{"url": endpoint, "consistency": "strong"}],
        "token": bearer(request),
        "expiresAt": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _checked_version(request: Request, account: str) -> None:
    headers = request.headers
    version = headers.get("x-denokv-version")
    if version is None:
        claimed = headers.get("x-transaction-domain-id")  # version 1
    elif version in ("2", "3"):
        claimed = headers.get("x-denokv-database-id")
    else:
        raise errors.InvalidInput(f"unsupported x-denokv-version {version!r}; use 2 or 3")
    if claimed is None:
        raise errors.InvalidInput("missing database id header (x-denokv-database-id)")
    if not hmac.compare_digest(claimed.lower(), database_id(account)):
        raise errors.InvalidInput("this token's database has another id")


DataHandler = Callable[[Request, Keyspace, Token, bytes], Awaitable[Response]]


def _data_route(path: str, handler: DataHandler) -> Route:
    async def run(request: Request) -> Response:
        try:
            token = await _token(request)
            _checked_version(request, token.account)
            body = await read_body(request)
            keyspace = request.app.state.keyspaces.get(token.account)
            return await handler(request, keyspace, token, body)
        except errors.KvQueueError as exc:
            return _failure(exc)

    return Route(DATA_PATH + path, run, methods=["POST"])


def _require(token: Token, scope: Scope, queue: str | None = None) -> None:
    if not token.allows(scope, queue):
        raise errors.Forbidden(f"this token's scope ({token.scope}) does not allow this")


async def snapshot_read(
    request: Request, keyspace: Keyspace, token: Token, body: bytes
) -> Response:
    """Read every range from one snapshot."""
    read = kvconnect.parse(kvconnect.SnapshotRead, body)
    answer = kvconnect.SnapshotReadOutput(
        read_is_strongly_consistent=True, status=kvconnect.SR_SUCCESS
    )
    for page in await keyspace.read(read.ranges):
        answer.ranges.add().values.extend(page)
    return Response(answer.SerializeToString(), media_type=kvconnect.PROTOBUF)


async def atomic_write(request: Request, keyspace: Keyspace, token: Token, body: bytes) -> Response:
    """Commit checks, mutations, enqueues (and kvqueue's settlements) together."""
    message = kvconnect.parse(kvconnect.AtomicWrite, body)
    write, queues = keyspace.write(message)
    if write.mutations or write.checks:
        _require(token, "admin")
    if write.settlements or write.lease_checks:
        _require(token, "consume")
    if any(e.queue == keyspace.kv_queue for e in write.enqueues):
        _require(token, "produce")
    for queue in queues:
        _require(token, "produce", queue)
    committed = await keyspace.commit(write)
    if committed is None:
        answer = kvconnect.AtomicWriteOutput(status=kvconnect.AW_CHECK_FAILURE)
    else:
        answer = kvconnect.AtomicWriteOutput(
            status=kvconnect.AW_SUCCESS, versionstamp=committed.versionstamp
        )
    return Response(answer.SerializeToString(), media_type=kvconnect.PROTOBUF)


async def watch(request: Request, keyspace: Keyspace, token: Token, body: bytes) -> Response:
    """A stream of frames: every key at once, then the keys that changed; an empty
    frame every 5 s while nothing does."""
    wanted = kvconnect.parse(kvconnect.Watch, body)
    changes = keyspace.watch([k.key for k in wanted.keys])
    stopping: asyncio.Event = request.app.state.stopping
    return StreamingResponse(
        _frames(changes, stopping),
        media_type=kvconnect.STREAM,
        headers={"cache-control": "no-store"},
    )


async def _frames(
    changes: AsyncGenerator[Any, None], stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    following: asyncio.Future[Any] | None = None
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            if following is None:
                following = asyncio.ensure_future(anext(changes))
            done, _ = await asyncio.wait(
                {following, stop}, timeout=_KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if stop in done:
                return
            if following not in done:
                yield kvconnect.frame(None)
                continue
            try:
                output = following.result()
            except (StopAsyncIteration, errors.DatabaseClosed):
                return
            following = None
            yield kvconnect.frame(output)
    finally:
        stop.cancel()
        if following is not None:
            # The generator cannot be closed while its step is still running.
            following.cancel()
            with contextlib.suppress(BaseException):
                await following
        await changes.aclose()


async def queue_lease(request: Request, keyspace: Keyspace, token: Token, body: bytes) -> Response:
    """kvqueue's extension: lease messages of the account's KV queue."""
    _require(token, "consume")
    asked = kvconnect.parse(kvconnect.QueueLease, body)
    messages = await keyspace.lease(asked)
    answer = kvconnect.QueueLeaseOutput()
    answer.messages.extend(messages)
    return Response(answer.SerializeToString(), media_type=kvconnect.PROTOBUF)


async def queue_extend(request: Request, keyspace: Keyspace, token: Token, body: bytes) -> Response:
    """kvqueue's extension: renew leases on KV-queue messages."""
    _require(token, "consume")
    asked = kvconnect.parse(kvconnect.QueueExtend, body)
    kept = await keyspace.extend(asked)
    return Response(
        kvconnect.QueueExtendOutput(message_ids=sorted(kept)).SerializeToString(),
        media_type=kvconnect.PROTOBUF,
    )


class Keyspaces:
    """One :class:`Keyspace` per account, made on first use."""

    def __init__(self, database: AsyncDatabase) -> None:
        self._database = database
        self._by_account: dict[str, Keyspace] = {}

    def get(self, account: str) -> Keyspace:
        """The keyspace of ``account``."""
        found = self._by_account.get(account)
        if found is None:
            found = self._by_account[account] = Keyspace(self._database, account)
        return found


def routes() -> list[Route]:
    """The KV Connect routes of the server."""
    return [
        Route("/", metadata, methods=["POST"]),
        _data_route("/snapshot_read", snapshot_read),
        _data_route("/atomic_write", atomic_write),
        _data_route("/watch", watch),
        _data_route("/queue/lease", queue_lease),
        _data_route("/queue/extend", queue_extend),
    ]

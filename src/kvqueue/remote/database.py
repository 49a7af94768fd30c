"""``kvqueue.open("http://…", token=…)``: a whole AsyncDatabase on a kvqueue server.

KV reads, writes, watches and the KV queue go over KV Connect (Deno's protocol,
plus kvqueue's lease extension for the KV queue: :mod:`kvqueue.remote.kv`);
named queues go over the Cloudflare REST API (:mod:`kvqueue.remote.queues`);
``db.tokens`` over kvqueue's token extension of it (:mod:`kvqueue.remote.tokens`).
The semantics (retries, backoff, dead-lettering, limits) are the server's: the
client only encodes, calls and decodes.
"""

from __future__ import annotations

import os

from kvqueue import errors, limits
from kvqueue.clock import Clock
from kvqueue.database import AsyncDatabase
from kvqueue.remote.http import Server


async def connect(
    url: str,
    *,
    token: str | None = None,
    clock: Clock | None = None,
    kv_queue_backlog: int = limits.DEFAULT_KV_QUEUE_BACKLOG,
    lease_ms: int = limits.DEFAULT_LEASE_MS,
) -> AsyncDatabase:
    """Open the database of ``token``'s account on the server at ``url``.

    Raises:
        Unauthenticated: no token, or the server refused it.
        StorageError: the server cannot be reached.
        MissingDependency: the ``remote`` extra is not installed.
    """
    from kvqueue.remote.kv import KvConnectStorage
    from kvqueue.remote.queues import AsyncRemoteQueues
    from kvqueue.remote.tokens import AsyncRemoteTokens

    token = token or os.environ.get("KVQUEUE_TOKEN")
    if not token:
        raise errors.Unauthenticated(f"{url} needs a token: pass token= or set KVQUEUE_TOKEN")
    server = Server(url, token)
    try:
        account = await server.account()
    except BaseException:
        await server.close()
        raise
    storage = KvConnectStorage(server, clock)
    try:
        return AsyncDatabase(
            storage,
            kv_queue_backlog=kv_queue_backlog,
            lease_ms=lease_ms,
            queues=AsyncRemoteQueues(server, account),
            tokens=AsyncRemoteTokens(server, account),
            server=server,
        )
    except BaseException:
        await storage.close()  # closes the server's connections too
        raise

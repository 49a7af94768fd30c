"""``kvqueue serve``: the Cloudflare Queues REST API over a kvqueue database.

One process, one port, on uvicorn (uvloop and httptools) with Starlette. The same
port also speaks HTTP/2 cleartext to clients that open with the HTTP/2 preface
(h2c with prior knowledge, as the Deno CLI does): see :mod:`kvqueue.server.h2c`.
Needs the ``server`` extra: ``pip install 'kvqueue[server]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kvqueue import errors, limits

if TYPE_CHECKING:
    from kvqueue.database import AsyncDatabase

logger = logging.getLogger("kvqueue.server")

# How long SIGTERM waits for requests in flight before closing the database anyway.
_GRACEFUL_SHUTDOWN_SECONDS = 30


def serve(
    db: str = "kvqueue.sqlite",
    *,
    host: str = limits.DEFAULT_HOST,
    port: int = limits.DEFAULT_PORT,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``db`` until SIGTERM or SIGINT; then finish the requests in flight,
    close the database and return.

    ``on_ready`` is called with the server's base URL once it accepts connections.
    """
    try:
        import uvicorn
        import uvloop

        from kvqueue.server.h2c import SniffingProtocol
    except ImportError as exc:
        raise errors.MissingDependency(
            "kvqueue serve needs the server extra: pip install 'kvqueue[server]'"
        ) from exc
    from kvqueue.database import open_async
    from kvqueue.server.app import create_app

    async def open_database() -> AsyncDatabase:
        return await open_async(db)

    app = create_app(open_database)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # HTTP/1.1 on httptools as before; connections that open with the HTTP/2
        # preface go to h2 instead.
        http=SniffingProtocol,
        lifespan="on",
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                # uvicorn raises SIGTERM again after its graceful shutdown, which
                # would end the process with -15; a drained server exits 0 instead.
                getattr(self, "_captured_signals", []).clear()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # Watch streams never finish by themselves; end them before draining.
            app.state.stopping.set()
            await super().shutdown(sockets)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and on_ready is not None:
                bound = self.servers[0].sockets[0].getsockname()
                on_ready(f"http://{bound[0]}:{bound[1]}")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(Server(config).serve())

"""A kvqueue server inside the test process, on its own thread and event loop.

The conformance suite's ``remote`` backend runs against it: the database behind
it is a real SQLite file (sharing the test's FakeClock when there is one), the
app is the real ASGI app on uvicorn, and the client talks to it over a real
socket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn

import kvqueue
from kvqueue.clock import Clock
from kvqueue.server.app import create_app

_START_SECONDS = 20

#: The servers running now, by URL, so a test can reach the database behind one.
_RUNNING: dict[str, ServerThread] = {}


class Requests:
    """What a server was asked over its Cloudflare REST API (``/client/v4/…``): each
    request's method and path, and how many messages each pull answered with."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []
        self.pulled: list[int] = []

    def wrap(self, app: Any) -> Any:
        """``app``, noting every REST request it answers."""

        async def noted(scope: Any, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if scope["type"] != "http" or not path.startswith("/client/v4/"):
                await app(scope, receive, send)
                return
            self.made.append((scope["method"], path))
            if not path.endswith("/messages/pull"):
                await app(scope, receive, send)
                return
            body: list[bytes] = []

            async def reading(message: Any) -> None:
                if message["type"] == "http.response.body":
                    body.append(message.get("body", b""))
                    if not message.get("more_body"):
                        result = orjson.loads(b"".join(body)).get("result") or {}
                        self.pulled.append(len(result.get("messages") or []))
                await send(message)

            await app(scope, receive, reading)

        return noted


class ServerThread:
    """``kvqueue serve`` on a thread: its URL, tokens of one account, and a note of the
    REST requests it answered."""

    def __init__(self, db_path: Path, clock: Clock | None = None) -> None:
        self.db_path = db_path
        self.account = f"acc{secrets.token_hex(4)}"
        self._clock = clock
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._database: kvqueue.AsyncDatabase | None = None
        self._app: Any = None
        self.requests = Requests()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, name="kvqueue-test-server", daemon=True)

    def start(self) -> ServerThread:
        """Start serving; return once connections are accepted."""
        self._thread.start()
        if not self._ready.wait(_START_SECONDS) or self._failure is not None:
            # Startup failed or hung: serve() raised, or never reached startup().
            raise RuntimeError(f"the test server did not start: {self._failure!r}")
        return self

    def token(self, scope: str = "admin") -> str:
        """A new token of this server's account."""
        assert self._loop is not None
        assert self._database is not None
        tokens = self._database.tokens
        future = asyncio.run_coroutine_threadsafe(
            tokens.create(self.account, scope),  # type: ignore[arg-type]
            self._loop,
        )
        return future.result(_START_SECONDS)[1]

    @property
    def storage(self) -> Any:
        """The served database's storage (for tests that inject a store failure)."""
        assert self._database is not None, "the server is not running"
        return self._database.storage

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start()
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._database = await kvqueue.open_async(str(self.db_path), clock=self._clock)
        app = create_app(self._database)
        config = uvicorn.Config(
            self.requests.wrap(app),
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._app = app
        ready = self._ready

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                ready.set()

        self._server = Server(config)
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            await self._database.close()

    def stop(self) -> None:
        """Stop serving and close the database."""
        if self._server is not None and self._loop is not None:
            self._server.should_exit = True
            self._loop.call_soon_threadsafe(self._app.state.stopping.set)
        self._thread.join(_START_SECONDS)
        self._socket.close()


@contextlib.contextmanager
def running_server(db_path: Path, clock: Clock | None = None) -> Iterator[ServerThread]:
    """A started :class:`ServerThread`, stopped on exit."""
    server = ServerThread(db_path, clock).start()
    _RUNNING[server.url] = server
    try:
        yield server
    finally:
        del _RUNNING[server.url]
        server.stop()


def served(url: str) -> ServerThread:
    """The running server at ``url`` (see :func:`running_server`)."""
    return _RUNNING[url]

"""HTTP/2 cleartext with prior knowledge (h2c, as the Deno CLI speaks it) on the port of
`kvqueue serve`, beside HTTP/1.1: real sockets, httpx's HTTP/2 client and a raw h2 client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import uvicorn

from kvqueue.server.h2c import PREFACE, SniffingProtocol
from tests.served import Served, start_server

#: The flow-control window both sides start with (RFC 9113 §6.9.2): bodies beyond it
#: only get through if WINDOW_UPDATEs are sent and honoured.
DEFAULT_WINDOW = 65_535
#: Bound on every single wait of these tests.
WAIT = 10.0

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("h2c") / "db.sqlite")
    yield server
    assert server.stop() == 0


class Account:
    """A fresh account with an admin token on ``served``."""

    def __init__(self, served: Served) -> None:
        self.id, token = served.token()
        self.base = f"{served.api}/accounts/{self.id}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def client(self, *, http2: bool, **options: Any) -> httpx.AsyncClient:
        """An async client speaking h2c with prior knowledge (``http2``) or HTTP/1.1."""
        return httpx.AsyncClient(
            base_url=self.base,
            headers=self.headers,
            http1=not http2,
            http2=http2,
            timeout=WAIT,
            **options,
        )

    def sync_client(self, *, http2: bool) -> httpx.Client:
        """A blocking client, as :meth:`client`."""
        return httpx.Client(
            base_url=self.base, headers=self.headers, http1=not http2, http2=http2, timeout=WAIT
        )


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection a response came over."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


async def test_the_api_works_over_h2c_and_http11_on_one_port_at_once(served: Served) -> None:
    """Create, push and pull work over h2c (answered as HTTP/2) while an HTTP/1.1 client uses the same port at the same time."""
    acc = Account(served)
    async with acc.client(http2=True) as h2c, acc.client(http2=False) as h1:
        created = await h2c.post("/queues", json={"queue_name": "both"})
        assert created.status_code == 200, created.text
        assert created.http_version == "HTTP/2"
        queue_id = created.json()["result"]["queue_id"]
        pushes = [
            client.post(f"/queues/{queue_id}/messages", json={"body": f"{name} {n}"})
            for n in range(10)
            for name, client in (("h2", h2c), ("h1", h1))
        ]
        answers = await asyncio.gather(*pushes)
        assert [a.status_code for a in answers] == [200] * 20
        assert {a.http_version for a in answers[0::2]} == {"HTTP/2"}
        assert {a.http_version for a in answers[1::2]} == {"HTTP/1.1"}
        pulled = await h2c.post(f"/queues/{queue_id}/messages/pull", json={"batch_size": 100})
        assert pulled.http_version == "HTTP/2"
        assert len(pulled.json()["result"]["messages"]) == 20
        listed = await h1.get("/queues")
        assert listed.http_version == "HTTP/1.1"
        assert [q["queue_name"] for q in listed.json()["result"]] == ["both"]


async def test_fifty_concurrent_requests_share_one_h2c_connection(served: Served) -> None:
    """Fifty pushes at once over a single h2c connection all succeed, as concurrent streams."""
    acc = Account(served)
    async with acc.client(http2=True, limits=httpx.Limits(max_connections=1)) as h2c:
        created = await h2c.post("/queues", json={"queue_name": "fifty"})
        queue_id = created.json()["result"]["queue_id"]
        answers = await asyncio.gather(
            *(h2c.post(f"/queues/{queue_id}/messages", json={"body": n}) for n in range(50))
        )
        assert [a.status_code for a in answers] == [200] * 50
        assert {a.http_version for a in answers} == {"HTTP/2"}
        assert {local_port(a) for a in answers} == {local_port(created)}
        metrics = await h2c.get(f"/queues/{queue_id}/metrics")
        assert metrics.json()["result"]["backlog_count"] == 50


async def test_bodies_beyond_the_flow_control_window_both_ways(served: Served) -> None:
    """A ~200 KB bulk push and the ~200 KB pull answering it both complete over h2c, however the flow-control windows slice them."""
    acc = Account(served)
    bodies = [chr(ord("a") + n) * 100_000 for n in range(2)]
    async with acc.client(http2=True) as h2c:
        created = await h2c.post("/queues", json={"queue_name": "big"})
        queue_id = created.json()["result"]["queue_id"]
        batch = {"messages": [{"body": b, "content_type": "text"} for b in bodies]}
        pushed = await h2c.post(f"/queues/{queue_id}/messages/batch", json=batch)
        assert pushed.status_code == 200, pushed.text
        assert int(pushed.request.headers["content-length"]) > 3 * DEFAULT_WINDOW
        pulled = await h2c.post(f"/queues/{queue_id}/messages/pull", json={"batch_size": 10})
        assert pulled.status_code == 200
        assert pulled.http_version == "HTTP/2"
        assert len(pulled.content) > 3 * DEFAULT_WINDOW
        assert sorted(m["body"] for m in pulled.json()["result"]["messages"]) == bodies


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := await asyncio.wait_for(reader.read(65_536), WAIT):
        received += chunk
    return received


def frame_types(data: bytes) -> list[int]:
    """The type of each HTTP/2 frame in ``data`` (a 9-byte header, then the payload)."""
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    return types


async def test_garbage_after_the_preface_closes_only_that_connection(served: Served) -> None:
    """Bytes that are no HTTP/2 frame after the preface get a GOAWAY and a closed connection; an h2c connection already open and fresh HTTP/1.1 and h2c requests are answered as before."""
    acc = Account(served)
    host, port = served.url.removeprefix("http://").rsplit(":", 1)
    async with acc.client(http2=True) as h2c:
        before = await h2c.get("/queues")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            # A DATA frame on stream 0, which carries only connection frames, of garbage.
            writer.write(PREFACE + bytes([0, 0, 8, 0, 0, 0, 0, 0, 0]) + b"GARBAGE!")
            await writer.drain()
            received = await read_until_closed(reader)
        finally:
            writer.close()
        # The server's SETTINGS, then GOAWAY (type 7).
        assert frame_types(received)[0] == 4
        assert frame_types(received)[-1] == 7
        after = await h2c.get("/queues")
        assert after.status_code == 200
        assert local_port(after) == local_port(before)
    async with acc.client(http2=True) as fresh_h2c, acc.client(http2=False) as fresh_h1:
        assert (await fresh_h2c.get("/queues")).http_version == "HTTP/2"
        assert (await fresh_h1.get("/queues")).http_version == "HTTP/1.1"


def test_sigterm_with_an_h2c_connection_open_exits_0_promptly(tmp_path: Path) -> None:
    """SIGTERM ends a served process at once, with status 0, while an idle h2c connection is open."""
    server = start_server(tmp_path / "db.sqlite")
    try:
        acc = Account(server)
        with acc.sync_client(http2=True) as h2c:
            assert h2c.get("/queues").http_version == "HTTP/2"
            started = time.monotonic()
            assert server.stop(timeout=WAIT) == 0
            assert time.monotonic() - started < 5
            with pytest.raises(httpx.TransportError):
                h2c.get("/queues")
    finally:
        if server.process.poll() is None:
            server.kill()


# --- our own uvicorn server, for apps that stream ---------------------------------------


@asynccontextmanager
async def uvicorn_serving(
    app: Any, shutting_down: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """A uvicorn server on this loop with the sniffing protocol, serving ``app``: yields
    its base URL and itself. ``shutting_down`` is set as its graceful shutdown begins."""

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            if shutting_down is not None:
                shutting_down.set()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=SniffingProtocol,
        ws="none",
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=WAIT,
    )
    server = Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, WAIT)


class Streamer:
    """An ASGI app streaming 20 chunks, each only once the test has read the one before;
    on /forever it sends one chunk, then waits for ``http.disconnect``."""

    CHUNKS = 20

    def __init__(self) -> None:
        self.sent = 0
        self.read = [asyncio.Event() for _ in range(self.CHUNKS)]
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        assert scope["http_version"] == "2"
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["path"] == "/forever":
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            # Sending after the disconnect is ignored, as uvicorn's HTTP/1.1 does.
            await send({"type": "http.response.body", "body": b"late", "more_body": True})
            return
        for n in range(self.CHUNKS):
            chunk = b"chunk %02d;" % n
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self.sent = n + 1
            await asyncio.sleep(0.001)
            await self.read[n].wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_each_streamed_chunk_reaches_the_client_as_it_is_sent() -> None:
    """Over h2c the client reads every chunk of a streaming response before the app sends the next one."""
    app = Streamer()
    async with (
        uvicorn_serving(app) as (url, _),
        httpx.AsyncClient(http1=False, http2=True) as h2c,
        h2c.stream("GET", f"{url}/stream", timeout=WAIT) as response,
    ):
        assert response.http_version == "HTTP/2"
        chunks = response.aiter_raw()
        for n in range(Streamer.CHUNKS):
            chunk = await asyncio.wait_for(anext(chunks), WAIT)
            assert chunk == b"chunk %02d;" % n
            assert app.sent == n + 1
            app.read[n].set()
        assert [c async for c in chunks] == []


class RawH2:
    """A minimal HTTP/2 client on h2, for what httpx does not do (resetting one stream)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        self.conn.initiate_connection()

    @classmethod
    async def connect(cls, url: str) -> RawH2:
        """A connection to ``url``, the preface and SETTINGS sent."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        client = cls(*await asyncio.open_connection(host, int(port)))
        await client.flush()
        return client

    async def flush(self) -> None:
        """Send what h2 has queued."""
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def get(self, path: str) -> int:
        """Open a stream with a GET of ``path``; its id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "test"), (":path", path)]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        await self.flush()
        return stream_id

    async def until(self, kind: type[h2.events.Event], stream_id: int) -> None:
        """Read until an event of ``kind`` on ``stream_id`` arrives."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65_536), WAIT)
            assert data, "the server closed the connection"
            events = self.conn.receive_data(data)
            await self.flush()
            for event in events:
                if isinstance(event, kind) and getattr(event, "stream_id", None) == stream_id:
                    return


async def test_a_reset_stream_or_a_closed_connection_is_an_http_disconnect() -> None:
    """A client resetting a streaming response's stream, or closing its connection, makes the app's receive() return http.disconnect; after a reset the connection serves other streams."""
    app = Streamer()
    async with uvicorn_serving(app) as (url, _):
        client = await RawH2.connect(url)
        try:
            stream_id = await client.get("/forever")
            await client.until(h2.events.DataReceived, stream_id)
            client.conn.reset_stream(stream_id)
            await client.flush()
            await asyncio.wait_for(app.disconnected.wait(), WAIT)
            for event in app.read:
                event.set()
            await client.until(h2.events.StreamEnded, await client.get("/stream"))
        finally:
            client.writer.close()

        app.disconnected.clear()
        client = await RawH2.connect(url)
        try:
            await client.until(h2.events.DataReceived, await client.get("/forever"))
        finally:
            client.writer.close()
        await asyncio.wait_for(app.disconnected.wait(), WAIT)


async def test_graceful_shutdown_lets_the_h2c_stream_in_flight_finish() -> None:
    """When uvicorn shuts down during an h2c request, that request still completes before the connection is closed."""
    entered, release, shutting_down = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow(scope: Message, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async with (
        httpx.AsyncClient(http1=False, http2=True, timeout=WAIT) as h2c,
        uvicorn_serving(slow, shutting_down) as (url, server),
    ):
        request = asyncio.create_task(h2c.get(f"{url}/slow"))
        await asyncio.wait_for(entered.wait(), WAIT)
        server.should_exit = True
        await asyncio.wait_for(shutting_down.wait(), WAIT)
        release.set()
        response = await asyncio.wait_for(request, WAIT)
        assert response.status_code == 200
        assert response.content == b"done"


async def test_an_app_failure_is_a_500_before_the_response_and_a_reset_stream_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app raising before it starts its response gets a 500, after it a reset stream; both are logged and the connection serves on."""

    async def failing(scope: Message, receive: Receive, send: Send) -> None:
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError(f"boom at {scope['path']}")

    async with (
        uvicorn_serving(failing) as (url, _),
        httpx.AsyncClient(http1=False, http2=True, timeout=WAIT) as h2c,
    ):
        early = await h2c.get(f"{url}/early")
        assert early.status_code == 500
        # RST_STREAM with error code 2, INTERNAL_ERROR.
        with pytest.raises(httpx.RemoteProtocolError, match="error_code:2,"):
            await h2c.get(f"{url}/late")
        again = await h2c.get(f"{url}/early")
        assert again.status_code == 500
        assert local_port(again) == local_port(early)
    assert "boom at /early" in caplog.text
    assert "boom at /late" in caplog.text

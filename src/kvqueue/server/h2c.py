"""HTTP/2 cleartext (h2c with prior knowledge) beside uvicorn's HTTP/1.1, on one port.

The Deno CLI's KV Connect client speaks only HTTP/2: against an ``http://`` URL it
sends the HTTP/2 connection preface straight away, with no ``Upgrade``. uvicorn's
fast httptools protocol speaks HTTP/1.1 only, so :class:`SniffingProtocol` (given
to uvicorn as its ``http`` protocol class) reads the first bytes of a connection:
the preface hands it to :class:`H2Protocol`, which runs the same ASGI app for each
stream with the ``h2`` state machine; anything else goes to httptools unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

logger = logging.getLogger("kvqueue.server")

#: What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Streams one connection may have open at once; advertised in SETTINGS, enforced by h2.
MAX_CONCURRENT_STREAMS = 100

Message = dict[str, Any]
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# HTTP/2 forbids connection-specific headers (RFC 9113 §8.2.2) and h2 refuses to send
# them, but an ASGI app written for HTTP/1.1 may set them: they are dropped.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"}
)
# Checked before h2 sees a header block: a failure halfway through HPACK encoding would
# leave the client's decoder out of step with ours and break the whole connection.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


class SniffingProtocol(asyncio.Protocol):
    """uvicorn's ``http`` protocol class for ``kvqueue serve``: HTTP/2 for connections
    that open with the preface, uvicorn's httptools HTTP/1.1 for every other."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._args = (config, server_state, app_state, _loop)
        self._connections: set[Any] = server_state.connections
        self._transport: asyncio.Transport | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        # Listed so that a graceful shutdown also closes a connection that never spoke.
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        seen = self._buffer[: len(PREFACE)]
        if seen != PREFACE[: len(seen)]:
            self._hand_over(HttpToolsProtocol(*self._args))
        elif len(seen) == len(PREFACE):
            self._hand_over(H2Protocol(*self._args))

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        assert self._transport is not None
        self._connections.discard(self)
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(self._buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)

    def shutdown(self) -> None:
        """Close the connection: it has no request in flight yet."""
        if self._transport is not None:
            self._transport.close()


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection: each stream runs the ASGI app in a task of its own."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.app: App = config.loaded_app
        self.loop = _loop or asyncio.get_running_loop()
        self.server_state = server_state
        self._connections: set[Any] = server_state.connections
        self.app_state = app_state
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        codes = h2.settings.SettingCodes
        settings = {
            codes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            codes.MAX_HEADER_LIST_SIZE: self.conn.DEFAULT_MAX_HEADER_LIST_SIZE,
        }
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.streams: dict[int, _Stream] = {}
        self.writable = asyncio.Event()  # cleared while the transport's buffer is full
        self.writable.set()
        self.closing = False  # shutting down: no new streams
        self.transport: asyncio.Transport
        self.server: tuple[str, int | None] | None
        self.client: tuple[str, int] | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self.server = get_local_addr(self.transport)
        self.client = get_remote_addr(self.transport)
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            # h2 has queued a GOAWAY naming the error; only this connection ends.
            logger.warning("closing the HTTP/2 connection of %s: %s", self.client, exc)
            self.flush()
            self.transport.close()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        for stream in self.streams.values():
            stream.disconnect()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()
        # Stop reading too: a client that sends pings or requests without reading the
        # answers would otherwise grow our write buffer without bound.
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: refuse new streams, let those in flight finish,
        then send GOAWAY and close."""
        self.closing = True
        if not self.streams:
            self._goodbye()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._open(event.stream_id, event.headers)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.transport.close()  # after the client's GOAWAY h2 sends nothing more
        elif isinstance(event, h2.events.RemoteSettingsChanged) or (
            isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0
        ):
            for waiting in self.streams.values():  # every window may have grown
                waiting.window.set()
        elif (stream := self.streams.get(getattr(event, "stream_id", 0))) is None:
            if isinstance(event, h2.events.DataReceived):  # for a stream already answered
                self.ack(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.DataReceived):
            stream.feed(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.WindowUpdated):
            stream.window.set()
        elif isinstance(event, h2.events.StreamEnded):
            stream.end_request()
        elif isinstance(event, h2.events.StreamReset):
            stream.disconnect()

    def _open(self, stream_id: int, headers: Headers) -> None:
        pseudo = {name: value for name, value in headers if name.startswith(b":")}
        regular = [(name, value) for name, value in headers if not name.startswith(b":")]
        if self.closing or b":path" not in pseudo:
            # REFUSED_STREAM: the client may retry it elsewhere. No :path: a CONNECT.
            error = ErrorCodes.REFUSED_STREAM if self.closing else ErrorCodes.PROTOCOL_ERROR
            self.reset(stream_id, error)
            return
        if b":authority" in pseudo and all(name != b"host" for name, _ in regular):
            regular.append((b"host", pseudo[b":authority"]))
        raw_path, _, query = pseudo[b":path"].partition(b"?")
        root = self.config.root_path
        scope = {
            "type": "http",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.3"},
            "http_version": "2",
            "server": self.server,
            "client": self.client,
            "scheme": "https" if is_ssl(self.transport) else "http",
            "method": pseudo.get(b":method", b"").decode("latin-1"),
            "root_path": root,
            "path": root + unquote(raw_path.decode("latin-1")),
            "raw_path": root.encode("latin-1") + raw_path,
            "query_string": query,
            "headers": regular,
            "state": self.app_state.copy(),
        }
        stream = self.streams[stream_id] = _Stream(self, stream_id, scope)
        task = self.loop.create_task(stream.run(self.app))
        self.server_state.tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, stream))

    def _finished(self, stream: _Stream, task: asyncio.Task[None]) -> None:
        self.server_state.tasks.discard(task)
        self.server_state.total_requests += 1
        del self.streams[stream.id]
        if not stream.disconnected and not stream.complete:
            self.reset(stream.id, ErrorCodes.INTERNAL_ERROR)
        elif not stream.disconnected and stream.more_body:
            # Answered before the whole request came: tell the client to stop sending.
            self.reset(stream.id, ErrorCodes.NO_ERROR)
        self.ack(stream.id, stream.unacked)
        self.flush()
        if self.closing and not self.streams:
            self._goodbye()

    def flush(self) -> None:
        """Write what h2 has queued: every frame goes out as soon as it is made."""
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def ack(self, stream_id: int, size: int) -> None:
        """Hand ``size`` received bytes back to the client's flow-control windows."""
        # A ProtocolError means the connection is closed: nothing more will be sent.
        if size:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(size, stream_id)

    def reset(self, stream_id: int, error: ErrorCodes) -> None:
        """RST_STREAM, unless the stream is already closed."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, error)

    async def send_body(self, stream: _Stream, body: bytes, end: bool) -> None:
        """DATA frames for ``body`` within the flow-control windows, END_STREAM if ``end``."""
        offset = 0
        while not stream.disconnected and (offset < len(body) or end):
            if not self.writable.is_set():
                await self.writable.wait()
                continue
            try:
                window = self.conn.local_flow_control_window(stream.id)
                # Negative when the client shrank its window below what was in flight.
                size = max(0, min(len(body) - offset, window, self.conn.max_outbound_frame_size))
                if size == 0 and offset < len(body):
                    stream.window.clear()
                    await stream.window.wait()
                    continue
                last = end and offset + size == len(body)
                self.conn.send_data(stream.id, body[offset : offset + size], end_stream=last)
            except h2.exceptions.ProtocolError:
                stream.disconnect()
                return
            offset += size
            self.flush()
            if last:
                return

    def _goodbye(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed by a GOAWAY already
            self.conn.close_connection()
        self.flush()
        self.transport.close()


class _Stream:
    """One request on an HTTP/2 connection: its ASGI ``receive`` and ``send``."""

    def __init__(self, protocol: H2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        self.protocol = protocol
        self.id = stream_id
        self.scope = scope
        self.body = bytearray()
        self.unacked = 0  # flow-controlled bytes received but not yet read by the app
        self.more_body = True  # the client has not ended the request yet
        self.end_delivered = False
        self.started = False
        self.complete = False
        self.disconnected = False
        self.inbound = asyncio.Event()  # body, end of request or disconnect
        self.window = asyncio.Event()  # the flow-control window may have opened

    def feed(self, data: bytes, flow_controlled: int) -> None:
        self.body += data
        self.unacked += flow_controlled
        self.inbound.set()

    def end_request(self) -> None:
        self.more_body = False
        self.inbound.set()

    def disconnect(self) -> None:
        self.disconnected = True
        self.inbound.set()
        self.window.set()

    async def run(self, app: App) -> None:
        """Run ``app`` for this request; a 500 if it fails before starting a response
        (one that did start is reset when the task ends)."""
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            logger.exception("%s %s failed (HTTP/2)", self.scope["method"], self.scope["path"])
        else:
            if self.disconnected or self.complete:
                return
            what = "completing" if self.started else "starting"
            method, path = self.scope["method"], self.scope["path"]
            logger.error("%s %s returned without %s its response", method, path, what)
        if not self.started and not self.disconnected:
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            await self.send({"type": "http.response.start", "status": 500, "headers": headers})
            await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def receive(self) -> Message:
        """The ASGI ``receive``: request body chunks, then ``http.disconnect`` once the
        client goes away or the response is complete."""
        while not (
            self.disconnected
            or self.complete
            or self.body
            or (not self.more_body and not self.end_delivered)
        ):
            self.inbound.clear()
            await self.inbound.wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body.clear()
        self.end_delivered = not self.more_body
        # Acknowledged only once read, so a slow app slows the client down instead of
        # making us buffer its uploads.
        self.protocol.ack(self.id, self.unacked)
        self.unacked = 0
        self.protocol.flush()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        """The ASGI ``send``. After a disconnect it does nothing, as uvicorn's does."""
        if self.disconnected:
            return
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            defaults = self.protocol.server_state.default_headers
            headers = _response_headers(message["status"], [*defaults, *message.get("headers", [])])
            self.started = True
            try:
                self.protocol.conn.send_headers(self.id, headers)
            except h2.exceptions.ProtocolError:  # the stream or connection closed under us
                self.disconnect()
            self.protocol.flush()
        elif kind == "http.response.body" and self.started and not self.complete:
            body = b"" if self.scope["method"] == "HEAD" else bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            await self.protocol.send_body(self, body, end=not more)
            if not more:
                self.complete = True
                self.inbound.set()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on an HTTP/2 stream")


def _response_headers(status: int, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    block = [(b":status", b"%d" % status)]
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _HOP_BY_HOP:
            continue
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise RuntimeError(f"invalid response header {raw_name!r}: {value!r}")
        block.append((name, value))
    return block

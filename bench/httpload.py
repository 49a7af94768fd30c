"""A minimal HTTP/1.1 keep-alive client for S5's load, so that the client, which shares
the two cores with the server, spends as little CPU per request as it can."""

from __future__ import annotations

import asyncio


class Connection:
    """One keep-alive connection sending requests one after another."""

    def __init__(self, host: str, port: int, token: str = "") -> None:
        self.host = host
        self.port = port
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body; returns the status and the response body."""
        return await self._request("POST", path, body)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path``; returns the status and the response body."""
        return await self._request("GET", path, b"")

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        assert self._reader is not None
        assert self._writer is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        lines = (await self._reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self._reader.readexactly(length)
        parts = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await self._reader.readexactly(size + 2))
            if size == 0:
                return status, b"".join(p[:-2] for p in parts)

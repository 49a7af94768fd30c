"""S5's HTTP ceiling: a trivial JSON endpoint on the same server stack as `kvqueue serve`
(uvicorn with uvloop and kvqueue's HTTP protocol class, Starlette, orjson), in its own
process as the real server is. ``POST /ceiling`` parses its JSON body and answers a
small JSON envelope.

    python -m bench.procs.ceiling      # prints "ready http://127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kvqueue.server.app import json_response
from kvqueue.server.h2c import SniffingProtocol


async def ceiling(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return json_response({"success": True, "errors": [], "result": {"n": len(body)}})


def main() -> None:
    app = Starlette(routes=[Route("/ceiling", ceiling, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # Listening before "ready": early connections wait in the backlog for the server.
    sock.listen(2048)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=SniffingProtocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        print(f"ready http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await server.serve(sockets=[sock])

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()

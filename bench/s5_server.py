"""S5, the server: `kvqueue serve` on a SQLite file, driven over HTTP with several
keep-alive connections (bulk push of 100 per request, pull(100) + ack), against the
HTTP ceiling of the same stack (a trivial JSON endpoint) in the same run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import uvloop

import kvqueue
from bench.core import PAYLOAD, Child, Context, Row, at_least, children, ratio
from bench.httpload import Connection

PUSHERS = PULLERS = 4
CONNECTIONS = PUSHERS + PULLERS
TRIVIAL = orjson.dumps({"forUser": "alovelace", "body": "x" * 190})
BULK = orjson.dumps({"messages": [{"body": PAYLOAD}] * 100})


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def ceiling(url: str, requests: int, body: bytes) -> float:
    """Requests/s of ``CONNECTIONS`` connections posting ``body`` to the trivial endpoint."""
    host, port = address(url)

    async def one() -> None:
        async with Connection(host, port) as conn:
            for _ in range(requests // CONNECTIONS):
                status, _ = await conn.post("/ceiling", body)
                assert status == 200, status

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
    return requests // CONNECTIONS * CONNECTIONS / (time.perf_counter() - started)


async def pipeline(
    url: str, token: str, base: str, n: int, queue_id: str | None = None
) -> dict[str, float]:
    """Pushers send 100 per request while pullers pull(100) and ack, all at once, on a
    new queue or on queue ``queue_id``; returns the end-to-end and the push rates
    (msgs/s)."""
    host, port = address(url)
    if queue_id is None:
        async with Connection(host, port, token) as admin:
            status, raw = await admin.post(f"{base}/queues", orjson.dumps({"queue_name": "s5"}))
            assert status == 200, raw
        queue_id = orjson.loads(raw)["result"]["queue_id"]
    queue = f"{base}/queues/{queue_id}/messages"
    batches = n // 100
    total = batches // PUSHERS * PUSHERS * 100
    acked = 0
    pushed_at = 0.0
    pull_body = orjson.dumps({"batch_size": 100, "visibility_timeout_ms": 60_000, "wait_ms": 200})

    async def push() -> None:
        nonlocal pushed_at
        async with Connection(host, port, token) as conn:
            for _ in range(batches // PUSHERS):
                status, raw = await conn.post(f"{queue}/batch", BULK)
                assert status == 200, raw
        pushed_at = time.perf_counter()

    async def pull() -> None:
        nonlocal acked
        async with Connection(host, port, token) as conn:
            while acked < total:
                status, raw = await conn.post(f"{queue}/pull", pull_body)
                assert status == 200, raw
                messages: list[dict[str, Any]] = orjson.loads(raw)["result"]["messages"]
                if not messages:
                    continue
                acks = orjson.dumps({"acks": [{"lease_id": m["lease_id"]} for m in messages]})
                status, raw = await conn.post(f"{queue}/ack", acks)
                assert status == 200, raw
                acked += len(messages)

    started = time.perf_counter()
    await asyncio.gather(*(push() for _ in range(PUSHERS)), *(pull() for _ in range(PULLERS)))
    finished = time.perf_counter()
    return {"e2e": total / (finished - started), "push": total / (pushed_at - started)}


async def single_pushes(url: str, token: str, base: str, n: int) -> float:
    """One message per request from ``CONNECTIONS`` connections; msgs/s."""
    host, port = address(url)
    async with Connection(host, port, token) as admin:
        status, raw = await admin.post(f"{base}/queues", orjson.dumps({"queue_name": "s5single"}))
        assert status == 200, raw
    path = f"{base}/queues/{orjson.loads(raw)['result']['queue_id']}/messages"
    body = orjson.dumps({"body": PAYLOAD})

    async def one() -> None:
        async with Connection(host, port, token) as conn:
            for _ in range(n // CONNECTIONS):
                status, raw = await conn.post(path, body)
                assert status == 200, raw

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
    return n // CONNECTIONS * CONNECTIONS / (time.perf_counter() - started)


def serve(path: str, account: str = "bench") -> tuple[Child, str, str, str]:
    """``kvqueue serve`` on the SQLite file ``path``: the child, its URL, an admin
    token of ``account`` and the API path of that account."""
    child = Child("kvqueue.cli", "serve", "--db", path, "--port", "0", "--log-level", "warning")
    while not (line := child.expect("")).startswith("kvqueue serving "):
        pass
    with kvqueue.open(path) as db:
        _, token = db.tokens.create(account, "admin")
    return child, line.split()[2], token, f"/client/v4/accounts/{account}"


def run(ctx: Context) -> list[Row]:
    n = ctx.sizes.pick(100_000, 10_000)
    requests = ctx.sizes.pick(40_000, 4_000)
    run_async = uvloop.run
    with children(Child("bench.procs.ceiling")) as (trivial,):
        url = trivial.expect("ready").split()[1]
        rps = run_async(ceiling(url, requests, TRIVIAL))
        bulk_rps = run_async(ceiling(url, requests // 4, BULK))
    server, url, token, base = serve(ctx.path("s5.sqlite"))
    with children(server):
        e2e = run_async(pipeline(url, token, base, n))
        single = run_async(single_pushes(url, token, base, requests // 10))
    limit = rps * 100
    rows = [
        Row("S5", f"HTTP ceiling: trivial JSON POST, {CONNECTIONS} connections", rps, "req/s"),
        Row("S5", "HTTP ceiling with a 100-message body (20 kB JSON parsed)", bulk_rps, "req/s"),
        at_least(
            ratio(
                Row(
                    "S5",
                    f"push x100 + pull(100)/ack, {PUSHERS}+{PULLERS} conns, e2e",
                    e2e["e2e"],
                    "msgs/s",
                ),
                limit,
                "ceilingx100",
            ),
            0.5,
            "ceilingx100",
        ),
        ratio(
            Row("S5", "  of which the bulk push alone", e2e["push"], "msgs/s"),
            bulk_rps * 100,
            "20 kB ceilingx100",
        ),
        ratio(
            Row("S5", f"push, 1 message per request, {CONNECTIONS} conns", single, "msgs/s"),
            rps,
            "ceiling",
        ),
    ]
    rows[2].extra = {"messages": n, "ceiling_req_per_s": rps}
    return rows

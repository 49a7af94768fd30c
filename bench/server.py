"""The server's REST API against the embedded API it wraps, in one run.

Starts `kvqueue serve` on a temporary SQLite file and measures, side by side:
the embedded `queue.send` (the floor the server adds HTTP on top of), HTTP push
with one client awaiting each, HTTP push from 32 concurrent clients, HTTP bulk
push of 100, and pull(100) + ack over HTTP. Not part of the test suite.

    .venv/bin/python bench/server.py [--messages 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

import kvqueue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.served import start_server

BODY = {"forUser": "alovelace", "body": "x" * 160}


def embedded_send(path: str, n: int) -> float:
    with kvqueue.open(path) as db:
        db.queues.create("embedded")
        queue = db.queue("embedded")
        started = time.perf_counter()
        for _ in range(n):
            queue.send(BODY)
        return n / (time.perf_counter() - started)


async def http_push(base: str, token: str, n: int, clients: int) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as http:
        queue_id = (await http.post("/queues", json={"queue_name": f"push-{clients}"})).json()[
            "result"
        ]["queue_id"]

        async def one_client(count: int) -> None:
            for _ in range(count):
                response = await http.post(f"/queues/{queue_id}/messages", json={"body": BODY})
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one_client(n // clients) for _ in range(clients)))
        return n // clients * clients / (time.perf_counter() - started)


async def http_bulk_then_pull(base: str, token: str, n: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as http:
        queue_id = (await http.post("/queues", json={"queue_name": "bulk"})).json()["result"][
            "queue_id"
        ]
        batches = n // 100
        started = time.perf_counter()
        for _ in range(batches):
            messages = [{"body": BODY} for _ in range(100)]
            response = await http.post(
                f"/queues/{queue_id}/messages/batch", json={"messages": messages}
            )
            response.raise_for_status()
        pushed = batches * 100 / (time.perf_counter() - started)
        started = time.perf_counter()
        taken = 0
        while taken < batches * 100:
            pulled = await http.post(f"/queues/{queue_id}/messages/pull", json={"batch_size": 100})
            messages = pulled.json()["result"]["messages"]
            taken += len(messages)
            acks = [{"lease_id": m["lease_id"]} for m in messages]
            await http.post(f"/queues/{queue_id}/messages/ack", json={"acks": acks})
        return pushed, taken / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    n = parser.parse_args().messages
    with tempfile.TemporaryDirectory() as tmp:
        floor = embedded_send(f"{tmp}/embedded.sqlite", n)
        served = start_server(Path(tmp) / "served.sqlite")
        try:
            account, token = served.token()
            base = f"{served.api}/accounts/{account}"
            single = asyncio.run(http_push(base, token, n, 1))
            concurrent = asyncio.run(http_push(base, token, n, 32))
            bulk, pull = asyncio.run(http_bulk_then_pull(base, token, n * 10))
        finally:
            served.stop()
    rows = [
        ("embedded queue.send, one producer (the floor)", floor, "1.0"),
        ("HTTP push, one client awaiting each", single, f"{single / floor:.2f} x embedded"),
        ("HTTP push, 32 concurrent clients", concurrent, f"{concurrent / floor:.2f} x embedded"),
        ("HTTP bulk push of 100", bulk, f"{bulk / floor:.1f} x embedded"),
        ("HTTP pull(100) + ack", pull, ""),
    ]
    for name, rate, ratio in rows:
        print(f"{name:50s} {rate:10,.0f} msgs/s  {ratio}")


if __name__ == "__main__":
    main()

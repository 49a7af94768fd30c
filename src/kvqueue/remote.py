"""Consuming through a kvqueue server: what a Worker needs when its database is a URL.

A worker on another machine reaches its queues through the server's Cloudflare
REST API plus kvqueue's documented extensions (``docs/http-api.md``): it
registers its consumer with the consumers API (so its settings live with the
queue, shared with every other worker), leases batches with ``pull`` (as that
consumer, with a lease it names and a short long-poll), renews them with
``messages/extend`` and settles them with ``messages/ack``. Retries, backoff
and dead-lettering are decided by the server from the stored consumer, exactly
as for a local worker. Needs the ``remote`` extra (httpx).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence
from typing import Any

from kvqueue import errors, model
from kvqueue.clock import Clock, SystemClock
from kvqueue.consumers import Consumer
from kvqueue.delivery import Decision
from kvqueue.server import cloudflare

logger = logging.getLogger("kvqueue")

# How long one lease request may wait on the server for a message to arrive:
# short, so a stopping worker is never held up for long.
_LONG_POLL_MS = 1_000
# How often a worker whose queue is paused (or not its own) looks again.
_GATE_POLL_SECONDS = 1.0
_TIMEOUT_SECONDS = 60.0


def is_url(database: object) -> bool:
    """Whether ``database`` names a server rather than a file."""
    return isinstance(database, str) and database.startswith(("http://", "https://"))


class Server:
    """A kvqueue server's REST API, reached with one bearer token.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8787``.
        token: its bearer token (default: env ``KVQUEUE_TOKEN``).
        account: the account to use (default: the token's own).
    """

    def __init__(self, url: str, token: str | None = None, *, account: str | None = None) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise errors.MissingDependency(
                "reaching a kvqueue server needs the remote extra: pip install 'kvqueue[remote]'"
            ) from exc
        token = token or os.environ.get("KVQUEUE_TOKEN")
        if not token:
            raise errors.Unauthenticated(f"{url} needs a token: pass token= or set KVQUEUE_TOKEN")
        self.url = url.rstrip("/")
        self._account = account
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/client/v4",
            headers={"Authorization": f"Bearer {token}"},
            timeout=_TIMEOUT_SECONDS,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; returns ``result``, or raises the error the server named."""
        import httpx

        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise errors.StorageError(f"cannot reach {self.url}: {exc}") from exc
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            raise errors.StorageError(
                f"{self.url} answered {response.status_code} without a JSON envelope"
            )
        if response.status_code >= 400:
            problems = envelope.get("errors") or [{}]
            first = problems[0] if isinstance(problems[0], dict) else {}
            raise errors.from_response(
                response.status_code,
                int(first.get("code", 0)),
                str(first.get("message", f"HTTP {response.status_code}")),
            )
        return envelope.get("result")

    async def account(self) -> str:
        """The account this client works in (asked of the server once if not given)."""
        if self._account is None:
            verified = await self.call("GET", "/user/tokens/verify")
            self._account = str(verified["account"])
        return self._account

    async def queue(self, name: str) -> dict[str, Any]:
        """The Queue object of ``name``; raises QueueNotFound."""
        account = await self.account()
        found = await self.call("GET", f"/accounts/{account}/queues?name={name}")
        for queue in found or []:
            if queue.get("queue_name") == name:
                return dict(queue)
        raise errors.QueueNotFound(name)

    async def queue_path(self, name: str) -> str:
        """The API path of queue ``name``."""
        queue = await self.queue(name)
        return f"/accounts/{await self.account()}/queues/{queue['queue_id']}"


class RemoteQueues:
    """A Worker's view of its queues on a server (the local twin lives in ``worker``)."""

    def __init__(self, server: Server, *, lease_ms: int) -> None:
        self.server = server
        self.lease_ms = lease_ms

    async def claim(self, queue: str, consumer: Consumer) -> Consumer:
        """Register ``consumer`` on ``queue``, or take over its settings if the same
        worker is registered; another consumer raises ConsumerExists."""
        path = await self.server.queue_path(queue)
        existing = await self.server.call("GET", f"{path}/consumers")
        body = cloudflare.consumer_request(consumer)
        if not existing:
            stored = await self.server.call("POST", f"{path}/consumers", body)
        else:
            current = cloudflare.consumer_from_json(existing[0])
            if current.type != "worker" or current.script_name != consumer.script_name:
                raise errors.ConsumerExists(queue, current.describe())
            stored = await self.server.call("PUT", f"{path}/consumers/{current.consumer_id}", body)
        return cloudflare.consumer_from_json(stored)

    def source(self, queue: str, consumer: Consumer) -> RemoteSource:
        """Where an engine takes ``queue``'s batches from."""
        return RemoteSource(self.server, queue, consumer, lease_ms=self.lease_ms)

    async def refusal(self, queue: str, consumer: Consumer) -> str | None:
        """Why ``queue`` may not be consumed now, or None."""
        try:
            found = await self.server.queue(queue)
        except errors.QueueNotFound:
            return "it was deleted"
        consumers = found.get("consumers") or []
        if not consumers or consumers[0].get("consumer_id") != consumer.consumer_id:
            return "its consumer was removed or replaced"
        if (found.get("settings") or {}).get("delivery_paused"):
            return "delivery is paused"
        return None

    async def close(self) -> None:
        """Close the connections."""
        await self.server.close()


class RemoteSource:
    """A queue on a server, as a :class:`kvqueue.delivery.Source`."""

    def __init__(self, server: Server, queue: str, consumer: Consumer, *, lease_ms: int) -> None:
        self.clock: Clock = SystemClock()
        self._server = server
        self._queue = queue
        self._consumer = consumer
        self._lease_ms = lease_ms
        self._path: str | None = None
        self._wait_ms = 0

    async def _messages_path(self) -> str:
        if self._path is None:
            self._path = await self._server.queue_path(self._queue)
        return f"{self._path}/messages"

    async def lease(self, lease: str, limit: int) -> list[model.LeasedMessage]:
        """See :meth:`kvqueue.delivery.Source.lease`."""
        wait_ms, self._wait_ms = self._wait_ms, 0
        body = {
            "batch_size": limit,
            "visibility_timeout_ms": self._lease_ms,
            "consumer_id": self._consumer.consumer_id,
            "lease": lease,
            "wait_ms": wait_ms,
            "body_encoding": "base64",
        }
        try:
            result = await self._server.call("POST", f"{await self._messages_path()}/pull", body)
        except (errors.QueuePaused, errors.QueueNotFound, errors.ConsumerNotFound):
            # The gate notices on its next look; nothing to deliver meanwhile.
            return []
        return [_leased(self._queue, m) for m in result.get("messages") or []]

    async def extend(self, held: Sequence[model.LeasedMessage]) -> set[str]:
        """See :meth:`kvqueue.delivery.Source.extend`."""
        leases = [{"lease_id": m.lease} for m in held]
        body = {"leases": leases, "visibility_timeout_ms": self._lease_ms}
        result = await self._server.call("POST", f"{await self._messages_path()}/extend", body)
        kept = set(result.get("extended") or [])
        return {m.message_id for m in held if m.lease in kept}

    async def settle(self, decisions: Sequence[Decision]) -> None:
        """See :meth:`kvqueue.delivery.Source.settle`: one ack call for them all."""
        acks = [{"lease_id": d.message.lease} for d in decisions if not d.retry]
        retries: list[dict[str, Any]] = []
        for decision in decisions:
            if decision.retry:
                retry: dict[str, Any] = {"lease_id": decision.message.lease}
                if decision.delay_ms is not None:
                    retry["delay_seconds"] = decision.delay_ms / 1000
                retries.append(retry)
        try:
            await self._server.call(
                "POST", f"{await self._messages_path()}/ack", {"acks": acks, "retries": retries}
            )
        except errors.KvQueueError:
            logger.exception("could not settle %d messages of %r", len(decisions), self._queue)

    def changes(self) -> int:
        """See :meth:`kvqueue.delivery.Source.changes`: the server tracks changes."""
        return 0

    async def wait(self, *, timeout_ms: int, after_ms: int | None, since: int | None) -> None:
        """See :meth:`kvqueue.delivery.Source.wait`: the next lease waits on the server."""
        self._wait_ms = max(0, min(timeout_ms, _LONG_POLL_MS))

    async def wait_for_change(self, *, timeout_ms: int) -> None:
        """See :meth:`kvqueue.delivery.Source.wait_for_change`: look again shortly."""
        await self.clock.sleep(min(timeout_ms / 1000, _GATE_POLL_SECONDS))


def _leased(queue: str, message: dict[str, Any]) -> model.LeasedMessage:
    content_type = str(message.get("metadata", {}).get("CF-Content-Type", "json"))
    body = message["body"]
    raw = body.encode() if content_type == "text" else base64.b64decode(body)
    return model.LeasedMessage(
        queue,
        str(message["id"]),
        raw,
        content_type,
        int(message["timestamp_ms"]),
        int(message["attempts"]),
        str(message["lease_id"]),
    )

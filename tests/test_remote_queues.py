"""Named queues through a real `kvqueue serve` (kvqueue.remote.queues): each test runs one
sequence of calls on a local database's ``db.queues`` and on the remote adapter, and the two
give the same results and raise the same errors (ids and times aside)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import kvqueue
from kvqueue import v8
from kvqueue.consumers import Consumer, make_consumer
from kvqueue.queues import (
    AckResult,
    AsyncQueue,
    AsyncQueues,
    PeekedMessage,
    PulledMessage,
    PullResult,
    QueueInfo,
    QueueMetrics,
    SendResult,
)
from kvqueue.remote.http import Server
from kvqueue.remote.queues import AsyncRemoteQueue, AsyncRemoteQueues
from tests.served import Served, start_server

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: A message id, or a lease id (``{message id}.{attempts}.{lease}``).
_ID = re.compile(r"[0-9a-f]{32}(\.[0-9]+\.[0-9a-f]{16})?")
#: Long enough that nothing pulled comes back while a test runs.
_HOLD_MS = 600_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("remote-queues") / "db.sqlite")
    yield server
    assert server.stop() == 0


@pytest.fixture
async def remote(served: Served) -> AsyncIterator[AsyncRemoteQueues]:
    """The adapter for a fresh account of the server."""
    account, token = served.token()
    server = Server(served.url, token)
    try:
        yield AsyncRemoteQueues(server, account)
    finally:
        await server.close()


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[AsyncQueues]:
    """The embedded API on a fresh SQLite file."""
    database = await kvqueue.open_async(str(tmp_path / "local.db"))
    try:
        yield database.queues
    finally:
        await database.close()


class Log:
    """What each step of a sequence returned or raised, without what differs between
    two databases by nature: ids, lease ids and times (ids are numbered as first seen)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []
        self._names: dict[str, str] = {}

    async def __call__(self, label: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call``, note its outcome under ``label``, and return its result (None if
        it raised a kvqueue error)."""
        try:
            result = await call()
        except kvqueue.KvQueueError as exc:
            self.entries.append((label, self._error(exc)))
            return None
        self.entries.append((label, self._shape(result)))
        return result

    def _name(self, value: str) -> str:
        if not _ID.fullmatch(value):
            return value
        return self._names.setdefault(value, f"<{len(self._names)}>")

    def _error(self, exc: kvqueue.KvQueueError) -> tuple[Any, ...]:
        limit = tuple(getattr(exc, name, None) for name in ("limit", "maximum", "actual"))
        return ("raised", type(exc).__name__, str(exc), exc.status, exc.code, limit)

    def _shape(self, value: Any) -> Any:
        if isinstance(value, QueueInfo):
            consumer = self._shape(value.consumer)
            return dataclasses.replace(
                value, queue_id="", created_at=_EPOCH, modified_at=_EPOCH, consumer=consumer
            )
        if isinstance(value, Consumer):
            return dataclasses.replace(value, consumer_id="", created_at_ms=0)
        if isinstance(value, QueueMetrics):
            oldest = 1 if value.oldest_message_timestamp_ms else 0
            return dataclasses.replace(value, oldest_message_timestamp_ms=oldest)
        if isinstance(value, SendResult):
            return ("sent", [self._name(i) for i in value.message_ids], self._shape(value.metrics))
        if isinstance(value, PullResult):
            return ("pulled", self._shape(value.messages), self._shape(value.metrics))
        if isinstance(value, PulledMessage | PeekedMessage):
            kind = type(value).__name__
            ids = [self._name(value.id)]
            if isinstance(value, PulledMessage):
                ids.append(self._name(value.lease_id))
            body: Any
            try:
                body = value.body
            except kvqueue.KvQueueError as exc:
                body = self._error(exc)
            fields = (value.raw, value.content_type, value.attempts, value.metadata, body)
            return (kind, *ids, *fields)
        if isinstance(value, AckResult):
            warnings = {self._name(k): v for k, v in value.warnings.items()}
            dead_lettered = [self._name(i) for i in value.dead_lettered]
            return ("acked", value.ack_count, value.retry_count, warnings, dead_lettered)
        if isinstance(value, datetime):
            return "a time"
        if isinstance(value, dict):
            return {self._name(k): v for k, v in value.items()}
        if isinstance(value, list):
            return [self._name(v) if isinstance(v, str) else self._shape(v) for v in value]
        return value


Sequence = Callable[[AsyncQueues, Log], Awaitable[None]]


async def same(local: AsyncQueues, remote: AsyncQueues, sequence: Sequence) -> list[Any]:
    """Run ``sequence`` on both; assert they logged the same; return the log."""
    logs = []
    for queues in (local, remote):
        log = Log()
        await sequence(queues, log)
        logs.append(log.entries)
    expected, got = logs
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert have == want
    return expected


def outcome(log: list[tuple[str, Any]], label: str) -> Any:
    """What the step ``label`` logged."""
    return dict(log)[label]


# --- management ------------------------------------------------------------------------


async def test_management_matches(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """create, list, get, update, pause, resume and delete return and raise the same, bad
    settings and names included."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await log("create", lambda: queues.create("q"))
        await log(
            "create with settings",
            lambda: queues.create(
                "s", delivery_delay=5, message_retention_period=120, max_backlog=7
            ),
        )
        await log("create unlimited", lambda: queues.create("u", max_backlog_bytes=None))
        await log("create again", lambda: queues.create("q", delivery_delay=9))
        names: list[Any] = ["", "-a", "A", "a_b", "a" * 64, kvqueue.KV_QUEUE, 7, None]
        for name in names:
            await log(f"create {name!r}", functools.partial(queues.create, name))
        bad_settings: list[dict[str, Any]] = [
            {"delivery_delay": -1},
            {"delivery_delay": 86_401},
            {"delivery_delay": 1.5},
            {"delivery_delay": True},
            {"message_retention_period": 59},
            {"max_backlog": 0},
            {"max_backlog_bytes": "1"},
        ]
        for bad in bad_settings:
            await log(f"create {bad}", functools.partial(queues.create, "bad", **bad))
        await log("list", queues.list)
        await log("get", lambda: queues.get("s"))
        await log("get missing", lambda: queues.get("nope"))
        await log("get invalid", lambda: queues.get("Nope"))
        await log("update", lambda: queues.update("s", delivery_delay=7))
        await log(
            "update limits", lambda: queues.update("s", max_backlog=None, max_backlog_bytes=9)
        )
        await log("update nothing", lambda: queues.update("s"))
        await log("update bad", lambda: queues.update("s", message_retention_period=1))
        not_a_bool: Any = "yes"
        await log("update paused bad", lambda: queues.update("s", delivery_paused=not_a_bool))
        await log("update missing and bad", lambda: queues.update("nope", delivery_delay=-1))
        await log("pause", lambda: queues.pause("s"))
        await log("get paused", lambda: queues.get("s"))
        await log("resume", lambda: queues.resume("s"))
        await log("pause missing", lambda: queues.pause("nope"))
        await log("delete", lambda: queues.delete("q"))
        await log("delete again", lambda: queues.delete("q"))
        await log("delete invalid", lambda: queues.delete("Q"))
        await log("list after", queues.list)

    log = await same(local, remote, sequence)
    assert outcome(log, "create again")[1] == "QueueExists"
    assert outcome(log, "update missing and bad")[1] == "QueueNotFound"
    assert outcome(log, "update limits").max_backlog_bytes == 9


async def test_missing_queue_raises_queue_not_found_everywhere(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """Every call naming a queue that does not exist raises the same QueueNotFound."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        calls = [
            "delete", "update", "pause", "resume", "purge", "last_purge", "metrics", "peek",
            "get_consumer", "add_consumer", "update_consumer", "remove_consumer",
        ]  # fmt: skip
        for call in calls:
            await log(call, functools.partial(getattr(queues, call), "nope"))
        await log(
            "claim_worker", lambda: queues.claim_worker("nope", make_consumer(script_name="w"))
        )
        q = queues.queue("nope")
        await log("send", lambda: q.send("x"))
        await log("send_batch", lambda: q.send_batch(["x"]))
        await log("metrics", q.metrics)
        await log("pull", q.pull)
        await log("pull bad size", lambda: q.pull(0))

    log = await same(local, remote, sequence)
    assert {entry[1][1] for entry in log} == {"QueueNotFound"}


async def test_the_kv_queue_is_refused_but_has_metrics(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """Calls naming the internal KV queue are refused alike; its metrics answer (empty)."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        for call in ["get", "purge", "peek", "get_consumer", "remove_consumer", "add_consumer"]:
            await log(call, functools.partial(getattr(queues, call), kvqueue.KV_QUEUE))
        await log("metrics", lambda: queues.metrics(kvqueue.KV_QUEUE))
        await log("queue", lambda: _awaitable(lambda: queues.queue(kvqueue.KV_QUEUE)))

    log = await same(local, remote, sequence)
    assert outcome(log, "metrics") == QueueMetrics(0, 0, 0)


async def _awaitable(call: Callable[[], Any]) -> Any:
    return call()


# --- producers -------------------------------------------------------------------------


BODIES: list[tuple[str, Any]] = [
    ("json", {"a": [1, 2.5, "x", None, True], "b": {"c": -0.0}, "big": 2**63}),
    ("json", "just a string"),
    ("json", [1e-7, 0.1, 1e300, -(2**63), "h\u00e9llo \U0001f600", "\u2028"]),
    ("json", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("text", "h\u00e9llo \U0001f600"),
    ("text", "lone \ud800 surrogate"),
    ("text", ""),
    ("bytes", bytes(range(256))),
    ("bytes", bytearray(b"abc")),
    ("bytes", memoryview(b"view")),
    ("bytes", b""),
    ("v8", v8.dumps({"k": "v", "n": [1, 2]})),
    ("v8", b"not v8 at all"),
    ("JSON", {"case": "insensitive"}),
    ("Text", "case"),
]


async def test_every_content_type_round_trips_exactly(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """Bodies of every content type, odd ones included, come back from pull and peek with
    the same bytes, content type and decoded body."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        for content_type, body in BODIES:
            await log(
                f"send {content_type} {body!r}",
                functools.partial(q.send, body, content_type=content_type),
            )
        batch = [kvqueue.MessageSendRequest(b, c) for c, b in BODIES]
        await log("send_batch", lambda: q.send_batch(batch))
        await log("peek", lambda: _sorted(queues.peek("q", 100)))
        pulled = await q.pull(100, _HOLD_MS)
        log.entries.append(("pull", log._shape(sorted(pulled.messages, key=_order))))
        await log("metrics", q.metrics)

    log = await same(local, remote, sequence)
    assert len(outcome(log, "pull")) == 2 * len(BODIES)


def _order(message: PulledMessage | PeekedMessage) -> tuple[bytes, str]:
    # Messages sent in the same millisecond may come in either order.
    return (message.raw, message.content_type)


async def _sorted(peeked: Awaitable[list[PeekedMessage]]) -> list[PeekedMessage]:
    return sorted(await peeked, key=_order)


async def test_send_errors_match(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """Bad bodies, content types, sizes, batch shapes and delays raise the same errors with
    the same limits, and write nothing; a full queue refuses alike."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        for content_type, body in [
            ("text", 1), ("text", b"bytes"), ("bytes", "a str"), ("json", object()),
            ("json", {1, 2}), ("json", None), ("json", 2**64), ("json", "\ud800"),
            ("v8", {"not": "bytes"}), ("xml", "x"), ("", "x"),
        ]:  # fmt: skip
            await log(
                f"send {content_type} {type(body).__name__} #{len(log.entries)}",
                functools.partial(q.send, body, content_type=content_type),
            )
        await log("too large", lambda: q.send(b"x" * 128_001, content_type="bytes"))
        await log("largest", lambda: q.send(b"x" * 128_000, content_type="bytes"))
        await log("json too large", lambda: q.send("x" * 127_999))
        delays: list[Any] = [86_401, -1, 86_400.5, float("nan"), True, "5"]
        for delay in delays:
            await log(f"delay {delay!r}", functools.partial(q.send, "x", delay_seconds=delay))
        await log("empty batch", lambda: q.send_batch([]))
        await log("101 messages", lambda: q.send_batch(list(range(101))))
        big = [kvqueue.MessageSendRequest(b"x" * 100_000, "bytes")] * 3
        await log("batch too large", lambda: q.send_batch(big))
        bad_last = ["ok", kvqueue.MessageSendRequest(1, content_type="text")]
        await log("batch bad body", lambda: q.send_batch(bad_last))
        await log("batch delay", lambda: q.send_batch(["a"], delay_seconds=-1))
        own = ["a", kvqueue.MessageSendRequest("b", delay_seconds=86_401)]
        await log("batch own delay", lambda: q.send_batch(own))
        await log("metrics", q.metrics)

    log = await same(local, remote, sequence)
    assert outcome(log, "101 messages")[1:2] == ("TooManyMessages",)
    assert outcome(log, "metrics").backlog_count == 1


async def test_backlog_limits_refuse_alike(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """A queue at its max_backlog refuses sends and batches with QueueFull."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q", max_backlog=2)
        q = queues.queue("q")
        await log("first", lambda: q.send("a"))
        await log("batch over", lambda: q.send_batch(["b", "c"]))
        await log("second", lambda: q.send("b"))
        await log("third", lambda: q.send("c"))
        await log("metrics", q.metrics)

    # The server's message names the queue as stored, with its account; compare the rest.
    logs = []
    for queues in (local, remote):
        log = Log()
        await sequence(queues, log)
        logs.append([(label, _without_message(shape)) for label, shape in log.entries])
    assert logs[1] == logs[0]
    assert dict(logs[0])["third"][1] == "QueueFull"


def _without_message(shape: Any) -> Any:
    if isinstance(shape, tuple) and shape[:1] == ("raised",):
        return (*shape[:2], *shape[3:5])
    return shape


async def test_delays_match(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """A send's delay, the queue's delivery_delay, an explicit 0 and a batch's delay hold
    the same messages back."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q", delivery_delay=60)
        q = queues.queue("q")
        await q.send("queue's delay")
        await q.send("own delay", delay_seconds=30)
        await q.send("now", delay_seconds=0)
        await q.send_batch(
            ["batch's delay", kvqueue.MessageSendRequest("own 0", delay_seconds=0)],
            delay_seconds=120,
        )
        await q.send_batch([kvqueue.MessageSendRequest("fraction", delay_seconds=0.0004)])
        await log("pull", lambda: q.pull(100, _HOLD_MS))
        await log("metrics", q.metrics)

    log = await same(local, remote, sequence)
    assert sorted(m[-1] for m in outcome(log, "pull")[1]) == ["fraction", "now", "own 0"]


# --- pull consumers ----------------------------------------------------------------------


async def test_pull_ack_retry_and_extend_match(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """Pulls, acks, retries (with and without delays), warnings and extends answer the same."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        not_a_lease: Any = 5
        for body in range(7):
            await q.send(body)
        first = await log("pull default", lambda: q.pull(visibility_timeout_ms=_HOLD_MS))
        second = await log("pull rest", lambda: q.pull(10, _HOLD_MS, lease="00112233aabbccdd"))
        await log("pull empty", q.pull)
        assert first is not None
        assert second is not None
        a, b, c, d, e = sorted(first.messages, key=lambda m: m.body)
        await log("metrics in flight", q.metrics)
        await log(
            "ack",
            lambda: q.ack(
                acks=[a.lease_id, "garbage", "", "a.b.c", not_a_lease], retries=[(b.lease_id, 60)]
            ),
        )
        await log("ack again", lambda: q.ack(acks=[a.lease_id], retries=[b.lease_id]))
        await log("retry bad delay", lambda: q.ack(retries=[(c.lease_id, 86_401)]))
        not_a_delay: Any = "5"
        await log("retry bad delay type", lambda: q.ack(retries=[(c.lease_id, not_a_delay)]))
        await log("garbage retry bad delay", lambda: q.ack(retries=[("garbage", 86_401)]))
        await log("nothing", lambda: q.ack())
        await log("retry", lambda: q.ack(retries=[c.lease_id, (d.lease_id, None)]))
        await log("pull retried", lambda: q.pull(10, _HOLD_MS))
        held = [e.lease_id, a.lease_id, "garbage", "", not_a_lease, e.lease_id]
        await log("extend", lambda: q.extend(held, 1000))
        await log("extend nothing", lambda: q.extend([], 1000))
        timeouts: list[Any] = [0, 43_200_001, 2.5]
        for timeout in timeouts:
            await log(f"extend {timeout}", functools.partial(q.extend, [e.lease_id], timeout))
        await log("metrics", q.metrics)

    log = await same(local, remote, sequence)
    assert outcome(log, "ack")[1:3] == (1, 1)
    attempts = [m[5] for m in outcome(log, "pull retried")[1]]
    assert attempts == [2, 2]


async def test_pull_argument_errors_match(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """Out-of-range or mistyped pull arguments raise InvalidOption and lease nothing; a
    missing or paused queue, or another consumer, is what is raised before them."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        await q.send("x")
        bad: list[dict[str, Any]] = [
            {"batch_size": 0}, {"batch_size": 101}, {"batch_size": -1}, {"batch_size": 2.5},
            {"batch_size": True}, {"batch_size": "5"}, {"visibility_timeout_ms": 0},
            {"visibility_timeout_ms": 43_200_001}, {"wait_ms": -1}, {"wait_ms": 20_001},
            {"lease": "xyz"}, {"lease": "00112233AABBCCDD"}, {"lease": 5},
        ]  # fmt: skip
        for arguments in bad:
            await log(f"pull {arguments}", functools.partial(q.pull, **arguments))
        await log("metrics", q.metrics)
        await queues.pause("q")
        await log("paused and bad", lambda: q.pull(batch_size=0))
        await log("paused", q.pull)
        await queues.resume("q")
        consumer = await queues.add_consumer("q", "worker", script_name="w")
        await log("worker's queue and bad", lambda: q.pull(batch_size=0))
        await log("worker's queue", q.pull)
        await log("not the consumer", lambda: q.pull(consumer_id="0" * 32))
        await log("not the consumer and bad", lambda: q.pull(0, consumer_id="0" * 32))
        await log(
            "as the consumer",
            lambda: q.pull(visibility_timeout_ms=_HOLD_MS, consumer_id=consumer.consumer_id),
        )

    log = await same(local, remote, sequence)
    assert outcome(log, "paused and bad")[1] == "QueuePaused"
    assert outcome(log, "worker's queue and bad")[1] == "ConsumerExists"
    assert outcome(log, "not the consumer and bad")[1] == "ConsumerNotFound"
    assert outcome(log, "metrics").in_flight == 0


async def test_long_poll_waits_for_a_message(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """pull with wait_ms on an empty queue answers empty once the wait is over."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        await log("pull", lambda: queues.queue("q").pull(wait_ms=200))

    await same(local, remote, sequence)


async def test_retries_end_on_the_dead_letter_queue(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """A pull consumer's retries are counted, then the message moves to its dead-letter
    queue (created on demand) with its body, as locally."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        await log(
            "consumer",
            lambda: queues.add_consumer("q", "http_pull", max_retries=1, dead_letter_queue="dlq"),
        )
        q = queues.queue("q")
        await q.send({"job": 1})
        for attempt in (1, 2):
            pulled = await log(f"pull {attempt}", q.pull)
            assert pulled is not None
            await log(
                f"retry {attempt}", functools.partial(q.ack, retries=[pulled.messages[0].lease_id])
            )
        await log("pull after", q.pull)
        await log("metrics", q.metrics)
        await log("list", queues.list)
        await log("dead letter", lambda: queues.queue("dlq").pull())

    log = await same(local, remote, sequence)
    assert outcome(log, "metrics").dead_lettered == 1
    assert outcome(log, "retry 1")[4] == []
    assert len(outcome(log, "retry 2")[4]) == 1


# --- consumers ---------------------------------------------------------------------------


async def test_consumers_match(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """Adding, reading, replacing, claiming and removing consumers keep every setting (those
    of the other type too) and raise the same errors."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        await log("none", lambda: queues.get_consumer("q"))
        await log(
            "add pull",
            lambda: queues.add_consumer(
                "q",
                "http_pull",
                batch_size=7,
                max_retries=5,
                retry_delay=2.5,
                visibility_timeout_ms=5000,
                body_encoding="plain",
                dead_letter_queue="dlq",
                max_batch_timeout=2.5,
                max_concurrency=3,
            ),
        )
        await log("get", lambda: queues.get_consumer("q"))
        await log("queue", lambda: queues.get("q"))
        await log("add second", lambda: queues.add_consumer("q", "worker", script_name="w"))
        await log("add second pull", lambda: queues.add_consumer("q", "http_pull"))
        await log(
            "replace",
            lambda: queues.update_consumer(
                "q", "worker", script_name="w", visibility_timeout_ms=9000, body_encoding="plain"
            ),
        )
        await log("get replaced", lambda: queues.get_consumer("q"))
        other = make_consumer(script_name="other")
        await log("claim by another", lambda: queues.claim_worker("q", other))
        same_worker = make_consumer(script_name="w", batch_size=3)
        await log("claim by the same", lambda: queues.claim_worker("q", same_worker))
        await log("claim again", lambda: queues.claim_worker("q", same_worker))
        await log("remove", lambda: queues.remove_consumer("q"))
        await log("remove again", lambda: queues.remove_consumer("q"))
        await log("update adds", lambda: queues.update_consumer("q", "http_pull"))
        await log("remove it", lambda: queues.remove_consumer("q"))
        await log("claim adds", lambda: queues.claim_worker("q", same_worker))
        await log("remove claimed", lambda: queues.remove_consumer("q"))
        await log("worker without script", lambda: queues.add_consumer("q", batch_size=100))
        await log("get without script", lambda: queues.get_consumer("q"))
        await log("remove without script", lambda: queues.remove_consumer("q"))
        consumers: list[tuple[str, dict[str, Any]]] = [
            ("worker", {"batch_size": 0}), ("http_pull", {"batch_size": 101}),
            ("worker", {"max_batch_timeout": 61}), ("worker", {"max_retries": -1}),
            ("worker", {"max_concurrency": 251}), ("http_pull", {"retry_delay": 86_401}),
            ("http_pull", {"visibility_timeout_ms": 0}), ("http_pull", {"body_encoding": "raw"}),
            ("push", {}), ("http_pull", {"dead_letter_queue": "q"}),
            ("http_pull", {"dead_letter_queue": "Bad_Name"}),
        ]  # fmt: skip
        for kind, settings in consumers:
            await log(
                f"add {kind} {settings}",
                functools.partial(queues.add_consumer, "q", kind, **settings),
            )
        own_dead_letter = make_consumer(script_name="w", dead_letter_queue="q")
        await log("self dead letter claim", lambda: queues.claim_worker("q", own_dead_letter))
        await log("none left", lambda: queues.get_consumer("q"))

    log = await same(local, remote, sequence)
    assert outcome(log, "add pull").max_concurrency == 3
    assert outcome(log, "claim by another")[1] == "ConsumerExists"
    assert outcome(log, "claim by the same").batch_size == 3


# --- purge -------------------------------------------------------------------------------


async def test_purges_match(local: AsyncQueues, remote: AsyncRemoteQueues) -> None:
    """purge empties the queue and is noted; purge_messages deletes exactly the refs given
    (leased or not) and warns for the others; bad refs raise alike."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        await log("never purged", lambda: queues.last_purge("q"))
        await q.send_batch(["a", "b", "c"])
        peeked = await log("peek", lambda: _sorted(queues.peek("q", 3)))
        counts: list[Any] = [0, 101, 2.5]
        for n in counts:
            await log(f"peek {n}", functools.partial(queues.peek, "q", n))
        assert peeked is not None
        await q.pull(1, _HOLD_MS)
        refs = [peeked[0].ref, peeked[1].ref, peeked[0].ref, "0" * 32]
        await log("purge_messages", lambda: q.purge_messages(refs))
        await log("purge_messages again", lambda: q.purge_messages(refs[:1]))
        await log("no refs", lambda: q.purge_messages([]))
        await log("empty ref", lambda: q.purge_messages(["x", ""]))
        await log("not a ref", lambda: q.purge_messages([5]))  # type: ignore[list-item]
        await log("metrics", q.metrics)
        await log("purge", lambda: queues.purge("q"))
        await log("purged", lambda: queues.last_purge("q"))
        await log("metrics after", q.metrics)
        await log("usable", lambda: q.send("new"))

    log = await same(local, remote, sequence)
    assert outcome(log, "purged") == "a time"
    assert outcome(log, "metrics").backlog_count == 1


# --- deleted and re-created queues ---------------------------------------------------------


async def test_a_deleted_queue_answers_like_a_local_one(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """Leases and refs of a deleted queue warn instead of raising; once the queue is created
    again, the same handle reaches the new queue."""

    async def sequence(queues: AsyncQueues, log: Log) -> None:
        await queues.create("q")
        q = queues.queue("q")
        await q.send_batch(["a", "b"])
        pulled = await log("pull before", lambda: q.pull(2, _HOLD_MS))
        assert pulled is not None
        (a, b) = pulled.messages
        await queues.delete("q")
        leases = [a.lease_id, "garbage"]
        await log("ack", lambda: q.ack(acks=leases, retries=[(b.lease_id, 5), "x.1.y"]))
        await log("retry bad delay", lambda: q.ack(retries=[(b.lease_id, -1)]))
        await log("extend", lambda: q.extend([a.lease_id], 1000))
        await log("purge_messages", lambda: q.purge_messages([a.id]))
        await log("send", lambda: q.send("lost"))
        await log("metrics", q.metrics)
        await queues.create("q")
        await log("send again", lambda: q.send("new"))
        await log("old lease", lambda: q.ack(acks=[a.lease_id]))
        await log("pull", lambda: q.pull(visibility_timeout_ms=_HOLD_MS))

    log = await same(local, remote, sequence)
    assert outcome(log, "ack")[1:3] == (0, 0)
    assert outcome(log, "send")[1] == "QueueNotFound"


async def test_a_stale_cached_id_is_looked_up_again(
    served: Served, remote: AsyncRemoteQueues
) -> None:
    """A queue deleted and created again by another client (new id) is reached through the
    name whose old id this client cached; a deleted one raises QueueNotFound by name."""
    q = remote.queue("q")
    await remote.create("q")
    await q.send("old")
    _, token = served.token(remote.account)
    other = Server(served.url, token)
    try:
        others = AsyncRemoteQueues(other, remote.account)
        await others.delete("q")
        created = await others.create("q")
        assert (await q.send("new")).metrics.backlog_count == 1
        pulled = await q.pull()
        assert [m.body for m in pulled.messages] == ["new"]
        assert (await remote.get("q")).queue_id == created.queue_id
        await others.delete("q")
        with pytest.raises(kvqueue.QueueNotFound) as caught:
            await q.metrics()
        assert str(caught.value) == "there is no queue named 'q'"
        assert caught.value.queue == "q"
    finally:
        await other.close()


# --- errors --------------------------------------------------------------------------------


async def test_an_error_the_server_raises_comes_back_as_its_own_class(
    served: Served, local: AsyncQueues
) -> None:
    """Errors whose Cloudflare code other classes share (an out-of-range setting, an empty
    batch) reach the remote client (``Server.call``, under the adapter and remote workers)
    as the very class the embedded API raises for the same request, with its message: the
    server names the class in ``x-kvqueue-error``."""
    account, token = served.token()
    server = Server(served.url, token)
    try:
        queues = f"/accounts/{account}/queues"
        created = await server.call("POST", queues, {"queue_name": "q"})
        batch = f"{queues}/{created['queue_id']}/messages/batch"
        await local.create("q")
        bad_setting = {"queue_name": "bad", "settings": {"delivery_delay": -1}}
        cases: list[tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = [
            (
                lambda: local.create("bad", delivery_delay=-1),
                lambda: server.call("POST", queues, bad_setting),
            ),
            (
                lambda: local.queue("q").send_batch([]),
                lambda: server.call("POST", batch, {"messages": []}),
            ),
        ]
        for embedded, over_http in cases:
            with pytest.raises(kvqueue.KvQueueError) as expected:
                await embedded()
            with pytest.raises(kvqueue.KvQueueError) as got:
                await over_http()
            assert type(got.value) is type(expected.value)
            assert str(got.value) == str(expected.value)
    finally:
        await server.close()


# --- the adapter's shape -----------------------------------------------------------------


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} | {"__init__", "__repr__"}


@pytest.mark.parametrize(
    ("base", "remote_class"),
    [(AsyncQueues, AsyncRemoteQueues), (AsyncQueue, AsyncRemoteQueue)],
)
def test_every_public_member_is_overridden_with_the_same_signature(
    base: type, remote_class: type
) -> None:
    """Each public method of AsyncQueues and AsyncQueue is defined by the remote class itself
    (so no local logic can run against a server) with the same parameters and defaults."""
    assert issubclass(remote_class, base)
    missing = {name for name in _public(base) if name not in vars(remote_class)}
    assert missing == set()
    for name in _public(base) - {"__init__", "__repr__"}:
        ours, theirs = getattr(remote_class, name), getattr(base, name)
        if callable(theirs):
            wanted = inspect.signature(theirs, eval_str=True)
            assert inspect.signature(ours, eval_str=True) == wanted, name
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)


async def test_instance_attributes_are_the_local_ones(
    local: AsyncQueues, remote: AsyncRemoteQueues
) -> None:
    """account, and a queue's name, account and stored_name, are set on the remote objects
    (they inherit no __init__), and queue() of an invalid name raises at once."""

    def public(obj: object) -> set[str]:
        return {name for name in vars(obj) if not name.startswith("_")}

    assert public(local) <= public(remote)
    assert public(local.queue("q")) <= public(remote.queue("q"))
    handle = remote.queue("q")
    assert isinstance(handle, AsyncRemoteQueue)
    assert (handle.name, handle.account) == ("q", remote.account)
    assert handle.stored_name == f"{remote.account}/q"
    assert "'q'" in repr(handle)
    with pytest.raises(kvqueue.InvalidQueueName):
        remote.queue("Q")

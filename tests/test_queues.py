"""Named-queue conformance (SPEC §5 and §8, cloudflare-queues.md §1-2 and §8.1-8.3): every backend."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

import kvqueue
from kvqueue import v8
from tests.helpers import asleep_until, wait_until_async

HEX32 = re.compile(r"[0-9a-f]{32}")


async def _queue(
    adb: kvqueue.AsyncDatabase, name: str = "q", **settings: Any
) -> kvqueue.AsyncQueue:
    """Create the named queue and return its handle."""
    await adb.queues.create(name, **settings)
    return adb.queue(name)


async def _backlog(adb: kvqueue.AsyncDatabase, name: str = "q") -> int:
    """How many messages the queue holds."""
    return (await adb.queues.metrics(name)).backlog_count


async def _pulled_bodies(queue: kvqueue.AsyncQueue, batch_size: int = 100) -> list[Any]:
    """The bodies of one pull, leased long enough not to come back during the test."""
    pulled = await queue.pull(batch_size=batch_size, visibility_timeout_ms=43_200_000)
    return [m.body for m in pulled.messages]


async def _raised(calls: dict[str, Callable[[], Any]]) -> dict[str, BaseException | None]:
    """What each call raised (None: it returned); awaitable results are awaited."""
    outcome: dict[str, BaseException | None] = {}
    for label, call in calls.items():
        try:
            result = call()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            outcome[label] = exc
        else:
            outcome[label] = None
    return outcome


def _kinds(raised: dict[str, BaseException | None]) -> dict[str, str]:
    """The error class name per call ("NoneType": it returned)."""
    return {label: type(exc).__name__ for label, exc in raised.items()}


# --- 1. Management -------------------------------------------------------------


async def test_create_returns_the_queue_with_default_settings(adb: kvqueue.AsyncDatabase) -> None:
    """A queue created without settings has no delay, 4 days' retention, is not paused and has no consumer."""
    info = await adb.queues.create("q")
    assert info.name == "q"
    assert HEX32.fullmatch(info.queue_id)
    assert info.delivery_delay == 0
    assert info.message_retention_period == 345_600
    assert info.delivery_paused is False
    assert info.consumer is None
    assert info.modified_at >= info.created_at


async def test_create_stores_the_given_settings(adb: kvqueue.AsyncDatabase) -> None:
    """Settings given to create are what get returns afterwards."""
    await adb.queues.create("q", delivery_delay=5, message_retention_period=120)
    info = await adb.queues.get("q")
    assert (info.delivery_delay, info.message_retention_period) == (5, 120)


async def test_create_accepts_the_edges_of_each_setting_range(adb: kvqueue.AsyncDatabase) -> None:
    """delivery_delay 0 and 86,400 and message_retention_period 60 and 1,209,600 are all accepted."""
    low = await adb.queues.create("low", delivery_delay=0, message_retention_period=60)
    high = await adb.queues.create(
        "high", delivery_delay=86_400, message_retention_period=1_209_600
    )
    assert (low.delivery_delay, low.message_retention_period) == (0, 60)
    assert (high.delivery_delay, high.message_retention_period) == (86_400, 1_209_600)


async def test_get_returns_the_created_queue(adb: kvqueue.AsyncDatabase) -> None:
    """get returns the same queue (same id and settings) that create returned."""
    created = await adb.queues.create("q", delivery_delay=3)
    assert await adb.queues.get("q") == created


async def test_list_returns_every_queue_by_name(adb: kvqueue.AsyncDatabase) -> None:
    """list returns every created queue, sorted by name."""
    for name in ("b", "c", "a"):
        await adb.queues.create(name)
    assert [q.name for q in await adb.queues.list()] == ["a", "b", "c"]


async def test_list_hides_the_internal_kv_queue(adb: kvqueue.AsyncDatabase) -> None:
    """The KV queue is not listed, even when it holds a message."""
    await adb.enqueue("kv message", delay=60_000)
    assert await adb.queues.list() == []
    await adb.queues.create("q")
    assert [q.name for q in await adb.queues.list()] == ["q"]


async def test_valid_queue_names_are_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """Lowercase letters, digits and inner dashes, 1 to 63 characters, make a valid name."""
    names = ["a", "my-queue-1", "0", "a" * 63]
    for name in names:
        assert (await adb.queues.create(name)).name == name
    assert sorted(q.name for q in await adb.queues.list()) == sorted(names)


async def test_invalid_queue_names_are_rejected(adb: kvqueue.AsyncDatabase) -> None:
    """An invalid name raises InvalidQueueName (400, code 11003) and creates nothing."""
    names: list[Any] = ["", "-a", "a-", "A", "a_b", "a b", "a" * 64, "~kv", 7, None]
    raised = await _raised({repr(n): functools.partial(adb.queues.create, n) for n in names})
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidQueueName")
    assert {(e.status, e.code) for e in raised.values() if isinstance(e, kvqueue.KvQueueError)} == {
        (400, 11003)
    }
    assert await adb.queues.list() == []


async def test_queue_handle_with_invalid_name_is_rejected(adb: kvqueue.AsyncDatabase) -> None:
    """db.queue() with an invalid name raises InvalidQueueName at once."""
    names = ["", "A", "a_b", "~kv"]
    raised = await _raised({repr(n): functools.partial(adb.queue, n) for n in names})
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidQueueName")


async def test_management_refuses_the_internal_kv_queue(adb: kvqueue.AsyncDatabase) -> None:
    """Every db.queues call naming the internal KV queue raises InvalidQueueName or
    QueueNotFound, except metrics, which reports on it."""
    calls = ["get", "purge", "peek", "get_consumer", "remove_consumer", "add_consumer"]
    raised = await _raised(
        {call: functools.partial(getattr(adb.queues, call), kvqueue.KV_QUEUE) for call in calls}
    )
    refused = {"InvalidQueueName", "QueueNotFound"}
    assert {call: kind for call, kind in _kinds(raised).items() if kind not in refused} == {}
    await adb.enqueue("m", delay=60_000)
    assert (await adb.queues.metrics(kvqueue.KV_QUEUE)).backlog_count == 1


async def test_purge_cannot_drop_kv_queue_messages(adb: kvqueue.AsyncDatabase) -> None:
    """db.queues.purge of the internal KV queue's name leaves the KV queue's messages alone."""
    await adb.enqueue("kv message", delay=60_000)
    with contextlib.suppress(kvqueue.KvQueueError):
        await adb.queues.purge(kvqueue.KV_QUEUE)
    assert (await adb.queues.metrics(kvqueue.KV_QUEUE)).backlog_count == 1


async def test_duplicate_create_raises_queue_exists(adb: kvqueue.AsyncDatabase) -> None:
    """Creating a name twice raises QueueExists (409, code 11009) and keeps the first queue."""
    first = await adb.queues.create("q", delivery_delay=4)
    with pytest.raises(kvqueue.QueueExists) as caught:
        await adb.queues.create("q", delivery_delay=9)
    assert caught.value.code == 11009
    assert caught.value.status == 409
    assert await adb.queues.get("q") == first


async def test_get_of_missing_queue_raises_not_found(adb: kvqueue.AsyncDatabase) -> None:
    """get of an unknown queue raises QueueNotFound (404, code 10104)."""
    with pytest.raises(kvqueue.QueueNotFound) as caught:
        await adb.queues.get("nope")
    assert caught.value.code == 10104
    assert caught.value.status == 404


async def test_send_to_missing_queue_raises_not_found(adb: kvqueue.AsyncDatabase) -> None:
    """send to an unknown queue raises QueueNotFound (code 10104)."""
    with pytest.raises(kvqueue.QueueNotFound) as caught:
        await adb.queue("nope").send("x")
    assert caught.value.code == 10104


async def test_send_batch_to_missing_queue_raises_not_found(adb: kvqueue.AsyncDatabase) -> None:
    """send_batch to an unknown queue raises QueueNotFound."""
    with pytest.raises(kvqueue.QueueNotFound):
        await adb.queue("nope").send_batch(["x", "y"])


async def test_pull_from_missing_queue_raises_not_found(adb: kvqueue.AsyncDatabase) -> None:
    """pull from an unknown queue raises QueueNotFound (code 10104)."""
    with pytest.raises(kvqueue.QueueNotFound) as caught:
        await adb.queue("nope").pull()
    assert caught.value.code == 10104


async def test_management_of_missing_queue_raises_not_found(adb: kvqueue.AsyncDatabase) -> None:
    """delete, update, pause, resume, purge, metrics, peek and the consumer calls of an unknown queue raise QueueNotFound."""
    calls = [
        "delete",
        "update",
        "pause",
        "resume",
        "purge",
        "metrics",
        "peek",
        "get_consumer",
        "add_consumer",
        "remove_consumer",
    ]
    raised = await _raised(
        {call: functools.partial(getattr(adb.queues, call), "nope") for call in calls}
    )
    assert _kinds(raised) == dict.fromkeys(calls, "QueueNotFound")


async def test_update_changes_only_the_given_settings(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """update changes the settings it is given, keeps the others, and advances modified_at."""
    created = await fake_adb.queues.create("q", delivery_delay=5, message_retention_period=120)
    clock.advance(1000)
    updated = await fake_adb.queues.update("q", delivery_delay=7)
    assert updated.delivery_delay == 7
    assert updated.message_retention_period == 120
    assert updated.delivery_paused is False
    assert updated.queue_id == created.queue_id
    assert updated.created_at == created.created_at
    assert (updated.modified_at - created.modified_at).total_seconds() == 1
    assert await fake_adb.queues.get("q") == updated


async def test_update_of_retention_keeps_the_delay(adb: kvqueue.AsyncDatabase) -> None:
    """Updating message_retention_period alone leaves delivery_delay as it was."""
    await adb.queues.create("q", delivery_delay=5)
    updated = await adb.queues.update("q", message_retention_period=600)
    assert (updated.delivery_delay, updated.message_retention_period) == (5, 600)
    assert updated.modified_at >= updated.created_at


OUT_OF_RANGE_QUEUE_SETTINGS: list[dict[str, Any]] = [
    {"delivery_delay": -1},
    {"delivery_delay": 86_401},
    {"delivery_delay": 1.5},
    {"message_retention_period": 59},
    {"message_retention_period": 1_209_601},
    {"delivery_delay": 3, "message_retention_period": 59},
]


async def test_create_with_out_of_range_setting_raises_and_creates_nothing(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """A setting out of its range raises InvalidOption and no queue is created."""
    raised = await _raised(
        {
            repr(settings): functools.partial(adb.queues.create, "q", **settings)
            for settings in OUT_OF_RANGE_QUEUE_SETTINGS
        }
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")
    assert await adb.queues.list() == []


async def test_update_with_out_of_range_setting_raises_and_changes_nothing(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """An update with a setting out of range raises InvalidOption and changes no setting."""
    before = await adb.queues.create("q", delivery_delay=1, message_retention_period=600)
    cases = [*OUT_OF_RANGE_QUEUE_SETTINGS, {"delivery_paused": "yes"}]
    raised = await _raised(
        {
            repr(settings): functools.partial(adb.queues.update, "q", **settings)
            for settings in cases
        }
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")
    assert await adb.queues.get("q") == before


async def test_pause_and_resume_set_delivery_paused(adb: kvqueue.AsyncDatabase) -> None:
    """pause sets delivery_paused and resume clears it, keeping the other settings."""
    await adb.queues.create("q", delivery_delay=2)
    paused = await adb.queues.pause("q")
    assert paused.delivery_paused is True
    assert (await adb.queues.get("q")).delivery_paused is True
    resumed = await adb.queues.resume("q")
    assert resumed.delivery_paused is False
    assert resumed.delivery_delay == 2


async def test_delete_removes_the_queue(adb: kvqueue.AsyncDatabase) -> None:
    """After delete the queue is not listed, get raises QueueNotFound and send raises QueueNotFound."""
    await adb.queues.create("q")
    await adb.queues.create("other")
    await adb.queues.delete("q")
    assert [q.name for q in await adb.queues.list()] == ["other"]
    with pytest.raises(kvqueue.QueueNotFound):
        await adb.queues.get("q")
    with pytest.raises(kvqueue.QueueNotFound):
        await adb.queue("q").send("x")


async def test_delete_removes_messages_in_flight_too(adb: kvqueue.AsyncDatabase) -> None:
    """Deleting a queue deletes its waiting and in-flight messages: a new queue of that name is empty."""
    q = await _queue(adb)
    await q.send_batch(["a", "b", "c"])
    assert len((await q.pull(batch_size=1)).messages) == 1
    await adb.queues.delete("q")
    await adb.queues.create("q")
    metrics = await adb.queues.metrics("q")
    assert (metrics.backlog_count, metrics.backlog_bytes, metrics.in_flight) == (0, 0, 0)
    assert (await q.pull()).messages == []


async def test_ack_after_delete_is_a_warning(adb: kvqueue.AsyncDatabase) -> None:
    """Acking a lease pulled before its queue was deleted reports a warning instead of raising."""
    q = await _queue(adb)
    await q.send("x")
    (message,) = (await q.pull()).messages
    await adb.queues.delete("q")
    result = await q.ack(acks=[message.lease_id])
    assert result.ack_count == 0
    assert message.lease_id in result.warnings


async def test_ack_after_delete_and_recreate_is_a_warning(adb: kvqueue.AsyncDatabase) -> None:
    """Acking an old lease on a queue deleted and created again is a warning and touches nothing new."""
    q = await _queue(adb)
    await q.send("old")
    (message,) = (await q.pull()).messages
    await adb.queues.delete("q")
    await adb.queues.create("q")
    await q.send("new")
    result = await q.ack(acks=[message.lease_id])
    assert (result.ack_count, result.retry_count) == (0, 0)
    assert message.lease_id in result.warnings
    assert await _pulled_bodies(q) == ["new"]


async def test_purge_empties_the_backlog_including_delayed_and_in_flight(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """purge deletes waiting, delayed and in-flight messages; none comes back later."""
    q = await _queue(fake_adb)
    await q.send("visible")
    await q.send("delayed", delay_seconds=60)
    await q.send("leased")
    await q.pull(batch_size=1, visibility_timeout_ms=1000)
    await fake_adb.queues.purge("q")
    metrics = await q.metrics()
    assert (metrics.backlog_count, metrics.backlog_bytes, metrics.in_flight) == (0, 0, 0)
    clock.advance(61_000)
    assert (await q.pull()).messages == []


async def test_purge_keeps_the_queue_usable(adb: kvqueue.AsyncDatabase) -> None:
    """After purge the queue still exists and takes new messages."""
    q = await _queue(adb)
    await q.send("old")
    await adb.queues.purge("q")
    await q.send("new")
    assert await _pulled_bodies(q) == ["new"]


async def test_peek_shows_messages_without_leasing_them(adb: kvqueue.AsyncDatabase) -> None:
    """peek returns messages with their bodies but leases nothing: a later pull still gets them at attempt 1."""
    q = await _queue(adb)
    sent = await q.send_batch(["a", "b", "c"])
    peeked = await adb.queues.peek("q", 2)
    assert [m.body for m in peeked] == ["a", "b"]
    assert [m.id for m in peeked] == list(sent.message_ids[:2])
    assert all(m.content_type == "json" and m.raw == orjson.dumps(m.body) for m in peeked)
    assert (await q.metrics()).in_flight == 0
    pulled = (await q.pull(batch_size=10)).messages
    assert sorted(m.body for m in pulled) == ["a", "b", "c"]
    assert all(m.attempts == 1 for m in pulled)


async def test_peek_of_empty_queue_is_empty(adb: kvqueue.AsyncDatabase) -> None:
    """peek of an empty queue returns an empty list."""
    await adb.queues.create("q")
    assert await adb.queues.peek("q") == []


async def test_peek_count_out_of_range_raises(adb: kvqueue.AsyncDatabase) -> None:
    """peek of 0 or 101 messages raises InvalidOption."""
    await adb.queues.create("q")
    raised = await _raised({str(n): functools.partial(adb.queues.peek, "q", n) for n in (0, 101)})
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")


async def test_browse_pages_every_message_in_send_order_while_consumed(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """browse_page visits delayed, visible and leased messages in send order, leasing
    nothing; acks and sends between pages neither repeat nor skip a message that stays."""
    q = await _queue(adb)
    await q.send_batch(list(range(100)))
    await q.send_batch(list(range(100, 200)), delay_seconds=600)
    leased = (await q.pull(batch_size=10)).messages
    first = await adb.queues.browse_page("q", 100)
    assert [m.body for m in first.messages] == list(range(100))
    assert {m.attempts for m in first.messages[:10]} == {1}
    assert first.cursor is not None
    await q.ack(acks=[m.lease_id for m in leased])  # already seen: nothing to skip
    await q.send("late")
    seen = [m.body for m in first.messages]
    cursor: str | None = first.cursor
    while cursor is not None:
        page = await adb.queues.browse_page("q", 30, cursor=cursor)
        seen += [m.body for m in page.messages]
        cursor = page.cursor
    assert seen == [*range(200), "late"]
    assert (await q.metrics()).in_flight == 0
    pages = [await adb.queues.browse_page("q", 100)]
    while pages[-1].cursor is not None:
        pages.append(await adb.queues.browse_page("q", 100, cursor=pages[-1].cursor))
    assert [len(p.messages) for p in pages] == [100, 91]
    assert [m.body for p in pages for m in p.messages] == [*range(10, 200), "late"]
    raised = await _raised(
        {
            "n": functools.partial(adb.queues.browse_page, "q", 101),
            "cursor": functools.partial(adb.queues.browse_page, "q", cursor="nope"),
            "queue": functools.partial(adb.queues.browse_page, "nowhere"),
        }
    )
    assert _kinds(raised) == {
        "n": "InvalidOption",
        "cursor": "InvalidInput",
        "queue": "QueueNotFound",
    }


# --- 2. Producers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "raw", "decoded"),
    [
        ("json", {"a": [1, 2.5, "x"], "b": None}, b'{"a":[1,2.5,"x"],"b":null}', None),
        ("json", "just a string", b'"just a string"', None),
        ("text", "h\u00e9llo", "h\u00e9llo".encode(), None),
        ("bytes", b"\x00\x01\xff", b"\x00\x01\xff", None),
        ("bytes", bytearray(b"abc"), b"abc", b"abc"),
        (
            "v8",
            v8.dumps({"k": "v", "n": [1, 2]}),
            v8.dumps({"k": "v", "n": [1, 2]}),
            {"k": "v", "n": [1, 2]},
        ),
    ],
)
async def test_content_types_round_trip_through_pull(
    adb: kvqueue.AsyncDatabase, content_type: str, body: Any, raw: bytes, decoded: Any
) -> None:
    """Each content type's body comes back from pull decoded, with its stored bytes and CF-Content-Type."""
    q = await _queue(adb)
    sent = await q.send(body, content_type=content_type)
    (message,) = (await q.pull()).messages
    assert message.id == sent.message_ids[0]
    assert message.body == (body if decoded is None else decoded)
    assert message.raw == raw
    assert message.content_type == content_type
    assert message.metadata == {"CF-Content-Type": content_type}
    assert message.attempts == 1


async def test_content_type_is_case_insensitive(adb: kvqueue.AsyncDatabase) -> None:
    """content_type "JSON" and "Text" are accepted and stored as "json" and "text"."""
    q = await _queue(adb)
    await q.send({"a": 1}, content_type="JSON")
    await q.send_batch([kvqueue.MessageSendRequest("hi", content_type="Text")])
    pulled = (await q.pull()).messages
    assert sorted((m.content_type, repr(m.body)) for m in pulled) == [
        ("json", "{'a': 1}"),
        ("text", "'hi'"),
    ]


async def test_default_content_type_is_json(adb: kvqueue.AsyncDatabase) -> None:
    """A send without content_type stores JSON; plain items of a batch are JSON too."""
    q = await _queue(adb)
    await q.send([1, "two"])
    await q.send_batch([{"three": 3}])
    pulled = (await q.pull()).messages
    assert {m.content_type for m in pulled} == {"json"}
    assert sorted(m.raw for m in pulled) == sorted([b'[1,"two"]', b'{"three":3}'])


async def test_body_not_fitting_content_type_is_rejected(adb: kvqueue.AsyncDatabase) -> None:
    """A body of the wrong type, None, or an unknown content type raises InvalidMessage (400, 10203) and writes nothing."""
    q = await _queue(adb)
    cases: list[tuple[str, Any]] = [
        ("text", 1),
        ("text", b"bytes"),
        ("bytes", "a str"),
        ("bytes", 5),
        ("json", object()),
        ("json", {1, 2}),
        ("json", None),
        ("text", None),
        ("bytes", None),
        ("v8", {"not": "bytes"}),
        ("xml", "x"),
        ("", "x"),
    ]
    raised = await _raised(
        {repr(case): functools.partial(q.send, case[1], content_type=case[0]) for case in cases}
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidMessage")
    assert {(e.status, e.code) for e in raised.values() if isinstance(e, kvqueue.KvQueueError)} == {
        (400, 10203)
    }
    assert await _backlog(adb) == 0


async def test_batch_with_one_bad_body_writes_nothing(adb: kvqueue.AsyncDatabase) -> None:
    """A batch whose last message does not fit its content type raises InvalidMessage and sends none."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.InvalidMessage):
        await q.send_batch(["ok", "fine", kvqueue.MessageSendRequest(1, content_type="text")])
    assert await _backlog(adb) == 0


async def test_v8_body_that_is_not_v8_does_not_break_pull(adb: kvqueue.AsyncDatabase) -> None:
    """A v8 body whose bytes are not V8 data is either refused by send or pulled without an error."""
    q = await _queue(adb)
    try:
        await q.send(b"not v8 at all", content_type="v8")
    except kvqueue.InvalidMessage:
        return
    await q.send("good")
    pulled = (await q.pull()).messages
    assert sorted(m.raw for m in pulled) == [b'"good"', b"not v8 at all"]


async def test_empty_batch_raises_empty_batch(adb: kvqueue.AsyncDatabase) -> None:
    """send_batch([]) raises EmptyBatch (400, code 10206)."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.EmptyBatch) as caught:
        await q.send_batch([])
    assert (caught.value.status, caught.value.code) == (400, 10206)


async def test_batch_of_100_messages_is_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """A batch of exactly 100 messages is sent whole."""
    q = await _queue(adb)
    result = await q.send_batch(list(range(100)))
    assert len(set(result.message_ids)) == 100
    assert result.metrics.backlog_count == 100


async def test_batch_of_101_messages_raises_too_many_messages(adb: kvqueue.AsyncDatabase) -> None:
    """A batch of 101 messages raises TooManyMessages (code 10206) naming MAX_BATCH_MESSAGES, and sends none."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.TooManyMessages) as caught:
        await q.send_batch(list(range(101)))
    assert caught.value.code == 10206
    assert "MAX_BATCH_MESSAGES" in str(caught.value)
    assert (caught.value.maximum, caught.value.actual) == (100, 101)
    assert await _backlog(adb) == 0


async def test_message_of_128000_bytes_is_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """A body of exactly 128,000 bytes is sent, and counted in backlog_bytes."""
    q = await _queue(adb)
    result = await q.send(b"x" * 128_000, content_type="bytes")
    assert (result.metrics.backlog_count, result.metrics.backlog_bytes) == (1, 128_000)


async def test_message_over_128000_bytes_raises_message_too_large(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """A body of 128,001 bytes raises MessageTooLarge (code 10204) naming MAX_MESSAGE_BYTES, and nothing is written."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.MessageTooLarge) as caught:
        await q.send(b"x" * 128_001, content_type="bytes")
    assert caught.value.code == 10204
    assert "MAX_MESSAGE_BYTES" in str(caught.value)
    assert "by 1" in str(caught.value)
    assert await _backlog(adb) == 0


async def test_json_size_limit_counts_the_encoded_body(adb: kvqueue.AsyncDatabase) -> None:
    """A JSON string whose encoding (with quotes) is 128,001 bytes is too large."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.MessageTooLarge):
        await q.send("x" * 127_999)
    assert await _backlog(adb) == 0


async def test_batch_of_exactly_256000_bytes_is_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """Two 128,000-byte bodies (256,000 bytes together) are sent as one batch."""
    q = await _queue(adb)
    batch = [kvqueue.MessageSendRequest(b"x" * 128_000, content_type="bytes")] * 2
    result = await q.send_batch(batch)
    assert result.metrics.backlog_bytes == 256_000


async def test_batch_over_256000_bytes_raises_batch_too_large(adb: kvqueue.AsyncDatabase) -> None:
    """Bodies totalling 300,000 bytes raise BatchTooLarge (code 10205) naming MAX_BATCH_BYTES, and none is sent."""
    q = await _queue(adb)
    batch = [kvqueue.MessageSendRequest(b"x" * 100_000, content_type="bytes")] * 3
    with pytest.raises(kvqueue.BatchTooLarge) as caught:
        await q.send_batch(batch)
    assert caught.value.code == 10205
    assert "MAX_BATCH_BYTES" in str(caught.value)
    assert await _backlog(adb) == 0


async def test_send_delay_out_of_range_raises_invalid_delay(adb: kvqueue.AsyncDatabase) -> None:
    """A send delay outside 0 .. 86,400 s (or not a number) raises InvalidDelay (10203) naming the delay limit."""
    q = await _queue(adb)
    delays: list[Any] = [86_401, -1, 86_400.5, float("nan"), float("inf"), True, "5"]
    raised = await _raised(
        {repr(d): functools.partial(q.send, "x", delay_seconds=d) for d in delays}
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidDelay")
    for error in raised.values():
        assert isinstance(error, kvqueue.InvalidDelay)
        assert error.code == 10203
        assert "_DELAY_SECONDS" in str(error)  # MIN_ or MAX_
    assert await _backlog(adb) == 0


async def test_negative_delay_error_does_not_claim_a_negative_excess(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """The error for delay -1 does not say the delay is over its maximum by a negative amount."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.InvalidDelay) as caught:
        await q.send("x", delay_seconds=-1)
    assert "by -" not in str(caught.value)


async def test_send_delay_of_86400_is_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """A delay of exactly 86,400 s is accepted; the message waits."""
    q = await _queue(adb)
    await q.send("x", delay_seconds=86_400)
    assert await _backlog(adb) == 1
    assert (await q.pull()).messages == []


async def test_batch_delay_out_of_range_raises_invalid_batch_delay(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """A send_batch delay outside 0 .. 86,400 s raises InvalidBatchDelay (code 10202) and sends nothing."""
    q = await _queue(adb)
    raised = await _raised(
        {str(d): functools.partial(q.send_batch, ["a", "b"], delay_seconds=d) for d in (86_401, -1)}
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidBatchDelay")
    for error in raised.values():
        assert isinstance(error, kvqueue.InvalidBatchDelay)
        assert error.code == 10202
        assert "_DELAY_SECONDS" in str(error)  # MIN_ or MAX_
    assert await _backlog(adb) == 0


async def test_message_delay_out_of_range_in_batch_raises_invalid_delay(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """A batch message's own delay of 86,401 s raises InvalidDelay (code 10203) and sends none of the batch."""
    q = await _queue(adb)
    with pytest.raises(kvqueue.InvalidDelay) as caught:
        await q.send_batch(["a", kvqueue.MessageSendRequest("b", delay_seconds=86_401)])
    assert caught.value.code == 10203
    assert await _backlog(adb) == 0


async def test_send_returns_the_message_id_and_metrics(adb: kvqueue.AsyncDatabase) -> None:
    """send returns one 32-hex message id and the queue's metrics after the send."""
    q = await _queue(adb)
    first = await q.send("a")
    second = await q.send("b")
    assert len(first.message_ids) == 1
    assert HEX32.fullmatch(first.message_ids[0])
    assert first.message_ids != second.message_ids
    assert first.metrics.backlog_count == 1
    assert second.metrics.backlog_count == 2
    assert second.metrics.backlog_bytes == 6


async def test_send_batch_returns_one_id_per_message_in_order(adb: kvqueue.AsyncDatabase) -> None:
    """send_batch returns a distinct 32-hex id per message, in the batch's order."""
    q = await _queue(adb)
    result = await q.send_batch(["a", "b", "c"])
    assert len(set(result.message_ids)) == 3
    assert all(HEX32.fullmatch(i) for i in result.message_ids)
    peeked = await adb.queues.peek("q", 3)
    assert {m.id: m.body for m in peeked} == dict(
        zip(result.message_ids, ["a", "b", "c"], strict=True)
    )
    assert result.metrics.backlog_count == 3


async def test_queue_delivery_delay_delays_a_plain_send(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """With delivery_delay=10 a send without its own delay is pullable 10 s later, not a millisecond before."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send("x")
    assert (await q.pull()).messages == []
    clock.advance(9_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["x"]


async def test_explicit_zero_delay_overrides_queue_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """delay_seconds=0 on a queue with delivery_delay=10 makes the message pullable at once."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send("now", delay_seconds=0)
    assert await _pulled_bodies(q) == ["now"]


async def test_explicit_delay_overrides_queue_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """delay_seconds=3 on a queue with delivery_delay=10 makes the message pullable after 3 s."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send("soon", delay_seconds=3)
    clock.advance(2_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["soon"]


async def test_send_delay_holds_a_message(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """delay_seconds=2 on a queue without a delay holds the message for exactly 2 s."""
    q = await _queue(fake_adb)
    await q.send("later", delay_seconds=2)
    assert (await q.pull()).messages == []
    clock.advance(1_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["later"]


async def test_batch_without_delay_takes_queue_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A batch with no delay anywhere waits for the queue's delivery_delay."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send_batch(["a", "b"])
    clock.advance(9_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert sorted(await _pulled_bodies(q)) == ["a", "b"]


async def test_batch_delay_applies_to_messages_without_their_own(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A batch delay of 30 s beats the queue's delivery_delay of 10 s for messages without their own delay."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send_batch(["a", kvqueue.MessageSendRequest("b")], delay_seconds=30)
    clock.advance(29_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert sorted(await _pulled_bodies(q)) == ["a", "b"]


async def test_message_delay_beats_batch_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """In a batch with delay 30 s, a message with delay 0 is pullable at once and one with delay 5 after 5 s."""
    q = await _queue(fake_adb, delivery_delay=10)
    await q.send_batch(
        [
            kvqueue.MessageSendRequest("now", delay_seconds=0),
            kvqueue.MessageSendRequest("five", delay_seconds=5),
            "thirty",
        ],
        delay_seconds=30,
    )
    assert await _pulled_bodies(q) == ["now"]
    clock.advance(5_000)
    assert await _pulled_bodies(q) == ["five"]
    clock.advance(24_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["thirty"]


async def test_queue_delay_change_applies_to_later_sends(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """After update(delivery_delay=0) a plain send is pullable at once."""
    q = await _queue(fake_adb, delivery_delay=10)
    await fake_adb.queues.update("q", delivery_delay=0)
    await q.send("x")
    assert await _pulled_bodies(q) == ["x"]


async def test_atomic_send_commits_with_the_kv_write(adb: kvqueue.AsyncDatabase) -> None:
    """An atomic set plus send to a named queue commits both."""
    q = await _queue(adb)
    result = await adb.atomic().set(("k",), 1).send("q", {"m": 1}).commit()
    assert result.ok
    assert (await adb.get(("k",))).value == 1
    (message,) = (await q.pull()).messages
    assert message.body == {"m": 1}
    assert HEX32.fullmatch(message.id)


async def test_atomic_send_with_failing_check_writes_neither(adb: kvqueue.AsyncDatabase) -> None:
    """An atomic set plus send whose check fails writes neither the key nor the message."""
    q = await _queue(adb)
    await adb.set(("k",), 1)
    result = (
        await adb.atomic()
        .check(kvqueue.AtomicCheck(("k",), None))
        .set(("k",), 2)
        .send("q", "m")
        .commit()
    )
    assert not result.ok
    assert (await adb.get(("k",))).value == 1
    assert await _backlog(adb) == 0
    assert (await q.pull()).messages == []


async def test_atomic_send_to_missing_queue_writes_nothing(adb: kvqueue.AsyncDatabase) -> None:
    """An atomic set plus send to an unknown queue raises QueueNotFound and the set is not applied."""
    with pytest.raises(kvqueue.QueueNotFound):
        await adb.atomic().set(("k",), 1).send("nope", "m").commit()
    assert (await adb.get(("k",))).value is None


async def test_atomic_send_checks_the_message_when_added(adb: kvqueue.AsyncDatabase) -> None:
    """atomic().send with a body not fitting its content type raises InvalidMessage before commit."""
    await adb.queues.create("q")
    with pytest.raises(kvqueue.InvalidMessage):
        adb.atomic().send("q", 1, content_type="text")
    with pytest.raises(kvqueue.InvalidQueueName):
        adb.atomic().send("Bad", "x")


async def test_atomic_send_takes_the_queue_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A message sent in an atomic operation without a delay waits for the queue's delivery_delay."""
    q = await _queue(fake_adb, delivery_delay=10)
    assert await fake_adb.atomic().send("q", "x").commit()
    clock.advance(9_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["x"]


# --- 3. Retention ------------------------------------------------------------------


async def test_retention_deletes_old_messages_of_a_paused_queue(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A paused queue with message_retention_period=60 loses its message once 60 s have passed."""
    q = await _queue(fake_adb, message_retention_period=60)
    await fake_adb.queues.pause("q")
    start = clock.now_ms()
    await q.send("old")
    await asleep_until(clock, start + 60_000)
    clock.advance(59_999)
    assert (await q.metrics()).backlog_count == 1
    clock.advance(1_001)
    metrics = await wait_until_async(q.metrics, lambda m: m.backlog_count == 0)
    assert (metrics.backlog_bytes, metrics.oldest_message_timestamp_ms) == (0, 0)


async def test_retention_keeps_messages_younger_than_the_period(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """When the oldest message expires, a message sent 30 s later is kept until its own time."""
    q = await _queue(fake_adb, message_retention_period=60)
    start = clock.now_ms()
    await q.send("old")
    await asleep_until(clock, start + 60_000)
    clock.advance(30_000)
    await q.send("young")
    clock.advance(30_001)
    await wait_until_async(q.metrics, lambda m: m.backlog_count == 1)
    assert await _pulled_bodies(q) == ["young"]


# --- 4. Pull consumers ---------------------------------------------------------------


async def test_pull_of_empty_queue_returns_nothing(adb: kvqueue.AsyncDatabase) -> None:
    """A pull from an empty queue answers at once with no messages."""
    q = await _queue(adb)
    result = await q.pull()
    assert (result.messages, result.backlog_count) == ([], 0)


async def test_pull_returns_five_messages_by_default(adb: kvqueue.AsyncDatabase) -> None:
    """A pull without batch_size returns at most 5 messages; the next pull gets the rest."""
    q = await _queue(adb)
    await q.send_batch(list(range(7)))
    first = await q.pull()
    assert len(first.messages) == 5
    assert first.backlog_count == 7
    assert len((await q.pull()).messages) == 2


async def test_pull_returns_up_to_100_messages(adb: kvqueue.AsyncDatabase) -> None:
    """pull(batch_size=100) returns 100 messages of a queue holding 100."""
    q = await _queue(adb)
    await q.send_batch(list(range(100)))
    assert sorted(await _pulled_bodies(q, 100)) == list(range(100))


async def test_pulled_message_fields(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A pulled message carries its 32-hex id, send timestamp, attempts 1 and a lease id."""
    q = await _queue(fake_adb)
    sent_at = clock.now_ms()
    sent = await q.send({"a": 1})
    clock.advance(500)
    (message,) = (await q.pull()).messages
    assert message.id == sent.message_ids[0]
    assert message.timestamp_ms == sent_at
    assert message.attempts == 1
    assert isinstance(message.lease_id, str)
    assert message.lease_id


async def test_pull_batch_size_out_of_range_raises(adb: kvqueue.AsyncDatabase) -> None:
    """pull with batch_size 0, 101 or not a whole number raises InvalidOption and leases nothing."""
    q = await _queue(adb)
    await q.send("x")
    sizes: list[Any] = [0, 101, -1, 2.5, True]
    raised = await _raised({repr(n): functools.partial(q.pull, batch_size=n) for n in sizes})
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")
    assert (await q.metrics()).in_flight == 0


async def test_pull_visibility_timeout_out_of_range_raises(adb: kvqueue.AsyncDatabase) -> None:
    """pull with visibility_timeout_ms over 12 h (43,200,001) or 0 raises InvalidOption and leases nothing."""
    q = await _queue(adb)
    await q.send("x")
    raised = await _raised(
        {str(ms): functools.partial(q.pull, visibility_timeout_ms=ms) for ms in (43_200_001, 0)}
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")
    assert (await q.metrics()).in_flight == 0


async def test_pull_visibility_timeout_of_12_hours_is_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """pull with visibility_timeout_ms of exactly 43,200,000 is accepted."""
    q = await _queue(adb)
    await q.send("x")
    (message,) = (await q.pull(visibility_timeout_ms=43_200_000)).messages
    assert message.body == "x"
    assert (await q.metrics()).in_flight == 1


async def test_concurrent_pulls_get_disjoint_leases(adb: kvqueue.AsyncDatabase) -> None:
    """Two concurrent pulls return disjoint messages whose union is the whole queue."""
    q = await _queue(adb)
    sent = await q.send_batch(list(range(10)))
    first, second = await asyncio.gather(q.pull(batch_size=10), q.pull(batch_size=10))
    ids_first = {m.id for m in first.messages}
    ids_second = {m.id for m in second.messages}
    assert not ids_first & ids_second
    assert ids_first | ids_second == set(sent.message_ids)


async def test_leased_message_is_not_pulled_again_before_its_timeout(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Messages leased by one pull are not returned by the next pull."""
    q = await _queue(adb)
    sent = await q.send_batch(list(range(8)))
    first = await q.pull(batch_size=5)
    second = await q.pull(batch_size=5)
    assert len(first.messages) == 5
    assert len(second.messages) == 3
    assert {m.id for m in first.messages} | {m.id for m in second.messages} == set(sent.message_ids)
    assert (await q.pull()).messages == []


async def test_unacked_message_comes_back_after_visibility_timeout(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """Unacked, a message stays hidden for its visibility timeout, then returns with attempts 2 and a new lease."""
    q = await _queue(fake_adb)
    await q.send("x")
    (first,) = (await q.pull(visibility_timeout_ms=1000)).messages
    assert (await q.pull()).messages == []
    clock.advance(999)
    assert (await q.pull()).messages == []
    clock.advance(2)
    (again,) = (await q.pull()).messages
    assert again.id == first.id
    assert again.body == "x"
    assert again.attempts == 2
    assert again.lease_id != first.lease_id


async def test_ack_removes_the_message_for_good(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """ack of a lease returns ack_count 1 and the message is never delivered again."""
    q = await _queue(fake_adb)
    await q.send("x")
    (message,) = (await q.pull(visibility_timeout_ms=1000)).messages
    result = await q.ack(acks=[message.lease_id])
    assert (result.ack_count, result.retry_count, result.warnings) == (1, 0, {})
    clock.advance(60_000)
    assert (await q.pull()).messages == []
    assert await _backlog(fake_adb) == 0


async def test_ack_twice_warns_the_second_time(adb: kvqueue.AsyncDatabase) -> None:
    """A second ack of the same lease counts nothing and reports a warning."""
    q = await _queue(adb)
    await q.send("x")
    (message,) = (await q.pull()).messages
    await q.ack(acks=[message.lease_id])
    result = await q.ack(acks=[message.lease_id])
    assert result.ack_count == 0
    assert message.lease_id in result.warnings


async def test_retry_with_delay_hides_the_message_for_that_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """retries=[(lease, 2)] returns retry_count 1; the message is back 2 s later with attempts 2."""
    q = await _queue(fake_adb)
    await q.send("x")
    (message,) = (await q.pull()).messages
    result = await q.ack(retries=[(message.lease_id, 2)])
    assert (result.ack_count, result.retry_count, result.warnings) == (0, 1, {})
    assert (await q.pull()).messages == []
    clock.advance(1_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    (again,) = (await q.pull()).messages
    assert (again.id, again.attempts) == (message.id, 2)


async def test_retry_without_delay_is_pullable_at_once(adb: kvqueue.AsyncDatabase) -> None:
    """A retry without a delay (bare lease id or with None) makes the message pullable at once with attempts+1."""
    q = await _queue(adb)
    await q.send_batch(["a", "b"])
    first = (await q.pull()).messages
    result = await q.ack(retries=[first[0].lease_id, (first[1].lease_id, None)])
    assert result.retry_count == 2
    again = (await q.pull()).messages
    assert sorted(m.body for m in again) == ["a", "b"]
    assert all(m.attempts == 2 for m in again)


async def test_retry_uses_the_consumer_retry_delay(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A retry without its own delay waits the http_pull consumer's retry_delay."""
    q = await _queue(fake_adb)
    await fake_adb.queues.add_consumer("q", "http_pull", retry_delay=4)
    await q.send("x")
    (message,) = (await q.pull()).messages
    await q.ack(retries=[message.lease_id])
    clock.advance(3_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["x"]


async def test_retry_delay_out_of_range_raises(adb: kvqueue.AsyncDatabase) -> None:
    """A retry delay over 86,400 s raises InvalidDelay and leaves the message leased."""
    q = await _queue(adb)
    await q.send("x")
    (message,) = (await q.pull()).messages
    with pytest.raises(kvqueue.InvalidDelay):
        await q.ack(retries=[(message.lease_id, 86_401)])
    assert (await q.metrics()).in_flight == 1


async def test_late_ack_is_accepted(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """An ack of an expired lease, after the message was leased again, is accepted and removes it."""
    q = await _queue(fake_adb)
    await q.send("x")
    (first,) = (await q.pull(visibility_timeout_ms=1000)).messages
    clock.advance(1_001)
    (second,) = (await q.pull(visibility_timeout_ms=1000)).messages
    assert second.lease_id != first.lease_id
    result = await q.ack(acks=[first.lease_id])
    assert (result.ack_count, result.warnings) == (1, {})
    assert await _backlog(fake_adb) == 0
    clock.advance(1_001)
    assert (await q.pull()).messages == []


async def test_retry_under_an_old_lease_is_a_warning(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A retry by a lease that ran out and was replaced counts nothing, warns, and leaves the new lease alone."""
    q = await _queue(fake_adb)
    await q.send("x")
    (first,) = (await q.pull(visibility_timeout_ms=1000)).messages
    clock.advance(1_001)
    (second,) = (await q.pull(visibility_timeout_ms=1000)).messages
    result = await q.ack(retries=[first.lease_id])
    assert result.retry_count == 0
    assert first.lease_id in result.warnings
    assert (await q.metrics()).in_flight == 1
    assert (await q.ack(acks=[second.lease_id])).ack_count == 1


async def test_unknown_lease_id_is_a_warning(adb: kvqueue.AsyncDatabase) -> None:
    """Unknown or malformed lease ids, acked or retried, are reported in warnings and raise nothing."""
    q = await _queue(adb)
    await q.send("x")
    lease_ids = ["garbage", "", "a.b.c", "0" * 32 + ".1.ffff", "x.1.y.z"]
    ack = await q.ack(acks=lease_ids)
    assert (ack.ack_count, ack.retry_count) == (0, 0)
    assert sorted(ack.warnings) == sorted(lease_ids)
    retry = await q.ack(retries=lease_ids)
    assert (retry.ack_count, retry.retry_count) == (0, 0)
    assert sorted(retry.warnings) == sorted(lease_ids)
    assert await _backlog(adb) == 1


async def test_ack_mixes_good_and_unknown_leases(adb: kvqueue.AsyncDatabase) -> None:
    """One ack call with a good lease, a retry and a garbage id applies the good ones and warns on the garbage."""
    q = await _queue(adb)
    await q.send_batch(["a", "b"])
    a, b = sorted((await q.pull()).messages, key=lambda m: m.body)
    result = await q.ack(acks=[a.lease_id, "garbage"], retries=[b.lease_id])
    assert (result.ack_count, result.retry_count) == (1, 1)
    assert list(result.warnings) == ["garbage"]
    assert await _pulled_bodies(q) == ["b"]


async def test_lease_of_another_queue_is_a_warning(adb: kvqueue.AsyncDatabase) -> None:
    """Acking or retrying queue a's lease through queue b warns and leaves a's message leased."""
    a = await _queue(adb, "a")
    b = await _queue(adb, "b")
    await a.send("x")
    (message,) = (await a.pull()).messages
    ack = await b.ack(acks=[message.lease_id])
    assert ack.ack_count == 0
    assert message.lease_id in ack.warnings
    retry = await b.ack(retries=[message.lease_id])
    assert retry.retry_count == 0
    assert message.lease_id in retry.warnings
    assert (await a.metrics()).in_flight == 1
    assert (await b.metrics()).retried == 0


async def test_retries_exhausted_move_the_message_to_the_dead_letter_queue(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """With max_retries=2 the third retry moves the message to "dlq" (created) with its id, body and timestamp."""
    q = await _queue(adb)
    await adb.queues.add_consumer("q", "http_pull", max_retries=2, dead_letter_queue="dlq")
    sent = await q.send({"job": 1})
    for attempt in (1, 2, 3):
        (message,) = (await q.pull()).messages
        assert message.attempts == attempt
        await q.ack(retries=[message.lease_id])
    assert (await q.pull()).messages == []
    assert "dlq" in [info.name for info in await adb.queues.list()]
    (dead,) = (await adb.queue("dlq").pull()).messages
    assert dead.id == sent.message_ids[0]
    assert dead.body == {"job": 1}
    assert dead.timestamp_ms == message.timestamp_ms
    assert dead.attempts == 1
    metrics = await adb.queues.metrics("q")
    assert (metrics.dead_lettered, metrics.retried, metrics.backlog_count) == (1, 2, 0)


async def test_dead_letter_queue_created_with_default_settings(adb: kvqueue.AsyncDatabase) -> None:
    """A dead-letter queue created on demand has the default settings and holds the message in its backlog."""
    q = await _queue(adb)
    await adb.queues.add_consumer("q", "http_pull", max_retries=0, dead_letter_queue="dlq")
    await q.send("x")
    (message,) = (await q.pull()).messages
    await q.ack(retries=[message.lease_id])
    dlq = await adb.queues.get("dlq")
    assert (dlq.delivery_delay, dlq.message_retention_period, dlq.delivery_paused) == (
        0,
        345_600,
        False,
    )
    assert (await adb.queues.metrics("dlq")).backlog_count == 1


async def test_retries_exhausted_without_dead_letter_queue_delete_the_message(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """With max_retries=2 and no dead-letter queue the third retry deletes the message."""
    q = await _queue(adb)
    await adb.queues.add_consumer("q", "http_pull", max_retries=2)
    await q.send("x")
    for _ in range(3):
        (message,) = (await q.pull()).messages
        await q.ack(retries=[message.lease_id])
    assert (await q.pull()).messages == []
    metrics = await q.metrics()
    assert (metrics.backlog_count, metrics.dead_lettered, metrics.retried) == (0, 1, 2)
    assert [info.name for info in await adb.queues.list()] == ["q"]


async def test_visibility_timeouts_count_as_deliveries_for_dead_lettering(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """With max_retries=0 a message whose lease expires is dead-lettered on the next pull instead of redelivered."""
    q = await _queue(fake_adb)
    await fake_adb.queues.add_consumer("q", "http_pull", max_retries=0, dead_letter_queue="dlq")
    await q.send("x")
    assert len((await q.pull(visibility_timeout_ms=1000)).messages) == 1
    clock.advance(1_001)
    assert (await q.pull()).messages == []
    assert await _pulled_bodies(fake_adb.queue("dlq")) == ["x"]


async def test_default_pull_consumer_allows_three_retries(adb: kvqueue.AsyncDatabase) -> None:
    """Without a consumer a pulled message may be retried 3 times (4 deliveries) before it is dropped."""
    q = await _queue(adb)
    await q.send("x")
    for attempt in (1, 2, 3, 4):
        (message,) = (await q.pull()).messages
        assert message.attempts == attempt
        await q.ack(retries=[message.lease_id])
    assert (await q.pull()).messages == []
    assert (await q.metrics()).dead_lettered == 1


async def test_paused_queue_refuses_pulls_but_takes_sends(adb: kvqueue.AsyncDatabase) -> None:
    """A paused queue raises QueuePaused (409, queue_delivery_paused) on pull, still takes sends, and pulls after resume."""
    q = await _queue(adb)
    await adb.queues.pause("q")
    await q.send("x")
    assert await _backlog(adb) == 1
    with pytest.raises(kvqueue.QueuePaused) as caught:
        await q.pull()
    assert caught.value.status == 409
    assert caught.value.code == 10252
    assert "queue_delivery_paused" in str(caught.value)
    await adb.queues.resume("q")
    assert await _pulled_bodies(q) == ["x"]


async def test_pause_does_not_cancel_acks_of_pulled_messages(adb: kvqueue.AsyncDatabase) -> None:
    """A message pulled before a pause can still be acked while the queue is paused."""
    q = await _queue(adb)
    await q.send("x")
    (message,) = (await q.pull()).messages
    await adb.queues.pause("q")
    assert (await q.ack(acks=[message.lease_id])).ack_count == 1
    assert await _backlog(adb) == 0


# --- 5. One consumer per queue -------------------------------------------------------


async def test_add_consumer_returns_its_settings(adb: kvqueue.AsyncDatabase) -> None:
    """add_consumer returns the consumer with a 32-hex id; get_consumer returns the same."""
    await adb.queues.create("q")
    consumer = await adb.queues.add_consumer(
        "q", "http_pull", max_retries=5, dead_letter_queue="dlq", visibility_timeout_ms=5000
    )
    assert consumer.type == "http_pull"
    assert (consumer.max_retries, consumer.dead_letter_queue) == (5, "dlq")
    assert consumer.batch_size == 5
    assert HEX32.fullmatch(consumer.consumer_id)
    assert await adb.queues.get_consumer("q") == consumer
    assert (await adb.queues.get("q")).consumer == consumer


async def test_worker_consumer_defaults(adb: kvqueue.AsyncDatabase) -> None:
    """A worker consumer added without settings has batch size 10, timeout 5 s, 3 retries and no DLQ."""
    await adb.queues.create("q")
    consumer = await adb.queues.add_consumer("q", "worker", script_name="w")
    assert consumer.type == "worker"
    assert consumer.script_name == "w"
    assert (consumer.batch_size, consumer.max_batch_timeout, consumer.max_retries) == (10, 5, 3)
    assert (consumer.dead_letter_queue, consumer.max_concurrency, consumer.retry_delay) == (
        None,
        None,
        0,
    )


@pytest.mark.parametrize("second", ["worker", "http_pull"])
async def test_second_consumer_raises_consumer_exists(
    adb: kvqueue.AsyncDatabase, second: str
) -> None:
    """Adding a consumer to a queue that has one raises ConsumerExists (409, code 11004) and keeps the first."""
    await adb.queues.create("q")
    first = await adb.queues.add_consumer("q", "http_pull")
    with pytest.raises(kvqueue.ConsumerExists) as caught:
        await adb.queues.add_consumer("q", second)
    assert (caught.value.status, caught.value.code) == (409, 11004)
    assert await adb.queues.get_consumer("q") == first


async def test_pull_from_queue_with_worker_consumer_raises(adb: kvqueue.AsyncDatabase) -> None:
    """pull from a queue whose consumer is a worker raises ConsumerExists and leases nothing."""
    q = await _queue(adb)
    await adb.queues.add_consumer("q", "worker", script_name="w")
    await q.send("x")
    with pytest.raises(kvqueue.ConsumerExists):
        await q.pull()
    assert (await q.metrics()).in_flight == 0


async def test_remove_consumer_then_add_another_type(adb: kvqueue.AsyncDatabase) -> None:
    """After remove_consumer a consumer of the other type can be added, and pulls work."""
    q = await _queue(adb)
    await adb.queues.add_consumer("q", "worker", script_name="w")
    await adb.queues.remove_consumer("q")
    assert await adb.queues.get_consumer("q") is None
    consumer = await adb.queues.add_consumer("q", "http_pull", batch_size=2)
    assert (await adb.queues.get_consumer("q")) == consumer
    await q.send_batch(["a", "b", "c"])
    assert len((await q.pull()).messages) == 2


async def test_remove_consumer_without_one_raises(adb: kvqueue.AsyncDatabase) -> None:
    """remove_consumer on a queue without a consumer raises ConsumerNotFound."""
    await adb.queues.create("q")
    with pytest.raises(kvqueue.ConsumerNotFound):
        await adb.queues.remove_consumer("q")


async def test_add_consumer_to_missing_queue_raises(adb: kvqueue.AsyncDatabase) -> None:
    """add_consumer on an unknown queue raises QueueNotFound."""
    with pytest.raises(kvqueue.QueueNotFound):
        await adb.queues.add_consumer("nope", "http_pull")


async def test_consumer_cannot_dead_letter_to_its_own_queue(adb: kvqueue.AsyncDatabase) -> None:
    """dead_letter_queue equal to the queue itself raises InvalidOption and adds no consumer."""
    await adb.queues.create("q")
    with pytest.raises(kvqueue.InvalidOption):
        await adb.queues.add_consumer("q", "http_pull", dead_letter_queue="q")
    assert await adb.queues.get_consumer("q") is None


async def test_consumer_dead_letter_queue_name_is_checked(adb: kvqueue.AsyncDatabase) -> None:
    """An invalid dead_letter_queue name raises InvalidQueueName and adds no consumer."""
    await adb.queues.create("q")
    with pytest.raises(kvqueue.InvalidQueueName):
        await adb.queues.add_consumer("q", "http_pull", dead_letter_queue="Bad_Name")
    assert await adb.queues.get_consumer("q") is None


async def test_consumer_setting_out_of_range_raises(adb: kvqueue.AsyncDatabase) -> None:
    """A consumer setting out of its range raises InvalidOption and adds no consumer."""
    await adb.queues.create("q")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("worker", {"batch_size": 0}),
        ("http_pull", {"batch_size": 101}),
        ("worker", {"max_batch_timeout": 61}),
        ("worker", {"max_batch_timeout": -1}),
        ("http_pull", {"max_retries": 101}),
        ("worker", {"max_retries": -1}),
        ("worker", {"max_concurrency": 0}),
        ("worker", {"max_concurrency": 251}),
        ("http_pull", {"retry_delay": 86_401}),
        ("http_pull", {"visibility_timeout_ms": 43_200_001}),
    ]
    raised = await _raised(
        {
            repr(case): functools.partial(adb.queues.add_consumer, "q", case[0], **case[1])
            for case in cases
        }
    )
    assert _kinds(raised) == dict.fromkeys(raised, "InvalidOption")
    assert await adb.queues.get_consumer("q") is None


async def test_consumer_settings_at_their_limits_are_accepted(adb: kvqueue.AsyncDatabase) -> None:
    """batch_size 100, max_batch_timeout 60, max_retries 100 and max_concurrency 250 are accepted."""
    await adb.queues.create("q")
    consumer = await adb.queues.add_consumer(
        "q", "worker", batch_size=100, max_batch_timeout=60, max_retries=100, max_concurrency=250
    )
    assert (consumer.batch_size, consumer.max_batch_timeout) == (100, 60)
    assert (consumer.max_retries, consumer.max_concurrency) == (100, 250)


async def test_unknown_consumer_type_raises(adb: kvqueue.AsyncDatabase) -> None:
    """A consumer type other than worker or http_pull raises InvalidOption."""
    await adb.queues.create("q")
    with pytest.raises(kvqueue.InvalidOption):
        await adb.queues.add_consumer("q", "push")


async def test_pull_takes_the_consumer_visibility_timeout(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A pull without visibility_timeout_ms leases for the http_pull consumer's visibility timeout."""
    q = await _queue(fake_adb)
    await fake_adb.queues.add_consumer("q", "http_pull", visibility_timeout_ms=2000)
    await q.send("x")
    await q.pull()
    clock.advance(1_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["x"]


async def test_pull_default_visibility_timeout_is_30_seconds(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """Without a consumer a pulled message stays leased for 30 s."""
    q = await _queue(fake_adb)
    await q.send("x")
    await q.pull()
    clock.advance(29_999)
    assert (await q.pull()).messages == []
    clock.advance(1)
    assert await _pulled_bodies(q) == ["x"]


# --- 6. Metrics ------------------------------------------------------------------------


async def test_metrics_of_a_new_queue_are_zero(adb: kvqueue.AsyncDatabase) -> None:
    """A new queue has an empty backlog, no oldest message, nothing in flight, retried or dead-lettered."""
    await adb.queues.create("q")
    metrics = await adb.queues.metrics("q")
    assert metrics == kvqueue.QueueMetrics(0, 0, 0, 0, 0, 0)
    assert metrics.oldest_message_timestamp is None


async def test_backlog_tracks_send_ack_and_purge(adb: kvqueue.AsyncDatabase) -> None:
    """backlog_count and backlog_bytes grow with sends, shrink with acks, and drop to zero on purge."""
    q = await _queue(adb)
    await q.send("abc", content_type="text")
    await q.send(b"12345", content_type="bytes")
    await q.send("zz", content_type="text")
    metrics = await q.metrics()
    assert (metrics.backlog_count, metrics.backlog_bytes) == (3, 10)
    pulled = {m.body: m for m in (await q.pull()).messages}
    await q.ack(acks=[pulled[b"12345"].lease_id])
    metrics = await q.metrics()
    assert (metrics.backlog_count, metrics.backlog_bytes) == (2, 5)
    await adb.queues.purge("q")
    metrics = await q.metrics()
    assert (metrics.backlog_count, metrics.backlog_bytes) == (0, 0)


async def test_oldest_message_timestamp_follows_the_backlog(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """oldest_message_timestamp_ms is 0 when empty, the oldest send time otherwise, and moves on when it is acked."""
    q = await _queue(fake_adb)
    assert (await q.metrics()).oldest_message_timestamp_ms == 0
    first_at = clock.now_ms()
    await q.send("first")
    clock.advance(5_000)
    await q.send("second")
    metrics = await q.metrics()
    assert metrics.oldest_message_timestamp_ms == first_at
    assert metrics.oldest_message_timestamp is not None
    assert metrics.oldest_message_timestamp.timestamp() * 1000 == first_at
    (first,) = (await q.pull(batch_size=1)).messages
    assert first.body == "first"
    await q.ack(acks=[first.lease_id])
    assert (await q.metrics()).oldest_message_timestamp_ms == first_at + 5_000


async def test_in_flight_counts_pulled_unsettled_messages(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """in_flight counts messages pulled and not yet acked, retried or timed out."""
    q = await _queue(fake_adb)
    await q.send_batch(["a", "b", "c", "d"])
    pulled = (await q.pull(batch_size=3, visibility_timeout_ms=1000)).messages
    assert (await q.metrics()).in_flight == 3
    await q.ack(acks=[pulled[0].lease_id])
    assert (await q.metrics()).in_flight == 2
    await q.ack(retries=[pulled[1].lease_id])
    metrics = await q.metrics()
    assert (metrics.in_flight, metrics.retried, metrics.backlog_count) == (1, 1, 3)
    clock.advance(1_000)
    assert (await q.metrics()).in_flight == 0


async def test_queue_metrics_match_management_metrics(adb: kvqueue.AsyncDatabase) -> None:
    """db.queue(name).metrics() and db.queues.metrics(name) report the same."""
    q = await _queue(adb)
    await q.send_batch(["a", "b"])
    await q.pull(batch_size=1)
    assert await q.metrics() == await adb.queues.metrics("q")


async def test_pull_reports_the_backlog(adb: kvqueue.AsyncDatabase) -> None:
    """PullResult.backlog_count counts every unacked message, the ones just leased included."""
    q = await _queue(adb)
    await q.send_batch(["a", "b", "c"])
    result = await q.pull(batch_size=2)
    assert result.backlog_count == 3


# --- 7. The sync face --------------------------------------------------------------------


def test_sync_create_send_pull_ack(db: kvqueue.Database) -> None:
    """The sync face creates a queue, sends, pulls and acks as the async one does."""
    info = db.queues.create("q")
    assert info.name == "q"
    q = db.queue("q")
    sent = q.send({"a": 1})
    assert sent.metrics.backlog_count == 1
    (message,) = q.pull().messages
    assert (message.id, message.body, message.attempts) == (sent.message_ids[0], {"a": 1}, 1)
    result = q.ack(acks=[message.lease_id])
    assert result.ack_count == 1
    assert q.metrics().backlog_count == 0


def test_sync_management_and_errors(db: kvqueue.Database) -> None:
    """The sync face lists, updates, pauses, peeks and deletes, raising the same errors."""
    db.queues.create("q")
    q = db.queue("q")
    q.send_batch(["a", kvqueue.MessageSendRequest("b", content_type="text")])
    assert [m.body for m in db.queues.peek("q", 5)] == ["a", "b"]
    assert db.queues.update("q", delivery_delay=4).delivery_delay == 4
    db.queues.pause("q")
    with pytest.raises(kvqueue.QueuePaused):
        q.pull()
    with pytest.raises(kvqueue.QueueExists):
        db.queues.create("q")
    with pytest.raises(kvqueue.InvalidMessage):
        q.send(1, content_type="text")
    assert [i.name for i in db.queues.list()] == ["q"]
    db.queues.delete("q")
    with pytest.raises(kvqueue.QueueNotFound):
        db.queues.get("q")


def test_sync_retry_and_dead_letter(db: kvqueue.Database) -> None:
    """Through the sync face, a consumer's retries end on its dead-letter queue."""
    db.queues.create("q")
    db.queues.add_consumer("q", "http_pull", max_retries=0, dead_letter_queue="dlq")
    q = db.queue("q")
    q.send("x")
    (message,) = q.pull().messages
    assert q.ack(retries=[message.lease_id]).retry_count == 1
    assert [m.body for m in db.queue("dlq").pull().messages] == ["x"]


def test_sync_atomic_send(db: kvqueue.Database) -> None:
    """db.atomic().set(...).send(...) commits both, and a failing check commits neither."""
    db.queues.create("q")
    assert db.atomic().set(("k",), 1).send("q", "m").commit().ok
    failed = db.atomic().check(kvqueue.AtomicCheck(("k",), None)).set(("k",), 2).send("q", "n")
    assert not failed.commit().ok
    assert db.get(("k",)).value == 1
    assert [m.body for m in db.queue("q").pull().messages] == ["m"]
    with pytest.raises(kvqueue.QueueNotFound):
        db.atomic().set(("other",), 1).send("nope", "m").commit()
    assert db.get(("other",)).value is None


async def test_concurrent_sends_each_see_their_own_message_in_the_metrics(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """The metrics a send returns are read after its own commit, even when 64 sends run
    at once and share commits and reads: the k-th smallest backlog count is at least k."""
    q = await _queue(adb)
    results = await asyncio.gather(*(q.send(i) for i in range(64)))
    counts = sorted(r.metrics.backlog_count for r in results)
    assert all(count >= rank for rank, count in enumerate(counts, start=1)), counts
    assert counts[-1] == 64
    assert len({i for r in results for i in r.message_ids}) == 64


async def test_one_ack_call_settles_each_message_once(adb: kvqueue.AsyncDatabase) -> None:
    """Acks and retries in one call take effect together; a lease id given twice counts
    once, and one that matches nothing is a warning that changes nothing."""
    q = await _queue(adb)
    await q.send_batch(["a", "b", "c", "d", "e"])
    pulled = {m.body: m.lease_id for m in (await q.pull(batch_size=5)).messages}
    result = await q.ack(
        acks=[pulled["a"], pulled["a"], pulled["b"], "0" * 32],
        retries=[pulled["c"], (pulled["d"], 0), pulled["c"]],
    )
    assert (result.ack_count, result.retry_count) == (2, 2)
    assert "0" * 32 in result.warnings
    assert await _backlog(adb) == 3
    again = await q.pull(batch_size=5)
    assert sorted(m.body for m in again.messages) == ["c", "d"]
    assert {m.body: m.attempts for m in again.messages} == {"c": 2, "d": 2}

"""KV store conformance (SPEC §3): runs against every backend."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

import kvqueue
from kvqueue import KvU64, limits


async def test_get_of_absent_key_has_no_value_and_no_versionstamp(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Reading a key never written gives an Entry with value and versionstamp None."""
    entry = await adb.get(("nope",))
    assert entry == kvqueue.Entry(("nope",), None, None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**31),
        2**70,
        1.5,
        float("inf"),
        "héllo 日本 😀",
        b"\x00\xff",
        [1, "two", [3.0, None]],
        {"a": {"b": [b"x", False]}},
        dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        KvU64(2**64 - 1),
    ],
)
async def test_values_round_trip(adb: kvqueue.AsyncDatabase, value: Any) -> None:
    """Every supported value type reads back equal to what was set."""
    result = await adb.set(("v",), value)
    assert result.ok
    entry = await adb.get(("v",))
    assert entry.value == value
    assert type(entry.value) is type(value)
    assert entry.versionstamp == result.versionstamp


async def test_versionstamps_increase_and_are_shared_by_one_commit(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Each commit's versionstamp is 20 hex chars, greater than the last; one commit shares one."""
    first = await adb.set(("a",), 1)
    second = await adb.atomic().set(("b",), 2).set(("c",), 3).commit()
    assert first.versionstamp is not None
    assert second.versionstamp is not None
    assert len(first.versionstamp) == 20
    assert int(first.versionstamp, 16) >= 0
    assert second.versionstamp > first.versionstamp
    b, c = await adb.get_many([("b",), ("c",)])
    assert b.versionstamp == c.versionstamp == second.versionstamp


async def test_concurrent_commits_get_distinct_increasing_versionstamps(
    adb: kvqueue.AsyncDatabase,
) -> None:
    """Commits racing each other (group commit) still each get their own versionstamp."""
    results = await asyncio.gather(*(adb.set(("k", i), i) for i in range(200)))
    stamps = [r.versionstamp for r in results]
    assert len(set(stamps)) == 200
    for i, r in enumerate(results):
        assert (await adb.get(("k", i))).versionstamp == r.versionstamp


async def test_delete_removes_the_key(adb: kvqueue.AsyncDatabase) -> None:
    """After delete the key reads as absent; deleting an absent key is fine."""
    await adb.set(("d",), "x")
    await adb.delete(("d",))
    assert (await adb.get(("d",))).value is None
    await adb.delete(("d",))


async def test_get_many_keeps_request_order(adb: kvqueue.AsyncDatabase) -> None:
    """get_many returns one entry per requested key, in the order asked."""
    await adb.atomic().set(("x", 1), "one").set(("x", 3), "three").commit()
    entries = await adb.get_many([("x", 3), ("x", 2), ("x", 1)])
    assert [e.value for e in entries] == ["three", None, "one"]


async def _fill(adb: kvqueue.AsyncDatabase) -> None:
    op = adb.atomic()
    for i in range(10):
        op.set(("users", i), f"u{i}")
    op.set(("users",), "the prefix itself").set(("zzz",), "other")
    await op.commit()


async def _keys(it: kvqueue.AsyncListIterator) -> list[Any]:
    return [e.key async for e in it]


async def test_list_prefix_excludes_the_prefix_key(adb: kvqueue.AsyncDatabase) -> None:
    """list(prefix) gives the keys under the prefix in order, not the prefix itself."""
    await _fill(adb)
    assert await _keys(adb.list(("users",))) == [("users", i) for i in range(10)]


async def test_list_start_end_limit_reverse(adb: kvqueue.AsyncDatabase) -> None:
    """start is inclusive, end exclusive; limit and reverse work together."""
    await _fill(adb)
    assert await _keys(adb.list(start=("users", 2), end=("users", 5))) == [
        ("users", i) for i in (2, 3, 4)
    ]
    assert await _keys(adb.list(("users",), start=("users", 7))) == [
        ("users", i) for i in (7, 8, 9)
    ]
    assert await _keys(adb.list(("users",), end=("users", 2))) == [("users", 0), ("users", 1)]
    assert await _keys(adb.list(("users",), limit=3, reverse=True)) == [
        ("users", i) for i in (9, 8, 7)
    ]
    assert await _keys(adb.list(("users",), limit=0)) == []


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 100])
async def test_list_resumes_from_cursor(
    adb: kvqueue.AsyncDatabase, reverse: bool, batch_size: int
) -> None:
    """A list stopped part way resumes from its cursor with the remaining entries, any page size."""
    await _fill(adb)
    it = adb.list(("users",), reverse=reverse, batch_size=batch_size)
    head = [await it.__anext__() for _ in range(4)]
    rest = await _keys(
        adb.list(("users",), reverse=reverse, cursor=it.cursor, batch_size=batch_size)
    )
    expected = [("users", i) for i in (range(9, -1, -1) if reverse else range(10))]
    assert [e.key for e in head] + rest == expected


async def test_list_needs_a_selector(adb: kvqueue.AsyncDatabase) -> None:
    """list without prefix, or with a start outside the prefix, is an InvalidInput."""
    with pytest.raises(kvqueue.InvalidInput):
        adb.list()
    with pytest.raises(kvqueue.InvalidInput):
        adb.list(("a",), start=("b",))
    with pytest.raises(kvqueue.InvalidInput):
        adb.list(("a",), cursor="***")


async def test_expired_keys_are_never_read(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """A key set with expire_in is readable until then and never after, by get, list or check."""
    await fake_adb.set(("session",), "s", expire_in=1000)
    await fake_adb.set(("session", "x"), "t", expire_in=1000)
    assert (await fake_adb.get(("session",))).value == "s"
    clock.advance(999)
    assert (await fake_adb.get(("session",))).value == "s"
    clock.advance(1)
    assert (await fake_adb.get(("session",))).value is None
    assert await _keys(fake_adb.list(("session",))) == []
    # Absent for checks too: "must not exist" passes.
    ok = (
        await fake_adb.atomic()
        .check(kvqueue.AtomicCheck(("session",), None))
        .set(("session",), "new")
        .commit()
    )
    assert ok.ok


async def test_arithmetic_on_kvu64(adb: kvqueue.AsyncDatabase) -> None:
    """sum wraps at 2**64, min/max compare; absent keys take the operand (K5)."""
    await adb.atomic().sum(("n",), 5).sum(("n",), KvU64(7)).max(("n",), 3).min(("n",), 10).commit()
    assert (await adb.get(("n",))).value == KvU64(10)
    await adb.atomic().sum(("w",), 2**64 - 1).sum(("w",), 2).commit()
    assert (await adb.get(("w",))).value == KvU64(1)
    await adb.atomic().min(("m",), 4).commit()
    assert (await adb.get(("m",))).value == KvU64(4)


async def test_sum_on_a_non_u64_value_fails_and_writes_nothing(adb: kvqueue.AsyncDatabase) -> None:
    """sum over a stored non-KvU64 raises TypeMismatch and the whole commit is undone."""
    await adb.set(("s",), "text")
    with pytest.raises(kvqueue.TypeMismatch):
        await adb.atomic().set(("other",), 1).sum(("s",), 1).commit()
    assert (await adb.get(("other",))).value is None
    assert (await adb.get(("s",))).value == "text"


async def test_sum_clears_an_expiry(
    fake_adb: kvqueue.AsyncDatabase, clock: kvqueue.FakeClock
) -> None:
    """Like Deno, a sum on a key with an expiry removes the expiry."""
    await fake_adb.set(("c",), KvU64(1), expire_in=100)
    await fake_adb.atomic().sum(("c",), 1).commit()
    clock.advance(1000)
    assert (await fake_adb.get(("c",))).value == KvU64(2)


async def test_failed_check_writes_and_enqueues_nothing(adb: kvqueue.AsyncDatabase) -> None:
    """A stale check gives ok=False; no mutation and no message happen (Q2)."""
    await adb.set(("acct",), 1)
    stale = await adb.get(("acct",))
    await adb.set(("acct",), 2)
    result = (
        await adb.atomic().check(stale).set(("acct",), 3).set(("log",), "x").enqueue("msg").commit()
    )
    assert result == kvqueue.CommitResult(ok=False)
    assert not result
    assert (await adb.get(("acct",))).value == 2
    assert (await adb.get(("log",))).value is None
    fresh = await adb.get(("acct",))
    assert (await adb.atomic().check(fresh).set(("acct",), 3).commit()).ok
    absent = kvqueue.AtomicCheck(("acct",), None)
    assert not (await adb.atomic().check(absent).set(("acct",), 9).commit()).ok


async def test_watch_yields_initial_then_each_change(adb: kvqueue.AsyncDatabase) -> None:
    """watch gives the current entries, then new ones whenever a watched key changes (K8)."""
    await adb.set(("w", 1), "a")
    stream = adb.watch([("w", 1), ("w", 2)])
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert [e.value for e in first] == ["a", None]
    await adb.set(("unrelated",), 1)
    await adb.set(("w", 2), "b")
    second = await asyncio.wait_for(stream.__anext__(), 5)
    assert [e.value for e in second] == ["a", "b"]
    await adb.delete(("w", 1))
    third = await asyncio.wait_for(stream.__anext__(), 5)
    assert [e.value for e in third] == [None, "b"]
    await stream.aclose()


# --- limits: each breaks with its own error, says which limit, writes nothing ---


async def _assert_nothing_written(adb: kvqueue.AsyncDatabase) -> None:
    assert [e async for e in adb.list(start=(b"",), end=(True, True))] == []


@pytest.mark.parametrize(
    ("build", "error", "limit"),
    [
        (lambda op: op.set(("k", "x" * 2100), 1), kvqueue.KeyTooLarge, "MAX_KEY_BYTES"),
        (lambda op: op.set(("k",), b"x" * 65_537), kvqueue.ValueTooLarge, "MAX_VALUE_BYTES"),
        (lambda op: op.set(("k",), "x" * 65_540), kvqueue.ValueTooLarge, "MAX_VALUE_BYTES"),
        (
            lambda op: [op.check(kvqueue.AtomicCheck(("c", i), None)) for i in range(101)],
            kvqueue.TooManyChecks,
            "MAX_CHECKS",
        ),
        (
            lambda op: [op.set(("m", i), i) for i in range(1001)],
            kvqueue.TooManyMutations,
            "MAX_MUTATIONS",
        ),
        (
            lambda op: [op.set(("big", i), b"x" * 60_000) for i in range(14)],
            kvqueue.AtomicTooLarge,
            "MAX_ATOMIC_BYTES",
        ),
        (lambda op: op.enqueue(b"x" * 65_537), kvqueue.PayloadTooLarge, "MAX_KV_PAYLOAD_BYTES"),
        (lambda op: op.enqueue(1, delay=-1), kvqueue.InvalidDelay, "MIN_DELAY (0)"),
        (
            lambda op: op.enqueue(1, delay=limits.MAX_KV_DELAY_MS + 1),
            kvqueue.InvalidDelay,
            "MAX_KV_DELAY_MS",
        ),
        (
            lambda op: op.enqueue(1, backoff_schedule=[1] * 6),
            kvqueue.InvalidBackoffSchedule,
            "MAX_BACKOFF_ENTRIES",
        ),
        (
            lambda op: op.enqueue(1, backoff_schedule=[3_600_001]),
            kvqueue.InvalidBackoffSchedule,
            "MAX_BACKOFF_MS",
        ),
        (
            lambda op: op.enqueue(1, keys_if_undelivered=[("d", i) for i in range(11)]),
            kvqueue.TooManyUndeliveredKeys,
            "MAX_UNDELIVERED_KEYS",
        ),
        (
            lambda op: op.enqueue(1, keys_if_undelivered=[("d", "x" * 2100)]),
            kvqueue.KeyTooLarge,
            "MAX_KEY_BYTES",
        ),
    ],
)
async def test_each_limit_raises_its_error_and_writes_nothing(
    adb: kvqueue.AsyncDatabase, build: Any, error: type[kvqueue.LimitExceeded], limit: str
) -> None:
    """Breaking a limit raises the specific error naming the limit; nothing is written."""

    async def attempt() -> None:
        op = adb.atomic().set(("first",), "would be written")
        build(op)
        await op.commit()

    with pytest.raises(error) as info:
        await attempt()
    assert info.value.limit == limit
    assert limit in str(info.value)
    assert info.value.actual > info.value.maximum or info.value.actual < 0
    await _assert_nothing_written(adb)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({1: "int key"}, kvqueue.InvalidValue),
        (object(), kvqueue.InvalidValue),
        ({"s": {1, 2}}, kvqueue.InvalidValue),
    ],
)
async def test_unsupported_values_are_rejected(
    adb: kvqueue.AsyncDatabase, value: Any, error: type[Exception]
) -> None:
    """A value kvqueue cannot store raises InvalidValue before anything is written."""
    with pytest.raises(error):
        await adb.set(("bad",), value)
    await _assert_nothing_written(adb)


async def test_watch_and_get_many_limits(adb: kvqueue.AsyncDatabase) -> None:
    """watch takes at most 10 keys (TooManyWatchedKeys)."""
    with pytest.raises(kvqueue.TooManyWatchedKeys):
        await adb.watch([("k", i) for i in range(11)]).__anext__()


async def test_closed_database_refuses_work(url: str) -> None:
    """After close every call raises DatabaseClosed."""
    database = await kvqueue.open_async(url)
    await database.close()
    with pytest.raises(kvqueue.DatabaseClosed):
        await database.get(("a",))
    with pytest.raises(kvqueue.DatabaseClosed):
        await database.listen_queue(lambda m: None)

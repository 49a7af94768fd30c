"""How an atomic write is applied to PostgreSQL, inside the writer's transaction.

The mechanics of :meth:`kvqueue.storage.base.Storage.commit` for PostgreSQL:
checks, queue changes, mutations, enqueues and settlements, each as few round
trips as it can (arrays with ``unnest``/``ANY``, sent in binary: no quoting of
every element), and many enqueue-only writes of concurrent callers folded into
one INSERT. Enqueues and acks also come in pieces (an INSERT that checks its
queues' limits itself; delete, then read what was found) so the writer can
pipeline a whole group of them. Policy is decided above the storage boundary; nothing here
chooses a delay or a dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from kvqueue import errors, model, values
from kvqueue.model import MutationKind, ValueEncoding
from kvqueue.storage.common import (
    CheckFailed,
    plan_enqueues,
    settings_row,
    version_of,
    versionstamp,
)

Connection = psycopg.AsyncConnection[Any]
Cursor = psycopg.AsyncCursor[Any]

# --- SQL ----------------------------------------------------------------------
SQL_KV_LIVE_VERSIONS = """
SELECT key, version FROM kvqueue_kv
WHERE key = ANY(%s) AND (expires_at IS NULL OR expires_at > %s)
"""
SQL_KV_LIVE_VALUE = """
SELECT value, encoding FROM kvqueue_kv
WHERE key = %s AND (expires_at IS NULL OR expires_at > %s)
"""
SQL_KV_SET = """
INSERT INTO kvqueue_kv (key, value, encoding, version, expires_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, encoding = excluded.encoding,
  version = excluded.version, expires_at = excluded.expires_at
"""
SQL_KV_DELETE = "DELETE FROM kvqueue_kv WHERE key = %s"
SQL_MESSAGES_INSERT = """
INSERT INTO kvqueue_messages (queue, id, body, content_type, enqueued_at, visible_at, attributes)
SELECT queue, id, body, content_type, %b::bigint, visible_at, attributes
FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::text[], %b::bigint[], %b::bytea[])
  AS m(queue, id, body, content_type, visible_at, attributes)
"""
# A run of sends none of which is refused, with the limits checked in the same
# statement (so the group needs no round trip before its COMMIT): the queue's own
# delay where a message has none, and kvqueue_refuse_sends() (schema 4), which
# aborts the transaction, should any queue be missing or the group's total not
# fit its limits. ``caps`` holds the smallest explicit max_backlog per queue, so
# the check is never looser than plan_enqueues' one send at a time.
SQL_MESSAGES_SEND = """
WITH m AS (
  SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::text[], %b::bigint[], %b::bytea[])
    WITH ORDINALITY AS m(queue, id, body, content_type, delay, attributes, ord)
), fits AS (
  SELECT bool_and(
    q.name IS NOT NULL
    AND (least(cap.max_backlog, q.max_backlog) IS NULL
      OR coalesce(b.count, 0) + need.count <= least(cap.max_backlog, q.max_backlog))
    AND (q.max_backlog_bytes IS NULL OR coalesce(b.bytes, 0) + need.bytes <= q.max_backlog_bytes)
  ) AS ok
  FROM (SELECT queue, count(*) AS count, sum(octet_length(body)) AS bytes FROM m GROUP BY queue)
    AS need
  LEFT JOIN unnest(%b::text[], %b::bigint[]) AS cap(queue, max_backlog) ON cap.queue = need.queue
  LEFT JOIN kvqueue_queues AS q ON q.name = need.queue
  LEFT JOIN kvqueue_backlog AS b ON b.queue = need.queue
), inserted AS (
  INSERT INTO kvqueue_messages (queue, id, body, content_type, enqueued_at, visible_at, attributes)
  SELECT m.queue, m.id, m.body, m.content_type, %b::bigint,
    %b::bigint + coalesce(m.delay, q.delivery_delay), m.attributes
  FROM m LEFT JOIN kvqueue_queues AS q ON q.name = m.queue
  WHERE CASE WHEN (SELECT ok FROM fits) THEN true ELSE kvqueue_refuse_sends() END
  ORDER BY m.ord
)
SELECT pg_notify(%s, %s)
"""
# Settings and backlog in one statement: one snapshot, one round trip. The usual
# single queue by name: PostgreSQL then keeps one plan instead of planning each time.
SQL_QUEUES_LIMITS = """
SELECT q.name, q.delivery_delay, q.max_backlog, q.max_backlog_bytes, b.count, b.bytes
FROM kvqueue_queues AS q LEFT JOIN kvqueue_backlog AS b ON b.queue = q.name
WHERE q.name = ANY(%b::text[])
"""
SQL_QUEUE_LIMITS = SQL_QUEUES_LIMITS.replace("= ANY(%b::text[])", "= %s")
# FOR SHARE: a lease checked here cannot be taken by another consumer before we commit.
# Rows are named by an index condition on id (see migration 0005_lease.sql
# for why); "IS NOT DISTINCT FROM" (queue is never NULL) keeps the planner from
# reaching them through an index on queue instead, which after statistics taken
# on an empty queue it may think cheaper. So do the acks, retries and moves below.
SQL_LEASES_CHECK = """
SELECT count(*) FROM (
  SELECT 1 FROM kvqueue_messages AS m
  JOIN unnest(%(ids)s::text[], %(leases)s::text[]) AS held(id, lease)
    ON m.id = held.id AND m.lease = held.lease
  WHERE m.id = ANY(%(ids)s::text[])
  FOR SHARE OF m
) AS found
"""
SQL_MESSAGES_ACK = """
DELETE FROM kvqueue_messages WHERE id = ANY(%b::text[]) AND queue IS NOT DISTINCT FROM %s
RETURNING id
"""
SQL_MESSAGE_RETRY = """
UPDATE kvqueue_messages SET visible_at = %s, lease = NULL
WHERE id = %s AND lease = %s AND queue IS NOT DISTINCT FROM %s
"""
SQL_MESSAGE_MOVE = """
UPDATE kvqueue_messages SET queue = %s, attempts = 0, lease = NULL, visible_at = %s,
  attributes = NULL
WHERE id = %s AND lease = %s AND queue IS NOT DISTINCT FROM %s
"""
SQL_MESSAGE_DROP = """
DELETE FROM kvqueue_messages WHERE id = %s AND lease = %s AND queue IS NOT DISTINCT FROM %s
"""
SQL_QUEUE_EXISTS = "SELECT 1 FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_INSERT = """
INSERT INTO kvqueue_queues (name, id, created_at, modified_at, delivery_delay, retention,
  paused, max_backlog, max_backlog_bytes)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO NOTHING
"""
SQL_QUEUE_UPDATE = """
UPDATE kvqueue_queues SET modified_at = %s, delivery_delay = %s, retention = %s, paused = %s,
  max_backlog = %s, max_backlog_bytes = %s
WHERE name = %s
"""
SQL_QUEUE_SETTINGS = """
SELECT delivery_delay, retention, paused, max_backlog, max_backlog_bytes FROM kvqueue_queues
WHERE name = %s FOR UPDATE
"""
SQL_QUEUE_CONSUMER = "SELECT consumer FROM kvqueue_queues WHERE name = %s FOR UPDATE"
SQL_QUEUE_SET_CONSUMER = """
UPDATE kvqueue_queues SET consumer = %s, modified_at = %s WHERE name = %s
"""
SQL_QUEUE_DELETE = "DELETE FROM kvqueue_queues WHERE name = %s"
SQL_QUEUE_PURGE = "DELETE FROM kvqueue_messages WHERE queue = %s"
SQL_BACKLOG_DELETE = "DELETE FROM kvqueue_backlog WHERE queue = %s"
SQL_QUEUE_RETRIED = "UPDATE kvqueue_queues SET retried = retried + 1 WHERE name = %s"
SQL_QUEUE_DEAD_LETTERED = """
UPDATE kvqueue_queues SET dead_lettered = dead_lettered + 1 WHERE name = %s
"""


@dataclass(slots=True)
class Txn:
    """The writer's open transaction: its connection, clock time and versions."""

    conn: Connection
    now: int
    #: The last versionstamp counter handed out in this transaction.
    version: int
    #: Whether a committed write changed something others may wait for.
    changed: bool = False


async def scalar(conn: Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
    row = await (await conn.execute(sql, params)).fetchone()
    return None if row is None else row[0]


async def apply_write(txn: Txn, write: model.AtomicWrite) -> model.Committed:
    conn, now = txn.conn, txn.now
    if write.checks:
        cursor = await conn.execute(SQL_KV_LIVE_VERSIONS, ([c.key for c in write.checks], now))
        live = {bytes(key): version for key, version in await cursor.fetchall()}
        for check in write.checks:
            if check.versionstamp is None:
                passed = check.key not in live
            else:
                passed = live.get(check.key) == version_of(check.versionstamp)
            if not passed:
                raise CheckFailed
    if write.lease_checks:
        ids = [lease.message_id for lease in write.lease_checks]
        names = [lease.lease for lease in write.lease_checks]
        if await scalar(conn, SQL_LEASES_CHECK, {"ids": ids, "leases": names}) != len(ids):
            raise CheckFailed
    txn.version += 1
    txn.changed = True
    version = txn.version
    for change in write.queue_changes:
        await _apply_queue_change(txn, change)
    for m in write.mutations:
        if m.kind is MutationKind.SET:
            expires = None if m.expire_in_ms is None else now + m.expire_in_ms
            await conn.execute(SQL_KV_SET, (m.key, m.value, int(m.encoding), version, expires))
        elif m.kind is MutationKind.DELETE:
            await conn.execute(SQL_KV_DELETE, (m.key,))
        else:
            row = await (await conn.execute(SQL_KV_LIVE_VALUE, (m.key, now))).fetchone()
            current = None if row is None else (bytes(row[0]), row[1])
            combined = values.combine_u64(m.kind, current, m.value)
            # Like Deno, arithmetic clears an expiry set earlier.
            await conn.execute(
                SQL_KV_SET, (m.key, combined, int(ValueEncoding.LE64), version, None)
            )
    if write.enqueues:
        (refusal,) = await _enqueue(txn, [write])
        if refusal is not None:
            raise refusal
    settled = await _apply_settlements(txn, write.settlements)
    return model.Committed(versionstamp(version), settled)


async def apply_sends(txn: Txn, writes: Sequence[model.AtomicWrite]) -> list[Any]:
    """Apply many enqueue-only writes with one INSERT, as if one after another.

    Returns, per write, its ``Committed`` or the error that refused it
    (QueueNotFound, QueueFull); a refused write leaves nothing behind.
    """
    refusals = await _enqueue(txn, writes)
    results: list[Any] = []
    for refusal in refusals:
        if refusal is not None:
            results.append(refusal)
            continue
        txn.version += 1
        txn.changed = True
        results.append(model.Committed(versionstamp(txn.version), ()))
    return results


async def _enqueue(txn: Txn, writes: Sequence[model.AtomicWrite]) -> list[Exception | None]:
    """Insert the enqueues of each write that fits, in order; the others are refused."""
    found = await (await read_limits(txn.conn, writes)).fetchall()
    refusals, rows = plan_enqueues(writes, found, txn.now)
    if rows:
        await txn.conn.execute(SQL_MESSAGES_INSERT, insert_columns(rows, txn.now))
    return refusals


def insert_columns(rows: Sequence[tuple[Any, ...]], now: int) -> tuple[Any, ...]:
    """SQL_MESSAGES_INSERT's parameters for :func:`plan_enqueues`' rows."""
    return (now, *(list(column) for column in zip(*rows, strict=True)))


def send_columns(writes: Sequence[model.AtomicWrite], now: int) -> tuple[Any, ...]:
    """SQL_MESSAGES_SEND's parameters (but the NOTIFY's) for enqueue-only writes."""
    every = [e for w in writes for e in w.enqueues]
    caps: dict[str, int | None] = {}
    for e in every:
        cap = caps.get(e.queue)
        if e.max_backlog and (cap is None or e.max_backlog < cap):
            cap = e.max_backlog
        caps[e.queue] = cap
    return (
        [e.queue for e in every],
        [e.message_id for e in every],
        [e.body for e in every],
        [e.content_type for e in every],
        [e.delay_ms for e in every],
        [e.attributes for e in every],
        list(caps),
        list(caps.values()),
        now,
        now,
    )


async def read_limits(conn: Connection, writes: Sequence[model.AtomicWrite]) -> Cursor:
    """Start reading what :func:`plan_enqueues` needs: the settings and backlog of
    every queue the writes enqueue to."""
    names = list(dict.fromkeys(e.queue for w in writes for e in w.enqueues))
    if len(names) == 1:
        return await conn.execute(SQL_QUEUE_LIMITS, (names[0],))
    return await conn.execute(SQL_QUEUES_LIMITS, (names,))


async def _apply_settlements(txn: Txn, settlements: Sequence[model.Settlement]) -> tuple[bool, ...]:
    """Apply settlements in order; runs of acks on one queue take one statement."""
    found: list[bool] = []
    start = 0
    while start < len(settlements):
        end = start
        while end < len(settlements) and isinstance(settlements[end], model.Ack):
            end += 1
        acks = [s for s in settlements[start:end] if isinstance(s, model.Ack)]
        for run in ack_runs(acks):
            found += await acked(await delete_acked(txn.conn, run), run)
        if end < len(settlements):
            settlement = settlements[end]
            assert not isinstance(settlement, model.Ack)
            found.append(await _apply_settlement(txn, settlement))
        start = end + 1
    return tuple(found)


def ack_runs(acks: Sequence[model.Ack]) -> list[list[model.Ack]]:
    """Consecutive acks cut into runs that one DELETE each applies: a run ends where
    the queue changes or a message comes again (the repeat then finds nothing)."""
    runs: list[list[model.Ack]] = []
    ids: set[str] = set()
    for ack in acks:
        if not runs or ack.queue != runs[-1][0].queue or ack.message_id in ids:
            runs.append([])
            ids.clear()
        runs[-1].append(ack)
        ids.add(ack.message_id)
    return runs


async def delete_acked(conn: Connection, run: Sequence[model.Ack]) -> Cursor:
    """Start deleting one run of acks (see :func:`ack_runs`)."""
    return await conn.execute(SQL_MESSAGES_ACK, ([a.message_id for a in run], run[0].queue))


async def acked(cursor: Cursor, run: Sequence[model.Ack]) -> list[bool]:
    """Per ack of ``run``, whether :func:`delete_acked` found its message."""
    gone = {row[0] for row in await cursor.fetchall()}
    return [a.message_id in gone for a in run]


async def _apply_settlement(txn: Txn, s: model.Retry | model.DeadLetter) -> bool:
    conn, now = txn.conn, txn.now
    if isinstance(s, model.Retry):
        cursor = await conn.execute(
            SQL_MESSAGE_RETRY, (now + s.delay_ms, s.message_id, s.lease, s.queue)
        )
        if cursor.rowcount:
            await conn.execute(SQL_QUEUE_RETRIED, (s.queue,))
        return cursor.rowcount > 0
    if s.to_queue is None:
        cursor = await conn.execute(SQL_MESSAGE_DROP, (s.message_id, s.lease, s.queue))
    else:
        if await scalar(conn, SQL_QUEUE_EXISTS, (s.to_queue,)) is None:
            raise errors.QueueNotFound(s.to_queue)
        moved = (s.to_queue, now, s.message_id, s.lease, s.queue)
        cursor = await conn.execute(SQL_MESSAGE_MOVE, moved)
    if cursor.rowcount:
        await conn.execute(SQL_QUEUE_DEAD_LETTERED, (s.queue,))
    return cursor.rowcount > 0


async def _apply_queue_change(txn: Txn, change: model.QueueChange) -> None:
    conn, now = txn.conn, txn.now
    if isinstance(change, model.CreateQueue):
        row = (change.name, change.queue_id, now, now, *settings_row(change.settings))
        if (await conn.execute(SQL_QUEUE_INSERT, row)).rowcount == 0 and not change.if_absent:
            raise errors.QueueExists(change.name)
        return
    if isinstance(change, model.UpdateQueue):
        current = await (await conn.execute(SQL_QUEUE_SETTINGS, (change.name,))).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        if tuple(current) != settings_row(change.expect):
            raise CheckFailed
        await conn.execute(SQL_QUEUE_UPDATE, (now, *settings_row(change.settings), change.name))
        return
    if isinstance(change, model.SetConsumer):
        current = await (await conn.execute(SQL_QUEUE_CONSUMER, (change.name,))).fetchone()
        if current is None:
            raise errors.QueueNotFound(change.name)
        stored = None if current[0] is None else bytes(current[0])
        if stored != change.expect:
            raise CheckFailed
        await conn.execute(SQL_QUEUE_SET_CONSUMER, (change.consumer, now, change.name))
        return
    if await scalar(conn, SQL_QUEUE_EXISTS, (change.name,)) is None:
        raise errors.QueueNotFound(change.name)
    await conn.execute(SQL_QUEUE_PURGE, (change.name,))
    if isinstance(change, model.DeleteQueue):
        await conn.execute(SQL_QUEUE_DELETE, (change.name,))
        await conn.execute(SQL_BACKLOG_DELETE, (change.name,))

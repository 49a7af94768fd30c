"""Ground truth for crash tests: what a database holds, read straight from its
store (SQLite file or PostgreSQL schema) rather than through kvqueue."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from kvqueue import v8


def _rows(url: str, sqlite_sql: str, postgres_sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("postgresql://"):
        with psycopg.connect(url) as conn:
            return list(conn.execute(postgres_sql.encode()).fetchall())
    with sqlite3.connect(url) as conn:
        return conn.execute(sqlite_sql).fetchall()


def message_bodies(url: str) -> dict[str, Any]:
    """Every stored message's id and decoded (V8) body."""
    rows = _rows(url, "SELECT id, body FROM messages", "SELECT id, body FROM kvqueue_messages")
    return {mid: v8.loads(bytes(body)) for mid, body in rows}


def stored_messages(url: str, queue: str | None = None) -> int:
    """How many messages are stored (in one queue, or in all)."""
    where = "" if queue is None else f" WHERE queue = '{queue}'"
    rows = _rows(
        url,
        "SELECT count(*) FROM messages" + where,
        "SELECT count(*) FROM kvqueue_messages" + where,
    )
    return int(rows[0][0])

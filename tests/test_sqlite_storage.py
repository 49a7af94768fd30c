"""What the SQLite file itself holds: expired keys are swept out, not only hidden."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import kvqueue
from tests.helpers import wait_until


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM kv").fetchone()[0])


async def test_expired_keys_are_swept_from_the_file(tmp_path: Path) -> None:
    """Once a key's expiry passes, the background sweeper deletes its row from disk."""
    path = tmp_path / "sweep.db"
    clock = kvqueue.FakeClock()
    db = await kvqueue.open_async(str(path), clock=clock)
    await db.set(("temp",), "x", expire_in=5_000)
    await db.set(("kept",), "y")
    assert _rows(path) == 2
    await wait_until(lambda: clock.now_ms() + 5_001 in clock.deadlines())
    clock.advance(5_001)
    await wait_until(lambda: _rows(path) == 1)
    assert (await db.get(("kept",))).value == "y"
    await db.close()

"""What every backend shares: versionstamps, the wake-up signal, waiting for a
queue, migration scripts and the row shapes of queue records.

Only mechanics live here; policy stays above the storage boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from kvqueue import errors, model
from kvqueue.clock import Clock
from kvqueue.waiting import first_of


class CheckFailed(Exception):
    """A check or compare-and-set inside a write did not hold: the write is undone."""


def versionstamp(version: int) -> bytes:
    """The 10-byte versionstamp of commit counter ``version``."""
    return version.to_bytes(8, "big") + b"\x00\x00"


def version_of(stamp: bytes) -> int | None:
    """The commit counter behind a versionstamp, or None if this database never made it."""
    # A versionstamp this database did not hand out can never match a key.
    if len(stamp) != 10 or stamp[8:] != b"\x00\x00":
        return None
    return int.from_bytes(stamp[:8], "big")


class Signal:
    """A broadcast: everyone waiting on the current event wakes when it fires."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        #: How many times it has fired: a caller that read this before looking
        #: at the store knows whether anything changed since.
        self.fired = 0

    def current(self) -> asyncio.Event:
        """The event the next :meth:`fire` sets; take it before looking at the store."""
        return self._event

    def fire(self) -> None:
        """Wake every waiter."""
        self.fired += 1
        self._event.set()
        self._event = asyncio.Event()


async def wait_for_queue(
    signal: Signal,
    clock: Clock,
    next_visible: Callable[[int], Awaitable[int | None]] | None,
    *,
    timeout_ms: int,
    after_ms: int | None,
    since: int | None,
) -> None:
    """The body of :meth:`Storage.wait`, given how to find a queue's next visible time.

    ``next_visible(since)`` answers the earliest ``visible_at`` later than ``since``.
    """
    # Take the event before looking, so a commit landing after the look wakes us.
    event = signal.current()
    if since is not None and signal.fired != since:
        return  # something changed after the caller looked: look again
    due_in: int | None = None
    if next_visible is not None:
        upcoming = await next_visible(-1 if after_ms is None else after_ms)
        if upcoming is not None:
            due_in = upcoming - clock.now_ms()
            if due_in <= 0:
                return
    waits: list[Awaitable[Any]] = [event.wait(), asyncio.sleep(timeout_ms / 1000)]
    if due_in is not None:
        waits.append(clock.sleep(due_in / 1000))
    await first_of(*waits)


def migration_scripts(package: str) -> list[str]:
    """The schema scripts of a backend, oldest first; script N makes schema version N."""
    return [
        item.read_text("utf-8")
        for item in sorted(resources.files(package).iterdir(), key=lambda item: item.name)
        if item.name.endswith(".sql")
    ]


def check_schema_version(current: int, known: int, where: str) -> None:
    """Refuse a database whose schema is newer than this version of kvqueue knows."""
    if current > known:
        raise errors.StorageError(
            f"{where} has schema version {current}, newer than this kvqueue knows "
            f"({known}); upgrade kvqueue"
        )


def settings_row(
    settings: model.QueueSettings,
) -> tuple[int, int | None, bool, int | None, int | None]:
    """A queue's settings as stored: delay, retention, paused, backlog limits."""
    return (
        settings.delivery_delay_ms,
        settings.retention_ms,
        settings.paused,
        settings.max_backlog,
        settings.max_backlog_bytes,
    )


#: The columns :func:`queue_record` reads, in its order.
QUEUE_COLUMNS = """
name, id, created_at, modified_at, delivery_delay, retention, paused, max_backlog,
max_backlog_bytes, consumer
"""


def queue_record(row: Sequence[Any]) -> model.QueueRecord:
    """A queue as stored (``QUEUE_COLUMNS``) as the model's record."""
    name, queue_id, created, modified, delay, retention, paused, backlog, backlog_bytes = row[:9]
    return model.QueueRecord(
        name,
        queue_id,
        created,
        modified,
        model.QueueSettings(delay, retention, bool(paused), backlog, backlog_bytes),
        None if row[9] is None else bytes(row[9]),
    )

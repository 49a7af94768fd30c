"""Time, injected: the system clock in production, a fake one in tests.

Semantics code never reads the time or sleeps directly; it asks a Clock, so
backoff, delays, leases and expiry can be tested by moving a FakeClock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Where kvqueue gets the time from."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` of this clock's time."""
        ...

    async def sleep_until(self, ms: int) -> None:
        """Sleep until this clock reads ``ms``.

        Waiting for a deadline read earlier must not be turned into a relative
        sleep: the clock may move in between, and the sleep would end late.
        """
        ...


class SystemClock:
    """The wall clock and asyncio's timers."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await asyncio.sleep(max(seconds, 0.0))

    async def sleep_until(self, ms: int) -> None:
        """Sleep for real until the wall clock reads ``ms``."""
        await asyncio.sleep(max(ms - self.now_ms(), 0) / 1000)


class FakeClock:
    """A clock that only moves when told to; sleepers wake when it passes their time.

    Safe to advance from another thread than the one whose event loop sleeps.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._lock = threading.Lock()
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        """The fake time in milliseconds since the epoch."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with self._lock:
            deadline = self._now + max(1, round(seconds * 1000))
        await self.sleep_until(deadline)

    async def sleep_until(self, ms: int) -> None:
        """Wait until the clock has been advanced to ``ms``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            due = ms <= self._now
            if not due:
                heapq.heappush(self._sleepers, (ms, next(self._order), future))
        if due:
            await asyncio.sleep(0)
        else:
            await future

    def deadlines(self) -> list[int]:
        """When the current sleepers wake, earliest first (tests wait for a sleeper to appear)."""
        with self._lock:
            return sorted(d for d, _, f in self._sleepers if not f.done())

    def advance(self, ms: int) -> None:
        """Move the clock forward and wake every sleeper whose time has come."""
        with self._lock:
            self._now += ms
            due: list[asyncio.Future[None]] = []
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        for future in due:
            future.get_loop().call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

"""Small test helpers: waiting for conditions, recording handler calls, child
processes and a real server whose output is read while they run."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import kvqueue
from tests.served import Served, start_server

T = TypeVar("T")


class Spawned:
    """A child process whose stdout is collected line by line on a thread (``lines``);
    stderr goes there too unless ``stderr`` says otherwise."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stderr: int | IO[Any] = subprocess.STDOUT,
    ) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` real seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def wait_until_async(
    probe: Callable[[], Awaitable[T]], condition: Callable[[T], bool], within: float = 10.0
) -> T:
    """Await ``probe()`` until its result meets ``condition``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in time; last result {result!r}")
        await asyncio.sleep(0.005)


async def asleep_until(clock: kvqueue.FakeClock, ms: int) -> None:
    """Wait until something sleeps on ``clock`` until exactly ``ms``."""
    await wait_until(lambda: ms in clock.deadlines())


class Recorder:
    """A handler that records each call (value and clock time) and can fail on purpose."""

    def __init__(
        self, clock: kvqueue.Clock | None = None, *, fail: Callable[[Any, int], bool] | None = None
    ):
        self.calls: list[tuple[Any, int]] = []
        self._clock = clock
        self._fail = fail or (lambda value, attempt: False)

    def __call__(self, value: Any) -> None:
        now = self._clock.now_ms() if self._clock else 0
        self.calls.append((value, now))
        attempt = sum(1 for v, _ in self.calls if v == value)
        if self._fail(value, attempt):
            raise RuntimeError(f"handler failed on purpose on attempt {attempt}")

    @property
    def values(self) -> list[Any]:
        return [v for v, _ in self.calls]

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        await wait_until(lambda: len(self.calls) >= count, within)


def same(actual: object, expected: object, *, loose_numbers: bool = False) -> bool:
    """Equal with the same types all the way down; nan equals nan, -0.0 is not 0.0.

    With *loose_numbers*, an int and a float of equal value count as the same,
    since JavaScript has one number type and V8 picks the encoding.
    """
    numbers = (int, float)
    if loose_numbers and isinstance(actual, numbers) and isinstance(expected, numbers):
        if isinstance(actual, bool) or isinstance(expected, bool):
            return actual is expected
        if isinstance(expected, float) and math.isnan(expected):
            return isinstance(actual, float) and math.isnan(actual)
        return actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
    if type(actual) is not type(expected):
        return False
    if isinstance(actual, float) and isinstance(expected, float):
        if math.isnan(expected):
            return math.isnan(actual)
        return actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(
            same(a, e, loose_numbers=loose_numbers) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return list(actual) == list(expected) and all(
            same(actual[k], expected[k], loose_numbers=loose_numbers) for k in actual
        )
    if isinstance(actual, datetime):
        return actual == expected and actual.tzinfo is UTC
    return actual == expected


@contextmanager
def serving(db_path: Path | str, *, stop_seconds: float = 30) -> Iterator[Served]:
    """A `kvqueue serve` process (:func:`tests.served.start_server`) whose output is
    read into ``served.output`` as it comes, so that a server logging a lot (say,
    a traceback per bad request) never blocks on a full pipe. On exit it is sent
    SIGTERM and must exit with status 0."""
    served = start_server(db_path)
    stdout = served.process.stdout
    assert stdout is not None

    def read_output() -> None:
        for line in stdout:
            served.output.append(line.rstrip("\n"))

    reader = threading.Thread(target=read_output, name="kvqueue-serve-output", daemon=True)
    reader.start()
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.send_signal(signal.SIGTERM)
        code: int | str
        try:
            code = served.process.wait(stop_seconds)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(10)
            code = f"nothing: it ignored SIGTERM for {stop_seconds} s and was killed"
        reader.join(10)
        served.stop()  # the output is read to its end: this only closes the pipe
    assert code == 0, f"kvqueue serve exited {code}:\n" + "\n".join(served.output[-50:])

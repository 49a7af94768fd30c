"""Know within a millisecond that another process wrote to a file.

SQLite has no cross-process notification, and Deno KV's answer (a 60-second
poll) makes a message from another process wait up to a minute. Every SQLite
commit appends to the database's ``-wal`` file, so watching that file for
modification tells a listener that someone committed. On Linux this is inotify
(no CPU while idle); elsewhere a short stat poll stands in.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_POLL_SECONDS = 0.02


def _inotify_fd(path: str) -> int | None:
    """An inotify descriptor watching ``path`` for writes, or None where unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
    if fd < 0:
        return None
    if int(libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY)) < 0:
        os.close(fd)
        return None
    return fd


class FileWatch:
    """Calls ``on_change`` (on the event loop) after ``path`` is written by anyone."""

    def __init__(self, path: str, on_change: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        self._fd = _inotify_fd(path)
        self._poller: asyncio.Task[None] | None = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._drain)
        else:
            self._poller = self._loop.create_task(self._poll(path))

    def _drain(self) -> None:
        assert self._fd is not None
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._on_change()

    async def _poll(self, path: str) -> None:
        last: tuple[int, int] | None = None
        while True:
            try:
                st = os.stat(path)
                current = (st.st_mtime_ns, st.st_size)
            except OSError:
                current = None
            if current != last and last is not None:
                self._on_change()
            last = current
            await asyncio.sleep(_POLL_SECONDS)

    def close(self) -> None:
        """Stop watching."""
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

"""``list``: entries of a key range, in key order, page by page, resumable.

Selectors follow Deno KV: ``prefix`` alone lists the keys under it (not the
prefix key itself); ``prefix`` with ``start`` or ``end`` narrows that; ``start``
with ``end`` lists ``[start, end)``. A cursor is the base64url of the last
entry's key after the prefix, so it can resume a list started with the same
selector.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Coroutine
from typing import Any

from kvqueue import errors, keys, limits, model, values
from kvqueue.keys import Key
from kvqueue.storage.base import Storage

_DEFAULT_BATCH = 100


def _cursor_bytes(cursor: str) -> bytes:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidInput(f"not a list cursor: {cursor!r}") from exc


class Pager:
    """Reads one page of a list at a time and remembers where it got to."""

    def __init__(
        self,
        storage: Storage,
        *,
        prefix: Key | None,
        start: Key | None,
        end: Key | None,
        limit: int | None,
        reverse: bool,
        cursor: str | None,
        batch_size: int | None,
    ) -> None:
        self._storage = storage
        self._reverse = reverse
        self._prefix = b"" if prefix is None else keys.encode_read_key(prefix)
        if prefix is not None:
            low, high = keys.prefix_range(self._prefix)
            if start is not None:
                low = keys.encode_read_key(start)
                if not low.startswith(self._prefix):
                    raise errors.InvalidInput("list start must be inside the prefix")
            if end is not None:
                high = keys.encode_read_key(end)
                if not high.startswith(self._prefix):
                    raise errors.InvalidInput("list end must be inside the prefix")
        elif start is not None and end is not None:
            low, high = keys.encode_read_key(start), keys.encode_read_key(end)
        else:
            raise errors.InvalidInput("list needs a prefix, or both start and end")
        if cursor is not None:
            position = self._prefix + _cursor_bytes(cursor)
            if reverse:
                high = position
            else:
                low = keys.successor(position)
        self._low, self._high = low, high
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise errors.InvalidOption(f"list limit cannot be negative, got {limit}")
        self._remaining = limit
        batch = _DEFAULT_BATCH if batch_size is None else batch_size
        if not 1 <= batch <= limits.MAX_LIST_BATCH:
            raise errors.InvalidOption(
                f"batch_size is 1 .. {limits.MAX_LIST_BATCH}, got {batch_size}"
            )
        self._batch = batch
        self._done = False

    def cursor_of(self, key: bytes) -> str:
        """The cursor that resumes a list after ``key``."""
        suffix = key[len(self._prefix) :]
        return base64.urlsafe_b64encode(suffix).decode("ascii").rstrip("=")

    async def next_page(self) -> list[tuple[model.Entry, str]]:
        """The next entries with their cursors; an empty list once the range is done."""
        if self._done or self._low >= self._high:
            return []
        size = self._batch if self._remaining is None else min(self._batch, self._remaining)
        if size <= 0:
            self._done = True
            return []
        (page,) = await self._storage.read(
            [model.ReadRange(self._low, self._high, size, self._reverse)]
        )
        if len(page) < size:
            self._done = True
        if page:
            last = page[-1].key
            if self._reverse:
                self._high = last
            else:
                self._low = keys.successor(last)
        if self._remaining is not None:
            self._remaining -= len(page)
        return [
            (values.entry_from_stored(keys.decode_key(s.key), s), self.cursor_of(s.key))
            for s in page
        ]


class _Buffered:
    def __init__(self, pager: Pager) -> None:
        self.pager = pager
        self._buffer: list[tuple[model.Entry, str]] = []
        self._index = 0
        self.cursor = ""
        """Resumes the list after the last entry returned (pass it as ``cursor=``)."""

    def _take(self) -> model.Entry | None:
        if self._index < len(self._buffer):
            entry, self.cursor = self._buffer[self._index]
            self._index += 1
            return entry
        return None

    def _refill(self, page: list[tuple[model.Entry, str]]) -> None:
        self._buffer, self._index = page, 0


class AsyncListIterator(_Buffered):
    """``async for entry in db.list(...)``; ``.cursor`` resumes after the last one."""

    def __aiter__(self) -> AsyncListIterator:
        return self

    async def __anext__(self) -> model.Entry:
        entry = self._take()
        if entry is None:
            self._refill(await self.pager.next_page())
            entry = self._take()
            if entry is None:
                raise StopAsyncIteration
        return entry


PageCall = Callable[[Callable[[], Coroutine[Any, Any, list[tuple[model.Entry, str]]]]], Any]


class ListIterator(_Buffered):
    """``for entry in db.list(...)``; ``.cursor`` resumes after the last one."""

    def __init__(self, pager: Pager, run: PageCall) -> None:
        super().__init__(pager)
        self._run = run

    def __iter__(self) -> ListIterator:
        return self

    def __next__(self) -> model.Entry:
        entry = self._take()
        if entry is None:
            self._refill(self._run(self.pager.next_page))
            entry = self._take()
            if entry is None:
                raise StopIteration
        return entry

"""Backends behind the one storage boundary, chosen by the database URL."""

from __future__ import annotations

from kvqueue import errors
from kvqueue.clock import Clock
from kvqueue.storage.base import Storage


async def open_storage(url: str, *, clock: Clock | None = None) -> Storage:
    """Open the backend a database URL names.

    ``app.db``, ``sqlite:///app.db`` and ``:memory:`` are SQLite.

    Raises:
        InvalidInput: the URL names a backend this version does not have.
    """
    if url.startswith(("postgresql://", "postgres://", "http://", "https://")):
        scheme = url.split(":", 1)[0]
        raise errors.InvalidInput(
            f"the {scheme} backend is not available yet in this version of kvqueue"
        )
    if url.startswith("sqlite://"):
        url = url.removeprefix("sqlite://")
        # sqlite:///rel.db is a relative path, sqlite:////abs.db an absolute one.
        url = url[1:] if url.startswith("/") else url
    from kvqueue.storage.sqlite import SqliteStorage

    return await SqliteStorage.open(url, clock=clock)


__all__ = ["Storage", "open_storage"]

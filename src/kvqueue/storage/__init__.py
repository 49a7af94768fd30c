"""Backends behind the one storage boundary, chosen by the database URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from kvqueue import errors
from kvqueue.clock import Clock
from kvqueue.storage.base import Storage


async def open_storage(url: str, *, clock: Clock | None = None) -> Storage:
    """Open the backend a database URL names.

    ``app.db``, ``sqlite:///app.db`` and ``:memory:`` are SQLite;
    ``postgresql://...`` (or ``postgres://...``) is PostgreSQL, with the
    ``kvqueue[postgres]`` extra installed.

    Raises:
        InvalidInput: the URL names a backend this version does not have.
        StorageError: the database cannot be opened.
    """
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from kvqueue.storage.postgres import PostgresStorage
        except ImportError as exc:
            raise errors.MissingDependency(
                "PostgreSQL needs psycopg: pip install 'kvqueue[postgres]'"
            ) from exc
        return await PostgresStorage.open(url, clock=clock)
    if url.startswith(("http://", "https://")):
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


def shown(url: str) -> str:
    """``url`` fit to print or log: a password in it is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def migrate(url: str) -> tuple[int, int]:
    """Create or upgrade the schema of the database at ``url``.

    Opening a database migrates it too; this is for deployments that prefer
    to migrate in a step of their own. Returns the versions before and after.
    """
    storage = await open_storage(url)
    try:
        return storage.schema_versions
    finally:
        await storage.close()


__all__ = ["Storage", "migrate", "open_storage", "shown"]

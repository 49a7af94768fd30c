"""The storage boundary: the only thing a backend implements.

A backend applies atomic state changes and answers reads; it never decides
policy. Retry counts, backoff, dead-lettering, limits and batching are decided
above this boundary (``kvqueue.atomic``, ``kvqueue.kv_queue``, ...) and written
once for every backend. Everything crossing it is a type from
:mod:`kvqueue.model`; keys and values are already encoded.

All times inside a backend come from the backend's own clock (the injected
Clock for SQLite, the database server's clock for PostgreSQL), so callers pass
durations, never instants.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from kvqueue import model
from kvqueue.clock import Clock


class Storage(Protocol):
    """A database: one KV keyspace plus queues, in one store."""

    #: The clock this storage measures expiry, delays and leases with.
    clock: Clock

    #: The schema version before and after opening migrated the store.
    schema_versions: tuple[int, int]

    async def read(self, ranges: Sequence[model.ReadRange]) -> list[list[model.StoredEntry]]:
        """Read every range from one consistent snapshot, skipping expired keys.

        Returns one list per range, in request order, each in key order (or
        reverse key order for a reverse range), at most ``limit`` entries long.
        """
        ...

    async def commit(self, write: model.AtomicWrite) -> model.Committed | None:
        """Apply a whole atomic write, or nothing of it.

        Checks first: if a key check or lease check fails, or a queue change's
        ``expect`` does not hold, nothing is written and the result is ``None``.
        Otherwise queue changes apply in order, then mutations, then enqueues,
        then settlements, all in one transaction. The result carries the
        commit's 10-byte versionstamp (strictly greater than any before it;
        every key written by this commit carries it) and, per settlement,
        whether it found its message. A settlement that finds nothing is not
        an error: the message was already settled, or its lease ran out.

        A Retry adds one to its queue's retried count, a DeadLetter to its
        queue's dead-lettered count (kept for metrics). With ``write.stats_of``
        the backend may also return that queue's stats as of this commit
        (``Committed.stats``), read in the same transaction; None otherwise.

        Raises:
            TypeMismatch: a sum/min/max met a stored value that is not a KvU64.
            QueueNotFound: an enqueue, change or dead-letter names a missing queue.
            QueueExists: a CreateQueue without ``if_absent`` met an existing queue.
            QueueFull: enqueues would take a queue past its backlog limit.
            StorageError: the store failed; nothing was written.
        """
        ...

    async def lease(
        self,
        queue: str,
        *,
        lease: str,
        limit: int,
        lease_ms: int,
        max_leases: int | None = None,
    ) -> list[model.LeasedMessage]:
        """Take up to ``limit`` visible messages of ``queue``, oldest first, under ``lease``.

        Each taken message has its ``attempts`` raised by one and is invisible to
        every other caller for ``lease_ms``, after which it is visible again
        unless it was settled or its lease extended. Two callers never hold the
        same message at once. The caller names the lease, so it can add more
        messages to one lease later.

        With ``max_leases``, nothing is taken while that many other leases
        (batches) still hold messages of the queue: this is how a consumer's
        concurrency is bounded across every process sharing the store.
        """
        ...

    async def queues(self, names: Sequence[str] | None = None) -> list[model.QueueRecord]:
        """The named queues that exist (all of them, by name, when ``names`` is None)."""
        ...

    async def stats(self, queue: str) -> model.QueueStats:
        """Backlog, oldest message, in-flight count and counters of one queue.

        Raises:
            QueueNotFound: there is no such queue.
        """
        ...

    async def peek(self, queue: str, *, limit: int) -> list[model.StoredMessage]:
        """Up to ``limit`` messages of ``queue`` in delivery order, leasing nothing."""
        ...

    async def browse(
        self, queue: str, *, limit: int, after: tuple[int, int] | None = None
    ) -> list[tuple[model.StoredMessage, tuple[int, int]]]:
        """Up to ``limit`` messages of ``queue`` in the order they were sent, leasing
        nothing, each with its position ``(enqueued_at_ms, arrival number)``: those
        after the position ``after`` (None: from the first). A message keeps its
        position while it waits, is leased or retried, so paging by the last position
        seen visits every message once however the queue is consumed meanwhile.
        """
        ...

    async def extend(self, leases: Sequence[model.LeaseCheck], *, lease_ms: int) -> set[str]:
        """Push the end of each still-held lease to ``lease_ms`` from now.

        Returns the ids of the messages whose lease was still held (and is now
        extended); the others were settled or taken by someone else.
        """
        ...

    @property
    def changes(self) -> int:
        """A count of the change signals seen so far: read it before looking at a
        queue and pass it to :meth:`wait` as ``since``."""
        ...

    @property
    def queue_changes(self) -> int | None:
        """A count of the change signals that may have changed a queue's record
        (created, updated, paused, deleted it or set its consumer), here or in
        another process; a subset of :attr:`changes`. While it stays put, a
        queue record read before still holds. None: not tracked (read again)."""
        ...

    @property
    def arrivals(self) -> int:
        """A count of the change signals that may have made a message deliverable:
        all of :attr:`changes` but commits of nothing but acks (where the backend
        can tell). Pass it to :meth:`wait` as ``since`` with ``acks=False``."""
        ...

    async def wait(
        self,
        queue: str | None,
        *,
        timeout_ms: int,
        after_ms: int | None = None,
        since: int | None = None,
        acks: bool = True,
    ) -> None:
        """Return when something may have changed, or after ``timeout_ms``.

        With a queue: when a message of that queue may be visible (one became
        due on the storage's clock, or another caller, in this process or
        another, committed a change). With ``after_ms``, messages that were
        already visible at that clock time do not count: a consumer that was
        just refused them (its concurrency bound) waits for a change instead of
        spinning. With ``since`` (a :attr:`changes` value read before the
        caller looked), it returns at once if a change came after that look,
        even within the same millisecond. Without a queue: when any change may
        have been committed. With ``acks`` False, a commit of nothing but acks
        does not count (it can make no message deliverable; only a consumer bounded
        across processes waits for one), and ``since`` is an :attr:`arrivals` value.
        ``timeout_ms`` is real time: a safety net for a missed wake-up, not a
        schedule. Only a hint: callers re-check, and correctness never depends
        on it.
        """
        ...

    def watch(self, keys: Sequence[bytes]) -> AsyncGenerator[list[model.StoredEntry | None], None]:
        """The entries at ``keys`` (None: absent) now, then again each time one of
        them has a new versionstamp (changes close together may come as one).

        Runs until the caller stops iterating; raises DatabaseClosed once the
        storage is closed.
        """
        ...

    async def purge_expired(self) -> int | None:
        """Delete keys whose expiry has passed, and messages older than their
        queue's retention (paused or not, leased or not).

        Returns milliseconds until the next key or message expires, or None if
        nothing will.
        """
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store."""
        ...

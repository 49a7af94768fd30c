"""The notices PostgreSQL processes send one another, and when one wakes this
process's consumers.

A commit that changed something sends ``NOTIFY`` with ``"<origin> <mark> [names]"``:

* no mark: it may have changed anything, a queue's record included;
* ``plain``: it changed no queue's record; ``names``, when there, are the queues
  it sent messages to (comma-separated);
* ``acks``: nothing but acks, which made no message deliverable either;
* ``taken``: a lease took the last ready messages of queue ``names``.

Every process LISTENs, and with several consumer processes on a queue each send
woke all of them: one lease found the messages and the others came back empty,
and those wake-ups were a third of the machine's work with four consumer
processes. So a process that finds others ahead of it on a queue (a lease of it
came back empty although another process had sent to it since the last one)
holds a send's wake-up back a moment, and drops it if the notice that the send
was taken comes first. It is a saving, never a condition of delivery: a process
ahead that is busy sends no such notice, and the wake-up goes ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from kvqueue.storage.common import Signal

PLAIN = "plain"
ACKS = "acks"
TAKEN = "taken"
# How long a wake-up is held back for a "taken" notice: the time another process
# needs to wake, lease and have its notice arrive, with room for a busy machine.
HOLD_S = 0.02
# PostgreSQL takes payloads of up to 8000 bytes; a notice naming more queues than
# fit in this says nothing of its queues (every waiter wakes).
_MAX_NAMES = 4000


def sent(origin: str, queues: Iterable[str]) -> str:
    """The notice of a commit that sent messages to ``queues`` and changed no queue."""
    names = ",".join(sorted(set(queues)))
    if not names or len(names) > _MAX_NAMES:
        return f"{origin} {PLAIN}"
    return f"{origin} {PLAIN} {names}"


def taken(origin: str, queue: str) -> str:
    """The notice of a lease that took the last ready messages of ``queue``."""
    return f"{origin} {TAKEN} {queue}"


class Wakes:
    """Turns other processes' notices into firings of this process's :class:`Signal`."""

    def __init__(self, signal: Signal, origin: str) -> None:
        self._signal = signal
        self._origin = origin
        # Per queue: other processes' sends noticed, and that count at our last lease.
        self._sends: dict[str, int] = {}
        self._sends_at_lease: dict[str, int] = {}
        # Queues on which another process took what we last woke for.
        self._behind: set[str] = set()
        # Per queue: the wake-up held back, and how many sends it stands for.
        self._held: dict[str, tuple[asyncio.TimerHandle, int]] = {}

    def notice(self, payload: str) -> None:
        """Act on one notice."""
        origin, _, rest = payload.partition(" ")
        if origin == self._origin:
            return  # our own commit: the writer has woken our waiters already
        mark, _, names = rest.partition(" ")
        if mark == ACKS:
            self._signal.fire(queues=False, arrivals=False)
        elif mark == TAKEN:
            self._taken(names)
        elif mark == PLAIN:
            queues = names.split(",") if names else []
            for queue in queues:
                self._sends[queue] = self._sends.get(queue, 0) + 1
            if len(queues) == 1 and queues[0] in self._behind:
                self._hold(queues[0])
            else:
                self._signal.fire(queues=False)
        else:
            self._signal.fire()

    def sends(self, queue: str) -> int:
        """Other processes' sends to ``queue`` noticed so far: read before a lease."""
        return self._sends.get(queue, 0)

    def leased(self, queue: str, *, took: bool, sends: int) -> None:
        """After a lease of ``queue`` (``sends``: :meth:`sends` before it): a lease that
        took nothing although another process sent since our last one puts us behind
        on the queue; one that took something puts us ahead again."""
        if took:
            self._behind.discard(queue)
        elif sends != self._sends_at_lease.get(queue, 0):
            self._behind.add(queue)
        self._sends_at_lease[queue] = sends

    def close(self) -> None:
        """Let every held wake-up go now."""
        for queue in list(self._held):
            self._release(queue)

    def _hold(self, queue: str) -> None:
        held = self._held.get(queue)
        if held is not None:
            self._held[queue] = (held[0], held[1] + 1)
            return
        timer = asyncio.get_running_loop().call_later(HOLD_S, self._release, queue)
        self._held[queue] = (timer, 1)

    def _taken(self, queue: str) -> None:
        held = self._held.get(queue)
        if held is None:
            return
        timer, count = held
        if count > 1:
            # A later send may have come after that lease looked: wake as planned.
            return
        timer.cancel()
        del self._held[queue]

    def _release(self, queue: str) -> None:
        timer, _ = self._held.pop(queue)
        timer.cancel()
        self._signal.fire(queues=False)

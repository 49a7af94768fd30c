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
and with four consumer processes those wake-ups cost about a third of the rate.
So a process that has seen another process take a queue's last messages since
its own last lease took any (a "taken" notice) holds a send's wake-up back a
moment, and drops it if the notice that the send was taken comes first. It is a
saving, never a condition of delivery: a process that is busy, or gone, sends no
such notice, and the wake-up goes ahead. A process that is alone on its queue
never sees another's "taken" notice, so it never holds a wake-up back; nor does
it send "taken" notices itself (every process receives each one), until it sees
a sign of another consumer: another's "taken" notice, or a lease of its own that
found nothing although another process had sent to the queue since its last one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from kvqueue.storage.common import Signal

PLAIN = "plain"
ACKS = "acks"
TAKEN = "taken"
# How long a wake-up is held back for a "taken" notice: the time another process
# needs to wake, lease and have its notice arrive, with room for a busy machine
# (on a saturated two-core machine, 5 ms ran out first in half the cases).
HOLD_S = 0.02
# After a sign of another consumer of a queue, our leases of it say "taken" this long.
_CONTESTED_S = 60.0
# PostgreSQL takes payloads of up to 8000 bytes; a notice naming more queues than
# fit in this says nothing of its queues (every waiter wakes).
_MAX_NAMES = 4000


def sent(origin: str, queues: Iterable[str]) -> str:
    """The notice of a commit that sent messages to ``queues`` and changed no queue."""
    names = ",".join(sorted(set(queues)))
    if not names or len(names) > _MAX_NAMES:
        return f"{origin} {PLAIN}"
    return f"{origin} {PLAIN} {names}"


def acked(origin: str) -> str:
    """The notice of a commit of nothing but acks."""
    return f"{origin} {ACKS}"


def taken(origin: str, queue: str) -> str:
    """The notice of a lease that took the last ready messages of ``queue``."""
    return f"{origin} {TAKEN} {queue}"


class Wakes:
    """Turns other processes' notices into firings of this process's :class:`Signal`."""

    def __init__(self, signal: Signal, origin: str) -> None:
        self._signal = signal
        self._origin = origin
        # Queues whose last messages another process took since our last lease of
        # them that took any.
        self._behind: set[str] = set()
        # Per queue: when we last saw a sign of another consumer of it.
        self._contested: dict[str, float] = {}
        # Per queue: other processes' sends noticed, and that count at our last lease.
        self._sends: dict[str, int] = {}
        self._sends_at_lease: dict[str, int] = {}
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
            self._behind.add(names)
            self._contested[names] = time.monotonic()
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

    def announces(self, queue: str) -> bool:
        """Whether our leases of ``queue`` should say when they take its last messages:
        only once another consumer of it has shown itself, lately."""
        seen = self._contested.get(queue)
        return seen is not None and time.monotonic() - seen < _CONTESTED_S

    def leased(self, queue: str, *, took: bool, sends: int) -> None:
        """After a lease of ours of ``queue`` (``sends``: :meth:`sends` before it). One
        that took messages means we wake at once for the queue again; one that took
        nothing although another process sent to it since our last lease means
        another consumer took them."""
        if took:
            self._behind.discard(queue)
            # Sends noticed while it ran may be what it took.
            self._sends_at_lease[queue] = self.sends(queue)
            return
        if sends != self._sends_at_lease.get(queue, 0):
            self._contested[queue] = time.monotonic()
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

"""The one error hierarchy of kvqueue.

Every exception kvqueue raises derives from :class:`KvQueueError`. Each class's
docstring says when it is raised and doubles as its default message. Driver
errors (sqlite3, later psycopg and HTTP) are translated at the storage boundary
with ``raise ... from exc``; the original is kept as ``__cause__``.

::

    KvQueueError
    ├── InvalidInput (also ValueError)          bad input; nothing was written
    │   ├── InvalidKey
    │   ├── InvalidValue
    │   ├── InvalidOption                       a setting out of its range
    │   └── LimitExceeded                       a named limit of kvqueue.limits
    │       ├── KeyTooLarge
    │       ├── ValueTooLarge
    │       ├── PayloadTooLarge
    │       ├── TooManyChecks
    │       ├── TooManyMutations
    │       ├── AtomicTooLarge
    │       ├── TooManyWatchedKeys
    │       ├── TooManyUndeliveredKeys
    │       ├── InvalidDelay
    │       └── InvalidBackoffSchedule
    ├── TypeMismatch                            sum/min/max on a stored non-KvU64 value
    ├── QueueFull                               the queue's backlog limit is reached
    ├── ListenerAlreadyRunning
    ├── DatabaseClosed
    ├── CorruptValue                            stored bytes that cannot be decoded
    └── StorageError                            the storage failed (driver error inside)
        └── MissingDependency
"""

from __future__ import annotations


class KvQueueError(Exception):
    """An error raised by kvqueue."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class InvalidInput(KvQueueError, ValueError):
    """The input breaks a rule of kvqueue; nothing was written."""


class InvalidKey(InvalidInput):
    """A key must be a non-empty tuple of bytes, str, int, float or bool parts."""


class InvalidValue(InvalidInput):
    """The value has a type kvqueue cannot store."""


class InvalidOption(InvalidInput):
    """An option is outside its allowed range."""


class LimitExceeded(InvalidInput):
    """A limit of kvqueue was exceeded; nothing was written.

    Attributes:
        limit: the name of the constant in :mod:`kvqueue.limits`.
        maximum: the limit's value.
        actual: what the input had.
    """

    #: How the measured quantity is counted, for the message ("bytes", "checks", ...).
    unit: str = ""
    #: What was measured, for the message.
    subject: str = "input"

    def __init__(self, limit: str, maximum: int, actual: int, *, detail: str = "") -> None:
        self.limit = limit
        self.maximum = maximum
        self.actual = actual
        unit = f" {self.unit}" if self.unit else ""
        message = (
            f"{self.subject} is {actual:,}{unit}, over the limit {limit} = {maximum:,}{unit}"
            f" by {actual - maximum:,}"
        )
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)


class KeyTooLarge(LimitExceeded):
    """An encoded key is longer than the key limit."""

    unit = "bytes"
    subject = "encoded key"


class ValueTooLarge(LimitExceeded):
    """An encoded value is longer than the value limit."""

    unit = "bytes"
    subject = "encoded value"


class PayloadTooLarge(LimitExceeded):
    """An encoded queue message is longer than the message limit."""

    unit = "bytes"
    subject = "encoded message"


class TooManyChecks(LimitExceeded):
    """An atomic operation has more checks than allowed."""

    unit = "checks"
    subject = "atomic operation"


class TooManyMutations(LimitExceeded):
    """An atomic operation has more mutations and enqueues than allowed."""

    unit = "mutations and enqueues"
    subject = "atomic operation"


class AtomicTooLarge(LimitExceeded):
    """The keys, values and payloads of an atomic operation are too large together."""

    unit = "bytes"
    subject = "atomic operation"


class TooManyWatchedKeys(LimitExceeded):
    """A watch names more keys than allowed."""

    unit = "keys"
    subject = "watch"


class TooManyUndeliveredKeys(LimitExceeded):
    """An enqueue names more ``keys_if_undelivered`` than allowed."""

    unit = "keys"
    subject = "keys_if_undelivered"


class InvalidDelay(LimitExceeded):
    """A delay is negative or longer than allowed."""

    unit = "ms"
    subject = "delay"


class InvalidBackoffSchedule(LimitExceeded):
    """A backoff schedule has too many entries or an entry out of range."""

    subject = "backoff_schedule"


class TypeMismatch(KvQueueError):
    """sum, min and max need the stored value to be a KvU64."""


class QueueFull(KvQueueError):
    """The queue holds as many undelivered messages as its backlog limit allows."""

    def __init__(self, queue: str, maximum: int) -> None:
        self.queue = queue
        self.maximum = maximum
        super().__init__(
            f"queue {queue!r} holds {maximum:,} undelivered messages, its backlog limit;"
            " nothing was enqueued"
        )


class ListenerAlreadyRunning(KvQueueError):
    """listen_queue is already running on this database; one listener per database."""


class DatabaseClosed(KvQueueError):
    """The database is closed."""


class CorruptValue(KvQueueError):
    """Stored bytes could not be decoded as a value."""


class StorageError(KvQueueError):
    """The storage failed; the driver's error is the cause."""


class MissingDependency(StorageError):
    """An optional dependency is not installed."""

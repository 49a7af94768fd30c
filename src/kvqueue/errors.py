"""The one error hierarchy of kvqueue.

Every exception kvqueue raises derives from :class:`KvQueueError`. Each class's
docstring says when it is raised and doubles as its default message. Driver
errors (sqlite3, later psycopg and HTTP) are translated at the storage boundary
with ``raise ... from exc``; the original is kept as ``__cause__``.

Each error also has the HTTP status and Cloudflare Queues error code a server
answers with (``exc.status``, ``exc.code``), from the one table
:data:`ERROR_CODES` at the end of this module.

::

    KvQueueError
    ├── InvalidInput (also ValueError)          bad input; nothing was written
    │   ├── InvalidKey
    │   ├── InvalidValue
    │   ├── InvalidOption                       a setting out of its range
    │   │   └── InvalidConfig                   a kvqueue.toml that breaks a rule
    │   ├── InvalidQueueName
    │   ├── InvalidMessage                      a body that does not fit its content type
    │   ├── EmptyBatch
    │   ├── InvalidAccount
    │   ├── MalformedRequest                    a request body that is not JSON
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
    │       │   └── InvalidBatchDelay
    │       ├── InvalidBackoffSchedule
    │       ├── MessageTooLarge
    │       ├── BatchTooLarge
    │       ├── TooManyMessages
    │       └── RequestTooLarge                 an HTTP request body over the server's limit
    ├── TypeMismatch                            sum/min/max on a stored non-KvU64 value
    ├── QueueNotFound
    ├── QueueExists
    ├── ConsumerExists                          a queue has one consumer, of one type
    ├── ConsumerNotFound
    ├── QueuePaused                             delivery is paused (pull refused)
    ├── QueueFull                               the queue's backlog limit is reached
    ├── ListenerAlreadyRunning
    ├── DatabaseClosed
    ├── Unauthenticated                         no valid bearer token (HTTP 401)
    ├── Forbidden                               the token's account or scope does not allow it
    ├── TokenNotFound
    ├── RouteNotFound                           no such HTTP path
    ├── MethodNotAllowed
    ├── CorruptValue                            stored bytes that cannot be decoded
    └── StorageError                            the storage failed (driver error inside)
        └── MissingDependency
"""

from __future__ import annotations


class KvQueueError(Exception):
    """An error raised by kvqueue."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def status(self) -> int:
        """The HTTP status a server answers this error with."""
        return _lookup(type(self))[0]

    @property
    def code(self) -> int:
        """The Cloudflare Queues error code of this error (15000 when it has none)."""
        return _lookup(type(self))[1]


class InvalidInput(KvQueueError, ValueError):
    """The input breaks a rule of kvqueue; nothing was written."""


class InvalidKey(InvalidInput):
    """A key must be a non-empty tuple of bytes, str, int, float or bool parts."""


class InvalidValue(InvalidInput):
    """The value has a type kvqueue cannot store."""


class InvalidOption(InvalidInput):
    """An option is outside its allowed range."""


class InvalidConfig(InvalidOption):
    """A kvqueue.toml breaks a rule; nothing was changed.

    Attributes:
        path: the file.
        table: the table the problem is in (``[[queues.consumers]] #2 (queue 'jobs')``),
            or "" for the file as a whole.
        key: the key at fault, if one is.
    """

    def __init__(
        self, path: str = "", table: str = "", key: str | None = None, problem: str = ""
    ) -> None:
        self.path = path
        self.table = table
        self.key = key
        where = ": ".join(part for part in (path, table) if part)
        super().__init__(f"{where}: {problem}" if where else problem or None)


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

    def __init__(
        self,
        limit: str,
        maximum: int,
        actual: int,
        *,
        detail: str = "",
        unit: str | None = None,
        message: str | None = None,
    ) -> None:
        self.limit = limit
        self.maximum = maximum
        self.actual = actual
        if unit is not None:
            self.unit = unit
        unit = f" {self.unit}" if self.unit else ""
        if message is None:
            if actual < maximum:
                # A lower bound was broken (``limit`` names the minimum then).
                message = (
                    f"{self.subject} is {actual:,}{unit}, under the minimum {limit} ="
                    f" {maximum:,}{unit} by {maximum - actual:,}"
                )
            else:
                message = (
                    f"{self.subject} is {actual:,}{unit}, over the limit {limit} ="
                    f" {maximum:,}{unit} by {actual - maximum:,}"
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


class InvalidBatchDelay(InvalidDelay):
    """A batch's delay is negative or longer than allowed."""

    subject = "batch delay"


class MessageTooLarge(LimitExceeded):
    """A named-queue message body is longer than the message limit."""

    unit = "bytes"
    subject = "message"


class BatchTooLarge(LimitExceeded):
    """The messages of one send_batch are too large together."""

    unit = "bytes"
    subject = "batch"


class TooManyMessages(LimitExceeded):
    """A send_batch holds more messages than allowed."""

    unit = "messages"
    subject = "batch"


class InvalidQueueName(InvalidInput):
    """A queue name is 1-63 lowercase letters, digits and dashes, not starting or
    ending with a dash."""


class InvalidMessage(InvalidInput):
    """A message body does not fit its content type, or the content type is unknown."""


class EmptyBatch(InvalidInput):
    """send_batch needs at least one message."""


class InvalidAccount(InvalidInput):
    """An account id is 1-64 letters, digits, underscores and dashes."""

    def __init__(self, account: object) -> None:
        super().__init__(
            f"an account id is 1-64 letters, digits, underscores and dashes, got {account!r}"
        )


class MalformedRequest(InvalidInput):
    """A request body is not valid JSON."""


class RequestTooLarge(LimitExceeded):
    """An HTTP request body is longer than the server accepts."""

    unit = "bytes"
    subject = "request body"


class TypeMismatch(KvQueueError):
    """sum, min and max need the stored value to be a KvU64."""


def _shown(queue: str) -> str:
    # A stored name may carry its account ("acme/jobs", see kvqueue.accounts);
    # the account is not part of the name its owner knows.
    return queue.rpartition("/")[2]


class QueueNotFound(KvQueueError):
    """There is no queue by that name."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"there is no queue named {_shown(queue)!r}")


class QueueExists(KvQueueError):
    """A queue by that name already exists."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"a queue named {_shown(queue)!r} already exists")


class ConsumerExists(KvQueueError):
    """The queue already has a consumer; a queue has one consumer, of one type."""

    def __init__(self, queue: str, existing: str) -> None:
        self.queue = queue
        self.existing = existing
        super().__init__(
            f"queue {queue!r} already has a consumer ({existing}); a queue has one consumer,"
            f" of one type: {_consumer_remedy(queue, existing)}"
        )


def _consumer_remedy(queue: str, existing: str) -> str:
    """What resolves a ConsumerExists, in Python and on the command line.

    ``existing`` is the consumer's ``describe()``: ``http_pull`` or ``worker 'name'``;
    anything else names a conflict that removing the consumer does not resolve."""
    python = (
        f"remove it first with db.queues.remove_consumer({queue!r}), or replace it with"
        f" db.queues.update_consumer({queue!r}, TYPE, ...)"
    )
    if existing == "http_pull":
        return f"{python}; on the command line `kvqueue queues consumer http remove {queue}`"
    script = existing.removeprefix("worker ")
    if script != existing and len(script) > 2 and script[0] == script[-1] == "'":
        command = f"kvqueue queues consumer remove {queue} {script[1:-1]}"
        return f"{python}; on the command line `{command}`"
    if script != existing:  # a worker consumer that names no Worker
        return python
    return "give each queue one handler"


class ConsumerNotFound(KvQueueError):
    """The queue has no consumer."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"queue {queue!r} has no consumer")


class QueuePaused(KvQueueError):
    """Delivery from the queue is paused (queue_delivery_paused); resume it to pull."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(f"queue_delivery_paused: delivery from queue {queue!r} is paused")


class QueueFull(KvQueueError):
    """The queue holds as many undelivered messages as its backlog limit allows."""

    def __init__(self, queue: str, maximum: int, *, unit: str = "undelivered messages") -> None:
        self.queue = queue
        self.maximum = maximum
        super().__init__(
            f"queue {queue!r} holds {maximum:,} {unit}, its backlog limit; nothing was sent"
        )


class ListenerAlreadyRunning(KvQueueError):
    """listen_queue is already running on this database; one listener per database."""


class DatabaseClosed(KvQueueError):
    """The database is closed."""


class Unauthenticated(KvQueueError):
    """A request needs a valid bearer token: Authorization: Bearer <token>."""


class Forbidden(KvQueueError):
    """The token does not allow this: another account, a narrower scope, or another queue."""


class TokenNotFound(KvQueueError):
    """There is no token with that id."""

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__(f"there is no token with id {token_id!r}")


class RouteNotFound(KvQueueError):
    """No API route has this path."""


class MethodNotAllowed(KvQueueError):
    """The route does not take this HTTP method."""


class CorruptValue(KvQueueError):
    """Stored bytes could not be decoded as a value."""


class StorageError(KvQueueError):
    """The storage failed; the driver's error is the cause."""


class MissingDependency(StorageError):
    """An optional dependency is not installed."""


#: HTTP status and Cloudflare Queues error code per error class. A class not
#: listed takes its nearest listed base class's pair.
ERROR_CODES: dict[type[KvQueueError], tuple[int, int]] = {
    KvQueueError: (500, 15000),  # UnknownInternalError
    InvalidInput: (400, 10207),  # JSONRequestBodyInvalid
    InvalidDelay: (400, 10203),  # MessageMetadataInvalid
    InvalidBatchDelay: (400, 10202),  # BatchDelayInvalid
    InvalidMessage: (400, 10203),
    MessageTooLarge: (400, 10204),  # MessageSizeOutOfBounds
    BatchTooLarge: (400, 10205),  # BatchSizeOutOfBounds
    TooManyMessages: (400, 10206),  # BatchCountOutOfBounds
    EmptyBatch: (400, 10206),
    InvalidQueueName: (400, 11003),
    QueueNotFound: (404, 10104),
    QueueExists: (409, 11009),
    ConsumerExists: (409, 11004),
    ConsumerNotFound: (404, 15000),
    QueuePaused: (409, 10252),  # QueueDisabled
    QueueFull: (429, 10251),  # QueueStorageLimitExceeded
    DatabaseClosed: (503, 15000),
    MalformedRequest: (400, 10208),  # JSONRequestBodyMalformed
    RequestTooLarge: (413, 10207),
    Unauthenticated: (401, 10000),  # Cloudflare's "Authentication error"
    Forbidden: (403, 10106),  # Unauthorized
    TokenNotFound: (404, 10000),
    RouteNotFound: (404, 7003),  # Cloudflare's "No route for the URI"
    MethodNotAllowed: (405, 7001),
    TypeMismatch: (400, 10207),
}


def _lookup(cls: type[KvQueueError]) -> tuple[int, int]:
    for base in cls.__mro__:
        pair = ERROR_CODES.get(base)
        if pair is not None:
            return pair
    return ERROR_CODES[KvQueueError]


def from_response(status: int, code: int, message: str) -> KvQueueError:
    """The error a server answered with (status and Cloudflare code), rebuilt on the
    client: the most specific class with that pair, else one by status alone."""
    candidates = [cls for cls, pair in ERROR_CODES.items() if pair == (status, code)]
    if not candidates:
        candidates = [cls for cls, pair in ERROR_CODES.items() if pair[0] == status]
    # The deepest class wins (QueuePaused over KvQueueError, say).
    cls = max(candidates, key=lambda c: len(c.__mro__), default=KvQueueError)
    return rebuilt(cls, message)


def by_name(name: str | None, status: int, message: str) -> KvQueueError:
    """The error a server named by its class (KV Connect's ``x-kvqueue-error``),
    rebuilt on the client; an unknown name falls back to the status alone."""
    cls = globals().get(name or "")
    if isinstance(cls, type) and issubclass(cls, KvQueueError):
        return rebuilt(cls, message)
    return from_response(status, 0, message)


def rebuilt(cls: type[KvQueueError], message: str) -> KvQueueError:
    """An instance of ``cls`` carrying ``message`` as is (its own constructor may
    want other arguments)."""
    error = cls.__new__(cls)
    KvQueueError.__init__(error, message)
    return error

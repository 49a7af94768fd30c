"""The Cloudflare Queues REST wire format: envelopes, object shapes, request fields.

Only translation lives here, in both directions: the server reads requests
into checked Python values and writes kvqueue's objects as Cloudflare's JSON;
the remote client (:mod:`kvqueue.remote.queues`) writes requests and reads
that JSON back into the very objects the embedded API returns. What the
values mean is decided by the public API (:mod:`kvqueue.queues`).

kvqueue's additions to Cloudflare's shapes (``docs/http-api.md``) are extra
fields that Cloudflare's SDK and wrangler ignore; extra settings appear only
when they are not at their defaults, so a default queue or consumer has
Cloudflare's exact shape.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from kvqueue import errors, limits, model
from kvqueue.consumers import BODY_ENCODINGS, Consumer, make_consumer
from kvqueue.messages import ContentType, content_type_of, decode_body
from kvqueue.queues import (
    AckResult,
    PeekedMessage,
    PulledMessage,
    PullResult,
    QueueInfo,
    QueueMetrics,
    SendResult,
)

#: Body encodings a pull or peek may ask for: the consumer's two, and kvqueue's
#: ``raw`` (every body, text too, as the base64 of its stored bytes: exact).
REQUEST_BODY_ENCODINGS: tuple[str, ...] = (*BODY_ENCODINGS, "raw")

_TIMESTAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def envelope(result: Any, **extra: Any) -> dict[str, Any]:
    """A successful response: ``{success, errors, messages, result}``."""
    return {"success": True, "errors": [], "messages": [], "result": result, **extra}


#: kvqueue's extension: every error response names the error's class in this header,
#: since a Cloudflare code is shared by several classes; kvqueue's client raises that
#: very class (KV Connect's error responses carry the same header).
ERROR_HEADER = "x-kvqueue-error"


def error_headers(exc: errors.KvQueueError) -> dict[str, str]:
    """The headers of an error response: :data:`ERROR_HEADER` naming the class."""
    return {ERROR_HEADER: type(exc).__name__}


def error_from_response(status: int, headers: Any, envelope: Any) -> errors.KvQueueError:
    """The error a failed response stands for, rebuilt on the client: the class
    :data:`ERROR_HEADER` names, else the deepest class with its status and code
    (a server without the header)."""
    problems = (envelope.get("errors") if isinstance(envelope, dict) else None) or [{}]
    first = problems[0] if isinstance(problems[0], dict) else {}
    message = str(first.get("message", f"HTTP {status}"))
    named = getattr(errors, str(headers.get(ERROR_HEADER, "")), None)
    if isinstance(named, type) and issubclass(named, errors.KvQueueError):
        return errors.rebuilt(named, message)
    code = first.get("code", 0)
    return errors.from_response(status, code if isinstance(code, int) else 0, message)


def error_envelope(exc: errors.KvQueueError) -> dict[str, Any]:
    """A failed response carrying the error's Cloudflare code and message."""
    return {
        "success": False,
        "errors": [{"code": exc.code, "message": str(exc)}],
        "messages": [],
        "result": None,
    }


def timestamp(moment: datetime) -> str:
    """Cloudflare's timestamp form: ``2024-01-01T00:00:00.000000Z``."""
    return moment.strftime(_TIMESTAMP)


def parse_timestamp(text: str) -> datetime:
    """Read back :func:`timestamp` (microseconds, so a millisecond time is exact)."""
    return datetime.strptime(text, _TIMESTAMP).replace(tzinfo=UTC)


def _ms_timestamp(ms: int) -> str:
    return timestamp(datetime.fromtimestamp(ms / 1000, UTC))


def _ms_of(moment: datetime) -> int:
    # Integer arithmetic on the timedelta: a float timestamp could be off by one.
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def queue_json(info: QueueInfo) -> dict[str, Any]:
    """A Queue object."""
    consumers = [] if info.consumer is None else [consumer_json(info.consumer, info)]
    return {
        "queue_id": info.queue_id,
        "queue_name": info.name,
        "created_on": timestamp(info.created_at),
        "modified_on": timestamp(info.modified_at),
        "producers": [],
        "producers_total_count": 0,
        "consumers": consumers,
        "consumers_total_count": len(consumers),
        "settings": _queue_settings_json(info),
    }


def _queue_settings_json(info: QueueInfo) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "delivery_delay": info.delivery_delay,
        "delivery_paused": info.delivery_paused,
        "message_retention_period": info.message_retention_period,
    }
    # kvqueue's backlog limits, only when not at their defaults.
    if info.max_backlog is not None:
        settings["max_backlog"] = info.max_backlog
    if info.max_backlog_bytes != limits.DEFAULT_QUEUE_BACKLOG_BYTES:
        settings["max_backlog_bytes"] = info.max_backlog_bytes
    return settings


def queue_from_json(shape: dict[str, Any]) -> QueueInfo:
    """A Queue object read back (what :func:`queue_json` wrote)."""
    settings = shape["settings"]
    consumers = shape.get("consumers") or []
    return QueueInfo(
        name=str(shape["queue_name"]),
        queue_id=str(shape["queue_id"]),
        created_at=parse_timestamp(shape["created_on"]),
        modified_at=parse_timestamp(shape["modified_on"]),
        delivery_delay=int(settings["delivery_delay"]),
        message_retention_period=int(settings["message_retention_period"]),
        delivery_paused=bool(settings["delivery_paused"]),
        max_backlog=settings.get("max_backlog"),
        max_backlog_bytes=settings.get("max_backlog_bytes", limits.DEFAULT_QUEUE_BACKLOG_BYTES),
        consumer=consumer_from_json(consumers[0]) if consumers else None,
    )


def consumer_json(consumer: Consumer, info: QueueInfo) -> dict[str, Any]:
    """A Consumer object, with the ``script`` spelling wrangler reads too (not ``service``:
    wrangler takes that for a service-environment Worker and looks it up in the Workers API)."""
    shape: dict[str, Any] = {
        "consumer_id": consumer.consumer_id,
        "created_on": _ms_timestamp(consumer.created_at_ms),
        "queue_id": info.queue_id,
        "queue_name": info.name,
        "type": consumer.type,
        "dead_letter_queue": consumer.dead_letter_queue or "",
    }
    if consumer.type == "worker":
        shape.update(
            script_name=consumer.script_name,
            script=consumer.script_name,
            environment="",
            settings=_worker_settings(consumer),
        )
        # The pull settings a worker consumer stores too, only when not at their defaults.
        if consumer.visibility_timeout_ms != limits.DEFAULT_VISIBILITY_TIMEOUT_MS:
            shape["settings"]["visibility_timeout_ms"] = consumer.visibility_timeout_ms
        if consumer.body_encoding != "base64":
            shape["settings"]["body_encoding"] = consumer.body_encoding
    else:
        shape["settings"] = _pull_settings(consumer)
        # The push settings a pull consumer stores too, only when not at their defaults.
        if consumer.max_batch_timeout != limits.DEFAULT_BATCH_TIMEOUT_SECONDS:
            shape["settings"]["max_wait_time_ms"] = round(consumer.max_batch_timeout * 1000)
        if consumer.max_concurrency is not None:
            shape["settings"]["max_concurrency"] = consumer.max_concurrency
    return shape


def _pull_settings(consumer: Consumer) -> dict[str, Any]:
    return {
        "batch_size": consumer.batch_size,
        "max_retries": consumer.max_retries,
        "retry_delay": consumer.retry_delay,
        "visibility_timeout_ms": consumer.visibility_timeout_ms,
        "body_encoding": consumer.body_encoding,
    }


def _worker_settings(consumer: Consumer) -> dict[str, Any]:
    return {
        "batch_size": consumer.batch_size,
        "max_retries": consumer.max_retries,
        "max_wait_time_ms": round(consumer.max_batch_timeout * 1000),
        "max_concurrency": consumer.max_concurrency,
        "retry_delay": consumer.retry_delay,
    }


def metrics_json(metrics: QueueMetrics) -> dict[str, int]:
    """A queue's metrics as the REST API reports them: Cloudflare's three, and
    kvqueue's ``in_flight``, ``retried`` and ``dead_lettered``."""
    return {
        "backlog_count": metrics.backlog_count,
        "backlog_bytes": metrics.backlog_bytes,
        "oldest_message_timestamp_ms": metrics.oldest_message_timestamp_ms,
        "in_flight": metrics.in_flight,
        "retried": metrics.retried,
        "dead_lettered": metrics.dead_lettered,
    }


def metrics_from_json(shape: dict[str, Any]) -> QueueMetrics:
    """Metrics read back (what :func:`metrics_json` wrote)."""
    return QueueMetrics(
        backlog_count=int(shape["backlog_count"]),
        backlog_bytes=int(shape["backlog_bytes"]),
        oldest_message_timestamp_ms=int(shape["oldest_message_timestamp_ms"]),
        in_flight=int(shape.get("in_flight", 0)),
        retried=int(shape.get("retried", 0)),
        dead_lettered=int(shape.get("dead_lettered", 0)),
    )


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def body_json(message: PulledMessage | PeekedMessage, encoding: str) -> Any:
    """A message body as pull and peek return it: text as is; json as base64 of its
    bytes (or, with the ``plain`` encoding, as the JSON value); anything else base64.
    The ``raw`` encoding gives every body, text too, as base64 of its bytes."""
    if encoding == "raw":
        return _base64(message.raw)
    if message.content_type == "text":
        return message.raw.decode("utf-8", errors="replace")
    if message.content_type == "json" and encoding == "plain":
        return orjson.Fragment(message.raw)
    return _base64(message.raw)


def body_from_json(message: dict[str, Any], encoding: str) -> tuple[bytes, str]:
    """The stored bytes and content type of a pulled or peeked message, from the
    ``base64`` or ``raw`` encoding (``base64`` text went through UTF-8, so a
    text that is not valid UTF-8 is exact only in ``raw``)."""
    content_type = str(message.get("metadata", {}).get("CF-Content-Type", "json"))
    body = message["body"]
    if content_type == "text" and encoding != "raw":
        return str(body).encode("utf-8"), content_type
    return base64.b64decode(body), content_type


def _message_json(message: PulledMessage | PeekedMessage, encoding: str) -> dict[str, Any]:
    return {
        "id": message.id,
        "body": body_json(message, encoding),
        "timestamp_ms": message.timestamp_ms,
        "attempts": message.attempts,
        "metadata": message.metadata,
    }


def pulled_json(message: PulledMessage, encoding: str) -> dict[str, Any]:
    """One pulled message, with the ``lease_id`` that acks it."""
    return {**_message_json(message, encoding), "lease_id": message.lease_id}


def pulled_from_json(shape: dict[str, Any], encoding: str) -> PulledMessage:
    """One pulled message read back (what :func:`pulled_json` wrote)."""
    raw, content_type = body_from_json(shape, encoding)
    return PulledMessage(
        str(shape["id"]),
        raw,
        content_type,
        int(shape["timestamp_ms"]),
        int(shape["attempts"]),
        str(shape["lease_id"]),
    )


def peeked_json(message: PeekedMessage, encoding: str) -> dict[str, Any]:
    """One peeked message, with the ``ref`` that purges it."""
    return {**_message_json(message, encoding), "ref": message.ref}


def peeked_from_json(shape: dict[str, Any], encoding: str) -> PeekedMessage:
    """One peeked message read back (what :func:`peeked_json` wrote)."""
    raw, content_type = body_from_json(shape, encoding)
    return PeekedMessage(
        str(shape["id"]), raw, content_type, int(shape["timestamp_ms"]), int(shape["attempts"])
    )


def pull_json(pulled: PullResult, encoding: str) -> dict[str, Any]:
    """A pull's result."""
    return {
        "message_backlog_count": pulled.backlog_count,
        "messages": [pulled_json(m, encoding) for m in pulled.messages],
        "metadata": {"metrics": metrics_json(pulled.metrics)},
    }


def pull_from_json(result: dict[str, Any], encoding: str) -> PullResult:
    """A pull's result read back."""
    messages = [pulled_from_json(m, encoding) for m in result.get("messages") or []]
    return PullResult(messages, metrics_from_json(result["metadata"]["metrics"]))


def sent_json(sent: SendResult) -> dict[str, Any]:
    """A push's result: Cloudflare's metrics, and kvqueue's ``message_ids``."""
    return {
        "metadata": {"metrics": metrics_json(sent.metrics)},
        "message_ids": list(sent.message_ids),
    }


def sent_from_json(result: dict[str, Any]) -> SendResult:
    """A push's result read back."""
    return SendResult(
        tuple(str(i) for i in result["message_ids"]),
        metrics_from_json(result["metadata"]["metrics"]),
    )


def ack_json(acked: AckResult) -> dict[str, Any]:
    """An ack's result: Cloudflare's, and kvqueue's ``deadLettered`` (the retried
    lease ids that were dead-lettered instead) when there are any."""
    shape: dict[str, Any] = {
        "ackCount": acked.ack_count,
        "retryCount": acked.retry_count,
        "warnings": acked.warnings,
    }
    if acked.dead_lettered:
        shape["deadLettered"] = acked.dead_lettered
    return shape


def ack_from_json(result: dict[str, Any]) -> AckResult:
    """An ack's result read back."""
    warnings = {str(k): str(v) for k, v in (result.get("warnings") or {}).items()}
    dead_lettered = [str(lease_id) for lease_id in result.get("deadLettered") or []]
    return AckResult(int(result["ackCount"]), int(result["retryCount"]), warnings, dead_lettered)


def purge_status_json(purged: datetime | None) -> dict[str, Any]:
    """When the queue was last purged (a purge completes in one transaction)."""
    if purged is None:
        return {"started_at": None, "completed": None, "complete": False}
    return {"started_at": timestamp(purged), "completed": "true", "complete": True}


def purge_status_from_json(result: dict[str, Any]) -> datetime | None:
    """The last purge's time read back."""
    started = result.get("started_at")
    return None if started is None else parse_timestamp(started)


# --- requests ---------------------------------------------------------------------


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request's JSON object; an empty body is ``{}``."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.InvalidInput(
            f"the request body must be a JSON object, got {type(value).__name__}"
        )
    return value


_TYPES: dict[type, str] = {
    str: "a string",
    bool: "true or false",
    int: "a whole number",
    dict: "an object",
    list: "an array",
}


def field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    """``body[name]`` if present and not null, checked to be of ``kind``; else ``default``."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true is not a number here, although Python's bool is an int.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if int in kinds and float in kinds and isinstance(value, float):
        ok = True
    if not ok:
        wanted = " or ".join(_TYPES.get(k, "a number") for k in kinds)
        raise errors.InvalidInput(f"{name} must be {wanted}, got {orjson.dumps(value).decode()}")
    return value


def number(body: dict[str, Any], name: str) -> int | float | None:
    """An optional number field (whole or not)."""
    value: int | float | None = field(body, name, (int, float))
    return value


def items(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """An optional array of objects."""
    value = field(body, name, list, [])
    for item in value:
        if not isinstance(item, dict):
            raise errors.InvalidInput(f"each item of {name} must be an object")
    return list(value)


def lease_ids(body: dict[str, Any], name: str) -> list[str]:
    """The ``lease_id`` of each object in ``body[name]``."""
    found = []
    for item in items(body, name):
        found.append(field(item, "lease_id", str, ""))
    return found


def queue_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The queue settings a create, replace or patch names (only those it names)."""
    settings = field(body, "settings", dict, {})
    given: dict[str, Any] = {}
    if settings.get("delivery_delay") is not None:
        given["delivery_delay"] = field(settings, "delivery_delay", int)
    if settings.get("message_retention_period") is not None:
        given["message_retention_period"] = field(settings, "message_retention_period", int)
    if settings.get("delivery_paused") is not None:
        given["delivery_paused"] = field(settings, "delivery_paused", bool)
    for name in ("max_backlog", "max_backlog_bytes"):
        # kvqueue's backlog limits, where null means "no limit": given if present.
        if name in settings:
            given[name] = None if settings[name] is None else field(settings, name, int)
    return given


def queue_request(settings: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The body of a create (with ``name``) or a patch: the settings
    :func:`queue_settings` reads back, by their ``AsyncQueues.create`` names."""
    body: dict[str, Any] = {"settings": dict(settings)}
    if name is not None:
        body["queue_name"] = name
    return body


def consumer_settings(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The consumer type and the ``add_consumer`` arguments a request body names."""
    kind = field(body, "type", str, "worker")
    settings = field(body, "settings", dict, {})
    given: dict[str, Any] = {}
    dead_letter_queue = field(body, "dead_letter_queue", str, "")
    if dead_letter_queue:
        given["dead_letter_queue"] = dead_letter_queue
    if kind == "worker":
        script = field(body, "script_name", str) or field(body, "script", str)
        if script:
            given["script_name"] = script
        # kvqueue's extension: an explicit null names no Worker, as the embedded API allows.
        elif not ("script_name" in body and body["script_name"] is None):
            raise errors.InvalidInput("a worker consumer needs script_name")
    for name in ("batch_size", "max_retries", "max_concurrency", "visibility_timeout_ms"):
        if settings.get(name) is not None:
            given[name] = field(settings, name, int)
    if settings.get("retry_delay") is not None:
        given["retry_delay"] = number(settings, "retry_delay")
    if settings.get("max_wait_time_ms") is not None:
        wait_ms = number(settings, "max_wait_time_ms")
        assert wait_ms is not None
        given["max_batch_timeout"] = wait_ms / 1000
    if settings.get("body_encoding") is not None:
        given["body_encoding"] = field(settings, "body_encoding", str)
    return kind, given


def consumer_request(consumer: Consumer) -> dict[str, Any]:
    """The body that creates or replaces a consumer like ``consumer``, with every
    setting it has (those of the other type too), so the server makes the same one."""
    settings: dict[str, Any] = {
        **_pull_settings(consumer),
        # Unrounded, so the server stores the same seconds (it shows whole milliseconds).
        "max_wait_time_ms": consumer.max_batch_timeout * 1000,
    }
    if consumer.max_concurrency is not None:
        settings["max_concurrency"] = consumer.max_concurrency
    body: dict[str, Any] = {
        "type": consumer.type,
        "dead_letter_queue": consumer.dead_letter_queue or "",
        "settings": settings,
    }
    if consumer.type == "worker":
        body["script_name"] = consumer.script_name  # None travels as null: no Worker named
    return body


def consumer_from_json(shape: dict[str, Any]) -> Consumer:
    """A Consumer object read back (what :func:`consumer_json` wrote)."""
    kind, settings = consumer_settings(shape)
    made = make_consumer(kind, **settings)
    created = shape.get("created_on")
    return dataclasses.replace(
        made,
        consumer_id=str(shape.get("consumer_id", "")),
        created_at_ms=_ms_of(parse_timestamp(created)) if isinstance(created, str) else 0,
    )


def request_body_encoding(body: dict[str, Any], default: str) -> str:
    """The body encoding a pull or peek asks for (kvqueue's extension), else ``default``."""
    encoding = field(body, "body_encoding", str, default)
    if encoding not in REQUEST_BODY_ENCODINGS:
        raise errors.InvalidOption(
            f'body_encoding is "base64", "plain" or "raw", got {orjson.dumps(encoding).decode()}'
        )
    return str(encoding)


def push_request(message: model.Enqueue) -> dict[str, Any]:
    """One message of a push, exactly as the embedded API would store it: its bytes
    in base64 (kvqueue's ``body_encoding``) and its delay, if it has its own."""
    body: dict[str, Any] = {
        "body": _base64(message.body),
        "content_type": message.content_type,
        "body_encoding": "base64",
    }
    if message.delay_ms is not None:
        # Already rounded to milliseconds; the server rounds this back to the same.
        body["delay_seconds"] = message.delay_ms / 1000
    return body


def pushed_body(message: dict[str, Any]) -> tuple[Any, ContentType]:
    """The body and content type of a message pushed with ``body_encoding: "base64"``:
    the base64 of its bytes, of any of the four content types, as ``send`` takes it."""
    try:
        raw = base64.b64decode(field(message, "body", str, ""), validate=True)
    except binascii.Error as exc:
        raise errors.InvalidMessage(f"a base64 body is not valid base64: {exc}") from exc
    kind = content_type_of(field(message, "content_type", str, "json"))
    if kind in ("bytes", "v8"):
        return raw, kind
    try:
        # Parsed and stored again by send: orjson writes back the bytes it reads.
        return decode_body(raw, kind), kind
    except errors.CorruptValue as exc:
        raise errors.InvalidMessage(str(exc)) from exc


def pull_request(
    batch_size: int | None,
    visibility_timeout_ms: int | None,
    wait_ms: int,
    consumer_id: str | None,
    lease: str | None,
) -> dict[str, Any]:
    """The body of a pull (with kvqueue's extensions) that gets bodies exactly."""
    body: dict[str, Any] = {"wait_ms": wait_ms, "body_encoding": "raw"}
    optional = {
        "batch_size": batch_size,
        "visibility_timeout_ms": visibility_timeout_ms,
        "consumer_id": consumer_id,
        "lease": lease,
    }
    body.update((k, v) for k, v in optional.items() if v is not None)
    return body


def peek_request(batch_size: int) -> dict[str, Any]:
    """The body of a peek that gets bodies exactly."""
    return {"batch_size": batch_size, "body_encoding": "raw"}


def extend_request(lease_ids: Iterable[str], visibility_timeout_ms: int) -> dict[str, Any]:
    """The body of kvqueue's extend."""
    leases = [{"lease_id": lease_id} for lease_id in lease_ids]
    return {"leases": leases, "visibility_timeout_ms": visibility_timeout_ms}


def ack_request(acks: Iterable[str], retries: Iterable[tuple[str, float | None]]) -> dict[str, Any]:
    """The body of an ack: lease ids to ack, and lease ids to retry with their delays."""
    retry_items: list[dict[str, Any]] = []
    for lease_id, delay in retries:
        item: dict[str, Any] = {"lease_id": lease_id}
        if delay is not None:
            item["delay_seconds"] = delay
        retry_items.append(item)
    return {"acks": [{"lease_id": lease_id} for lease_id in acks], "retries": retry_items}


def purge_messages_request(refs: Sequence[str]) -> dict[str, Any]:
    """The body of kvqueue's message purge."""
    return {"refs": [{"ref": ref} for ref in refs]}

"""The Cloudflare Queues REST wire format: envelopes, object shapes, request fields.

Only translation lives here: JSON in, checked Python values out, and kvqueue's
objects back to Cloudflare's JSON. What the values mean is decided by the
public API (:mod:`kvqueue.queues`), which the routes call.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson

from kvqueue import errors
from kvqueue.consumers import Consumer, make_consumer
from kvqueue.queues import PeekedMessage, PulledMessage, QueueInfo, QueueMetrics


def envelope(result: Any, **extra: Any) -> dict[str, Any]:
    """A successful response: ``{success, errors, messages, result}``."""
    return {"success": True, "errors": [], "messages": [], "result": result, **extra}


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
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms_timestamp(ms: int) -> str:
    return timestamp(datetime.fromtimestamp(ms / 1000, UTC))


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
        "settings": {
            "delivery_delay": info.delivery_delay,
            "delivery_paused": info.delivery_paused,
            "message_retention_period": info.message_retention_period,
        },
    }


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
    else:
        shape["settings"] = {
            "batch_size": consumer.batch_size,
            "max_retries": consumer.max_retries,
            "retry_delay": consumer.retry_delay,
            "visibility_timeout_ms": consumer.visibility_timeout_ms,
            "body_encoding": consumer.body_encoding,
        }
    return shape


def _worker_settings(consumer: Consumer) -> dict[str, Any]:
    return {
        "batch_size": consumer.batch_size,
        "max_retries": consumer.max_retries,
        "max_wait_time_ms": round(consumer.max_batch_timeout * 1000),
        "max_concurrency": consumer.max_concurrency,
        "retry_delay": consumer.retry_delay,
    }


def metrics_json(metrics: QueueMetrics) -> dict[str, int]:
    """A queue's metrics as the REST API reports them."""
    return {
        "backlog_count": metrics.backlog_count,
        "backlog_bytes": metrics.backlog_bytes,
        "oldest_message_timestamp_ms": metrics.oldest_message_timestamp_ms,
    }


def body_json(message: PulledMessage | PeekedMessage, encoding: str) -> Any:
    """A message body as pull and peek return it: text as is; json as base64 of its
    bytes (or, with the ``plain`` encoding, as the JSON value); anything else base64."""
    if message.content_type == "text":
        return message.raw.decode("utf-8", errors="replace")
    if message.content_type == "json" and encoding == "plain":
        return orjson.Fragment(message.raw)
    return base64.b64encode(message.raw).decode("ascii")


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


def peeked_json(message: PeekedMessage, encoding: str) -> dict[str, Any]:
    """One peeked message, with the ``ref`` that purges it."""
    return {**_message_json(message, encoding), "ref": message.ref}


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
    return given


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
        if not script:
            raise errors.InvalidInput("a worker consumer needs script_name")
        given["script_name"] = script
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
    """The body that creates or replaces a worker consumer like ``consumer``."""
    return {
        "type": "worker",
        "script_name": consumer.script_name,
        "dead_letter_queue": consumer.dead_letter_queue or "",
        "settings": _worker_settings(consumer),
    }


def consumer_from_json(shape: dict[str, Any]) -> Consumer:
    """A Consumer object read back (what :func:`consumer_json` wrote)."""
    kind, settings = consumer_settings(shape)
    made = make_consumer(kind, **settings)
    return dataclasses.replace(made, consumer_id=str(shape.get("consumer_id", "")))

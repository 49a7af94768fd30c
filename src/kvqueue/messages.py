"""Named-queue messages: content types, body checks and the send limits.

Everything a producer hands over is checked here, before anything is written:
the body must fit its content type, each body and each batch must fit the
limits, and delays must be in range. Each broken rule raises its own error,
carrying Cloudflare's error code (see :mod:`kvqueue.errors`).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from kvqueue import errors, limits, model, v8

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

ContentType = Literal["json", "text", "bytes", "v8"]
#: The content types a message may have (Cloudflare's four).
CONTENT_TYPES: tuple[ContentType, ...] = ("json", "text", "bytes", "v8")


@dataclass(frozen=True, slots=True)
class MessageSendRequest:
    """One message of a ``send_batch``: its body, content type and own delay (seconds)."""

    body: Any
    content_type: ContentType | str = "json"
    delay_seconds: float | None = None


def check_name(name: Any) -> str:
    """``name`` if it is a valid queue name, else InvalidQueueName."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise errors.InvalidQueueName(
            f"invalid queue name {name!r}: 1-63 lowercase letters, digits and dashes,"
            " starting and ending with a letter or digit"
        )
    return name


def content_type_of(value: Any) -> ContentType:
    """The canonical content type for ``value`` (matching is case-insensitive)."""
    if isinstance(value, str):
        lowered = value.lower()
        for known in CONTENT_TYPES:
            if lowered == known:
                return known
    raise errors.InvalidMessage(
        f"unsupported message content type {value!r}; use one of {', '.join(CONTENT_TYPES)}"
    )


def encode_body(body: Any, content_type: ContentType) -> bytes:
    """The stored bytes of ``body``; raises InvalidMessage if it does not fit its type.

    ``json`` takes anything orjson serialises (a datetime becomes its ISO 8601
    string, as a JavaScript Date does); ``text`` takes str; ``bytes`` takes any
    bytes-like object; ``v8`` takes bytes already in V8's serialization format.
    """
    if body is None:
        raise errors.InvalidMessage("a message body cannot be None")
    if content_type == "json":
        try:
            return orjson.dumps(body)
        except TypeError as exc:
            raise errors.InvalidMessage(
                f'content type "json" needs a JSON-serialisable body: {exc}'
            ) from exc
    if content_type == "text":
        if not isinstance(body, str):
            raise errors.InvalidMessage(
                f'content type "text" needs a str body, got {type(body).__name__}'
            )
        return body.encode("utf-8", "surrogatepass")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise errors.InvalidMessage(
            f'content type "{content_type}" needs a bytes-like body, got {type(body).__name__}'
        )
    return bytes(body)


def decode_body(data: bytes, content_type: str) -> Any:
    """A stored body as the consumer sees it: parsed JSON, str, bytes, or the V8 value."""
    try:
        if content_type == "json":
            return orjson.loads(data)
        if content_type == "text":
            return data.decode("utf-8", "surrogatepass")
        if content_type == "v8":
            return v8.loads(data)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.CorruptValue(f"a stored {content_type} message cannot be read: {exc}") from exc
    return bytes(data)


def delay_ms(delay_seconds: Any, *, batch: bool = False) -> int | None:
    """A send, batch or retry delay in milliseconds; None stays None (no delay given)."""
    if delay_seconds is None:
        return None
    error = errors.InvalidBatchDelay if batch else errors.InvalidDelay
    limit = limits.MAX_DELAY_SECONDS
    if (
        isinstance(delay_seconds, bool)
        or not isinstance(delay_seconds, int | float)
        or not math.isfinite(delay_seconds)
    ):
        raise error(
            "MAX_DELAY_SECONDS",
            limit,
            0,
            message=f"delay_seconds is a number of seconds in MIN_DELAY_SECONDS = 0 .."
            f" MAX_DELAY_SECONDS = {limit:,}, got {delay_seconds!r}",
        )
    if delay_seconds < 0:
        raise error("MIN_DELAY_SECONDS", 0, math.floor(delay_seconds), unit="s")
    if delay_seconds > limit:
        raise error("MAX_DELAY_SECONDS", limit, math.ceil(delay_seconds), unit="s")
    return round(delay_seconds * 1000)


class _RandomHex:
    """Random hex from the OS, fetched a few kilobytes at a time.

    One ``os.urandom`` call per id is a system call that also lets go of the GIL:
    a batch of 100 sends would hand the GIL to the storage's threads 100 times.
    The buffer is dropped in a forked child, so parent and child never share ids.
    """

    _FETCH = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._at = "", 0

    def take(self, chars: int) -> str:
        with self._lock:
            if self._at + chars > len(self._hex):
                fetch = max(self._FETCH, chars)
                self._hex, self._at = os.urandom(fetch).hex(), 0
            start = self._at
            self._at += chars
            return self._hex[start : self._at]


_random_hex = _RandomHex()


def _time_hex() -> str:
    """An id's first 12 characters: the time in unix milliseconds (modulo 2**48)."""
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}"


def new_message_id() -> str:
    """A message id: 32 lowercase hex characters, like Cloudflare's.

    The first 12 are the time in unix milliseconds, the other 20 random (80 bits,
    so ids stay unguessable and unique across processes). Time first keeps each
    new id near the previous ones in the storage's unique index: random ids land
    on a random page of an ever larger index, and inserts and acks slow down as
    the table grows. Nothing orders messages by id; arrival order is kept apart.
    """
    return _time_hex() + _random_hex.take(20)


def new_message_ids(count: int) -> list[str]:
    """``count`` ids of :func:`new_message_id`, with one clock read and one lock."""
    stamp = _time_hex()
    random = _random_hex.take(20 * count)
    return [stamp + random[at : at + 20] for at in range(0, 20 * count, 20)]


def build_send(
    queue: str, body: Any, content_type: ContentType | str, delay_seconds: float | None
) -> model.Enqueue:
    """A checked message for ``queue``; a delay of None means the queue's own delay."""
    return _checked(queue, new_message_id(), body, content_type, delay_seconds)


def _checked(
    queue: str,
    message_id: str,
    body: Any,
    content_type: ContentType | str,
    delay_seconds: float | None,
    default_delay: int | None = None,
) -> model.Enqueue:
    kind = content_type_of(content_type)
    data = encode_body(body, kind)
    if len(data) > limits.MAX_MESSAGE_BYTES:
        raise errors.MessageTooLarge("MAX_MESSAGE_BYTES", limits.MAX_MESSAGE_BYTES, len(data))
    delay = delay_ms(delay_seconds)
    return model.Enqueue(queue, message_id, data, kind, default_delay if delay is None else delay)


def raw_send(queue: str, data: bytes, content_type: str, delay: int | None) -> model.Enqueue:
    """A checked message for ``queue`` whose body is already encoded (as it arrives over
    the wire); a ``delay`` (ms) of None means the queue's own delay."""
    kind = content_type_of(content_type)
    if len(data) > limits.MAX_MESSAGE_BYTES:
        raise errors.MessageTooLarge("MAX_MESSAGE_BYTES", limits.MAX_MESSAGE_BYTES, len(data))
    try:
        decode_body(data, kind)
    except errors.CorruptValue as exc:
        raise errors.InvalidMessage(f"the body is not valid {kind}: {exc}") from exc
    return model.Enqueue(
        queue=check_name(queue),
        message_id=new_message_id(),
        body=data,
        content_type=kind,
        delay_ms=None if delay is None else delay_ms(delay / 1000),
    )


def build_batch(
    queue: str, messages: Iterable[MessageSendRequest | Any], delay_seconds: float | None
) -> tuple[model.Enqueue, ...]:
    """Checked messages of one ``send_batch``: a message's own delay beats the batch's,
    which beats the queue's; an explicit 0 means no delay."""
    batch_delay = delay_ms(delay_seconds, batch=True)
    items = list(messages)
    if not items:
        raise errors.EmptyBatch()
    if len(items) > limits.MAX_BATCH_MESSAGES:
        raise errors.TooManyMessages("MAX_BATCH_MESSAGES", limits.MAX_BATCH_MESSAGES, len(items))
    built: list[model.Enqueue] = []
    size = 0
    for item, message_id in zip(items, new_message_ids(len(items)), strict=True):
        if isinstance(item, MessageSendRequest):
            message = _checked(
                queue, message_id, item.body, item.content_type, item.delay_seconds, batch_delay
            )
        else:
            message = _checked(queue, message_id, item, "json", None, batch_delay)
        built.append(message)
        size += len(message.body)
    if size > limits.MAX_BATCH_BYTES:
        raise errors.BatchTooLarge("MAX_BATCH_BYTES", limits.MAX_BATCH_BYTES, size)
    return tuple(built)

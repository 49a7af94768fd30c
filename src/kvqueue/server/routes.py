"""The Cloudflare Queues REST API, route by route: decode, call the public API, encode.

Paths and shapes follow Cloudflare's API (see ``docs/http-api.md``). Each
handler checks the token's scope for what it does: reading needs any scope,
sending ``produce``, pulling and acking ``consume``, everything else ``admin``.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from kvqueue import errors, limits
from kvqueue.accounts import split_name
from kvqueue.atomic import KV_QUEUE
from kvqueue.consumers import DEFAULT_PULL_CONSUMER, load_consumer, whole_number
from kvqueue.messages import MessageSendRequest
from kvqueue.queues import QueueInfo, QueueMetrics, queue_info
from kvqueue.server import cloudflare
from kvqueue.server.app import Call, Endpoint, json_response
from kvqueue.server.cloudflare import field, items, number

_MAX_PER_PAGE = 1000
_DEFAULT_PER_PAGE = 100


def _whole(body: dict[str, Any], name: str) -> int | None:
    """An optional whole-number field; 10.0 counts as 10 (the SDK types these as floats)."""
    value = number(body, name)
    if isinstance(value, float):
        if not value.is_integer():
            raise errors.InvalidOption(f"{name} is a whole number, got {value!r}")
        return int(value)
    return value


def _query_int(call: Call, name: str, default: int, high: int) -> int:
    raw = call.request.query_params.get(name)
    if raw is None:
        return default
    # isdigit alone lets through digits int() refuses ("²") or reads (fullwidth digits).
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= high:
        raise errors.InvalidOption(f"{name} is a whole number in 1 .. {high:,}, got {raw!r}")
    return int(raw)


# --- queues ---------------------------------------------------------------------------


async def list_queues(call: Call) -> Response:
    wanted = call.request.query_params.getlist("name")
    page = _query_int(call, "page", 1, 2**31)
    per_page = _query_int(call, "per_page", _DEFAULT_PER_PAGE, _MAX_PER_PAGE)
    infos = [i for i in await call.queues.list() if call.token.allows(None, i.name)]
    if wanted:
        infos = [i for i in infos if i.name in wanted]
    shown = infos[(page - 1) * per_page : page * per_page]
    result_info = {
        "page": page,
        "per_page": per_page,
        "count": len(shown),
        "total_count": len(infos),
        "total_pages": max(1, -(-len(infos) // per_page)),
    }
    body = cloudflare.envelope([cloudflare.queue_json(i) for i in shown], result_info=result_info)
    return json_response(body)


async def create_queue(call: Call) -> Any:
    call.require("admin")
    name = field(call.body, "queue_name", str)
    if name is None:
        raise errors.InvalidInput("queue_name is required")
    settings = cloudflare.queue_settings(call.body)
    paused = settings.pop("delivery_paused", False)
    info = await call.queues.create(name, **settings)
    if paused:
        info = await call.queues.pause(name)
    return cloudflare.queue_json(info)


async def _info_of(call: Call, scope: Any = None) -> QueueInfo:
    return queue_info(await call.queue(scope))


async def get_queue(call: Call) -> Any:
    return cloudflare.queue_json(await _info_of(call))


async def _change_queue(call: Call, *, replace: bool) -> Any:
    info = await _info_of(call, "admin")
    renamed = field(call.body, "queue_name", str)
    if renamed is not None and renamed != info.name:
        raise errors.InvalidInput(
            f"queues cannot be renamed (queue_name {renamed!r} differs from {info.name!r})"
        )
    settings = cloudflare.queue_settings(call.body)
    if replace:
        # A replace resets what it leaves out; pausing is a state, not a setting, and stays.
        settings.setdefault("delivery_delay", 0)
        settings.setdefault("message_retention_period", limits.DEFAULT_RETENTION_SECONDS)
    return cloudflare.queue_json(await call.queues.update(info.name, **settings))


async def replace_queue(call: Call) -> Any:
    return await _change_queue(call, replace=True)


async def edit_queue(call: Call) -> Any:
    return await _change_queue(call, replace=False)


async def delete_queue(call: Call) -> Any:
    await call.queues.delete(await call.queue_name("admin"))
    return None


async def queue_metrics(call: Call) -> Any:
    return cloudflare.metrics_json(await call.queues.metrics(await call.queue_name(None)))


async def kv_queue_metrics(call: Call) -> Any:
    """kvqueue's extension: the metrics of the account's KV queue, which the
    Cloudflare API cannot name (``db.queues.metrics(KV_QUEUE)``)."""
    try:
        metrics = await call.queues.metrics(KV_QUEUE)
    except errors.QueueNotFound:
        # An account's KV queue is made when first used; until then it is empty.
        metrics = QueueMetrics(0, 0, 0)
    return cloudflare.metrics_json(metrics)


# --- purge ------------------------------------------------------------------------------


async def start_purge(call: Call) -> Any:
    record = await call.queue("admin")
    if field(call.body, "delete_messages_permanently", bool) is not True:
        raise errors.InvalidInput(
            "a purge deletes every message for good: send delete_messages_permanently: true"
        )
    name = split_name(record.name)[1]
    await call.queues.purge(name)
    return cloudflare.queue_json(await call.queues.get(name))


async def purge_status(call: Call) -> Any:
    return cloudflare.purge_status_json(await call.queues.last_purge(await call.queue_name(None)))


# --- messages ---------------------------------------------------------------------------


def _content_type(body: dict[str, Any]) -> str:
    content_type = field(body, "content_type", str, "json")
    if content_type not in ("json", "text"):
        raise errors.InvalidMessage(
            f'the REST API sends content type "json" or "text", got {content_type!r}'
        )
    return str(content_type)


def _pushed(message: dict[str, Any], missing: str) -> MessageSendRequest:
    if message.get("body") is None:
        raise errors.InvalidMessage(missing)
    # kvqueue's extension: body_encoding "base64" carries any content type's exact bytes.
    encoding = field(message, "body_encoding", str)
    if encoding is None:
        body, content_type = message["body"], _content_type(message)
    elif encoding == "base64":
        body, content_type = cloudflare.pushed_body(message)
    else:
        raise errors.InvalidMessage(f'a pushed body_encoding is "base64", got {encoding!r}')
    return MessageSendRequest(body, content_type, number(message, "delay_seconds"))


async def push(call: Call) -> Any:
    name = await call.queue_name("produce")
    message = _pushed(call.body, "a message needs a body")
    sent = await call.queues.queue(name).send(
        message.body, content_type=message.content_type, delay_seconds=message.delay_seconds
    )
    return cloudflare.sent_json(sent)


async def push_batch(call: Call) -> Any:
    name = await call.queue_name("produce")
    if "messages" not in call.body:
        raise errors.EmptyBatch("a batch needs messages: [{body, content_type?, delay_seconds?}]")
    requests = [
        _pushed(message, "each message of a batch needs a body")
        for message in items(call.body, "messages")
    ]
    sent = await call.queues.queue(name).send_batch(
        requests, delay_seconds=number(call.body, "delay_seconds")
    )
    return cloudflare.sent_json(sent)


async def pull(call: Call) -> Any:
    record = await call.queue("consume")
    consumer = load_consumer(record.consumer) or DEFAULT_PULL_CONSUMER
    # kvqueue's extensions (docs/http-api.md): wait_ms, consumer_id, lease, body_encoding.
    encoding = cloudflare.request_body_encoding(call.body, consumer.body_encoding)
    pulled = await call.queues.queue(split_name(record.name)[1]).pull(
        _whole(call.body, "batch_size"),
        _whole(call.body, "visibility_timeout_ms"),
        wait_ms=_whole(call.body, "wait_ms") or 0,
        consumer_id=field(call.body, "consumer_id", str),
        lease=field(call.body, "lease", str),
    )
    return cloudflare.pull_json(pulled, encoding)


async def extend(call: Call) -> Any:
    """kvqueue's extension: keep pulled messages leased while a worker handles them."""
    name = await call.queue_name("consume")
    timeout = _whole(call.body, "visibility_timeout_ms")
    if timeout is None:
        raise errors.InvalidInput("visibility_timeout_ms is required")
    held = [lease_id for lease_id in cloudflare.lease_ids(call.body, "leases") if lease_id]
    return {"extended": await call.queues.queue(name).extend(held, timeout)}


async def verify_token(call: Call) -> Any:
    """Cloudflare's token check, with the token's account and scope added."""
    token = call.token
    return {
        "id": token.id,
        "status": "active",
        "account": token.account,
        "scope": token.scope,
        "queues": None if token.queues is None else list(token.queues),
    }


async def ack(call: Call) -> Any:
    name = await call.queue_name("consume")
    retries: list[tuple[str, float | None]] = []
    for item in items(call.body, "retries"):
        retries.append((field(item, "lease_id", str, ""), number(item, "delay_seconds")))
    acked = await call.queues.queue(name).ack(cloudflare.lease_ids(call.body, "acks"), retries)
    return cloudflare.ack_json(acked)


async def peek(call: Call) -> Any:
    record = await call.queue("consume")
    consumer = load_consumer(record.consumer) or DEFAULT_PULL_CONSUMER
    encoding = cloudflare.request_body_encoding(call.body, consumer.body_encoding)
    size = _whole(call.body, "batch_size")
    if size is None:  # 0 is out of range, as for pull, not the default
        size = limits.DEFAULT_PULL_BATCH_SIZE
    whole_number("batch_size", size, 1, limits.MAX_PULL_BATCH_SIZE)  # named as sent
    peeked = await call.queues.peek(split_name(record.name)[1], size)
    return {"messages": [cloudflare.peeked_json(m, encoding) for m in peeked]}


async def browse(call: Call) -> Any:
    """kvqueue's extension: every message of a queue, page by page, leasing nothing."""
    record = await call.queue("consume")
    consumer = load_consumer(record.consumer) or DEFAULT_PULL_CONSUMER
    encoding = cloudflare.request_body_encoding(call.body, consumer.body_encoding)
    size = _whole(call.body, "batch_size")
    page = await call.queues.browse_page(
        split_name(record.name)[1],
        limits.MAX_PULL_BATCH_SIZE if size is None else size,
        cursor=field(call.body, "cursor", str),
    )
    return {
        "messages": [cloudflare.peeked_json(m, encoding) for m in page.messages],
        "cursor": page.cursor,
    }


async def purge_messages(call: Call) -> Any:
    name = await call.queue_name("admin")
    refs = [field(item, "ref", str, "") for item in items(call.body, "refs")]
    if not refs:
        raise errors.InvalidInput("refs needs at least one {ref} from a peek")
    warnings = await call.queues.queue(name).purge_messages(refs)
    return {"errors": [], "warnings": warnings}


# --- consumers ----------------------------------------------------------------------------


def _consumers(info: QueueInfo) -> list[dict[str, Any]]:
    return [] if info.consumer is None else [cloudflare.consumer_json(info.consumer, info)]


async def list_consumers(call: Call) -> Any:
    return _consumers(await _info_of(call))


async def _consumer_of(call: Call, scope: Any) -> QueueInfo:
    info = await _info_of(call, scope)
    if info.consumer is None or info.consumer.consumer_id != call.param("consumer_id"):
        raise errors.ConsumerNotFound(info.name)
    return info


async def get_consumer(call: Call) -> Any:
    info = await _consumer_of(call, None)
    return _consumers(info)[0]


async def create_consumer(call: Call) -> Any:
    info = await _info_of(call, "admin")
    kind, settings = cloudflare.consumer_settings(call.body)
    await call.queues.add_consumer(info.name, kind, **settings)
    return _consumers(await call.queues.get(info.name))[0]


async def update_consumer(call: Call) -> Any:
    info = await _info_of(call, "admin")
    if info.consumer is not None and info.consumer.consumer_id != call.param("consumer_id"):
        raise errors.ConsumerNotFound(info.name)
    kind, settings = cloudflare.consumer_settings(call.body)
    await call.queues.update_consumer(info.name, kind, **settings)
    return _consumers(await call.queues.get(info.name))[0]


async def delete_consumer(call: Call) -> Any:
    info = await _consumer_of(call, "admin")
    await call.queues.remove_consumer(info.name)
    return None


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/client/v4/user/tokens/verify", verify_token),
    Endpoint("GET", "/queues", list_queues),
    Endpoint("POST", "/queues", create_queue),
    Endpoint("GET", "/queues/{queue_id}", get_queue),
    Endpoint("PUT", "/queues/{queue_id}", replace_queue),
    Endpoint("PATCH", "/queues/{queue_id}", edit_queue),
    Endpoint("DELETE", "/queues/{queue_id}", delete_queue),
    Endpoint("GET", "/queues/{queue_id}/metrics", queue_metrics),
    Endpoint("GET", "/kv-queue/metrics", kv_queue_metrics),
    Endpoint("POST", "/queues/{queue_id}/purge", start_purge),
    Endpoint("GET", "/queues/{queue_id}/purge", purge_status),
    Endpoint("POST", "/queues/{queue_id}/messages", push),
    Endpoint("POST", "/queues/{queue_id}/messages/batch", push_batch),
    Endpoint("POST", "/queues/{queue_id}/messages/pull", pull),
    Endpoint("POST", "/queues/{queue_id}/messages/ack", ack),
    Endpoint("POST", "/queues/{queue_id}/messages/extend", extend),
    Endpoint("POST", "/queues/{queue_id}/messages/peek", peek),
    Endpoint("POST", "/queues/{queue_id}/messages/browse", browse),
    Endpoint("POST", "/queues/{queue_id}/messages/purge", purge_messages),
    Endpoint("GET", "/queues/{queue_id}/consumers", list_consumers),
    Endpoint("POST", "/queues/{queue_id}/consumers", create_consumer),
    Endpoint("GET", "/queues/{queue_id}/consumers/{consumer_id}", get_consumer),
    Endpoint("PUT", "/queues/{queue_id}/consumers/{consumer_id}", update_consumer),
    Endpoint("DELETE", "/queues/{queue_id}/consumers/{consumer_id}", delete_consumer),
)

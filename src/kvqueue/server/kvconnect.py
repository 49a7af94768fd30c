"""KV Connect's wire format: Deno's ``com.deno.kv.datapath`` protobuf messages, and
kvqueue's extension for leasing from the KV queue.

The messages are built from the schema below when this module is imported (no
generated code, so any protobuf 4.25+ runtime works). Field numbers and names
are those of denokv's ``datapath.proto``; fields numbered 1000 and up, and the
``Queue*`` messages, are kvqueue's own (``docs/kv-connect.md``): Deno's clients
never send them and ignore them in answers.

Both sides use this module: the server (:mod:`kvqueue.server.kv`) and the
remote client (:mod:`kvqueue.remote.kv`).
"""

from __future__ import annotations

from typing import Any

from kvqueue import errors

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.message import DecodeError, Message
except ImportError as exc:  # pragma: no cover - the extras bring protobuf
    raise errors.MissingDependency(
        "KV Connect needs protobuf: pip install 'kvqueue[server]' or 'kvqueue[remote]'"
    ) from exc

PACKAGE = "com.deno.kv.datapath"

# Protocol versions this server speaks; Deno's clients send [1, 2, 3].
VERSIONS = (1, 2, 3)

#: SnapshotReadStatus, AtomicWriteStatus and MutationType values used here.
SR_SUCCESS = 1
AW_SUCCESS = 1
AW_CHECK_FAILURE = 2
M_SET, M_DELETE, M_SUM, M_MAX, M_MIN, M_SET_SUFFIX_VERSIONSTAMPED_KEY = 1, 2, 3, 4, 5, 9
#: kvqueue's settlement kinds (Settlement.kind).
SETTLE_ACK, SETTLE_RETRY, SETTLE_DEAD_LETTER = 1, 2, 3

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
}
_ENUMS = {
    "SnapshotReadStatus": {"SR_UNSPECIFIED": 0, "SR_SUCCESS": 1, "SR_READ_DISABLED": 2},
    "AtomicWriteStatus": {
        "AW_UNSPECIFIED": 0,
        "AW_SUCCESS": 1,
        "AW_CHECK_FAILURE": 2,
        "AW_WRITE_DISABLED": 5,
    },
    "MutationType": {
        "M_UNSPECIFIED": 0,
        "M_SET": 1,
        "M_DELETE": 2,
        "M_SUM": 3,
        "M_MAX": 4,
        "M_MIN": 5,
        "M_SET_SUFFIX_VERSIONSTAMPED_KEY": 9,
    },
    "ValueEncoding": {"VE_UNSPECIFIED": 0, "VE_V8": 1, "VE_LE64": 2, "VE_BYTES": 3},
}
# message -> (field, number, type, repeated); a type not in _SCALARS names a message or enum.
_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "SnapshotRead": [("ranges", 1, "ReadRange", True)],
    "SnapshotReadOutput": [
        ("ranges", 1, "ReadRangeOutput", True),
        ("read_disabled", 2, "bool", False),
        ("read_is_strongly_consistent", 4, "bool", False),
        ("status", 8, "SnapshotReadStatus", False),
    ],
    "ReadRange": [
        ("start", 1, "bytes", False),
        ("end", 2, "bytes", False),
        ("limit", 3, "int32", False),
        ("reverse", 4, "bool", False),
    ],
    "ReadRangeOutput": [("values", 1, "KvEntry", True)],
    "AtomicWrite": [
        ("checks", 1, "Check", True),
        ("mutations", 2, "Mutation", True),
        ("enqueues", 3, "Enqueue", True),
        # kvqueue: settling KV-queue messages leased through QueueLease.
        ("settlements", 1000, "Settlement", True),
        # kvqueue: the write applies only while these leases still hold their messages.
        ("lease_checks", 1001, "LeaseRef", True),
    ],
    "AtomicWriteOutput": [
        ("status", 1, "AtomicWriteStatus", False),
        ("versionstamp", 2, "bytes", False),
        ("failed_checks", 4, "uint32", True),
    ],
    "Check": [("key", 1, "bytes", False), ("versionstamp", 2, "bytes", False)],
    "Mutation": [
        ("key", 1, "bytes", False),
        ("value", 2, "KvValue", False),
        ("mutation_type", 3, "MutationType", False),
        ("expire_at_ms", 4, "int64", False),
        ("sum_min", 5, "bytes", False),
        ("sum_max", 6, "bytes", False),
        ("sum_clamp", 7, "bool", False),
        # kvqueue: a relative expiry, so the client's clock does not matter.
        ("expire_in_ms", 1000, "int64", False),
    ],
    "KvValue": [("data", 1, "bytes", False), ("encoding", 2, "ValueEncoding", False)],
    "KvEntry": [
        ("key", 1, "bytes", False),
        ("value", 2, "bytes", False),
        ("encoding", 3, "ValueEncoding", False),
        ("versionstamp", 4, "bytes", False),
    ],
    "Enqueue": [
        ("payload", 1, "bytes", False),
        ("deadline_ms", 2, "int64", False),
        ("keys_if_undelivered", 3, "bytes", True),
        ("backoff_schedule", 4, "uint32", True),
        # kvqueue: a relative delay (used when deadline_ms is 0).
        ("delay_ms", 1000, "int64", False),
        # kvqueue: the schedule is exactly backoff_schedule, even when empty (no retries).
        ("exact_backoff", 1001, "bool", False),
        # kvqueue: a named queue of the account instead of the KV queue.
        ("queue", 1002, "string", False),
        ("content_type", 1003, "string", False),
        # kvqueue: for a named queue, its own delivery delay instead of delay_ms.
        ("queue_delay", 1004, "bool", False),
        # kvqueue: the client's own, lower, bound on the KV queue's backlog.
        ("max_backlog", 1005, "int64", False),
    ],
    "Watch": [("keys", 1, "WatchKey", True)],
    "WatchOutput": [
        ("status", 1, "SnapshotReadStatus", False),
        ("keys", 2, "WatchKeyOutput", True),
    ],
    "WatchKey": [("key", 1, "bytes", False)],
    "WatchKeyOutput": [("changed", 1, "bool", False), ("entry_if_changed", 2, "KvEntry", False)],
    # --- kvqueue's extension: the KV queue's consumer side -------------------
    "QueueLease": [
        ("limit", 1, "int32", False),
        ("lease_ms", 2, "int64", False),
        ("lease", 3, "string", False),
        ("wait_ms", 4, "int64", False),
    ],
    "QueueLeaseOutput": [("messages", 1, "QueueMessage", True)],
    "QueueMessage": [
        ("message_id", 1, "string", False),
        ("payload", 2, "bytes", False),
        ("enqueued_at_ms", 3, "int64", False),
        ("attempts", 4, "uint32", False),
        ("lease", 5, "string", False),
        ("backoff_schedule", 6, "uint32", True),
        ("keys_if_undelivered", 7, "bytes", True),
    ],
    "QueueExtend": [("leases", 1, "LeaseRef", True), ("lease_ms", 2, "int64", False)],
    "QueueExtendOutput": [("message_ids", 1, "string", True)],
    "LeaseRef": [("message_id", 1, "string", False), ("lease", 2, "string", False)],
    "Settlement": [
        ("message_id", 1, "string", False),
        ("lease", 2, "string", False),
        ("kind", 3, "uint32", False),
        ("delay_ms", 4, "int64", False),
    ],
}


def _build() -> dict[str, type[Message]]:
    schema = descriptor_pb2.FileDescriptorProto(
        name="kvqueue/datapath.proto", package=PACKAGE, syntax="proto3"
    )
    for name, items in _ENUMS.items():
        enum = schema.enum_type.add(name=name)
        for label, number in items.items():
            enum.value.add(name=label, number=number)
    for name, fields in _MESSAGES.items():
        message = schema.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            spec = message.field.add(name=field, number=number, json_name=field)
            spec.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if kind in _SCALARS:
                spec.type = _SCALARS[kind]
            else:
                spec.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
                spec.type_name = f".{PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _MESSAGES
    }


_CLASSES: dict[str, Any] = _build()

SnapshotRead = _CLASSES["SnapshotRead"]
SnapshotReadOutput = _CLASSES["SnapshotReadOutput"]
AtomicWrite = _CLASSES["AtomicWrite"]
AtomicWriteOutput = _CLASSES["AtomicWriteOutput"]
Watch = _CLASSES["Watch"]
WatchOutput = _CLASSES["WatchOutput"]
KvEntry = _CLASSES["KvEntry"]
QueueMessage = _CLASSES["QueueMessage"]
QueueLease = _CLASSES["QueueLease"]
QueueLeaseOutput = _CLASSES["QueueLeaseOutput"]
QueueExtend = _CLASSES["QueueExtend"]
QueueExtendOutput = _CLASSES["QueueExtendOutput"]

#: The media types of the data path.
PROTOBUF = "application/x-protobuf"
STREAM = "application/octet-stream"


def parse(kind: type[Message], data: bytes) -> Any:
    """A message of type ``kind`` from ``data``.

    Raises:
        InvalidInput: the bytes are not such a message.
    """
    message = kind()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise errors.InvalidInput(
            f"the body is not a valid {kind.DESCRIPTOR.name} protobuf message"
        ) from exc
    return message


def frame(message: Message | None) -> bytes:
    """One frame of a watch stream: u32 little-endian length, then the message (none:
    a keepalive)."""
    data = b"" if message is None else message.SerializeToString()
    return len(data).to_bytes(4, "little") + data

"""Values: Python objects to stored bytes and back, in Deno KV's three encodings.

A ``KvU64`` is stored as 8 little-endian bytes, a top-level ``bytes`` as itself,
and everything else in V8's serialization format, so that a Deno client reading
the same key over KV Connect sees the same value, and the other way round.
"""

from __future__ import annotations

from typing import Any

from kvqueue import errors, limits, model, v8
from kvqueue.model import KvU64, MutationKind, ValueEncoding

_U64_MASK = (1 << 64) - 1


def encode_value(value: Any) -> tuple[ValueEncoding, bytes]:
    """Encode a value for storage, within the value limit.

    Raises:
        InvalidValue: the value (or something inside it) has an unsupported type.
        ValueTooLarge: the encoded value is over ``limits.MAX_VALUE_BYTES``.
    """
    if isinstance(value, KvU64):
        return ValueEncoding.LE64, value.value.to_bytes(8, "little")
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        encoding = ValueEncoding.BYTES
    else:
        data = v8.dumps(value)
        encoding = ValueEncoding.V8
    if len(data) > limits.MAX_VALUE_BYTES:
        raise errors.ValueTooLarge("MAX_VALUE_BYTES", limits.MAX_VALUE_BYTES, len(data))
    return encoding, data


def decode_value(encoding: ValueEncoding | int, data: bytes) -> Any:
    """Decode stored bytes back to the value that was written.

    Raises:
        CorruptValue: the bytes do not decode under their encoding.
    """
    if encoding == ValueEncoding.V8:
        return v8.loads(data)
    if encoding == ValueEncoding.BYTES:
        return bytes(data)
    if encoding == ValueEncoding.LE64:
        if len(data) != 8:
            raise errors.CorruptValue(f"a KvU64 is 8 bytes, found {len(data)}")
        return KvU64(int.from_bytes(data, "little"))
    raise errors.CorruptValue(f"unknown value encoding {encoding}")


def combine_u64(kind: MutationKind, current: tuple[bytes, int] | None, operand: bytes) -> bytes:
    """The new stored bytes of a sum/min/max on a key holding ``current``.

    ``current`` is the live (value, encoding) or None when the key is absent, in
    which case the operand becomes the value. Sums wrap at 2**64. Every backend
    calls this inside its transaction so the arithmetic exists once.

    Raises:
        TypeMismatch: the stored value is not a KvU64.
    """
    if current is None:
        return operand
    stored, encoding = current
    if encoding != ValueEncoding.LE64:
        raise errors.TypeMismatch(
            f"cannot {kind.value} a KvU64 into a stored value that is not a KvU64"
        )
    a = int.from_bytes(stored, "little")
    b = int.from_bytes(operand, "little")
    if kind is MutationKind.SUM:
        result = (a + b) & _U64_MASK
    elif kind is MutationKind.MIN:
        result = min(a, b)
    elif kind is MutationKind.MAX:
        result = max(a, b)
    else:
        raise ValueError(f"{kind} is not an arithmetic mutation")
    return result.to_bytes(8, "little")


def versionstamp_hex(versionstamp: bytes) -> str:
    """A versionstamp as Deno shows it: 20 lowercase hex characters."""
    return versionstamp.hex()


def versionstamp_bytes(text: str) -> bytes:
    """Parse a 20-hex-character versionstamp.

    Raises:
        InvalidInput: it is not 20 hex characters.
    """
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidInput(f"a versionstamp is 20 hex characters, got {text!r}") from exc
    if len(raw) != 10:
        raise errors.InvalidInput(f"a versionstamp is 20 hex characters, got {text!r}")
    return raw


def entry_from_stored(key: tuple[Any, ...], stored: model.StoredEntry | None) -> model.Entry:
    """The public Entry for ``key`` given what the storage returned for it."""
    if stored is None:
        return model.Entry(key, None, None)
    return model.Entry(
        key, decode_value(stored.encoding, stored.value), versionstamp_hex(stored.versionstamp)
    )

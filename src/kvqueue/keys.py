"""Keys: tuples of parts encoded byte-for-byte as Deno KV encodes them.

The encoding is the FoundationDB tuple layer as Deno KV uses it, so sorting the
encoded bytes sorts keys in Deno KV's order: bytes < str < int < float < False
< True, each type in its natural order (str by UTF-8 bytes, int mathematically,
float with -NaN < -inf < ... < -0.0 < 0.0 < ... < inf < NaN). A key written by
Python and one written by a Deno client over KV Connect are the same key.

Python ``int`` is Deno's ``bigint``; Python ``float`` is Deno's ``number``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from kvqueue import errors, limits

KeyPart = bytes | str | int | float | bool
Key = tuple[KeyPart, ...]

_BYTES = 0x01
_STRING = 0x02
_INT_ZERO = 0x14
_INT_NEG_LONG = 0x0B
_INT_POS_LONG = 0x1D
_FLOAT = 0x21
_FALSE = 0x26
_TRUE = 0x27

_DOUBLE = struct.Struct(">d")
_UINT64 = struct.Struct(">Q")
_SIGN_BIT = 1 << 63
_ALL_BITS = (1 << 64) - 1
# Deno canonicalises NaN so that every NaN of one sign has one encoding.
_NAN_BITS = 0x7FF8_0000_0000_0000


def _escape(data: bytes) -> bytes:
    # A part ends at 0x00, so a 0x00 inside it is written as 0x00 0xFF.
    return data.replace(b"\x00", b"\x00\xff") + b"\x00"


def _encode_int(n: int, out: bytearray) -> None:
    if n == 0:
        out.append(_INT_ZERO)
        return
    magnitude = -n if n < 0 else n
    length = (magnitude.bit_length() + 7) // 8
    if n > 0:
        body = magnitude.to_bytes(length, "big")
        if length <= 8:
            out.append(_INT_ZERO + length)
        else:
            out += bytes((_INT_POS_LONG, length))
    else:
        # Negative numbers are stored as the ones' complement of their magnitude,
        # which makes larger magnitudes sort lower.
        body = ((1 << (8 * length)) - 1 - magnitude).to_bytes(length, "big")
        if length <= 8:
            out.append(_INT_ZERO - length)
        else:
            out += bytes((_INT_NEG_LONG, length ^ 0xFF))
    out += body


def _encode_float(x: float, out: bytearray) -> None:
    bits: int = _UINT64.unpack(_DOUBLE.pack(x))[0]
    if math.isnan(x):
        bits = _NAN_BITS | (bits & _SIGN_BIT)
    bits = bits ^ _ALL_BITS if bits & _SIGN_BIT else bits ^ _SIGN_BIT
    out.append(_FLOAT)
    out += _UINT64.pack(bits)


def encode_key(key: Iterable[KeyPart]) -> bytes:
    """Encode a key tuple to its ordered byte form.

    Raises:
        InvalidKey: a part has an unsupported type or the key is not a tuple/list.
    """
    if isinstance(key, (str, bytes)) or not isinstance(key, (tuple, list)):
        raise errors.InvalidKey(f"a key is a tuple of parts, got {type(key).__name__}: {key!r:.80}")
    out = bytearray()
    for part in key:
        # bool before int: bool is a subclass of int but a different part type.
        if part is True:
            out.append(_TRUE)
        elif part is False:
            out.append(_FALSE)
        elif isinstance(part, str):
            out.append(_STRING)
            out += _escape(part.encode("utf-8", "surrogatepass"))
        elif isinstance(part, bytes | bytearray | memoryview):
            out.append(_BYTES)
            out += _escape(bytes(part))
        elif isinstance(part, int):
            _encode_int(part, out)
        elif isinstance(part, float):
            _encode_float(part, out)
        else:
            raise errors.InvalidKey(
                f"key part {part!r:.80} has type {type(part).__name__}; "
                "parts are bytes, str, int, float or bool"
            )
    return bytes(out)


def encode_write_key(key: Iterable[KeyPart]) -> bytes:
    """Encode a key that is about to be written: non-empty and within the key limit.

    Raises:
        InvalidKey: the key is empty or has a bad part.
        KeyTooLarge: the encoded key is over ``limits.MAX_KEY_BYTES``.
    """
    encoded = encode_key(key)
    if not encoded:
        raise errors.InvalidKey("a key written to the database needs at least one part")
    if len(encoded) > limits.MAX_KEY_BYTES:
        raise errors.KeyTooLarge("MAX_KEY_BYTES", limits.MAX_KEY_BYTES, len(encoded))
    return encoded


def encode_read_key(key: Iterable[KeyPart]) -> bytes:
    """Encode a key used to read or bound a range (Deno allows one byte more)."""
    encoded = encode_key(key)
    if len(encoded) > limits.MAX_READ_KEY_BYTES:
        raise errors.KeyTooLarge("MAX_READ_KEY_BYTES", limits.MAX_READ_KEY_BYTES, len(encoded))
    return encoded


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise errors.InvalidKey("encoded key is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def escaped(self) -> bytes:
        out = bytearray()
        data = self.data
        while True:
            end = data.find(b"\x00", self.pos)
            if end < 0:
                raise errors.InvalidKey("encoded key has an unterminated part")
            out += data[self.pos : end]
            if end + 1 < len(data) and data[end + 1] == 0xFF:
                out.append(0)
                self.pos = end + 2
            else:
                self.pos = end + 1
                return bytes(out)


def decode_key(data: bytes) -> Key:
    """Decode an encoded key back into its tuple.

    Raises:
        InvalidKey: the bytes are not a valid encoded key.
    """
    reader = _Reader(data)
    parts: list[KeyPart] = []
    while reader.pos < len(data):
        tag = data[reader.pos]
        reader.pos += 1
        if tag == _STRING:
            try:
                parts.append(reader.escaped().decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError as exc:
                raise errors.InvalidKey("encoded key has a string part that is not UTF-8") from exc
        elif tag == _BYTES:
            parts.append(reader.escaped())
        elif tag == _FLOAT:
            bits: int = _UINT64.unpack(reader.take(8))[0]
            bits = bits ^ _SIGN_BIT if bits & _SIGN_BIT else bits ^ _ALL_BITS
            parts.append(_DOUBLE.unpack(_UINT64.pack(bits))[0])
        elif tag == _TRUE:
            parts.append(True)
        elif tag == _FALSE:
            parts.append(False)
        elif tag == _INT_ZERO:
            parts.append(0)
        elif _INT_ZERO < tag <= _INT_ZERO + 8:
            parts.append(int.from_bytes(reader.take(tag - _INT_ZERO), "big"))
        elif _INT_ZERO - 8 <= tag < _INT_ZERO:
            length = _INT_ZERO - tag
            complement = int.from_bytes(reader.take(length), "big")
            parts.append(complement - ((1 << (8 * length)) - 1))
        elif tag == _INT_POS_LONG:
            length = reader.take(1)[0]
            parts.append(int.from_bytes(reader.take(length), "big"))
        elif tag == _INT_NEG_LONG:
            length = reader.take(1)[0] ^ 0xFF
            complement = int.from_bytes(reader.take(length), "big")
            parts.append(complement - ((1 << (8 * length)) - 1))
        else:
            raise errors.InvalidKey(f"encoded key has an unknown part tag 0x{tag:02x}")
    return tuple(parts)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The byte range of every key that extends ``prefix`` (not the prefix itself)."""
    return prefix + b"\x00", prefix + b"\xff"


def successor(key: bytes) -> bytes:
    """The smallest encoded key greater than ``key``."""
    return key + b"\x00"


def reserved_key(kind: str, name: str = "") -> bytes:
    """A key for kvqueue's own records (tokens, purge times): it begins with the byte
    0xFF, which no key of the public KV API encodes to, so no KV call reaches it.
    ``reserved_key(kind)`` is the prefix of every key of that kind."""
    return b"\xffkvqueue\x00" + kind.encode("ascii") + b"\x00" + name.encode("ascii")

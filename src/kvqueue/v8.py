"""The V8 ValueSerializer wire format, the value encoding of Deno KV.

Deno KV stores values as ``v8.serialize`` / structured-clone bytes, so kvqueue
uses the same format to let Deno clients and Python read and write the same
values. This module is a small, dependency-free codec for the part of the
format that maps onto plain Python data.

=========================  =====================================================
Python (:func:`dumps`)     V8 / JavaScript
=========================  =====================================================
``None``                   ``null``
``bool``                   ``true`` / ``false``
``int``                    number when it fits in signed 32 bits, else ``bigint``
``float``                  number (nan, infinities and -0.0 included)
``str``                    string
``bytes``, ``bytearray``,  ``Uint8Array``
``memoryview``
``list``, ``tuple``        ``Array``
``dict`` (``str`` keys)    plain object
``datetime``               ``Date`` (whole milliseconds; naive means UTC)
=========================  =====================================================

:func:`loads` reads what V8 writes for these and a little more: ``undefined``
becomes ``None``, a number stored as a double stays a ``float`` even when it is
integral, a ``Map`` becomes a ``dict``, a ``Set`` becomes a ``list``, holes in
arrays become ``None``, boxed primitives (``new Number(1)``) become the
primitive, an ``ArrayBuffer`` or any typed array or ``DataView`` becomes the
``bytes`` it views, and a ``Date`` becomes an aware UTC ``datetime``. Named
properties on arrays (``a.foo = 1``) are dropped, since a ``list`` has nowhere
to keep them. An object that V8 wrote once and then referred back to decodes to
the same Python object each time, so JavaScript cycles become Python cycles.

Subclasses of the container, string, float, bytes and datetime types are
written like their base type, and so are ``int`` enums; other ``int``
subclasses are refused so that wrapper types (such as a ``KvU64``) are never
silently stored as plain numbers.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from kvqueue import errors

__all__ = ["dumps", "loads"]

# Every V8 since 2022 reads version 15. Deno 2.x itself writes 16, which only
# widened ArrayBuffer lengths and offsets past 32 bits, so 15 loses nothing.
_WRITE_VERSION = 15
_MIN_READ_VERSION = 13  # 13 made host objects explicit; older data is not Deno's
_MAX_READ_VERSION = 16  # a newer version may change the meaning of bytes: refuse it
_HEADER = bytes((0xFF, _WRITE_VERSION))

# dumps refuses deeper nesting (the documented kvqueue limit); loads accepts a
# little more of what a Deno client may write but stays well inside Python's
# recursion limit (each level of nesting costs two Python frames).
_MAX_DEPTH = 64
_MAX_READ_DEPTH = 200
# A sparse array costs V8 nothing per hole but costs a list slot in Python, so
# a few bytes of input could otherwise demand gigabytes.
_MAX_SPARSE_LENGTH = 1 << 20
# V8 varints are at most 64 bits (10 bytes); longer runs are garbage, and
# stopping early keeps hostile input from building huge ints.
_MAX_VARINT_BYTES = 10
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_UINT32_MAX = (1 << 32) - 1
# V8 limits a BigInt to 2**30 bits; a larger Python int could not be read back.
_MAX_BIGINT_BITS = 1 << 30

_DOUBLE = struct.Struct("<d")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Tags (see V8's src/objects/value-serializer.cc), as byte values.
_PADDING = 0x00
_VERIFY_OBJECT_COUNT = ord("?")
_THE_HOLE = ord("-")
_UNDEFINED = ord("_")
_NULL = ord("0")
_TRUE = ord("T")
_FALSE = ord("F")
_INT32 = ord("I")
_UINT32 = ord("U")
_DOUBLE_TAG = ord("N")
_BIGINT = ord("Z")
_UTF8_STRING = ord("S")
_ONE_BYTE_STRING = ord('"')
_TWO_BYTE_STRING = ord("c")
_OBJECT_REFERENCE = ord("^")
_BEGIN_OBJECT = ord("o")
_END_OBJECT = ord("{")
_BEGIN_SPARSE_ARRAY = ord("a")
_END_SPARSE_ARRAY = ord("@")
_BEGIN_DENSE_ARRAY = ord("A")
_END_DENSE_ARRAY = ord("$")
_DATE = ord("D")
_TRUE_OBJECT = ord("y")
_FALSE_OBJECT = ord("x")
_NUMBER_OBJECT = ord("n")
_BIGINT_OBJECT = ord("z")
_STRING_OBJECT = ord("s")
_BEGIN_MAP = ord(";")
_END_MAP = ord(":")
_BEGIN_SET = ord("'")
_END_SET = ord(",")
_ARRAY_BUFFER = ord("B")
_RESIZABLE_ARRAY_BUFFER = ord("~")
_ARRAY_BUFFER_VIEW = ord("V")

# ArrayBufferView subtags and their element sizes; a view's offset and length
# must be multiples of the element size.
_VIEW_ELEMENT_SIZES = {
    ord("b"): 1,  # Int8Array
    ord("B"): 1,  # Uint8Array
    ord("C"): 1,  # Uint8ClampedArray
    ord("w"): 2,  # Int16Array
    ord("W"): 2,  # Uint16Array
    ord("d"): 4,  # Int32Array
    ord("D"): 4,  # Uint32Array
    ord("h"): 2,  # Float16Array
    ord("f"): 4,  # Float32Array
    ord("F"): 8,  # Float64Array
    ord("q"): 8,  # BigInt64Array
    ord("Q"): 8,  # BigUint64Array
    ord("?"): 1,  # DataView
}
_VIEW_LENGTH_TRACKING = 1  # flags bit 0: the view follows a resizable buffer's length

# The Uint8Array view written after a buffer: tag, subtag and byte offset 0.
_UINT8_VIEW_HEAD = b"VB\x00"


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------

_Encoder = Callable[[Any, bytearray, int], None]


class _Refused(Exception):
    """A value dumps cannot write; dumps turns it into InvalidValue with its path.

    The path is collected while the exception unwinds (each container adds its
    step), so the happy path pays nothing for it.
    """

    def __init__(self, reason: str, culprit: object, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.culprit = culprit
        self.detail = detail
        # (step, container) pairs, innermost first.
        self.trail: list[tuple[str, object]] = []

    def message(self) -> str:
        steps = [step for step, _ in reversed(self.trail)]
        containers = [container for _, container in reversed(self.trail)]
        path = "value" + "".join(steps)
        if self.reason == "too deep":
            # A cycle shows up as nesting that never ends; name the first
            # container that reappears so the message points at the loop.
            seen: dict[int, int] = {}
            for level, container in enumerate([*containers, self.culprit]):
                first = seen.setdefault(id(container), level)
                if first != level:
                    inner = "value" + "".join(steps[:level])
                    outer = "value" + "".join(steps[:first])
                    return f"cycle: {inner} refers back to {outer}; a value must be a tree"
            return f"nesting deeper than {_MAX_DEPTH} levels at {path}"
        return f"{self.reason} at {path}{self.detail}"


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _write_varint(out: bytearray, number: int) -> None:
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)


def _varint_size(number: int) -> int:
    return max(1, (number.bit_length() + 6) // 7)


def _encode_none(value: None, out: bytearray, depth: int) -> None:
    out.append(_NULL)


def _encode_bool(value: bool, out: bytearray, depth: int) -> None:
    out.append(_TRUE if value else _FALSE)


def _encode_int(value: int, out: bytearray, depth: int) -> None:
    if _INT32_MIN <= value <= _INT32_MAX:
        out.append(_INT32)
        _write_varint(out, (value << 1) ^ (value >> 31))  # zigzag: small negatives stay short
        return
    # BigInt: bitfield = sign bit | byte length << 1, then 64-bit little-endian digits.
    magnitude = -value if value < 0 else value
    bits = magnitude.bit_length()
    if bits > _MAX_BIGINT_BITS:
        raise _Refused(
            f"int of {bits} bits", value, "; a JavaScript BigInt holds at most 2**30 bits"
        )
    size = (bits + 63) // 64 * 8
    out.append(_BIGINT)
    _write_varint(out, (size << 1) | (value < 0))
    out += magnitude.to_bytes(size, "little")


def _encode_float(value: float, out: bytearray, depth: int) -> None:
    out.append(_DOUBLE_TAG)
    out += _DOUBLE.pack(value)


def _encode_str(value: str, out: bytearray, depth: int) -> None:
    try:
        data = value.encode("latin-1")
    except UnicodeEncodeError:
        # surrogatepass keeps lone surrogates, which JavaScript strings allow.
        data = value.encode("utf-16-le", "surrogatepass")
        # V8 puts the UTF-16 payload at an even offset with a padding byte;
        # doing the same keeps our bytes identical to V8's.
        if (len(out) + 1 + _varint_size(len(data))) & 1:
            out.append(_PADDING)
        out.append(_TWO_BYTE_STRING)
    else:
        out.append(_ONE_BYTE_STRING)
    _write_varint(out, len(data))
    out += data


def _encode_bytes(value: bytes | bytearray | memoryview, out: bytearray, depth: int) -> None:
    # A Uint8Array is its ArrayBuffer followed by a view of all of it.
    data = value.tobytes() if isinstance(value, memoryview) else value
    size = len(data)
    out.append(_ARRAY_BUFFER)
    _write_varint(out, size)
    out += data
    out += _UINT8_VIEW_HEAD
    _write_varint(out, size)
    out.append(0)  # flags (since version 14): not length-tracking, not resizable


def _encode_datetime(value: datetime, out: bytearray, depth: int) -> None:
    if value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    # A JS Date holds whole milliseconds; floor so the sub-millisecond digits
    # are dropped (also before 1970) and the number is exact.
    out.append(_DATE)
    out += _DOUBLE.pack(float((value - _EPOCH) // _ONE_MS))


def _encode_list(value: list[Any] | tuple[Any, ...], out: bytearray, depth: int) -> None:
    if depth >= _MAX_DEPTH:
        raise _Refused("too deep", value)
    depth += 1
    length = len(value)
    out.append(_BEGIN_DENSE_ARRAY)
    _write_varint(out, length)
    get = _ENCODERS.get
    for index, item in enumerate(value):
        try:
            get(type(item), _encode_other)(item, out, depth)
        except _Refused as exc:
            exc.trail.append((f"[{index}]", value))
            raise
    out.append(_END_DENSE_ARRAY)
    out.append(0)  # no named properties
    _write_varint(out, length)


def _encode_dict(value: dict[Any, Any], out: bytearray, depth: int) -> None:
    if depth >= _MAX_DEPTH:
        raise _Refused("too deep", value)
    depth += 1
    out.append(_BEGIN_OBJECT)
    get = _ENCODERS.get
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Refused(f"dict key {key!r} ({_type_name(key)})", value, ": keys must be str")
        _encode_str(key, out, depth)
        try:
            get(type(item), _encode_other)(item, out, depth)
        except _Refused as exc:
            exc.trail.append((f"[{json.dumps(key, ensure_ascii=False)}]", value))
            raise
    out.append(_END_OBJECT)
    _write_varint(out, len(value))


# Exact types first: one dict lookup per value, and bool never reaches int.
_ENCODERS: dict[type[Any], _Encoder] = {
    type(None): _encode_none,
    bool: _encode_bool,
    int: _encode_int,
    float: _encode_float,
    str: _encode_str,
    bytes: _encode_bytes,
    bytearray: _encode_bytes,
    memoryview: _encode_bytes,
    list: _encode_list,
    tuple: _encode_list,
    dict: _encode_dict,
    datetime: _encode_datetime,
}

# Subclasses that are written like their base (checked in this order).
_SUBCLASS_ENCODERS: tuple[tuple[type[Any], _Encoder], ...] = (
    (datetime, _encode_datetime),
    (str, _encode_str),
    (float, _encode_float),
    (dict, _encode_dict),
    (list, _encode_list),
    (tuple, _encode_list),
    (bytes, _encode_bytes),
    (bytearray, _encode_bytes),
)


def _encode_other(value: object, out: bytearray, depth: int) -> None:
    if isinstance(value, int) and isinstance(value, Enum):
        _encode_int(int(value), out, depth)  # IntEnum, IntFlag: the number
        return
    for base, encoder in _SUBCLASS_ENCODERS:
        if isinstance(value, base):
            encoder(value, out, depth)
            return
    raise _Refused(
        f"cannot store a value of type {_type_name(value)}",
        value,
        "; V8 values are None, bool, int, float, str, bytes, datetime, list, tuple"
        " and dict with str keys",
    )


def dumps(value: object) -> bytes:
    """Encode *value* in the V8 ValueSerializer format (header ``FF 0F``).

    The result is what ``v8.serialize`` would produce for the equivalent
    JavaScript value, readable by Deno KV and ``structuredClone`` consumers.

    Raises:
        kvqueue.errors.InvalidValue: *value* holds a type with no V8 form, a
            dict with a non-str key, a cycle, or nesting deeper than 64 levels;
            the message names the type and where it was found.
    """
    out = bytearray(_HEADER)
    try:
        _ENCODERS.get(type(value), _encode_other)(value, out, 0)
    except _Refused as exc:
        raise errors.InvalidValue(exc.message()) from None
    return bytes(out)


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


# Marks an object id whose value is still being read.
_PENDING = object()


def _js_key(number: int | float) -> str:
    """The property name JavaScript makes of a numeric key."""
    if isinstance(number, int):
        return str(number)
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)  # the same digits as JavaScript for ordinary fractions


class _Reader:
    """Reads one serialized value; ``objects`` maps V8 object ids to results."""

    __slots__ = ("buffers", "data", "depth", "objects", "pos", "version")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.version = 0
        self.depth = 0
        # V8 numbers objects, arrays, dates, boxed primitives, maps, sets,
        # buffers and views in the order they start; "^" refers to them.
        self.objects: list[object] = []
        self.buffers: dict[int, bytes] = {}  # the ids that are ArrayBuffers

    def fail(self, problem: str) -> errors.CorruptValue:
        return errors.CorruptValue(f"invalid V8 value at byte {self.pos}: {problem}")

    # -- primitives of the format -----------------------------------------

    def tag(self) -> int:
        """Consume the next tag, skipping padding (IndexError at the end)."""
        data = self.data
        pos = self.pos
        tag = data[pos]
        while tag == _PADDING:
            pos += 1
            tag = data[pos]
        self.pos = pos + 1
        return tag

    def peek(self) -> int:
        """The next tag without consuming it (padding is consumed), -1 at the end."""
        data = self.data
        pos = self.pos
        end = len(data)
        while pos < end and data[pos] == _PADDING:
            pos += 1
        self.pos = pos
        return data[pos] if pos < end else -1

    def varint(self) -> int:
        data = self.data
        pos = self.pos
        byte = data[pos]
        if byte < 0x80:  # the common one-byte case
            self.pos = pos + 1
            return byte
        result = 0
        shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7
        raise self.fail(f"varint longer than {_MAX_VARINT_BYTES} bytes")

    def take(self, size: int) -> bytes:
        start = self.pos
        end = start + size
        if end > len(self.data):
            raise self.fail(f"{size} bytes announced but only {len(self.data) - start} remain")
        self.pos = end
        return self.data[start:end]

    def double(self) -> float:
        (number,) = _DOUBLE.unpack(self.take(8))
        return float(number)

    def new_id(self) -> int:
        self.objects.append(_PENDING)
        return len(self.objects) - 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_READ_DEPTH:
            raise self.fail(f"nested deeper than {_MAX_READ_DEPTH} levels")

    # -- values -------------------------------------------------------------

    def value(self) -> object:
        data = self.data
        pos = self.pos
        if data[pos] == _ONE_BYTE_STRING and data[pos + 1] < 0x80:
            # The commonest value and property key, a short Latin-1 string, read
            # here rather than through the tag table and the varint and slice steps.
            end = pos + 2 + data[pos + 1]
            if end <= len(data):
                self.pos = end
                return data[pos + 2 : end].decode("latin-1")
        tag = self.tag()
        reader = _READERS.get(tag)
        if reader is None:
            self.pos -= 1
            raise self.fail(f"unknown or unsupported tag {bytes((tag,))!r}")
        return reader(self)

    def key(self) -> str | int | float:
        """A property key: V8 writes integer keys as numbers, others as strings."""
        key = self.value()
        if isinstance(key, str | int | float) and not isinstance(key, bool):
            return key
        raise self.fail(f"property key of type {_type_name(key)}")

    def read_undefined(self) -> None:
        return None

    def read_true(self) -> bool:
        return True

    def read_false(self) -> bool:
        return False

    def read_int32(self) -> int:
        zigzag = self.varint()
        if zigzag > _UINT32_MAX:
            raise self.fail("Int32 out of range")
        return (zigzag >> 1) ^ -(zigzag & 1)

    def read_uint32(self) -> int:
        number = self.varint()
        if number > _UINT32_MAX:
            raise self.fail("Uint32 out of range")
        return number

    def read_double(self) -> float:
        return self.double()

    def read_bigint(self) -> int:
        bitfield = self.varint()
        magnitude = int.from_bytes(self.take(bitfield >> 1), "little")
        return -magnitude if bitfield & 1 else magnitude

    def read_one_byte_string(self) -> str:
        return self.take(self.varint()).decode("latin-1")

    def read_two_byte_string(self) -> str:
        size = self.varint()
        if size & 1:
            raise self.fail("two-byte string of odd byte length")
        # surrogatepass: JavaScript strings may hold lone surrogates.
        return self.take(size).decode("utf-16-le", "surrogatepass")

    def read_utf8_string(self) -> str:
        # V8 itself replaces invalid UTF-8, so Deno would see the same string.
        return self.take(self.varint()).decode("utf-8", "replace")

    def read_reference(self) -> object:
        ref = self.varint()
        if ref >= len(self.objects) or self.objects[ref] is _PENDING:
            raise self.fail(f"reference to unknown object id {ref}")
        buffer = self.buffers.get(ref)
        if buffer is not None:
            # A second view of an already written buffer is "^id" then "V".
            return self.maybe_view(buffer)
        return self.objects[ref]

    def read_object(self) -> dict[str, object]:
        result: dict[str, object] = {}
        self.objects.append(result)
        self.enter()
        count = 0
        while self.peek() != _END_OBJECT:
            key = self.key()
            result[key if isinstance(key, str) else _js_key(key)] = self.value()
            count += 1
        self.pos += 1
        if self.varint() != count:
            raise self.fail("object property count does not match")
        self.depth -= 1
        return result

    def read_dense_array(self) -> list[object]:
        length = self.varint()
        result: list[object] = []
        self.objects.append(result)
        self.enter()
        for _ in range(length):
            if self.peek() == _THE_HOLE:
                self.pos += 1
                result.append(None)
            else:
                result.append(self.value())
        count = self.skip_properties(_END_DENSE_ARRAY)
        if self.varint() != count or self.varint() != length:
            raise self.fail("dense array property count or length does not match")
        self.depth -= 1
        return result

    def read_sparse_array(self) -> list[object]:
        length = self.varint()
        if length > _MAX_SPARSE_LENGTH:
            raise self.fail(f"sparse array of length {length} is too long to materialise")
        result: list[object] = [None] * length
        self.objects.append(result)
        self.enter()
        count = 0
        while self.peek() != _END_SPARSE_ARRAY:
            key = self.key()
            item = self.value()
            count += 1
            # Elements come with number keys; string keys are named properties.
            if type(key) is float and key.is_integer():
                key = int(key)
            if type(key) is int and 0 <= key < length:
                result[key] = item
        self.pos += 1
        if self.varint() != count:
            raise self.fail("sparse array property count does not match")
        self.varint()  # the length again
        self.depth -= 1
        return result

    def skip_properties(self, end: int) -> int:
        """Read and drop named properties up to *end*; return how many."""
        count = 0
        while self.peek() != end:
            self.key()
            self.value()
            count += 1
        self.pos += 1
        return count

    def read_date(self) -> datetime:
        slot = self.new_id()
        ms = self.double()
        if math.isnan(ms):
            raise self.fail("Invalid Date has no Python datetime")
        try:
            # JS Dates hold whole milliseconds (TimeClip truncates toward zero).
            result = _EPOCH + timedelta(milliseconds=math.trunc(ms))
        except OverflowError as exc:
            raise self.fail(f"Date {ms} ms is outside Python's datetime range") from exc
        self.objects[slot] = result
        return result

    def read_boxed(self, read: Callable[[_Reader], object]) -> object:
        slot = self.new_id()
        self.enter()  # a string object nests a value: "sssss..." must not recurse forever
        result = read(self)
        self.depth -= 1
        self.objects[slot] = result
        return result

    def read_true_object(self) -> object:
        return self.read_boxed(_Reader.read_true)

    def read_false_object(self) -> object:
        return self.read_boxed(_Reader.read_false)

    def read_number_object(self) -> object:
        return self.read_boxed(_Reader.read_double)

    def read_bigint_object(self) -> object:
        return self.read_boxed(_Reader.read_bigint)

    def read_string_object(self) -> object:
        return self.read_boxed(_Reader.read_string)

    def read_string(self) -> str:
        result = self.value()
        if not isinstance(result, str):
            raise self.fail(f"expected a string, found {_type_name(result)}")
        return result

    def read_map(self) -> dict[object, object]:
        result: dict[object, object] = {}
        self.objects.append(result)
        self.enter()
        count = 0
        while self.peek() != _END_MAP:
            key = self.value()
            item = self.value()
            try:
                result[key] = item
            except TypeError as exc:
                raise self.fail(f"Map key of type {_type_name(key)} cannot be a dict key") from exc
            count += 2
        self.pos += 1
        if self.varint() != count:
            raise self.fail("Map length does not match")
        self.depth -= 1
        return result

    def read_set(self) -> list[object]:
        result: list[object] = []
        self.objects.append(result)
        self.enter()
        while self.peek() != _END_SET:
            result.append(self.value())
        self.pos += 1
        if self.varint() != len(result):
            raise self.fail("Set length does not match")
        self.depth -= 1
        return result

    def read_array_buffer(self) -> object:
        slot = self.new_id()
        buffer = self.take(self.varint())
        self.objects[slot] = self.buffers[slot] = buffer
        return self.maybe_view(buffer)

    def read_resizable_array_buffer(self) -> object:
        slot = self.new_id()
        size = self.varint()
        if size > self.varint():
            raise self.fail("resizable ArrayBuffer longer than its maximum")
        buffer = self.take(size)
        self.objects[slot] = self.buffers[slot] = buffer
        return self.maybe_view(buffer)

    def maybe_view(self, buffer: bytes) -> bytes:
        """A typed array is written as its buffer then "V"; return the viewed bytes."""
        if self.peek() != _ARRAY_BUFFER_VIEW:
            return buffer
        self.pos += 1
        element_size = _VIEW_ELEMENT_SIZES.get(self.data[self.pos])
        if element_size is None:
            raise self.fail("unknown ArrayBufferView type")
        self.pos += 1
        offset = self.varint()
        size = self.varint()
        flags = self.varint() if self.version >= 14 else 0
        end = len(buffer) if flags & _VIEW_LENGTH_TRACKING else offset + size
        if end > len(buffer) or offset > end or offset % element_size or end % element_size:
            raise self.fail("ArrayBufferView outside its buffer or misaligned")
        view = buffer[offset:end]
        self.objects.append(view)
        return view

    def read_verify_object_count(self) -> object:
        # An old sanity check that V8 ignores too; loop so a run of them
        # cannot recurse.
        self.varint()
        while self.peek() == _VERIFY_OBJECT_COUNT:
            self.pos += 1
            self.varint()
        return self.value()


_READERS: dict[int, Callable[[_Reader], object]] = {
    _UNDEFINED: _Reader.read_undefined,
    _NULL: _Reader.read_undefined,
    _TRUE: _Reader.read_true,
    _FALSE: _Reader.read_false,
    _INT32: _Reader.read_int32,
    _UINT32: _Reader.read_uint32,
    _DOUBLE_TAG: _Reader.read_double,
    _BIGINT: _Reader.read_bigint,
    _ONE_BYTE_STRING: _Reader.read_one_byte_string,
    _TWO_BYTE_STRING: _Reader.read_two_byte_string,
    _UTF8_STRING: _Reader.read_utf8_string,
    _OBJECT_REFERENCE: _Reader.read_reference,
    _BEGIN_OBJECT: _Reader.read_object,
    _BEGIN_DENSE_ARRAY: _Reader.read_dense_array,
    _BEGIN_SPARSE_ARRAY: _Reader.read_sparse_array,
    _DATE: _Reader.read_date,
    _TRUE_OBJECT: _Reader.read_true_object,
    _FALSE_OBJECT: _Reader.read_false_object,
    _NUMBER_OBJECT: _Reader.read_number_object,
    _BIGINT_OBJECT: _Reader.read_bigint_object,
    _STRING_OBJECT: _Reader.read_string_object,
    _BEGIN_MAP: _Reader.read_map,
    _BEGIN_SET: _Reader.read_set,
    _ARRAY_BUFFER: _Reader.read_array_buffer,
    _RESIZABLE_ARRAY_BUFFER: _Reader.read_resizable_array_buffer,
    _VERIFY_OBJECT_COUNT: _Reader.read_verify_object_count,
}


def loads(data: bytes) -> object:
    """Decode V8 ValueSerializer bytes (format versions 13 to 16) to Python.

    See the module docstring for the type mapping. Padding bytes are skipped
    wherever V8 allows them; anything after the value other than padding is
    an error.

    Raises:
        kvqueue.errors.CorruptValue: *data* has no ``FF`` version header, an
            unsupported version, an unknown or unsupported tag (RegExp, Error,
            shared or transferred objects, host objects, ...), is truncated or
            inconsistent, or holds something Python cannot represent (an
            Invalid Date, an unhashable Map key).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    reader = _Reader(data)
    try:
        if not data or data[0] != 0xFF:
            raise reader.fail("missing the FF version header")
        reader.pos = 1
        version = reader.varint()
        if not _MIN_READ_VERSION <= version <= _MAX_READ_VERSION:
            raise reader.fail(
                f"format version {version} is not one of {_MIN_READ_VERSION}..{_MAX_READ_VERSION}"
            )
        reader.version = version
        result = reader.value()
        if reader.peek() != -1:
            raise reader.fail("unexpected bytes after the value")
    except errors.CorruptValue:
        raise
    except IndexError as exc:
        raise errors.CorruptValue("invalid V8 value: the data ends in the middle") from exc
    except (ValueError, OverflowError, RecursionError, struct.error) as exc:
        raise errors.CorruptValue(f"invalid V8 value: {exc}") from exc
    return result

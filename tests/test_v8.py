"""Tests of kvqueue.v8, the V8 ValueSerializer codec (no Deno needed)."""

from __future__ import annotations

import contextlib
import enum
import math
import struct
from collections import OrderedDict, namedtuple
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvqueue import errors
from kvqueue.model import KvU64
from kvqueue.v8 import dumps, loads
from tests.helpers import same

# No example database: it would write a .hypothesis directory into the tree.
FUZZ = settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)


def nested(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------

ROUND_TRIPS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**53 + 1,
    2**63,
    2**64,
    -(2**64),
    -(2**200),
    1.5,
    -0.0,
    0.0,
    math.inf,
    -math.inf,
    5e-324,
    1.7976931348623157e308,
    "",
    "abc",
    "héllo ÿ",
    "\x00nul inside",
    "日本語",
    "😀 emoji",
    "a\ud800b",  # lone surrogates exist in JavaScript strings
    "\udfff",
    b"",
    b"\x00\x01\xff",
    bytes(range(256)) * 3,
    [],
    {},
    [1, "a", [2, [3, []]]],
    {"a": 1, "b": {"c": "d"}, "": [None]},
    {"1": "numeric-looking key", "x": b"nested bytes"},
    [b"\x01", {"deep": [b"\x02"]}],
    datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    datetime(1969, 7, 20, 20, 17, 40, 1000, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_round_trip(value: object) -> None:
    """loads(dumps(x)) gives back x, with the same types, for every supported type."""
    assert same(loads(dumps(value)), value)


def test_nan_round_trips() -> None:
    """nan survives a round trip as a float nan."""
    result = loads(dumps(math.nan))
    assert isinstance(result, float)
    assert math.isnan(result)


def test_tuple_becomes_list() -> None:
    """A tuple is written as an Array and so reads back as a list."""
    assert same(loads(dumps((1, (2, "x")))), [1, [2, "x"]])


def test_bytearray_and_memoryview_become_bytes() -> None:
    """bytearray and memoryview (nested too) are written as Uint8Array and read back as bytes."""
    view = memoryview(b"abcdef")[1:5:2]  # not contiguous
    value = {"ba": bytearray(b"\x01\x02"), "mv": view, "l": [memoryview(b"z")]}
    assert same(loads(dumps(value)), {"ba": b"\x01\x02", "mv": b"bd", "l": [b"z"]})


def test_int_size_chooses_int32_or_bigint() -> None:
    """Ints in signed 32-bit range use tag I, everything else BigInt (tag Z)."""
    assert dumps(2**31 - 1)[2:3] == b"I"
    assert dumps(-(2**31))[2:3] == b"I"
    assert dumps(2**31)[2:3] == b"Z"
    assert dumps(-(2**31) - 1)[2:3] == b"Z"


def test_bool_is_not_an_int() -> None:
    """True and False are written as booleans, not as 1 and 0."""
    assert dumps(True) == b"\xff\x0fT"
    assert loads(dumps([True, 1])) == [True, 1]
    assert type(loads(dumps(True))) is bool


def test_naive_datetime_is_utc() -> None:
    """A naive datetime is taken as UTC and comes back aware."""
    result = loads(dumps(datetime(2024, 2, 29, 12, 0, 0, 5000)))
    assert same(result, datetime(2024, 2, 29, 12, 0, 0, 5000, tzinfo=UTC))


def test_aware_datetime_keeps_its_instant() -> None:
    """A datetime in another zone reads back as the same instant in UTC."""
    tokyo = timezone(timedelta(hours=9))
    value = datetime(2024, 1, 1, 9, 0, 0, 250000, tzinfo=tokyo)
    result = loads(dumps(value))
    assert result == value
    assert same(result, datetime(2024, 1, 1, 0, 0, 0, 250000, tzinfo=UTC))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 1, 1, 0, 0, 0, 1999, tzinfo=UTC), datetime(2024, 1, 1, 0, 0, 0, 1000)),
        (
            datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(1969, 12, 31, 23, 59, 59, 999000),
        ),
    ],
)
def test_datetime_drops_sub_millisecond_digits(value: datetime, expected: datetime) -> None:
    """A JS Date holds whole milliseconds: the microseconds below are floored away."""
    assert same(loads(dumps(value)), expected.replace(tzinfo=UTC))


def test_subclasses_are_written_as_their_base() -> None:
    """IntEnum, StrEnum, OrderedDict, namedtuple and str subclasses encode like their base."""

    class Color(enum.IntEnum):
        RED = 1

    class Mode(enum.StrEnum):
        FAST = "fast"

    point = namedtuple("point", "x y")
    value = OrderedDict(color=Color.RED, mode=Mode.FAST, p=point(1, 2))
    assert same(loads(dumps(value)), {"color": 1, "mode": "fast", "p": [1, 2]})


def test_shared_subtree_is_written_twice() -> None:
    """An object reached twice (not a cycle) is allowed and written at each place."""
    shared = [1, 2]
    assert same(loads(dumps({"a": shared, "b": shared})), {"a": [1, 2], "b": [1, 2]})


def test_nesting_limit() -> None:
    """64 nested containers are written; 65 are refused with InvalidValue."""
    assert loads(dumps(nested(64))) == nested(64)
    with pytest.raises(errors.InvalidValue, match="deeper than 64 levels"):
        dumps(nested(65))


def test_list_cycle_is_refused() -> None:
    """A list containing itself is refused, naming where the cycle closes."""
    loop: list[object] = [1]
    loop.append(loop)
    with pytest.raises(errors.InvalidValue, match=r"cycle: value\[1\] refers back to value;"):
        dumps(loop)


def test_dict_cycle_is_refused() -> None:
    """A cycle through dicts is refused, naming both ends of the cycle."""
    inner: dict[str, object] = {}
    outer = {"x": inner}
    inner["y"] = outer
    expected = r'cycle: value\["top"\]\["x"\]\["y"\] refers back to value\["top"\];'
    with pytest.raises(errors.InvalidValue, match=expected):
        dumps({"top": outer})


# --------------------------------------------------------------------------
# Refused types
# --------------------------------------------------------------------------


class Custom:
    """A class kvqueue knows nothing about."""


@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset(), Custom(), date(2024, 1, 1), 1j, Decimal("1.5"), KvU64(5), object],
    ids=repr,
)
def test_unsupported_type_is_refused(value: object) -> None:
    """Types without a V8 form raise InvalidValue naming the type."""
    with pytest.raises(errors.InvalidValue, match=rf"type \S*{type(value).__name__} at value;"):
        dumps(value)


def test_refusal_names_the_path() -> None:
    """The message of a nested refusal says where the value was found."""
    with pytest.raises(errors.InvalidValue) as caught:
        dumps({"a": [0, 1, KvU64(7)]})
    assert 'kvqueue.model.KvU64 at value["a"][2];' in str(caught.value)


def test_non_str_key_is_refused() -> None:
    """A dict key that is not a str raises InvalidValue naming the key and the dict."""
    with pytest.raises(errors.InvalidValue, match=r'dict key 1 \(int\) at value\["a"\]: keys'):
        dumps({"a": {1: "x"}})


def test_invalid_value_is_a_value_error() -> None:
    """InvalidValue is also a ValueError, as kvqueue's error hierarchy promises."""
    with pytest.raises(ValueError, match="set"):
        dumps([set()])


# --------------------------------------------------------------------------
# Golden encodings, derived by hand from value-serializer.cc's description
# --------------------------------------------------------------------------


def double(number: float) -> bytes:
    return struct.pack("<d", number)


GOLDEN = [
    (None, "30"),
    (True, "54"),
    (False, "46"),
    (0, "49 00"),
    (1, "49 02"),
    (-1, "49 01"),
    (63, "49 7e"),
    (64, "49 80 01"),
    (2**31 - 1, "49 fe ff ff ff 0f"),
    (-(2**31), "49 ff ff ff ff 0f"),
    (2**31, "5a 10 00 00 00 80 00 00 00 00"),
    (-(2**31) - 1, "5a 11 01 00 00 80 00 00 00 00"),
    (2**64, "5a 20 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00"),
    (1.5, "4e 00 00 00 00 00 00 f8 3f"),
    ("", "22 00"),
    ("abc", "22 03 61 62 63"),
    ("é", "22 01 e9"),
    ("日", "63 02 e5 65"),
    ("😀", "63 04 3d d8 00 de"),
    # The UTF-16 payload would start at an odd offset: V8 pads with 00 first.
    (["a", "日"], "41 02 22 01 61 00 63 02 e5 65 24 00 02"),
    (b"\x01\x02", "42 02 01 02 56 42 00 02 00"),
    ([], "41 00 24 00 00"),
    ({}, "6f 7b 00"),
    ({"a": [1]}, "6f 22 01 61 41 01 49 02 24 00 01 7b 01"),
    (datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC), "44" + double(1.0).hex()),
]


@pytest.mark.parametrize(("value", "body"), GOLDEN, ids=[repr(v) for v, _ in GOLDEN])
def test_golden_encoding(value: object, body: str) -> None:
    """dumps writes header FF 0F and exactly the bytes the format prescribes."""
    assert dumps(value) == b"\xff\x0f" + bytes.fromhex(body)


# --------------------------------------------------------------------------
# Decoding what V8 writes (hand-made inputs)
# --------------------------------------------------------------------------


def v8(body: str, version: int = 15) -> bytes:
    return bytes([0xFF, version]) + bytes.fromhex(body)


DATE_MS = 1700000000123.0
DECODED = [
    ("undefined", v8("5f"), None),
    ("uint32", v8("55 ff ff ff ff 0f"), 2**32 - 1),
    ("integral double stays float", v8("4e" + double(2.0**40).hex()), 2.0**40),
    ("utf-8 string", v8("53 04 f0 9f 98 80"), "😀"),
    ("invalid utf-8 is replaced like V8", v8("53 02 c3 28"), "\ufffd("),
    ("bigint zero", v8("5a 00"), 0),
    ("bigint -1", v8("5a 11 01 00 00 00 00 00 00 00"), -1),
    ("padding anywhere", v8("00 41 01 00 00 49 02 00 24 00 01 00 00"), [1]),
    ("verify-object-count", v8("3f 05 3f 01 49 02"), 1),
    ("a long run of verify tags", b"\xff\x0f" + b"?\x00" * 5000 + b"0", None),
    ("sparse array", v8("61 03 49 02 54 40 01 03"), [None, True, None]),
    (
        "sparse array, double index",
        v8("61 03 4e" + double(2.0).hex() + "54 40 01 03"),
        [None, None, True],
    ),
    ("sparse array named property", v8("61 01 22 01 78 54 40 01 01"), [None]),
    ("dense array with hole", v8("41 03 49 02 2d 49 06 24 00 03"), [1, None, 3]),
    ("dense array named property dropped", v8("41 01 49 02 22 01 78 54 24 01 01"), [1]),
    (
        "number keys",
        v8("6f 49 02 54 4e" + double(2.0**32).hex() + "46 7b 02"),
        {"1": True, "4294967296": False},
    ),
    ("map", v8("3b 49 02 22 01 61 22 01 62 54 3a 04"), {1: "a", "b": True}),
    ("set", v8("27 49 02 22 01 61 2c 02"), [1, "a"]),
    (
        "boxed primitives",
        v8(
            "41 05 79 78 6e" + double(1.5).hex() + "7a 10 05 00 00 00 00 00 00 00"
            " 73 22 01 71 24 00 05"
        ),
        [True, False, 1.5, 5, "q"],
    ),
    (
        "date",
        v8("44" + double(DATE_MS).hex()),
        datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    ),
    ("array buffer alone", v8("42 02 aa bb"), b"\xaa\xbb"),
    ("resizable array buffer", v8("7e 02 08 aa bb"), b"\xaa\xbb"),
    ("Int16Array", v8("42 04 01 00 ff ff 56 77 00 04 00"), b"\x01\x00\xff\xff"),
    ("subarray", v8("42 04 01 02 03 04 56 42 01 02 00"), b"\x02\x03"),
    ("DataView", v8("42 02 01 02 56 3f 01 01 00"), b"\x02"),
    ("length-tracking view", v8("7e 04 08 01 02 03 04 56 42 01 00 01"), b"\x02\x03\x04"),
    # ids: array 0, buffer 1, first view 2; the second view refers to the buffer.
    (
        "second view of a buffer",
        v8("41 02 42 02 01 02 56 42 00 01 00 5e 01 56 42 01 01 00 24 00 02"),
        [b"\x01", b"\x02"],
    ),
    ("version 13 views have no flags", v8("42 02 01 02 56 42 00 02", version=13), b"\x01\x02"),
    ("version 14", v8("42 02 01 02 56 42 00 02 00", version=14), b"\x01\x02"),
    ("version 16", v8("6f 22 01 61 49 02 7b 01", version=16), {"a": 1}),
]


@pytest.mark.parametrize(
    ("data", "expected"), [d[1:] for d in DECODED], ids=[d[0] for d in DECODED]
)
def test_decodes_v8_output(data: bytes, expected: object) -> None:
    """loads maps each V8 form to its documented Python value."""
    assert same(loads(data), expected)


def test_back_reference_is_the_same_object() -> None:
    """An object V8 wrote once and referenced again decodes to one Python object."""
    # ids: array 0, object 1; "^ 01" refers to the object.
    result = loads(v8("41 02 6f 7b 00 5e 01 24 00 02"))
    assert isinstance(result, list)
    assert result == [{}, {}]
    assert result[0] is result[1]


def test_cycle_decodes_to_a_python_cycle() -> None:
    """A JavaScript object containing itself decodes to a dict containing itself."""
    result = loads(v8("6f 22 01 73 5e 00 7b 01"))
    assert isinstance(result, dict)
    assert result["s"] is result


def test_loads_accepts_bytearray_and_memoryview() -> None:
    """loads also takes other bytes-like objects (typed as bytes, lenient at run time)."""
    data = dumps({"a": [1]})
    assert loads(bytearray(data)) == {"a": [1]}  # type: ignore[arg-type]
    assert loads(memoryview(data)) == {"a": [1]}  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Corrupt input
# --------------------------------------------------------------------------

CORRUPT = [
    ("empty", b""),
    ("no header", b"0"),
    ("header only", b"\xff"),
    ("version without value", b"\xff\x0f"),
    ("version 12", v8("30", version=12)),
    ("version 17", v8("30", version=17)),
    ("padding only", v8("00 00")),
    ("unknown tag", v8("01")),
    ("regexp unsupported", v8("52 22 01 61 00")),
    ("error unsupported", v8("72 2e")),
    ("host object unsupported", v8("5c")),
    ("hole outside an array", v8("2d")),
    ("trailing bytes", v8("30 30")),
    ("object count mismatch", v8("6f 7b 01")),
    ("dense length mismatch", v8("41 01 49 02 24 00 02")),
    ("map length mismatch", v8("3b 49 02 49 04 3a 01")),
    ("set length mismatch", v8("27 49 02 2c 02")),
    ("truncated string", v8("22 05 61 62")),
    ("odd two-byte string", v8("63 03 61 00 62")),
    ("varint too long", v8("49" + "ff" * 11 + "01")),
    ("int32 out of range", v8("49 ff ff ff ff 1f")),
    ("uint32 out of range", v8("55 80 80 80 80 10")),
    ("reference to unknown id", v8("5e 05")),
    ("reference to unfinished boxed string", v8("73 5e 00")),
    ("object key is an object", v8("6f 6f 7b 00 30 7b 01")),
    ("unhashable map key", v8("3b 6f 7b 00 49 02 3a 02")),
    ("invalid date", v8("44" + double(math.nan).hex())),
    ("date beyond year 9999", v8("44" + double(8.64e15).hex())),
    ("view past its buffer", v8("42 02 01 02 56 42 01 02 00")),
    ("misaligned Int16Array", v8("42 04 01 02 03 04 56 77 01 02 00")),
    ("unknown view type", v8("42 02 01 02 56 7a 00 02 00")),
    ("resizable buffer over its maximum", v8("7e 04 02 01 02 03 04")),
    ("huge sparse array", v8("61 ff ff ff ff 0f 40 00 00")),
    ("deep nesting", b"\xff\x0f" + b"A\x01" * 2000),
    ("deep boxed strings", b"\xff\x0f" + b"s" * 5000 + b'"\x00'),
]


@pytest.mark.parametrize("data", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_corrupt_input_raises_corrupt_value(data: bytes) -> None:
    """Garbage, truncated or unsupported input raises CorruptValue and nothing else."""
    with pytest.raises(errors.CorruptValue):
        loads(data)


def test_every_truncation_is_corrupt() -> None:
    """Each proper prefix of a rich encoding raises CorruptValue, chained to the cause."""
    data = dumps(
        {
            "s": "日本語",
            "n": [1, 2.5, 2**70, None, True],
            "b": b"xyz",
            "d": datetime(2020, 1, 1, tzinfo=UTC),
            "": {"x": ""},
        }
    )
    for end in range(len(data)):
        with pytest.raises(errors.CorruptValue):
            loads(data[:end])


def test_truncation_error_is_chained() -> None:
    """The low-level error behind a CorruptValue is kept as its __cause__."""
    with pytest.raises(errors.CorruptValue) as caught:
        loads(dumps([1, 2])[:-2])
    assert isinstance(caught.value.__cause__, IndexError)


# --------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------

whole_ms_datetimes = st.datetimes(timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text()
    | st.binary()
    | whole_ms_datetimes
)
json_like = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@FUZZ
@given(json_like)
def test_property_round_trip(value: object) -> None:
    """loads(dumps(x)) == x (same types, nan-aware) for arbitrary JSON-like values."""
    assert same(loads(dumps(value)), value)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_garbage_only_raises_corrupt_value(data: bytes) -> None:
    """Arbitrary bytes either decode or raise CorruptValue, never another exception."""
    with contextlib.suppress(errors.CorruptValue):
        loads(data)


@FUZZ
@given(st.sampled_from([13, 14, 15, 16]), st.binary(max_size=200))
def test_fuzz_after_valid_header(version: int, body: bytes) -> None:
    """Arbitrary bodies behind a valid header decode or raise CorruptValue only."""
    with contextlib.suppress(errors.CorruptValue):
        loads(bytes([0xFF, version]) + body)


@FUZZ
@given(json_like, st.data())
def test_fuzz_mutated_encodings(value: object, data: st.DataObject) -> None:
    """Valid encodings with one byte changed decode or raise CorruptValue only."""
    encoded = bytearray(dumps(value))
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    with contextlib.suppress(errors.CorruptValue):
        loads(bytes(encoded))

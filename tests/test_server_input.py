"""Bad input to `kvqueue serve` never makes a 500: every refusal is a 4xx with
Cloudflare's error envelope and the error code a client can act on."""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import kvqueue
from kvqueue import limits
from kvqueue.server.routes import ENDPOINTS
from tests.served import Served, start_server

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class World:
    """One server with two accounts: ``acc`` owns queues alpha (with a pull consumer)
    and beta; ``other`` owns queue gamma."""

    served: Served
    http: httpx.Client
    acc: str
    token: str
    alpha: str
    beta: str
    consumer: str
    other: str
    other_token: str
    gamma: str

    def path(self, rest: str = "", account: str | None = None) -> str:
        return f"/client/v4/accounts/{account or self.acc}{rest}"

    def call(
        self, method: str, rest: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request to ``acc``'s API (with its admin token unless another is given)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.http.request(method, self.path(rest), headers=headers, **kwargs)

    def backlog(self, queue_id: str) -> int:
        response = self.call("GET", f"/queues/{queue_id}/metrics")
        assert response.status_code == 200, response.text
        count: int = response.json()["result"]["backlog_count"]
        return count


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    served = start_server(tmp_path_factory.mktemp("input") / "db.sqlite")
    http = httpx.Client(base_url=served.url, timeout=10)
    try:
        acc, token = served.token()
        other, other_token = served.token()
        auth = {"Authorization": f"Bearer {token}"}
        ids = {}
        for name in ("alpha", "beta"):
            created = http.post(
                f"/client/v4/accounts/{acc}/queues", json={"queue_name": name}, headers=auth
            )
            assert created.status_code == 200, created.text
            ids[name] = created.json()["result"]["queue_id"]
        gamma = http.post(
            f"/client/v4/accounts/{other}/queues",
            json={"queue_name": "gamma"},
            headers={"Authorization": f"Bearer {other_token}"},
        )
        assert gamma.status_code == 200, gamma.text
        consumer = http.post(
            f"/client/v4/accounts/{acc}/queues/{ids['alpha']}/consumers",
            json={"type": "http_pull"},
            headers=auth,
        )
        assert consumer.status_code == 200, consumer.text
        yield World(
            served,
            http,
            acc,
            token,
            ids["alpha"],
            ids["beta"],
            consumer.json()["result"]["consumer_id"],
            other,
            other_token,
            gamma.json()["result"]["queue_id"],
        )
    finally:
        http.close()
        try:
            code = served.stop()
        finally:
            if served.process.poll() is None:  # SIGTERM did not end it in time
                served.kill()
    assert code == 0, "\n".join(served.output)
    assert not any("Traceback" in line for line in served.output), "\n".join(served.output)


def assert_error(response: httpx.Response, status: int, code: int | None = None) -> dict[str, Any]:
    """``response`` is Cloudflare's error envelope with ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"success", "errors", "messages", "result"}, body
    assert body["success"] is False
    assert body["messages"] == []
    assert body["result"] is None
    assert len(body["errors"]) == 1, body
    (error,) = body["errors"]
    assert type(error["code"]) is int, body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    if code is not None:
        assert error["code"] == code, body
    return body


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{bad",
        b'{"body": "x"',
        b'{"body": NaN}',
        b'{"body": Infinity}',
        b'{"body": 1e999}',
        b'{"body": "\\ud800"}',
        b'{"body": "\xff"}',
        b'{"body": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b"\x00\x01\x02",
    ],
    ids=[
        "unclosed",
        "truncated",
        "nan",
        "infinity",
        "overflow",
        "lone-surrogate",
        "invalid-utf8",
        "too-deep",
        "binary",
    ],
)
def test_malformed_json_is_400_with_code_10208_and_sends_nothing(world: World, raw: bytes) -> None:
    """A push whose body is not valid JSON is refused with 400 / 10208 and queues nothing."""
    before = world.backlog(world.beta)
    assert_error(world.call("POST", f"/queues/{world.beta}/messages", content=raw), 400, 10208)
    assert world.backlog(world.beta) == before


@pytest.mark.parametrize("raw", [b"[1]", b"5", b'"body"', b"null", b"true", b"[]"])
def test_json_that_is_not_an_object_is_400_with_code_10207(world: World, raw: bytes) -> None:
    """A body that is valid JSON but not an object is refused with 400 / 10207."""
    assert_error(world.call("POST", f"/queues/{world.beta}/messages", content=raw), 400, 10207)
    assert_error(world.call("POST", "/queues", content=raw), 400, 10207)


# (method, path under the queue, JSON body, expected code); {q} is beta's id.
BAD_FIELDS = [
    # push one: a missing body and bad content types or delays are message metadata
    ("POST", "/messages", {}, 10203),
    ("POST", "/messages", {"body": None}, 10203),
    ("POST", "/messages", {"body": "x", "content_type": "xml"}, 10203),
    ("POST", "/messages", {"body": "x", "content_type": "bytes"}, 10203),
    ("POST", "/messages", {"body": "x", "content_type": 5}, 10207),
    ("POST", "/messages", {"body": 5, "content_type": "text"}, 10203),
    ("POST", "/messages", {"body": "x", "delay_seconds": -1}, 10203),
    ("POST", "/messages", {"body": "x", "delay_seconds": 86_401}, 10203),
    ("POST", "/messages", {"body": "x", "delay_seconds": 1e308}, 10203),
    ("POST", "/messages", {"body": "x", "delay_seconds": 10**30}, 10203),
    ("POST", "/messages", {"body": "x", "delay_seconds": "NaN"}, 10207),
    ("POST", "/messages", {"body": "x", "delay_seconds": "-Infinity"}, 10207),
    ("POST", "/messages", {"body": "x", "delay_seconds": "10"}, 10207),
    ("POST", "/messages", {"body": "x", "delay_seconds": True}, 10207),
    ("POST", "/messages", {"body": "x", "delay_seconds": [1]}, 10207),
    ("POST", "/messages", {"body": "x" * (limits.MAX_MESSAGE_BYTES + 1)}, 10204),
    # push a batch
    ("POST", "/messages/batch", {}, 10206),
    ("POST", "/messages/batch", {"messages": []}, 10206),
    ("POST", "/messages/batch", {"messages": "x"}, 10207),
    ("POST", "/messages/batch", {"messages": [5]}, 10207),
    ("POST", "/messages/batch", {"messages": [{}]}, 10203),
    ("POST", "/messages/batch", {"messages": [{"body": "x"}] * 101}, 10206),
    ("POST", "/messages/batch", {"messages": [{"body": "x"}], "delay_seconds": -1}, 10202),
    ("POST", "/messages/batch", {"messages": [{"body": "x"}], "delay_seconds": 10**6}, 10202),
    ("POST", "/messages/batch", {"messages": [{"body": "x", "delay_seconds": -1}]}, 10203),
    ("POST", "/messages/batch", {"messages": [{"body": "x" * 100_000}] * 3}, 10205),
    # pull, peek, ack
    ("POST", "/messages/pull", {"batch_size": "ten"}, 10207),
    ("POST", "/messages/pull", {"batch_size": 0}, 10207),
    ("POST", "/messages/pull", {"batch_size": 101}, 10207),
    ("POST", "/messages/pull", {"batch_size": 1.5}, 10207),
    ("POST", "/messages/pull", {"batch_size": 1e300}, 10207),
    ("POST", "/messages/pull", {"visibility_timeout_ms": -1}, 10207),
    ("POST", "/messages/pull", {"visibility_timeout_ms": {"ms": 1}}, 10207),
    ("POST", "/messages/peek", {"batch_size": 0}, 10207),
    ("POST", "/messages/peek", {"batch_size": 101}, 10207),
    ("POST", "/messages/peek", {"batch_size": "5"}, 10207),
    ("POST", "/messages/ack", {"acks": "lease"}, 10207),
    ("POST", "/messages/ack", {"acks": {"lease_id": "x"}}, 10207),
    ("POST", "/messages/ack", {"acks": ["lease"]}, 10207),
    ("POST", "/messages/ack", {"acks": [{"lease_id": 5}]}, 10207),
    ("POST", "/messages/ack", {"retries": [{"lease_id": "x", "delay_seconds": "1"}]}, 10207),
    ("POST", "/messages/purge", {"refs": []}, 10207),
    ("POST", "/messages/purge", {"refs": [{"ref": 5}]}, 10207),
    ("POST", "/messages/purge", {"refs": "ref"}, 10207),
    # queue settings
    ("PATCH", "", {"settings": "fast"}, 10207),
    ("PATCH", "", {"settings": [1]}, 10207),
    ("PATCH", "", {"settings": {"delivery_delay": -1}}, 10207),
    ("PATCH", "", {"settings": {"delivery_delay": 86_401}}, 10207),
    ("PATCH", "", {"settings": {"delivery_delay": 1.5}}, 10207),
    ("PATCH", "", {"settings": {"delivery_delay": "5"}}, 10207),
    ("PATCH", "", {"settings": {"delivery_paused": "yes"}}, 10207),
    ("PATCH", "", {"settings": {"message_retention_period": 59}}, 10207),
    ("PUT", "", {"queue_name": "renamed"}, 10207),
    ("PUT", "", {"queue_name": 5}, 10207),
    ("POST", "/purge", {}, 10207),
    ("POST", "/purge", {"delete_messages_permanently": "yes"}, 10207),
    # consumers (beta has none)
    ("POST", "/consumers", {"type": "bogus"}, 10207),
    ("POST", "/consumers", {"type": "worker"}, 10207),
    ("POST", "/consumers", {"type": 5}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "settings": "x"}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "settings": {"batch_size": "x"}}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "settings": {"batch_size": 0}}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "settings": {"retry_delay": -1}}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "settings": {"body_encoding": "hex"}}, 10207),
    ("POST", "/consumers", {"type": "http_pull", "dead_letter_queue": "Not A Name"}, 11003),
]


@pytest.mark.parametrize(
    ("method", "rest", "body", "code"),
    BAD_FIELDS,
    ids=[f"{m} {r or '/'} {str(b)[:40]}" for m, r, b, _ in BAD_FIELDS],
)
def test_wrong_fields_are_400_with_a_specific_code_and_change_nothing(
    world: World, method: str, rest: str, body: dict[str, Any], code: int
) -> None:
    """A request with a missing, mistyped or out-of-range field is refused with 400 and the
    Cloudflare code for what is wrong, and the queue keeps its messages, settings and consumers."""
    before = world.call("GET", f"/queues/{world.beta}").json()["result"]
    backlog = world.backlog(world.beta)
    assert_error(world.call(method, f"/queues/{world.beta}{rest}", json=body), 400, code)
    assert world.call("GET", f"/queues/{world.beta}").json()["result"] == before
    assert world.backlog(world.beta) == backlog


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, 10207),
        ({"queue_name": 5}, 10207),
        ({"queue_name": ""}, 11003),
        ({"queue_name": "Not A Name"}, 11003),
        ({"queue_name": "x" * 64}, 11003),
        ({"queue_name": "fresh", "settings": "x"}, 10207),
        ({"queue_name": "fresh", "settings": {"delivery_delay": -1}}, 10207),
        ({"queue_name": "fresh", "settings": {"delivery_paused": 1}}, 10207),
    ],
)
def test_creating_a_queue_from_bad_fields_is_400_and_creates_nothing(
    world: World, body: dict[str, Any], code: int
) -> None:
    """POST /queues with a bad name or settings is refused with 400 and no queue appears."""
    assert_error(world.call("POST", "/queues", json=body), 400, code)
    names = [q["queue_name"] for q in world.call("GET", "/queues").json()["result"]]
    assert "fresh" not in names


@pytest.mark.parametrize(
    "query",
    ["page=0", "page=-1", "page=x", "per_page=0", "per_page=1001", "per_page=abc",
     "per_page=%C2%B2", "per_page=%EF%BC%91", "page=99999999999999999999"],
)  # fmt: skip
def test_bad_list_query_numbers_are_400_with_code_10207(world: World, query: str) -> None:
    """GET /queues with a page or per_page that is not a whole number in range (including
    Unicode digits such as superscript two and fullwidth one) is refused with 400 / 10207."""
    assert_error(world.call("GET", f"/queues?{query}"), 400, 10207)


def test_a_body_over_the_request_limit_is_413(world: World) -> None:
    """A request body over MAX_REQUEST_BYTES is refused with 413, declared or streamed,
    while one of exactly the limit is read (and refused for its content, with 400)."""
    backlog = world.backlog(world.beta)
    push = f"/queues/{world.beta}/messages"
    over = b'{"body": "' + b"x" * (limits.MAX_REQUEST_BYTES - 11) + b'"}'
    assert len(over) == limits.MAX_REQUEST_BYTES + 1
    assert_error(world.call("POST", push, content=over), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for start in range(0, len(over), 65_536):
            yield over[start : start + 65_536]

    assert_error(world.call("POST", push, content=chunks()), 413)
    assert_error(world.call("POST", "/queues", content=b" " * (limits.MAX_REQUEST_BYTES + 1)), 413)
    exact = b'{"body": "' + b"x" * (limits.MAX_REQUEST_BYTES - 12) + b'"}'
    assert len(exact) == limits.MAX_REQUEST_BYTES
    assert_error(world.call("POST", push, content=exact), 400, 10204)
    assert world.backlog(world.beta) == backlog


# --- routes and methods -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        # "/" itself takes KV Connect's metadata exchange (POST).
        "/nope",
        "/client/v4",
        "/client/v4/accounts",
        "/client/v4/accounts/{acc}",
        "/client/v4/accounts/{acc}/nope",
        "/client/v4/accounts/{acc}/queues/{q}/nope",
        "/client/v4/accounts/{acc}/queues/{q}/messages/nope",
        "/client/v4/accounts/{acc}/queues/{q}/consumers/{c}/more",
        "/client/v4/accounts/{acc}/queues/{q}/metrics/x",
        "/client/v4/accounts/{acc}/workers/queues",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_routes_are_404_with_code_7003(world: World, path: str, method: str) -> None:
    """A path no route has is 404 / 7003, whatever the method and with or without a token."""
    url = path.format(acc=world.acc, q=world.alpha, c=world.consumer)
    assert_error(world.http.request(method, url), 404, 7003)
    auth = {"Authorization": f"Bearer {world.token}"}
    assert_error(world.http.request(method, url, headers=auth, json={"x": 1}), 404, 7003)


@pytest.mark.parametrize(
    ("method", "rest"),
    [
        ("DELETE", "/queues"),
        ("PUT", "/queues"),
        ("PATCH", "/queues"),
        ("POST", "/queues/{q}"),
        ("GET", "/queues/{q}/messages"),
        ("PUT", "/queues/{q}/messages"),
        ("GET", "/queues/{q}/messages/batch"),
        ("GET", "/queues/{q}/messages/pull"),
        ("DELETE", "/queues/{q}/messages/ack"),
        ("HEAD", "/queues/{q}/messages/peek"),
        ("POST", "/queues/{q}/metrics"),
        ("DELETE", "/queues/{q}/purge"),
        ("PATCH", "/queues/{q}/consumers"),
        ("POST", "/queues/{q}/consumers/{c}"),
        ("PATCH", "/queues/{q}/consumers/{c}"),
        ("OPTIONS", "/queues"),
        ("TRACE", "/queues/{q}"),
    ],
)
def test_wrong_methods_on_known_paths_are_405_with_code_7001(
    world: World, method: str, rest: str
) -> None:
    """A method a known path does not take is 405 / 7001 (HEAD gets the status without a body)."""
    response = world.call(method, rest.format(q=world.alpha, c=world.consumer))
    if method == "HEAD":
        assert response.status_code == 405
        assert response.content == b""
    else:
        assert_error(response, 405, 7001)


@pytest.mark.parametrize("rest", ["/queues", "/queues/{q}", "/queues/{q}/metrics"])
def test_head_on_a_readable_path_answers_like_get(world: World, rest: str) -> None:
    """HEAD on a GET route answers 200 with no body, as GET would, instead of crashing."""
    response = world.call("HEAD", rest.format(q=world.alpha))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "application/json"


# --- tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "bearer-less",
        "Bearer kvq",
        "Bearer kvq__",
        "Bearer kvq_zz_secret",
        "Bearer kvq_0123456789abcdeg_secret",
        "Bearer kvq_0123456789abcdef_secret",
        "Bearer " + "a" * 10_000,
    ],
)
def test_a_missing_or_malformed_token_is_401(world: World, authorization: str | None) -> None:
    """No bearer token, another scheme or a token that is not a valid kvqueue token is 401 / 10000,
    for reads and writes alike."""
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, rest in (("GET", "/queues"), ("POST", f"/queues/{world.alpha}/messages")):
        response = world.http.request(method, world.path(rest), headers=headers, json={"body": "x"})
        assert_error(response, 401, 10000)


def test_a_token_with_the_wrong_secret_or_revoked_is_401(world: World) -> None:
    """A real token id with a wrong secret is 401, and so is a token after it is revoked."""
    _, token = world.served.token(world.acc)
    assert world.call("GET", "/queues", token=token).status_code == 200
    assert_error(world.call("GET", "/queues", token=token[:-2] + "zz"), 401, 10000)
    token_id = token.split("_")[1]
    with kvqueue.open(str(world.served.db_path)) as db:
        db.tokens.revoke(token_id)
    assert_error(world.call("GET", "/queues", token=token), 401, 10000)
    assert_error(world.call("POST", f"/queues/{world.alpha}/messages/pull", token=token), 401)


def test_another_accounts_token_is_403_and_learns_nothing(world: World) -> None:
    """A token used on another account's paths is 403 with the same answer whether the queue id
    exists there or not, and an id of another account's queue is as unknown as a made-up one."""
    answers = []
    for method, rest, body in (
        ("GET", "/queues/{q}", None),
        ("DELETE", "/queues/{q}", None),
        ("POST", "/queues/{q}/messages", {"body": "x"}),
        ("POST", "/queues/{q}/messages/pull", {}),
        ("GET", "/queues/{q}/consumers", None),
    ):
        for queue_id in (world.gamma, UNKNOWN_ID):
            url = world.path(rest.format(q=queue_id), account=world.other)
            response = world.http.request(
                method, url, json=body, headers={"Authorization": f"Bearer {world.token}"}
            )
            assert_error(response, 403, 10106)
            answers.append(response.content)
    assert len(set(answers)) == 1, answers
    assert_error(
        world.http.get(
            world.path("/queues", account=world.other),
            headers={"Authorization": f"Bearer {world.token}"},
        ),
        403,
        10106,
    )
    # Within its own account, the other account's queue id is simply not found.
    messages = set()
    for queue_id in (world.gamma, UNKNOWN_ID):
        response = world.call("POST", f"/queues/{queue_id}/messages", json={"body": "x"})
        body = assert_error(response, 404, 10104)
        messages.add(body["errors"][0]["message"].replace(queue_id, "ID"))
    assert len(messages) == 1, messages
    # Nothing reached gamma.
    gamma = world.http.get(
        world.path(f"/queues/{world.gamma}/metrics", account=world.other),
        headers={"Authorization": f"Bearer {world.other_token}"},
    )
    assert gamma.json()["result"]["backlog_count"] == 0


def test_a_produce_token_cannot_create_queues_and_a_consume_token_cannot_push(
    world: World,
) -> None:
    """A produce-scoped token may push but not create queues (403), and a consume-scoped token
    may pull but not push (403)."""
    _, produce = world.served.token(world.acc, "produce")
    _, consume = world.served.token(world.acc, "consume")
    assert_error(world.call("POST", "/queues", token=produce, json={"queue_name": "p"}), 403, 10106)
    assert_error(world.call("DELETE", f"/queues/{world.beta}", token=produce), 403, 10106)
    pushed = world.call("POST", f"/queues/{world.beta}/messages", token=produce, json={"body": 1})
    assert pushed.status_code == 200, pushed.text
    refused = world.call("POST", f"/queues/{world.beta}/messages", token=consume, json={"body": 1})
    assert_error(refused, 403, 10106)
    assert_error(world.call("POST", "/queues", token=consume, json={"queue_name": "c"}), 403, 10106)
    names = [q["queue_name"] for q in world.call("GET", "/queues").json()["result"]]
    assert "p" not in names
    assert "c" not in names
    pulled = world.call(
        "POST", f"/queues/{world.beta}/messages/pull", token=consume, json={"batch_size": 100}
    )
    assert pulled.status_code == 200, pulled.text
    leases = [{"lease_id": m["lease_id"]} for m in pulled.json()["result"]["messages"]]
    acked = world.call("POST", f"/queues/{world.beta}/messages/ack", json={"acks": leases})
    assert acked.status_code == 200, acked.text


def test_a_token_limited_to_one_queue_cannot_see_the_others(world: World) -> None:
    """A token limited to queue alpha gets 404 for beta (as if it did not exist), does not see
    beta in the list, and cannot create queues."""
    _, token = world.served.token(world.acc, "admin", queues=["alpha"])
    listed = world.call("GET", "/queues", token=token)
    assert listed.status_code == 200, listed.text
    assert [q["queue_name"] for q in listed.json()["result"]] == ["alpha"]
    assert listed.json()["result_info"]["total_count"] == 1
    assert world.call("GET", f"/queues/{world.alpha}", token=token).status_code == 200
    unknown = assert_error(world.call("GET", f"/queues/{UNKNOWN_ID}", token=token), 404, 10104)
    hidden = assert_error(world.call("GET", f"/queues/{world.beta}", token=token), 404, 10104)
    assert hidden["errors"][0]["message"].replace(world.beta, "ID") == unknown["errors"][0][
        "message"
    ].replace(UNKNOWN_ID, "ID")
    for method, rest in (
        ("POST", "/messages"),
        ("POST", "/messages/pull"),
        ("GET", "/metrics"),
        ("DELETE", ""),
    ):
        response = world.call(method, f"/queues/{world.beta}{rest}", token=token, json={"body": 1})
        assert_error(response, 404, 10104)
    assert_error(world.call("POST", "/queues", token=token, json={"queue_name": "z"}), 403, 10106)
    assert world.call("GET", f"/queues/{world.beta}").status_code == 200


# --- fuzz -------------------------------------------------------------------------------

#: Every route (method, path template), and a path no route has.
ROUTES = [(e.method, e.path) for e in ENDPOINTS] + [
    ("POST", "/queues/{queue_id}/messages/{consumer_id}")
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: Request fields of every route, so random objects often name real ones.
FIELDS = [
    "body", "content_type", "delay_seconds", "messages", "batch_size", "visibility_timeout_ms",
    "acks", "retries", "lease_id", "leases", "refs", "ref", "queue_name", "settings",
    "delivery_delay", "delivery_paused", "message_retention_period", "type", "script_name",
    "dead_letter_queue", "delete_messages_permanently", "max_retries", "retry_delay",
    "max_wait_time_ms", "max_concurrency", "body_encoding", "consumer_id", "lease",
]  # fmt: skip
ID_TEXT = st.text(string.ascii_letters + string.digits + "-_.~%", min_size=1, max_size=40)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-5, 200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["json", "text", "bytes", "v8", "http_pull", "worker", "plain", "base64"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
bodies = st.one_of(
    st.none(),
    json_objects.map(lambda v: ("json", v)),
    json_objects.map(lambda v: ("json", v)),
    json_values.map(lambda v: ("json", v)),
    st.binary(max_size=64).map(lambda v: ("raw", v)),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(["page", "per_page", "name"]) | st.text(max_size=6),
        st.sampled_from(["1", "0", "100", "1001", "-1", "\u00b2", "\uff11", "alpha"])
        | st.text(max_size=8),
    ),
    max_size=3,
)


class Targets:
    """The fuzz's own queues, fuzz-a (with a consumer) and fuzz-b, each holding a message;
    :meth:`restore` brings back what a fuzzed request deleted."""

    NAMES = ("fuzz-a", "fuzz-b")

    def __init__(self, world: World) -> None:
        self.world = world
        self.queue_ids: list[str] = []
        self.consumer_id = ""
        self.restore()

    def restore(self) -> None:
        world = self.world
        listed = world.call("GET", "/queues", params=[("name", n) for n in self.NAMES])
        assert listed.status_code == 200, listed.text
        found = {q["queue_name"]: q for q in listed.json()["result"]}
        for name in self.NAMES:
            if name not in found:
                created = world.call("POST", "/queues", json={"queue_name": name})
                assert created.status_code == 200, created.text
                found[name] = created.json()["result"]
            if found[name]["settings"]["delivery_paused"]:
                resumed = world.call(
                    "PATCH",
                    f"/queues/{found[name]['queue_id']}",
                    json={"settings": {"delivery_paused": False}},
                )
                assert resumed.status_code == 200, resumed.text
            queue_id = found[name]["queue_id"]
            if world.backlog(queue_id) == 0:
                pushed = world.call("POST", f"/queues/{queue_id}/messages", json={"body": [1]})
                assert pushed.status_code == 200, pushed.text
        self.queue_ids = [found[name]["queue_id"] for name in self.NAMES]
        consumers = found["fuzz-a"]["consumers"]
        if not consumers:
            added = world.call(
                "POST", f"/queues/{self.queue_ids[0]}/consumers", json={"type": "http_pull"}
            )
            assert added.status_code == 200, added.text
            consumers = [added.json()["result"]]
        self.consumer_id = consumers[0]["consumer_id"]


@pytest.fixture(scope="module")
def targets(world: World) -> Targets:
    return Targets(world)


@settings(
    database=None,
    deadline=None,
    max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzzed_requests_never_make_a_500(
    world: World, targets: Targets, data: st.DataObject
) -> None:
    """Random methods on every route, with real and unknown ids, random JSON or bytes as bodies
    and random query strings, are answered below 500, every 4xx in Cloudflare's error envelope."""
    route_method, template = data.draw(st.sampled_from(ROUTES), "route")
    method = data.draw(st.just(route_method) | st.sampled_from(METHODS), "method")
    real_ids = st.sampled_from([*targets.queue_ids, world.gamma, UNKNOWN_ID])
    queue_id = data.draw(st.one_of(real_ids, real_ids, real_ids, ID_TEXT), "queue_id")
    consumer_ids = st.sampled_from([targets.consumer_id, UNKNOWN_ID])
    consumer_id = data.draw(st.one_of(consumer_ids, consumer_ids, ID_TEXT), "consumer_id")
    account = data.draw(st.sampled_from([world.acc] * 4 + [world.other]), "account")
    token = data.draw(st.sampled_from([world.token] * 8 + ["kvq_x", None]), "token")
    body = data.draw(bodies, "body")
    query = data.draw(queries, "query")
    path = template.format(queue_id=queue_id, consumer_id=consumer_id)
    url = path if path.startswith("/client/") else world.path(path, account)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    kwargs: dict[str, Any] = {}
    if body is not None:
        kind, value = body
        kwargs["json" if kind == "json" else "content"] = value
    response = world.http.request(method, url, params=query, headers=headers, **kwargs)
    event(f"{response.status_code} {method == route_method}")
    assert response.status_code < 500, response.text
    if response.status_code == 200 and method not in ("GET", "HEAD"):
        targets.restore()  # a fuzzed request may have deleted, paused or drained a target
    if method == "HEAD":
        assert response.content == b""
    elif 400 <= response.status_code < 500:
        assert_error(response, response.status_code)
    elif response.status_code == 200:
        assert response.json()["success"] is True


def test_the_server_is_alive_and_intact_after_the_fuzz(world: World) -> None:
    """After all the bad input the server still answers, and queues the fuzz could not reach
    are as they were."""
    assert world.served.process.poll() is None
    for queue_id in (world.alpha, world.beta):
        got = world.call("GET", f"/queues/{queue_id}")
        assert got.status_code == 200, got.text
    other = world.http.get(
        world.path("/queues", account=world.other),
        headers={"Authorization": f"Bearer {world.other_token}"},
    )
    assert [q["queue_id"] for q in other.json()["result"]] == [world.gamma]

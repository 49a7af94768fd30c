"""Tokens and accounts: hashed at rest, scoped, revocable; accounts isolated from each other."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

import kvqueue
from tests.served import Served, start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("server") / "db.sqlite")
    yield server
    assert server.stop() == 0


def client(served: Served, account: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{served.api}/accounts/{account}",
        headers={"Authorization": f"Bearer {token}"},
    )


def make_queue(served: Served, account: str, token: str, name: str) -> str:
    with client(served, account, token) as http:
        response = http.post("/queues", json={"queue_name": name})
        assert response.status_code == 200, response.text
        return str(response.json()["result"]["queue_id"])


def every_queue_request(queue_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    """One request per route that names a queue."""
    q = f"/queues/{queue_id}"
    consumer = f"{q}/consumers/{'0' * 32}"
    return [
        ("GET", q, None),
        ("PUT", q, {"queue_name": "x", "settings": {}}),
        ("PATCH", q, {"settings": {"delivery_paused": True}}),
        ("DELETE", q, None),
        ("GET", f"{q}/metrics", None),
        ("POST", f"{q}/purge", {"delete_messages_permanently": True}),
        ("GET", f"{q}/purge", None),
        ("POST", f"{q}/messages", {"body": "x", "content_type": "text"}),
        ("POST", f"{q}/messages/batch", {"messages": [{"body": 1}]}),
        ("POST", f"{q}/messages/pull", {}),
        ("POST", f"{q}/messages/ack", {"acks": [{"lease_id": "x"}]}),
        ("POST", f"{q}/messages/peek", {}),
        ("POST", f"{q}/messages/purge", {"refs": [{"ref": "x"}]}),
        ("GET", f"{q}/consumers", None),
        ("POST", f"{q}/consumers", {"type": "http_pull"}),
        ("GET", consumer, None),
        ("PUT", consumer, {"type": "http_pull"}),
        ("DELETE", consumer, None),
    ]


def test_tokens_are_stored_hashed_and_listed_without_secrets(tmp_path: Path) -> None:
    """The database file holds no token secret; list shows ids, accounts and scopes only."""
    path = f"{tmp_path}/t.sqlite"
    with kvqueue.open(path) as db:
        token, secret = db.tokens.create("acme", "produce", queues=["jobs"], name="ci")
        (listed,) = db.tokens.list()
        assert (listed.id, listed.account, listed.scope, listed.queues, listed.name) == (
            token.id,
            "acme",
            "produce",
            ("jobs",),
            "ci",
        )
        assert db.tokens.authenticate(secret) == token
    files = [Path(path), Path(f"{path}-wal")]
    raw = b"".join(f.read_bytes() for f in files if f.exists())
    # The secret part is URL-safe base64, which may itself hold "_".
    secret_part = secret.split("_", 2)[2]
    assert len(secret_part) >= 40
    assert secret.encode() not in raw
    assert secret_part.encode() not in raw
    with closing(sqlite3.connect(path)) as connection:
        dumped = "\n".join(connection.iterdump())
    assert secret_part not in dumped


def test_a_wrong_or_revoked_token_is_401(served: Served) -> None:
    """No token, a made-up token, a token with a wrong secret and a revoked token all get 401."""
    account, token = served.token()
    with kvqueue.open(str(served.db_path)) as db:
        token_id = token.split("_")[1]
        wrong_secret = f"kvq_{token_id}_{'A' * 43}"
        for bad in ("", "Bearer", "Bearer nope", f"Bearer {wrong_secret}", f"Basic {token}"):
            response = httpx.get(
                f"{served.api}/accounts/{account}/queues", headers={"Authorization": bad}
            )
            assert response.status_code == 401, bad
            assert response.json()["success"] is False
            assert response.json()["errors"][0]["code"] == 10000
        with client(served, account, token) as http:
            assert http.get("/queues").status_code == 200
            db.tokens.revoke(token_id)
            assert http.get("/queues").status_code == 401
        with pytest.raises(kvqueue.TokenNotFound):
            db.tokens.revoke(token_id)


def test_accounts_are_isolated(served: Served) -> None:
    """A's token gets 403 on B's account paths and 404 for B's queue ids under A, and never sees B's names."""
    account_a, token_a = served.token()
    account_b, token_b = served.token()
    queue_b = make_queue(served, account_b, token_b, "secret-b")
    make_queue(served, account_a, token_a, "mine")
    with client(served, account_b, token_a) as http:
        for method, path, body in [
            ("GET", "/queues", None),
            ("POST", "/queues", {"queue_name": "x"}),
        ]:
            response = http.request(method, path, json=body)
            assert response.status_code == 403
        for method, path, body in every_queue_request(queue_b):
            response = http.request(method, path, json=body)
            assert response.status_code == 403, (method, path)
            assert "secret-b" not in response.text
        # The same answer for a queue id that does not exist: nothing is learned.
        assert http.get(f"/queues/{'f' * 32}").status_code == 403
    with client(served, account_a, token_a) as http:
        for method, path, body in every_queue_request(queue_b):
            response = http.request(method, path, json=body)
            assert response.status_code == 404, (method, path)
            assert "secret-b" not in response.text
        assert [q["queue_name"] for q in http.get("/queues").json()["result"]] == ["mine"]
    with client(served, account_b, token_b) as http:
        queue = http.get(f"/queues/{queue_b}").json()["result"]
        assert queue["settings"]["delivery_paused"] is False
        assert http.get(f"/queues/{queue_b}/metrics").json()["result"]["backlog_count"] == 0


def test_scopes_limit_what_a_token_does(served: Served) -> None:
    """produce may push but not pull or manage; consume may pull and ack but not push; both may read."""
    account, admin = served.token()
    queue_id = make_queue(served, account, admin, "jobs")
    _, producer = served.token(account, "produce")
    _, consumer = served.token(account, "consume")
    q = f"/queues/{queue_id}"
    with client(served, account, producer) as http:
        assert http.post(f"{q}/messages", json={"body": 1}).status_code == 200
        assert http.post(f"{q}/messages/pull", json={}).status_code == 403
        assert http.post("/queues", json={"queue_name": "other"}).status_code == 403
        assert http.delete(q).status_code == 403
        assert http.get(f"{q}/metrics").json()["result"]["backlog_count"] == 1
    with client(served, account, consumer) as http:
        assert http.post(f"{q}/messages", json={"body": 2}).status_code == 403
        pulled = http.post(f"{q}/messages/pull", json={}).json()["result"]["messages"]
        lease_id = pulled[0]["lease_id"]
        acked = http.post(f"{q}/messages/ack", json={"acks": [{"lease_id": lease_id}]})
        assert acked.json()["result"]["ackCount"] == 1
        assert http.post(f"{q}/consumers", json={"type": "http_pull"}).status_code == 403
        assert http.get(q).status_code == 200


def test_a_token_limited_to_queues_sees_only_those(served: Served) -> None:
    """A token for queue "a" cannot see, list or push to queue "b" of its own account."""
    account, admin = served.token()
    queue_a = make_queue(served, account, admin, "a")
    queue_b = make_queue(served, account, admin, "b")
    _, limited = served.token(account, "produce", queues=["a"])
    with client(served, account, limited) as http:
        assert [q["queue_name"] for q in http.get("/queues").json()["result"]] == ["a"]
        assert http.post(f"/queues/{queue_a}/messages", json={"body": 1}).status_code == 200
        assert http.post(f"/queues/{queue_b}/messages", json={"body": 1}).status_code == 404
        assert http.get(f"/queues/{queue_b}").status_code == 404


def test_a_token_limited_to_queues_opens_its_database_for_those_queues(served: Served) -> None:
    """kvqueue.open(url) with a queue-limited token works for its queues; KV, which
    such a token may not use, fails only when used, with Forbidden."""
    account, admin = served.token()
    make_queue(served, account, admin, "a")
    _, limited = served.token(account, "produce", queues=["a"])
    with kvqueue.open(served.url, token=limited) as db:
        assert [q.name for q in db.queues.list()] == ["a"]
        db.queue("a").send({"n": 1})
        with pytest.raises(kvqueue.errors.Forbidden, match="queue"):
            db.get(("k",))
    with kvqueue.open(served.url, token=admin) as db:
        assert db.queue("a").metrics().backlog_count == 1


def test_the_default_account_is_the_embedded_api(served: Served) -> None:
    """Queues made with db.queues are the default account's over HTTP, and no other account's."""
    with kvqueue.open(str(served.db_path)) as db:
        if "embedded" not in [q.name for q in db.queues.list()]:
            db.queues.create("embedded")
        db.queue("embedded").send({"from": "python"})
    account, token = served.token(kvqueue.DEFAULT_ACCOUNT)
    with client(served, account, token) as http:
        names = [q["queue_name"] for q in http.get("/queues").json()["result"]]
        assert "embedded" in names
    other, other_token = served.token()
    with client(served, other, other_token) as http:
        assert http.get("/queues").json()["result"] == []

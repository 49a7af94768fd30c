"""kvqueue's token extension over HTTP: an account's admin manages its tokens on a real
`kvqueue serve`, through the REST API and through ``db.tokens`` of a remote database."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import kvqueue
from tests.served import Served, start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("server") / "db.sqlite")
    yield server
    assert server.stop() == 0


def client(served: Served, token: str) -> httpx.Client:
    return httpx.Client(base_url=served.api, headers={"Authorization": f"Bearer {token}"})


def verify(served: Served, token: str) -> int:
    """The status of Cloudflare's token check for ``token``."""
    with client(served, token) as http:
        return http.get("/user/tokens/verify").status_code


def test_admin_creates_lists_and_revokes_tokens_over_http(served: Served) -> None:
    """POST answers the new token with its secret once; GET lists the account's tokens
    without secrets; DELETE revokes, and the revoked token is refused from then on."""
    account, admin = served.token()
    tokens = f"/accounts/{account}/kvqueue/tokens"
    with client(served, admin) as http:
        created = http.post(tokens, json={"scope": "produce", "queues": ["jobs"], "name": "ci"})
        assert created.status_code == 200, created.text
        new = created.json()["result"]
        assert (new["account"], new["scope"], new["queues"], new["name"]) == (
            account,
            "produce",
            ["jobs"],
            "ci",
        )
        assert new["token"].startswith(f"kvq_{new['id']}_")
        assert verify(served, new["token"]) == 200

        listed = http.get(tokens).json()["result"]
        assert [t["scope"] for t in listed] == ["admin", "produce"]
        assert listed[1] == {k: v for k, v in new.items() if k != "token"}
        assert all("token" not in t and "hash" not in t for t in listed)

        revoked = http.delete(f"{tokens}/{new['id']}")
        assert (revoked.status_code, revoked.json()["result"]) == (200, None)
        assert verify(served, new["token"]) == 401
        assert [t["id"] for t in http.get(tokens).json()["result"]] == [listed[0]["id"]]
        again = http.delete(f"{tokens}/{new['id']}")
        assert (again.status_code, again.json()["errors"][0]["code"]) == (404, 10000)

        bad = http.post(tokens, json={"scope": "root"})
        assert bad.status_code == 400
        assert "scope" in bad.json()["errors"][0]["message"]
        assert http.post(tokens, json={"queues": "jobs"}).status_code == 400


@pytest.mark.parametrize("kind", ["produce", "consume", "admin of one queue"])
def test_only_an_account_wide_admin_token_manages_tokens(served: Served, kind: str) -> None:
    """produce, consume and queue-limited admin tokens get 403 on every token route, but
    each may read its own record."""
    account, admin = served.token()
    if kind == "admin of one queue":
        _, narrow = served.token(account, "admin", queues=["jobs"])
    else:
        _, narrow = served.token(account, kind)
    tokens = f"/accounts/{account}/kvqueue/tokens"
    with client(served, admin) as http:
        listed = http.get(tokens).json()["result"]
    admin_id, narrow_id = (t["id"] for t in listed)
    with client(served, narrow) as http:
        for method, path in [
            ("GET", tokens),
            ("POST", tokens),
            ("GET", f"{tokens}/{admin_id}"),
            ("DELETE", f"{tokens}/{admin_id}"),
            ("DELETE", f"{tokens}/{narrow_id}"),
        ]:
            response = http.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.text)
        own = http.get(f"{tokens}/{narrow_id}")
        assert (own.status_code, own.json()["result"]["id"]) == (200, narrow_id)
    assert verify(served, admin) == 200


def test_an_account_cannot_reach_another_accounts_tokens(served: Served) -> None:
    """Another account's path is 403 whatever it names; another account's token id under
    one's own account is 404, and that token keeps working."""
    account_a, admin_a = served.token()
    account_b, admin_b = served.token()
    with client(served, admin_a) as http:
        (token_a,) = http.get(f"/accounts/{account_a}/kvqueue/tokens").json()["result"]
    with client(served, admin_b) as http:
        for method in ("GET", "POST"):
            response = http.request(method, f"/accounts/{account_a}/kvqueue/tokens", json={})
            assert response.status_code == 403
        theirs = f"/accounts/{account_b}/kvqueue/tokens/{token_a['id']}"
        assert http.delete(theirs).status_code == 404
        assert http.get(theirs).status_code == 404
    assert verify(served, admin_a) == 200


def test_remote_db_tokens_answer_as_local_ones(served: Served) -> None:
    """``db.tokens`` of ``kvqueue.open(url)`` creates, lists, authenticates and revokes
    with the local interface and raises the local error classes."""
    account, admin = served.token()
    with kvqueue.open(served.url, token=admin) as db:
        token, secret = db.tokens.create(account, "consume", queues=["jobs"], name="reader")
        assert (token.account, token.scope, token.queues, token.name) == (
            account,
            "consume",
            ("jobs",),
            "reader",
        )
        assert db.tokens.authenticate(secret) == token
        assert [t.id for t in db.tokens.list()][1:] == [token.id]
        assert db.tokens.list(account) == db.tokens.list()
        producer, producer_secret = db.tokens.create(account, "produce")
        with kvqueue.open(served.url, token=producer_secret) as other:
            assert other.queues.account == account

        with pytest.raises(kvqueue.InvalidOption, match="scope"):
            db.tokens.create(account, "root")  # type: ignore[arg-type]
        with pytest.raises(kvqueue.InvalidQueueName):
            db.tokens.create(account, queues=["Bad_Name"])
        with pytest.raises(kvqueue.Forbidden):
            db.tokens.create("someone-else")
        with pytest.raises(kvqueue.Forbidden):
            db.tokens.list("someone-else")

        db.tokens.revoke(token.id)
        db.tokens.revoke(producer.id)
        with pytest.raises(kvqueue.Unauthenticated):
            db.tokens.authenticate(secret)
        with pytest.raises(kvqueue.TokenNotFound) as missing:
            db.tokens.revoke(token.id)
        assert missing.value.token_id == token.id
        with pytest.raises(kvqueue.TokenNotFound):
            db.tokens.revoke("not-an-id")
        with pytest.raises(kvqueue.Unauthenticated):
            kvqueue.open(served.url, token=producer_secret)

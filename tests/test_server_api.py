"""The Cloudflare Queues REST API of `kvqueue serve`, driven by the official PyPI
`cloudflare` SDK (reference/cloudflare-queues.md §8.1 to 8.4)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cloudflare import BadRequestError, ConflictError, NotFoundError

from tests.served import Served, start_server

HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = start_server(tmp_path_factory.mktemp("server") / "db.sqlite")
    yield server
    assert server.stop() == 0


class Account:
    """A fresh account with an admin token, its SDK client and a raw HTTP client."""

    def __init__(self, served: Served) -> None:
        self.id, self.token = served.token()
        self.cf: Any = served.sdk(self.token)
        self.http = httpx.Client(
            base_url=f"{served.api}/accounts/{self.id}",
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def queue(self, name: str = "q1", **settings: Any) -> str:
        # The SDK's create() has no settings parameter; wrangler sends them in the body.
        extra = {"settings": settings} if settings else None
        created = self.cf.queues.create(account_id=self.id, queue_name=name, extra_body=extra)
        return str(created.queue_id)

    def push(self, queue_id: str, body: Any, **options: Any) -> Any:
        return self.cf.queues.messages.push(queue_id, account_id=self.id, body=body, **options)

    def pull(self, queue_id: str, **options: Any) -> Any:
        return self.cf.queues.messages.pull(queue_id, account_id=self.id, **options)

    def ack(self, queue_id: str, **options: Any) -> Any:
        return self.cf.queues.messages.ack(queue_id, account_id=self.id, **options)


@pytest.fixture
def acc(served: Served) -> Iterator[Account]:
    account = Account(served)
    yield account
    account.http.close()


def pull_until(
    acc: Account, queue_id: str, want: int, within: float = 10, **options: Any
) -> list[Any]:
    """Pull until ``want`` messages came back (polling; fails after ``within`` s)."""
    got: list[Any] = []
    deadline = time.monotonic() + within
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} messages came back"
        got += acc.pull(queue_id, **options).messages
    return got


def decoded(message: Any) -> Any:
    """A pulled json body (base64 of its JSON, as Cloudflare sends it)."""
    return orjson.loads(base64.b64decode(message.body))


# --- §8.1 queue management and envelope --------------------------------------------------


def test_create_returns_a_queue_with_defaults_in_the_envelope(acc: Account) -> None:
    """Creating a queue returns a 32-hex id, ISO times and the default settings in a success envelope."""
    raw = acc.http.post("/queues", json={"queue_name": "q1"})
    assert raw.status_code == 200
    envelope = raw.json()
    assert envelope["success"] is True
    assert envelope["errors"] == []
    assert envelope["messages"] == []
    queue = envelope["result"]
    assert HEX32.fullmatch(queue["queue_id"])
    assert queue["queue_name"] == "q1"
    assert queue["created_on"].endswith("Z")
    assert queue["modified_on"].endswith("Z")
    assert queue["settings"] == {
        "delivery_delay": 0,
        "delivery_paused": False,
        "message_retention_period": 345600,
    }
    assert acc.cf.queues.get(queue["queue_id"], account_id=acc.id).queue_name == "q1"


def test_duplicate_name_is_a_409_with_an_error_code(acc: Account) -> None:
    """A second queue of the same name fails with success false and a coded error."""
    acc.queue("dup")
    raw = acc.http.post("/queues", json={"queue_name": "dup"})
    assert raw.status_code == 409
    assert raw.json()["success"] is False
    assert raw.json()["errors"][0]["code"] == 11009
    with pytest.raises(ConflictError):
        acc.queue("dup")


def test_list_iterates_all_and_filters_by_repeated_name(acc: Account) -> None:
    """list() returns every queue; ?name=a&name=b returns just those (wrangler's lookup)."""
    for name in ("a", "b", "c"):
        acc.queue(name)
    assert sorted(q.queue_name for q in acc.cf.queues.list(account_id=acc.id)) == ["a", "b", "c"]
    one = acc.http.get("/queues", params={"name": "a"}).json()["result"]
    assert [q["queue_name"] for q in one] == ["a"]
    two = acc.http.get("/queues", params=[("name", "a"), ("name", "c")]).json()["result"]
    assert sorted(q["queue_name"] for q in two) == ["a", "c"]
    assert acc.http.get("/queues", params={"page": 2}).json()["result"] == []


def test_unknown_queue_is_not_found_with_10104(acc: Account) -> None:
    """get() of an unknown id raises NotFoundError carrying code 10104."""
    with pytest.raises(NotFoundError) as caught:
        acc.cf.queues.get("0" * 32, account_id=acc.id)
    assert "10104" in str(caught.value)


def test_put_replaces_settings_and_patch_changes_only_the_given_ones(acc: Account) -> None:
    """PUT resets what it leaves out; PATCH keeps it; modified_on advances."""
    queue_id = acc.queue(delivery_delay=5, message_retention_period=3600)
    before = acc.cf.queues.get(queue_id, account_id=acc.id)
    replaced = acc.cf.queues.update(
        queue_id, account_id=acc.id, queue_name="q1", settings={"delivery_delay": 7}
    )
    assert replaced.settings.delivery_delay == 7
    assert replaced.settings.message_retention_period == 345600
    edited = acc.cf.queues.edit(
        queue_id, account_id=acc.id, settings={"message_retention_period": 600}
    )
    assert edited.settings.delivery_delay == 7
    assert edited.settings.message_retention_period == 600
    assert edited.modified_on > before.modified_on


def test_delete_returns_the_envelope_and_the_queue_is_gone(acc: Account) -> None:
    """delete() returns success; afterwards get and push are 404."""
    queue_id = acc.queue()
    deleted = acc.cf.queues.delete(queue_id, account_id=acc.id)
    assert deleted.success is True
    with pytest.raises(NotFoundError):
        acc.cf.queues.get(queue_id, account_id=acc.id)
    with pytest.raises(NotFoundError):
        acc.push(queue_id, {"a": 1})


@pytest.mark.parametrize(
    "settings",
    [
        {"delivery_delay": 86401},
        {"delivery_delay": -1},
        {"message_retention_period": 59},
        {"message_retention_period": 1209601},
    ],
)
def test_settings_out_of_range_are_400(acc: Account, settings: dict[str, int]) -> None:
    """Delivery delay and retention outside their ranges are refused at create and edit."""
    with pytest.raises(BadRequestError):
        acc.queue("bad", **settings)
    queue_id = acc.queue()
    with pytest.raises(BadRequestError):
        acc.cf.queues.edit(queue_id, account_id=acc.id, settings=settings)
    assert acc.cf.queues.get(queue_id, account_id=acc.id).settings.delivery_delay == 0


def test_renaming_is_refused(acc: Account) -> None:
    """A PUT naming another queue_name is a 400 and changes nothing."""
    queue_id = acc.queue()
    with pytest.raises(BadRequestError):
        acc.cf.queues.update(queue_id, account_id=acc.id, queue_name="other", settings={})
    assert acc.cf.queues.get(queue_id, account_id=acc.id).queue_name == "q1"


# --- §8.2 publish ---------------------------------------------------------------------------


def test_push_json_then_pull_it_back(acc: Account) -> None:
    """A pushed json message reports the backlog and pulls back base64-encoded with metadata."""
    queue_id = acc.queue()
    pushed = acc.push(queue_id, {"a": 1}, content_type="json")
    assert pushed.metadata.metrics.backlog_count >= 1
    (message,) = acc.pull(queue_id).messages
    assert decoded(message) == {"a": 1}
    assert message.metadata["CF-Content-Type"] == "json"
    assert message.attempts == 1
    assert abs(message.timestamp_ms - time.time() * 1000) < 5000
    assert HEX32.fullmatch(message.id)


def test_text_comes_back_as_plain_utf8(acc: Account) -> None:
    """A text message pulls back as the same string, not base64."""
    queue_id = acc.queue()
    acc.push(queue_id, "héllo", content_type="text")
    (message,) = acc.pull(queue_id).messages
    assert message.body == "héllo"
    assert message.metadata["CF-Content-Type"] == "text"


def test_plain_body_encoding_is_a_pull_consumer_setting(acc: Account) -> None:
    """With body_encoding "plain" on the http_pull consumer, json bodies pull back as JSON values."""
    queue_id = acc.queue()
    acc.cf.queues.consumers.create(
        queue_id, account_id=acc.id, type="http_pull", settings={"body_encoding": "plain"}
    )
    acc.push(queue_id, {"a": [1, 2]})
    raw = acc.http.post(f"/queues/{queue_id}/messages/pull", json={}).json()
    assert raw["result"]["messages"][0]["body"] == {"a": [1, 2]}


def test_bulk_push_limits_have_their_codes(acc: Account) -> None:
    """100 messages pass; 101 is 10206; a 128,001-byte message 10204; 256,001 bytes 10205."""
    queue_id = acc.queue()
    batch = acc.cf.queues.messages.bulk_push
    batch(queue_id, account_id=acc.id, messages=[{"body": i} for i in range(100)])
    cases = [
        ([{"body": i} for i in range(101)], 10206),
        ([{"body": "x" * 128_001, "content_type": "text"}], 10204),
        ([{"body": "x" * 100_000, "content_type": "text"}] * 3, 10205),
    ]
    for messages, code in cases:
        raw = acc.http.post(f"/queues/{queue_id}/messages/batch", json={"messages": messages})
        assert raw.status_code == 400
        assert raw.json()["errors"][0]["code"] == code
    malformed = acc.http.post(
        f"/queues/{queue_id}/messages/batch",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert (malformed.status_code, malformed.json()["errors"][0]["code"]) == (400, 10208)
    metrics = acc.cf.queues.get_metrics(queue_id, account_id=acc.id)
    assert metrics.backlog_count == 100


def test_push_delay_hides_the_message_until_due(acc: Account) -> None:
    """A message pushed with delay_seconds=1 is not pullable at once, then is."""
    queue_id = acc.queue()
    sent = time.monotonic()
    acc.push(queue_id, "later", content_type="text", delay_seconds=1)
    assert acc.pull(queue_id).messages == []
    (message,) = pull_until(acc, queue_id, 1)
    assert time.monotonic() - sent >= 1
    assert message.body == "later"


def test_per_message_delay_beats_the_batch_delay(acc: Account) -> None:
    """In a batch with delay_seconds=30, a message with its own delay 0 is visible at once."""
    queue_id = acc.queue()
    acc.cf.queues.messages.bulk_push(
        queue_id,
        account_id=acc.id,
        delay_seconds=30,
        messages=[
            {"body": "now", "content_type": "text", "delay_seconds": 0},
            {"body": "later", "content_type": "text"},
        ],
    )
    assert [m.body for m in acc.pull(queue_id, batch_size=10).messages] == ["now"]
    assert acc.cf.queues.get_metrics(queue_id, account_id=acc.id).backlog_count == 2


def test_queue_delivery_delay_applies_and_zero_overrides_it(acc: Account) -> None:
    """A queue's delivery_delay holds back plain pushes; delay_seconds=0 skips it."""
    queue_id = acc.queue(delivery_delay=30)
    acc.push(queue_id, "held", content_type="text")
    acc.push(queue_id, "now", content_type="text", delay_seconds=0)
    assert [m.body for m in acc.pull(queue_id, batch_size=10).messages] == ["now"]


# --- §8.3 pull, ack and retry ------------------------------------------------------------------


def test_pull_batch_sizes(acc: Account) -> None:
    """pull() defaults to 5 messages, takes up to 100, and refuses 101."""
    queue_id = acc.queue()
    acc.cf.queues.messages.bulk_push(
        queue_id, account_id=acc.id, messages=[{"body": i} for i in range(100)]
    )
    assert len(acc.pull(queue_id).messages) == 5
    assert len(acc.pull(queue_id, batch_size=100).messages) == 95
    with pytest.raises(BadRequestError):
        acc.pull(queue_id, batch_size=101)


def test_visibility_timeout_redelivers_with_the_next_attempt(acc: Account) -> None:
    """An unacked message comes back after its visibility timeout with attempts 2 and a new lease."""
    queue_id = acc.queue()
    acc.push(queue_id, {"n": 1})
    (first,) = acc.pull(queue_id, visibility_timeout_ms=500).messages
    assert acc.pull(queue_id).messages == []
    (again,) = pull_until(acc, queue_id, 1)
    assert again.id == first.id
    assert again.attempts == 2
    assert again.lease_id != first.lease_id


def test_concurrent_pulls_get_disjoint_messages(acc: Account) -> None:
    """Two pulls at once never share a message; together they take all."""
    from concurrent.futures import ThreadPoolExecutor

    queue_id = acc.queue()
    acc.cf.queues.messages.bulk_push(
        queue_id, account_id=acc.id, messages=[{"body": i} for i in range(40)]
    )
    with ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(lambda _: acc.pull(queue_id, batch_size=30).messages, range(2)))
    ids = [m.id for batch in batches for m in batch]
    assert len(ids) == len(set(ids)) == 40


def test_ack_and_late_ack_are_accepted(acc: Account) -> None:
    """An ack counts; an ack after the visibility timeout ran out is accepted too."""
    queue_id = acc.queue()
    acc.push(queue_id, 1)
    acc.push(queue_id, 2)
    first, second = acc.pull(queue_id, visibility_timeout_ms=300).messages
    assert acc.ack(queue_id, acks=[{"lease_id": first.lease_id}]).ack_count == 1
    pull_until(acc, queue_id, 1)  # the second came back: its timeout ran out
    late = acc.ack(queue_id, acks=[{"lease_id": second.lease_id}])
    assert late.ack_count == 1
    assert late.warnings == {}
    assert acc.cf.queues.get_metrics(queue_id, account_id=acc.id).backlog_count == 0


def test_retry_with_delay_and_without(acc: Account) -> None:
    """A retry with a delay hides the message that long; without one it is pullable at once."""
    queue_id = acc.queue()
    acc.push(queue_id, "a", content_type="text")
    acc.push(queue_id, "b", content_type="text")
    a, b = acc.pull(queue_id).messages
    retried = acc.ack(
        queue_id, retries=[{"lease_id": a.lease_id, "delay_seconds": 30}, {"lease_id": b.lease_id}]
    )
    assert retried.retry_count == 2
    (again,) = acc.pull(queue_id).messages
    assert (again.body, again.attempts) == ("b", 2)


def test_unknown_lease_ids_are_warnings(acc: Account) -> None:
    """Garbage and unknown lease ids are reported in warnings; the request succeeds."""
    queue_id = acc.queue()
    result = acc.ack(
        queue_id, acks=[{"lease_id": "garbage"}], retries=[{"lease_id": f"{'0' * 32}.1.ab"}]
    )
    assert result.ack_count == 0
    assert result.retry_count == 0
    assert set(result.warnings) == {"garbage", f"{'0' * 32}.1.ab"}


def test_max_retries_dead_letters_to_the_dlq(acc: Account) -> None:
    """With max_retries=2 the third retry moves the message, same id and body, to the DLQ."""
    queue_id = acc.queue("src")
    acc.cf.queues.consumers.create(
        queue_id,
        account_id=acc.id,
        type="http_pull",
        dead_letter_queue="dlq",
        settings={"max_retries": 2},
    )
    acc.push(queue_id, {"k": "v"})
    for attempt in (1, 2, 3):
        (message,) = acc.pull(queue_id).messages
        assert message.attempts == attempt
        acc.ack(queue_id, retries=[{"lease_id": message.lease_id}])
    assert acc.pull(queue_id).messages == []
    dlq = next(q for q in acc.cf.queues.list(account_id=acc.id) if q.queue_name == "dlq")
    (dead,) = acc.pull(dlq.queue_id).messages
    assert dead.id == message.id
    assert decoded(dead) == {"k": "v"}


def test_max_retries_without_dlq_drops(acc: Account) -> None:
    """Without a DLQ a message past its retries is gone."""
    queue_id = acc.queue()
    acc.cf.queues.consumers.create(
        queue_id, account_id=acc.id, type="http_pull", settings={"max_retries": 0}
    )
    acc.push(queue_id, 1)
    (message,) = acc.pull(queue_id).messages
    acc.ack(queue_id, retries=[{"lease_id": message.lease_id}])
    assert acc.cf.queues.get_metrics(queue_id, account_id=acc.id).backlog_count == 0


def test_visibility_timeout_over_12_hours_is_400(acc: Account) -> None:
    """visibility_timeout_ms above 43,200,000 is refused."""
    queue_id = acc.queue()
    with pytest.raises(BadRequestError):
        acc.pull(queue_id, visibility_timeout_ms=43_200_001)


def test_pause_refuses_pulls_with_409_but_takes_pushes(acc: Account) -> None:
    """A paused queue answers pulls 409 queue_delivery_paused (no client retry) and still takes pushes."""
    queue_id = acc.queue()
    acc.cf.queues.edit(queue_id, account_id=acc.id, settings={"delivery_paused": True})
    acc.push(queue_id, 1)
    raw = acc.http.post(f"/queues/{queue_id}/messages/pull", json={})
    assert raw.status_code == 409
    assert "queue_delivery_paused" in raw.json()["errors"][0]["message"]
    assert raw.headers["x-should-retry"] == "false"
    with pytest.raises(ConflictError):
        acc.pull(queue_id)
    acc.cf.queues.edit(queue_id, account_id=acc.id, settings={"delivery_paused": False})
    assert len(acc.pull(queue_id).messages) == 1


def test_purge_empties_the_queue_and_reports_status(acc: Account) -> None:
    """purge.start empties the queue, delayed messages too; status says when; no flag is 400."""
    queue_id = acc.queue()
    acc.push(queue_id, 1)
    acc.push(queue_id, 2, delay_seconds=3600)
    with pytest.raises(BadRequestError):
        acc.cf.queues.purge.start(queue_id, account_id=acc.id)
    acc.cf.queues.purge.start(queue_id, account_id=acc.id, delete_messages_permanently=True)
    metrics = acc.cf.queues.get_metrics(queue_id, account_id=acc.id)
    assert (metrics.backlog_count, metrics.oldest_message_timestamp_ms) == (0, 0)
    status = acc.cf.queues.purge.status(queue_id, account_id=acc.id)
    assert status.started_at
    assert status.completed


def test_metrics_track_push_ack_and_purge(acc: Account) -> None:
    """Metrics count and size the backlog through push and ack."""
    queue_id = acc.queue()
    acc.push(queue_id, "abcd", content_type="text")
    metrics = acc.cf.queues.get_metrics(queue_id, account_id=acc.id)
    assert (metrics.backlog_count, metrics.backlog_bytes) == (1, 4)
    assert metrics.oldest_message_timestamp_ms > 0
    (message,) = acc.pull(queue_id).messages
    acc.ack(queue_id, acks=[{"lease_id": message.lease_id}])
    metrics = acc.cf.queues.get_metrics(queue_id, account_id=acc.id)
    assert (metrics.backlog_count, metrics.backlog_bytes) == (0, 0)


def test_peek_leases_nothing_and_purge_by_ref_removes_exactly_those(acc: Account) -> None:
    """peek returns refs without leasing; purging two refs leaves the third pullable."""
    queue_id = acc.queue()
    for i in range(3):
        acc.push(queue_id, i)
    peeked = acc.cf.queues.messages.peek(queue_id, account_id=acc.id, batch_size=3).messages
    assert len(peeked) == 3
    assert all(m.ref for m in peeked)
    purged = acc.cf.queues.messages.purge(
        queue_id, account_id=acc.id, refs=[{"ref": peeked[0].ref}, {"ref": peeked[1].ref}]
    )
    assert purged.warnings == {}
    (left,) = acc.pull(queue_id).messages
    assert left.id == peeked[2].id
    again = acc.cf.queues.messages.purge(queue_id, account_id=acc.id, refs=[{"ref": peeked[0].ref}])
    assert list(again.warnings) == [peeked[0].ref]


# --- §8.4 consumers -------------------------------------------------------------------------------


def test_http_pull_consumer_echoes_its_settings(acc: Account) -> None:
    """Creating a pull consumer returns a 32-hex id, its settings and "" for no DLQ."""
    queue_id = acc.queue()
    consumer = acc.cf.queues.consumers.create(
        queue_id,
        account_id=acc.id,
        type="http_pull",
        settings={"batch_size": 10, "visibility_timeout_ms": 60000, "max_retries": 5},
    )
    assert HEX32.fullmatch(consumer.consumer_id)
    assert consumer.dead_letter_queue == ""
    assert consumer.settings.batch_size == 10
    assert consumer.settings.visibility_timeout_ms == 60000
    assert consumer.settings.max_retries == 5


def test_worker_consumer_round_trips(acc: Account) -> None:
    """A worker consumer's settings come back from get and list; the queue counts it."""
    queue_id = acc.queue()
    settings = {
        "batch_size": 50,
        "max_wait_time_ms": 5000,
        "max_retries": 3,
        "max_concurrency": 10,
        "retry_delay": 10,
    }
    created = acc.cf.queues.consumers.create(
        queue_id,
        account_id=acc.id,
        type="worker",
        script_name="w",
        dead_letter_queue="dlq",
        settings=settings,
    )
    got = acc.cf.queues.consumers.get(created.consumer_id, account_id=acc.id, queue_id=queue_id)
    (listed,) = acc.cf.queues.consumers.list(queue_id, account_id=acc.id)
    for consumer in (created, got, listed):
        assert consumer.script_name == "w"
        assert consumer.dead_letter_queue == "dlq"
        assert consumer.settings.batch_size == 50
        assert consumer.settings.max_wait_time_ms == 5000
        assert consumer.settings.max_concurrency == 10
        assert consumer.settings.retry_delay == 10
    assert acc.cf.queues.get(queue_id, account_id=acc.id).consumers_total_count == 1
    raw = acc.http.get(f"/queues/{queue_id}").json()["result"]["consumers"][0]
    assert raw["script"] == "w"
    # wrangler reads a "service" as a service-environment Worker and looks it up elsewhere.
    assert "service" not in raw


def test_null_max_concurrency_means_autoscale(acc: Account) -> None:
    """max_concurrency null is stored as unset and returned as null."""
    queue_id = acc.queue()
    raw = acc.http.post(
        f"/queues/{queue_id}/consumers",
        json={"type": "worker", "script_name": "w", "settings": {"max_concurrency": None}},
    ).json()
    assert raw["result"]["settings"]["max_concurrency"] is None


def test_a_second_consumer_is_409(acc: Account) -> None:
    """A queue has one consumer: adding another, of either type, is a conflict."""
    queue_id = acc.queue()
    acc.cf.queues.consumers.create(queue_id, account_id=acc.id, type="http_pull")
    with pytest.raises(ConflictError):
        acc.cf.queues.consumers.create(queue_id, account_id=acc.id, type="http_pull")
    with pytest.raises(ConflictError):
        acc.cf.queues.consumers.create(queue_id, account_id=acc.id, type="worker", script_name="w")


def test_update_replaces_and_delete_removes(acc: Account) -> None:
    """PUT replaces the consumer's settings (same id); DELETE returns the envelope."""
    queue_id = acc.queue()
    created = acc.cf.queues.consumers.create(
        queue_id, account_id=acc.id, type="http_pull", settings={"batch_size": 10}
    )
    updated = acc.cf.queues.consumers.update(
        created.consumer_id,
        account_id=acc.id,
        queue_id=queue_id,
        type="http_pull",
        settings={"visibility_timeout_ms": 60000},
    )
    assert updated.consumer_id == created.consumer_id
    assert updated.settings.visibility_timeout_ms == 60000
    assert updated.settings.batch_size == 5  # replaced, so back to the default
    deleted = acc.cf.queues.consumers.delete(
        created.consumer_id, account_id=acc.id, queue_id=queue_id
    )
    assert deleted.success is True
    assert acc.cf.queues.get(queue_id, account_id=acc.id).consumers_total_count == 0
    with pytest.raises(NotFoundError):
        acc.cf.queues.consumers.get(created.consumer_id, account_id=acc.id, queue_id=queue_id)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"batch_size": 101},
        {"max_wait_time_ms": 60001},
        {"max_retries": 101},
        {"max_concurrency": 0},
        {"max_concurrency": 251},
    ],
)
def test_consumer_settings_out_of_range_are_400(acc: Account, settings: dict[str, int]) -> None:
    """Consumer settings beyond their bounds are refused and nothing is added."""
    queue_id = acc.queue()
    with pytest.raises(BadRequestError):
        acc.cf.queues.consumers.create(
            queue_id, account_id=acc.id, type="worker", script_name="w", settings=settings
        )
    assert list(acc.cf.queues.consumers.list(queue_id, account_id=acc.id)) == []


def test_server_answers_after_every_test(served: Served, tmp_path: Path) -> None:
    """The server process is still up (no request above crashed it)."""
    assert served.process.poll() is None

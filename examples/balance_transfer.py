"""A nonce-guarded balance transfer: the KV queue combined with atomic transactions.

The seed's third example, in Python. Enqueueing the transfer and recording its
nonce happen in one commit; the handler applies the transfer and deletes the
nonce in one commit, so a message delivered twice moves the money once.

    python examples/balance_transfer.py [DB]
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import kvqueue


def handle_transfer(db: kvqueue.Database, msg: Any) -> None:
    """Apply one transfer message exactly once."""
    nonce = db.get(("nonces", msg["nonce"]))
    if nonce.value is None:
        return  # this message was already processed
    change = msg["change"]
    bob = db.get(("balance", "bob"))
    liz = db.get(("balance", "liz"))
    result = (
        db.atomic()
        .check(nonce)  # ensure this message was not yet processed
        .delete(nonce.key)
        .sum(("processed_count",), 1)
        .check(bob, liz)  # balances did not change
        .set(("balance", "bob"), bob.value - change)
        .set(("balance", "liz"), liz.value + change)
        .commit()
    )
    if not result.ok:
        raise RuntimeError("balances changed meanwhile; retry the transfer")


def enqueue_transfer(db: kvqueue.Database, change: int) -> str:
    """Enqueue a transfer and record its nonce in the same transaction."""
    nonce = str(uuid.uuid4())
    db.atomic().check(kvqueue.AtomicCheck(("nonces", nonce), None)).enqueue(
        {"nonce": nonce, "change": change}
    ).set(("nonces", nonce), True).sum(("enqueued_count",), 1).commit()
    return nonce


def main(path: str = ":memory:") -> dict[str, Any]:
    """Transfer 10 from bob to liz through the queue, then deliver the same message again."""
    with kvqueue.open(path) as db:
        db.atomic().set(("balance", "bob"), 100).set(("balance", "liz"), 0).commit()
        nonce = enqueue_transfer(db, 10)

        def handler(msg: Any) -> None:
            handle_transfer(db, msg)
            db.close()

        db.listen_queue(handler)
    with kvqueue.open(path) as db:
        handle_transfer(db, {"nonce": nonce, "change": 10})  # a duplicate delivery
        balances = {name: db.get(("balance", name)).value for name in ("bob", "liz")}
        counts = {k: db.get((k,)).value for k in ("enqueued_count", "processed_count")}
    print("balances after transfer and duplicate:", balances)
    return {"balances": balances, "counts": counts}


if __name__ == "__main__":
    main(*sys.argv[1:])

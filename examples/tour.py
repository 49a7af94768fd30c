"""A short tour of kvqueue's embedded database; `scripts/run` runs it.

python examples/tour.py [DB]   (default: kvqueue-tour.db in the current directory)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import kvqueue


def main(path: str = "kvqueue-tour.db") -> None:
    """Write some keys, enqueue messages, and handle them."""
    with kvqueue.open(path) as db:
        db.set(("users", "alovelace"), {"name": "Ada Lovelace", "joined": 1843})
        print("get:", db.get(("users", "alovelace")))
        db.atomic().sum(("visits",), 1).commit()
        print("visits:", db.get(("visits",)).value)
        started = time.perf_counter()
        for i in range(1000):
            db.enqueue({"forUser": "alovelace", "n": i})
        print(f"enqueued 1000 messages in {time.perf_counter() - started:.2f}s")
        handled: list[Any] = []

        def handler(message: Any) -> None:
            handled.append(message)
            if len(handled) == 1000:
                db.close()

        started = time.perf_counter()
        db.listen_queue(handler)
        print(f"handled {len(handled)} messages in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Send a notification through the KV queue (the seed's first example, in Python).

python examples/notifications.py [DB]
"""

from __future__ import annotations

import sys
from typing import Any

import kvqueue


def is_notification(message: Any) -> bool:
    """A type guard, as in the seed: a dict with str forUser and body."""
    return (
        isinstance(message, dict)
        and isinstance(message.get("forUser"), str)
        and isinstance(message.get("body"), str)
    )


def main(path: str = ":memory:") -> list[str]:
    """Enqueue one notification, deliver it, and return what was sent."""
    sent: list[str] = []
    with kvqueue.open(path) as db:
        db.enqueue({"forUser": "alovelace", "body": "You've got mail!"})

        def handler(message: Any) -> None:
            if is_notification(message):
                print("Sending notification to user:", message["forUser"])
                sent.append(message["forUser"])
                db.close()
            else:
                print("Unknown message received:", message)

        db.listen_queue(handler)
    return sent


if __name__ == "__main__":
    main(*sys.argv[1:])

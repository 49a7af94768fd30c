"""A notification scheduled three days ahead, with a backup key if it cannot be delivered.

The seed's second example. Runs on a FakeClock so three days pass at once:

    python examples/scheduled_notification.py
"""

from __future__ import annotations

import threading
import time
from typing import Any

import kvqueue

THREE_DAYS_MS = 1000 * 60 * 60 * 24 * 3


def main(path: str = ":memory:") -> dict[str, Any]:
    """Schedule, let the handler fail every attempt, and read the undelivered message back."""
    clock = kvqueue.FakeClock()
    db = kvqueue.open(path, clock=clock)
    message = {"forUser": "alovelace", "body": "You've got mail!"}
    backup_key = ("failed_notifications", "alovelace", clock.now_ms())
    db.enqueue(message, delay=THREE_DAYS_MS, keys_if_undelivered=[backup_key])
    attempts: list[int] = []

    def handler(msg: Any) -> None:
        attempts.append(clock.now_ms())
        raise ConnectionError("... disaster strikes ...")  # the mail server is down

    listener = threading.Thread(target=db.listen_queue, args=(handler,))
    listener.start()
    # Three days pass in a moment: jump to each time something is waiting for,
    # until the retries are used up and the backup key is written.
    while db.get(backup_key).value is None:
        pending = clock.deadlines()
        if pending:
            clock.advance(max(1, pending[0] - clock.now_ms()))
        time.sleep(0.001)  # let the listener thread react to the new time
    r = db.get(backup_key)
    print("Found unsent notification for:", r.value["forUser"])
    db.close()
    listener.join()
    return {
        "backup": r.value,
        "first_attempt_delay_ms": attempts[0] - backup_key[2],
        "attempts": len(attempts),
    }


if __name__ == "__main__":
    main()

"""A child process that prints every KV-queue message it receives, with the time it got it.

Usage: echo_listener.py DB
Prints "ready" once listening, then "got <id> <sent_ns> <received_ns>" per message.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import kvqueue


def main() -> None:
    db = kvqueue.open(sys.argv[1])

    def handler(value: Any) -> None:
        received = time.time_ns()
        print(f"got {value['id']} {value['sent_ns']} {received}", flush=True)

    threading.Timer(0.05, lambda: print("ready", flush=True)).start()
    db.listen_queue(handler)


if __name__ == "__main__":
    main()

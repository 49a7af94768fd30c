"""A child process that runs listen_queue and reports on stdout (for crash tests).

Usage: listener.py DB LEASE_MS
Prints "handling <value>" when a handler starts, "handled <value>" when it
returns, and kvqueue's debug log ("message <id> acked") after an ack commits.
The value "hang" makes its handler block forever, so it is mid-message when
the test kills this process.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import kvqueue


def main() -> None:
    path, lease_ms = sys.argv[1], int(sys.argv[2])
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(message)s")
    logging.getLogger("kvqueue").setLevel(logging.DEBUG)
    db = kvqueue.open(path, lease_ms=lease_ms)

    def say(line: str) -> None:
        # One write per line: print() writes the newline separately, and
        # handler threads would interleave their lines.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def handler(value: Any) -> None:
        say(f"handling {value}")
        if value == "hang":
            threading.Event().wait()
        say(f"handled {value}")

    db.listen_queue(handler, concurrency=4)


if __name__ == "__main__":
    main()

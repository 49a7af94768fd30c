"""A child process that commits as fast as it can and reports each commit that returned.

Usage: producer.py DB
Each commit sets ("burst", i) and enqueues {"i": i} atomically; 16 commits run
concurrently so they share group commits. "committed <i>" is printed only after
the commit returned. Runs until killed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import kvqueue


async def main() -> None:
    db = await kvqueue.open_async(sys.argv[1])
    counter = itertools.count()

    async def produce() -> None:
        while True:
            i = next(counter)
            result = await db.atomic().set(("burst", i), i).enqueue({"i": i}).commit()
            assert result.ok
            sys.stdout.write(f"committed {i}\n")
            sys.stdout.flush()

    await asyncio.gather(*(produce() for _ in range(16)))


if __name__ == "__main__":
    asyncio.run(main())

"""Every size, count and time limit of kvqueue, in one place.

Defaults follow the two systems kvqueue stands in for (Deno KV and Cloudflare
Queues); SPEC.md section 8 lists them. An error raised for breaking one names
the constant here.
"""

from __future__ import annotations

# --- KV store (Deno KV) -------------------------------------------------------
#: Largest encoded key that may be written.
MAX_KEY_BYTES = 2048
#: Largest encoded key that may bound a read (Deno allows one byte more).
MAX_READ_KEY_BYTES = 2049
#: Largest encoded value.
MAX_VALUE_BYTES = 65_536
#: Most checks in one atomic operation.
MAX_CHECKS = 100
#: Most mutations plus enqueues/sends in one atomic operation.
MAX_MUTATIONS = 1000
#: Most bytes of keys, values and payloads in one atomic operation.
MAX_ATOMIC_BYTES = 819_200
#: Most keys one watch may follow.
MAX_WATCHED_KEYS = 10
#: Most keys in one get_many.
MAX_GET_MANY_KEYS = 1000
#: Largest page a list reads at once.
MAX_LIST_BATCH = 1000

# --- The KV queue (Deno face) -------------------------------------------------
#: Largest encoded KV-queue message.
MAX_KV_PAYLOAD_BYTES = 65_536
#: Longest enqueue delay: 30 days in milliseconds.
MAX_KV_DELAY_MS = 30 * 24 * 3600 * 1000
#: Most entries in a backoff schedule.
MAX_BACKOFF_ENTRIES = 5
#: Longest ``expire_in`` (ms): a century, far inside what the stores' 64-bit times hold.
MAX_EXPIRE_IN_MS = 100 * 365 * 24 * 3600 * 1000
#: Longest single backoff interval: one hour in milliseconds.
MAX_BACKOFF_MS = 3_600_000
#: Most keys_if_undelivered on one message.
MAX_UNDELIVERED_KEYS = 10
#: Retry delays used when an enqueue gives no backoff schedule (6 attempts in all).
DEFAULT_BACKOFF_SCHEDULE: tuple[int, ...] = (100, 1000, 5000, 30000, 60000)
#: Most undelivered messages the KV queue holds before enqueue raises QueueFull.
DEFAULT_KV_QUEUE_BACKLOG = 100_000
#: How long a handler holds a message before another may take it; renewed while it runs.
DEFAULT_LEASE_MS = 30_000
#: Handlers listen_queue runs at once by default.
DEFAULT_LISTEN_CONCURRENCY = 100

# --- Named queues (Cloudflare face) -------------------------------------------
#: Longest queue name; names match ``^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$``.
MAX_QUEUE_NAME_LENGTH = 63
#: Largest message body, in bytes (Cloudflare: 128 KB, 1 KB = 1000 B).
MAX_MESSAGE_BYTES = 128_000
#: Most messages in one send_batch.
MAX_BATCH_MESSAGES = 100
#: Most bytes of bodies in one send_batch.
MAX_BATCH_BYTES = 256_000
#: Shortest and longest delivery, send or retry delay, in seconds (0 .. 24 hours).
MIN_DELAY_SECONDS = 0
MAX_DELAY_SECONDS = 86_400
#: Shortest and longest message_retention_period, in seconds (60 s .. 14 days).
MIN_RETENTION_SECONDS = 60
MAX_RETENTION_SECONDS = 1_209_600
#: How long an unconsumed message is kept by default: 4 days, in seconds.
DEFAULT_RETENTION_SECONDS = 345_600
#: Default bytes a queue may hold undelivered (Cloudflare: 25 GB per queue).
DEFAULT_QUEUE_BACKLOG_BYTES = 25_000_000_000
#: Push consumer: messages per batch (1 .. 100, default 10).
MAX_BATCH_SIZE = 100
DEFAULT_BATCH_SIZE = 10
#: Push consumer: seconds to wait for a full batch (0 .. 60, default 5).
MAX_BATCH_TIMEOUT_SECONDS = 60
DEFAULT_BATCH_TIMEOUT_SECONDS = 5
#: Retries before a message is dead-lettered (0 .. 100, default 3: 4 deliveries).
MAX_RETRIES = 100
DEFAULT_MAX_RETRIES = 3
#: Push consumer: batches at once for one queue, across every worker (1 .. 250).
MAX_CONCURRENCY = 250
#: Pull consumer: messages per pull (1 .. 100, default 5).
MAX_PULL_BATCH_SIZE = 100
DEFAULT_PULL_BATCH_SIZE = 5
#: Pull consumer: how long a pulled message stays leased (at most 12 h, default 30 s).
MAX_VISIBILITY_TIMEOUT_MS = 43_200_000
DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000
#: Longest a pull may wait for a message to arrive (kvqueue's long-poll extension).
MAX_PULL_WAIT_MS = 20_000

# --- Server (`kvqueue serve`) ---
#: Longest HTTP request body the server reads (a full batch of JSON-escaped text fits).
MAX_REQUEST_BYTES = 2_000_000
#: Default address and port of `kvqueue serve`.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787

-- Every queue: the KV queue ('~kv') and the named ones. Times in unix ms,
-- durations in ms. The consumer is opaque JSON kept by the semantics layer.
CREATE TABLE queues (
  name              TEXT PRIMARY KEY,
  id                TEXT NOT NULL UNIQUE,
  created_at        INTEGER NOT NULL,
  modified_at       INTEGER NOT NULL,
  delivery_delay    INTEGER NOT NULL DEFAULT 0,
  retention         INTEGER,            -- NULL keeps messages until consumed
  paused            INTEGER NOT NULL DEFAULT 0,
  max_backlog       INTEGER,            -- NULL: no limit on count
  max_backlog_bytes INTEGER,            -- NULL: no limit on bytes
  consumer          BLOB,
  retried           INTEGER NOT NULL DEFAULT 0,
  dead_lettered     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The KV queue is a queue like the others; its messages never expire.
INSERT INTO queues (name, id, created_at, modified_at, retention)
VALUES ('~kv', lower(hex(randomblob(16))),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NULL);

-- Oldest message per queue, for metrics and for the retention sweep.
CREATE INDEX messages_age ON messages (queue, enqueued_at);

-- A message moved to a dead-letter queue changes queue: move its backlog too.
CREATE TRIGGER messages_moved AFTER UPDATE OF queue ON messages
WHEN OLD.queue <> NEW.queue BEGIN
  UPDATE queue_backlog SET count = count - 1, bytes = bytes - length(OLD.body)
  WHERE queue = OLD.queue;
  INSERT INTO queue_backlog (queue, count, bytes) VALUES (NEW.queue, 1, length(NEW.body))
  ON CONFLICT (queue) DO UPDATE SET count = count + 1, bytes = bytes + length(NEW.body);
END;

-- The KV keyspace. Keys are Deno-KV-encoded tuples, so byte order is key order.
CREATE TABLE kv (
  key        BLOB PRIMARY KEY,
  value      BLOB NOT NULL,
  encoding   INTEGER NOT NULL,      -- 1 V8, 2 little-endian u64, 3 raw bytes
  version    INTEGER NOT NULL,      -- commit counter of the last write: the versionstamp
  expires_at INTEGER                -- unix ms; NULL never expires
) WITHOUT ROWID;

CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;

-- One row: the commit counter behind versionstamps.
CREATE TABLE meta (
  id      INTEGER PRIMARY KEY CHECK (id = 0),
  version INTEGER NOT NULL
);
INSERT INTO meta (id, version) VALUES (0, 0);

-- Every message of every queue. A message is visible when visible_at <= now;
-- leasing it pushes visible_at to the end of the lease (the SQS model), so an
-- expired lease needs no sweeper to become deliverable again.
CREATE TABLE messages (
  seq          INTEGER PRIMARY KEY,  -- arrival order, for oldest-first among equals
  queue        TEXT NOT NULL,
  id           TEXT NOT NULL UNIQUE,
  body         BLOB NOT NULL,
  content_type TEXT NOT NULL,
  enqueued_at  INTEGER NOT NULL,
  visible_at   INTEGER NOT NULL,
  attempts     INTEGER NOT NULL DEFAULT 0,
  lease        TEXT,
  attributes   BLOB
);

CREATE INDEX messages_visible ON messages (queue, visible_at, seq);

-- Backlog per queue, kept by triggers so limits and metrics never count rows.
CREATE TABLE queue_backlog (
  queue TEXT PRIMARY KEY,
  count INTEGER NOT NULL,
  bytes INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER messages_added AFTER INSERT ON messages BEGIN
  INSERT INTO queue_backlog (queue, count, bytes) VALUES (NEW.queue, 1, length(NEW.body))
  ON CONFLICT (queue) DO UPDATE SET count = count + 1, bytes = bytes + length(NEW.body);
END;

CREATE TRIGGER messages_removed AFTER DELETE ON messages BEGIN
  UPDATE queue_backlog SET count = count - 1, bytes = bytes - length(OLD.body)
  WHERE queue = OLD.queue;
END;

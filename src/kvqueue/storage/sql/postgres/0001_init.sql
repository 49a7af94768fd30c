-- kvqueue on PostgreSQL. Every table starts with kvqueue_ so the schema can
-- share a database (and a search_path) with the application's own tables.
-- Times are unix milliseconds from the database server's clock, durations ms.

-- The KV keyspace. Keys are Deno-KV-encoded tuples; bytea compares bytewise,
-- so byte order is key order.
CREATE TABLE kvqueue_kv (
  key        bytea PRIMARY KEY,
  value      bytea NOT NULL,
  encoding   smallint NOT NULL,    -- 1 V8, 2 little-endian u64, 3 raw bytes
  version    bigint NOT NULL,      -- commit counter of the last write: the versionstamp
  expires_at bigint                -- NULL never expires
);
CREATE INDEX kvqueue_kv_expiry ON kvqueue_kv (expires_at) WHERE expires_at IS NOT NULL;

-- One row: the commit counter behind versionstamps. Every committing
-- transaction takes its row lock, so versionstamps rise in commit order across
-- every process. Low fillfactor keeps its updates HOT (no index churn).
CREATE TABLE kvqueue_meta (
  id      smallint PRIMARY KEY CHECK (id = 0),
  version bigint NOT NULL
) WITH (fillfactor = 10);
INSERT INTO kvqueue_meta (id, version) VALUES (0, 0);

-- Every queue: the KV queue ('~kv') and the named ones. The consumer is opaque
-- JSON kept by the semantics layer.
CREATE TABLE kvqueue_queues (
  name              text PRIMARY KEY,
  id                text NOT NULL UNIQUE,
  created_at        bigint NOT NULL,
  modified_at       bigint NOT NULL,
  delivery_delay    bigint NOT NULL DEFAULT 0,
  retention         bigint,            -- NULL keeps messages until consumed
  paused            boolean NOT NULL DEFAULT false,
  max_backlog       bigint,            -- NULL: no limit on count
  max_backlog_bytes bigint,            -- NULL: no limit on bytes
  consumer          bytea,
  retried           bigint NOT NULL DEFAULT 0,
  dead_lettered     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

INSERT INTO kvqueue_queues (name, id, created_at, modified_at, retention)
VALUES ('~kv', md5(random()::text || clock_timestamp()::text),
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NULL);

-- Every message of every queue. A message is visible when visible_at <= now;
-- leasing it pushes visible_at to the end of the lease, so an expired lease
-- needs no sweeper. Rows churn (insert, lease, delete): autovacuum visits the
-- table early and without cost delay, so dead index entries at the head of
-- the queue do not pile up under a busy consumer.
CREATE TABLE kvqueue_messages (
  seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  queue        text NOT NULL,
  id           text NOT NULL UNIQUE,
  body         bytea NOT NULL,
  content_type text NOT NULL,
  enqueued_at  bigint NOT NULL,
  visible_at   bigint NOT NULL,
  attempts     integer NOT NULL DEFAULT 0,
  lease        text,
  attributes   bytea
) WITH (
  fillfactor = 90,
  autovacuum_vacuum_scale_factor = 0.01,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_vacuum_insert_scale_factor = 0.05,
  autovacuum_vacuum_cost_delay = 0,
  autovacuum_analyze_scale_factor = 0.02
);
CREATE INDEX kvqueue_messages_visible ON kvqueue_messages (queue, visible_at, seq);
CREATE INDEX kvqueue_messages_age ON kvqueue_messages (queue, enqueued_at);
-- Leases in flight, for a consumer's concurrency bound: small however many
-- delayed messages wait.
CREATE INDEX kvqueue_messages_leased ON kvqueue_messages (queue, visible_at)
  WHERE lease IS NOT NULL;

-- Backlog per queue, kept by triggers so limits and metrics never count rows.
CREATE TABLE kvqueue_backlog (
  queue text PRIMARY KEY,
  count bigint NOT NULL,
  bytes bigint NOT NULL
) WITH (fillfactor = 50);

-- One trigger call per statement, not per row: a batch of 100 messages moves
-- each touched backlog row once.
CREATE FUNCTION kvqueue_backlog_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO kvqueue_backlog AS b (queue, count, bytes)
  SELECT queue, count(*), sum(octet_length(body)) FROM added GROUP BY queue
  ON CONFLICT (queue) DO UPDATE
    SET count = b.count + excluded.count, bytes = b.bytes + excluded.bytes;
  RETURN NULL;
END $$;

CREATE FUNCTION kvqueue_backlog_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE kvqueue_backlog AS b SET count = b.count - r.count, bytes = b.bytes - r.bytes
  FROM (SELECT queue, count(*) AS count, sum(octet_length(body)) AS bytes
        FROM removed GROUP BY queue) AS r
  WHERE b.queue = r.queue;
  RETURN NULL;
END $$;

-- A message moved to a dead-letter queue changes queue (rare: row level).
CREATE FUNCTION kvqueue_backlog_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE kvqueue_backlog SET count = count - 1, bytes = bytes - octet_length(OLD.body)
  WHERE queue = OLD.queue;
  INSERT INTO kvqueue_backlog AS b (queue, count, bytes)
  VALUES (NEW.queue, 1, octet_length(NEW.body))
  ON CONFLICT (queue) DO UPDATE
    SET count = b.count + 1, bytes = b.bytes + excluded.bytes;
  RETURN NULL;
END $$;

CREATE TRIGGER kvqueue_messages_added AFTER INSERT ON kvqueue_messages
  REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION kvqueue_backlog_added();
CREATE TRIGGER kvqueue_messages_removed AFTER DELETE ON kvqueue_messages
  REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION kvqueue_backlog_removed();
CREATE TRIGGER kvqueue_messages_moved AFTER UPDATE OF queue ON kvqueue_messages
  FOR EACH ROW WHEN (OLD.queue <> NEW.queue) EXECUTE FUNCTION kvqueue_backlog_moved();

-- Functions for the busy paths: counts of leased messages, and acks in one
-- statement.
--
-- The counts: a queue's in-flight count (in every send's metrics) and the
-- leases a bounded consumer holds (before each of its leases).
--
-- Under churn the partial index kvqueue_messages_leased holds an entry for
-- every lease taken since autovacuum last passed, nearly all of them for
-- messages acked long ago. A plain index scan marks such entries dead as it
-- passes, so the next count skips them; a bitmap scan, which the planner picks
-- when it expects few rows, visits every one of them again on every call
-- (about a millisecond per count with ten thousand of them). Hence functions
-- of their own, with bitmap scans turned off while they run. PL/pgSQL keeps
-- their plans for the session; an SQL function would plan on every call.

CREATE FUNCTION kvqueue_in_flight(queue_name text, now_ms bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SET enable_bitmapscan = off AS $$
BEGIN
  RETURN (SELECT count(*) FROM kvqueue_messages
          WHERE queue = queue_name AND lease IS NOT NULL AND visible_at > now_ms);
END $$;

CREATE FUNCTION kvqueue_leases_held(queue_name text, own_lease text, now_ms bigint)
RETURNS bigint LANGUAGE plpgsql STABLE SET enable_bitmapscan = off AS $$
BEGIN
  RETURN (SELECT count(DISTINCT lease) FROM kvqueue_messages
          WHERE queue = queue_name AND lease IS NOT NULL AND lease <> own_lease
            AND visible_at > now_ms);
END $$;

-- Acks of many messages (queues[i], ids[i]) as one whole transaction: one
-- statement, so one round trip in autocommit. Like every committing
-- transaction it takes the version lock first (versions: how many commits it
-- stands for), then deletes what it finds, and wakes the listeners on channel
-- with payload origin. Returns the last version handed out and the messages
-- that were found. VOLATILE, so each statement sees what committed before it
-- ran: the delete sees everything committed before the lock was granted.
CREATE FUNCTION kvqueue_ack(
  versions integer, queues text[], ids text[], channel text, origin text,
  OUT last_version bigint, OUT gone_queues text[], OUT gone_ids text[]
) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE kvqueue_meta AS meta SET version = meta.version + versions WHERE meta.id = 0
  RETURNING meta.version INTO last_version;
  WITH gone AS (
    DELETE FROM kvqueue_messages AS m USING unnest(queues, ids) AS acked(queue, id)
    WHERE m.queue = acked.queue AND m.id = acked.id
    RETURNING m.queue, m.id
  )
  SELECT array_agg(gone.queue), array_agg(gone.id) INTO gone_queues, gone_ids FROM gone;
  PERFORM pg_notify(channel, origin);
END $$;

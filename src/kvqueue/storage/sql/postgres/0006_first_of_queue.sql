-- A queue's oldest message and its next visible time, each the first entry of the
-- queue in an index ordered by time (kvqueue_messages_age, _visible).
--
-- As min() over a queue these were at the planner's mercy: when ANALYZE runs
-- while a busy queue is nearly empty (autovacuum's does, after a vacuum), the
-- planner expects a row or none and reads the queue's whole index range, with a
-- bitmap scan or an aggregate over an index scan: every entry left behind
-- since the last vacuum, and the heap pages they point to, on every send's
-- metrics and every empty lease. Measured on a queue that 1M messages had
-- passed through: 35 ms per read, and its pipeline fell from 12k to 2.5k
-- messages/s for as long as those statistics lasted. With sorting and bitmap
-- scans off while these run, the one plan left reads the index in order and
-- stops at the first live entry. PL/pgSQL keeps the plans for the session.

CREATE FUNCTION kvqueue_oldest(queue_name text) RETURNS bigint
LANGUAGE plpgsql STABLE SET enable_bitmapscan = off SET enable_sort = off AS $$
BEGIN
  RETURN (SELECT enqueued_at FROM kvqueue_messages WHERE queue = queue_name
          ORDER BY enqueued_at LIMIT 1);
END $$;

CREATE FUNCTION kvqueue_next_visible(queue_name text, after_ms bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SET enable_bitmapscan = off SET enable_sort = off AS $$
BEGIN
  RETURN (SELECT visible_at FROM kvqueue_messages
          WHERE queue = queue_name AND visible_at > after_ms
          ORDER BY visible_at LIMIT 1);
END $$;

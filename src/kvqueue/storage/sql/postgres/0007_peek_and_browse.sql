-- Peeking at a queue and browsing it page by page, in index order whatever the
-- statistics say.
--
-- Both want the first few messages of a queue in an index's order. After an
-- ANALYZE that found the queue nearly empty (see 0006), the planner read every
-- message of the queue with a bitmap scan and sorted them to return ten: 75 ms
-- a page in a queue of 200k messages, 150 ms with 300k dead rows beside them,
-- where the index in order takes 0.1 ms, and 1 ms past the dead rows. Browsing orders by
-- (enqueued_at, seq) and kvqueue_messages_age holds enqueued_at only: an
-- incremental sort puts the few messages of one millisecond in order, so only
-- full sorts are turned off.

CREATE FUNCTION kvqueue_peek(queue_name text, max_count integer)
RETURNS TABLE (
  id text, body bytea, content_type text, enqueued_at bigint, attempts integer,
  attributes bytea
) LANGUAGE plpgsql STABLE SET enable_bitmapscan = off SET enable_sort = off AS $$
BEGIN
  RETURN QUERY
    SELECT m.id, m.body, m.content_type, m.enqueued_at, m.attempts, m.attributes
    FROM kvqueue_messages AS m WHERE m.queue = queue_name
    ORDER BY m.visible_at, m.seq LIMIT max_count;
END $$;

-- The page after (after_ms, after_seq) in (enqueued_at, seq) order.
CREATE FUNCTION kvqueue_browse(
  queue_name text, after_ms bigint, after_seq bigint, max_count integer
) RETURNS TABLE (
  id text, body bytea, content_type text, enqueued_at bigint, attempts integer,
  attributes bytea, seq bigint
) LANGUAGE plpgsql STABLE SET enable_bitmapscan = off SET enable_sort = off AS $$
BEGIN
  RETURN QUERY
    SELECT m.id, m.body, m.content_type, m.enqueued_at, m.attempts, m.attributes, m.seq
    FROM kvqueue_messages AS m
    WHERE m.queue = queue_name AND m.enqueued_at >= after_ms
      AND (m.enqueued_at > after_ms OR m.seq > after_seq)
    ORDER BY m.enqueued_at, m.seq LIMIT max_count;
END $$;

-- A lease in one statement, so in one round trip and one implicit transaction.
--
-- A lease was a pipeline of four statements (BEGIN, its settings, the UPDATE,
-- COMMIT). PostgreSQL's side was quick; the client's was not: psycopg spent
-- about twice the CPU on the pipeline that it spends on one statement, and a
-- worker woken for nothing (another process took the messages) pays that
-- every time.
--
-- What the pipeline did, this does:
-- * synchronous_commit off for the lease's own transaction: a lease need not
--   wait for its WAL flush. Lost in a server crash, it only means the message
--   is delivered again (what a crash of the consumer means too), and any later
--   durable commit, such as the ack, flushes it first: the WAL is one log.
--   set_config(..., true) lasts to the end of the transaction, not of the
--   function, which is what makes it reach the commit.
-- * enable_sort off (the function's own setting): the messages table churns,
--   so its statistics are often taken while a queue is empty, and the planner
--   then expects one row and may read a whole queue and sort it, or walk a
--   whole index, for every lease. Without sorting, the one plan left takes the
--   messages in order from the (queue, visible_at, seq) index, and the UPDATE
--   reaches the rows it locked by their ctid (a TID scan, which no estimate
--   makes look dearer).
-- * With max_leases, the queue's advisory lock while the leases in flight are
--   counted and the batch taken, so the bound holds across processes. The
--   function is VOLATILE: the count, a statement of its own, sees everything
--   committed before the lock was granted.
CREATE FUNCTION kvqueue_lease(
  queue_name text, new_lease text, until_ms bigint, now_ms bigint, max_count integer,
  max_leases integer, lock_name text
) RETURNS TABLE (
  seq bigint, id text, body bytea, content_type text, enqueued_at bigint,
  attempts integer, attributes bytea
) LANGUAGE plpgsql SET enable_sort = off AS $$
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  IF max_leases IS NOT NULL THEN
    PERFORM pg_advisory_xact_lock(hashtextextended(lock_name, 0));
    IF kvqueue_leases_held(queue_name, new_lease, now_ms) >= max_leases THEN
      RETURN;
    END IF;
  END IF;
  RETURN QUERY
    UPDATE kvqueue_messages AS m
    SET attempts = m.attempts + 1, lease = new_lease, visible_at = until_ms
    WHERE m.ctid = ANY(ARRAY(
      SELECT w.ctid FROM kvqueue_messages AS w
      WHERE w.queue = queue_name AND w.visible_at <= now_ms
      ORDER BY w.visible_at, w.seq LIMIT max_count FOR UPDATE SKIP LOCKED
    ))
    RETURNING m.seq, m.id, m.body, m.content_type, m.enqueued_at, m.attempts, m.attributes;
END $$;

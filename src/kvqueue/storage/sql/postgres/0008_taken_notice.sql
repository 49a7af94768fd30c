-- A lease that takes a queue's last ready messages says so to every process.
--
-- Every process LISTENs, so a send woke every process with an idle consumer of
-- any queue, and each leased: with four consumer processes, three of the four
-- leases after each send came back empty, and those wake-ups cost the machine a
-- third of its rate. Now a send's notice names its queues, and a lease that took
-- messages and left none ready behind sends a notice "<origin> taken <queue>". A
-- process that has found other processes ahead of it on a queue waits a moment
-- after a send's notice for that one, and leases only if it does not come.
--
-- A lease that took fewer than it asked for left none ready; one that took as
-- many looks (in a snapshot of its own, so a send committed meanwhile counts).
-- Messages other leases hold locked count as ready here: the notice may be
-- missing when it need not be, never there when it should not. A process that
-- has seen no other consumer of the queue passes no notice (NULL), and nothing
-- is looked at or sent.
CREATE FUNCTION kvqueue_lease_told(
  queue_name text, new_lease text, until_ms bigint, now_ms bigint, max_count integer,
  max_leases integer, lock_name text, channel text, notice text
) RETURNS TABLE (
  seq bigint, id text, body bytea, content_type text, enqueued_at bigint,
  attempts integer, attributes bytea
) LANGUAGE plpgsql AS $$
DECLARE
  taken bigint;
BEGIN
  RETURN QUERY SELECT * FROM kvqueue_lease(
    queue_name, new_lease, until_ms, now_ms, max_count, max_leases, lock_name
  );
  GET DIAGNOSTICS taken = ROW_COUNT;
  -- The first visible time of the queue, read in index order whatever the
  -- statistics (schema 6): a ready message, if any, comes first.
  IF notice IS NOT NULL AND taken > 0 AND (
    taken < max_count OR coalesce(kvqueue_next_visible(queue_name, -1) > now_ms, true)
  ) THEN
    PERFORM pg_notify(channel, notice);
  END IF;
END $$;

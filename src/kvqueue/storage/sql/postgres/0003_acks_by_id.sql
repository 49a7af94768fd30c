-- kvqueue_ack finds the acked messages through the index on id.
--
-- It joined the messages table to the (queue, id) pairs, and the planner chose
-- how to reach the table from its statistics. Those are often taken while a
-- queue is empty (the table churns): then the planner expects one row and reads
-- a whole index of the table for every ack. An index condition on id leaves it
-- one sensible plan; the pairs still decide which rows go (an ack names its
-- queue too).

CREATE OR REPLACE FUNCTION kvqueue_ack(
  versions integer, queues text[], ids text[], channel text, origin text,
  OUT last_version bigint, OUT gone_queues text[], OUT gone_ids text[]
) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE kvqueue_meta AS meta SET version = meta.version + versions WHERE meta.id = 0
  RETURNING meta.version INTO last_version;
  WITH gone AS (
    DELETE FROM kvqueue_messages AS m
    WHERE m.id = ANY(ids)
      AND EXISTS (SELECT 1 FROM unnest(queues, ids) AS acked(queue, id)
                  WHERE acked.queue = m.queue AND acked.id = m.id)
    RETURNING m.queue, m.id
  )
  SELECT array_agg(gone.queue), array_agg(gone.id) INTO gone_queues, gone_ids FROM gone;
  PERFORM pg_notify(channel, origin);
END $$;
